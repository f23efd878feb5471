import type pg from 'pg';
import type { StreamEvent } from './events.js';

/**
 * One batch, one transaction, one statement per table. The events travel as six parallel arrays
 * (unnest), the row still packed as the stream carries it, split here once per event: Postgres does that
 * for less than the writer spends turning 13 arrays into array literals. token_events takes every entry
 * (a replayed entry hits its key and is skipped); tokens takes the newest entry per token and only moves
 * forward: an upsert whose stream position is not greater than the stored one changes nothing. So
 * re-applying any batch, in any order, is harmless. A 'purged' event (lua/purge.lua) carries the token's last
 * row and sets purged_at: the token left Redis, its row stays.
 */
const APPLY_SQL = `
WITH b AS (
  SELECT u.shard, u.ms, u.seq, u.type, u.at, f.r[1]::uuid AS token, f.r[2] AS state, f.r[3] AS osat, f.r[4] AS ouser,
    f.r[5] AS camp, f.r[6]::bigint AS created, nullif(f.r[7], '')::bigint AS expires, nullif(f.r[8], '') AS resid,
    nullif(f.r[9], '') AS resby, nullif(f.r[10], '')::bigint AS lease, nullif(f.r[11], '') AS rsat,
    nullif(f.r[12], '') AS ruser, nullif(f.r[13], '')::bigint AS rat,
    CASE WHEN u.type = 'purged' THEN u.at END AS purged
  FROM unnest($1::smallint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::text[]) AS u(shard, ms, seq, type, at, row),
    string_to_array(u.row, E'\\t') AS f(r)
), ev AS (
  INSERT INTO token_events (ev_shard, ev_ms, ev_seq, token, type, at)
  SELECT shard, ms, seq, token, type, at FROM b
  ON CONFLICT DO NOTHING
)
INSERT INTO tokens AS t (token, state, owner_satellite_id, owner_user_id, campaign_id, created_at, expires_at,
  reservation_id, reserved_by, lease_expires_at, redeemer_satellite_id, redeemer_user_id, redeemed_at, ev_shard, ev_ms, ev_seq, purged_at)
SELECT DISTINCT ON (token) token, state, osat, ouser, camp, created, expires, resid, resby, lease, rsat, ruser, rat, shard, ms, seq, purged
FROM b ORDER BY token, ms DESC, seq DESC
ON CONFLICT (token) DO UPDATE SET state = excluded.state, owner_satellite_id = excluded.owner_satellite_id,
  owner_user_id = excluded.owner_user_id, campaign_id = excluded.campaign_id, created_at = excluded.created_at,
  expires_at = excluded.expires_at, reservation_id = excluded.reservation_id, reserved_by = excluded.reserved_by,
  lease_expires_at = excluded.lease_expires_at, redeemer_satellite_id = excluded.redeemer_satellite_id,
  redeemer_user_id = excluded.redeemer_user_id, redeemed_at = excluded.redeemed_at,
  ev_shard = excluded.ev_shard, ev_ms = excluded.ev_ms, ev_seq = excluded.ev_seq, purged_at = excluded.purged_at
WHERE (excluded.ev_ms, excluded.ev_seq) > (t.ev_ms, t.ev_seq)`;

const NEEDS_ESCAPE = /["\\]/;

/**
 * A Postgres array literal: numbers (shards, stream id parts) bare, text double-quoted and escaped only
 * when it holds a quote or a backslash. pg runs two regex replaces on every element; for 6 x 5,000
 * elements a batch that was the writer's largest cost after the GC.
 */
function arrayLiteral(values: (string | number)[], quote: boolean): string {
  if (!quote) return `{${values.join(',')}}`;
  let out = '{';
  for (let i = 0; i < values.length; i++) {
    const v = values[i] as string;
    out += `${i ? ',' : ''}"${NEEDS_ESCAPE.test(v) ? v.replace(/["\\]/g, '\\$&') : v}"`;
  }
  return `${out}}`;
}

/** Sends `events` as one statement; the caller owns the transaction. */
export async function applyEvents(client: pg.ClientBase, events: StreamEvent[]): Promise<void> {
  const n = events.length;
  const shard = new Array<number>(n);
  const ms = new Array<string>(n);
  const seq = new Array<string>(n);
  const type = new Array<string>(n);
  const at = new Array<string>(n);
  const row = new Array<string>(n);
  for (let i = 0; i < n; i++) {
    const e = events[i]!;
    shard[i] = e.shard;
    ms[i] = e.ms;
    seq[i] = e.seq;
    type[i] = e.type;
    at[i] = e.at;
    row[i] = e.row;
  }
  await client.query(APPLY_SQL, [
    arrayLiteral(shard, false),
    arrayLiteral(ms, false),
    arrayLiteral(seq, false),
    arrayLiteral(type, true),
    arrayLiteral(at, true),
    arrayLiteral(row, true),
  ]);
}
