import type pg from 'pg';
import type { RedisClient } from '../store/redis.js';
import { mapValues, pushAll } from '../collections.js';
import { addMade, addRefused, campaignExists, CampaignKeys, parseProgress, readAllCampaigns, readRefused, writeCampaign, type CampaignMeta, type CampaignRecord, type SatelliteProgress } from '../store/campaigns.js';
import { jsonb, PeriodicCopy } from './copy.js';

/** users a page, reading a campaign's made users or refusals from Postgres and writing refusals to it */
const PAGE = 5000;

/** A satellite restored from `running`: its run is gone with the old Redis. */
const RESTORED_RUNNING = 'restored from the Postgres snapshot while running: run generate --resume';
// a resume of an expired campaign refuses to run: the hint above would only lead to that refusal
const RESTORED_EXPIRED = 'restored from the Postgres snapshot while running, and the campaign has expired since: start a new --campaign for the users it did not serve';

// an unchanged row is left alone: the minute's full copy rewrote every row, a dead row version each time
const UPSERT = `
  INSERT INTO campaigns (id, meta, progress)
  SELECT r->>'id', r->'meta', r->'progress' FROM jsonb_array_elements($1::jsonb) r
  ON CONFLICT (id) DO UPDATE SET meta = EXCLUDED.meta, progress = EXCLUDED.progress
  WHERE (campaigns.meta, campaigns.progress) IS DISTINCT FROM (EXCLUDED.meta, EXCLUDED.progress)`;

interface CampaignRow {
  id: string;
  /** `revokedAt`: only in rows an older writer copied, when the record repeated the registry (restoreRevoked) */
  meta: Omit<CampaignMeta, 'id'> & { revokedAt?: number };
  progress: Record<string, SatelliteProgress>;
}

const rowOf = ({ id, progress, ...meta }: CampaignRecord): CampaignRow => ({ id, meta, progress });

/** A satellite's refused users of a campaign, read whole, and the usersRefused counter read before them. */
interface Refusals {
  id: string;
  sat: string;
  users: string[];
  counted: number;
}

interface Changes {
  rows: Map<string, string>;
  all: boolean;
  refusals: Refusals[];
}

const ADD_REFUSALS = `
  INSERT INTO campaign_refusals (campaign_id, satellite_id, user_id) SELECT $1, $2, unnest($3::text[])
  ON CONFLICT DO NOTHING`;

/**
 * Copies generate's campaign records (settings and per-satellite progress, not the per-user made and
 * delivered lists) to Postgres for the snapshot writer, with the users each satellite refused (few, and
 * not rebuildable from the tokens table). A running campaign changes its counters with every page, so
 * the records are read at most every 2 s (three round trips for all of them) and only the campaigns that
 * changed are written; once a minute all are, which mends a copy an overlapping ex-holder of the lease
 * wrote late. A refusal set is read again when its satellite's usersRefused counter moved (the set and
 * the counter change in one step, lua/campaign_refuse.lua); its rows are only ever added, so a late copy
 * cannot undo a newer one. Nothing is ever deleted: a campaign missing from Redis (a writer started on
 * an emptied Redis) is kept for restore.
 */
export class CampaignCopy extends PeriodicCopy<Changes> {
  private readonly keys: CampaignKeys;
  /** campaign id -> its row as last written */
  private readonly copied = new Map<string, string>();
  /** [campaign id, satellite] as JSON -> the usersRefused counter its refusals were last copied at */
  private readonly refusalsCopied = new Map<string, number>();

  constructor(private readonly redis: RedisClient, prefix: string) {
    super(2000);
    this.keys = new CampaignKeys(prefix);
  }

  protected async read(all: boolean): Promise<Changes | undefined> {
    const rows = new Map<string, string>();
    const refusals: Refusals[] = [];
    for (const c of await readAllCampaigns(this.redis, this.keys)) {
      const text = jsonb(rowOf(c));
      if (all || this.copied.get(c.id) !== text) rows.set(c.id, text);
      for (const [sat, p] of Object.entries(c.progress)) {
        if (p.usersRefused === 0 || this.refusalsCopied.get(JSON.stringify([c.id, sat])) === p.usersRefused) continue;
        const users: string[] = [];
        for await (const page of readRefused(this.redis, this.keys, c.id, sat)) pushAll(users, page);
        refusals.push({ id: c.id, sat, users, counted: p.usersRefused });
      }
    }
    return rows.size === 0 && refusals.length === 0 ? undefined : { rows, all, refusals };
  }

  /** One statement for every changed campaign, one per page of each changed refusal set. */
  protected async store(pool: pg.Pool, p: Changes): Promise<void> {
    if (p.rows.size) await pool.query(UPSERT, [`[${[...p.rows.values()].join(',')}]`]);
    for (const [id, text] of p.rows) this.copied.set(id, text);
    for (const r of p.refusals) {
      for (let i = 0; i < r.users.length; i += PAGE) await pool.query(ADD_REFUSALS, [r.id, r.sat, r.users.slice(i, i + PAGE)]);
      this.refusalsCopied.set(JSON.stringify([r.id, r.sat]), r.counted);
    }
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
             GROUP BY owner_user_id ORDER BY owner_user_id LIMIT ${PAGE}`,
      values: [id, sat, after],
      rowMode: 'array',
    });
    if (res.rows.length) yield res.rows;
    if (res.rows.length < PAGE) return;
    after = res.rows[res.rows.length - 1]![0];
  }
}

/** One satellite's refused users of a campaign, a page at a time. */
async function* refusedUsers(pool: pg.Pool, id: string, sat: string): AsyncGenerator<string[]> {
  let after = '';
  for (;;) {
    const res = await pool.query<{ user_id: string }>(
      `SELECT user_id FROM campaign_refusals WHERE campaign_id = $1 AND satellite_id = $2 AND user_id > $3 ORDER BY user_id LIMIT ${PAGE}`,
      [id, sat, after],
    );
    const users = res.rows.map((r) => r.user_id);
    if (users.length) yield users;
    if (users.length < PAGE) return;
    after = users[users.length - 1]!;
  }
}

/**
 * What Redis gets for a satellite: a `done` one delivered every user it made but those it refused, so
 * they are recorded delivered. A `revoked` or `expired` one, or any of a campaign whose expiry has passed,
 * is never resumed (the campaign's revocation comes back too; a resume of an expired campaign refuses to
 * run), so its counters are history and stay; one that was `running` is `expired`, as its run would have
 * ended. Any other (a `removed` one too: added again, a resume serves it) has no delivery recorded (the
 * snapshot does not hold the list), so `--resume` sends every made user but the refused ones again
 * (satellites store a batch idempotently) and counts those tokens then: its delivered counter starts at 0,
 * or it would count them twice. A `running` one lost its run.
 */
function restoredProgress(p: SatelliteProgress, expired: boolean): SatelliteProgress {
  if (p.status === 'done' || p.status === 'revoked' || p.status === 'expired') return p;
  if (expired) return p.status === 'running' ? { ...p, status: 'expired', lastError: RESTORED_EXPIRED } : p;
  return p.status === 'running' ? { ...p, tokensDelivered: 0, status: 'failed', lastError: RESTORED_RUNNING } : { ...p, tokensDelivered: 0 };
}

/**
 * Brings back every campaign of the snapshot that Redis does not have: its made users rebuilt from the
 * tokens table, the users of `done` satellites recorded delivered, the users each satellite refused, then
 * its record (last, as it is what makes the campaign exist: a restore stopped part-way leaves no record
 * and its rerun does the campaign again). The progress as restored is written back to Postgres too, so
 * verify agrees at once. A campaign Redis has is newer than the snapshot and is kept. Its revocation is
 * restoreRevoked's.
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
    const expired = c.expiresAt !== undefined && c.expiresAt <= Date.now();
    const progress = mapValues(c.progress, (p) => restoredProgress(p, expired));
    for (const sat of c.satellites) {
      const refused = new Set<string>();
      for await (const users of refusedUsers(pool, c.id, sat)) {
        await addRefused(redis, keys, c.id, sat, users);
        for (const u of users) refused.add(u);
      }
      const done = c.progress[sat]?.status === 'done';
      for await (const page of madeByUser(pool, c.id, sat)) await addMade(redis, keys, c.id, sat, page, (u) => done && !refused.has(u));
    }
    await writeCampaign(redis, keys, { ...c, progress });
    if (JSON.stringify(progress) !== JSON.stringify(c.progress)) await pool.query('UPDATE campaigns SET progress = $2 WHERE id = $1', [c.id, jsonb(progress)]);
    restored++;
  }
  return { restored, kept };
}
