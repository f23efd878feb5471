import cliProgress from 'cli-progress';
import type { ProgressEvent } from '../src/campaigns/flow.js';

/**
 * On stderr for generate: a count of users fetched, and two bars: tokens made (of those the pages so far
 * need: users already served by an earlier run need none) and tokens delivered (of those due, including
 * what an earlier run made but did not deliver). Their totals grow as pages arrive.
 */
export function progressBars(): { update: (satelliteId: string, event: ProgressEvent, n: number) => void; say: (line: string) => void; stop: () => void } {
  // forceRedraw: a line said moves the bars down a row, and a bar drawn only when it changed left the row
  // below it showing through (users fetched, unchanged since, was gone)
  const multi = new cliProgress.MultiBar(
    { format: ' {label} |{bar}| {value}/{total}', hideCursor: true, clearOnComplete: false, etaBuffer: 50, forceRedraw: true },
    cliProgress.Presets.shades_classic,
  );
  // a count, not a bar: the satellites list users a page at a time and never say how many, so its total was
  // always what was fetched so far and the bar sat at 100 %
  const users = multi.create(0, 0, { label: 'users fetched   ' }, { format: ' {label} {value}' });
  const made = multi.create(0, 0, { label: 'tokens made     ' });
  const delivered = multi.create(0, 0, { label: 'tokens delivered' });
  const n = { users: 0, toMake: 0, made: 0, toDeliver: 0, delivered: 0 };
  return {
    update(_satelliteId, event, k) {
      if (event === 'usersListed') n.users += k;
      else if (event === 'tokensToMake') n.toMake += k;
      else if (event === 'tokensMade') n.made += k;
      else if (event === 'tokensToDeliver') n.toDeliver += k;
      else if (event === 'tokensDelivered') n.delivered += k;
      else return;
      users.update(n.users);
      made.setTotal(n.toMake);
      made.update(n.made);
      delivered.setTotal(n.toDeliver);
      delivered.update(n.delivered);
    },
    /** a line above the bars: written plainly, the next redraw overwrote it */
    say: (line) => multi.log(`${line}\n`),
    // a line said since the last redraw (every 100 ms) waits in the log, which stop() does not write: Ctrl-C's
    // 'stopping at the next step' never showed when the run stopped at once, as it does cutting a call in flight
    stop: () => {
      multi.update();
      multi.stop();
    },
  };
}
