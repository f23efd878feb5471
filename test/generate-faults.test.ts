import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Cluster } from 'ioredis';
import { hasRedisServer, startCluster, type RedisClusterHandle } from '../bench/redis-server.js';
import { SHARDS, placeOfOwner } from '../src/store/keys.js';
import { createRedis } from '../src/store/redis.js';
import { engineFixture, type EngineFixture } from './helpers/redis.js';

/** Users of satellite `sat`: two in one shard (different buckets), one in another shard. */
function owners(): { a: string; b: string; c: string } {
  const users = Array.from({ length: 2000 }, (_, i) => `u${i}`);
  const at = (u: string) => placeOfOwner('sat', u);
  for (const a of users) {
    const b = users.find((u) => u !== a && at(u).shard === at(a).shard && at(u).bucket !== at(a).bucket);
    const c = users.find((u) => at(u).shard !== at(a).shard);
    if (b && c) return { a, b, c };
  }
  throw new Error('no such users');
}

describe('generate: a shard whose script fails leaves no usable token anywhere', () => {
  let fx: EngineFixture;
  const { a, b, c } = owners();

  beforeAll(async () => {
    fx = await engineFixture({ label: 'genfault' });
  });
  afterAll(async () => {
    await fx?.close();
  });

  /** generated / revoked events per type over every shard's stream */
  const events = async () => {
    const all = await Promise.all(Array.from({ length: SHARDS }, (_, s) => fx.redis.xrange(fx.store.keys.events(s), '-', '+')));
    const n: Record<string, number> = {};
    for (const [, fields] of all.flat()) n[fields[1]!] = (n[fields[1]!] ?? 0) + 1;
    return n;
  };

  it('tokens made on other shards and earlier in the failing script are revoked, with their events', async () => {
    const pb = placeOfOwner('sat', b);
    // a real fault: b's bucket holds a string, so the script of a and b's shard fails at b, after writing a's
    // tokens (a Lua script is not rolled back), while c's shard succeeds
    await fx.redis.set(fx.store.keys.bucket(pb.shard, pb.bucket), 'not a hash');
    const owner = (u: string) => ({ ownerSatelliteId: 'sat', ownerUserId: u });
    await expect(fx.engine.generate({ owners: [owner(a), owner(b), owner(c)], perUser: 3, campaignId: 'k1' })).rejects.toThrow(/WRONGTYPE/);
    expect(await fx.engine.listUnredeemed('sat', a)).toEqual([]);
    expect(await fx.engine.listUnredeemed('sat', c)).toEqual([]);
    const stats = (await fx.engine.stats()).satellites.sat!;
    expect(stats).toMatchObject({ generated: 6, unredeemed: 0, revoked: 6 });
    // every change reached the stream, so the snapshot holds the same revoked tokens
    expect(await events()).toEqual({ generated: 6, revoked: 6 });
    await fx.redis.del(fx.store.keys.bucket(pb.shard, pb.bucket));

    // the same request again succeeds
    const again = await fx.engine.generate({ owners: [owner(a), owner(b), owner(c)], perUser: 3, campaignId: 'k1' });
    expect(again.tokens).toHaveLength(9);
    expect(await fx.engine.listUnredeemed('sat', a)).toHaveLength(3);
  });

  it('a caller that stopped waiting (HTTP deadline) gets no tokens left behind', async () => {
    const stop = new AbortController();
    const made = fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat2', ownerUserId: a }, { ownerSatelliteId: 'sat2', ownerUserId: c }], perUser: 2, signal: stop.signal });
    // the scripts are on their way to Redis; the caller gives up before they answer
    stop.abort();
    await expect(made).rejects.toThrow(/stopped waiting/);
    expect((await fx.engine.stats()).satellites.sat2).toMatchObject({ generated: 4, unredeemed: 0, revoked: 4 });
  });
});

const available = hasRedisServer();
(available ? describe : describe.skip)('generate on a Redis Cluster with one master down', () => {
  let cluster: RedisClusterHandle | undefined;
  let fx: EngineFixture;

  beforeAll(async () => {
    // the other masters keep serving their slots while one is down, however long the test takes
    cluster = await startCluster(3, ['--cluster-require-full-coverage', 'no']);
    fx = await engineFixture({ redis: () => createRedis({ redisUrl: '', redisClusterNodes: cluster!.nodes }, { failFast: true }), label: 'genmaster' });
  });
  afterAll(async () => {
    fx?.redis.disconnect();
    await cluster?.stop();
  });

  it('the tokens made on the masters still up are revoked before the error is answered', async () => {
    const users = Array.from({ length: 60 }, (_, i) => `m${i}`);
    // a real fault: the master holding the first user's shard stops (SHUTDOWN, its process exits)
    const cluster = fx.redis as Cluster;
    const slot = Number(await cluster.call('CLUSTER', 'KEYSLOT', fx.store.keys.dict(placeOfOwner('sat', users[0]!).shard)));
    const down = cluster.nodes('master').find((m) => `${m.options.host}:${m.options.port}` === cluster.slots[slot]![0]);
    expect(down).toBeDefined();
    await down!.call('SHUTDOWN', 'NOSAVE').catch(() => undefined);
    await expect(fx.engine.generate({ owners: users.map((u) => ({ ownerSatelliteId: 'sat', ownerUserId: u })), perUser: 2, campaignId: 'm' })).rejects.toThrow();

    const lists = await Promise.all(users.map((u) => fx.engine.listUnredeemed('sat', u).catch(() => 'down' as const)));
    const up = lists.filter((l) => l !== 'down');
    // owners on both the stopped master and the others
    expect(up.length).toBeGreaterThan(0);
    expect(up.length).toBeLessThan(users.length);
    expect(up.flat()).toEqual([]);
    // each token made on a master that is up has its generated and its revoked event
    const shards = [...new Set(users.filter((_, i) => lists[i] !== 'down').map((u) => placeOfOwner('sat', u).shard))];
    const entries = (await Promise.all(shards.map((s) => fx.redis.xrange(fx.store.keys.events(s), '-', '+')))).flat();
    const types = entries.map(([, f]) => f[1]);
    expect(types.filter((t) => t === 'generated')).toHaveLength(up.length * 2);
    expect(types.filter((t) => t === 'revoked')).toHaveLength(up.length * 2);
  });
});
