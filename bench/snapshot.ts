import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import { loadConfig } from '../src/config.js';
import { openPostgres, sampleLag, startSnapshotWriter, type Lag } from '../src/snapshot/index.js';
import { createRedis, dropPrefix, type RedisClient } from '../src/store/redis.js';
import { TokenStore } from '../src/store/token-store.js';
import { TokenEngine } from '../src/tokens/engine.js';

/**
 * Snapshot writer speed against the local Postgres, in a throw-away database and key prefix:
 *  - catch-up: `events` generated events wait in the streams, then the writer starts; events/s until lag is 0;
 *  - lag under load: `redeems` redeems at `concurrency` while the writer runs; the worst lag sampled.
 *   node dist/bench/snapshot.js [--events N] [--redeems N] [--concurrency C]
 */
export interface SnapshotBenchOptions {
  events?: number;
  redeems?: number;
  concurrency?: number;
  redisUrl?: string;
  /** server URL; the bench creates and drops its own database there */
  databaseUrl?: string;
  log?: (line: string) => void;
}

export interface SnapshotBenchResult {
  events: number;
  catchUpSeconds: number;
  eventsPerSec: number;
  redeems: number;
  redeemsPerSec: number;
  maxLagSeconds: number;
  maxLagEvents: number;
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

async function waitCaughtUp(redis: RedisClient, prefix: string, pool: pg.Pool, events: number): Promise<void> {
  for (;;) {
    const n = Number((await pool.query('SELECT count(*) AS n FROM token_events')).rows[0].n);
    if (n >= events && (await sampleLag(redis, prefix)).events === 0) return;
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function run(opts: SnapshotBenchOptions = {}): Promise<SnapshotBenchResult> {
  const log = opts.log ?? console.log;
  const events = Math.ceil((opts.events ?? 500_000) / 10) * 10;
  const redeems = Math.min(opts.redeems ?? 50_000, events);
  const concurrency = opts.concurrency ?? 100;
  const prefix = `bench-snap-${randomBytes(3).toString('hex')}`;
  const server = new URL(opts.databaseUrl ?? 'postgres://postgres@127.0.0.1:5432/postgres');
  const dbName = `bench_rm_${randomBytes(3).toString('hex')}`;
  const dbUrl = new URL(server.toString());
  dbUrl.pathname = `/${dbName}`;
  const config = loadConfig({ redisUrl: opts.redisUrl ?? 'redis://127.0.0.1:6379', keyPrefix: prefix, databaseUrl: dbUrl.toString() });
  const redis = createRedis(config);
  const engine = new TokenEngine(new TokenStore(redis, prefix));
  const pool = await openPostgres(config.databaseUrl);
  try {
    log(`generating ${events} tokens (= ${events} events) with no writer running...`);
    const tokens = await generate(engine, events);

    const t0 = performance.now();
    const writer = await startSnapshotWriter(config, { log: () => {} });
    await waitCaughtUp(redis, prefix, pool, events);
    const catchUpSeconds = (performance.now() - t0) / 1000;
    log(`catch-up: ${events} events in ${catchUpSeconds.toFixed(2)} s = ${Math.round(events / catchUpSeconds)} events/s`);

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
    return {
      events,
      catchUpSeconds,
      eventsPerSec: events / catchUpSeconds,
      redeems,
      redeemsPerSec: redeems / redeemSeconds,
      maxLagSeconds: worst.seconds,
      maxLagEvents: worst.events,
    };
  } finally {
    await pool.end();
    await dropPrefix(redis, prefix);
    redis.disconnect();
    const admin = new pg.Client({ connectionString: server.toString() });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
    await admin.end();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const arg = (name: string) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? Number(process.argv[i + 1]) : undefined;
  };
  const result = await run({ events: arg('events'), redeems: arg('redeems'), concurrency: arg('concurrency') });
  console.log(JSON.stringify(result, null, 2));
}
