import type { RedisClient } from '../store/redis.js';
import { every } from '../every.js';
import { Keys, SHARDS } from '../store/keys.js';
import { compareIds } from './events.js';
import { snapshotMetrics } from './metrics.js';

export const GROUP = 'snapshot';

export interface Lag {
  /** entries not yet acknowledged (undelivered + delivered but pending) */
  events: number;
  /** age of the oldest such entry, by its stream id time vs Redis TIME */
  seconds: number;
}

const msOf = (id: string): number => Number(id.slice(0, id.indexOf('-')));

/** Readings (intervals) a sample may take before the lag reads unknown (NaN) until it answers. */
const STALE_AFTER = 3;

/** Entries counted one by one past the group's position when Redis cannot say how many there are. */
const COUNTED = 100;

/**
 * Lag of the snapshot consumer group over every shard stream. One command per shard key, so it works
 * on Redis Cluster (each shard stream has its own slot).
 */
export async function sampleLag(redis: RedisClient, prefix: string): Promise<Lag> {
  const keys = new Keys(prefix);
  const [sec, usec] = (await redis.time()) as unknown as [string, string];
  const now = Number(sec) * 1000 + Math.floor(Number(usec) / 1000);
  let events = 0;
  let oldest = Infinity;
  await Promise.all(
    Array.from({ length: SHARDS }, async (_, s) => {
      const key = keys.events(s);
      let groups: unknown[][];
      try {
        groups = (await redis.xinfo('GROUPS', key)) as unknown[][];
      } catch (err) {
        // no stream yet; anything else (a Cluster master down, CLUSTERDOWN) fails the whole reading: counted
        // as 0, a lost master's backlog read as caught up, hiding it from the "snapshot behind" alert
        if (/no such key/i.test((err as Error).message)) return;
        throw err;
      }
      const g = groups.map((arr) => toObj(arr)).find((x) => x.name === GROUP);
      if (!g) {
        const len = await redis.xlen(key);
        if (len > 0) {
          events += len;
          const first = (await redis.xrange(key, '-', '+', 'COUNT', 1))[0];
          if (first) oldest = Math.min(oldest, msOf(first[0]));
        }
        return;
      }
      const pending = Number(g.pending ?? 0);
      const delivered = String(g['last-delivered-id']);
      const undelivered = await undeliveredIn(redis, key, g.lag, delivered, pending);
      events += pending + undelivered;
      if (pending > 0) {
        const p = (await redis.xpending(key, GROUP)) as [number, string | null, string | null, unknown];
        if (p[1]) oldest = Math.min(oldest, msOf(p[1]));
      }
      if (undelivered > 0) {
        const next = (await redis.xrange(key, `(${delivered}`, '+', 'COUNT', 1))[0];
        if (next) oldest = Math.min(oldest, msOf(next[0]));
      }
    }),
  );
  return { events, seconds: oldest === Infinity ? 0 : Math.max(0, now - oldest) / 1000 };
}

/**
 * Entries of a shard's stream the group has not read yet. After an AOF replay Redis 7.0 no longer knows
 * the group's entries-read (its XREADGROUP is replayed as XCLAIM without it): `lag` is nil, or a stale
 * count that outlives a full drain. Counted as 0, nil hid a backlog from the alert this metric exists for
 * (a review helper saw 981 of 25,100 reported). A lag of 0, the usual reading, is exact and costs nothing more.
 */
async function undeliveredIn(redis: RedisClient, key: string, lag: unknown, delivered: string, pending: number): Promise<number> {
  if (lag === 0) return 0;
  const stream = toObj((await redis.xinfo('STREAM', key)) as unknown[]);
  const length = Number(stream.length ?? 0);
  if (compareIds(delivered, String(stream['last-generated-id'])) >= 0) return 0;
  // capped by the stream's length only: pending entries may have been trimmed from it (a lost batch)
  if (typeof lag === 'number') return Math.min(lag, length);
  const after = await redis.xrange(key, `(${delivered}`, '+', 'COUNT', COUNTED);
  // past that, the entries in the stream not pending: an estimate on the high side (committed entries the
  // writer has yet to trim count too), which an alert would rather have than one on the low side
  return after.length < COUNTED ? after.length : Math.max(COUNTED, length - pending);
}

/**
 * Keeps rm_snapshot_lag_events / _seconds current, read from Redis every `ms`, and hands each reading to
 * `onSample`. Any process may run it, writer or not: the lag belongs to the streams, so it must read true
 * when no writer runs anywhere (SNAPSHOT=false and no `referral-manager snapshot`), the case an alert on
 * it exists for.
 */
export function reportLag(redis: RedisClient, prefix: string, ms = 1000, onSample?: (lag: Lag) => Promise<unknown> | void): { stop(): Promise<void>; current(): Lag | undefined } {
  const m = snapshotMetrics();
  let stopped = false;
  let last: Lag | undefined;
  // unknown, not the last reading: a lag of 0 kept from before Redis went away read as "all copied"
  const unknown = () => {
    last = undefined;
    m.lagEvents.set(NaN);
    m.lagSeconds.set(NaN);
  };
  const loop = every(ms, async () => {
    // a hung Redis answers nothing until the command timeout (10 s on the writer's client): unknown sooner
    const stale = setTimeout(unknown, STALE_AFTER * ms);
    try {
      const lag = await sampleLag(redis, prefix);
      last = lag;
      m.lagEvents.set(lag.events);
      m.lagSeconds.set(lag.seconds);
      if (!stopped) await onSample?.(lag);
    } catch {
      unknown();
      m.errors.inc({ where: 'lag' });
    } finally {
      clearTimeout(stale);
    }
  });
  return {
    /** the last reading, or undefined before the first and while Redis cannot be read (as the gauges' NaN) */
    current: () => last,
    /** no reading starts after this, and the one under way (if any) has ended when it resolves */
    async stop() {
      stopped = true;
      await loop.stop();
    },
  };
}

function toObj(arr: unknown[]): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (let i = 0; i < arr.length; i += 2) o[String(arr[i])] = arr[i + 1];
  return o;
}
