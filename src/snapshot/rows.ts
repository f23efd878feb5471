import type { RedisClient } from '../store/redis.js';
import { BUCKETS_PER_SHARD, Keys } from '../store/keys.js';
import { dashed } from '../store/codec.js';

/**
 * A token row as both sides compare it: the 13 engine fields in ROW_FIELDS order, '' when absent,
 * with the state as stored (a lapsed reservation stays "reserved": lapsing emits no event).
 */
export type Row = string[];

export const STATE_LETTER: Record<string, string> = { unredeemed: 'u', reserved: 's', redeemed: 'r', revoked: 'x' };
const STATE_NAME: Record<string, string> = { u: 'unredeemed', s: 'reserved', r: 'redeemed', x: 'revoked' };

/** The uuid range of one virtual shard (its tokens' first 6 bits). */
export function shardRange(shard: number): [string, string] {
  const lo = (shard << 10).toString(16).padStart(4, '0');
  const hi = ((shard << 10) | 1023).toString(16).padStart(4, '0');
  return [`${lo}0000-0000-0000-0000-000000000000`, `${hi}ffff-ffff-ffff-ffff-ffffffffffff`];
}

const unb36 = (s: string | undefined): string => (s ? String(parseInt(s, 36)) : '');

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
      const prefix = ((shard << 10) | (b0 + i)).toString(16).padStart(4, '0');
      for (const [field, rec] of Object.entries(h)) {
        if (field.startsWith('#')) continue;
        const m = /^(.)(\d+),(\d+),(\w+),(\w*)$/.exec(rec);
        if (!m) continue;
        const [, state, ref, camp, created, expires] = m as unknown as [string, string, string, string, string, string];
        const owner = /^(\d*):(.*)$/.exec(h[`#${ref}`] ?? ':')!;
        const token = dashed(prefix + field);
        const row: Row = [token, STATE_NAME[state!] ?? state!, dict[`S${owner[1]}`] ?? '', owner[2]!, dict[`C${camp}`] ?? '',
          unb36(created), unb36(expires), '', '', '', '', '', ''];
        if (state === 's') {
          const [id, by, lease] = (rs[field] ?? '\t\t').split('\t');
          row[7] = id ?? ''; row[8] = by ?? ''; row[9] = lease ?? '';
        } else if (state === 'r') {
          const [sat, user, at, id] = (rd[field] ?? '\t\t\t').split('\t');
          row[7] = id ?? ''; row[10] = sat ?? ''; row[11] = user ?? ''; row[12] = at ?? '';
        }
        out.set(token, row);
      }
    });
  }
  return out;
}

export const ROW_COLUMNS = `token::text, state, owner_satellite_id, owner_user_id, campaign_id, created_at::text, coalesce(expires_at::text, ''),
  coalesce(reservation_id, ''), coalesce(reserved_by, ''), coalesce(lease_expires_at::text, ''),
  coalesce(redeemer_satellite_id, ''), coalesce(redeemer_user_id, ''), coalesce(redeemed_at::text, '')`;
