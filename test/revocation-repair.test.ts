import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openPostgres, rebuildRedis, verify } from '../src/snapshot/index.js';
import { Keys, placeOfOwner, SHARDS } from '../src/store/keys.js';
import { createRedis } from '../src/store/redis.js';
import { hasRedisServer, type RedisClusterHandle } from '../bench/redis-server.js';
import { runCli } from './helpers/cli.js';
import { testCluster } from './helpers/http.js';
import { SHARED_REDIS_URL } from './helpers/redis.js';
import { snapshotFixture } from './helpers/snapshot.js';

/** A user of sat-a whose tokens land on `shard`. */
function userOnShard(shard: number): string {
  for (let i = 0; ; i++) if (placeOfOwner('sat-a', `u${i}`).shard === shard) return `u${i}`;
}

/**
 * Revocations an older release left (admin-route ones from before the registry: only the shards' marks hold
 * them), repaired and kept through a forced restore, on a single Redis and on a 3-master Cluster, whose
 * shards' marks and registry are on different masters.
 */
for (const on of ['standalone', 'cluster'] as const) {
  describe.skipIf(on === 'cluster' && !hasRedisServer())(`verify finds revoked campaigns the registry and the shards disagree on; --repair-revocations mends them (real Redis ${on}, real Postgres)`, () => {
    let cluster: RedisClusterHandle | undefined;
    // before the fixture's: its engine connects to the Cluster (and after it, which drops its keys there, stopped)
    beforeAll(async () => {
      if (on === 'cluster') cluster = await testCluster(3, []);
    });
    afterAll(async () => await cluster?.stop());
    const snap = snapshotFixture('rvkfix', on === 'cluster' ? () => createRedis({ redisUrl: '', redisClusterNodes: cluster!.nodes }) : undefined);
    let keys: Keys;
    /** the CLI's connection to that Redis */
    let redisEnv: Record<string, string>;
    beforeAll(() => {
      keys = new Keys(snap.fx.prefix);
      redisEnv = cluster ? { REDIS_CLUSTER_NODES: cluster.nodes.join(',') } : { REDIS_URL: SHARED_REDIS_URL };
    });

    it('reports a revoke that missed shards and a revocation only the shards remember; the repair re-marks, sweeps and registers them', async () => {
      const on3 = userOnShard(3);
      const gen = (campaignId: string, userId: string) => snap.fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: userId }], perUser: 1, campaignId });
      await gen('half', on3);
      await gen('old', on3);
      // no writer runs: Postgres stays empty, and only the differences inside Redis matter here
      const gapsIn = async () => (await verify(snap.fx.redis, snap.pool, snap.fx.prefix)).listed.filter((d) => d.kind === 'unmarked' || d.kind === 'unregistered');
      await snap.fx.engine.revokeCampaign('whole');
      expect(await gapsIn()).toEqual([]);

      // a revoke that stopped part-way: registered, but shards 3 and 7 never marked (nor swept)
      await snap.fx.engine.revokeCampaign('half');
      await snap.fx.redis.hdel(keys.dict(3), 'x\thalf');
      await snap.fx.redis.hdel(keys.dict(7), 'x\thalf');
      // an admin-route revocation from before the registry: only the shards' marks remember it
      await snap.fx.engine.revokeCampaign('old');
      const oldAt = Number(await snap.fx.redis.hget(keys.revokedCampaigns(), 'old'));
      await snap.fx.redis.hdel(keys.revokedCampaigns(), 'old');

      // the gap is real: generate still makes tokens of the revoked campaign on shard 3
      const leaked = (await gen('half', on3)).tokens[0]!.token;
      await expect(gen('half', userOnShard(4))).rejects.toMatchObject({ code: 'campaign_revoked' });

      expect(await gapsIn()).toEqual([
        { token: `${keys.revokedCampaigns()}/half`, kind: 'unmarked', shards: [3, 7] },
        { token: `${keys.revokedCampaigns()}/old`, kind: 'unregistered', shards: Array.from({ length: SHARDS }, (_, s) => s) },
      ]);

      const env = { KEY_PREFIX: snap.fx.prefix, ...redisEnv, DATABASE_URL: snap.db.url };
      const text = await runCli(['verify'], env);
      expect(text.code).toBe(1);
      expect(text.stdout).toContain(`${keys.revokedCampaigns()}/half unmarked shards 3,7: generate still makes tokens of this revoked campaign there`);
      expect(text.stderr).toContain('referral-manager verify --repair-revocations');
      // --max caps the list, not the count nor the exit code
      const capped = await runCli(['verify', '--max', '1', '--json'], env);
      const report = JSON.parse(capped.stdout) as { listed: unknown[]; differences: number };
      expect([capped.code, report.listed.length, report.differences > 1]).toEqual([1, 1, true]);

      const repaired = await runCli(['verify', '--repair-revocations', '--json'], env);
      expect(JSON.parse(repaired.stdout).repaired).toEqual({ campaigns: ['half', 'old'], tokensRevoked: 1 });
      expect(await gapsIn()).toEqual([]);
      // the leaked token is swept, shard 3 refuses the campaign now, and the old revocation keeps its time
      expect((await snap.fx.engine.lookup(leaked))?.state).toBe('revoked');
      await expect(gen('half', on3)).rejects.toMatchObject({ code: 'campaign_revoked' });
      expect(Number(await snap.fx.redis.hget(keys.revokedCampaigns(), 'old'))).toBe(oldAt);

      // nothing left to mend: a second repair does nothing
      const again = await runCli(['verify', '--repair-revocations'], env);
      expect(again.stdout).toContain('repaired 0 revoked campaigns, 0 tokens swept');

      // the repair's revokes wait for replicas as every revoke does (REDIS_WAIT_REPLICAS): the shared Redis has none
      await snap.fx.redis.hdel(keys.dict(9), 'x\thalf');
      const unreplicated = await runCli(['verify', '--repair-revocations'], { ...env, REDIS_WAIT_REPLICAS: '1', REDIS_WAIT_MS: '100' });
      expect(unreplicated.code).toBe(1);
      expect(unreplicated.stderr).toContain('NOREPLICAS');

      // the repair needs Redis only: with the snapshot out of reach it still mends, then verify fails
      await snap.fx.redis.hdel(keys.dict(9), 'x\thalf');
      const noSnapshot = { ...env, DATABASE_URL: `${snap.db.url}_missing` };
      const blind = await runCli(['verify', '--repair-revocations'], noSnapshot);
      expect(blind.code).toBe(1);
      expect(blind.stdout).toContain('repaired 1 revoked campaign (half), 0 tokens swept');
      expect(blind.stderr).toMatch(/error: .*does not exist/);
      expect(await gapsIn()).toEqual([]);
      await snap.fx.redis.hdel(keys.dict(9), 'x\thalf');
      const blindJson = await runCli(['verify', '--repair-revocations', '--json'], noSnapshot);
      expect(blindJson.code).toBe(1);
      expect(JSON.parse(blindJson.stdout)).toEqual({ repaired: { campaigns: ['half'], tokensRevoked: 0 } });
      expect(await gapsIn()).toEqual([]);
    });
    it('restore --force keeps every revocation Redis knew about: one the snapshot lacks, and one only the old shards marked', async () => {
      const user = userOnShard(5);
      const gen = (campaignId: string) => snap.fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: user }], perUser: 1, campaignId });
      const before = (await gen('kept')).tokens[0]!.token;
      // no writer runs, so Postgres has neither revocation: 'recent' is only in the registry and the marks,
      // 'marked' (an admin-route revocation from before the registry) only in the marks
      await snap.fx.engine.revokeCampaign('recent');
      await snap.fx.engine.revokeCampaign('marked');
      const markedAt = Number(await snap.fx.redis.hget(keys.revokedCampaigns(), 'marked'));
      await snap.fx.redis.hdel(keys.revokedCampaigns(), 'marked');

      const env = { KEY_PREFIX: snap.fx.prefix, ...redisEnv, DATABASE_URL: snap.db.url };
      // the generate and the revokes are in the streams only (no writer ran): refused unless they may go
      const refused = await runCli(['restore', '--from-postgres', '--force'], env);
      expect([refused.code, refused.stderr]).toEqual([1, expect.stringMatching(/error: \d+ changes in the event streams of .* have not reached Postgres .*--discard-pending/)]);
      expect((await snap.fx.engine.lookup(before))?.token).toBe(before);
      const restored = await runCli(['restore', '--from-postgres', '--force', '--discard-pending'], env);
      expect(restored.code).toBe(0);
      expect(restored.stdout).toContain('registered 1 campaign revocation only the old shards held');
      expect(restored.stdout).toMatch(/^deleted \d+ keys of the engine under /m);
      // these two, and the first test's three
      expect(restored.stdout).toContain('restored 0 campaign revocations; 5 already in Redis, kept as they are');

      // the old shards are gone (the snapshot has no tokens), yet generate still refuses both campaigns
      expect(await snap.fx.engine.lookup(before)).toBeUndefined();
      await expect(gen('recent')).rejects.toMatchObject({ code: 'campaign_revoked' });
      await expect(gen('marked')).rejects.toMatchObject({ code: 'campaign_revoked' });
      expect(Number(await snap.fx.redis.hget(keys.revokedCampaigns(), 'marked'))).toBe(markedAt);
      expect((await gen('kept')).tokens).toHaveLength(1);
    });

    // a restore failing after the wipe said nothing of it: on-call could not tell Redis was already emptied
    it('a forced restore says each change to Redis as it makes it, so one failing after the wipe has said it', async () => {
      await snap.fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'wiped' }], perUser: 2, campaignId: 'wipe' });
      await snap.fx.redis.set(keys.failures('i:1.2.3.0', 1), '3');
      const dead = await openPostgres(snap.db.url);
      await dead.end(); // the restore's first read of Postgres fails, after the wipe
      const said: string[] = [];
      await expect(rebuildRedis(snap.fx.redis, dead, snap.fx.prefix, { force: true, discardPending: true, holder: 'test', say: (l) => said.push(l) })).rejects.toThrow();
      expect(said).toEqual([expect.stringMatching(/^deleted [1-9]\d* keys of the engine under /), 'cleared 1 rate-limit window']);
      expect(await snap.fx.redis.exists(keys.snapshotLease())).toBe(0);
    });
  });
}
