import type pg from 'pg';
import type { RedisClient } from '../store/redis.js';
import { insertSatellite, readRegistry, SatelliteKeys, type SatelliteRecord } from '../store/satellites.js';

import { jsonb, PeriodicCopy } from './copy.js';

// One statement, so a copy lands whole. Registered and removed ids are disjoint (readRegistry). A row that
// did not change is left alone: the minute's full copy rewrote every row, a dead row version each time.
const UPSERT = `
  WITH gone AS (DELETE FROM satellites WHERE id = ANY($2::text[]))
  INSERT INTO satellites (id, fields, api_keys)
  SELECT r->>'id', r->'fields', r->'apiKeys' FROM jsonb_array_elements($1::jsonb) r
  ON CONFLICT (id) DO UPDATE SET fields = EXCLUDED.fields, api_keys = EXCLUDED.api_keys
  WHERE (satellites.fields, satellites.api_keys) IS DISTINCT FROM (EXCLUDED.fields, EXCLUDED.api_keys)`;

/**
 * Copies the satellite registry to Postgres for the snapshot writer. Satellites change rarely and are
 * few, so it reads the whole registry at most once a second and writes it when it changed; once a
 * minute it writes anyway, which mends a copy an overlapping ex-holder of the lease wrote late.
 * Registered satellites are upserted and removed ones deleted; a satellite merely missing from Redis is
 * kept, so a writer started on an emptied Redis does not wipe what restore needs.
 */
export class SatelliteCopy extends PeriodicCopy<{ satellites: SatelliteRecord[]; removed: string[]; text: string }> {
  private readonly keys: SatelliteKeys;
  private copied = '';

  constructor(private readonly redis: RedisClient, prefix: string) {
    super(1000);
    this.keys = new SatelliteKeys(prefix);
  }

  protected async read(rewrite: boolean) {
    const { satellites, removed } = await readRegistry(this.redis, this.keys);
    const text = JSON.stringify([satellites, removed]);
    return text === this.copied && !rewrite ? undefined : { satellites, removed, text };
  }

  protected async store(pool: pg.Pool, p: { satellites: SatelliteRecord[]; removed: string[]; text: string }): Promise<void> {
    await pool.query(UPSERT, [jsonb(p.satellites), p.removed]);
    this.copied = p.text;
    this.writtenAt = Date.now();
  }
}

/** The satellites Postgres holds, sorted by id. */
export async function pgSatellites(pool: pg.Pool): Promise<SatelliteRecord[]> {
  const res = await pool.query<SatelliteRecord>('SELECT id, fields, api_keys AS "apiKeys" FROM satellites ORDER BY id');
  return res.rows;
}

/**
 * Registers every satellite of the snapshot that Redis does not have, with its API keys (their hashes):
 * satellites keep working after Redis is rebuilt. One already registered, or removed in Redis (its id in
 * the removed set: a removal the writer had not copied yet, on a Redis whose registry survived), is newer
 * than the snapshot and is kept as it is.
 */
export async function restoreSatellites(redis: RedisClient, pool: pg.Pool, prefix: string): Promise<{ restored: number; kept: number }> {
  const keys = new SatelliteKeys(prefix);
  const removed = new Set(await redis.smembers(keys.removed()));
  let restored = 0;
  let kept = 0;
  for (const r of await pgSatellites(pool)) {
    if (!removed.has(r.id) && (await insertSatellite(redis, keys, r))) restored++;
    else kept++;
  }
  return { restored, kept };
}
