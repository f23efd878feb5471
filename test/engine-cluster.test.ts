import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { SCRIPT_NAMES, readScript } from '../src/store/scripts.js';
import { placeOfToken } from '../src/store/keys.js';
import type { Cluster } from 'ioredis';
import { createRedis, masters, readyMasters } from '../src/store/redis.js';
import { hasRedisServer, startCluster, type RedisClusterHandle } from '../bench/redis-server.js';
import { engineSuite } from './helpers/engine-suite.js';
import { engineFixture, type EngineFixture } from './helpers/redis.js';
import { TokenStore } from '../src/store/token-store.js';
import { NO_REPLICA_WAIT } from '../src/store/replicas.js';

const available = hasRedisServer();
const reason = 'redis-server is not installed (`redis-server --version` failed), so no Redis Cluster can be started';
if (!available) console.warn(`test/engine-cluster.test.ts: skipping the token engine suite on Redis Cluster: ${reason}`);

let cluster: RedisClusterHandle | undefined;
const clusterFixture = () => engineFixture({ redis: () => createRedis({ redisUrl: '', redisClusterNodes: cluster!.nodes }), label: 'cluster' });

(available ? describe : describe.skip)(available ? 'a real 3-master Redis Cluster' : `a real 3-master Redis Cluster (skipped: ${reason})`, () => {
  beforeAll(async () => {
    cluster = await startCluster();
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  engineSuite('token engine on Redis Cluster', clusterFixture);

  describe('cross-slot safety', () => {
    let f: EngineFixture;
    beforeAll(async () => {
      f = await clusterFixture();
    });
    afterAll(async () => {
      await f?.close();
    });

    it('preload has loaded every script on every master (what /readyz reports)', async () => {
      for (const name of SCRIPT_NAMES) {
        const sha = createHash('sha1').update(readScript(name)).digest('hex');
        const loaded = await Promise.all(masters(f.redis).map((m) => m.script('EXISTS', sha) as Promise<number[]>));
        expect(loaded.map((r) => r[0]), name).toEqual([1, 1, 1]);
      }
    });

    it('readyMasters on a connecting client waits for the slot map, with one listener pair for any number of callers, and leaves none behind', async () => {
      const client = createRedis({ redisUrl: '', redisClusterNodes: cluster!.nodes }) as Cluster;
      try {
        const base = { ready: client.listenerCount('ready'), end: client.listenerCount('end') };
        expect(client.status).not.toBe('ready');
        const waits = Array.from({ length: 20 }, () => readyMasters(client));
        // one shared wait, not a listener pair per caller (20 of them set off MaxListenersExceededWarning)
        expect({ ready: client.listenerCount('ready'), end: client.listenerCount('end') }).toEqual({ ready: base.ready + 1, end: base.end + 1 });
        const got = await Promise.all(waits);
        expect(got.map((m) => m.length)).toEqual(new Array(20).fill(3));
        expect({ ready: client.listenerCount('ready'), end: client.listenerCount('end') }).toEqual(base);
      } finally {
        client.disconnect();
      }
    });

    it('sends the commands of one event-loop turn to each master in a handful of writes', async () => {
      const nodes = masters(f.redis);
      const reads = () => Promise.all(nodes.map(async (n) => Number(/total_reads_processed:(\d+)/.exec(await n.info('stats'))?.[1])));
      const before = await reads();
      // 30 hash tags spread over the 3 masters, 300 commands in one turn
      const replies = await Promise.all(Array.from({ length: 300 }, (_, i) => f.redis.incr(`${f.prefix}:{n${i % 30}}:c`)));
      const after = await reads();
      expect(replies.filter((r) => r === 10)).toHaveLength(30);
      // per master: its ~100 commands, plus the second INFO; one write per command would be ~100 reads
      for (let i = 0; i < nodes.length; i++) expect(after[i]! - before[i]!, `master ${i}`).toBeLessThanOrEqual(6);
    });

    it('spreads one call\'s tokens over every master, each token with its shard\'s keys on one master', async () => {
      const owners = Array.from({ length: 300 }, (_, i) => ({ ownerSatelliteId: 'sat-x', ownerUserId: `spread-${i}` }));
      const { tokens, campaignId } = await f.engine.generate({ owners, perUser: 2 });
      const nodes = masters(f.redis);
      expect(nodes).toHaveLength(3);

      // the prefix's keys on each master (a node answers MOVED for keys it does not own, so SCAN each)
      const perMaster = await Promise.all(
        nodes.map(async (node) => {
          const found = new Set<string>();
          let cursor = '0';
          do {
            const [next, keys] = await node.scan(cursor, 'MATCH', `${f.prefix}:*`, 'COUNT', 1000);
            cursor = next;
            for (const k of keys) found.add(k);
          } while (cursor !== '0');
          return found;
        }),
      );
      expect(perMaster.filter((keys) => keys.size > 0).length).toBeGreaterThan(1);

      // a token's bucket and its shard's dict, stats and event stream all live on one master
      const k = f.store.keys;
      const byMaster = new Map<number, string>();
      for (const { token } of tokens) {
        const place = placeOfToken(token.replace(/-/g, ''));
        const own = [k.bucket(place.shard, place.bucket), k.dict(place.shard), k.stats(place.shard), k.events(place.shard)];
        const holders = perMaster.map((keys) => own.filter((key) => keys.has(key)).length);
        expect(holders.filter((n) => n > 0), token).toHaveLength(1);
        expect(Math.max(...holders), token).toBe(own.length);
        const i = holders.findIndex((n) => n > 0);
        if (!byMaster.has(i)) byMaster.set(i, token);
      }
      // 64 shard tags over 3 masters: every master holds some
      expect(byMaster.size).toBe(3);

      // and every operation works wherever the token lives
      for (const token of byMaster.values()) {
        const r = await f.engine.reserve(token, 'sat-y', 60_000);
        expect(r.code).toBe('ok');
        expect((await f.engine.complete(token, r.token!.reservationId!, 'new')).code).toBe('ok');
        expect((await f.engine.redeem(token, 'sat-z', 'other')).code).toBe('already_redeemed');
      }
      expect(await f.engine.revokeCampaign(campaignId)).toBe(tokens.length - byMaster.size);
      const stats = await f.engine.stats();
      expect(stats.satellites['sat-x']).toEqual({ generated: 600, unredeemed: 0, reserved: 0, redeemed: 3, revoked: 597, purged: 0 });
    });

    // serve's workers preload before they listen, and generate before it makes anything: one master hanging with
    // its connection up held them for ever (serve never listened, so the other masters' slots went unserved too)
    it('preload gives up on a master that hangs (SIGSTOP), naming it, instead of waiting for ever', async () => {
      const client = createRedis({ redisUrl: '', redisClusterNodes: cluster!.nodes });
      const store = new TokenStore(client, f.prefix, NO_REPLICA_WAIT);
      await readyMasters(client);
      await cluster!.signal(2, 'SIGSTOP');
      try {
        const late = new Promise<string>((resolve) => setTimeout(() => resolve('still waiting after 30 s'), 30_000));
        const got = await Promise.race([store.preload().then(() => 'loaded', (err: Error) => err.message), late]);
        expect(got).toBe(`loading the scripts on ${cluster!.nodes[2]}: no answer within 5000 ms`);
      } finally {
        await cluster!.signal(2, 'SIGCONT');
        client.disconnect();
      }
    }, 60_000);
  });
});
