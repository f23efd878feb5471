import type pg from 'pg';
import { Keys, SHARDS } from '../store/keys.js';
import type { RedisClient } from '../store/redis.js';
import { shardRange } from './rows.js';

/**
 * Shards whose tokens Redis lost (a restart without persistence, a master lost with its replicas, a wrong
 * KEY_PREFIX): no dictionary in Redis, while Postgres holds tokens of theirs not purged. Every shard that ever
 * had a token has its dictionary (lua/includes/codec.lua `intern`), and purge keeps it; a lost one's tokens
 * would answer 404. The writer holding the lease looks when it takes it and after a stream went missing
 * (NOGROUP), and adds what it finds to `<p>:{snap}:lost`, which stays until a restore: a generate recreating
 * the dictionary does not bring the other tokens back. How many shards the set holds then.
 */
export async function findLostShards(redis: RedisClient, pool: pg.Pool, prefix: string, onPostgres: <T>(step: () => Promise<T>) => Promise<T>): Promise<number> {
  const keys = new Keys(prefix);
  const bare = (await Promise.all(Array.from({ length: SHARDS }, async (_, s) => ((await redis.exists(keys.dict(s))) ? [] : [s])))).flat();
  const lost: number[] = [];
  for (const s of bare) {
    const r = await onPostgres(() => pool.query<{ held: boolean }>('SELECT EXISTS (SELECT 1 FROM tokens WHERE token BETWEEN $1 AND $2 AND purged_at IS NULL) AS held', shardRange(s)));
    if (r.rows[0]!.held) lost.push(s);
  }
  if (lost.length) await redis.sadd(keys.lostShards(), ...lost);
  return redis.scard(keys.lostShards());
}

/** The shards `findLostShards` recorded, in order; none once a restore rebuilt them. */
export async function readLostShards(redis: RedisClient, prefix: string): Promise<number[]> {
  return (await redis.smembers(new Keys(prefix).lostShards())).map(Number).sort((a, b) => a - b);
}
