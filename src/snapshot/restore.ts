import type pg from 'pg';
import type { RedisClient } from '../store/redis.js';
import { Keys, SHARDS, placeOfOwner, placeOfToken } from '../store/keys.js';
import { STATE_LETTER, hexOf } from '../store/codec.js';
import { defineScripts, preloadScripts, type ScriptFn } from '../store/scripts.js';
import { dropKeys, scanKeys } from '../store/key-walk.js';
import { inLanes } from '../collections.js';
import { GROUP } from './lag.js';
import { pgShardRows } from './pg-rows.js';
import { markRestored } from './lost.js';
import { newestCommitted } from './positions.js';
import { ensureGroup } from './streams.js';
import type { TokenState } from '../store/model.js';

/** Deletes the keys of the engine's virtual shards under `prefix` (numeric hash tags) on every master; how many. */
export function dropEngineKeys(redis: RedisClient, prefix: string): Promise<number> {
  const own = new RegExp(`^${prefix.replace(/[.]/g, '\\.')}:\\{\\d+\\}:`);
  return dropKeys(redis, `${prefix}:*`, (k) => own.test(k));
}

/** Any key at all under `prefix` (engine, satellites, snapshot status...). */
export async function anyKey(redis: RedisClient, prefix: string): Promise<boolean> {
  for await (const _ of scanKeys(redis, `${prefix}:*`)) return true;
  return false;
}

const CHUNK = 2000;
/** Shards restored at once: one lane's Postgres read overlaps another's Redis writes (the pool should have as many connections). */
export const RESTORE_LANES = 4;

/**
 * Rebuilds the engine's keys from Postgres, RESTORE_LANES shards at a time. Writes no events (the rows are
 * history already); each shard's stream is created empty with the snapshot group, and its last id and the
 * group's position are set to the newest position Postgres holds, so new events always sort after the
 * restored rows.
 */
export async function restoreFromPostgres(redis: RedisClient, pool: pg.Pool, prefix: string): Promise<number> {
  const keys = new Keys(prefix);
  await preloadScripts(redis, ['restore']);
  const restore = defineScripts(redis, ['restore']).restore;
  let total = 0;
  await inLanes(SHARDS, RESTORE_LANES, async (shard) => {
    // not `total += await ...`: that reads total before the await, and the lanes would overwrite each other
    const n = await restoreShard(redis, pool, keys, restore, shard);
    total += n;
  });
  await markRestored(redis, prefix);
  return total;
}

async function restoreShard(redis: RedisClient, pool: pg.Pool, keys: Keys, restore: ScriptFn, shard: number): Promise<number> {
  let n = 0;
  for await (const page of pgShardRows(pool, shard)) n += await restoreRows(keys, restore, shard, page);
  const top = (await newestCommitted(pool, [shard])).get(shard);
  const ev = keys.events(shard);
  await redis.del(ev);
  await ensureGroup(redis, ev);
  if (top) {
    await redis.xsetid(ev, top);
    // the group stands where Postgres does, not at 0-0 (the writer does not judge a group that never read):
    // a Redis that goes back to a copy made after this restore is found like any other
    await redis.xgroup('SETID', ev, GROUP, top, 'ENTRIESREAD', 0);
  }
  return n;
}

/**
 * Writes Postgres rows (pgShardRows) of one shard into Redis (lua/restore.lua), CHUNK a call; a token already
 * there is left as it is. How many were written.
 */
export async function restoreRows(keys: Keys, restore: ScriptFn, shard: number, rows: string[][]): Promise<number> {
  let n = 0;
  for (let i = 0; i < rows.length; i += CHUNK) {
    const callKeys = [keys.dict(shard), keys.stats(shard), keys.reservations(shard), keys.redeemed(shard), keys.leases(shard)];
    const bucketIndex = new Map<number, number>();
    const args: string[] = [];
    for (const r of rows.slice(i, i + CHUNK)) {
      const hex = hexOf(r[0]!);
      const { bucket } = placeOfToken(hex);
      let idx = bucketIndex.get(bucket);
      if (idx === undefined) {
        callKeys.push(keys.bucket(shard, bucket));
        idx = callKeys.length;
        bucketIndex.set(bucket, idx);
      }
      const owner = placeOfOwner(r[2]!, r[3]!);
      // one tab-joined argument a token (lua/restore.lua)
      const state = r[13] === 'purged' ? 'p' : (STATE_LETTER[r[1] as TokenState] ?? 'u');
      args.push(`${idx}\t${owner.refHint}\t${r[2]}\t${r[3]}\t${hex}\t${state}\t${r.slice(4, 13).join('\t')}`);
    }
    n += Number(await restore(callKeys, args));
  }
  return n;
}
