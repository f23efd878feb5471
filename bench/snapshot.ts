import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import { loadConfig } from '../src/config.js';
import { openPostgres, RESTORE_LANES, restoreFromPostgres, sampleLag, startSnapshotWriter, verify, type Lag } from '../src/snapshot/index.js';
import { createRedis, type RedisClient } from '../src/store/redis.js';
import { dropPrefix } from '../src/store/key-walk.js';
import { TokenStore } from '../src/store/token-store.js';
import { TokenEngine } from '../src/tokens/engine.js';
import { cpuSecondsOf } from './proc.js';
import { numberFlag } from './flags.js';
import { redisCpuSeconds } from './redis-server.js';
import { NO_REPLICA_WAIT } from '../src/store/replicas.js';

/**
 * Snapshot writer speed against the local Postgres, in a throw-away database and key prefix:
 *  - catch-up: `events` generated events wait in the streams, then the writer starts; events/s until lag is 0;
 *  - lag under load: `redeems` redeems at `concurrency` while the writer runs; the worst lag sampled;
 *  - restore and verify: every token rebuilt from Postgres under a second prefix (what `restore --from-postgres`
 *    does for tokens, the bulk of any restore), then compared with Postgres (what `verify` does), each timed.
 *   node dist/bench/snapshot.js [--events N] [--redeems N] [--concurrency C]
 */
export interface SnapshotBenchOptions {
  events?: number;
  redeems?: number;
  concurrency?: number;
  /** server URL; the bench creates and drops its own database there */
  databaseUrl?: string;
}

export interface SnapshotBenchResult {
  events: number;
  catchUpSeconds: number;
  eventsPerSec: number;
  redeems: number;
  redeemsPerSec: number;
  maxLagSeconds: number;
  maxLagEvents: number;
  /** CPU per event during the catch-up: Postgres backends of the bench's database, the writer (this process), Redis */
  cpuMicrosPerEvent: { postgres: number; writer: number; redis: number };
  restore: { tokens: number; seconds: number; tokensPerSec: number };
  verify: { tokens: number; seconds: number; tokensPerSec: number; differences: number };
}

/** Seconds `fn` took, with its result. */
async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const r = await fn();
  return [r, (performance.now() - t0) / 1000];
}

/** Backends serving `db` (the writer's, the bench's, autovacuum's), when Postgres runs on this machine. */
async function backendPids(pool: pg.Pool, db: string): Promise<number[]> {
  const r = await pool.query<{ pid: number }>('SELECT pid FROM pg_stat_activity WHERE datname = $1', [db]);
  return r.rows.map((x) => x.pid);
}

/** CPU seconds the backends of `db` spent since `before` (a backend started meanwhile counts whole). */
async function backendCpuSince(pool: pg.Pool, db: string, before: Map<number, number>): Promise<number> {
  let sum = 0;
  for (const [pid, cpu] of cpuSecondsOf(await backendPids(pool, db))) sum += cpu - (before.get(pid) ?? 0);
  return sum;
}

/** Samples the writer's lag every `intervalMs` until stopped; for combining with the HTTP redeem bench. */
export function watchLag(redis: RedisClient, prefix: string, intervalMs = 200): { stop(): Promise<Lag> } {
  const worst: Lag = { events: 0, seconds: 0 };
  let running = true;
  const loop = (async () => {
    while (running) {
      const l = await sampleLag(redis, prefix);
      worst.events = Math.max(worst.events, l.events);
      worst.seconds = Math.max(worst.seconds, l.seconds);
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return worst;
    },
  };
}

async function generate(engine: TokenEngine, total: number): Promise<string[]> {
  const out: string[] = [];
  const calls: Promise<void>[] = [];
  for (let done = 0; done < total; done += 10_000) {
    const owners = Array.from({ length: Math.min(10_000, total - done) / 10 }, (_, i) => ({ ownerSatelliteId: 'bench-sat', ownerUserId: `u${done + i}` }));
    calls.push(engine.generate({ owners, perUser: 10, campaignId: 'bench' }).then((r) => void out.push(...r.tokens.map((t) => t.token))));
    if (calls.length >= 4) await Promise.all(calls.splice(0));
  }
  await Promise.all(calls);
  return out;
}

/**
 * Lag 0 means every entry is acknowledged, and the writer acknowledges only after its commit. The row
 * count is read once lag is 0 (a count every poll would compete with the writer for Postgres' CPU).
 */
async function waitCaughtUp(redis: RedisClient, prefix: string, pool: pg.Pool, events: number): Promise<void> {
  for (;;) {
    if ((await sampleLag(redis, prefix)).events === 0) {
      const n = Number((await pool.query('SELECT count(*) AS n FROM token_events')).rows[0].n);
      if (n >= events) return;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function run(opts: SnapshotBenchOptions = {}): Promise<SnapshotBenchResult> {
  const log = console.log;
  const events = Math.ceil((opts.events ?? 500_000) / 10) * 10;
  const redeems = Math.min(opts.redeems ?? 50_000, events);
  const concurrency = opts.concurrency ?? 100;
  const prefix = `bench-snap-${randomBytes(3).toString('hex')}`;
  const restoredPrefix = `${prefix}-restored`;
  const server = new URL(opts.databaseUrl ?? 'postgres://postgres@127.0.0.1:5432/postgres');
  const dbName = `bench_rm_${randomBytes(3).toString('hex')}`;
  const dbUrl = new URL(server.toString());
  dbUrl.pathname = `/${dbName}`;
  const config = loadConfig({ redisUrl: 'redis://127.0.0.1:6379', keyPrefix: prefix, databaseUrl: dbUrl.toString() });
  const redis = createRedis(config);
  const engine = new TokenEngine(new TokenStore(redis, prefix, NO_REPLICA_WAIT));
  const pool = await openPostgres(config.databaseUrl, RESTORE_LANES);
  try {
    log(`generating ${events} tokens (= ${events} events) with no writer running...`);
    const tokens = await generate(engine, events);

    const pg0 = cpuSecondsOf(await backendPids(pool, dbName));
    const node0 = process.cpuUsage();
    const redis0 = await redisCpuSeconds(redis);
    const t0 = performance.now();
    const writer = await startSnapshotWriter(config, { log: () => {} });
    await waitCaughtUp(redis, prefix, pool, events);
    const catchUpSeconds = (performance.now() - t0) / 1000;
    const node = process.cpuUsage(node0);
    const perEvent = (seconds: number) => Math.round((seconds * 1e6) / events * 10) / 10;
    const cpuMicrosPerEvent = {
      postgres: perEvent(await backendCpuSince(pool, dbName, pg0)),
      writer: perEvent((node.user + node.system) / 1e6),
      redis: perEvent((await redisCpuSeconds(redis)) - redis0),
    };
    log(`catch-up: ${events} events in ${catchUpSeconds.toFixed(2)} s = ${Math.round(events / catchUpSeconds)} events/s; ` +
      `CPU per event: Postgres ${cpuMicrosPerEvent.postgres} us, writer ${cpuMicrosPerEvent.writer} us, Redis ${cpuMicrosPerEvent.redis} us`);

    const lag = watchLag(redis, prefix);
    const r0 = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < redeems) await engine.redeem(tokens[next++]!, 'bench-redeemer', 'u');
      }),
    );
    const redeemSeconds = (performance.now() - r0) / 1000;
    await waitCaughtUp(redis, prefix, pool, events + redeems);
    const worst = await lag.stop();
    log(`redeem load: ${redeems} redeems at ${Math.round(redeems / redeemSeconds)}/s; worst lag ${worst.seconds.toFixed(3)} s, ${worst.events} events`);
    await writer.stop();

    const [restored, restoreSeconds] = await timed(() => restoreFromPostgres(redis, pool, restoredPrefix));
    const [report, verifySeconds] = await timed(() => verify(redis, pool, restoredPrefix, { maxListed: 10 }));
    log(`restore: ${restored} tokens from Postgres in ${restoreSeconds.toFixed(2)} s = ${Math.round(restored / restoreSeconds)} tokens/s; ` +
      `verify: ${report.tokens} tokens in ${verifySeconds.toFixed(2)} s = ${Math.round(report.tokens / verifySeconds)} tokens/s, ${report.differences} differences`);
    return {
      events,
      catchUpSeconds,
      eventsPerSec: events / catchUpSeconds,
      redeems,
      redeemsPerSec: redeems / redeemSeconds,
      maxLagSeconds: worst.seconds,
      maxLagEvents: worst.events,
      cpuMicrosPerEvent,
      restore: { tokens: restored, seconds: restoreSeconds, tokensPerSec: Math.round(restored / restoreSeconds) },
      verify: { tokens: report.tokens, seconds: verifySeconds, tokensPerSec: Math.round(report.tokens / verifySeconds), differences: report.differences },
    };
  } finally {
    await pool.end();
    await dropPrefix(redis, prefix);
    await dropPrefix(redis, restoredPrefix);
    redis.disconnect();
    const admin = new pg.Client({ connectionString: server.toString() });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
    await admin.end();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const result = await run({ events: numberFlag('events'), redeems: numberFlag('redeems'), concurrency: numberFlag('concurrency') });
  console.log(JSON.stringify(result, null, 2));
}
