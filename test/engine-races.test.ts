import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRedis } from '../src/store/redis.js';
import { TokenStore } from '../src/store/token-store.js';
import { TokenEngine } from '../src/tokens/engine.js';
import { countsOf, eventMark, expectBalanced, NO_COUNTS, readEvents, redemptionsOf } from './helpers/engine-suite.js';
import { engineFixture, SHARED_REDIS_URL, type EngineFixture } from './helpers/redis.js';
import { NO_REPLICA_WAIT } from '../src/store/replicas.js';

const CONNECTIONS = 20;
const ATTEMPTS = 10_000;

let f: EngineFixture;
/** one engine per connection, all over the same key prefix: 20 independent clients */
let engines: TokenEngine[];

beforeAll(async () => {
  f = await engineFixture({ label: 'races' });
  engines = await Promise.all(
    Array.from({ length: CONNECTIONS }, async (_, i) => {
      const redis = createRedis({ redisUrl: SHARED_REDIS_URL, redisClusterNodes: [] }, { connectionName: `engine-race-${i}` });
      const store = new TokenStore(redis, f.prefix, NO_REPLICA_WAIT);
      await store.preload();
      return new TokenEngine(store);
    }),
  );
});

afterAll(async () => {
  for (const e of engines ?? []) e.store.redis.disconnect();
  await f?.close();
});

async function oneToken(sat: string, user = 'owner'): Promise<string> {
  const r = await f.engine.generate({ owners: [{ ownerSatelliteId: sat, ownerUserId: user }], perUser: 1 });
  return r.tokens[0]!.token;
}

/** Fires every attempt at once (attempt i on connection i % 20 unless told otherwise) and tallies the result codes. */
async function race<R extends { code: string }>(attempts: number, attempt: (engine: TokenEngine, i: number) => Promise<R>, connection = (i: number) => i % CONNECTIONS) {
  const results = await Promise.all(Array.from({ length: attempts }, (_, i) => attempt(engines[connection(i)]!, i)));
  const codes: Record<string, number> = {};
  for (const r of results) codes[r.code] = (codes[r.code] ?? 0) + 1;
  return { results, codes };
}

describe(`${ATTEMPTS} concurrent attempts on one token from ${CONNECTIONS} connections`, () => {
  it('redeem by different redeemers: exactly one ok, all others already_redeemed', async () => {
    const token = await oneToken('race-redeem');
    const mark = await eventMark(f.store);
    const { results, codes } = await race(ATTEMPTS, (e, i) => e.redeem(token, `redeemer-sat-${i % 7}`, `redeemer-${i}`));
    expect(codes).toEqual({ ok: 1, already_redeemed: ATTEMPTS - 1 });
    const winner = results.findIndex((r) => r.code === 'ok');
    const stored = await f.engine.lookup(token);
    expect(stored).toMatchObject({ state: 'redeemed', redeemerSatelliteId: `redeemer-sat-${winner % 7}`, redeemerUserId: `redeemer-${winner}` });
    for (const r of results) expect(r.token).toEqual(stored);
    const events = await readEvents(f.store, mark);
    expect(events.map((e) => [e.type, e.row.token, e.row.redeemerUserId])).toEqual([['redeemed', token, `redeemer-${winner}`]]);
    const stats = await f.engine.stats();
    expect(countsOf(stats, 'race-redeem')).toEqual({ ...NO_COUNTS, generated: 1, redeemed: 1 });
    expect(redemptionsOf(stats, 'race-redeem')).toEqual({ [`redeemer-sat-${winner % 7}`]: 1 });
  });

  it('redeem retried concurrently by one redeemer: all ok, one redemption, one event', async () => {
    const token = await oneToken('race-retry');
    const mark = await eventMark(f.store);
    const { codes } = await race(2000, (e) => e.redeem(token, 'retry-sat', 'retry-user'));
    expect(codes).toEqual({ ok: 2000 });
    expect((await readEvents(f.store, mark)).map((e) => e.type)).toEqual(['redeemed']);
    const stats = await f.engine.stats();
    expect(countsOf(stats, 'race-retry')).toEqual({ ...NO_COUNTS, generated: 1, redeemed: 1 });
    expect(redemptionsOf(stats, 'race-retry')).toEqual({ 'retry-sat': 1 });
  });

  it('reserve: exactly one ok, all others reserved', async () => {
    const token = await oneToken('race-reserve');
    const mark = await eventMark(f.store);
    const { results, codes } = await race(ATTEMPTS, (e, i) => e.reserve(token, `holder-${i}`, 60_000));
    expect(codes).toEqual({ ok: 1, reserved: ATTEMPTS - 1 });
    const won = results.find((r) => r.code === 'ok')!;
    expect(await f.engine.lookup(token)).toEqual(won.token);
    for (const r of results) expect(r.token!.reservationId).toBe(won.token!.reservationId);
    expect((await readEvents(f.store, mark)).map((e) => [e.type, e.row.reservationId])).toEqual([['reserved', won.token!.reservationId]]);
    expect(countsOf(await f.engine.stats(), 'race-reserve')).toEqual({ ...NO_COUNTS, generated: 1, reserved: 1 });
    // only the winner's reservation completes
    expect((await f.engine.complete(token, won.token!.reservationId!, 'new')).code).toBe('ok');
  });

  it('reserve racing redeem: exactly one wins overall, the losers see who won, stats agree', async () => {
    const token = await oneToken('race-mixed');
    const mark = await eventMark(f.store);
    const { results, codes } = await race(ATTEMPTS, (e, i) => (i % 2 ? e.reserve(token, `holder-${i}`, 60_000) : e.redeem(token, `sat-${i % 5}`, `user-${i}`)));
    expect(codes.ok).toBe(1);
    const winner = results.findIndex((r) => r.code === 'ok');
    const reserveWon = winner % 2 === 1;
    // redeem losers see "reserved" or "already_redeemed", reserve losers too: the loser code names the winner's kind
    expect(codes).toEqual(reserveWon ? { ok: 1, reserved: ATTEMPTS - 1 } : { ok: 1, already_redeemed: ATTEMPTS - 1 });
    const stored = await f.engine.lookup(token);
    expect(stored!.state).toBe(reserveWon ? 'reserved' : 'redeemed');
    expect((await readEvents(f.store, mark)).map((e) => e.type)).toEqual([reserveWon ? 'reserved' : 'redeemed']);
    const stats = await f.engine.stats();
    expect(countsOf(stats, 'race-mixed')).toEqual({ ...NO_COUNTS, generated: 1, [reserveWon ? 'reserved' : 'redeemed']: 1 });
    expect(redemptionsOf(stats, 'race-mixed')).toEqual(reserveWon ? {} : { [`sat-${winner % 5}`]: 1 });
  });
});

describe('many tokens raced at once', () => {
  const T = 300;
  async function manyTokens(sat: string): Promise<string[]> {
    const gen = await f.engine.generate({ owners: Array.from({ length: T / 3 }, (_, i) => ({ ownerSatelliteId: sat, ownerUserId: `o-${i}` })), perUser: 3 });
    return gen.tokens.map((t) => t.token);
  }
  /** attempt i works on token i % T; its round j = i / T picks another connection each round */
  const pick = (i: number) => ((i % T) + Math.floor(i / T)) % CONNECTIONS;

  it(`${T} tokens x 30 reserve/redeem attempts, then every reservation completes or releases against strangers`, async () => {
    const sat = 'race-many';
    const tokens = await manyTokens(sat);
    const mark = await eventMark(f.store);
    const { results } = await race(
      T * 30,
      (e, i) => {
        const t = tokens[i % T]!;
        const j = Math.floor(i / T);
        // rounds alternate reserve and redeem; a connection serves every token's round that `pick` gives it,
        // so each connection sends both kinds whichever connection's batch Redis reads first
        return j % 2 ? e.reserve(t, `h-${j}`, 60_000) : e.redeem(t, `r-${j % 3}`, `u-${j}`);
      },
      pick,
    );
    const winners = new Map<string, (typeof results)[number]>();
    results.forEach((r, i) => {
      if (r.code !== 'ok') return;
      const t = tokens[i % T]!;
      expect(winners.has(t), `two winners on ${t}`).toBe(false);
      winners.set(t, r);
    });
    expect(winners.size).toBe(T);
    for (const [t, r] of winners) expect(await f.engine.lookup(t)).toEqual(r.token);
    expect((await readEvents(f.store, mark)).length).toBe(T);
    const reserved = [...winners.values()].filter((r) => r.token!.state === 'reserved');
    // both kinds won somewhere
    expect(reserved.length).toBeGreaterThan(0);
    expect(reserved.length).toBeLessThan(T);
    // half the holders complete, half release; each contends with a stranger's complete and release
    const ends = await Promise.all(
      reserved.flatMap((r, k) => {
        const e = engines[k % CONNECTIONS]!;
        const t = r.token!.token;
        const id = r.token!.reservationId!;
        return [k % 2 ? e.complete(t, id, `new-${k}`) : e.release(t, id), e.complete(t, `stranger-${k}`, 'x'), e.release(t, `stranger-${k}`)];
      }),
    );
    for (let k = 0; k < reserved.length; k++) expect(ends.slice(3 * k, 3 * k + 3).map((r) => r.code)).toEqual(['ok', 'reservation_mismatch', 'reservation_mismatch']);
    const stats = await f.engine.stats();
    const counts = countsOf(stats, sat);
    expectBalanced(counts);
    const released = reserved.filter((_, k) => k % 2 === 0).length;
    expect(counts).toEqual({ ...NO_COUNTS, generated: T, unredeemed: released, redeemed: T - released });
    expect(Object.values(redemptionsOf(stats, sat)).reduce((a, b) => a + b, 0)).toBe(T - released);
    expect((await readEvents(f.store, mark)).length).toBe(T + reserved.length);
  });

  it(`${T} tokens x (1 revoke + 20 redeems): per token exactly one ok, the losers name the winner`, async () => {
    const sat = 'race-revoke';
    const tokens = await manyTokens(sat);
    const mark = await eventMark(f.store);
    const ROUNDS = 21;
    // the revoke's round differs per token, so on some tokens it is sent first and on others last
    const revokeRound = (k: number) => k % ROUNDS;
    const { results } = await race(
      T * ROUNDS,
      (e, i) => {
        const k = i % T;
        const j = Math.floor(i / T);
        return j === revokeRound(k) ? e.revokeToken(tokens[k]!) : e.redeem(tokens[k]!, 'r-sat', `u-${j}`);
      },
      pick,
    );
    const expected = { ...NO_COUNTS, generated: T };
    const outcomes = new Set<boolean>();
    for (let k = 0; k < T; k++) {
      const mine = Array.from({ length: ROUNDS }, (_, j) => results[j * T + k]!);
      const codes = mine.map((r) => r.code);
      expect(codes.filter((c) => c === 'ok'), tokens[k]).toHaveLength(1);
      const revokeWon = mine[revokeRound(k)]!.code === 'ok';
      outcomes.add(revokeWon);
      const losers = codes.filter((c) => c !== 'ok');
      expect(new Set(losers)).toEqual(new Set([revokeWon ? 'revoked' : 'already_redeemed']));
      const state = (await f.engine.lookup(tokens[k]!))!.state;
      expect(state).toBe(revokeWon ? 'revoked' : 'redeemed');
      expected[state]++;
    }
    expect(outcomes).toEqual(new Set([true, false]));
    expect(countsOf(await f.engine.stats(), sat)).toEqual(expected);
    expect((await readEvents(f.store, mark)).length).toBe(T);
  });
});
