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

/** Reads every token of one virtual shard straight from the Lua layout (lua/includes/codec.lua). */
export async function readShardRows(redis: RedisClient, keys: Keys, shard: number): Promise<Map<string, Row>> {
  const [dict, rs, rd] = await Promise.all([
    redis.hgetall(keys.dict(shard)),
    redis.hgetall(keys.reservations(shard)),
    redis.hgetall(keys.redeemed(shard)),
  ]);
  const out = new Map<string, Row>();
  const CHUNK = 128;
  for (let b0 = 0; b0 < BUCKETS_PER_SHARD; b0 += CHUNK) {
    const buckets = await Promise.all(
      Array.from({ length: Math.min(CHUNK, BUCKETS_PER_SHARD - b0) }, (_, i) => redis.hgetall(keys.bucket(shard, b0 + i))),
    );
    buckets.forEach((h, i) => {
      for (const t of decodeBucket(placeOfBucket(shard, b0 + i).prefix, h)) {
        nameRow(t, dict);
        if (t.state === 's') fillReservation(t.row, rs[t.suffix] ?? null);
        else if (t.state === 'r') fillRedemption(t.row, rd[t.suffix] ?? null);
        out.set(t.row[0]!, t.row);
      }
    });
  }
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
