import type pg from 'pg';
import type { RedisClient } from '../store/redis.js';
import { mapValues } from '../collections.js';
import { addMade, campaignExists, CampaignKeys, parseProgress, readAllCampaigns, writeCampaign, type CampaignMeta, type CampaignRecord, type SatelliteProgress } from '../store/campaigns.js';
import { PeriodicCopy } from './copy.js';

const MADE_PAGE = 5000;

/** A satellite restored from `running`: its run is gone with the old Redis. */
export const RESTORED_RUNNING = 'restored from the Postgres snapshot while running: run generate --resume';

const UPSERT = `
  INSERT INTO campaigns (id, meta, progress)
  SELECT r->>'id', r->'meta', r->'progress' FROM jsonb_array_elements($1::jsonb) r
  ON CONFLICT (id) DO UPDATE SET meta = EXCLUDED.meta, progress = EXCLUDED.progress`;

interface CampaignRow {
  id: string;
  /** `revokedAt`: only in rows an older writer copied, when the record repeated the registry (restoreRevoked) */
  meta: Omit<CampaignMeta, 'id'> & { revokedAt?: number };
  progress: Record<string, SatelliteProgress>;
}

const rowOf = ({ id, progress, ...meta }: CampaignRecord): CampaignRow => ({ id, meta, progress });

/**
 * Copies generate's campaign records (settings and per-satellite progress, not the per-user lists) to
 * Postgres for the snapshot writer. A running campaign changes its counters with every page, so the
 * records are read at most every 2 s (three round trips for all of them) and only the campaigns that
 * changed are written; once a minute all are, which mends a copy an overlapping ex-holder of the lease
 * wrote late. Nothing is ever deleted: a campaign missing from Redis (a writer started on an emptied
 * Redis) is kept for restore.
 */
export class CampaignCopy extends PeriodicCopy<{ rows: Map<string, string>; all: boolean }> {
  private readonly keys: CampaignKeys;
  /** campaign id -> its row as last written */
  private readonly copied = new Map<string, string>();

  constructor(private readonly redis: RedisClient, prefix: string) {
    super(2000);
    this.keys = new CampaignKeys(prefix);
  }

  protected async read(all: boolean) {
    const rows = new Map<string, string>();
    for (const c of await readAllCampaigns(this.redis, this.keys)) {
      const text = JSON.stringify(rowOf(c));
      if (all || this.copied.get(c.id) !== text) rows.set(c.id, text);
    }
    return rows.size === 0 ? undefined : { rows, all };
  }

  /** One statement for every changed campaign. */
  protected async store(pool: pg.Pool, p: { rows: Map<string, string>; all: boolean }): Promise<void> {
    await pool.query(UPSERT, [`[${[...p.rows.values()].join(',')}]`]);
    for (const [id, text] of p.rows) this.copied.set(id, text);
    if (p.all) this.writtenAt = Date.now();
  }
}

/** The campaigns Postgres holds, sorted by id. */
export async function pgCampaigns(pool: pg.Pool): Promise<CampaignRecord[]> {
  const res = await pool.query<CampaignRow>('SELECT id, meta, progress FROM campaigns ORDER BY id');
  return res.rows.map(({ id, meta: { revokedAt: _, ...meta }, progress }) => ({ id, ...meta, progress: mapValues(progress, parseProgress) }));
}

/** One satellite's made users of a campaign from the tokens table (every state), a page at a time. */
async function* madeByUser(pool: pg.Pool, id: string, sat: string): AsyncGenerator<[string, string][]> {
  let after = '';
  for (;;) {
    const res = await pool.query<[string, string]>({
      text: `SELECT owner_user_id, string_agg(token::text, ',' ORDER BY created_at, token) FROM tokens
             WHERE campaign_id = $1 AND owner_satellite_id = $2 AND owner_user_id > $3
             GROUP BY owner_user_id ORDER BY owner_user_id LIMIT ${MADE_PAGE}`,
      values: [id, sat, after],
      rowMode: 'array',
    });
    if (res.rows.length) yield res.rows;
    if (res.rows.length < MADE_PAGE) return;
    after = res.rows[res.rows.length - 1]![0];
  }
}

/**
 * What Redis gets for a satellite: a `done` one delivered every user it made, so they are all recorded
 * delivered. Any other has no delivery recorded (the snapshot does not hold the list), so `--resume`
 * sends every made user again (satellites store a batch idempotently) and counts those tokens then:
 * its delivered counter starts at 0, or it would count them twice. A `running` one lost its run.
 */
function restoredProgress(p: SatelliteProgress): SatelliteProgress {
  if (p.status === 'done') return p;
  const q = { ...p, tokensDelivered: 0 };
  return p.status === 'running' ? { ...q, status: 'failed', lastError: RESTORED_RUNNING } : q;
}

/**
 * Brings back every campaign of the snapshot that Redis does not have: its made users rebuilt from the
 * tokens table, the users of `done` satellites recorded delivered, then its record (last, as it is what
 * makes the campaign exist: a restore stopped part-way leaves no record and its rerun does the campaign
 * again). The progress as restored is written back to Postgres too, so verify agrees at once. A campaign
 * Redis has is newer than the snapshot and is kept. Its revocation is restoreRevoked's.
 */
export async function restoreCampaigns(redis: RedisClient, pool: pg.Pool, prefix: string): Promise<{ restored: number; kept: number }> {
  const keys = new CampaignKeys(prefix);
  let restored = 0;
  let kept = 0;
  for (const c of await pgCampaigns(pool)) {
    if (await campaignExists(redis, keys, c.id)) {
      kept++;
      continue;
    }
    const progress = mapValues(c.progress, restoredProgress);
    for (const sat of c.satellites) {
      const done = c.progress[sat]?.status === 'done';
      for await (const page of madeByUser(pool, c.id, sat)) await addMade(redis, keys, c.id, sat, page, done);
    }
    await writeCampaign(redis, keys, { ...c, progress });
    if (JSON.stringify(progress) !== JSON.stringify(c.progress)) await pool.query('UPDATE campaigns SET progress = $2 WHERE id = $1', [c.id, JSON.stringify(progress)]);
    restored++;
  }
  return { restored, kept };
}
