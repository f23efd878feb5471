import type pg from 'pg';
import type { RedisClient } from '../store/redis.js';
import { Keys, SHARDS } from '../store/keys.js';
import { EXPORT_FIELDS } from '../store/export.js';
import { pgShardRows } from './pg-rows.js';
import { readShardRows, type Row } from './rows.js';

export interface Difference {
  /** the token; for `stats`, the shard's counters key */
  token: string;
  /** only_redis | only_postgres | field names that differ | counters that differ from the shard's rows */
  kind: 'only_redis' | 'only_postgres' | 'differs' | 'stats';
  fields?: { field: string; redis: string; postgres: string }[];
}

export interface VerifyReport {
  tokens: number;
  differences: number;
  /** the first `maxListed` differences */
  listed: Difference[];
}

/** Adds one Postgres row to the counters the scripts keep in `<p>:{s}:stats` (lua/includes/codec.lua). */
function count(counters: Map<string, number>, p: Row): void {
  const add = (field: string) => counters.set(field, (counters.get(field) ?? 0) + 1);
  add(`${p[2]}\tgenerated`);
  add(`${p[2]}\t${p[1]}`);
  if (p[1] === 'redeemed') add(`x\t${p[2]}\t${p[10]}`);
}

/**
 * Compares every token in Redis with Postgres, one virtual shard at a time (memory bounded by one
 * shard), and reports missing rows on either side and differing fields; then the shard's stats
 * counters with the counts of its Postgres rows (a counter at 0 and an absent one are the same), as
 * `stats` and every other reader of the counters would be wrong with every token right.
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
    const counters = new Map<string, number>();
    for await (const page of pgShardRows(pool, shard)) {
      for (const p of page) {
        count(counters, p);
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
    const stats = await redis.hgetall(keys.stats(shard));
    const names = [...new Set([...Object.keys(stats), ...counters.keys()])].sort();
    const fields = names.flatMap((field) => {
      const r = Number(stats[field] ?? 0);
      const p = counters.get(field) ?? 0;
      return r === p ? [] : [{ field, redis: String(r), postgres: String(p) }];
    });
    if (fields.length) note({ token: keys.stats(shard), kind: 'stats', fields });
  }
  return report;
}
