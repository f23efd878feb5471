import type pg from 'pg';
import { Pool } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { startServer } from '../src/http/server.js';
import { openPostgres, readSnapshotStatus, verify } from '../src/snapshot/index.js';
import { writeSnapshotStatus } from '../src/snapshot/status.js';
import { createRedis, type RedisClient } from '../src/store/redis.js';
import { ADMIN_KEY, call, privateRedis, serve, type Served } from './helpers/http.js';
import { testDatabase } from './helpers/pg.js';
import { dropPrefix, SHARED_REDIS_URL, testPrefix } from './helpers/redis.js';
import { until } from './helpers/snapshot.js';

/**
 * The default deployment: `serve` with SNAPSHOT on runs the Postgres writer in its primary. Every other
 * serve test turns it off, so this is the one that shows HTTP changes reaching Postgres from serve itself.
 */
describe('serve with the snapshot writer on (SNAPSHOT=true, the default; real Redis, Postgres, HTTP)', () => {
  const prefix = testPrefix('servesnap');
  let db: Awaited<ReturnType<typeof testDatabase>>;
  let pgPool: pg.Pool;
  let redis: RedisClient;
  let server: Served | undefined;
  let http: Pool | undefined;

  beforeAll(async () => {
    db = await testDatabase();
    pgPool = await openPostgres(db.url);
    redis = createRedis({ redisUrl: SHARED_REDIS_URL, redisClusterNodes: [] });
  });
  afterAll(async () => {
    await http?.close();
    await server?.stop();
    await pgPool?.end();
    if (redis) {
      await dropPrefix(redis, prefix);
      redis.disconnect();
    }
    await db?.drop();
  });

  it('tokens and satellites changed through the API reach Postgres, /readyz reports the writer up, SIGTERM stops it and exits 0', async () => {
    server = await serve({ KEY_PREFIX: prefix, SNAPSHOT: 'true', DATABASE_URL: db.url, REDIS_URL: SHARED_REDIS_URL });
    http = new Pool(server.url, { connections: 2 });
    // its writer reports a second after the workers listen: until then /readyz said off, no writer at all
    expect(['starting', 'up', 'down']).toContain((await call(http, 'GET', '/readyz')).body.snapshot.state);
    const added = await call(http, 'POST', '/v1/admin/satellites', { key: ADMIN_KEY, body: { id: 'sat-s', name: 'Snap' } });
    expect(added.status).toBe(201);
    const key = added.body.apiKey as string;
    const gen = await call(http, 'POST', '/v1/admin/tokens/generate', { key: ADMIN_KEY, body: { satelliteId: 'sat-s', userIds: ['alice'], perUser: 3, campaignId: 'snap-camp' } });
    expect(gen.status).toBe(200);
    const [t0, t1, t2] = gen.body.tokens.map((t: { token: string }) => t.token) as [string, string, string];
    expect((await call(http, 'POST', '/v1/tokens/redeem', { key, body: { token: t0, userId: 'bob' } })).status).toBe(200);
    expect((await call(http, 'POST', '/v1/tokens/reserve', { key, body: { token: t1, leaseMs: 600_000 } })).status).toBe(200);

    // 3 generated + 1 redeemed + 1 reserved
    await until(async () => Number((await pgPool.query('SELECT count(*) AS n FROM token_events')).rows[0].n), (n) => n === 5, 'events in Postgres');
    const rows = (await pgPool.query('SELECT token, state, owner_satellite_id, owner_user_id, campaign_id, redeemer_user_id FROM tokens ORDER BY token')).rows;
    expect(rows).toEqual(
      [
        { token: t0, state: 'redeemed', redeemer_user_id: 'bob' },
        { token: t1, state: 'reserved', redeemer_user_id: null },
        { token: t2, state: 'unredeemed', redeemer_user_id: null },
      ]
        .map((r) => ({ ...r, owner_satellite_id: 'sat-s', owner_user_id: 'alice', campaign_id: 'snap-camp' }))
        .sort((a, b) => (a.token < b.token ? -1 : 1)),
    );
    await until(async () => (await pgPool.query('SELECT id FROM satellites')).rows, (r) => r.length === 1 && r[0].id === 'sat-s', 'satellite in Postgres');
    expect(await verify(redis, pgPool, prefix)).toMatchObject({ tokens: 3, satellites: 1, differences: 0 });

    const ready = await until(() => call(http!, 'GET', '/readyz'), (r) => r.body.snapshot?.state === 'up' && r.body.snapshot?.lagEvents === 0, '/readyz snapshot up');
    expect(ready.status).toBe(200);

    await http.close();
    http = undefined;
    expect(await server.stop()).toBe(0);
    server = undefined;
    // the writer stopped with the primary, and said so
    expect(await readSnapshotStatus(redis, prefix)).toMatchObject({ state: 'off' });
  });

  it('an abandoned reservation is given back by the primary\'s sweep: unredeemed in Redis, in Postgres and in the metrics; a late complete is a mismatch', async () => {
    server = await serve({ KEY_PREFIX: prefix, SNAPSHOT: 'true', DATABASE_URL: db.url, REDIS_URL: SHARED_REDIS_URL, LEASE_SWEEP_MS: '100', LEASE_SWEEP_GRACE_MS: '0', TOKEN_COUNTS_MS: '100' });
    http = new Pool(server.url, { connections: 2 });
    const added = await call(http, 'POST', '/v1/admin/satellites', { key: ADMIN_KEY, body: { id: 'sat-l' } });
    const key = added.body.apiKey as string;
    const gen = await call(http, 'POST', '/v1/admin/tokens/generate', { key: ADMIN_KEY, body: { satelliteId: 'sat-l', userIds: ['lea'], perUser: 2 } });
    const [abandoned, held] = gen.body.tokens.map((t: { token: string }) => t.token) as [string, string];
    const short = await call(http, 'POST', '/v1/tokens/reserve', { key, body: { token: abandoned, leaseMs: 300 } });
    expect(short.status).toBe(200);
    expect((await call(http, 'POST', '/v1/tokens/reserve', { key, body: { token: held, leaseMs: 600_000 } })).status).toBe(200);

    const history = (token: string) => pgPool.query('SELECT type FROM token_events WHERE token = $1 ORDER BY ev_ms, ev_seq', [token]).then((r) => r.rows.map((x) => x.type));
    await until(() => history(abandoned), (types) => types.length === 3, 'the lapsed event in Postgres');
    expect(await history(abandoned)).toEqual(['generated', 'reserved', 'lapsed']);
    const rows = (await pgPool.query('SELECT token, state, reservation_id FROM tokens WHERE token = ANY($1) ORDER BY token', [[abandoned, held]])).rows;
    expect(new Map(rows.map((r) => [r.token, [r.state, r.reservation_id === null]]))).toEqual(new Map([[abandoned, ['unredeemed', true]], [held, ['reserved', false]]]));
    const metrics = await until(
      async () => (await call(http!, 'GET', '/metrics')).body as string,
      (text) => /rm_tokens\{satellite="sat-l",state="reserved"\} 1\n/.test(text) && /rm_tokens\{satellite="sat-l",state="unredeemed"\} 1\n/.test(text),
      'the counts in /metrics',
    );
    expect(metrics).toMatch(/^rm_reservations_lapsed_total 1$/m);
    expect(metrics).toMatch(/^rm_lease_sweep_errors_total 0$/m);
    const late = await call(http, 'POST', '/v1/tokens/complete', { key, body: { token: abandoned, reservationId: short.body.reservationId, userId: 'late' } });
    expect([late.status, late.body.error]).toEqual([409, 'reservation_mismatch']);
    expect(await verify(redis, pgPool, prefix)).toMatchObject({ differences: 0 });

    await http.close();
    http = undefined;
    expect(await server.stop()).toBe(0);
    server = undefined;
  });

  it('a worker of a serve with the writer on says it is starting until a writer reports after the worker started', async () => {
    const own = testPrefix('starting');
    const worker = await startServer(loadConfig({ host: '127.0.0.1', port: 0, keyPrefix: own }, { REDIS_URL: SHARED_REDIS_URL }));
    const off = await startServer(loadConfig({ host: '127.0.0.1', port: 0, keyPrefix: own }, { REDIS_URL: SHARED_REDIS_URL, SNAPSHOT: 'false' }));
    const snapshot = async (port = worker.port) => ((await (await fetch(`http://127.0.0.1:${port}/readyz`)).json()) as { snapshot: unknown }).snapshot;
    try {
      expect(await snapshot()).toEqual({ state: 'starting' });
      // a serve without a writer cannot tell one is coming
      expect(await snapshot(off.port)).toEqual({ state: 'off' });
      // the farewell of the writer before this serve's (a restart)
      await writeSnapshotStatus(redis, own, { state: 'off', at: Date.now() - 60_000 });
      expect(await snapshot()).toEqual({ state: 'starting' });
      const up = { state: 'up', lagEvents: 0, lagSeconds: 0, at: Date.now() } as const;
      await writeSnapshotStatus(redis, own, up);
      expect(await snapshot()).toEqual(up);
      // its own writer stopping
      const farewell = { state: 'off', at: Date.now() } as const;
      await writeSnapshotStatus(redis, own, farewell);
      expect(await snapshot()).toEqual(farewell);
    } finally {
      await Promise.all([worker.close(0), off.close(0)]);
      await dropPrefix(redis, own);
    }
  });

  // the drain (up to the 5 s request timeout on a hung Redis), then the writer's stop (its lag reading, its
  // round, its lease release and status write, each waiting out a 10 s command timeout): 25 s in turn
  it('SIGTERM with Redis hung (SIGSTOP) and a request in flight: exits 0 within a container\'s 10 s stop grace', async () => {
    const own = await privateRedis();
    await own.start();
    // a snapshot of its own: the tokens of the tests before, in this test's empty Redis, would be lost ones (503)
    const ownDb = await testDatabase();
    const hung = await serve({ KEY_PREFIX: prefix, SNAPSHOT: 'true', DATABASE_URL: ownDb.url, REDIS_URL: own.url });
    const client = new Pool(hung.url, { connections: 1 });
    try {
      const added = await call(client, 'POST', '/v1/admin/satellites', { key: ADMIN_KEY, body: { id: 'sat-h' } });
      await until(() => call(client, 'GET', '/readyz'), (r) => r.body.snapshot?.state === 'up', '/readyz snapshot up');
      own.signal('SIGSTOP');
      const inFlight = call(client, 'POST', '/v1/tokens/redeem', { key: added.body.apiKey as string, body: { token: 'ffff0000-0000-4000-8000-000000000000', userId: 'u' } });
      await new Promise((r) => setTimeout(r, 1000)); // the writer's round and its lag reading wait on Redis too by now
      const t0 = Date.now();
      expect(await hung.stop()).toBe(0);
      expect(Date.now() - t0).toBeLessThan(10_000);
      expect((await inFlight).status).toBe(503);
    } finally {
      own.signal('SIGCONT');
      await hung.stop();
      await client.close();
      await own.dispose();
      await ownDb.drop();
    }
  }, 60_000);
});
