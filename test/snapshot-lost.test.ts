import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findLostShards } from '../src/snapshot/lost.js';
import { restoreFromPostgres } from '../src/snapshot/restore.js';
import { shardRange } from '../src/snapshot/rows.js';
import { Keys } from '../src/store/keys.js';
import { createRedis } from '../src/store/redis.js';
import { hasRedisServer, type RedisClusterHandle } from '../bench/redis-server.js';
import { testCluster } from './helpers/http.js';
import { privateRedisClient } from './helpers/redis.js';
import { snapshotFixture } from './helpers/snapshot.js';

// the marks' upgrade (a deployment from before them) on a Cluster too, whose shards are spread over its masters
for (const on of ['standalone', 'cluster'] as const) {
  describe.skipIf(on === 'cluster' && !hasRedisServer())(`findLostShards (real Redis ${on}, real Postgres)`, () => {
    let cluster: RedisClusterHandle | undefined;
    // before the fixture's: its engine connects to the Cluster (and after it, which drops its keys there, stopped)
    beforeAll(async () => {
      if (on === 'cluster') cluster = await testCluster(3, []);
    });
    afterAll(async () => await cluster?.stop());
    const snap = snapshotFixture('lostsh', on === 'cluster' ? () => createRedis({ redisUrl: '', redisClusterNodes: cluster!.nodes }) : undefined);

    // a shard whose every token was purged is empty in Redis as it should be: taken for lost, /readyz stayed 503
    // naming it until a restore that had nothing to bring back
    it('an unmarked shard whose rows in Postgres are all purged is marked, not lost; one with a row not purged is lost', async () => {
      await snap.pool.query('INSERT INTO shard_marks (prefix, since) VALUES ($1, 1)', [snap.fx.prefix]);
      const row = (token: string, purged: number | null) => snap.pool.query(`INSERT INTO tokens (token, state, owner_satellite_id, owner_user_id, campaign_id, created_at, ev_shard, ev_ms, ev_seq, purged_at)
        VALUES ($1, 'revoked', 'sat-a', 'u', 'c', 1, 0, 1, 0, $2)`, [token, purged]);
      await row(shardRange(2)[0].replace(/0000-0000-0000-0000-000000000000$/, '0000-0000-4000-8000-000000000001'), 5);
      await row(shardRange(3)[0].replace(/0000-0000-0000-0000-000000000000$/, '0000-0000-4000-8000-000000000001'), null);
      expect(await findLostShards(snap.fx.redis, snap.pool, snap.fx.prefix, (step) => step())).toEqual([3]);
      expect(await snap.fx.redis.exists(new Keys(snap.fx.prefix).intact(2))).toBe(1);
    });

    // rehearsing the upgrade, a restore from the live snapshot into a scratch Redis recorded the prefix's marks as
    // installed: the live Redis, from before the marks, then had every shard holding tokens found lost (503 /readyz)
    it('a restore into another Redis does not make a deployment from before the marks look lost', async () => {
      // the fixture's second prefix, which it drops after the file: one of this test's own was left in the shared Redis
      const prefix = snap.other;
      const keys = new Keys(prefix);
      await snap.pool.query('DELETE FROM tokens');
      await snap.pool.query(`INSERT INTO tokens (token, state, owner_satellite_id, owner_user_id, campaign_id, created_at, ev_shard, ev_ms, ev_seq)
        VALUES ($1, 'unredeemed', 'sat-a', 'u', 'c', 1, 5, 1, 0)`, [shardRange(5)[0].replace(/0000-0000-0000-0000-000000000000$/, '0000-0000-4000-8000-000000000001')]);
      // the live Redis as an older release left it: the shard's data (its dictionary), no marks
      await snap.fx.redis.hset(keys.dict(5), 's\tsat-a', '1', 'S1', 'sat-a', 'ns', '1');
      const scratch = await privateRedisClient();
      try {
        await restoreFromPostgres(scratch.redis, snap.pool, prefix);
      } finally {
        await scratch.close();
      }
      expect(await findLostShards(snap.fx.redis, snap.pool, prefix, (step) => step())).toEqual([]);
      expect(await snap.fx.redis.exists(keys.intact(5))).toBe(1);
      // the writer records the marks of the Redis it serves: from now on an unmarked shard is lost there
      expect((await snap.pool.query('SELECT 1 FROM shard_marks WHERE prefix = $1', [prefix])).rowCount).toBe(1);
      await snap.fx.redis.del(keys.intact(5), keys.dict(5));
      expect(await findLostShards(snap.fx.redis, snap.pool, prefix, (step) => step())).toEqual([5]);
    });
  });
}
