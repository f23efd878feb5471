import { randomBytes } from 'node:crypto';
import pg from 'pg';

export const PG_BASE_URL = process.env.TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

/** A database name no run uses, not created yet: its URL, and a `drop()` that forces out leftover connections. */
export function unusedDatabase(): { url: string; name: string; drop(): Promise<void> } {
  const name = `test_rm_${randomBytes(4).toString('hex')}`;
  const u = new URL(PG_BASE_URL);
  u.pathname = `/${name}`;
  return {
    name,
    url: u.toString(),
    async drop() {
      const c = new pg.Client({ connectionString: PG_BASE_URL });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    },
  };
}

/** A fresh database for one test file; `drop()` removes it. */
export async function testDatabase(): Promise<{ url: string; name: string; drop(): Promise<void> }> {
  const db = unusedDatabase();
  const admin = new pg.Client({ connectionString: PG_BASE_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${db.name}`);
  await admin.end();
  return db;
}
