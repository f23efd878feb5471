import { spawn, type ChildProcess } from 'node:child_process';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { privateRedis } from './helpers/http.js';
import { testDatabase } from './helpers/pg.js';
import { sleep, until as eventually } from './helpers/snapshot.js';
import { freePort } from '../bench/redis-server.js';
import { MAIN } from './helpers/cli.js';
import { Keys } from '../src/store/keys.js';
import { readSnapshotStatus } from '../src/snapshot/status.js';

const running = new Set<ChildProcess>();
afterEach(async () => {
  await Promise.all([...running].map((c) => new Promise((r) => (c.once('exit', r), c.kill('SIGKILL')))));
});

type Answer = { status: number; body: Record<string, unknown> };

/** GET `p` on the writer's ops port until `ok` holds (30 s at most), the last answer either way. */
async function until(port: number, p: string, ok: (r: Answer) => boolean) {
  const end = Date.now() + 30_000;
  let last: Answer = { status: 0, body: {} };
  for (;;) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}${p}`);
      last = { status: r.status, body: (await r.json()) as Record<string, unknown> };
      if (ok(last)) return last;
    } catch {
      // not listening yet
    }
    if (Date.now() > end) return last;
    await sleep(100);
  }
}

const leading = (r: Answer) => r.status === 200 && r.body.leader === true && r.body.lagEvents === 0;

/** A standalone writer on `port`, once it leads and has copied everything; its process and stderr so far. */
async function startWriter(redisUrl: string, databaseUrl: string, prefix: string, port: number): Promise<{ proc: ChildProcess; stderr(): string }> {
  const w = spawnWriter(redisUrl, databaseUrl, prefix, port);
  expect(await until(port, '/readyz', leading)).toMatchObject({ status: 200, body: { ready: true, redis: 'up', lagEvents: 0, lagSeconds: 0 } });
  return w;
}

/** A standalone writer on `port`, as it starts. */
function spawnWriter(redisUrl: string, databaseUrl: string, prefix: string, port: number): { proc: ChildProcess; stderr(): string } {
  const c = spawn(process.execPath, [MAIN, 'snapshot'], {
    env: { ...process.env, REDIS_URL: redisUrl, KEY_PREFIX: prefix, DATABASE_URL: databaseUrl, SNAPSHOT_METRICS_PORT: String(port) },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  running.add(c);
  c.once('exit', () => running.delete(c));
  let stderr = '';
  c.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return { proc: c, stderr: () => stderr };
}

/** The value of an unlabelled gauge on the writer's /metrics. */
const gauge = async (port: number, name: string) => new RegExp(`^${name} (\\S+)$`, 'm').exec(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text())?.[1];

describe('referral-manager snapshot /readyz', () => {
  // The writer's Redis connection stays "ready" while the server hangs (SIGSTOP, a long script): its /readyz
  // said ready, redis "up" and the last lag for minutes while its metrics said NaN and it had lost the lease.
  it('is 503 redis "down" with the lag unknown while its Redis hangs, 200 again once it answers', async () => {
    const redis = await privateRedis();
    await redis.start();
    const db = await testDatabase();
    const port = await freePort();
    try {
      await startWriter(redis.url, db.url, 'readyz', port);
      redis.signal('SIGSTOP');
      // the lag unknown (as the gauges' NaN), not the 0 read before the hang: that read as "all copied"
      const hung = await until(port, '/readyz', (r) => r.status === 503 && !('lagEvents' in r.body));
      expect(hung).toMatchObject({ status: 503, body: { ready: false, redis: 'down' } });
      expect(hung.body).not.toHaveProperty('lagEvents');
      expect(hung.body).not.toHaveProperty('lagSeconds');
      redis.signal('SIGCONT');
      expect(await until(port, '/readyz', leading)).toMatchObject({ status: 200, body: { lagEvents: 0 } });
    } finally {
      redis.signal('SIGCONT');
      await redis.dispose();
      await db.drop();
    }
  }, 60_000);

  // its commands wait in ioredis' queue through a short outage and succeed after it: the writer said nothing
  // and counted no Redis error, and only serve's workers logged the outage (an on-call drill)
  it('says once that it lost Redis and once that it has it back over a kill -9 and restart (AOF), and counts the outage', async () => {
    const redis = await privateRedis();
    await redis.start();
    const db = await testDatabase();
    const port = await freePort();
    try {
      const writer = await startWriter(redis.url, db.url, 'outage', port);
      const redisErrors = async () => Number(/^rm_snapshot_errors_total\{where="redis"\} (\d+)$/m.exec(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text())?.[1]);
      expect(await redisErrors()).toBe(0);

      await redis.stop('SIGKILL');
      expect(await until(port, '/readyz', (r) => r.status === 503)).toMatchObject({ body: { ready: false, redis: 'down' } });
      // down long enough for several reconnect attempts to fail (50 ms, 100 ms, ...), short of the 10 s command timeout
      await sleep(1500);
      await redis.start();
      expect(await until(port, '/readyz', leading)).toMatchObject({ status: 200, body: { redis: 'up' } });
      for (const end = Date.now() + 10_000; !writer.stderr().includes('Redis reachable again') && Date.now() < end; ) await sleep(50);

      const said = writer.stderr().split('\n');
      expect(said.filter((l) => l.includes('Redis unreachable')), writer.stderr()).toEqual([expect.stringMatching(/^\[snapshot\] warn: Redis unreachable \(.+\); retrying, nothing is copied to Postgres meanwhile$/)]);
      expect(said.filter((l) => l.includes('Redis reachable again')), writer.stderr()).toEqual(['[snapshot] info: Redis reachable again']);
      // one outage, one count: no command failed, the commands waited in ioredis' queue
      expect(await redisErrors()).toBe(1);
    } finally {
      await redis.dispose();
      await db.drop();
    }
  }, 60_000);

  // Redis refusing the connection: serve's /readyz said why (connect ECONNREFUSED, a certificate refused), the
  // writer's only redis "down"
  it('says why it cannot reach Redis, as serve\'s /readyz does', async () => {
    const db = await testDatabase();
    const port = await freePort();
    const nowhere = await freePort();
    try {
      spawnWriter(`redis://127.0.0.1:${nowhere}`, db.url, 'nowhere', port);
      const down = await until(port, '/readyz', (r) => r.status === 503 && 'error' in r.body);
      expect(down).toMatchObject({ status: 503, body: { ready: false, redis: 'down', error: `no connection to Redis (reconnecting): connect ECONNREFUSED 127.0.0.1:${nowhere}` } });
    } finally {
      await db.drop();
    }
  }, 60_000);

  // waiting on another process' migration (or applying a long one) read as Postgres down: the status, /readyz,
  // and rm_snapshot_postgres_up (0 once an attempt had failed), which the ReferralManagerPostgresDown alert reads
  it('says it migrates while it waits for another process\' migration, Postgres up; writes once it is done', async () => {
    const redis = await privateRedis();
    await redis.start();
    const db = await testDatabase();
    const port = await freePort();
    const locker = new pg.Client({ connectionString: db.url });
    await locker.connect();
    const client = new Redis(redis.url);
    try {
      const pid = (await locker.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
      await locker.query('SELECT pg_advisory_lock(74820501)'); // the migrations' lock (src/snapshot/schema.ts)
      const writer = spawnWriter(redis.url, db.url, 'migrating', port);
      const waiting = await until(port, '/readyz', (r) => r.body.leader === true && r.body.postgres !== 'down');
      expect(waiting, writer.stderr()).toMatchObject({
        status: 503,
        body: { ready: false, redis: 'up', leader: true, postgres: 'migrating', migration: expect.stringMatching(new RegExp(`^waiting for Postgres backend pid ${pid} from 127\\.0\\.0\\.1 \\(another process migrating the snapshot's schema\\)$`)) },
      });
      expect(await gauge(port, 'rm_snapshot_postgres_up')).toBe('1');
      // what serve's /readyz and `stats` read: published every second
      const status = await eventually(() => readSnapshotStatus(client, 'migrating'), (st) => st.state !== 'off', 'the status published');
      expect(status).toMatchObject({ state: 'migrating', migration: waiting.body.migration });
      await locker.query('SELECT pg_advisory_unlock(74820501)');
      const up = await until(port, '/readyz', leading);
      expect(up).toMatchObject({ status: 200, body: { postgres: 'up' } });
      expect(up.body).not.toHaveProperty('migration');
      expect(await eventually(() => readSnapshotStatus(client, 'migrating'), (st) => st.state === 'up', 'the status up')).not.toHaveProperty('migration');
    } finally {
      client.disconnect();
      await locker.end();
      await redis.dispose();
      await db.drop();
    }
  }, 60_000);

  // the terminal of an operator who ran it over ssh closes: by Node's default it died at once (exit 129),
  // its lease left held until it lapsed (10 s, no writer meanwhile)
  it('SIGHUP stops it as SIGTERM does: exit 0, its lease released', async () => {
    const redis = await privateRedis();
    await redis.start();
    const db = await testDatabase();
    const port = await freePort();
    const client = new Redis(redis.url);
    try {
      const writer = await startWriter(redis.url, db.url, 'hup', port);
      const lease = new Keys('hup').snapshotLease();
      expect(await client.exists(lease)).toBe(1);
      const exit = new Promise((resolve) => writer.proc.once('exit', (code, signal) => resolve([code, signal])));
      writer.proc.kill('SIGHUP');
      expect(await exit, writer.stderr()).toEqual([0, null]);
      expect(writer.stderr()).toMatch(/SIGHUP: stopping[^]*stopped in \d+ ms/);
      expect(await client.exists(lease)).toBe(0);
    } finally {
      client.disconnect();
      await redis.dispose();
      await db.drop();
    }
  }, 60_000);
});
