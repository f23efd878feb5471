import type pg from 'pg';
import type { RedisClient } from '../store/redis.js';
import { Keys, SHARDS } from '../store/keys.js';
import { EXPORT_FIELDS } from '../store/export.js';
import { pgShardRows } from './pg-rows.js';
import { readShardRows } from './rows.js';

export interface Difference {
  token: string;
  /** only_redis | only_postgres | field names that differ */
  kind: 'only_redis' | 'only_postgres' | 'differs';
  fields?: { field: string; redis: string; postgres: string }[];
}

export interface VerifyReport {
  tokens: number;
  differences: number;
  /** the first `maxListed` differences */
  listed: Difference[];
}

/**
 * Compares every token in Redis with Postgres, one virtual shard at a time (memory bounded by one
 * shard), and reports missing rows on either side and differing fields.
 */
export async function verify(redis: RedisClient, pool: pg.Pool, prefix: string, maxListed = 100): Promise<VerifyReport> {
  const keys = new Keys(prefix);
  const report: VerifyReport = { tokens: 0, differences: 0, listed: [] };
  const note = (d: Difference) => {
    report.differences++;
    if (report.listed.length < maxListed) report.listed.push(d);
  };
  for (let shard = 0; shard < SHARDS; shard++) {
    const inRedis = await readShardRows(redis, keys, shard);
    report.tokens += inRedis.size;
    for await (const page of pgShardRows(pool, shard)) {
      for (const p of page) {
        const r = inRedis.get(p[0]!);
        if (!r) {
          note({ token: p[0]!, kind: 'only_postgres' });
          continue;
        }
        inRedis.delete(p[0]!);
        const fields = EXPORT_FIELDS.flatMap((field, i) => (r[i] === p[i] ? [] : [{ field, redis: r[i]!, postgres: p[i]! }]));
        if (fields.length) note({ token: p[0]!, kind: 'differs', fields });
      }
    }
    for (const token of inRedis.keys()) note({ token, kind: 'only_redis' });
  }
  return report;
}
