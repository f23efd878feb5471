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
      text: `SELECT ${ROW_COLUMNS}, CASE WHEN purged_at IS NULL THEN '' ELSE 'purged' END FROM tokens WHERE token ${op} $1 AND token <= $2 ORDER BY token LIMIT ${PAGE}`,
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
