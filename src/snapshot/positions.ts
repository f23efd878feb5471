import type pg from 'pg';
import { idParts } from './events.js';

const idOf = (r: { ms: string; seq: string }) => `${r.ms}-${r.seq}`;

/**
 * The stream id of the newest event Postgres holds of each of `shards` (token_events' key, read backwards:
 * one index probe a shard); a shard with none is left out.
 */
export async function newestCommitted(pool: pg.Pool, shards: number[]): Promise<Map<number, string>> {
  const r = await pool.query<{ shard: number; ms: string; seq: string }>(
    `SELECT s AS shard, e.ms, e.seq FROM unnest($1::int[]) AS s,
       LATERAL (SELECT ev_ms::text AS ms, ev_seq::text AS seq FROM token_events WHERE ev_shard = s ORDER BY ev_ms DESC, ev_seq DESC LIMIT 1) AS e`,
    [shards],
  );
  return new Map(r.rows.map((row) => [row.shard, idOf(row)]));
}

/** The events Postgres holds of `shard` after stream id `after` up to `upTo`, and the tokens they changed. */
export async function committedBetween(pool: pg.Pool, shard: number, after: string, upTo: string): Promise<{ events: number; tokens: number }> {
  const [a, b] = [idParts(after), idParts(upTo)];
  const r = await pool.query<{ events: string; tokens: string }>(
    `SELECT count(*) AS events, count(DISTINCT token) AS tokens FROM token_events
     WHERE ev_shard = $1 AND (ev_ms, ev_seq) > ($2::bigint, $3::bigint) AND (ev_ms, ev_seq) <= ($4::bigint, $5::bigint)`,
    [shard, a[0], a[1], b[0], b[1]],
  );
  return { events: Number(r.rows[0]!.events), tokens: Number(r.rows[0]!.tokens) };
}
