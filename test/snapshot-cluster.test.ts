import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { loadConfig } from '../src/config.js';
import { openPostgres, restoreFromPostgres, startSnapshotWriter, verify, type SnapshotWriter } from '../src/snapshot/index.js';
import { createRedis, masters, type RedisClient } from '../src/store/redis.js';
import { TokenStore } from '../src/store/token-store.js';
import { TokenEngine } from '../src/tokens/engine.js';
import { hasRedisServer, startCluster, type RedisClusterHandle } from '../bench/redis-server.js';
import { testDatabase } from './helpers/pg.js';
import { dropPrefix, engineFixture, testPrefix, type EngineFixture } from './helpers/redis.js';
import { caughtUp, each, generateTokens } from './helpers/snapshot.js';

const TOTAL = 20_000;
const haveRedis = hasRedisServer();
if (!haveRedis) console.warn('snapshot-cluster: redis-server is not installed; skipping the Redis Cluster snapshot tests');

/** The snapshot writer, verify and restore against a real 3-master Redis Cluster: every shard's stream is read. */
describe.skipIf(!haveRedis)('snapshot on Redis Cluster (3 masters)', () => {
  let cluster: RedisClusterHandle;
  let fx: EngineFixture;
  let db: Awaited<ReturnType<typeof testDatabase>>;
  let pool: pg.Pool;
  let writer: SnapshotWriter | undefined;
  const restoredPrefix = testPrefix('restored');

  beforeAll(async () => {
    cluster = await startCluster();
    fx = await engineFixture({ label: 'snapc', redis: () => createRedis({ redisUrl: 'redis://127.0.0.1:6379', redisClusterNodes: cluster.nodes }) });
    db = await testDatabase();
    pool = await openPostgres(db.url);
  });

  afterAll(async () => {
    await writer?.stop();
    await pool?.end();
    await db?.drop();
    if (fx) await dropPrefix(fx.redis, restoredPrefix);
    await fx?.close();
    await cluster?.stop();
  });

  it('streams of every shard on every master reach Postgres; verify finds 0 differences', async () => {
    const config = loadConfig({ redisClusterNodes: cluster.nodes.join(','), keyPrefix: fx.prefix, databaseUrl: db.url });
    writer = await startSnapshotWriter(config, { log: () => {} });
    const tokens = await generateTokens(fx.engine, TOTAL);
    await each(tokens.slice(0, TOTAL / 4), 32, async (t, i) => {
      expect((await fx.engine.redeem(t, 'sat-b', `r${i}`)).code).toBe('ok');
    });
    // the streams really are spread over the masters
    const perMaster = await Promise.all(masters(fx.redis as RedisClient).map(async (m) => (await m.keys(`${fx.prefix}:{*}:ev`)).length));
    expect(perMaster.filter((n) => n > 0).length).toBe(3);

    await caughtUp(fx.redis, fx.prefix, pool, TOTAL + TOTAL / 4);
    const report = await verify(fx.redis, pool, fx.prefix);
    expect(report.listed).toEqual([]);
    expect(report).toMatchObject({ tokens: TOTAL, differences: 0 });
  }, 120_000);

  it('restore --from-postgres rebuilds the cluster under a new prefix; the engine works on it', async () => {
    await writer?.stop();
    writer = undefined;
    expect(await restoreFromPostgres(fx.redis, pool, restoredPrefix)).toBe(TOTAL);
    expect(await verify(fx.redis, pool, restoredPrefix)).toMatchObject({ tokens: TOTAL, differences: 0 });
    const engine = new TokenEngine(new TokenStore(fx.redis, restoredPrefix));
    expect(await engine.stats()).toEqual(await fx.engine.stats());
    const owner = await engine.listUnredeemed('sat-a', `u${TOTAL - 10}`);
    expect(owner).toHaveLength(10);
    expect((await engine.redeem(owner[0]!.token, 'sat-c', 'after-restore')).code).toBe('ok');
  }, 120_000);
});
