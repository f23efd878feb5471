import { hostname } from 'node:os';
import type { Command } from 'commander';
import { startOpsServer, STOP_SIGNALS } from '../../src/http/ops.js';
import { rebuildRedis, RESTORE_LANES, revocationGaps, SNAPSHOT_LOG, startSnapshotWriter, verify, type SnapshotWriter } from '../../src/snapshot/index.js';
import { logTo, setLogging } from '../../src/log.js';
import { type RedisClient } from '../../src/store/redis.js';
import { clusterFailures } from '../../src/store/cluster-probe.js';
import { TokenStore } from '../../src/store/token-store.js';
import { TokenEngine } from '../../src/tokens/engine.js';
import { configFrom, connectRedis, openSnapshot } from '../context.js';
import type { Config } from '../../src/config.js';
import { counted } from '../../src/plural.js';

/**
 * Ready: the writer reaches Redis (on a Cluster every master: a lost one holds event streams it cannot
 * read) and, while it holds the lease, Postgres. A standby is ready: it is there to take over. A leader
 * retrying a Postgres outage is not, so the outage shows on /readyz too; nor one migrating, which writes nothing yet.
 */
async function writerReadiness(writer: SnapshotWriter | undefined): Promise<{ ready: boolean; details: Record<string, unknown> }> {
  if (!writer) return { ready: false, details: { state: 'starting' } };
  const s = writer.status();
  const probe = s.redis === 'up' ? await writer.clusterMasters() : undefined;
  // one Redis: its connection stays up while the server hangs (SIGSTOP, a long script), so ask it, as serve's
  // /readyz does; a client not connected says why, as serve's /readyz does
  const why = !probe ? await writer.redisProbe() : undefined;
  const failing = probe ? clusterFailures(probe) : why ? [why] : [];
  const redis = failing.length ? 'down' : s.redis;
  const ready = redis === 'up' && (!s.leader || s.state === 'up');
  const details: Record<string, unknown> = {
    redis,
    ...(probe && { masters: probe.masters }),
    leader: s.leader,
    postgres: s.leader ? s.state : 'standby',
    ...(s.leader && s.migration !== undefined && { migration: s.migration }),
    lagEvents: s.lagEvents,
    lagSeconds: s.lagSeconds,
  };
  if (failing.length) details.error = failing.join('; ');
  return { ready, details };
}

const REVOCATION_HINT: Record<string, string> = {
  unmarked: 'generate still makes tokens of this revoked campaign there',
  unregistered: 'revoked only in these shards; a restore would lose the revocation',
};

/**
 * Mends the gaps `verify` reports between the registry of revoked campaigns and the shards' marks by
 * revoking each such campaign again through the engine: the registry keeps (or, from the marks, gets) its
 * time, every shard is marked and swept with events, so the snapshot follows.
 */
async function repairRevocations(redis: RedisClient, config: Config): Promise<{ campaigns: string[]; tokensRevoked: number }> {
  const gaps = await revocationGaps(redis, config.keyPrefix);
  const engine = new TokenEngine(new TokenStore(redis, config.keyPrefix, config));
  let tokensRevoked = 0;
  for (const id of gaps.unmarked.keys()) tokensRevoked += await engine.revokeCampaign(id);
  for (const [id, m] of gaps.unregistered) tokensRevoked += await engine.revokeCampaign(id, m.revokedAt);
  return { campaigns: [...gaps.unmarked.keys(), ...gaps.unregistered.keys()], tokensRevoked };
}

/** `snapshot` (the writer alone), `restore --from-postgres [--force]` and `verify`. */
export function register(program: Command): void {
  program
    .command('snapshot')
    .description('run the Postgres snapshot writer alone (one active writer per deployment: a Redis lease)')
    .option('--metrics-port <port>', 'port of /healthz, /readyz and /metrics on HOST (env SNAPSHOT_METRICS_PORT, default 7481; 0: any free port)')
    .option('--log-format <format>', 'text or json (env LOG_FORMAT; default text)')
    .option('--log-level <level>', 'debug, info, warn or error (env LOG_LEVEL; default info)')
    .addHelpText('after', '\nExamples:\n  referral-manager snapshot\n  DATABASE_URL=postgres://postgres@db:5432/rm referral-manager snapshot --key-prefix rm --metrics-port 9481')
    .action(async function (this: Command, opts: { metricsPort?: string; logFormat?: string; logLevel?: string }) {
      const config = configFrom(this, { snapshotMetricsPort: opts.metricsPort, logFormat: opts.logFormat, logLevel: opts.logLevel }, { snapshotMetricsPort: '--metrics-port' });
      setLogging(config);
      const log = logTo(SNAPSHOT_LOG);
      let writer: SnapshotWriter | undefined;
      // listen first: a taken port fails the start before the lease is taken
      const ops = await startOpsServer(config.host, config.snapshotMetricsPort, () => writerReadiness(writer), config.metricsKey);
      writer = await startSnapshotWriter(config);
      log('info', `/healthz, /readyz and /metrics on ${config.host}:${ops.port}`, { host: config.host, port: ops.port });
      const sig = await new Promise<NodeJS.Signals>((resolve) => {
        // SIGHUP by default killed the writer holding its lease
        for (const signal of STOP_SIGNALS) process.once(signal, resolve);
      });
      // a stop must be told from a crash in the log
      const t0 = Date.now();
      log('info', `${sig}: stopping (the batch in hand is committed or left pending)`, { signal: sig });
      ops.close();
      await writer.stop();
      const ms = Date.now() - t0;
      log('info', `stopped in ${ms} ms`, { ms });
      // a scraper's idle keep-alive connection would hold the process open (this uWS has no app.close)
      process.exit(0);
    });

  program
    .command('restore')
    .description('rebuild an empty Redis from the Postgres snapshot (writes no events)')
    .option('--from-postgres', 'read tokens from DATABASE_URL (the only source for now)')
    .option('--force', 'restore even when keys exist under the prefix (the engine keys are replaced)')
    .option('--discard-pending', 'with --force: restore even though changes in the event streams have not reached Postgres (they are lost)')
    .addHelpText('after', '\nExamples:\n  referral-manager restore --from-postgres\n  referral-manager restore --from-postgres --force --key-prefix rm')
    .action(async function (this: Command, opts: { fromPostgres?: boolean; force?: boolean; discardPending?: boolean }) {
      if (!opts.fromPostgres) this.error('error: restore needs --from-postgres');
      const config = configFrom(this);
      const redis = await connectRedis(config);
      const pool = await openSnapshot(config.databaseUrl, RESTORE_LANES);
      try {
        const say = (line: string) => console.log(line);
        const r = await rebuildRedis(redis, pool, config.keyPrefix, { force: opts.force, discardPending: opts.discardPending, holder: `restore on ${hostname()} pid ${process.pid}`, say });
        console.log(`restored ${counted(r.tokens, 'token')} into prefix "${config.keyPrefix}"`);
        console.log(`restored ${counted(r.satellites.restored, 'satellite')} with their API keys${r.satellites.kept ? `; ${r.satellites.kept} already registered or removed in Redis, kept as they are` : ''}`);
        console.log(`restored ${counted(r.campaigns.restored, 'campaign')}${r.campaigns.kept ? `; ${r.campaigns.kept} already in Redis, kept as they are` : ''}`);
        console.log(`restored ${counted(r.revocations.restored, 'campaign revocation')}${r.revocations.kept ? `; ${r.revocations.kept} already in Redis, kept as they are` : ''}`);
      } finally {
        await pool.end();
        redis.disconnect();
      }
    });

  program
    .command('verify')
    .description('compare Redis with the Postgres snapshot and list differences (exit 1 if any)')
    .option('--max <n>', 'differences to list', '100')
    .option('--json', 'print the report as JSON')
    .option('--repair-revocations', 'first mend revoked campaigns inside Redis: re-mark and sweep the shards a revoke missed, register revocations only the shards remember')
    .option(
      '--repair-tokens',
      'queue a copy from Redis to Postgres of the tokens whose changes Postgres lacks: those it has no row of, and those Redis holds redeemed or revoked where Postgres still has them open (every other difference is only listed)',
    )
    .option(
      '--repair-leases',
      'mend the lease index inside Redis (differences of kind lease_index): index the reserved tokens it lacks, at their lease, and drop entries of tokens not reserved, so the lapse sweep finds every abandoned reservation; once after upgrading from a version without the index',
    )
    .option(
      '--repair-redis',
      'give Redis back the changes it lost when it went back in time (an older RDB or AOF file, a lagging replica promoted): tokens Postgres holds redeemed or revoked where Redis holds them open get that state, tokens Postgres holds that Redis lacks are written back, and campaign revocations Postgres holds are registered again (every other difference is only listed)',
    )
    .addHelpText('after', '\nExamples:\n  referral-manager verify\n  referral-manager verify --json --max 10\n  referral-manager verify --repair-revocations\n  referral-manager verify --repair-tokens\n  referral-manager verify --repair-leases\n  referral-manager verify --repair-redis')
    .action(async function (this: Command, opts: { max: string; json?: boolean; repairRevocations?: boolean; repairTokens?: boolean; repairLeases?: boolean; repairRedis?: boolean }) {
      // NaN would list nothing and still exit 1 on differences, which reads like a broken verify
      if (!/^\d+$/.test(opts.max)) this.error(`error: --max must be a whole number, got "${opts.max}"`);
      const config = configFrom(this);
      const redis = await connectRedis(config);
      let pool: Awaited<ReturnType<typeof openSnapshot>> | undefined;
      try {
        // the repair needs Redis only: it is done, and said, before the snapshot is opened, so an unreachable
        // Postgres fails the comparison but not the repair
        const repaired = opts.repairRevocations ? await repairRevocations(redis, config) : undefined;
        if (repaired && !opts.json) console.log(`repaired ${counted(repaired.campaigns.length, 'revoked campaign')}${repaired.campaigns.length ? ` (${repaired.campaigns.join(', ')})` : ''}, ${counted(repaired.tokensRevoked, 'token')} swept`);
        pool = await openSnapshot(config.databaseUrl).catch((err: unknown) => {
          if (repaired && opts.json) console.log(JSON.stringify({ repaired }, null, 2));
          throw err;
        });
        const report = await verify(redis, pool, config.keyPrefix, { maxListed: Number(opts.max), repairTokens: opts.repairTokens, repairLeases: opts.repairLeases, repairRedis: opts.repairRedis });
        if (opts.json) console.log(JSON.stringify(repaired ? { ...report, repaired } : report, null, 2));
        else {
          for (const d of report.listed) {
            const detail = d.fields?.map((f) => `${f.field}: redis=${JSON.stringify(f.redis)} postgres=${JSON.stringify(f.postgres)}`).join('; ');
            console.log(`${d.token} ${d.kind}${detail ? ` ${detail}` : ''}${d.shards ? ` shards ${d.shards.join(',')}: ${REVOCATION_HINT[d.kind]}` : ''}`);
          }
          console.log(`${counted(report.tokens, 'token')} in Redis, ${counted(report.differences, 'difference')}`);
          console.log(`${counted(report.satellites, 'satellite')} in Redis`);
          console.log(`${counted(report.campaigns, 'campaign')} in Redis`);
          console.log(`${counted(report.revokedCampaigns, 'revoked campaign')} in Redis`);
          // 200k differences of a writer still catching up read like a Postgres that lost them
          if (report.lagEvents > 0 && report.differences > 0)
            console.error(
              `the snapshot writer had ${counted(report.lagEvents, 'change')} left to copy (rm_snapshot_lag_events) as verify ran: differences of the tokens they changed may be only that lag; run verify again once the lag is 0`,
            );
          if (report.listed.some((d) => d.shards)) console.error('mend the revoked campaigns listed above with: referral-manager verify --repair-revocations');
          if (report.leasesRepaired !== undefined) console.log(`wrote or removed ${counted(report.leasesRepaired, 'lease index entry', 'lease index entries')}`);
          else if (report.listed.some((d) => d.kind === 'lease_index')) console.error('mend the lease index entries listed above with: referral-manager verify --repair-leases');
          if (report.reapplied !== undefined) console.log(`gave ${counted(report.reapplied, 'token')} in Redis back what Postgres holds of them, and registered ${counted(report.revocationsRestored ?? 0, 'campaign revocation')} again; run verify again to see what is left`);
          if (report.resynced !== undefined) console.log(`queued ${counted(report.resynced, 'token')} to be copied to Postgres again; run verify again once the snapshot has caught up (rm_snapshot_lag_events 0)`);
        }
        if (report.differences > 0) process.exitCode = 1;
      } finally {
        await pool?.end();
        redis.disconnect();
      }
    });
}
