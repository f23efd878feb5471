import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { createRedis } from '../../src/store/redis.js';
import { dropKeys, scanKeys } from '../../src/store/key-walk.js';
import { PG_BASE_URL, SHARED_REDIS_URL } from './services.js';

// vitest globalSetup. Every key prefix (testPrefix) and database (unusedDatabase) of a run carries the run's id,
// so once every file is done whatever of this run is still in the shared Redis or Postgres is a test that did
// not clean up: it is listed, removed, and the run fails. Another run's keys (a developer's suite running
// beside CI) carry another id and are left alone.

declare module 'vitest' {
  export interface ProvidedContext {
    testRun: string;
  }
}

export default function setup(project: TestProject) {
  const run = randomBytes(2).toString('hex');
  project.provide('testRun', run);
  return async () => {
    const left = [...(await leftInRedis(run)), ...(await leftInPostgres(run))];
    if (left.length) throw new Error(`the tests left in the shared Redis and Postgres (removed now): ${left.join('; ')}`);
  };
}

async function leftInRedis(run: string): Promise<string[]> {
  const redis = createRedis({ redisUrl: SHARED_REDIS_URL, redisClusterNodes: [] });
  try {
    const pattern = `t${run}-*`;
    const byPrefix = new Map<string, number>();
    for await (const { keys } of scanKeys(redis, pattern)) {
      for (const k of keys) byPrefix.set(k.split(':')[0]!, (byPrefix.get(k.split(':')[0]!) ?? 0) + 1);
    }
    await dropKeys(redis, pattern);
    return [...byPrefix].map(([prefix, n]) => `${n} key${n === 1 ? '' : 's'} under ${prefix}`);
  } finally {
    redis.disconnect();
  }
}

async function leftInPostgres(run: string): Promise<string[]> {
  const c = new pg.Client({ connectionString: PG_BASE_URL });
  await c.connect();
  try {
    const { rows } = await c.query<{ datname: string }>('SELECT datname FROM pg_database WHERE datname LIKE $1', [`test_rm_${run}_%`]);
    for (const { datname } of rows) await c.query(`DROP DATABASE IF EXISTS ${datname} WITH (FORCE)`);
    return rows.map((r) => `database ${r.datname}`);
  } finally {
    await c.end();
  }
}
