import { SHARDS, type Keys } from '../store/keys.js';
import type { RedisClient } from '../store/redis.js';
import { defineScripts } from '../store/scripts.js';
import { GROUP } from './lag.js';

/**
 * The shards whose streams had entries removed after the group read them, for a writer whose open made the
 * snapshot's tables anew (postgres.ts madeAnew): those were committed to a database that is not this one any more
 * (dropped and made anew by this start, or DATABASE_URL naming another, empty one). A writer took that for a
 * new snapshot, copied what the streams still held, and a `restore --from-postgres` would have lost the rest
 * without a word. Each with the stream's first entry and how many entries were removed (lua/copied_removed.lua). A database restored from an
 * older backup is not found so: it has its tables.
 */
export async function copiedElsewhere(redis: RedisClient, keys: Keys): Promise<{ shard: number; from: string; removed: number }[]> {
  const { copied_removed: script } = defineScripts(redis, ['copied_removed']);
  const heads = await Promise.all(Array.from({ length: SHARDS }, (_, s) => script([keys.events(s)], [GROUP]) as Promise<[string, number]>));
  return heads.flatMap(([from, removed], shard) => (removed > 0 ? [{ shard, from, removed }] : []));
}
