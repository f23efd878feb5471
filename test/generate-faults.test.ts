import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SHARDS, placeOfOwner } from '../src/store/keys.js';
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
