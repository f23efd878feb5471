import cliProgress from 'cli-progress';
import type { Counter } from '../src/campaigns/store.js';

/**
 * Three bars on stderr for generate: users fetched, tokens made (of users fetched × perUser) and
 * tokens delivered (of tokens made). Totals grow as pages arrive, so each bar shows how far the
 * later stage trails the earlier one.
 */
export function progressBars(perUser: number): { update: (satelliteId: string, counter: Counter, n: number) => void; stop: () => void } {
  const multi = new cliProgress.MultiBar(
    { format: ' {label} |{bar}| {value}/{total}', hideCursor: true, clearOnComplete: false, etaBuffer: 50 },
    cliProgress.Presets.shades_classic,
  );
  const users = multi.create(0, 0, { label: 'users fetched   ' });
  const made = multi.create(0, 0, { label: 'tokens made     ' });
  const delivered = multi.create(0, 0, { label: 'tokens delivered' });
  const n = { users: 0, made: 0, delivered: 0 };
  return {
    update(_satelliteId, counter, k) {
      if (counter === 'usersListed') n.users += k;
      else if (counter === 'tokensMade') n.made += k;
      else if (counter === 'tokensDelivered') n.delivered += k;
      else return;
      users.setTotal(n.users);
      users.update(n.users);
      made.setTotal(n.users * perUser);
      made.update(n.made);
      delivered.setTotal(n.made);
      delivered.update(n.delivered);
    },
    stop: () => multi.stop(),
  };
}
