import { describe, expect, it } from 'vitest';
import pg from 'pg';
import { ensureDatabase, openPostgres, startSnapshotWriter } from '../src/snapshot/index.js';
import { loadConfig } from '../src/config.js';
import { MIGRATIONS, SCHEMA_VERSION } from '../src/snapshot/schema.js';
import { snapshotMetrics } from '../src/snapshot/metrics.js';
import { PG_BASE_URL, testDatabase, unusedDatabase } from './helpers/pg.js';
import { runCli } from './helpers/cli.js';
import { engineFixture, SHARED_REDIS_URL } from './helpers/redis.js';

describe('snapshot schema: database creation and migrations (real Postgres)', () => {
  it('processes starting at once on a missing database all get it created and migrated', async () => {
    const db = unusedDatabase();
    try {
      // CREATE DATABASE racing another one fails on the catalog's unique index (23505), not with 42P04
      const created = await Promise.allSettled(Array.from({ length: 4 }, () => ensureDatabase(db.url)));
      expect(created.filter((r) => r.status === 'rejected')).toEqual([]);
      const pools = await Promise.all(Array.from({ length: 4 }, () => openPostgres(db.url)));
      const versions = (await pools[0]!.query<{ version: number }>('SELECT version FROM schema_migrations ORDER BY version')).rows;
      expect(versions).toEqual(MIGRATIONS.map((m) => ({ version: m.version })));
      await Promise.all(pools.map((p) => p.end()));
    } finally {
      await db.drop();
    }
  });

  it('a database migrated by an older release gets the later migrations at start, and only those', async () => {
    const db = unusedDatabase();
    try {
      await ensureDatabase(db.url);
      const c = new pg.Client({ connectionString: db.url });
      await c.connect();
      // what release 1 left: its tables and version 1 recorded
      await c.query('CREATE TABLE schema_migrations (version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())');
      await c.query(MIGRATIONS[0]!.sql);
      await c.query("INSERT INTO schema_migrations (version, name) VALUES (1, 'tokens and token_events')");
      await c.query(`INSERT INTO tokens VALUES ('00000000-0000-4000-8000-000000000000', 'unredeemed', 's', 'u', 'c', 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 1, 0)`);
      await c.end();
      const pool = await openPostgres(db.url);
      const versions = (await pool.query<{ version: number }>('SELECT version FROM schema_migrations ORDER BY version')).rows;
      expect(versions).toEqual(MIGRATIONS.map((m) => ({ version: m.version })));
      expect((await pool.query('SELECT count(*)::int AS n FROM tokens')).rows[0].n).toBe(1);
      expect((await pool.query('SELECT count(*)::int AS n FROM satellites')).rows[0].n).toBe(0);
      await pool.end();
    } finally {
      await db.drop();
    }
  });

  /** Runs `fn` with one more migration than the product has (a long index build, say), taken off again after. */
  async function withMigration<T>(sql: string, fn: (version: number) => Promise<T>): Promise<T> {
    const version = SCHEMA_VERSION + 1;
    MIGRATIONS.push({ version, name: 'a migration for the test', sql });
    try {
      return await fn(version);
    } finally {
      MIGRATIONS.pop();
    }
  }

  // the migrations ran on the writer's pool, under its statement timeout (24 s) and query timeout (30 s): a
  // migration longer than that failed at every start, and so did the processes waiting for its lock
  it('a migration longer than the statement timeouts, and the processes waiting for it, complete; the pools keep their timeouts', async () => {
    const db = unusedDatabase();
    try {
      await ensureDatabase(db.url);
      const admin = new pg.Client({ connectionString: db.url });
      await admin.connect();
      // the database's own limits, lower still, are the runtime's: not the migrations'
      await admin.query(`ALTER DATABASE "${db.name}" SET statement_timeout = '300ms'`);
      await admin.query(`ALTER DATABASE "${db.name}" SET lock_timeout = '300ms'`);
      await admin.end();
      // longer than one turn of the wait for its lock (5 s) and than that turn's query timeout (1 s + 5 s): the
      // process waiting for it takes turns until it is let go
      await withMigration('CREATE TABLE migrated_once (x int); SELECT pg_sleep(7)', async (version) => {
        const notes: string[][] = [[], []];
        // the writer's pools: a query timeout of 1 s, a statement timeout of 800 ms
        const pools = await Promise.all(notes.map((said) => openPostgres(db.url, 1, 1000, true, (msg) => said.push(msg))));
        try {
          const versions = (await pools[0]!.query<{ version: number }>('SELECT version FROM schema_migrations ORDER BY version')).rows.map((r) => r.version);
          expect(versions).toEqual(MIGRATIONS.map((m) => m.version));
          expect(versions).toContain(version);
          // one applied every migration, the other waited for it and had nothing left to do
          const [applied, waited] = notes[0]!.some((n) => n.startsWith('applying')) ? [notes[0]!, notes[1]!] : [notes[1]!, notes[0]!];
          expect(applied).toEqual(MIGRATIONS.map((m) => `applying schema migration ${m.version} (${m.name})`));
          expect(waited).toEqual([expect.stringMatching(/^waiting for another process migrating the snapshot's schema \(Postgres backend pid \d+/)]);
          for (const pool of pools) expect((await pool.query('SHOW statement_timeout')).rows[0].statement_timeout).toBe('300ms');
        } finally {
          await Promise.all(pools.map((p) => p.end()));
        }
      });
    } finally {
      await db.drop();
    }
  }, 30_000);

  // with no lock timeout a migration waiting for a table a long query reads queued every other statement on it
  // behind itself, for as long as that query ran
  it('a migration that cannot lock its table within the lock timeout fails naming itself, and applies on the next open', async () => {
    const db = await testDatabase();
    try {
      await (await openPostgres(db.url)).end();
      const reader = new pg.Client({ connectionString: db.url });
      await reader.connect();
      try {
        // a long read of the tokens (verify, a report) holds this lock until it ends
        await reader.query('BEGIN');
        await reader.query('LOCK TABLE tokens IN ACCESS SHARE MODE');
        await withMigration('ALTER TABLE tokens ADD COLUMN added_by_the_test int', async (version) => {
          const failed = await openPostgres(db.url, 1, 1000).then(() => undefined, (err: Error & { code?: string }) => err);
          expect(failed).toMatchObject({ code: '55P03', message: expect.stringMatching(new RegExp(`^schema migration ${version} \\(a migration for the test\\): .*lock timeout`)) });
          await reader.query('COMMIT');
          const pool = await openPostgres(db.url, 1, 1000);
          expect((await pool.query('SELECT max(version)::int AS v FROM schema_migrations')).rows[0].v).toBe(version);
          await pool.end();
        });
      } finally {
        await reader.end();
      }
    } finally {
      await db.drop();
    }
  }, 30_000);

  // a migration refused at each attempt (its table's lock not had within the lock timeout): the gauge went 1 as
  // each attempt's migration started, so ReferralManagerPostgresDown (held for minutes) never fired
  it('a writer whose migration is refused at each attempt keeps rm_snapshot_postgres_up at 0', async () => {
    const fx = await engineFixture({ label: 'migrefused' });
    const db = await testDatabase();
    const reader = new pg.Client({ connectionString: db.url });
    try {
      await (await openPostgres(db.url)).end();
      await reader.connect();
      await reader.query('BEGIN');
      await reader.query('LOCK TABLE tokens IN ACCESS SHARE MODE');
      await withMigration('ALTER TABLE tokens ADD COLUMN added_by_the_test int', async (version) => {
        const lines: string[] = [];
        const writer = await startSnapshotWriter(loadConfig({ keyPrefix: fx.prefix, databaseUrl: db.url }), { log: (level, msg) => lines.push(msg) });
        try {
          const attempts = () => lines.filter((l) => l === `applying schema migration ${version} (a migration for the test)`).length;
          for (const end = Date.now() + 30_000; attempts() < 2 && Date.now() < end; ) await new Promise((r) => setTimeout(r, 100));
          expect([attempts(), writer.status().state]).toEqual([2, 'migrating']);
          expect((await snapshotMetrics().postgresUp.get()).values[0]?.value).toBe(0);
        } finally {
          await writer.stop();
        }
      });
    } finally {
      await reader.end();
      await db.drop();
      await fx.close();
    }
  }, 60_000);

  // a verify (or restore) started while another process migrated waited without a word for as long as that ran
  it('a verify started while another process holds the migrations\' lock says whose it waits for, and runs once it is let go', async () => {
    const fx = await engineFixture({ label: 'migwait' });
    const db = await testDatabase();
    const locker = new pg.Client({ connectionString: db.url });
    try {
      await (await openPostgres(db.url)).end();
      await locker.connect();
      const pid = (await locker.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
      await locker.query('SELECT pg_advisory_lock(74820501)'); // the migrations' lock (src/snapshot/schema.ts)
      let stderr = '';
      const verifying = runCli(['verify'], { KEY_PREFIX: fx.prefix, DATABASE_URL: db.url, REDIS_URL: SHARED_REDIS_URL }, { whenStarted: (p) => p.stderr!.on('data', (d: Buffer) => (stderr += d.toString())) });
      for (const end = Date.now() + 20_000; !stderr.includes('waiting for another process') && Date.now() < end; ) await new Promise((r) => setTimeout(r, 100));
      expect(stderr).toMatch(new RegExp(`^note: waiting for another process migrating the snapshot's schema \\(Postgres backend pid ${pid} from 127\\.0\\.0\\.1, connected \\d+ s ago\\)$`, 'm'));
      await locker.query('SELECT pg_advisory_unlock(74820501)');
      const r = await verifying;
      expect([r.code, r.stdout]).toEqual([0, expect.stringContaining('0 tokens in Redis, 0 differences')]);
    } finally {
      await locker.end();
      await db.drop();
      await fx.close();
    }
  });

  it('a pool with a query timeout has Postgres time statements out under it, unless the database asks for less', async () => {
    const db = unusedDatabase();
    try {
      const timeoutOf = async (queryTimeoutMs?: number) => {
        const pool = await openPostgres(db.url, 1, queryTimeoutMs);
        try {
          return (await pool.query<{ statement_timeout: string }>('SHOW statement_timeout')).rows[0]!.statement_timeout;
        } finally {
          await pool.end();
        }
      };
      expect(await timeoutOf(10_000)).toBe('8s');
      expect(await timeoutOf()).toBe('0');
      const admin = await openPostgres(db.url, 1);
      await admin.query(`ALTER DATABASE "${db.name}" SET statement_timeout = '300ms'`);
      await admin.end();
      expect(await timeoutOf(10_000)).toBe('300ms');
    } finally {
      await db.drop();
    }
  });

  it('restore --force and verify refuse a DATABASE_URL naming no database instead of creating an empty one', async () => {
    const fx = await engineFixture({ label: 'nodb' });
    const db = unusedDatabase();
    try {
      const made = await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'alice' }], perUser: 3, campaignId: 'c' });
      const env = { KEY_PREFIX: fx.prefix, DATABASE_URL: db.url, REDIS_URL: SHARED_REDIS_URL };
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

  // a URL naming a database that exists but never held a snapshot (another service's, the maintenance
  // database `postgres`) "restored" 0 tokens after --force had removed them all, then verify found 0 differences
  it('restore --force and verify refuse a database that holds no snapshot, and leave it as it was', async () => {
    const fx = await engineFixture({ label: 'nosnap' });
    const db = await testDatabase();
    try {
      const made = await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'alice' }], perUser: 3, campaignId: 'c' });
      const env = { KEY_PREFIX: fx.prefix, DATABASE_URL: db.url, REDIS_URL: SHARED_REDIS_URL };
      const restore = await runCli(['restore', '--from-postgres', '--force'], env);
      expect([restore.code, restore.stderr]).toEqual([1, expect.stringMatching(/database .* holds no snapshot/)]);
      expect(await fx.engine.lookup(made.tokens[0]!.token)).toMatchObject({ state: 'unredeemed', ownerUserId: 'alice' });
      const verify = await runCli(['verify'], env);
      expect([verify.code, verify.stderr]).toEqual([1, expect.stringMatching(/database .* holds no snapshot/)]);
      const c = new pg.Client({ connectionString: db.url });
      await c.connect();
      const tables = (await c.query("SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = 'public'")).rows[0].n;
      await c.end();
      expect(tables).toBe(0);
    } finally {
      await db.drop();
      await fx.close();
    }
  });
  // a database a newer release migrated (a rollback): restore and verify read it as if they knew it all, so a
  // restore left out what the newer migrations added without a word
  it('restore and verify refuse a snapshot a newer release migrated; a writer opens it with a warning', async () => {
    const fx = await engineFixture({ label: 'newersnap' });
    const db = await testDatabase();
    try {
      const pool = await openPostgres(db.url);
      const newer = Math.max(...MIGRATIONS.map((m) => m.version)) + 1;
      await pool.query("INSERT INTO schema_migrations (version, name) VALUES ($1, 'from a newer release')", [newer]);
      await pool.end();
      const env = { KEY_PREFIX: fx.prefix, DATABASE_URL: db.url, REDIS_URL: SHARED_REDIS_URL };
      for (const args of [['restore', '--from-postgres', '--force'], ['verify']]) {
        const r = await runCli(args, env);
        expect([r.code, r.stderr]).toEqual([1, expect.stringContaining(`schema version ${newer}, newer than this referral-manager knows`)]);
      }
      const lines: string[] = [];
      const writer = await startSnapshotWriter(loadConfig({ keyPrefix: fx.prefix, databaseUrl: db.url }), { log: (level, msg) => lines.push(`${level}: ${msg}`) });
      try {
        for (const end = Date.now() + 20_000; !lines.some((l) => l.includes('schema version')) && Date.now() < end; ) await new Promise((r) => setTimeout(r, 100));
      } finally {
        await writer.stop();
      }
      expect(lines.filter((l) => l.includes(`schema version ${newer}, newer than this writer knows`))).toHaveLength(1);
    } finally {
      await db.drop();
      await fx.close();
    }
  }, 60_000);
});
