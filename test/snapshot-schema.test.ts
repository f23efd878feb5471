import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import pg from 'pg';
import { ensureDatabase, openPostgres } from '../src/snapshot/index.js';
import { PG_BASE_URL } from './helpers/pg.js';

/** A database name no run uses, its URL, and a drop that also forces out leftover connections. */
function freshName(): { url: string; drop(): Promise<void> } {
  const name = `test_rm_${randomBytes(4).toString('hex')}`;
  const u = new URL(PG_BASE_URL);
  u.pathname = `/${name}`;
  return {
    url: u.toString(),
    async drop() {
      const c = new pg.Client({ connectionString: PG_BASE_URL });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    },
  };
}

describe('snapshot schema: database creation and migrations (real Postgres)', () => {
  it('processes starting at once on a missing database all get it created and migrated', async () => {
    const db = freshName();
    try {
      // CREATE DATABASE racing another one fails on the catalog's unique index (23505), not with 42P04
      const created = await Promise.allSettled(Array.from({ length: 4 }, () => ensureDatabase(db.url)));
      expect(created.filter((r) => r.status === 'rejected')).toEqual([]);
      const pools = await Promise.all(Array.from({ length: 4 }, () => openPostgres(db.url)));
      const versions = (await pools[0]!.query<{ version: number }>('SELECT version FROM schema_migrations')).rows;
      expect(versions).toEqual([{ version: 1 }]);
      await Promise.all(pools.map((p) => p.end()));
    } finally {
      await db.drop();
    }
  });
});
