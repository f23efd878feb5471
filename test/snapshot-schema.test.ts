import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import pg from 'pg';
import { ensureDatabase, openPostgres } from '../src/snapshot/index.js';
import { PG_BASE_URL } from './helpers/pg.js';
import { runCli } from './helpers/cli.js';
import { engineFixture } from './helpers/redis.js';

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

  it('restore --force and verify refuse a DATABASE_URL naming no database instead of creating an empty one', async () => {
    const fx = await engineFixture({ label: 'nodb' });
    const db = freshName();
    try {
      const made = await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'alice' }], perUser: 3, campaignId: 'c' });
      const env = { KEY_PREFIX: fx.prefix, DATABASE_URL: db.url, REDIS_URL: 'redis://127.0.0.1:6379' };
      // a typo in DATABASE_URL used to "restore" 0 tokens from a database made on the spot, after --force had removed them all
      const restore = await runCli(['restore', '--from-postgres', '--force'], env);
      expect(restore.code).toBe(1);
      expect(restore.stderr).toMatch(/database .* does not exist/);
      expect(await fx.engine.lookup(made.tokens[0]!.token)).toMatchObject({ state: 'unredeemed', ownerUserId: 'alice' });
      const verify = await runCli(['verify'], env);
      expect(verify.code).toBe(1);
      expect(verify.stderr).toMatch(/database .* does not exist/);
      const c = new pg.Client({ connectionString: PG_BASE_URL });
      await c.connect();
      const exists = (await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [new URL(db.url).pathname.slice(1)])).rowCount;
      await c.end();
      expect(exists).toBe(0);
    } finally {
      await db.drop();
      await fx.close();
    }
  });
});
