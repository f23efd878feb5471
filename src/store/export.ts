import { ARGS_PER_CALL, type RedisClient } from './redis.js';
import { slices } from '../collections.js';
import { scanKeys } from './key-walk.js';
import { BUCKETS_PER_SHARD, Keys, SHARDS, placeOfBucket } from './keys.js';
import { STATE_LETTER, STATE_NAME, dashed } from './codec.js';
import type { TokenState } from './model.js';

/** The 13 row fields, in the order of the row in lua/includes/codec.lua. */
export const EXPORT_FIELDS = ['token', 'state', 'ownerSatelliteId', 'ownerUserId', 'campaignId', 'createdAt', 'expiresAt',
  'reservationId', 'reservedBy', 'leaseExpiresAt', 'redeemerSatelliteId', 'redeemerUserId', 'redeemedAt'] as const;

/** One token: the EXPORT_FIELDS values, '' when absent, the state as stored (a lapsed lease stays "reserved" until the lapse sweep gives it back). */
export type ExportRow = string[];

const RECORD = /^(.)(\d+),(\d+),(\w+),(\w*)$/;
// s: a user id may hold U+2028/U+2029, which `.` alone does not match
const OWNER = /^(\d*):(.*)$/s;
const unb36 = (s: string | undefined): string => (s ? String(parseInt(s, 36)) : '');

/** A decoded bucket entry; `dict` names are resolved by the caller so a stale dictionary can be refetched. */
export interface BucketToken {
  row: ExportRow;
  suffix: string;
  state: string;
  satNum: string;
  campNum: string;
}

/**
 * Decodes one bucket hash (`<p>:{s}:b:<n>`, layout in lua/includes/codec.lua) without touching
 * Redis: names and the reservation/redemption fields are left for `nameRow`, `fillReservation`
 * and `fillRedemption`. `prefixHex` is the bucket's first 4 token digits. Export and the snapshot's
 * verify (src/snapshot/rows.ts) both read buckets through it.
 */
export function decodeBucket(prefixHex: string, hash: Record<string, string>, stateLetter?: string): BucketToken[] {
  const out: BucketToken[] = [];
  for (const field in hash) {
    if (field.startsWith('#')) continue;
    const m = RECORD.exec(hash[field]!);
    if (!m || (stateLetter !== undefined && m[1] !== stateLetter)) continue;
    const owner = OWNER.exec(hash[`#${m[2]}`] ?? ':')!;
    const row: ExportRow = [dashed(prefixHex + field), STATE_NAME[m[1]!] ?? m[1]!, '', owner[2]!, '', unb36(m[4]), unb36(m[5]), '', '', '', '', '', ''];
    out.push({ row, suffix: field, state: m[1]!, satNum: owner[1]!, campNum: m[3]! });
  }
  return out;
}

/** Fills owner satellite and campaign names from the shard dictionary; false when it lacks either (stale copy). */
export function nameRow(t: BucketToken, dict: Record<string, string>): boolean {
  const sat = dict[`S${t.satNum}`];
  const camp = dict[`C${t.campNum}`];
  t.row[2] = sat ?? '';
  t.row[4] = camp ?? '';
  return sat !== undefined && camp !== undefined;
}

/** `<p>:{s}:rs` value: reservationId, reservedBy, leaseExpiresAt. */
export function fillReservation(row: ExportRow, value: string | null): void {
  const [id, by, lease] = (value ?? '\t\t').split('\t');
  row[7] = id ?? '';
  row[8] = by ?? '';
  row[9] = lease ?? '';
}

/**
 * `<p>:{s}:rd` value: redeemer satellite, redeemer user, redeemedAt, reservationId. Through a reservation, the
 * satellite that reserved is the redeemer (the row of lua/includes/codec.lua names it as reservedBy).
 */
export function fillRedemption(row: ExportRow, value: string | null): void {
  const [sat, user, at, id] = (value ?? '\t\t\t').split('\t');
  row[7] = id ?? '';
  row[8] = id ? (sat ?? '') : '';
  row[10] = sat ?? '';
  row[11] = user ?? '';
  row[12] = at ?? '';
}

export interface ExportFilter {
  campaignId?: string;
  state?: TokenState;
}

const escapeRegExp = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** SCAN's COUNT: a page of ~250 buckets is ~4,000 tokens at 1M */
const BUCKETS_PER_PAGE = 250;

/**
 * Every token under `prefix`, one page of rows per yield, in memory bounded by the page size and
 * not by the number of tokens: SCAN (never KEYS) over every master for bucket keys, HGETALL each
 * bucket of the page (~15 tokens at 1M tokens), HMGET the reservation/redemption records only for
 * the tokens that have one, and one cached dictionary per shard. Not a snapshot: a token that changes
 * state while the scan runs is reported as found by its bucket read.
 */
export async function* scanTokens(redis: RedisClient, prefix: string, filter: ExportFilter = {}): AsyncGenerator<ExportRow[]> {
  const keys = new Keys(prefix);
  const bucketKey = new RegExp(`^${escapeRegExp(prefix)}:\\{(\\d+)\\}:b:(\\d+)$`);
  const dicts = new Map<number, Record<string, string>>();
  // SCAN may return a key twice (rehashing, slot migration); 64k buckets in all, so one byte each
  const seen = new Uint8Array(SHARDS * BUCKETS_PER_SHARD);
  const loadDicts = async (shards: number[]): Promise<void> => {
    const got = await Promise.all(shards.map((s) => redis.hgetall(keys.dict(s))));
    shards.forEach((s, i) => dicts.set(s, got[i]!));
  };
  const stateLetter = filter.state === undefined ? undefined : STATE_LETTER[filter.state];

  for await (const { keys: found } of scanKeys(redis, `${prefix}:{*}:b:*`, BUCKETS_PER_PAGE)) {
    const places: { key: string; shard: number; prefixHex: string }[] = [];
    for (const key of found) {
      const m = bucketKey.exec(key);
      if (!m) continue;
      const shard = Number(m[1]);
      const bucket = Number(m[2]);
      if (shard >= SHARDS || bucket >= BUCKETS_PER_SHARD) continue;
      const place = placeOfBucket(shard, bucket);
      if (seen[place.value]) continue;
      seen[place.value] = 1;
      places.push({ key, shard, prefixHex: place.prefix });
    }
    if (places.length === 0) continue;
    const hashes = await Promise.all(places.map((p) => redis.hgetall(p.key)));
    const page: { shard: number; t: BucketToken }[] = [];
    places.forEach((p, i) => {
      for (const t of decodeBucket(p.prefixHex, hashes[i]!, stateLetter)) page.push({ shard: p.shard, t });
    });
    if (page.length === 0) continue;

    // the dictionary only grows: a number it lacks means our copy predates a generate, so refetch once
    const shards = [...new Set(page.map((e) => e.shard))];
    await loadDicts(shards.filter((s) => !dicts.has(s)));
    const stale = new Set(page.filter((e) => !nameRow(e.t, dicts.get(e.shard)!)).map((e) => e.shard));
    if (stale.size) {
      await loadDicts([...stale]);
      for (const e of page) if (stale.has(e.shard)) nameRow(e.t, dicts.get(e.shard)!);
    }
    const kept = filter.campaignId === undefined ? page : page.filter((e) => e.t.row[4] === filter.campaignId);

    const side = new Map<string, { shard: number; kind: 'rs' | 'rd'; entries: BucketToken[] }>();
    for (const e of kept) {
      if (e.t.state !== 's' && e.t.state !== 'r') continue;
      const kind = e.t.state === 's' ? 'rs' : 'rd';
      const k = `${e.shard}${kind}`;
      let g = side.get(k);
      if (!g) side.set(k, (g = { shard: e.shard, kind, entries: [] }));
      g.entries.push(e.t);
    }
    // in slices: one owner's tokens share a bucket, and its 125,000 redeemed ones as arguments of one call
    // overflowed the stack (and one HMGET that long holds Redis)
    await Promise.all(
      [...side.values()].flatMap((g) => {
        const key = g.kind === 'rs' ? keys.reservations(g.shard) : keys.redeemed(g.shard);
        const fill = g.kind === 'rs' ? fillReservation : fillRedemption;
        return [...slices(g.entries, ARGS_PER_CALL)].map(async (slice) => {
          const values = await redis.hmget(key, ...slice.map((t) => t.suffix));
          slice.forEach((t, i) => fill(t.row, values[i] ?? null));
        });
      }),
    );
    if (kept.length) yield kept.map((e) => e.t.row);
  }
}
