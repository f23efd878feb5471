import type pg from 'pg';
import { Keys, SHARDS } from '../store/keys.js';
import type { RedisClient } from '../store/redis.js';
import { shardRange } from './rows.js';

/**
 * Finds the shards whose tokens Redis lost (a restart without persistence, a master lost with its replicas)
 * while Postgres holds them: those tokens would answer 404 for good. Each shard carries a mark `<p>:{s}:intact`
 * that only this check and restore write, in the shard's slot, so it goes with the shard's data (a generate or a
 * campaign revoke recreates a dictionary, not the mark). An unmarked shard with tokens in Postgres not purged is
 * lost and goes into `<p>:{snap}:lost`, which stays until a restore; an unmarked one without is marked. Postgres
 * records (`shard_marks`) that the prefix's shards were marked once: before that, on the first run of a
 * deployment from before the marks, an unmarked shard whose dictionary is in Redis is taken as whole and marked.
 * Only this check records it, for the Redis the writer serves: a restore does not, since one into another Redis
 * (rehearsing an upgrade, a staging copy) would make every shard of the live one, not yet marked, look lost.
 * Run by the writer holding the lease, on taking it and after a NOGROUP. The shards the lost set holds, in order.
 */
export async function findLostShards(redis: RedisClient, pool: pg.Pool, prefix: string, onPostgres: <T>(step: () => Promise<T>) => Promise<T>): Promise<number[]> {
  const keys = new Keys(prefix);
  const marked = await Promise.all(Array.from({ length: SHARDS }, (_, s) => redis.exists(keys.intact(s))));
  const unmarked = marked.flatMap((m, s) => (m ? [] : [s]));
  if (!unmarked.length) {
    // all marked (by a restore, say): from now on an unmarked shard is one this Redis lost
    await onPostgres(() => recordMarks(pool, prefix));
    return readLostShards(redis, prefix);
  }
  const installed = (await onPostgres(() => pool.query('SELECT 1 FROM shard_marks WHERE prefix = $1', [prefix]))).rowCount! > 0;
  const lost: number[] = [];
  for (const s of unmarked) {
    if (!installed && (await redis.exists(keys.dict(s)))) {
      await markShards(redis, prefix, [s]);
      continue;
    }
    // the shard's first row not purged, along the key: under EXISTS the planner took a Seq Scan that meets one
    // soon, and read the whole table for a shard whose every row is purged (1.2 s at 4M rows)
    const r = await onPostgres(() => pool.query('SELECT 1 FROM tokens WHERE token BETWEEN $1 AND $2 AND purged_at IS NULL ORDER BY token LIMIT 1', shardRange(s)));
    if (r.rowCount) lost.push(s);
    else await markShards(redis, prefix, [s]);
  }
  if (lost.length) await redis.sadd(keys.lostShards(), ...lost);
  if (!installed) await onPostgres(() => recordMarks(pool, prefix));
  return readLostShards(redis, prefix);
}

function markShards(redis: RedisClient, prefix: string, shards: number[]): Promise<unknown> {
  const keys = new Keys(prefix);
  return Promise.all(shards.map((s) => redis.set(keys.intact(s), String(Date.now()))));
}

function recordMarks(pool: pg.Pool, prefix: string): Promise<unknown> {
  return pool.query('INSERT INTO shard_marks (prefix, since) VALUES ($1, $2) ON CONFLICT (prefix) DO NOTHING', [prefix, Date.now()]);
}

/** After a restore rebuilt every shard: all marked, none lost (the writer's next check records the marks). */
export async function markRestored(redis: RedisClient, prefix: string): Promise<void> {
  await markShards(redis, prefix, Array.from({ length: SHARDS }, (_, s) => s));
  await redis.del(new Keys(prefix).lostShards());
}

/** The shards `findLostShards` recorded, in order; none once a restore rebuilt them. */
export async function readLostShards(redis: RedisClient, prefix: string): Promise<number[]> {
  return (await redis.smembers(new Keys(prefix).lostShards())).map(Number).sort((a, b) => a - b);
}

/** What on-call is told of lost shards (/readyz, `stats`): what they mean and the way back. */
export function lostShardsMessage(lost: number[]): string {
  return `Redis lost the tokens of shards ${lost.join(',')} that the Postgres snapshot holds (they answer 404): restore them (runbook "Redis lost its data")`;
}
