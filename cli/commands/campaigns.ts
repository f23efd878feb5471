import type { Command } from 'commander';
import { quote } from 'shell-quote';
import { CampaignStore, campaignNotFound, type Campaign } from '../../src/store/campaign-store.js';
import { DomainError } from '../../src/errors.js';
import { checkId } from '../../src/tokens/validate.js';
import type { Config } from '../../src/config.js';
import { configFrom, fromSnapshot, globalFlags, lagText, withRedis } from '../context.js';
import { invalidIsUsage, table } from '../format.js';
import { pushAll } from '../../src/collections.js';
import { campaignResults } from '../../src/snapshot/index.js';

const total = (c: Campaign, k: 'usersServed' | 'tokensMade' | 'tokensDelivered' | 'failures'): number =>
  Object.values(c.progress).reduce((s, p) => s + p[k], 0);

const status = (c: Campaign, now = Date.now()): string => {
  // revoked outranks the satellites' statuses: none of them will change any more
  if (c.revokedAt !== undefined) return 'revoked';
  const all = Object.values(c.progress).map((p) => p.status);
  // so does an expiry (a resume refuses to run); a run still going is what the campaign is doing, whatever
  // another satellite's run ended as (it said failed while one still ran)
  for (const s of ['expired', 'running'] as const) if (all.includes(s)) return s;
  // a satellite removed before it was served leaves nothing to do
  const finished = all.every((s) => s === 'done' || s === 'removed');
  // an expiry that passed after a run failed or was killed, or before it reached a satellite, ends the
  // campaign as one passing mid-run does: "failed" or "interrupted" said to resume what a resume refuses
  if (!finished && c.expiresAt !== undefined && c.expiresAt <= now) return 'expired';
  for (const s of ['failed', 'interrupted'] as const) if (all.includes(s)) return s;
  return finished ? 'done' : 'pending';
};

const when = (ms: number | undefined): string => (ms === undefined ? 'never' : new Date(ms).toISOString());

/** `id` when it can be a campaign id, else a usage error (exit 2), as `tokens list` answers a malformed id. */
const checked = (cmd: Command, id: string): Promise<string> => invalidIsUsage(cmd, async () => checkId('campaign id', id));

/**
 * What `show` and `refused` say of an id generate has no record of (`lacks`: what they would show). One only the
 * admin route used has tokens, or a revocation, but no run: "does not exist" sent the operator away from
 * `campaigns results`, which finds its tokens. Exit 1, as for an id nothing knows: there is nothing to show.
 */
async function noRecord(cmd: Command, store: CampaignStore, id: string, lacks: string): Promise<never> {
  const [made, at] = await Promise.all([store.madeTokens(id), store.revokedAt(id)]);
  const revoked = at === undefined ? '' : `; revoked at ${when(at)}`;
  if (made) {
    throw new DomainError('campaign_not_found', `campaign "${id}" was never run by generate, so it has no ${lacks}: its tokens were made by the admin route (POST /v1/admin/tokens/generate). What became of them: referral-manager${globalFlags(cmd)} campaigns results ${quote([id])}${revoked}`);
  }
  // an id only the admin route used has no record, but its revocation is real
  if (at !== undefined) throw new DomainError('campaign_not_found', `campaign "${id}" was never run by generate (no token of it in Redis)${revoked}`);
  return campaignNotFound(id);
}

/** Runs `fn` on the campaigns under the command's prefix (withRedis). */
const withCampaigns = <T>(config: Config, fn: (store: CampaignStore) => Promise<T>): Promise<T> => withRedis(config, (redis) => fn(new CampaignStore(redis, config.keyPrefix)));

/**
 * `campaigns list`, `campaigns show <id>`, `campaigns refused <id>`: what generate made and what each satellite
 * accepted or refused; `campaigns results <id>`: what became of the tokens.
 */
export function register(program: Command): void {
  const campaigns = program
    .command('campaigns')
    .description('list generation campaigns, show one per satellite, the users a satellite refused, or what became of the tokens')
    .addHelpText('after', '\nExamples:\n  referral-manager campaigns list\n  referral-manager campaigns show spring-2026 --json');

  campaigns
    .command('list')
    .description('every campaign with its totals')
    .option('--json', 'print JSON')
    .addHelpText('after', '\nExamples:\n  referral-manager campaigns list\n  referral-manager campaigns list --json | jq \'.[].id\'')
    .action(async function (this: Command, opts: { json?: boolean }) {
      await withCampaigns(configFrom(this), async (store) => {
        const all = await store.list();
        // the overall status the table shows, so a script need not work it out again
        if (opts.json) return console.log(JSON.stringify(all.map((c) => ({ ...c, status: status(c) })), null, 2));
        if (all.length === 0) return console.log('no campaigns yet (referral-manager generate --help)');
        console.log(
          table(
            ['campaign', 'created', 'per user', 'expires', 'satellites', 'users', 'made', 'delivered', 'status'],
            all.map((c) => [c.id, when(c.createdAt), c.perUser, when(c.expiresAt), c.satellites.join(','), total(c, 'usersServed'), total(c, 'tokensMade'), total(c, 'tokensDelivered'), status(c)]),
          ),
        );
      });
    });

  campaigns
    .command('show <id>')
    .description('one campaign: settings and progress per satellite')
    .option('--json', 'print JSON')
    .addHelpText('after', '\nExamples:\n  referral-manager campaigns show spring-2026')
    .action(async function (this: Command, given: string, opts: { json?: boolean }) {
      const id = await checked(this, given);
      await withCampaigns(configFrom(this), async (store) => {
        const c = (await store.get(id)) ?? (await noRecord(this, store, id, 'run record (settings, progress per satellite)'));
        if (opts.json) return console.log(JSON.stringify({ ...c, status: status(c) }, null, 2));
        const revoked = c.revokedAt === undefined ? '' : ` at ${when(c.revokedAt)}`;
        console.log(`campaign ${c.id}: ${c.perUser} per user, created ${when(c.createdAt)}, expires ${when(c.expiresAt)}, ${status(c)}${revoked}`);
        console.log(
          table(
            ['satellite', 'users listed (every run)', 'users served (set made)', 'made', 'delivered', 'users refused', 'failures', 'status', 'last error'],
            Object.entries(c.progress).map(([sat, p]) => [sat, p.usersListed, p.usersServed, p.tokensMade, p.tokensDelivered, p.usersRefused, p.failures, p.status, p.lastError ?? '']),
          ),
        );
      });
    });

  campaigns
    .command('results <id>')
    .description('what became of a campaign\'s tokens, per owner satellite: redeemed (and on which satellite), unredeemed, expired, revoked, purged; from the Postgres snapshot')
    .option('--json', 'print JSON')
    .addHelpText('after', '\nExamples:\n  referral-manager campaigns results spring-2026\n  referral-manager campaigns results spring-2026 --json')
    .action(async function (this: Command, given: string, opts: { json?: boolean }) {
      const id = await checked(this, given);
      await fromSnapshot(configFrom(this), async (pool, lag) => {
        const r = await campaignResults(pool, id);
        if (!r) throw new Error(`no token of campaign "${id}" in the Postgres snapshot`);
        if (opts.json) return console.log(JSON.stringify({ ...r, snapshotLag: lag ?? null }, null, 2));
        console.log(`campaign ${id}, from the Postgres snapshot (${lagText(lag)})`);
        const pct = (n: number, of: number) => (of === 0 ? '-' : `${((100 * n) / of).toFixed(1)}%`);
        const sats = Object.entries(r.satellites);
        if (sats.length === 0) return console.log('no token of this campaign in the snapshot');
        console.log(
          table(
            ['owner satellite', 'made', 'redeemed', 'redeemed %', 'unredeemed', 'reserved', 'expired', 'revoked', 'purged', 'redeemed on'],
            sats.map(([sat, s]) => [sat, s.generated, s.redeemed, pct(s.redeemed, s.generated), s.unredeemed, s.reserved, s.expired, s.revoked, s.purged, Object.entries(s.redeemedOn).map(([on, n]) => `${on} ${n}`).join(', ')]),
          ),
        );
      });
    });

  campaigns
    .command('revoked')
    .description('every revoked campaign id and when, also ids only the admin route used (generate never ran them, so list and show do not know them)')
    .option('--json', 'print [{id, revokedAt, ranByGenerate}]')
    .addHelpText('after', '\nExamples:\n  referral-manager campaigns revoked\n  referral-manager campaigns revoked --json')
    .action(async function (this: Command, opts: { json?: boolean }) {
      await withCampaigns(configFrom(this), async (store) => {
        const all = await store.revoked();
        if (opts.json) return console.log(JSON.stringify(all, null, 2));
        if (all.length === 0) return console.log('no campaign revoked');
        console.log(table(['campaign', 'revoked', 'run by generate'], all.map((r) => [r.id, when(r.revokedAt), r.ranByGenerate ? 'yes' : 'no'])));
      });
    });

  campaigns
    .command('refused <id>')
    .description('the users each satellite refused in a campaign (their tokens were revoked), and those a resume did not push (tokens revoked or lost, or served by another campaign meanwhile). One "satellite user" line each')
    .option('--satellite <id>', 'only this satellite')
    .option('--json', 'print {satellite: [user ids]}')
    .addHelpText('after', '\nExamples:\n  referral-manager campaigns refused spring-2026\n  referral-manager campaigns refused spring-2026 --satellite us1 --json')
    .action(async function (this: Command, given: string, opts: { satellite?: string; json?: boolean }) {
      const id = await checked(this, given);
      await withCampaigns(configFrom(this), async (store) => {
        // only generate pushes tokens to satellites, so only its runs record refusals
        const c = (await store.meta(id)) ?? (await noRecord(this, store, id, 'record of users refused (only generate pushes tokens to satellites)'));
        if (opts.satellite !== undefined && !c.satellites.includes(opts.satellite)) throw new Error(`campaign "${id}" has no satellite "${opts.satellite}" (it has ${c.satellites.join(', ')})`);
        const out: [string, string[]][] = [];
        for (const sat of opts.satellite === undefined ? c.satellites : [opts.satellite]) {
          const users: string[] = [];
          for await (const page of store.refusedUsers(id, sat)) pushAll(users, page);
          users.sort();
          out.push([sat, users]);
          if (!opts.json) for (const u of users) console.log(`${sat}\t${u}`);
        }
        // fromEntries: a satellite named __proto__ stays a field
        if (opts.json) console.log(JSON.stringify(Object.fromEntries(out), null, 2));
      });
    });
}
