import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { loadConfig, type Config } from '../src/config.js';
import { rebuildRedis, restoreCampaigns, restoreFromPostgres, restoreRevoked, restoreSatellites, startSnapshotWriter, verify, type SnapshotWriter } from '../src/snapshot/index.js';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { hashKey } from '../src/digest.js';
import { openPostgres } from '../src/snapshot/postgres.js';
import { tokenHistory } from '../src/snapshot/history.js';
import { Keys, placeOfToken, SHARDS } from '../src/store/keys.js';
import { hexOf } from '../src/store/codec.js';
import { EXPORT_FIELDS, scanTokens } from '../src/store/export.js';
import { caughtUp, generateTokens, snapshotFixture } from './helpers/snapshot.js';
import { testDatabase } from './helpers/pg.js';
import { dropPrefix, engineFixture, SHARED_REDIS_URL, testPrefix, type EngineFixture } from './helpers/redis.js';
import { TokenStore } from '../src/store/token-store.js';
import { TokenEngine } from '../src/tokens/engine.js';
import { NO_REPLICA_WAIT } from '../src/store/replicas.js';
import { runCli } from './helpers/cli.js';
import { testCluster } from './helpers/http.js';
import { createRedis } from '../src/store/redis.js';
import { hasRedisServer, type RedisClusterHandle } from '../bench/redis-server.js';

describe('verify compares the stats counters too (real Redis, real Postgres)', () => {
  const snap = snapshotFixture('verc');

  it('counters that disagree with the tokens are listed as stats differences; a second restore into one prefix leaves them as they are', async () => {
    snap.writer = await startSnapshotWriter(loadConfig({ keyPrefix: snap.fx.prefix, databaseUrl: snap.db.url }), { log: () => {} });
    const made = await snap.fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'alice' }], perUser: 3, campaignId: 'c' });
    const [t0, t1] = made.tokens.map((t) => t.token);
    expect((await snap.fx.engine.redeem(t0!, 'sat-b', 'bob')).code).toBe('ok');
    expect((await snap.fx.engine.reserve(t1!, 'sat-b', 60_000)).code).toBe('ok');
    await caughtUp(snap.fx.redis, snap.fx.prefix, snap.pool, 5);
    await snap.writer.stop();
    snap.writer = undefined;
    expect(await verify(snap.fx.redis, snap.pool, snap.fx.prefix)).toMatchObject({ tokens: 3, differences: 0 });

    // counters off from the tokens, every token field right (restoreFromPostgres run twice into one prefix
    // once doubled them; it now leaves a token already there, counters and all): verify used to find 0
    // differences, while `stats` reported 6 generated
    await restoreFromPostgres(snap.fx.redis, snap.pool, snap.other);
    await restoreFromPostgres(snap.fx.redis, snap.pool, snap.other);
    const stats = `${snap.other}:{${placeOfToken(hexOf(t0!)).shard}}:stats`;
    expect(await verify(snap.fx.redis, snap.pool, snap.other)).toMatchObject({ tokens: 3, differences: 0 });
    for (const [field, n] of Object.entries(await snap.fx.redis.hgetall(stats))) await snap.fx.redis.hincrby(stats, field, Number(n));
    const report = await verify(snap.fx.redis, snap.pool, snap.other);
    expect(report.differences).toBe(1);
    expect(report.listed).toEqual([
      {
        token: stats,
        kind: 'stats',
        fields: [
          { field: 'sat-a\tgenerated', redis: '6', postgres: '3' },
          { field: 'sat-a\tredeemed', redis: '2', postgres: '1' },
          { field: 'sat-a\treserved', redis: '2', postgres: '1' },
          { field: 'sat-a\tunredeemed', redis: '2', postgres: '1' },
          { field: 'x\tsat-a\tsat-b', redis: '2', postgres: '1' },
        ],
      },
    ]);
  }, 60_000);
});

/**
 * A prefix, a database and a writer of the test's own (`writer.now`: the one running), removed after `fn`; on the
 * shared Redis, or on the Cluster of `nodes`.
 */
async function ownSnapshot(label: string, fn: (w: { fx: EngineFixture; db: { url: string }; pool: pg.Pool; config: Config; writer: { now: SnapshotWriter } }) => Promise<void>, nodes?: string[]): Promise<void> {
  const fx = await engineFixture({ label, redis: nodes && (() => createRedis({ redisUrl: '', redisClusterNodes: nodes })) });
  const db = await testDatabase();
  const pool = await openPostgres(db.url);
  const config = loadConfig({ keyPrefix: fx.prefix, databaseUrl: db.url, redisClusterNodes: nodes?.join(',') });
  const writer = { now: await startSnapshotWriter(config, { log: () => {} }) };
  try {
    await fn({ fx, db, pool, config, writer });
  } finally {
    await writer.now.stop();
    await pool.end();
    await db.drop();
    await dropPrefix(fx.redis, fx.prefix);
    await fx.close();
  }
}

// exported with its reservationId and without reservedBy, in Postgres too: half a reservation
describe('a token redeemed through reserve + complete (real Redis, real Postgres)', () => {
  it('the engine, the export, the Postgres copy and verify agree: its reservation id and the satellite that reserved (the redeemer)', async () => {
    await ownSnapshot('rescomp', async ({ fx, pool }) => {
      const made = await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'alice' }], perUser: 2, campaignId: 'c' });
      const [t, direct] = made.tokens.map((x) => x.token) as [string, string];
      const reservationId = (await fx.engine.reserve(t, 'sat-b', 60_000)).token!.reservationId!;
      expect((await fx.engine.complete(t, reservationId, 'bob')).token).toMatchObject({ reservationId, reservedBy: 'sat-b', redeemerSatelliteId: 'sat-b' });
      expect((await fx.engine.redeem(direct, 'sat-c', 'carol')).code).toBe('ok');
      await caughtUp(fx.redis, fx.prefix, pool, 5);

      const exported = new Map<string, Record<string, string>>();
      for await (const page of scanTokens(fx.redis, fx.prefix)) for (const row of page) exported.set(row[0]!, Object.fromEntries(EXPORT_FIELDS.map((f, i) => [f, row[i]!])));
      const reservation = (r: Record<string, unknown> | undefined) => [r?.reservationId, r?.reservedBy, r?.redeemerSatelliteId];
      expect(reservation(exported.get(t))).toEqual([reservationId, 'sat-b', 'sat-b']);
      expect(reservation(exported.get(direct))).toEqual(['', '', 'sat-c']);
      const rows = (await pool.query('SELECT token::text, reservation_id AS "reservationId", reserved_by AS "reservedBy", redeemer_satellite_id AS "redeemerSatelliteId" FROM tokens')).rows;
      const copied = new Map(rows.map((r) => [r.token as string, r]));
      expect(reservation(copied.get(t))).toEqual([reservationId, 'sat-b', 'sat-b']);
      expect(reservation(copied.get(direct))).toEqual([null, null, 'sat-c']);
      expect(await verify(fx.redis, pool, fx.prefix)).toMatchObject({ tokens: 2, differences: 0 });
      // copied from an engine before it named the reserving satellite (an older serve during a rolling
      // upgrade): the id alone, read as the same row
      await pool.query('UPDATE tokens SET reserved_by = NULL WHERE token = $1', [t]);
      expect(await verify(fx.redis, pool, fx.prefix)).toMatchObject({ tokens: 2, differences: 0 });
      expect((await tokenHistory(pool, t))?.token).toMatchObject({ reservationId, reservedBy: 'sat-b' });
    });
  });
});

describe('verify --repair-tokens (real Redis, real Postgres)', () => {
  // entries removed from a stream before the writer read them (an XDEL of an entry Postgres refused, an XTRIM
  // by hand) left Postgres without those changes for good: verify listed them, nothing could copy them again
  it('copies again the tokens Postgres lacks a change of, and leaves every difference Redis could have caused', async () => {
    await ownSnapshot('resync', async ({ fx, db, pool, config, writer }) => {
      const keys = new Keys(fx.prefix);
      const made = await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'alice' }], perUser: 5 });
      const [redeemed, revoked, reserved, ahead, untouched] = made.tokens.map((t) => t.token) as [string, string, string, string, string];
      await caughtUp(fx.redis, fx.prefix, pool, 5);
      await writer.now.stop();
      // changes whose entries go before any writer reads them
      expect((await fx.engine.redeem(redeemed, 'sat-b', 'bob')).code).toBe('ok');
      expect((await fx.engine.revokeToken(revoked)).code).toBe('ok');
      expect((await fx.engine.reserve(reserved, 'sat-b', 60_000)).code).toBe('ok');
      const late = (await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'carol' }], perUser: 1 })).tokens[0]!.token;
      // made and reserved unseen, its lease lapsed since: copied as stored (reserved), as verify compares it
      const lapsed = (await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'erin' }], perUser: 1 })).tokens[0]!.token;
      expect((await fx.engine.reserve(lapsed, 'sat-b', 1)).code).toBe('ok');
      await sleep(10);
      expect((await fx.engine.lookup(lapsed))?.state).toBe('unredeemed');
      for (let s = 0; s < SHARDS; s++) await fx.redis.xtrim(keys.events(s), 'MAXLEN', 0);
      // Postgres ahead of Redis, as after a failover that lost a redeem: a copy from Redis would erase it
      await pool.query(`UPDATE tokens SET state = 'redeemed', redeemer_satellite_id = 'sat-c', redeemer_user_id = 'dan', redeemed_at = 1 WHERE token = $1`, [ahead]);
      // a row Redis has no token of (a change Redis lost): listed, never copied over
      const ghost = '00000000-0000-4000-8000-0000000000cc';
      await pool.query(`INSERT INTO tokens (token, state, owner_satellite_id, owner_user_id, campaign_id, created_at, ev_shard, ev_ms, ev_seq)
        VALUES ($1, 'unredeemed', 'sat-a', 'erin', 'c', 1, 0, 1, 0)`, [ghost]);

      const cli = await runCli(['verify', '--repair-tokens', '--json'], { KEY_PREFIX: fx.prefix, REDIS_URL: SHARED_REDIS_URL, DATABASE_URL: db.url });
      // the report is of what it found: the differences are there until the writer has copied the tokens
      expect(cli.code).toBe(1);
      const first = JSON.parse(cli.stdout) as Awaited<ReturnType<typeof verify>>;
      expect(first.resynced).toBe(4);
      const listed = (r: typeof first) => new Map(r.listed.filter((d) => d.kind !== 'stats').map((d) => [d.token, d.kind]));
      expect(listed(first)).toEqual(new Map([[redeemed, 'differs'], [revoked, 'differs'], [reserved, 'differs'], [ahead, 'differs'], [late, 'only_redis'], [lapsed, 'only_redis'], [ghost, 'only_postgres']]));

      writer.now = await startSnapshotWriter(config, { log: () => {} });
      await caughtUp(fx.redis, fx.prefix, pool);
      const second = await verify(fx.redis, pool, fx.prefix);
      expect(second.resynced).toBeUndefined();
      // nothing it may copy is left: a second repair queues none
      expect((await runCli(['verify', '--repair-tokens'], { KEY_PREFIX: fx.prefix, REDIS_URL: SHARED_REDIS_URL, DATABASE_URL: db.url })).stdout).toContain('queued 0 tokens to be copied to Postgres again');
      expect(listed(second)).toEqual(new Map([[reserved, 'differs'], [ahead, 'differs'], [ghost, 'only_postgres']]));
      const row = (t: string) => pool.query('SELECT state, redeemer_user_id FROM tokens WHERE token = $1', [t]).then((r) => r.rows[0]);
      expect(await row(redeemed)).toEqual({ state: 'redeemed', redeemer_user_id: 'bob' });
      expect(await row(ahead)).toEqual({ state: 'redeemed', redeemer_user_id: 'dan' });
      expect(await row(untouched)).toEqual({ state: 'unredeemed', redeemer_user_id: null });
      expect(await row(lapsed)).toEqual({ state: 'reserved', redeemer_user_id: null });
      // the history says what happened
      const history = await pool.query('SELECT type FROM token_events WHERE token = $1 ORDER BY ev_ms, ev_seq', [redeemed]);
      expect(history.rows.map((r) => r.type)).toEqual(['generated', 'resync']);
    });
  }, 90_000);
});

// reservations an older release made are what this mends: on a Cluster too, whose shards are spread over its masters
for (const on of ['standalone', 'cluster'] as const) {
  describe.skipIf(on === 'cluster' && !hasRedisServer())(`verify --repair-leases (real Redis ${on}, real Postgres)`, () => {
    let cluster: RedisClusterHandle | undefined;
    beforeAll(async () => {
      if (on === 'cluster') cluster = await testCluster(3, []);
    });
    afterAll(async () => await cluster?.stop());
    // reservations made by a version before the lease index (or during a rolling upgrade) are not in it, and the
    // lapse sweep, which reads only the index, never gave them back; nothing reported them
    it('lists lease index entries out of step with the tokens, mends them, and the sweep then finds every abandoned reservation', async () => {
      await ownSnapshot('leases', async ({ fx, db, pool }) => {
        const keys = new Keys(fx.prefix);
        const made = await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'alice' }], perUser: 4 });
        const [unindexed, misplaced, stray, fine] = made.tokens.map((t) => t.token) as [string, string, string, string];
        const abandoned = await fx.engine.reserve(unindexed, 'sat-b', 50);
        const held = await fx.engine.reserve(misplaced, 'sat-b', 60_000);
        expect((await fx.engine.reserve(fine, 'sat-b', 60_000)).code).toBe('ok');
        const leases = keys.leases(placeOfToken(hexOf(unindexed)).shard);
        await fx.redis.zrem(leases, hexOf(unindexed));
        await caughtUp(fx.redis, fx.prefix, pool, 7);
        await new Promise((r) => setTimeout(r, Math.max(0, abandoned.token!.leaseExpiresAt! + 30 - Date.now())));
        // an abandoned reservation the index lacks: the sweep cannot find it
        expect((await fx.engine.lapse(0)).given).toBe(0);
        // entries out of step (a sweep mends those it reads, so these come after it): a live one due long ago, a stray one
        await fx.redis.zadd(leases, 5, hexOf(misplaced), 7, hexOf(stray));

        const env = { KEY_PREFIX: fx.prefix, DATABASE_URL: db.url, ...(cluster ? { REDIS_CLUSTER_NODES: cluster.nodes.join(',') } : { REDIS_URL: SHARED_REDIS_URL }) };
        const found = await runCli(['verify'], env);
        expect(found.code).toBe(1);
        expect(found.stdout.split('\n').filter((l) => l.includes('lease_index')).sort()).toEqual([`${misplaced} lease_index`, `${stray} lease_index`, `${unindexed} lease_index`].sort());
        expect(found.stderr).toContain('referral-manager verify --repair-leases');
        const repaired = await runCli(['verify', '--repair-leases'], env);
        expect(repaired.stdout).toContain('wrote or removed 3 lease index entries');
        expect(Number(await fx.redis.zscore(leases, hexOf(misplaced)))).toBe(held.token!.leaseExpiresAt);
        expect(await fx.redis.zscore(leases, hexOf(stray))).toBeNull();
        expect(await verify(fx.redis, pool, fx.prefix)).toMatchObject({ differences: 0 });
        // indexed, the abandoned one is given back; the ones whose lease holds stay
        expect((await fx.engine.lapse(0)).given).toBe(1);
        expect((await fx.engine.storedStates([unindexed, misplaced, stray, fine]))).toEqual(['unredeemed', 'reserved', 'unredeemed', 'reserved']);
      }, cluster?.nodes);
    }, 90_000);
  });
}

describe('verify while satellites redeem and while the writer catches up (real Redis, real Postgres)', () => {
  // verify read a shard's redemption details before its buckets: a redeem in between read as a token redeemed
  // by nobody, a difference that looks like Redis lost the redeemer (seen with redeems over HTTP)
  it('never reads a token redeemed by nobody while redeems run', async () => {
    await ownSnapshot('torn', async ({ fx, pool }) => {
      const tokens = await generateTokens(fx.engine, 5_000);
      await caughtUp(fx.redis, fx.prefix, pool, 5_000);
      let next = 0;
      let running = true;
      const redeeming = Promise.all(
        Array.from({ length: 8 }, async () => {
          while (running && next < tokens.length) expect((await fx.engine.redeem(tokens[next++]!, 'sat-b', `u${next}`)).code).toBe('ok');
        }),
      );
      const torn: unknown[] = [];
      try {
        for (let i = 0; i < 3 && next < tokens.length; i++) {
          const report = await verify(fx.redis, pool, fx.prefix, { maxListed: tokens.length });
          for (const d of report.listed) {
            const f = new Map(d.fields?.map((x) => [x.field, x.redis]));
            // redeemed in Redis with no redeemer. A field not listed is Postgres' value: with the state not listed,
            // a redeemer Postgres holds makes both redeemed. (Redis read before a redeem that Postgres, read after,
            // already holds is lag, not a torn read: there Redis is unredeemed)
            if (f.has('state') ? f.get('state') === 'redeemed' && (f.get('redeemerSatelliteId') ?? '') === '' : f.get('redeemerSatelliteId') === '') torn.push(d);
          }
        }
      } finally {
        running = false;
        await redeeming;
      }
      expect(next).toBeGreaterThan(0);
      expect(torn).toEqual([]);
    });
  }, 90_000);

  // 200k differences from a writer still catching up read like a Postgres that lost them, with nothing saying otherwise
  it('says how many changes the writer had left to copy, and that differences may be only that lag', async () => {
    await ownSnapshot('lagging', async ({ fx, db, pool, writer }) => {
      await writer.now.stop();
      await generateTokens(fx.engine, 300);
      const env = { KEY_PREFIX: fx.prefix, REDIS_URL: SHARED_REDIS_URL, DATABASE_URL: db.url };
      const behind = await runCli(['verify', '--max', '1'], env);
      expect(behind.code).toBe(1);
      expect(behind.stdout).toContain('300 tokens in Redis, ');
      expect(behind.stderr).toContain('the snapshot writer had 300 changes left to copy (rm_snapshot_lag_events) as verify ran: differences of the tokens they changed may be only that lag; run verify again once the lag is 0');
      expect(JSON.parse((await runCli(['verify', '--json', '--max', '0'], env)).stdout)).toMatchObject({ lagEvents: 300 });

      writer.now = await startSnapshotWriter(loadConfig({ keyPrefix: fx.prefix, databaseUrl: db.url }), { log: () => {} });
      await caughtUp(fx.redis, fx.prefix, pool, 300);
      const caught = await runCli(['verify'], env);
      expect(caught.code).toBe(0);
      expect(caught.stderr).not.toContain('left to copy');
    });
  }, 90_000);
  // lagEvents is the more of two readings, as verify starts and as it ends: changes made while it ran (their
  // tokens read before them, or after) are lag too. The reading at the end is taken here alone: verify is
  // held at its first Postgres read (a lock on tokens), past the reading at its start, while tokens are made
  it('counts the changes made while it ran, left to copy at its end, in lagEvents', async () => {
    await ownSnapshot('lag-end', async ({ fx, db, pool, writer }) => {
      await writer.now.stop();
      expect((await verify(fx.redis, pool, fx.prefix)).lagEvents).toBe(0);
      // verify's pool holds 2 connections: the lock and the look at who waits for it take others
      const side = await openPostgres(db.url);
      const locker = await side.connect();
      try {
        await locker.query('BEGIN');
        await locker.query('LOCK TABLE tokens IN ACCESS EXCLUSIVE MODE');
        const report = verify(fx.redis, pool, fx.prefix, { maxListed: 0 });
        const waiting = async () =>
          (await side.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`)).rows[0].n as number;
        for (const end = Date.now() + 10_000; (await waiting()) === 0 && Date.now() < end; ) await sleep(20);
        expect(await waiting()).toBe(1);
        await generateTokens(fx.engine, 30);
        await locker.query('ROLLBACK');
        expect((await report).lagEvents).toBe(30);
      } finally {
        locker.release();
        await side.end();
      }
    });
  }, 60_000);
});

describe('restore --from-postgres, then verify (real Redis, real Postgres)', () => {
  // new events get stream ids from the Redis clock: restored onto a host whose clock is behind the positions
  // Postgres holds, they sorted before them, and the writer's group (set at Postgres' newest position) never
  // delivered them, so a redeem made after the restore never reached Postgres
  it('onto a Redis whose clock is behind the old one: each shard stream is set past the newest position Postgres holds, so a change made after the restore reaches Postgres', async () => {
    await ownSnapshot('rclock', async ({ fx, db, pool, writer }) => {
      const t = (await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'alice' }], perUser: 1 })).tokens[0]!.token;
      await caughtUp(fx.redis, fx.prefix, pool, 1);
      await writer.now.stop();
      const ahead = Date.now() + 3_600_000;
      await pool.query('UPDATE token_events SET ev_ms = $1', [ahead]);
      await pool.query('UPDATE tokens SET ev_ms = $1', [ahead]);
      const back = testPrefix('rclock-back');
      try {
        expect(await restoreFromPostgres(fx.redis, pool, back)).toBe(1);
        const engine = new TokenEngine(new TokenStore(fx.redis, back, NO_REPLICA_WAIT));
        expect((await engine.redeem(t, 'sat-b', 'bob')).code).toBe('ok');
        const [id] = (await fx.redis.xrevrange(new Keys(back).events(placeOfToken(hexOf(t)).shard), '+', '-', 'COUNT', 1))[0]!;
        expect(Number(id.split('-')[0])).toBeGreaterThanOrEqual(ahead);
        writer.now = await startSnapshotWriter(loadConfig({ keyPrefix: back, databaseUrl: db.url }), { log: () => {} });
        await caughtUp(fx.redis, back, pool, 2, 20_000);
        expect((await pool.query('SELECT state, redeemer_user_id FROM tokens WHERE token = $1', [t])).rows[0]).toEqual({ state: 'redeemed', redeemer_user_id: 'bob' });
      } finally {
        await writer.now.stop();
        await dropPrefix(fx.redis, back);
      }
    });
  }, 60_000);

  // a reserved row without a lease (copied from an engine that could not read one) is restored into the lease
  // index at 0, as the scripts read it, so the sweep gives it back: verify takes that entry as right
  it('a reserved row without a lease is indexed at 0 and verify finds no difference', async () => {
    await ownSnapshot('rnolease', async ({ fx, pool, writer }) => {
      await writer.now.stop();
      const t = '00000000-0000-4000-8000-0000000000dd';
      await pool.query(`INSERT INTO tokens (token, state, owner_satellite_id, owner_user_id, campaign_id, created_at, reservation_id, reserved_by, ev_shard, ev_ms, ev_seq)
        VALUES ($1, 'reserved', 'sat-a', 'erin', 'c', 1, 'res-1', 'sat-b', 0, 1, 0)`, [t]);
      expect(await restoreFromPostgres(fx.redis, pool, fx.prefix)).toBe(1);
      expect(await fx.redis.zscore(new Keys(fx.prefix).leases(0), hexOf(t))).toBe('0');
      const report = await verify(fx.redis, pool, fx.prefix);
      expect(report.listed).toEqual([]);
    });
  });

  // one acknowledged redeem is as much lost as many: a restore that took it for no lag undid it unseen
  it('restore --force refuses while even one change has not reached Postgres', async () => {
    await ownSnapshot('rpending', async ({ fx, pool, writer }) => {
      const [t] = (await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'alice' }], perUser: 1 })).tokens.map((x) => x.token) as [string];
      await caughtUp(fx.redis, fx.prefix, pool, 1);
      await writer.now.stop();
      expect((await fx.engine.redeem(t, 'sat-b', 'bob')).code).toBe('ok');
      await expect(rebuildRedis(fx.redis, pool, fx.prefix, { force: true, holder: 'test', say: () => {} })).rejects.toThrow(/^1 change in the event streams of .* have not reached Postgres/);
      expect((await fx.engine.lookup(t))?.state).toBe('redeemed');
    });
  });
});

describe('verify compares satellites, campaigns and revoked campaigns record by record (real Redis, real Postgres)', () => {
  // after a restore these records are what keeps satellites authenticating, generate resumable and revoked
  // campaigns refused: a difference in any of them is what an operator runs verify to see
  it('lists a record on one side only and each field that differs, an outbound key only as set', async () => {
    await ownSnapshot('recs', async ({ fx, pool, writer }) => {
      await writer.now.stop();
      const key = 'rmk_recs-key';
      await pool.query('INSERT INTO satellites (id, fields, api_keys) VALUES ($1, $2, $3)', ['sat-x', { id: 'sat-x', createdAt: '1', keyHash: hashKey(key), outboundKey: 'secret-out' }, { [hashKey(key)]: 'sat-x\t' }]);
      const progress = { 'sat-o': { usersListed: 3, usersServed: 3, tokensMade: 3, tokensDelivered: 2, usersRefused: 0, failures: 1, status: 'failed', lastError: 'HTTP 503' } };
      await pool.query('INSERT INTO campaigns (id, meta, progress) VALUES ($1, $2, $3)', ['spring', { perUser: 1, satellites: ['sat-o'], createdAt: 1 }, progress]);
      await pool.query('INSERT INTO revoked_campaigns (id, revoked_at) VALUES ($1, $2), ($3, $4)', ['old', 1000, 'gone', 2000]);
      await restoreSatellites(fx.redis, pool, fx.prefix);
      await restoreCampaigns(fx.redis, pool, fx.prefix);
      await restoreRevoked(fx.redis, pool, fx.prefix);
      expect(await verify(fx.redis, pool, fx.prefix)).toMatchObject({ satellites: 1, campaigns: 1, revokedCampaigns: 2, differences: 0 });

      await pool.query(`UPDATE satellites SET fields = jsonb_set(fields, '{outboundKey}', '"secret-new"')`);
      await new SatelliteRegistry(fx.redis, fx.prefix).add({ id: 'sat-y' });
      await pool.query(`UPDATE campaigns SET progress = jsonb_set(jsonb_set(progress, '{sat-o,lastError}', '"HTTP 500"'), '{sat-o,usersListed}', '4')`);
      await pool.query(`UPDATE campaigns SET meta = jsonb_set(meta, '{satellites}', '["sat-o", "sat-p"]')`);
      await pool.query(`UPDATE revoked_campaigns SET revoked_at = 1001 WHERE id = 'old'`);
      await pool.query(`DELETE FROM revoked_campaigns WHERE id = 'gone'`);
      await pool.query(`INSERT INTO revoked_campaigns (id, revoked_at) VALUES ('late', 3000)`);
      const report = await verify(fx.redis, pool, fx.prefix);
      const revoked = new Keys(fx.prefix).revokedCampaigns();
      expect(report.listed).toEqual([
        { token: `${fx.prefix}:{sat}:s:sat-x`, kind: 'differs', fields: [{ field: 'outboundKey', redis: '(set)', postgres: '(set)' }] },
        { token: `${fx.prefix}:{sat}:s:sat-y`, kind: 'only_redis' },
        {
          token: `${fx.prefix}:{camp:spring}:meta`,
          kind: 'differs',
          fields: [
            { field: 'prog:sat-o.lastError', redis: 'HTTP 503', postgres: 'HTTP 500' },
            { field: 'prog:sat-o.usersListed', redis: '3', postgres: '4' },
            { field: 'satellites', redis: '["sat-o"]', postgres: '["sat-o","sat-p"]' },
          ],
        },
        { token: `${revoked}/late`, kind: 'only_postgres' },
        { token: `${revoked}/old`, kind: 'differs', fields: [{ field: 'revokedAt', redis: '1000', postgres: '1001' }] },
        { token: `${revoked}/gone`, kind: 'only_redis' },
      ]);
      expect(report.differences).toBe(6);
    });
  });
});
