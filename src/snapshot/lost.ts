import type pg from 'pg';
import { Keys, SHARDS } from '../store/keys.js';
import type { RedisClient } from '../store/redis.js';
import { shardRange } from './rows.js';

/**
 * Finds the shards whose tokens Redis lost (a restart without persistence, a master lost with its replicas)
 * while Postgres holds them: those tokens would answer 404 for good. Each shard carries a mark `<p>:{s}:intact`
 * that only this check and restore write, in the shard's slot, so it goes with the shard's data (a generate or
 * a campaign revoke recreates a dictionary, not the mark). A shard whose stream or consumer group the writer had
 * to create is a suspect (`<p>:{snap}:suspect`, added by the writer): without its mark and with tokens in Postgres
 * not purged, it is lost, and goes into `<p>:{snap}:lost`, which stays until a restore; otherwise it is
 * marked. A shard without a mark that is no suspect had its group all along: a deployment from before the
 * marks, marked now. Run by the writer holding the lease, on taking it and after creating groups. How many
 * shards the lost set holds.
 */
export async function findLostShards(redis: RedisClient, pool: pg.Pool, prefix: string, onPostgres: <T>(step: () => Promise<T>) => Promise<T>): Promise<number> {
  const keys = new Keys(prefix);
  const suspects = (await redis.smembers(keys.suspectShards())).map(Number);
  const marked = await Promise.all(Array.from({ length: SHARDS }, (_, s) => redis.exists(keys.intact(s))));
  const mark = (s: number) => redis.set(keys.intact(s), String(Date.now()));
  await Promise.all(marked.flatMap((m, s) => (m || suspects.includes(s) ? [] : [mark(s)])));
  const lost: number[] = [];
  for (const s of suspects) {
    if (marked[s]) continue;
    const r = await onPostgres(() => pool.query<{ held: boolean }>('SELECT EXISTS (SELECT 1 FROM tokens WHERE token BETWEEN $1 AND $2 AND purged_at IS NULL) AS held', shardRange(s)));
    if (r.rows[0]!.held) lost.push(s);
    else await mark(s);
  }
  if (lost.length) await redis.sadd(keys.lostShards(), ...lost);
  if (suspects.length) await redis.srem(keys.suspectShards(), ...suspects);
  return redis.scard(keys.lostShards());
}

/** After a restore rebuilt every shard: all marked, none lost or suspect. */
export async function markRestored(redis: RedisClient, prefix: string): Promise<void> {
  const keys = new Keys(prefix);
  await Promise.all(Array.from({ length: SHARDS }, (_, s) => redis.set(keys.intact(s), String(Date.now()))));
  await redis.del(keys.lostShards());
  await redis.del(keys.suspectShards());
}

/** The shards `findLostShards` recorded, in order; none once a restore rebuilt them. */
export async function readLostShards(redis: RedisClient, prefix: string): Promise<number[]> {
  return (await redis.smembers(new Keys(prefix).lostShards())).map(Number).sort((a, b) => a - b);
}
