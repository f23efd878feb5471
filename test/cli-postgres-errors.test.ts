import type { ChildProcess } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { freePort } from '../bench/redis-server.js';
import { openPostgres, postgresAt } from '../src/snapshot/index.js';
import { runCli } from './helpers/cli.js';
import { PG_BASE_URL, pgProxy, testDatabase, unusedDatabase } from './helpers/pg.js';
import { dropSharedPrefixes, SHARED_REDIS_URL, testPrefix } from './helpers/redis.js';

// An engineer reading `error: connect ECONNREFUSED 127.0.0.1:5433` could not tell whether Redis or Postgres
// failed, nor which Postgres: each command that reads the snapshot now names it, without the password.
const PASSWORD = 'pg-secret-7f3a';
const prefix = testPrefix('pgerr');
afterAll(() => dropSharedPrefixes(prefix));

const COMMANDS = [['verify'], ['restore', '--from-postgres'], ['campaigns', 'results', 'spring'], ['tokens', 'history', '0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d']];

/** `postgres://postgres:<PASSWORD>@host:port/<db><query>`, the password given twice (user info and query string) */
const withPassword = (url: string, query = '') => {
  const u = new URL(url);
  u.password = PASSWORD;
  return `${u.toString()}${query ? `${query}&` : '?'}password=${PASSWORD}`;
};

async function expectNamed(databaseUrl: string, where: string, reason: RegExp): Promise<void> {
  for (const args of COMMANDS) {
    const r = await runCli(args, { KEY_PREFIX: prefix, REDIS_URL: SHARED_REDIS_URL, DATABASE_URL: databaseUrl });
    expect([r.code, r.stdout], `${args.join(' ')}: ${r.stderr}`).toEqual([1, '']);
    expect(r.stderr, args.join(' ')).toMatch(new RegExp(`^error: cannot open the Postgres snapshot \\(${where.replace(/[.[\]]/g, '\\$&')}\\): ${reason.source}\n$`));
    expect(r.stderr).not.toContain(PASSWORD);
  }
}

describe('CLI commands that fail on Postgres name it and where (real processes)', () => {
  it('a port nothing listens on', async () => {
    const port = await freePort();
    await expectNamed(withPassword(`postgres://postgres@127.0.0.1:${port}/rm`), `127.0.0.1:${port}/rm`, /connect ECONNREFUSED 127\.0\.0\.1:\d+/);
  });

  it('a database that does not exist', async () => {
    const db = unusedDatabase();
    const u = new URL(db.url);
    await expectNamed(withPassword(db.url), `${u.hostname}:${u.port || 5432}/${db.name}`, new RegExp(`database "${db.name}" does not exist`));
  });

  it('an sslrootcert file that is not there', async () => {
    const db = unusedDatabase();
    const u = new URL(db.url);
    await expectNamed(withPassword(db.url, '?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem'), `${u.hostname}:${u.port || 5432}/${db.name}`, /ENOENT: no such file or directory, open '\/nonexistent\/ca\.pem'/);
  });

  it('the snapshot writer (`snapshot`) says which Postgres it cannot reach', async () => {
    const port = await freePort();
    let stderr = '';
    let writer: ChildProcess | undefined;
    const running = runCli(['snapshot', '--metrics-port', '0'], { KEY_PREFIX: prefix, REDIS_URL: SHARED_REDIS_URL, DATABASE_URL: withPassword(`postgres://postgres@127.0.0.1:${port}/rm`) }, {
      whenStarted: (p) => {
        writer = p;
        p.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      },
    });
    for (const end = Date.now() + 20_000; !stderr.includes('Postgres unreachable') && Date.now() < end; ) await new Promise((r) => setTimeout(r, 50));
    writer!.kill('SIGTERM');
    const r = await running;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr.split('\n').filter((l) => l.includes('Postgres unreachable'))).toEqual([
      expect.stringMatching(new RegExp(`^\\[snapshot\\] warn: Postgres unreachable at 127\\.0\\.0\\.1:${port}/rm \\(connect ECONNREFUSED 127\\.0\\.0\\.1:${port}\\); retrying`)),
    ]);
    expect(r.stderr).not.toContain(PASSWORD);
  }, 30_000);

  /**
   * `verify` through a proxy, run until its read of the tokens waits behind a table lock (its connection open);
   * `then` does to the proxy what the test is about, and the reply of verify is checked against `reason`.
   */
  async function verifyCutWhileReading(then: (proxy: Awaited<ReturnType<typeof pgProxy>>, admin: pg.Client) => Promise<void>, reason: string): Promise<void> {
    const db = await testDatabase();
    const proxy = await pgProxy(db.url);
    const admin = new pg.Client({ connectionString: db.url });
    // outside the lock's transaction, which would read pg_stat_activity once for its whole length
    const watcher = new pg.Client({ connectionString: db.url });
    try {
      await (await openPostgres(db.url)).end();
      await admin.connect();
      await watcher.connect();
      await admin.query('BEGIN');
      await admin.query('LOCK TABLE tokens IN ACCESS EXCLUSIVE MODE');
      const verifying = runCli(['verify'], { KEY_PREFIX: prefix, REDIS_URL: SHARED_REDIS_URL, DATABASE_URL: withPassword(proxy.url) });
      const waiting = async () => (await watcher.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")).rows[0].n > 0;
      for (const end = Date.now() + 20_000; !(await waiting()) && Date.now() < end; ) await new Promise((r) => setTimeout(r, 50));
      expect(await waiting()).toBe(true);
      await then(proxy, admin);
      const r = await verifying;
      const u = new URL(proxy.url);
      expect([r.code, r.stderr]).toEqual([1, expect.stringMatching(new RegExp(`^error: reading the Postgres snapshot \\(127\\.0\\.0\\.1:${u.port}/${db.name}\\) failed: ${reason}\n$`))]);
      expect(r.stderr).not.toContain(PASSWORD);
    } finally {
      await admin.end().catch(() => {});
      await watcher.end().catch(() => {});
      await proxy.close();
      await db.drop();
    }
  }

  // a query cut short once the snapshot is open: "Connection terminated unexpectedly" alone could be Redis's
  it('Postgres lost while verify reads it', () => verifyCutWhileReading((proxy) => proxy.close(), '.+'), 60_000);

  // a Postgres that stops answering without closing the connection (a partition, a stopped postmaster, a silent
  // proxy) held verify for ever: TCP keepalive waits the system's 2 h. The real query timeout, 60 s, waited out
  it('Postgres silent while verify reads it: exit 1 naming the timeout, not a wait without end', () =>
    verifyCutWhileReading(async (proxy, admin) => {
      // the proxy goes silent, then the read's answer is dropped
      proxy.blackhole(true);
      await admin.query('COMMIT');
    }, 'no answer within 60 s \\(query timeout\\).*'), 150_000);

  // opening it, verify waits for another process' migration as long as that runs (with a note), but not for a Postgres gone silent meanwhile
  it('Postgres silent while verify waits for another process migrating: exit 1 naming the timeout', async () => {
    const db = await testDatabase();
    const proxy = await pgProxy(db.url);
    const locker = new pg.Client({ connectionString: db.url });
    try {
      await (await openPostgres(db.url)).end();
      await locker.connect();
      await locker.query('SELECT pg_advisory_lock(74820501)'); // the migrations' lock (src/snapshot/schema.ts)
      let stderr = '';
      const verifying = runCli(['verify'], { KEY_PREFIX: prefix, REDIS_URL: SHARED_REDIS_URL, DATABASE_URL: withPassword(proxy.url) }, { whenStarted: (p) => p.stderr!.on('data', (d: Buffer) => (stderr += d.toString())) });
      for (const end = Date.now() + 20_000; !stderr.includes('waiting for another process') && Date.now() < end; ) await new Promise((r) => setTimeout(r, 50));
      expect(stderr).toContain('note: waiting for another process migrating');
      proxy.blackhole(true);
      await locker.query('SELECT pg_advisory_unlock(74820501)');
      const r = await verifying;
      const u = new URL(proxy.url);
      expect([r.code, r.stderr.split('\n').slice(1)]).toEqual([1, [expect.stringMatching(new RegExp(`^error: cannot open the Postgres snapshot \\(127\\.0\\.0\\.1:${u.port}/${db.name}\\): no answer within 60 s \\(query timeout\\)`)), '']]);
    } finally {
      await locker.end().catch(() => {});
      await proxy.close();
      await db.drop();
    }
  }, 150_000);
});

describe('postgresAt', () => {
  it('is host:port/database alone: no user, password or query string', () => {
    expect(postgresAt(`postgres://rm:${PASSWORD}@db.example:6432/referral%20manager?sslmode=verify-full&password=${PASSWORD}&sslpassword=${PASSWORD}`)).toBe('db.example:6432/referral manager');
    expect(postgresAt('postgresql://rm@[::1]/rm')).toBe('[::1]:5432/rm');
    // node-postgres connects to a host given in the query string (a Unix socket's directory) instead
    expect(postgresAt('postgres:///rm?host=/var/run/postgresql')).toBe('/var/run/postgresql:5432/rm');
    expect(postgresAt('postgres://rm@%2Fvar%2Frun%2Fpostgresql/rm')).toBe('/var/run/postgresql:5432/rm');
    // and to a port given there, the usual way to name a socket's port (.s.PGSQL.5433)
    expect(postgresAt('postgres:///rm?host=/var/run/postgresql&port=5433')).toBe('/var/run/postgresql:5433/rm');
    expect(postgresAt('postgres://rm@db.example:5432/rm?port=6432')).toBe('db.example:6432/rm');
    // URL takes a stray %, which does not decode: shown as written rather than failing in place of the error
    expect(postgresAt('postgres://rm@db%/rm%zz')).toBe('db%:5432/rm%zz');
  });
});

// node-postgres takes a % that does not decode as itself (database "rm%zz"): decoding the name for a message or a
// CREATE DATABASE threw "URI malformed" in place of what was to be said or done
describe('a database whose name holds a stray %', () => {
  it('is said to hold no snapshot, and made by the writer\'s open', async () => {
    const name = `${unusedDatabase().name}%zz`;
    const u = new URL(PG_BASE_URL);
    u.pathname = `/${name}`;
    const admin = new pg.Client({ connectionString: PG_BASE_URL });
    await admin.connect();
    try {
      await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`);
      await expect(openPostgres(u.toString(), 1, undefined, false)).rejects.toThrow(`database "${name}" holds no snapshot`);
      await admin.query(`DROP DATABASE ${pg.escapeIdentifier(name)} WITH (FORCE)`);
      await (await openPostgres(u.toString(), 1)).end();
      expect((await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])).rowCount).toBe(1);
    } finally {
      await admin.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(name)} WITH (FORCE)`);
      await admin.end();
    }
  });
});
