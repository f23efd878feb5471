import type pg from 'pg';
import { afterAll, beforeAll } from 'vitest';
import { openPostgres, type SnapshotWriter } from '../../src/snapshot/index.js';
import type { RedisClient } from '../../src/store/redis.js';
import { GROUP, sampleLag } from '../../src/snapshot/lag.js';
import { Keys } from '../../src/store/keys.js';
import type { TokenEngine } from '../../src/tokens/engine.js';
import { testDatabase } from './pg.js';
import { dropPrefix, engineFixture, testPrefix, type EngineFixture } from './redis.js';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` until `ok` holds (generous deadline: the machine may be busy); returns the last value. */
export async function until<T>(probe: () => Promise<T>, ok: (v: T) => boolean, what: string, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (ok(v)) return v;
    if (Date.now() > end) throw new Error(`${what}: not reached within ${ms} ms; last: ${JSON.stringify(v)}`);
    await sleep(100);
  }
}

/** Generates `total` tokens (10 per owner) in engine-sized calls; returns them. */
export async function generateTokens(engine: TokenEngine, total: number, sat = 'sat-a'): Promise<string[]> {
  const out: string[] = [];
  for (let done = 0; done < total; done += 10_000) {
    const n = Math.min(10_000, total - done);
    const owners = Array.from({ length: n / 10 }, (_, i) => ({ ownerSatelliteId: sat, ownerUserId: `u${done + i * 10}` }));
    const r = await engine.generate({ owners, perUser: 10, campaignId: `camp-${done % 3}` });
    out.push(...r.tokens.map((t) => t.token));
  }
  return out;
}

/** Runs `fn` over `items` with `concurrency` in flight. */
export async function each<T>(items: T[], concurrency: number, fn: (item: T, i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < items.length) {
        const i = next++;
        await fn(items[i]!, i);
      }
    }),
  );
}

/** Waits until the consumer group has nothing left and Postgres (when given) holds `events` history rows. */
export async function caughtUp(redis: RedisClient, prefix: string, pool?: pg.Pool, events = 0, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const lag = await sampleLag(redis, prefix);
    const n = pool ? Number((await pool.query('SELECT count(*) AS n FROM token_events')).rows[0].n) : 0;
    if (lag.events === 0 && n >= events) return;
    if (Date.now() > end) throw new Error(`not caught up: lag ${lag.events}, ${n}/${events} events in Postgres`);
    await sleep(100);
  }
}

/**
 * Waits until a writer just started on `prefix` has done its first round. Not a sleep, which a slow first
 * round outlasts: a writer reads the streams (XREADGROUP, which makes its consumer in the group) only
 * after copying the registry, the revocations and the campaigns in the same round, so once the consumer
 * shows, those have been read and copied.
 */
export async function firstRoundDone(redis: RedisClient, prefix: string, timeoutMs = 30_000): Promise<void> {
  const events0 = new Keys(prefix).events(0);
  const consumers = () => (redis.xinfo('CONSUMERS', events0, GROUP) as Promise<unknown[]>).catch(() => []);
  for (const end = Date.now() + timeoutMs; (await consumers()).length === 0; await sleep(50)) {
    if (Date.now() > end) throw new Error(`the writer on ${prefix} never read its streams`);
  }
}

export interface SnapshotFixture {
  fx: EngineFixture;
  db: Awaited<ReturnType<typeof testDatabase>>;
  pool: pg.Pool;
  /** a second key prefix (a restore target), dropped afterwards */
  other: string;
  /** a writer the tests started: stopped afterwards */
  writer?: SnapshotWriter;
}

/**
 * A snapshot test file's engine (key prefix `label`), fresh database and pool, made before its tests and
 * all removed after them; call it inside the file's describe. The fields are set once beforeAll ran. `redis`: the engine's
 * connection (a Cluster's) instead of the shared Redis.
 */
export function snapshotFixture(label: string, redis?: () => RedisClient): SnapshotFixture {
  const s = { other: testPrefix(`${label}-other`) } as SnapshotFixture;
  beforeAll(async () => {
    s.fx = await engineFixture({ label, redis });
    s.db = await testDatabase();
    s.pool = await openPostgres(s.db.url);
  });
  afterAll(async () => {
    await s.writer?.stop();
    await s.pool?.end();
    if (s.fx) await dropPrefix(s.fx.redis, s.other);
    await s.fx?.close();
    await s.db?.drop();
  });
  return s;
}
