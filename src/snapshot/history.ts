import type pg from 'pg';
import { decodeRow } from '../store/codec.js';
import { EXPORT_FIELDS } from '../store/export.js';
import type { Token } from '../store/model.js';
import { ROW_COLUMNS } from './rows.js';

export interface TokenHistory {
  /** the token's row as the snapshot holds it: the state as stored (a lapsed lease stays "reserved" until the lapse sweep's 'lapsed' event) */
  token: Token;
  /** when `tokens purge` deleted it from Redis; the row keeps its last state */
  purgedAt?: number;
  /** every change of the token, in the order its shard's stream took them; `at` is Redis TIME in ms */
  events: { at: number; type: string }[];
}

/**
 * One token's record and its history from the Postgres snapshot (token_events, by its token index): what a
 * support question ("who used my invitation, and when?") needs, also for a token purged from Redis.
 * Undefined when the snapshot holds no row of it.
 */
export async function tokenHistory(pool: pg.Pool, token: string): Promise<TokenHistory | undefined> {
  const row = await pool.query<string[]>({ text: `SELECT ${ROW_COLUMNS}, coalesce(purged_at::text, '') FROM tokens WHERE token = $1`, values: [token], rowMode: 'array' });
  const values = row.rows[0];
  if (!values) return undefined;
  const events = await pool.query<{ at: string; type: string }>('SELECT at::text, type FROM token_events WHERE token = $1 ORDER BY ev_ms, ev_seq', [token]);
  // ROW_COLUMNS is the scripts' row (EXPORT_FIELDS order, '' when absent), which decodeRow reads; purged_at follows
  const purged = values[EXPORT_FIELDS.length]!;
  return {
    token: decodeRow(values),
    ...(purged ? { purgedAt: Number(purged) } : {}),
    events: events.rows.map((e) => ({ at: Number(e.at), type: e.type })),
  };
}
