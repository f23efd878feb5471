import type pg from 'pg';
import type { StreamEvent } from './events.js';

/**
 * One batch, one transaction, one statement per table: the events travel as 19 parallel arrays
 * (unnest), token_events takes every entry (a replayed entry hits its key and is skipped), tokens
 * takes the newest entry per token and only moves forward: an upsert whose stream position is not
 * greater than the stored one changes nothing. So re-applying any batch, in any order, is harmless.
 */
const APPLY_SQL = `
WITH b AS (
  SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::uuid[], $7::text[],
    $8::text[], $9::text[], $10::text[], $11::bigint[], $12::bigint[], $13::text[], $14::text[], $15::bigint[],
    $16::text[], $17::text[], $18::bigint[])
    AS b(shard, ms, seq, type, at, token, state, osat, ouser, camp, created, expires, resid, resby, lease, rsat, ruser, rat)
), ev AS (
  INSERT INTO token_events (ev_shard, ev_ms, ev_seq, token, type, at)
  SELECT shard, ms, seq, token, type, at FROM b
  ON CONFLICT DO NOTHING
)
INSERT INTO tokens AS t (token, state, owner_satellite_id, owner_user_id, campaign_id, created_at, expires_at,
  reservation_id, reserved_by, lease_expires_at, redeemer_satellite_id, redeemer_user_id, redeemed_at, ev_shard, ev_ms, ev_seq)
SELECT DISTINCT ON (token) token, state, osat, ouser, camp, created, expires, resid, resby, lease, rsat, ruser, rat, shard, ms, seq
FROM b ORDER BY token, ms DESC, seq DESC
ON CONFLICT (token) DO UPDATE SET state = excluded.state, owner_satellite_id = excluded.owner_satellite_id,
  owner_user_id = excluded.owner_user_id, campaign_id = excluded.campaign_id, created_at = excluded.created_at,
  expires_at = excluded.expires_at, reservation_id = excluded.reservation_id, reserved_by = excluded.reserved_by,
  lease_expires_at = excluded.lease_expires_at, redeemer_satellite_id = excluded.redeemer_satellite_id,
  redeemer_user_id = excluded.redeemer_user_id, redeemed_at = excluded.redeemed_at,
  ev_shard = excluded.ev_shard, ev_ms = excluded.ev_ms, ev_seq = excluded.ev_seq
WHERE (excluded.ev_ms, excluded.ev_seq) > (t.ev_ms, t.ev_seq)`;

const orNull = (s: string): string | null => (s === '' ? null : s);

/** Sends `events` as one statement; the caller owns the transaction. */
export async function applyEvents(client: pg.ClientBase, events: StreamEvent[]): Promise<void> {
  const cols: (string | number | null)[][] = Array.from({ length: 18 }, () => new Array(events.length));
  events.forEach((e, i) => {
    const r = e.row;
    const v = [e.shard, e.ms, e.seq, e.type, e.at, r[0]!, r[1]!, r[2]!, r[3]!, r[4]!, r[5]!, orNull(r[6]!), orNull(r[7]!),
      orNull(r[8]!), orNull(r[9]!), orNull(r[10]!), orNull(r[11]!), orNull(r[12]!)];
    for (let c = 0; c < 18; c++) cols[c]![i] = v[c]!;
  });
  await client.query(APPLY_SQL, cols);
}
