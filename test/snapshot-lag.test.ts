import { describe, expect, it } from 'vitest';
import { registry } from '../src/metrics.js';
import { reportLag, sampleLag } from '../src/snapshot/lag.js';
import { Keys } from '../src/store/keys.js';
import { createRedis, whenReady } from '../src/store/redis.js';
import { privateRedis } from './helpers/http.js';
import { sleep, until } from './helpers/snapshot.js';
import { dropPrefix, SHARED_REDIS_URL, testPrefix } from './helpers/redis.js';
import { snapshotMetrics } from '../src/snapshot/metrics.js';
import { testDatabase } from './helpers/pg.js';
import pg from 'pg';
import { loadConfig } from '../src/config.js';
import { startSnapshotWriter, type SnapshotWriter } from '../src/snapshot/writer.js';
import { NO_REPLICA_WAIT } from '../src/store/replicas.js';
import { TokenStore } from '../src/store/token-store.js';
import { TokenEngine } from '../src/tokens/engine.js';

/** The value rm_snapshot_lag_events shows, as a scrape reads it. */
async function lagEvents(): Promise<string | undefined> {
  return /^rm_snapshot_lag_events (\S+)$/m.exec(await registry.getSingleMetricAsString('rm_snapshot_lag_events'))?.[1];
}

describe('rm_snapshot_lag_* while Redis cannot be read', () => {
  it('reads NaN (unknown) instead of keeping the last value, and a number again once Redis answers', async () => {
    const redis = await privateRedis();
    await redis.start();
    const client = createRedis({ redisUrl: redis.url, redisClusterNodes: [] }, { failFast: true });
    client.on('error', () => {}); // refused connections while it is down: expected here
    const lag = reportLag(client, 'lagm', 100);
    try {
      await whenReady(client, 5000);
      await client.xadd(new Keys('lagm').events(0), '*', 'type', 'generated');
      await until(lagEvents, (v) => v === '1', 'the entry counted');
      await redis.stop('SIGKILL');
      // prom-client writes NaN as "Nan", which Prometheus reads as NaN (case-insensitive)
      await until(lagEvents, (v) => v?.toLowerCase() === 'nan', 'NaN while Redis is down');
      await redis.start();
      // AOF on: the entry is still there
      await until(lagEvents, (v) => v === '1', 'counted again once Redis is back');
    } finally {
      await lag.stop();
      client.disconnect();
      await redis.dispose();
    }
  });

  // a hung Redis answers nothing until the client's command timeout (10 s on the writer's): the last reading,
  // a lag of 0 say, stood all that time
  it('reads NaN while a reading goes unanswered (Redis hung), long before the command times out', async () => {
    const redis = await privateRedis();
    await redis.start();
    const client = createRedis({ redisUrl: redis.url, redisClusterNodes: [] }, { commandTimeoutMs: 60_000 });
    const lag = reportLag(client, 'lagh', 100);
    try {
      await client.xadd(new Keys('lagh').events(0), '*', 'type', 'generated');
      await until(lagEvents, (v) => v === '1', 'the entry counted');
      redis.signal('SIGSTOP');
      const t0 = Date.now();
      await until(lagEvents, (v) => v?.toLowerCase() === 'nan', 'NaN while Redis hangs', 10_000);
      expect(Date.now() - t0).toBeLessThan(5000);
      redis.signal('SIGCONT');
      await until(lagEvents, (v) => v === '1', 'counted again once Redis answers');
    } finally {
      redis.signal('SIGCONT');
      await lag.stop();
      client.disconnect();
      await redis.dispose();
    }
  });

  // any XINFO failure counted as "no stream yet": a Cluster master down (or CLUSTERDOWN) had its shards'
  // backlog read as 0, and the lag showed 326 or 710 where 950 waited, hiding it from the alert
  it('a shard stream that cannot be read fails the reading; only a missing stream counts 0', async () => {
    const redis = await privateRedis();
    await redis.start();
    const client = createRedis({ redisUrl: redis.url, redisClusterNodes: [] });
    try {
      const keys = new Keys('lagr');
      await client.xadd(keys.events(1), '*', 'type', 'generated');
      expect((await sampleLag(client, 'lagr')).events).toBe(1);
      // a key XINFO refuses, as a down master's shards are refused: no number rather than a low one
      await client.set(keys.events(2), 'not a stream');
      await expect(sampleLag(client, 'lagr')).rejects.toThrow(/WRONGTYPE/);
    } finally {
      client.disconnect();
      await redis.dispose();
    }
  });
});

describe('rm_snapshot_lag_seconds and failed readings', () => {
  // neither was asserted anywhere: the alerts on the backlog's age and on a lag that cannot be read had nothing under them
  it('reads the age of the oldest entry not copied; a reading that fails counts in rm_snapshot_errors_total{where="lag"}', async () => {
    const prefix = testPrefix('lagage');
    const keys = new Keys(prefix);
    const client = createRedis({ redisUrl: SHARED_REDIS_URL, redisClusterNodes: [] });
    const lagSeconds = async () => Number(/^rm_snapshot_lag_seconds (\S+)$/m.exec(await registry.getSingleMetricAsString('rm_snapshot_lag_seconds'))?.[1]);
    const lagErrors = async () => (await snapshotMetrics().errors.get()).values.find((v) => v.labels.where === 'lag')?.value ?? 0;
    const lag = reportLag(client, prefix, 100);
    try {
      // an entry written a minute ago, by its id (Redis' clock: the lag is read against Redis TIME)
      const [sec] = (await client.time()) as unknown as [string, string];
      await client.xadd(keys.events(3), `${Number(sec) * 1000 - 60_000}-1`, 'type', 'generated');
      await until(lagSeconds, (v) => v >= 60 && v < 600, 'the age of the entry');
      const before = await lagErrors();
      await client.set(keys.events(4), 'not a stream'); // fails every reading (WRONGTYPE)
      await until(lagErrors, (n) => n > before, 'the failed reading counted');
    } finally {
      await lag.stop();
      await dropPrefix(client, prefix);
      client.disconnect();
    }
  });
});

describe('an idle snapshot writer', () => {
  // it polled every shard's stream (a script each, 64) 20 times a second however long nothing happened
  it('polls quiet streams less and less often (up to twice a second), and still copies the next change', async () => {
    const redis = await privateRedis();
    await redis.start();
    const db = await testDatabase();
    const client = createRedis({ redisUrl: redis.url, redisClusterNodes: [] });
    let writer: SnapshotWriter | undefined;
    try {
      writer = await startSnapshotWriter(loadConfig({ redisUrl: redis.url, keyPrefix: 'idle', databaseUrl: db.url }), { log: () => {} });
      await until(async () => writer!.status().leader, (l) => l, 'the writer holding its lease');
      const scripts = async () => Number(/^cmdstat_evalsha:calls=(\d+)/m.exec(await client.info('commandstats'))?.[1] ?? 0);
      await sleep(2000); // quiet long enough for the longest pause
      const before = await scripts();
      await sleep(3000);
      const perSecond = ((await scripts()) - before) / 3;
      // twice a second, 64 shards each: ~130 (1,235 before: every 50 ms)
      expect(perSecond).toBeLessThan(250);
      const engine = new TokenEngine(new TokenStore(client, 'idle', NO_REPLICA_WAIT));
      const [made] = (await engine.generate({ owners: [{ ownerSatelliteId: 's', ownerUserId: 'u' }], perUser: 1, campaignId: 'c' })).tokens;
      const pool = new pg.Pool({ connectionString: db.url });
      try {
        await until(async () => (await pool.query('SELECT 1 FROM tokens WHERE token = $1', [made!.token])).rowCount, (n) => n === 1, 'the change copied');
      } finally {
        await pool.end();
      }
    } finally {
      await writer?.stop();
      client.disconnect();
      await db.drop();
      await redis.dispose();
    }
  }, 60_000);
});
