import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scanTokens } from '../src/store/export.js';
import { placeOfOwner } from '../src/store/keys.js';
import { TokenStore } from '../src/store/token-store.js';
import { TokenEngine } from '../src/tokens/engine.js';
import { privateRedisClient } from './helpers/redis.js';
import { NO_REPLICA_WAIT } from '../src/store/replicas.js';

// One owner with thousands of tokens makes its bucket a hashtable of thousands of fields. Every script that
// reads an owner or sweeps buckets must take it a page at a time: one call reading it whole holds every other
// client of Redis meanwhile (100k tokens: 0.4 s for a list, 1.3 s for a revoke). A private redis-server, so
// INFO commandstats counts this file's calls alone.
describe('an owner with thousands of tokens: read and swept a page per call', () => {
  let p: Awaited<ReturnType<typeof privateRedisClient>>;
  let engine: TokenEngine;
  const SAT = 'sat-big';
  const BIG = 5000;

  beforeAll(async () => {
    p = await privateRedisClient();
    engine = new TokenEngine(new TokenStore(p.redis, 'huge', NO_REPLICA_WAIT));
    await engine.store.preload();
  });
  afterAll(async () => {
    await p?.close();
  });

  /** The result of `call` and how many scripts it ran. */
  async function counted<T>(call: () => Promise<T>): Promise<{ value: T; calls: number }> {
    // ioredis sends a script's first call on a connection as EVAL, later ones as EVALSHA
    const calls = async () => [...(await p.redis.info('commandstats')).matchAll(/^cmdstat_eval(?:sha)?:calls=(\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0);
    const before = await calls();
    const value = await call();
    return { value, calls: (await calls()) - before };
  }

  async function bigOwner(user: string, campaignId: string): Promise<string[]> {
    const made: string[] = [];
    for (let n = 0; n < BIG; n += 2500) {
      made.push(...(await engine.generate({ owners: [{ ownerSatelliteId: SAT, ownerUserId: user }], perUser: 2500, campaignId })).tokens.map((t) => t.token));
    }
    const place = placeOfOwner(SAT, user);
    expect(await p.redis.object('ENCODING', engine.store.keys.bucket(place.shard, place.bucket))).toBe('hashtable');
    return made;
  }

  it('list, redemptions and an owner revoke: every token exactly once, in many calls', async () => {
    const made = await bigOwner('big', 'camp-a');
    const redeemed = made.slice(0, 10);
    for (const t of redeemed) expect((await engine.redeem(t, 'other-sat', `new-${t}`)).code).toBe('ok');
    expect((await engine.reserve(made[10]!, 'other-sat', 60_000)).code).toBe('ok');
    expect((await engine.revokeToken(made[11]!)).code).toBe('ok');
    const open = made.slice(12);

    const listed = await counted(() => engine.listUnredeemed(SAT, 'big'));
    expect(listed.value.map((t) => t.token).sort()).toEqual([...open].sort());
    expect(listed.calls).toBeGreaterThanOrEqual(10);

    const rewarded = await counted(() => engine.listRedeemed(SAT, 'big'));
    expect(rewarded.value.map((t) => t.token).sort()).toEqual([...redeemed].sort());
    expect(rewarded.calls).toBeGreaterThanOrEqual(10);

    const revoked = await counted(() => engine.revokeOwner(SAT, 'big'));
    // the open ones and the reserved one; the redeemed and the revoked one stay as they are
    expect(revoked.value).toBe(open.length + 1);
    expect(revoked.calls).toBeGreaterThanOrEqual(10);
    expect(await engine.listUnredeemed(SAT, 'big')).toEqual([]);
    expect((await engine.lookup(made[0]!))?.state).toBe('redeemed');
    expect((await engine.stats()).satellites[SAT]).toMatchObject({ generated: BIG, redeemed: 10, revoked: BIG - 10 });
  });

  it('campaign and satellite revokes and purge sweep through the big bucket over many calls, each token once', async () => {
    const camp = await bigOwner('big-2', 'camp-b');
    const small = (await engine.generate({ owners: [{ ownerSatelliteId: SAT, ownerUserId: 'small' }], perUser: 3, campaignId: 'camp-b' })).tokens.map((t) => t.token);
    // a sweep call stops after about 1,000 units of work, a token revoked counting 16: thousands of
    // revokes in one bucket need dozens of calls besides the 64 shards' first
    const byCampaign = await counted(() => engine.revokeCampaign('camp-b'));
    expect(byCampaign.value).toBe(BIG + small.length);
    expect(byCampaign.calls).toBeGreaterThanOrEqual(64 + (BIG * 16) / 1000);

    await bigOwner('big-3', 'camp-c');
    const bySatellite = await counted(() => engine.revokeSatellite(SAT));
    expect(bySatellite.value).toBe(BIG);
    expect(bySatellite.calls).toBeGreaterThanOrEqual(64 + (BIG * 16) / 1000);

    // every revoked token of the three big owners and the small one, whose records are read 1 each
    const purged = await counted(() => engine.purge(Date.now() + 1));
    expect(purged.value).toBe(3 * BIG - 10 + small.length);
    expect(purged.calls).toBeGreaterThanOrEqual(64 + (3 * BIG * 16) / 1000);
    expect(await engine.lookup(camp[0]!)).toBeUndefined();
    expect((await engine.listRedeemed(SAT, 'big')).length).toBe(10);
  });

  // export read the redemption (and reservation) records of a page's tokens with one HMGET, every field an
  // argument of one call: past ~125,000 (one owner's tokens share a bucket, so a shard) that overflowed the
  // stack, and `export` stopped with "Maximum call stack size exceeded" (exit 1) after a few rows
  it('export: an owner with more redeemed tokens than one call takes arguments, every token once', async () => {
    const N = 130_000;
    const made: string[] = [];
    for (let n = 0; n < N; n += 10_000) {
      made.push(...(await engine.generate({ owners: [{ ownerSatelliteId: SAT, ownerUserId: 'famous' }], perUser: 10_000, campaignId: 'camp-x' })).tokens.map((t) => t.token));
    }
    for (let i = 0; i < N; i += 2000) {
      const done = await Promise.all(made.slice(i, i + 2000).map((t, j) => engine.redeem(t, 'other-sat', `joiner-${i + j}`)));
      expect(done.every((r) => r.code === 'ok')).toBe(true);
    }
    const rows = new Map<string, string[]>();
    for await (const page of scanTokens(p.redis, 'huge', { campaignId: 'camp-x' })) for (const r of page) rows.set(r[0]!, r);
    expect(rows.size).toBe(N);
    const sample = rows.get(made[N - 1]!)!;
    expect([sample[1], sample[2], sample[3], sample[10], sample[11]]).toEqual(['redeemed', SAT, 'famous', 'other-sat', `joiner-${N - 1}`]);
    expect([...rows.values()].every((r) => r[1] === 'redeemed' && r[12] !== '')).toBe(true);
  }, 180_000);
});
