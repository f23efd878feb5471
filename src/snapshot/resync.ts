import type { RedisClient } from '../store/redis.js';
import { hexOf } from '../store/codec.js';
import { Keys, placeOfToken } from '../store/keys.js';
import { defineScripts } from '../store/scripts.js';

/** Tokens a script call takes: its KEYS and ARGV stay a few thousand long. */
const PER_CALL = 500;

/**
 * Appends a 'resync' event with each token's current row to its shard's stream (lua/resync.lua), so the
 * snapshot writer copies the token to Postgres again. `tokens` all belong to `shard`. Returns how many
 * events were appended (a token gone from Redis meanwhile gets none).
 */
export async function resyncTokens(redis: RedisClient, prefix: string, shard: number, tokens: string[]): Promise<number> {
  const { resync } = defineScripts(redis, ['resync']);
  const keys = new Keys(prefix);
  let n = 0;
  for (let i = 0; i < tokens.length; i += PER_CALL) {
    const part = tokens.slice(i, i + PER_CALL);
    const hexes = part.map(hexOf);
    const buckets = hexes.map((h) => keys.bucket(shard, placeOfToken(h).bucket));
    n += Number(await resync([keys.dict(shard), keys.reservations(shard), keys.redeemed(shard), keys.events(shard), ...buckets], part.flatMap((t, j) => [hexes[j]!, t])));
  }
  return n;
}
