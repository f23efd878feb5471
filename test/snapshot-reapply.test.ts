import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reapplyRows } from '../src/snapshot/reapply.js';
import { readShardRows, type Row } from '../src/snapshot/rows.js';
import { hexOf } from '../src/store/codec.js';
import { Keys, placeOfToken } from '../src/store/keys.js';
import { NO_REPLICA_WAIT } from '../src/store/replicas.js';
import { TokenStore } from '../src/store/token-store.js';
import { TokenEngine } from '../src/tokens/engine.js';
import { dropPrefix, engineFixture, testPrefix, type EngineFixture } from './helpers/redis.js';

// verify --repair-redis, one shard's rows at a time (lua/reapply.lua through reapplyRows), with the rows Postgres
// would hold made by a real engine: the end-to-end test (snapshot-faults) loses only plain redeems and revokes
describe('reapplyRows: a Redis that went back in time gets the final states Postgres holds (real Redis)', () => {
  let fx: EngineFixture;
  let other: string;
  beforeAll(async () => {
    fx = await engineFixture({ label: 'reapply' });
    other = testPrefix('reapply-back');
  });
  afterAll(async () => {
    await dropPrefix(fx.redis, other);
    await fx.close();
  });

  const shardOf = (t: string) => placeOfToken(hexOf(t)).shard;
  const rowOf = async (prefix: string, t: string): Promise<Row> => (await readShardRows(fx.redis, new Keys(prefix), shardOf(t))).get(t)!;

  it('keeps the redemption as it was made (reservation id, redeemer, time) and never overwrites a change made since', async () => {
    // one owner's tokens share a bucket, so a shard
    const made = await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'alice' }], perUser: 4 });
    const [viaReserve, plain, since, lost] = made.tokens.map((t) => t.token) as [string, string, string, string];
    const shard = shardOf(viaReserve);
    const open = await Promise.all([viaReserve, plain, since].map((t) => rowOf(fx.prefix, t)));
    // the Redis that went back: the tokens as they were before the changes below
    expect(await reapplyRows(fx.redis, other, shard, [], open)).toBe(3);

    expect((await fx.engine.reserve(viaReserve, 'sat-b', 60_000, 'res-1')).code).toBe('ok');
    expect((await fx.engine.complete(viaReserve, 'res-1', 'bob')).code).toBe('ok');
    expect((await fx.engine.redeem(plain, 'sat-c', 'carol')).code).toBe('ok');
    expect((await fx.engine.redeem(since, 'sat-c', 'dan')).code).toBe('ok');
    expect((await fx.engine.reserve(lost, 'sat-b', 60_000, 'res-2')).code).toBe('ok');
    expect((await fx.engine.complete(lost, 'res-2', 'frank')).code).toBe('ok');
    const final = await Promise.all([viaReserve, plain, since, lost].map((t) => rowOf(fx.prefix, t)));
    expect(final[0]!.slice(7, 9)).toEqual(['res-1', 'sat-b']);

    // redeemed again since the comparison, on the Redis that went back: that redemption stands
    const back = new TokenEngine(new TokenStore(fx.redis, other, NO_REPLICA_WAIT));
    expect((await back.redeem(since, 'sat-d', 'erin')).code).toBe('ok');
    const sinceRow = await rowOf(other, since);
    await sleep(5); // a redemption time taken from the clock as it runs would differ
    // the Redis that went back lacks `lost` (made after its copy): written back as Postgres holds it
    expect(await reapplyRows(fx.redis, other, shard, final.slice(0, 3), final.slice(3))).toBe(3);
    expect(await rowOf(other, viaReserve)).toEqual(final[0]);
    expect(await rowOf(other, plain)).toEqual(final[1]);
    expect(await rowOf(other, since)).toEqual(sinceRow);
    expect(await rowOf(other, lost)).toEqual(final[3]);
    expect(final[3]!.slice(7, 12)).toEqual(['res-2', 'sat-b', '', 'sat-b', 'frank']);
    expect(sinceRow.slice(10, 12)).toEqual(['sat-d', 'erin']);
    // the counters moved with the tokens, the redemption matrix too
    expect(await back.stats()).toEqual({
      satellites: { 'sat-a': { generated: 4, unredeemed: 0, reserved: 0, redeemed: 4, revoked: 0, purged: 0 } },
      redemptions: [
        { ownerSatelliteId: 'sat-a', redeemerSatelliteId: 'sat-b', count: 2 },
        { ownerSatelliteId: 'sat-a', redeemerSatelliteId: 'sat-c', count: 1 },
        { ownerSatelliteId: 'sat-a', redeemerSatelliteId: 'sat-d', count: 1 },
      ],
    });
    // a reservation id of the redemption answers a repeated complete, as on the Redis that kept it
    expect((await back.complete(viaReserve, 'res-1', 'bob')).code).toBe('ok');
    expect((await back.complete(lost, 'res-2', 'frank')).code).toBe('ok');
  });

  // the end-to-end test loses only redeems of unredeemed tokens: a token the Redis that went back holds reserved
  // is open too, and a revocation is a final state as much as a redemption
  it('gives a token held reserved the redemption Postgres holds, dropping its reservation and lease entry, and a revoked token its revocation', async () => {
    const made = await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'bea' }], perUser: 2 });
    const [held, gone] = made.tokens.map((t) => t.token) as [string, string];
    const shard = shardOf(held);
    expect(await reapplyRows(fx.redis, other, shard, [], await Promise.all([held, gone].map((t) => rowOf(fx.prefix, t))))).toBe(2);
    const back = new TokenEngine(new TokenStore(fx.redis, other, NO_REPLICA_WAIT));
    expect((await back.reserve(held, 'sat-d', 60_000, 'res-back')).code).toBe('ok');
    expect((await fx.engine.redeem(held, 'sat-c', 'gail')).code).toBe('ok');
    expect((await fx.engine.revokeToken(gone)).code).toBe('ok');
    const final = await Promise.all([held, gone].map((t) => rowOf(fx.prefix, t)));
    expect(await reapplyRows(fx.redis, other, shard, final, [])).toBe(2);
    expect(await rowOf(other, held)).toEqual(final[0]);
    expect(await rowOf(other, gone)).toEqual(final[1]);
    expect(await fx.redis.zscore(new Keys(other).leases(shard), hexOf(held))).toBeNull();
    expect(await fx.redis.hexists(new Keys(other).reservations(shard), hexOf(held).slice(4))).toBe(0);
    expect((await back.redeem(gone, 'sat-c', 'hal')).code).toBe('revoked');
  });

  // reapplyRows sends its calls IN_FLIGHT (100) at a time: a shard that lost more redemptions than that
  it('gives back every one of more than 100 redemptions of a shard', async () => {
    const made = await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'many' }], perUser: 101 });
    const tokens = made.tokens.map((t) => t.token);
    const shard = shardOf(tokens[0]!);
    const rows = await readShardRows(fx.redis, new Keys(fx.prefix), shard);
    expect(await reapplyRows(fx.redis, other, shard, [], tokens.map((t) => rows.get(t)!))).toBe(101);
    for (const [i, t] of tokens.entries()) expect((await fx.engine.redeem(t, 'sat-c', `m${i}`)).code).toBe('ok');
    const after = await readShardRows(fx.redis, new Keys(fx.prefix), shard);
    expect(await reapplyRows(fx.redis, other, shard, tokens.map((t) => after.get(t)!), [])).toBe(101);
    const back = await readShardRows(fx.redis, new Keys(other), shard);
    expect(tokens.filter((t) => back.get(t)![1] !== 'redeemed')).toEqual([]);
  });
});
