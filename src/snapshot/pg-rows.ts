import type pg from 'pg';
import { ROW_COLUMNS, shardRange, type Row } from './rows.js';

const PAGE = 5000;

/**
 * Yields one virtual shard's rows from Postgres in token order, a page at a time (keyset on the primary key).
 * Each row has a 14th value after the engine's 13: 'purged' when a purge deleted the token from Redis, else ''.
 */
export async function* pgShardRows(pool: pg.Pool, shard: number): AsyncGenerator<Row[]> {
  const [lo, hi] = shardRange(shard);
  let after = lo;
  let op = '>=';
  for (;;) {
    const res = await pool.query<Row>({
      // ORDER BY tokens.token, the uuid: a bare `token` names the output column (token::text), which Postgres
      // sorted after reading the rest of the shard, every page (85 ms a page of a 62,000-row shard, 6 ms in key order)
      text: `SELECT ${ROW_COLUMNS}, CASE WHEN purged_at IS NULL THEN '' ELSE 'purged' END FROM tokens WHERE token ${op} $1 AND token <= $2 ORDER BY tokens.token LIMIT ${PAGE}`,
      values: [after, hi],
      rowMode: 'array',
    });
    if (res.rows.length === 0) return;
    yield res.rows;
    if (res.rows.length < PAGE) return;
    after = res.rows[res.rows.length - 1]![0]!;
    op = '>';
  }
}
