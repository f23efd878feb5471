import type pg from 'pg';
import type { RedisClient } from '../store/redis.js';
import { markRevokedInShards } from '../store/campaigns.js';
import { Keys, SHARDS } from '../store/keys.js';
import { jsonb, PeriodicCopy } from './copy.js';

// an unchanged row is left alone: the minute's full copy rewrote every row, a dead row version each time
const UPSERT = `
  INSERT INTO revoked_campaigns (id, revoked_at)
  SELECT r->>0, (r->>1)::bigint FROM jsonb_array_elements($1::jsonb) r
  ON CONFLICT (id) DO UPDATE SET revoked_at = EXCLUDED.revoked_at
  WHERE revoked_campaigns.revoked_at IS DISTINCT FROM EXCLUDED.revoked_at`;

/** Redis' registry of revoked campaigns: id -> revokedAt ms. */
export async function readRevoked(redis: RedisClient, prefix: string): Promise<Map<string, number>> {
  const h = await redis.hgetall(new Keys(prefix).revokedCampaigns());
  return new Map(Object.entries(h).map(([id, at]) => [id, Number(at)]));
}

/**
 * Copies the registry of revoked campaigns to Postgres for the snapshot writer. Revocations are rare and
 * never undone, so it reads the whole registry (one HGETALL) at most every 2 s and writes the entries that
 * changed; once a minute all of them. Nothing is deleted: an entry missing from Redis (a writer started on
 * an emptied Redis) is kept for restore.
 */
export class RevocationCopy extends PeriodicCopy<{ rows: [string, number][]; all: boolean }> {
  /** campaign id -> revokedAt as last written */
  private readonly copied = new Map<string, number>();

  constructor(private readonly redis: RedisClient, private readonly prefix: string) {
    super(2000);
  }

  protected async read(all: boolean) {
    const rows = [...(await readRevoked(this.redis, this.prefix))].filter(([id, at]) => all || this.copied.get(id) !== at);
    return rows.length === 0 ? undefined : { rows, all };
  }

  protected async store(pool: pg.Pool, p: { rows: [string, number][]; all: boolean }): Promise<void> {
    await pool.query(UPSERT, [jsonb(p.rows)]);
    for (const [id, at] of p.rows) this.copied.set(id, at);
    if (p.all) this.writtenAt = Date.now();
  }
}

/** The revoked campaigns Postgres holds. */
export async function pgRevoked(pool: pg.Pool): Promise<Map<string, number>> {
  const res = await pool.query<{ id: string; at: string }>('SELECT id, revoked_at::text AS at FROM revoked_campaigns ORDER BY id');
  return new Map(res.rows.map((r) => [r.id, Number(r.at)]));
}

/**
 * Brings back every revocation of the snapshot (`revoked_campaigns`; migration 7 moved there those an
 * older writer kept only in a campaign row's meta): into the registry (one Redis has is newer and kept)
 * and as the mark in every shard's dictionary, which the restored dictionaries (rebuilt from tokens)
 * lack, so generate still refuses the campaign, also one that never had a campaign record.
 */
export async function restoreRevoked(redis: RedisClient, pool: pg.Pool, prefix: string): Promise<{ restored: number; kept: number }> {
  const key = new Keys(prefix).revokedCampaigns();
  let restored = 0;
  let kept = 0;
  const all = await pgRevoked(pool);
  for (const [id, at] of all) {
    // one round trip: whether the snapshot's time was taken, and the time the registry now holds
    const replies = (await redis.multi().hsetnx(key, id, String(at)).hget(key, id).exec()) ?? [];
    for (const [err] of replies) if (err) throw err;
    if (replies[0]![1] === 1) restored++;
    else kept++;
    await markRevokedInShards(redis, prefix, id, Number(replies[1]![1]));
  }
  // revoked after the writer last copied the registry (or with no writer running): the snapshot lacks
  // them, the registry survived `restore --force`, the rebuilt shards did not keep the marks
  for (const [id, at] of await readRevoked(redis, prefix)) {
    if (all.has(id)) continue;
    kept++;
    await markRevokedInShards(redis, prefix, id, at);
  }
  return { restored, kept };
}

/**
 * Before `restore --force` deletes the shards: registers the revocations only their marks remember
 * (admin-route revocations from before the registry), at the earliest mark's time, so restoreRevoked
 * marks the rebuilt shards again instead of losing them with the old ones. Returns how many.
 */
export async function registerMarkedRevocations(redis: RedisClient, prefix: string): Promise<number> {
  const { unregistered } = await revocationGaps(redis, prefix);
  const key = new Keys(prefix).revokedCampaigns();
  for (const [id, m] of unregistered) await redis.hsetnx(key, id, String(m.revokedAt));
  return unregistered.size;
}

/** Where Redis' registry of revoked campaigns and the shards' marks (`x\t<id>` in each dict) disagree. */
export interface RevocationGaps {
  /** registered id -> the shards without its mark: a revoke that stopped part-way; generate still works there */
  unmarked: Map<string, number[]>;
  /** marked id the registry lacks -> the shards with its mark and the earliest mark's time: restore would lose it */
  unregistered: Map<string, { shards: number[]; revokedAt: number }>;
}

/** Reads the registry and every shard's marks (the dicts hold ids of satellites and campaigns only: small). */
export async function revocationGaps(redis: RedisClient, prefix: string): Promise<RevocationGaps> {
  const keys = new Keys(prefix);
  const registry = await readRevoked(redis, prefix);
  const marks = await Promise.all(Array.from({ length: SHARDS }, (_, s) => redis.hgetall(keys.dict(s))));
  const marked = new Map<string, { shards: number[]; revokedAt: number }>();
  marks.forEach((dict, shard) => {
    for (const [field, at] of Object.entries(dict)) {
      if (!field.startsWith('x\t')) continue;
      const id = field.slice(2);
      const m = marked.get(id) ?? { shards: [], revokedAt: Number(at) };
      m.shards.push(shard);
      m.revokedAt = Math.min(m.revokedAt, Number(at));
      marked.set(id, m);
    }
  });
  const gaps: RevocationGaps = { unmarked: new Map(), unregistered: new Map() };
  for (const id of registry.keys()) {
    const have = new Set(marked.get(id)?.shards);
    const missing = Array.from({ length: SHARDS }, (_, s) => s).filter((s) => !have.has(s));
    if (missing.length) gaps.unmarked.set(id, missing);
  }
  for (const [id, m] of marked) if (!registry.has(id)) gaps.unregistered.set(id, m);
  return gaps;
}
