import type { Command } from 'commander';
import { CampaignStore } from '../../src/store/campaign-store.js';
import type { Config } from '../../src/config.js';
import { DomainError } from '../../src/errors.js';
import type { Token } from '../../src/store/model.js';
import type { RedisClient } from '../../src/store/redis.js';
import { SatelliteRegistry } from '../../src/satellites/registry.js';
import { tokenHistory } from '../../src/snapshot/index.js';
import { TokenStore } from '../../src/store/token-store.js';
import { TokenEngine } from '../../src/tokens/engine.js';
import { isToken } from '../../src/tokens/validate.js';
import { configFrom, fromSnapshot, lagText, withRedis } from '../context.js';
import { invalidIsUsage, parseDuration, table, when } from '../format.js';
import { counted } from '../../src/plural.js';

/** Opens an engine (scripts run by EVALSHA with an EVAL fallback, so nothing to preload), always disconnects. */
function withEngine<T>(config: Config, fn: (e: TokenEngine, redis: RedisClient) => Promise<T>): Promise<T> {
  return withRedis(config, (redis) => fn(new TokenEngine(new TokenStore(redis, config.keyPrefix, config)), redis));
}

/** Said when a command found nothing: a mistyped satellite id finds nothing, as an owner with nothing does. */
async function noteIfUnregistered(redis: RedisClient, prefix: string, satellite: string): Promise<void> {
  if (!(await new SatelliteRegistry(redis, prefix).get(satellite))) {
    console.error(`note: satellite "${satellite}" is not registered (referral-manager satellites list)`);
  }
}

/** A user's tokens of `satellite` as `read` finds them (a malformed id: a usage error); none, with the note when the satellite is not registered. */
function ownerTokens<T>(cmd: Command, satellite: string, read: (e: TokenEngine) => Promise<T[]>): Promise<T[]> {
  const config = configFrom(cmd);
  return invalidIsUsage(cmd, () =>
    withEngine(config, async (e, redis) => {
      const found = await read(e);
      if (found.length === 0) await noteIfUnregistered(redis, config.keyPrefix, satellite);
      return found;
    }),
  );
}

const FIELDS: (keyof Token)[] = ['token', 'state', 'ownerSatelliteId', 'ownerUserId', 'campaignId', 'createdAt', 'expiresAt',
  'reservationId', 'reservedBy', 'leaseExpiresAt', 'redeemerSatelliteId', 'redeemerUserId', 'redeemedAt'];
const TIMES = new Set<keyof Token>(['createdAt', 'expiresAt', 'leaseExpiresAt', 'redeemedAt']);

/** Revoke results that leave the token usable or unknown; any of them makes the command fail. */
const NOT_REVOKED = new Set(['not_found', 'already_redeemed']);

/** `tokens show|history|list|revoke`: one token, one user's open tokens, and revocation. */
export function register(program: Command): void {
  const tokens = program
    .command('tokens')
    .description('inspect and revoke referral tokens')
    .addHelpText(
      'after',
      '\nExamples:\n  referral-manager tokens show 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d\n  referral-manager tokens list --satellite us1 --user u42\n  referral-manager tokens revoke --campaign spring-2026',
    );

  const show = tokens
    .command('show')
    .description('every field of one token (a reservation whose lease lapsed shows as unredeemed)')
    .argument('<token>', 'the token (lowercase UUIDv4)')
    .option('--json', 'machine-readable output')
    .addHelpText('after', '\nExamples:\n  referral-manager tokens show 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d\n  referral-manager tokens show 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d --json');
  show.action(async function (this: Command, token: string, opts: { json?: boolean }) {
    const t = await invalidIsUsage(this, () => withEngine(configFrom(this), (e) => e.lookup(token)));
    // purged tokens (and any not yet restored after a loss) are still in the snapshot
    if (!t) throw new DomainError('token_not_found', `token "${token}" not found in Redis; the Postgres snapshot keeps purged tokens: referral-manager tokens history ${token}`);
    if (opts.json) console.log(JSON.stringify(t, null, 2));
    else {
      const width = Math.max(...FIELDS.map((f) => f.length));
      // stored unredeemed until a purge, but no longer redeemable: said, as the API's 410 says it
      const expired = t.state === 'unredeemed' && t.expiresAt !== undefined && t.expiresAt <= Date.now();
      for (const f of FIELDS) {
        const v = t[f];
        const text = TIMES.has(f) ? when(v as number | undefined) : v === undefined || v === '' ? '-' : v;
        console.log(`${f.padEnd(width)}  ${text}${f === 'state' && expired ? ' (expired: redeem and reserve answer 410 token_expired)' : ''}`);
      }
    }
  });

  const history = tokens
    .command('history')
    .description('one token and every change of it (generated, reserved, released, lapsed, redeemed, revoked, purged) with its time, from the Postgres snapshot: also for a token purged from Redis')
    .argument('<token>', 'the token (lowercase UUIDv4)')
    .option('--json', 'machine-readable output')
    .addHelpText('after', '\nExamples:\n  referral-manager tokens history 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d\n  referral-manager tokens history 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d --json');
  history.action(async function (this: Command, token: string, opts: { json?: boolean }) {
    // Postgres would refuse the malformed uuid with its own words
    if (!isToken(token)) this.error(`error: token: expected a lowercase UUIDv4, got "${token}"`);
    await fromSnapshot(configFrom(this), async (pool, lag) => {
      const h = await tokenHistory(pool, token);
      const behind = lagText(lag);
      if (!h) throw new DomainError('token_not_found', `token "${token}" is not in the Postgres snapshot (${behind})`);
      if (opts.json) return console.log(JSON.stringify({ ...h, snapshotLag: lag ?? null }, null, 2));
      console.log(`from the Postgres snapshot (${behind})`);
      const rows: [string, string][] = FIELDS.map((f) => [f, TIMES.has(f) ? when(h.token[f] as number | undefined) : String(h.token[f] ?? '-')]);
      if (h.purgedAt !== undefined) rows.push(['purgedAt', when(h.purgedAt)]);
      const width = Math.max(...rows.map(([f]) => f.length));
      for (const [f, v] of rows) console.log(`${f.padEnd(width)}  ${v}`);
      console.log(`\nchanges, in order (${h.events.length}):`);
      for (const e of h.events) console.log(`  ${new Date(e.at).toISOString()}  ${e.type}`);
    });
  });

  const list = tokens
    .command('list')
    .description("one user's unredeemed, unexpired tokens (what the satellite shows them)")
    .requiredOption('--satellite <id>', 'owner satellite id')
    .requiredOption('--user <id>', 'owner user id')
    .option('--json', 'machine-readable output')
    .addHelpText('after', '\nExamples:\n  referral-manager tokens list --satellite us1 --user u42\n  referral-manager tokens list --satellite us1 --user u42 --json');
  list.action(async function (this: Command, opts: { satellite: string; user: string; json?: boolean }) {
    const open = await ownerTokens(this, opts.satellite, (e) => e.listUnredeemed(opts.satellite, opts.user));
    if (opts.json) console.log(JSON.stringify(open, null, 2));
    else if (open.length === 0) console.log(`no unredeemed tokens for user "${opts.user}" of satellite "${opts.satellite}"`);
    else {
      const rows = open.map((t) => [t.token, t.campaignId, new Date(t.createdAt).toISOString(), t.expiresAt === undefined ? '-' : new Date(t.expiresAt).toISOString()]);
      console.log(table(['token', 'campaign', 'created', 'expires'], rows));
    }
  });

  const redeemed = tokens
    .command('redeemed')
    .description("one user's tokens that were redeemed: who joined through the user's invitations, and when")
    .requiredOption('--satellite <id>', 'owner satellite id')
    .requiredOption('--user <id>', 'owner user id')
    .option('--json', 'machine-readable output')
    .addHelpText('after', '\nExamples:\n  referral-manager tokens redeemed --satellite us1 --user u42\n  referral-manager tokens redeemed --satellite us1 --user u42 --json');
  redeemed.action(async function (this: Command, opts: { satellite: string; user: string; json?: boolean }) {
    const used = await ownerTokens(this, opts.satellite, (e) => e.listRedeemed(opts.satellite, opts.user));
    if (opts.json) console.log(JSON.stringify(used, null, 2));
    else if (used.length === 0) console.log(`no redeemed tokens for user "${opts.user}" of satellite "${opts.satellite}"`);
    else {
      const rows = used.map((t) => [t.token, t.campaignId, t.redeemerSatelliteId, t.redeemerUserId, new Date(t.redeemedAt).toISOString()]);
      console.log(table(['token', 'campaign', 'redeemer satellite', 'redeemer user', 'redeemed'], rows));
    }
  });

  const revoke = tokens
    .command('revoke')
    .description("revoke tokens so they can no longer be redeemed: listed tokens, all open tokens of one user or of a satellite's users, or a whole campaign")
    .argument('[token...]', 'tokens to revoke')
    .option('--satellite <id>', "with --user: every unredeemed or reserved token of that user")
    .option('--user <id>', 'with --satellite')
    .option('--all-users', "with --satellite: every unredeemed or reserved token of every user of that satellite")
    .option('--campaign <id>', 'every unredeemed or reserved token of the campaign')
    .option('--json', 'print {"revoked", "results"?} (results: per listed token, its result code)')
    .addHelpText(
      'after',
      '\nExactly one form: <token>..., --satellite S --user U, --satellite S --all-users, or --campaign C.\n' +
        'Redeemed tokens are never revoked. --all-users takes the tokens the satellite\'s users hold now\n' +
        '(e.g. when the satellite is retired: `satellites remove` keeps its tokens); tokens made later are not touched.\n' +
        'Listed tokens: prints each result (ok, not_found, already_redeemed, revoked = was already revoked);\n' +
        'exits 1 if any was not found or already redeemed.\n' +
        '\nExamples:\n  referral-manager tokens revoke 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d 0a1b9f00-1111-4222-8333-444455556666\n' +
        '  referral-manager tokens revoke --satellite us1 --user u42\n  referral-manager tokens revoke --satellite us1 --all-users\n' +
        '  referral-manager tokens revoke --campaign spring-2026 --json',
    );
  revoke.action(async function (this: Command, listed: string[], opts: { satellite?: string; user?: string; allUsers?: boolean; campaign?: string; json?: boolean }) {
    const owners = opts.satellite !== undefined || opts.user !== undefined || opts.allUsers === true;
    const forms = Number(listed.length > 0) + Number(owners) + Number(opts.campaign !== undefined);
    if (forms !== 1) this.error('error: give exactly one of: <token>..., --satellite S --user U, --satellite S --all-users, --campaign C');
    // a forgotten --user must not widen to the whole satellite: that takes --all-users, said outright
    if (owners && (opts.satellite === undefined || (opts.user === undefined) !== (opts.allUsers === true))) {
      this.error('error: --satellite goes with exactly one of --user U or --all-users');
    }
    // check every token before revoking any, so a typo does not leave the list half done
    const bad = listed.filter((t) => !isToken(t));
    if (bad.length) this.error(`error: not a token (lowercase UUIDv4): ${bad.join(', ')}`);

    const config = configFrom(this);
    if (listed.length > 0) {
      const results = await withEngine(config, async (e) => {
        const out: { token: string; code: string }[] = [];
        for (const token of listed) out.push({ token, code: (await e.revokeToken(token)).code });
        return out;
      });
      const revoked = results.filter((r) => r.code === 'ok').length;
      if (opts.json) console.log(JSON.stringify({ revoked, results }, null, 2));
      else {
        for (const r of results) console.log(`${r.token}  ${r.code}`);
        console.log(`revoked ${revoked} of ${counted(listed.length, 'token')}`);
      }
      if (results.some((r) => NOT_REVOKED.has(r.code))) process.exitCode = 1;
      return;
    }
    const revoked = await invalidIsUsage(this, () =>
      withEngine(config, async (e, redis) => {
        if (opts.campaign === undefined) {
          const n = opts.allUsers ? await e.revokeSatellite(opts.satellite!) : await e.revokeOwner(opts.satellite!, opts.user!);
          if (n === 0) await noteIfUnregistered(redis, config.keyPrefix, opts.satellite!);
          return n;
        }
        const n = await e.revokeCampaign(opts.campaign);
        // the id is registered revoked whatever it names (an id only the admin route used has no record):
        // a mistyped one would otherwise pass unnoticed, its real campaign untouched
        if (n === 0 && !(await new CampaignStore(redis, config.keyPrefix).meta(opts.campaign))) {
          console.error(`note: generate has no campaign "${opts.campaign}" and no open token of it was found: check the id. It is registered revoked all the same (no generate will make tokens for it)`);
        }
        return n;
      }),
    );
    if (opts.json) console.log(JSON.stringify({ revoked }));
    else if (opts.campaign !== undefined) console.log(`revoked ${counted(revoked, 'token')} of campaign "${opts.campaign}"`);
    else if (opts.allUsers) console.log(`revoked ${counted(revoked, 'token')} of the users of satellite "${opts.satellite}"`);
    else console.log(`revoked ${counted(revoked, 'token')} of user "${opts.user}" of satellite "${opts.satellite}"`);
  });

  const purge = tokens
    .command('purge')
    .description('delete revoked and expired tokens made long ago from Redis, to free its memory; Postgres keeps them')
    .requiredOption('--older-than <duration>', 'only tokens made more than this long ago: a whole number and ms, s, m (minutes, not months), h, d or w, e.g. 90d, 12w')
    .option('--campaign <id>', 'only tokens of this campaign')
    .option('--dry-run', 'count them and change nothing')
    .option('--json', 'print {"purged"} (with --dry-run: {"wouldPurge"})')
    .addHelpText(
      'after',
      '\nPurged: revoked tokens, and unredeemed ones past their expiresAt (also one whose reservation lapsed).\n' +
        "Redeemed tokens stay (a user's redemptions are read from Redis), and so do reserved ones whose lease holds. A purged token is gone from Redis: a redeem or lookup of it\n" +
        'answers not found (404), no longer revoked/expired (410), and `export` and `tokens show` no longer have it.\n' +
        'Each leaves a "purged" event, so the snapshot keeps its last row, marked purged; restore and verify\n' +
        'leave it out of Redis. Without a snapshot (no writer ever running) a purged token is gone for good.\n' +
        'Counters: `stats` moves it from its state to "purged".\n' +
        '\nExamples:\n  referral-manager tokens purge --older-than 180d --dry-run\n  referral-manager tokens purge --older-than 180d\n' +
        '  referral-manager tokens purge --older-than 30d --campaign spring-2026 --json',
    );
  purge.action(async function (this: Command, opts: { olderThan: string; campaign?: string; dryRun?: boolean; json?: boolean }) {
    const age = parseDuration(opts.olderThan);
    if (age === undefined) this.error('error: --older-than must look like 180d, 12w, 36h (units: ms, s, m = minutes, h, d, w)');
    // older than the epoch: nothing is that old (the engine takes no negative time)
    const madeBefore = Math.max(0, Date.now() - age);
    const dry = opts.dryRun === true;
    const n = await invalidIsUsage(this, () => withEngine(configFrom(this), (e) => e.purge(madeBefore, opts.campaign, dry)));
    if (opts.json) console.log(JSON.stringify(dry ? { wouldPurge: n } : { purged: n }));
    else {
      const what = `revoked or expired tokens made before ${new Date(madeBefore).toISOString()}${opts.campaign === undefined ? '' : ` of campaign "${opts.campaign}"`}`;
      console.log(dry ? `would purge ${n} ${what} (dry run: nothing changed)` : `purged ${n} ${what}`);
    }
  });
}
