import type pg from 'pg';
import type { RedisClient } from '../store/redis.js';
import { CampaignKeys, readAllCampaigns, type CampaignMeta, type CampaignRecord, type SatelliteProgress } from '../store/campaigns.js';

const READ_EVERY_MS = 2000;
const REWRITE_EVERY_MS = 60_000;

const UPSERT = `
  INSERT INTO campaigns (id, meta, progress)
  SELECT r->>'id', r->'meta', r->'progress' FROM jsonb_array_elements($1::jsonb) r
  ON CONFLICT (id) DO UPDATE SET meta = EXCLUDED.meta, progress = EXCLUDED.progress`;

interface CampaignRow {
  id: string;
  meta: Omit<CampaignMeta, 'id'>;
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
export class CampaignCopy {
  private readonly keys: CampaignKeys;
  /** campaign id -> its row as last written */
  private readonly copied = new Map<string, string>();
  private readAt = 0;
  private writtenAt = 0;
  private pending: { rows: Map<string, string>; all: boolean } | undefined;

  constructor(private readonly redis: RedisClient, prefix: string) {
    this.keys = new CampaignKeys(prefix);
  }

  /** Reads the records (at most every 2 s): true when some are to be written. */
  async due(): Promise<boolean> {
    const now = Date.now();
    if (now < this.readAt) return false;
    this.readAt = now + READ_EVERY_MS;
    const all = now >= this.writtenAt + REWRITE_EVERY_MS;
    const rows = new Map<string, string>();
    for (const c of await readAllCampaigns(this.redis, this.keys)) {
      const text = JSON.stringify(rowOf(c));
      if (all || this.copied.get(c.id) !== text) rows.set(c.id, text);
    }
    if (rows.size === 0) return false;
    this.pending = { rows, all };
    return true;
  }

  /** Writes what `due` read, in one statement; after a failure the next `due` reads again. */
  async write(pool: pg.Pool): Promise<void> {
    const p = this.pending;
    this.pending = undefined;
    if (!p) return;
    try {
      await pool.query(UPSERT, [`[${[...p.rows.values()].join(',')}]`]);
    } catch (err) {
      this.readAt = 0;
      throw err;
    }
    for (const [id, text] of p.rows) this.copied.set(id, text);
    if (p.all) this.writtenAt = Date.now();
  }
}
