import pg from 'pg';
import { Pool } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_KEY, call, privateRedis, type RestartableRedis } from './helpers/http.js';
import { pgProxy } from './helpers/pg.js';
import { HAS_PROMETHEUS, scrapedDeployment, type ScrapedDeployment } from './helpers/prometheus.js';
import { until } from './helpers/snapshot.js';

/**
 * Drills: a real fault under a serve and a standalone writer, and the alert of deploy/prometheus/alerts.yml
 * that names it going pending in a real Prometheus (the `for` durations are minutes: pending is what a test
 * can wait for), then inactive once the fault is mended where that takes seconds. The promtool stories of
 * test/prometheus.test.ts check the expressions on made-up series; these check them on what the processes export.
 * One deployment for all: the serve leaves the lease to the writer (SNAPSHOT=false), so the writer is the
 * lease holder the Postgres drill cuts off; both reach Postgres through a proxy and use a Redis of their own.
 */
describe.skipIf(!HAS_PROMETHEUS)('alert drills on a real Prometheus', () => {
  let redis: RestartableRedis;
  let proxy: Awaited<ReturnType<typeof pgProxy>>;
  /** the database, not through the proxy */
  let dbUrl: string;
  let d: ScrapedDeployment;

  beforeAll(async () => {
    redis = await privateRedis();
    await redis.start();
    d = await scrapedDeployment({ REDIS_URL: redis.url }, { serveWrites: false, reach: async (url) => ((dbUrl = url), (proxy = await pgProxy(url)).url) });
  }, 90_000);
  afterAll(async () => {
    await d?.stop();
    await proxy?.close();
    await redis?.dispose();
  });

  /** every alert's state now ("unevaluated" before its first evaluation: Prometheus says inactive then too) */
  const states = async () => {
    return Object.fromEntries((await d.prom.rules()).map((r) => [r.name, r.health === 'unknown' ? 'unevaluated' : r.state]));
  };
  const expectAlerts = (want: Record<string, string>, what: string) =>
    until(states, (s) => Object.entries(want).every(([alert, state]) => s[alert] === state), what, 60_000);
  /** the value of a PromQL expression of one series, undefined while it has none */
  const value = async (q: string) => (await d.prom.query(q))[0]?.value[1];

  it('Postgres unreachable for the lease holder: ReferralManagerPostgresDown pending, inactive once it is back', async () => {
    await until(() => value('min(rm_snapshot_postgres_up)'), (v) => v === '1', 'the writer scraped reaching Postgres', 60_000);
    await expectAlerts({ ReferralManagerPostgresDown: 'inactive' }, 'inactive while Postgres answers');
    await proxy.close();
    try {
      await expectAlerts({ ReferralManagerPostgresDown: 'pending' }, 'pending once Postgres is cut off');
    } finally {
      proxy.open();
    }
    await expectAlerts({ ReferralManagerPostgresDown: 'inactive' }, 'inactive once Postgres answers again');
  }, 150_000);

  // a writer whose Postgres comes back while another process migrates the schema waits on the migrations' lock:
  // read as down, its gauge stayed 0 from the outage and the alert paged for a Postgres that answered
  it('a writer restarted while Postgres is away, then waiting for another process\' migration: ReferralManagerPostgresDown pending, then inactive while it waits', async () => {
    const locker = new pg.Client({ connectionString: dbUrl });
    await locker.connect();
    try {
      await d.writer.stop();
      await proxy.close();
      try {
        await d.writer.start();
        await expectAlerts({ ReferralManagerPostgresDown: 'pending' }, 'pending while Postgres is cut off');
        await locker.query('SELECT pg_advisory_lock(74820501)'); // the migrations' lock (src/snapshot/schema.ts)
      } finally {
        proxy.open();
      }
      await until(() => value('min(rm_snapshot_postgres_up)'), (v) => v === '1', 'the writer scraped reaching Postgres while it waits', 60_000);
      await expectAlerts({ ReferralManagerPostgresDown: 'inactive' }, 'inactive while the writer waits for the migration');
      expect(await locker.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event = 'advisory' AND datname = current_database()`)).toMatchObject({ rows: [{ n: 1 }] });
    } finally {
      await locker.end();
    }
    await until(() => value('sum(rm_snapshot_leader)'), (v) => v === '1', 'the writer leading', 60_000);
  }, 150_000);

  it('the only writer stopped: ReferralManagerNoSnapshotWriter and ReferralManagerDown pending, inactive once it runs again', async () => {
    const quiet = { ReferralManagerNoSnapshotWriter: 'inactive', ReferralManagerDown: 'inactive' };
    await until(() => value('sum(rm_snapshot_leader)'), (v) => v === '1', 'the writer scraped holding the lease', 60_000);
    await expectAlerts(quiet, 'inactive while the writer runs');
    await d.writer.stop();
    try {
      await expectAlerts({ ReferralManagerNoSnapshotWriter: 'pending', ReferralManagerDown: 'pending' }, 'pending once the writer is gone');
    } finally {
      await d.writer.start();
    }
    await expectAlerts(quiet, 'inactive once the writer runs again');
  }, 150_000);

  it('Redis stopped while a satellite calls: the Redis, 5xx, writer and sweep alerts pending; 200 and a writer again once Redis is back', async () => {
    const pool = new Pool(d.served.url, { connections: 4 });
    let calling: NodeJS.Timeout | undefined;
    try {
      const key = (await call(pool, 'POST', '/v1/admin/satellites', { key: ADMIN_KEY, body: { id: 'sat' } })).body.apiKey as string;
      const gen = await call(pool, 'POST', '/v1/admin/tokens/generate', { key: ADMIN_KEY, body: { satelliteId: 'sat', userIds: ['a'], perUser: 1 } });
      const lookup = () => call(pool, 'GET', `/v1/tokens/${gen.body.tokens[0].token}`, { key });
      expect((await lookup()).status).toBe(200);
      const alerts = ['ReferralManagerRedisUnavailable', 'ReferralManagerServerErrors', 'ReferralManagerNoSnapshotWriter', 'ReferralManagerAbandonedReservationsKept'];
      await expectAlerts(Object.fromEntries(alerts.map((a) => [a, 'inactive'])), 'inactive while Redis answers');
      // the satellite keeps calling: each call while Redis is down is a 503 counted as unavailable
      calling = setInterval(() => void lookup().catch(() => undefined), 200);
      await redis.stop();
      try {
        // 503s on every call; the writer cannot renew its lease; the serve's lapse sweep (every 10 s) fails
        await expectAlerts(Object.fromEntries(alerts.map((a) => [a, 'pending'])), 'pending while Redis is down');
      } finally {
        await redis.start();
      }
      await until(lookup, (r) => r.status === 200, 'the satellite answered 200 again', 60_000);
      // the rate() alerts stay pending for their window after the last error; the lease is taken again at once
      await expectAlerts({ ReferralManagerNoSnapshotWriter: 'inactive' }, 'a writer again once Redis is back');
    } finally {
      clearInterval(calling);
      await pool.close();
    }
  }, 150_000);
});
