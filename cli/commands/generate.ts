import { Command, Option } from 'commander';
import { CLAIM_TTL_MS, CampaignStore } from '../../src/store/campaign-store.js';
import { runCampaign, type SatelliteReport } from '../../src/campaigns/flow.js';
import { NO_URL, planRun, REMOVED, sh } from '../../src/campaigns/plan.js';
import { SatelliteRegistry } from '../../src/satellites/registry.js';
import { TokenStore } from '../../src/store/token-store.js';
import { TokenEngine, MAX_EXPIRES_AT, MAX_TOKENS_PER_CALL, newCampaignId } from '../../src/tokens/engine.js';
import { checkCampaignId } from '../../src/tokens/validate.js';
import { configFrom, globalFlags, withRedis } from '../context.js';
import { parseDuration, table } from '../format.js';
import { progressBars } from '../progress.js';
import { counted } from '../../src/plural.js';

interface Opts {
  satellite?: string[];
  all?: boolean;
  perUser?: string;
  expires?: string;
  campaign?: string;
  resume?: string;
  dryRun?: boolean;
  json?: boolean;
  pageSize: string;
  maxPages: string;
  batchSize: string;
  progress: boolean;
}

const EXAMPLES = `
Examples:
  referral-manager generate --all --per-user 3 --expires 30d --campaign spring-2026
  referral-manager generate --satellite us1 --satellite eu1 --per-user 5 --dry-run
  referral-manager generate --resume spring-2026      # deliver what a failed run did not

A campaign records every token it made and what each satellite accepted: rerunning it (same
--campaign, or --resume) serves only users it has not served and delivers only what is missing.
--all skips a satellite registered without a url (one that only redeems): it is reported with status
"skipped" and left out of the campaign, and is no failure (exit 0 when every other one succeeded);
the same --all --campaign serves it once it has a url (satellites update <id> --url). A --satellite without a url is an error, and
so is --all when no satellite has one.
Exit 1 when a satellite failed (the others still ran); the summary says how to resume.`;

/** The shell's exit status for a process a signal stopped. */
const EXIT_ON = { SIGINT: 130, SIGTERM: 143 } as const;

export function register(program: Command): void {
  program
    .command('generate')
    .description('make N tokens for every user with none left on the chosen satellites, and deliver them')
    .option('--satellite <id...>', 'satellite(s) to serve (repeatable)')
    .option('--all', 'serve every registered satellite with a url (one without is reported skipped)')
    .option('--per-user <n>', `tokens per user (1..${MAX_TOKENS_PER_CALL})`)
    .option('--expires <duration>', 'tokens expire after this long, e.g. 30d, 12h (default: never)')
    .option('--campaign <name>', 'campaign id (default: c-<date>-<random>); an existing campaign is continued')
    .option('--resume <campaign>', 'continue a campaign with its own settings and satellites')
    .option('--dry-run', 'change nothing; say what would happen')
    .option('--json', 'print the summary as JSON')
    .addOption(new Option('--page-size <n>', 'users asked per page').default('1000'))
    .addOption(new Option('--max-pages <n>', 'most pages listed per satellite; a listing still going then fails that satellite').default('100000'))
    .addOption(new Option('--batch-size <n>', 'most tokens pushed per request to a satellite').default('5000'))
    .option('--no-progress', 'no progress bars (they only show on a TTY anyway)')
    .addHelpText('after', EXAMPLES)
    .action(async function (this: Command, opts: Opts) {
      const usage = (msg: string): never => this.error(`error: ${msg}`);
      const pageSize = positive(opts.pageSize, 10_000) ?? usage('--page-size must be an integer 1..10000');
      const maxPages = positive(opts.maxPages, 100_000_000) ?? usage('--max-pages must be an integer 1..100000000');
      const deliverBatch = positive(opts.batchSize, 100_000) ?? usage('--batch-size must be an integer 1..100000');
      if (opts.resume !== undefined) {
        if (opts.satellite || opts.all || opts.perUser || opts.expires || opts.campaign) {
          usage('--resume takes the campaign\'s own settings: drop --satellite/--all/--per-user/--expires/--campaign');
        }
      } else {
        if (!opts.satellite === !opts.all) usage('choose the satellites: --satellite <id>... or --all');
        if (opts.perUser === undefined) usage('--per-user <n> is required');
      }
      const perUser = opts.perUser === undefined ? undefined : (positive(opts.perUser, MAX_TOKENS_PER_CALL) ?? usage(`--per-user must be an integer 1..${MAX_TOKENS_PER_CALL}`));
      let expiresAt: number | undefined;
      if (opts.expires !== undefined) {
        const ms = parseDuration(opts.expires) ?? usage('--expires must look like 2w, 30d, 12h, 90m, 45s');
        expiresAt = Date.now() + ms;
        // the engine refuses these at the first batch, after the campaign is recorded with them: it could never finish
        if (ms === 0 || !Number.isSafeInteger(expiresAt) || expiresAt > MAX_EXPIRES_AT) usage('--expires must be longer than 0 and end before the year 10000');
      }
      if (opts.campaign !== undefined) {
        try {
          checkCampaignId('--campaign', opts.campaign);
        } catch (err) {
          usage((err as Error).message);
        }
      }

      const config = configFrom(this);
      await withRedis(config, async (redis) => {
        const registry = new SatelliteRegistry(redis, config.keyPrefix, config.outboundKeySecrets);
        const campaigns = new CampaignStore(redis, config.keyPrefix);
        const store = new TokenStore(redis, config.keyPrefix, config);
        await store.preload();

        const id = opts.resume ?? opts.campaign ?? newCampaignId();
        const run = opts.dryRun ? undefined : await campaigns.claim(id);
        if (!opts.dryRun && !run) throw new Error(`campaign "${id}" is being run by another generate; wait for it (or, if it was killed, up to ${CLAIM_TTL_MS / 1000} s)`);
        try {
          const { campaign, existed, satellites, skipped } = await planRun(
            registry,
            campaigns,
            { id, resume: opts.resume !== undefined, all: opts.all === true, satellites: opts.satellite ?? [], perUser, expiresAt, dryRun: opts.dryRun === true, command: `referral-manager${globalFlags(this)}` },
            (line) => console.error(line),
          );

          const bars = opts.progress && !opts.json && process.stderr.isTTY ? progressBars() : undefined;
          // Ctrl-C or a cron `timeout` (SIGTERM): stop at the next step, record where, release the claims
          // and say how to go on; a second signal stops at once. Before, the process died mid-step: no hint,
          // the bars' hidden cursor left hidden, and --resume refused until the claims lapsed (30 s).
          const stop = new AbortController();
          let signalled: keyof typeof EXIT_ON | undefined;
          const onSignal = (sig: keyof typeof EXIT_ON) => {
            if (signalled) {
              bars?.stop();
              process.exit(EXIT_ON[sig]);
            }
            signalled = sig;
            const say = bars?.say ?? ((line: string) => console.error(line));
            say(`${sig}: stopping at the next step, cutting calls to satellites in flight (${sig} again exits at once)`);
            stop.abort(new Error(`interrupted by ${sig}`));
          };
          process.on('SIGINT', onSignal).on('SIGTERM', onSignal);
          const reports = await runCampaign(
            {
              engine: new TokenEngine(store),
              campaigns,
              campaign,
              existed,
              dryRun: opts.dryRun === true,
              pageSize,
              maxPages,
              deliverBatch,
              timeoutMs: config.satelliteTimeoutMs,
              attempts: config.satelliteAttempts,
              ...(run ? { claim: run } : {}),
              registry,
              onProgress: bars?.update,
              say: bars?.say ?? ((line: string) => console.error(line)),
              stop: stop.signal,
            },
            satellites,
          ).finally(() => process.off('SIGINT', onSignal).off('SIGTERM', onSignal));
          bars?.stop();
          print(id, [...reports, ...skipped], opts);
          const flags = globalFlags(this);
          for (const r of skipped) {
            if (r.error === REMOVED) console.error(`satellite ${r.satelliteId} skipped: ${REMOVED}; the campaign serves its other satellites`);
            // a dry run made no campaign: the id it drew names nothing
            else console.error(`satellite ${r.satelliteId} skipped: ${NO_URL}; after referral-manager${flags} satellites update ${sh(r.satelliteId)} --url <url>, referral-manager${flags} generate --all --per-user ${campaign.perUser}${opts.dryRun && !existed && opts.campaign === undefined ? '' : ` --campaign ${sh(id)}`} serves it`);
          }
          const failed = reports.filter((r) => r.status === 'failed');
          // revoked or expired: a campaign a resume cannot go on with
          const stopped = reports.filter((r) => r.status === 'revoked' || r.status === 'expired');
          // removed mid-run: no failure, as a resume skipping it is none
          const removed = reports.filter((r) => r.status === 'skipped');
          for (const r of reports.filter((r) => r.usersRefused > 0)) {
            const rest = r.tokensDelivered > 0 ? ', the other users were served' : '';
            const kept = r.usersRefusedKept ?? 0;
            const fate = kept === 0 ? 'those tokens are revoked' : kept === r.usersRefused ? 'their tokens are kept (served by another campaign meanwhile, or taken in part by the satellite)' : `their tokens are revoked, but for ${counted(kept, 'user')} served by another campaign meanwhile or whose set the satellite took in part`;
            // not all the satellite's doing: a resume also refuses users whose tokens were revoked or lost, or who were served by another campaign meanwhile
            console.error(`satellite ${r.satelliteId}: ${counted(r.usersRefused, 'user')} not given this campaign's tokens (first ${r.refusal}); ${fate}${rest}`);
          }
          for (const r of reports.filter((r) => r.usersInvalid > 0)) {
            console.error(`satellite ${r.satelliteId} listed ${counted(r.usersInvalid, 'user id')} that ${r.usersInvalid === 1 ? 'is not a valid id' : 'are not valid ids'}, skipped (first ${r.invalidUser})`);
          }
          for (const r of [...stopped, ...removed]) console.error(`satellite ${r.satelliteId} stopped: ${r.error}`);
          for (const r of failed) console.error(`satellite ${r.satelliteId} failed: ${r.error}`);
          // a revoked or expired campaign cannot be resumed, and a dry run recorded no campaign to resume
          if (failed.length && !stopped.length) {
            const then = signalled ? 'to go on, run' : 'once what failed above is fixed or over, run';
            const dry = signalled ? `campaign ${id}: the dry run was interrupted` : `campaign ${id}: a satellite failed in the dry run; after fixing it run the dry run again`;
            console.error(opts.dryRun ? dry : `campaign ${id} is incomplete; ${then}: referral-manager${flags} generate --resume ${sh(id)}`);
          }
          if (failed.length || stopped.length) process.exitCode = 1;
          if (signalled) process.exitCode = EXIT_ON[signalled];
        } finally {
          await run?.release();
        }
      });
    });
}

function positive(raw: string, max: number): number | undefined {
  if (!/^\d+$/.test(raw)) return undefined;
  const n = Number(raw);
  return n >= 1 && n <= max ? n : undefined;
}

function print(id: string, reports: SatelliteReport[], opts: Opts): void {
  if (opts.json) {
    console.log(JSON.stringify({ campaignId: id, dryRun: opts.dryRun === true, satellites: reports }, null, 2));
    return;
  }
  const [made, delivered] = opts.dryRun ? ['tokens to make', 'to deliver'] : ['tokens made', 'delivered'];
  console.log(`${opts.dryRun ? 'dry run (nothing changed) of' : ''} campaign ${id}`.trim());
  console.log(
    table(
      ['satellite', 'users', made, delivered, 'refused', 'failures', 'status'],
      reports.map((r) => [r.satelliteId, r.usersServed, r.tokensMade, r.tokensDelivered, r.usersRefused, r.failures, r.status]),
    ),
  );
}
