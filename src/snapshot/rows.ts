import type { RedisClient } from '../store/redis.js';
import { BUCKETS_PER_SHARD, Keys, placeOfBucket } from '../store/keys.js';
import { decodeBucket, fillRedemption, fillReservation, nameRow } from '../store/export.js';

/**
 * A token row as both sides compare it: the 13 engine fields in EXPORT_FIELDS order, '' when absent,
 * with the state as stored (a lapsed reservation stays "reserved" until the lapse sweep gives it back with a
 * 'lapsed' event, LEASE_SWEEP_GRACE_MS after its lease ended).
 */
export type Row = string[];

/** The uuid range of one virtual shard (its tokens' first 6 bits). */
export function shardRange(shard: number): [string, string] {
  const lo = placeOfBucket(shard, 0).prefix;
  const hi = placeOfBucket(shard, BUCKETS_PER_SHARD - 1).prefix;
  return [`${lo}0000-0000-0000-0000-000000000000`, `${hi}ffff-ffff-ffff-ffff-ffffffffffff`];
}

/**
 * Reads every token of one virtual shard straight from the Lua layout (lua/includes/codec.lua). Its buckets
 * are read first, in calls of 128, and what a token's state points to after: a script writes a token's
 * redemption details with its state and never removes them, and adds dictionary entries only, so a token the
 * buckets show redeemed has its details by then (read before, a redeem in between read as a token redeemed
 * by nobody: verify listed it while satellites redeemed, as if Redis had lost the redeemer). A reservation
 * ends (complete, release), so reservations are read before and after: only one made and ended within the
 * read is missed. One MULTI for the whole shard was exact too, but held Redis 12–19 ms a shard of 12,500
 * tokens, growing with the shard, where every other sweep runs in calls of a few ms.
 */
export async function readShardRows(redis: RedisClient, keys: Keys, shard: number): Promise<Map<string, Row>> {
  const rsBefore = await redis.hgetall(keys.reservations(shard));
  const CHUNK = 128;
  const buckets: Record<string, string>[] = [];
  for (let b0 = 0; b0 < BUCKETS_PER_SHARD; b0 += CHUNK) {
    buckets.push(...(await Promise.all(Array.from({ length: Math.min(CHUNK, BUCKETS_PER_SHARD - b0) }, (_, i) => redis.hgetall(keys.bucket(shard, b0 + i))))));
  }
  const [dict, rs, rd] = await Promise.all([redis.hgetall(keys.dict(shard)), redis.hgetall(keys.reservations(shard)), redis.hgetall(keys.redeemed(shard))]);
  const out = new Map<string, Row>();
  buckets.forEach((h, b) => {
    for (const t of decodeBucket(placeOfBucket(shard, b).prefix, h)) {
      nameRow(t, dict);
      if (t.state === 's') fillReservation(t.row, rs[t.suffix] ?? rsBefore[t.suffix] ?? null);
      else if (t.state === 'r') fillRedemption(t.row, rd[t.suffix] ?? null);
      out.set(t.row[0]!, t.row);
    }
  });
  return out;
}

/**
 * The Postgres side of a Row. A token redeemed through reserve + complete is reserved by its redeemer (as the
 * engine's row says): a row copied from an engine before that (an older serve during a rolling upgrade, or
 * before the upgrade) holds the reservation id alone, and reads the same.
 */
export const ROW_COLUMNS = `token::text, state, owner_satellite_id, owner_user_id, campaign_id, created_at::text, coalesce(expires_at::text, ''),
  coalesce(reservation_id, ''),
  coalesce(reserved_by, CASE WHEN state = 'redeemed' AND reservation_id IS NOT NULL THEN redeemer_satellite_id END, ''),
  coalesce(lease_expires_at::text, ''),
  coalesce(redeemer_satellite_id, ''), coalesce(redeemer_user_id, ''), coalesce(redeemed_at::text, '')`;
