import type { RedisClient } from '../store/redis.js';
import { hexOf } from '../store/codec.js';
import { Keys, placeOfToken } from '../store/keys.js';
import { defineScripts } from '../store/scripts.js';
import type { Row } from './rows.js';
import { restoreRows } from './restore.js';

const IN_FLIGHT = 100;

/**
 * Gives Redis back the changes it lost when it went back in time, from what Postgres holds of one shard:
 * `final`, rows Postgres holds redeemed or revoked of tokens Redis holds open (lua/reapply.lua: each only if
 * still open as it runs, with a 'reapplied' event), and `missing`, rows of tokens Redis lacks (lua/restore.lua:
 * each only if still absent). Returns how many tokens were changed in Redis.
 */
export async function reapplyRows(redis: RedisClient, prefix: string, shard: number, final: Row[], missing: Row[]): Promise<number> {
  const s = defineScripts(redis, ['reapply', 'restore']);
  const keys = new Keys(prefix);
  let n = missing.length ? await restoreRows(keys, s.restore, shard, missing) : 0;
  // IN_FLIGHT calls at a time (one write to Redis each turn), not one round trip a token: a long loss is thousands
  for (let i = 0; i < final.length; i += IN_FLIGHT) {
    const replies = await Promise.all(final.slice(i, i + IN_FLIGHT).map((r) => {
      const hex = hexOf(r[0]!);
      // the row's fields: EXPORT_FIELDS order (src/store/export.ts)
      return s.reapply(keys.tokenKeys(placeOfToken(hex)), [hex, r[0]!, r[1]!, r[10]!, r[11]!, r[12]!, r[7]!]) as Promise<string[]>;
    }));
    n += replies.filter((r) => r[0] === 'ok').length;
  }
  return n;
}
