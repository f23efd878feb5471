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
 * Reads every token of one virtual shard straight from the Lua layout (lua/includes/codec.lua), in one
 * MULTI: a redeem between separate reads of the redemption details and the bucket read as a token redeemed
 * by nobody (verify listed it as a difference while satellites redeemed). Every key of the shard shares its
 * hash tag, so this works on Redis Cluster too.
 */
export async function readShardRows(redis: RedisClient, keys: Keys, shard: number): Promise<Map<string, Row>> {
  const tx = redis.multi().hgetall(keys.dict(shard)).hgetall(keys.reservations(shard)).hgetall(keys.redeemed(shard));
  for (let b = 0; b < BUCKETS_PER_SHARD; b++) tx.hgetall(keys.bucket(shard, b));
  const replies = (await tx.exec())!.map(([err, h]) => {
    if (err) throw err;
    return h as Record<string, string>;
  });
  const [dict, rs, rd] = replies as [Record<string, string>, Record<string, string>, Record<string, string>];
  const out = new Map<string, Row>();
  replies.slice(3).forEach((h, b) => {
    for (const t of decodeBucket(placeOfBucket(shard, b).prefix, h)) {
      nameRow(t, dict);
      if (t.state === 's') fillReservation(t.row, rs[t.suffix] ?? null);
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
