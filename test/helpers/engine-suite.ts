import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DomainError } from '../../src/errors.js';
import { decodeRow, hexOf } from '../../src/store/codec.js';
import { SHARDS, placeOfOwner, placeOfToken } from '../../src/store/keys.js';
import type { Stats, Token, TokenSet, TokenState } from '../../src/store/model.js';
import { TokenCollision, type TokenStore } from '../../src/store/token-store.js';
import { MAX_EXPIRES_AT, MAX_TOKENS_PER_CALL, TokenEngine } from '../../src/tokens/engine.js';
import { mint as mintSet } from '../../src/tokens/mint.js';
import type { EngineFixture } from './redis.js';

/** Tokens as the generate script takes them, from dashed tokens the test chose. */
function tokenSet(tokens: string[]): TokenSet {
  return { count: tokens.length, hex: tokens.map((t) => t.replace(/-/g, '')).join(''), dashed: tokens.join('') };
}

export const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** Redis TIME and Date.now() read the same clock here; the slack only has to catch wrong units or garbage. */
const CLOCK_SLACK_MS = 1000;

// ---------------------------------------------------------------- events

export interface EngineEvent {
  shard: number;
  id: string;
  /** the stream entry's field names, in order */
  names: string[];
  type: string;
  at: number;
  /** the 13 tab-separated columns of `row` */
  columns: string[];
  row: Token;
}

/** The last entry id of every shard's stream, so a test can read only what its own calls appended. */
export type EventMark = string[];

export async function eventMark(store: TokenStore): Promise<EventMark> {
  return Promise.all(
    Array.from({ length: SHARDS }, async (_, s) => {
      const last = await store.redis.xrevrange(store.keys.events(s), '+', '-', 'COUNT', 1);
      return last[0]?.[0] ?? '0-0';
    }),
  );
}

/** Every event of all 64 shard streams (after `since`), shard by shard in stream order. */
export async function readEvents(store: TokenStore, since?: EventMark): Promise<EngineEvent[]> {
  const perShard = await Promise.all(
    Array.from({ length: SHARDS }, (_, s) => store.redis.xrange(store.keys.events(s), since ? `(${since[s]}` : '-', '+')),
  );
  const out: EngineEvent[] = [];
  perShard.forEach((entries, shard) => {
    for (const [id, kv] of entries) {
      const m = new Map<string, string>();
      const names: string[] = [];
      for (let i = 0; i < kv.length; i += 2) {
        names.push(kv[i]!);
        m.set(kv[i]!, kv[i + 1]!);
      }
      const columns = (m.get('row') ?? '').split('\t');
      out.push({ shard, id, names, type: m.get('type') ?? '', at: Number(m.get('at')), columns, row: decodeRow(columns) });
    }
  });
  return out;
}

// ---------------------------------------------------------------- stats

export const NO_COUNTS = { generated: 0, unredeemed: 0, reserved: 0, redeemed: 0, revoked: 0, purged: 0 };
export type Counts = typeof NO_COUNTS;

export function countsOf(stats: Stats, sat: string): Counts {
  return { ...NO_COUNTS, ...stats.satellites[sat] };
}

/** redeemer satellite -> count for one owner satellite */
export function redemptionsOf(stats: Stats, ownerSatelliteId: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of stats.redemptions) if (r.ownerSatelliteId === ownerSatelliteId) out[r.redeemerSatelliteId] = r.count;
  return out;
}

/** Every generated token is in exactly one state. */
export function expectBalanced(c: Counts): void {
  expect(c.unredeemed + c.reserved + c.redeemed + c.revoked).toBe(c.generated);
}

// ---------------------------------------------------------------- errors

async function expectInvalid(call: () => unknown): Promise<DomainError> {
  let err: unknown;
  try {
    await call();
  } catch (e) {
    err = e;
  }
  expect(err, 'expected a DomainError').toBeInstanceOf(DomainError);
  expect((err as DomainError).code).toBe('invalid_request');
  return err as DomainError;
}

type Reserved = Awaited<ReturnType<TokenEngine['reserve']>>;

export async function sleepUntil(epochMs: number): Promise<void> {
  const ms = epochMs - Date.now();
  if (ms > 0) await sleep(ms);
}

/**
 * The whole token-engine contract (issue 2), against whatever Redis `makeFixture` connects to.
 * One fixture (one key prefix) per suite; every test names its own satellites and campaigns, so
 * stats per satellite are the test's own, and events are read from a mark taken before each step.
 */
export function engineSuite(name: string, makeFixture: () => Promise<EngineFixture>): void {
  describe(name, () => {
    let f: EngineFixture;
    let engine: TokenEngine;
    let seq = 0;
    const uniq = (label: string) => `${label}-${++seq}`;

    beforeAll(async () => {
      f = await makeFixture();
      engine = f.engine;
    });
    afterAll(async () => {
      await f?.close();
    });

    const mark = () => eventMark(f.store);
    const since = (m: EventMark) => readEvents(f.store, m);
    /** [type, token, state] of the events since `m` */
    const changes = async (m: EventMark) => (await since(m)).map((e) => [e.type, e.row.token, e.row.state]);
    const counts = async (sat: string) => countsOf(await engine.stats(), sat);
    const state = async (token: string) => (await engine.lookup(token))?.state;
    const listed = async (sat: string, user: string) => (await engine.listUnredeemed(sat, user)).map((t) => t.token);
    /** the token's entry in its shard's lease index (lua/includes/codec.lua); whether it has a reservation record (1 or 0) */
    const leaseOf = async (token: string) => {
      const score = await f.redis.zscore(f.store.keys.leases(placeOfToken(hexOf(token)).shard), hexOf(token));
      return score === null ? undefined : Number(score);
    };
    const recorded = (token: string) => f.redis.hexists(f.store.keys.reservations(placeOfToken(hexOf(token)).shard), hexOf(token).slice(4));

    /** `n` tokens for one fresh owner (satellite and user unique to the caller unless given). */
    async function mint(n = 1, o: { sat?: string; user?: string; campaignId?: string; expiresAt?: number } = {}) {
      const sat = o.sat ?? uniq('sat');
      const user = o.user ?? uniq('user');
      const r = await engine.generate({
        owners: [{ ownerSatelliteId: sat, ownerUserId: user }],
        perUser: n,
        ...(o.campaignId === undefined ? {} : { campaignId: o.campaignId }),
        ...(o.expiresAt === undefined ? {} : { expiresAt: o.expiresAt }),
      });
      return { sat, user, campaignId: r.campaignId, tokens: r.tokens.map((t) => t.token) };
    }

    /** One token reserved by `by` with a lease that lapses quickly, and the time it lapsed by. */
    async function lapsedReservation(by = uniq('resv')) {
      const m = await mint(1);
      const token = m.tokens[0]!;
      const r = await engine.reserve(token, by, 50);
      expect(r.code).toBe('ok');
      await sleepUntil(r.token!.leaseExpiresAt! + 30);
      return { ...m, token, by, reservationId: r.token!.reservationId! };
    }

    describe('generate', () => {
      it('makes lowercase canonical UUIDv4 tokens and records owner, campaign, createdAt and expiresAt', async () => {
        const sat = uniq('sat');
        const owners = [uniq('alice'), uniq('bob'), uniq('carol')].map((u) => ({ ownerSatelliteId: sat, ownerUserId: u }));
        const campaignId = uniq('camp');
        const expiresAt = Date.now() + 3_600_000;
        const before = Date.now();
        const r = await engine.generate({ owners, perUser: 2, campaignId, expiresAt });
        const after = Date.now();
        expect(r.campaignId).toBe(campaignId);
        expect(r.tokens).toHaveLength(6);
        expect(r.tokens.map((t) => [t.ownerSatelliteId, t.ownerUserId])).toEqual(owners.flatMap((o) => [[sat, o.ownerUserId], [sat, o.ownerUserId]]));
        expect(new Set(r.tokens.map((t) => t.token)).size).toBe(6);
        for (const t of r.tokens) {
          expect(t.token).toMatch(UUID_V4);
          // the first 16 bits name the owner's shard and bucket
          expect(t.token.slice(0, 4)).toBe(placeOfOwner(t.ownerSatelliteId, t.ownerUserId).prefix);
          const got = await engine.lookup(t.token);
          expect(got).toEqual({
            token: t.token,
            state: 'unredeemed',
            ownerSatelliteId: sat,
            ownerUserId: t.ownerUserId,
            campaignId,
            createdAt: got!.createdAt,
            expiresAt,
          });
          expect(got!.createdAt).toBeGreaterThanOrEqual(before - CLOCK_SLACK_MS);
          expect(got!.createdAt).toBeLessThanOrEqual(after + CLOCK_SLACK_MS);
        }
      });

      it('names a campaign when none is given and records no expiresAt when none is given', async () => {
        const m = await mint(1);
        expect(m.campaignId).toMatch(/^c-\d{4}-\d{2}-\d{2}-[0-9a-f]{8}$/);
        const got = await engine.lookup(m.tokens[0]!);
        expect(got!.campaignId).toBe(m.campaignId);
        expect(got).not.toHaveProperty('expiresAt');
        const again = await mint(1);
        expect(again.campaignId).not.toBe(m.campaignId);
      });

      it('indexes tokens by owner: listUnredeemed returns exactly the owner\'s tokens, across calls', async () => {
        const sat = uniq('sat');
        const user = uniq('user');
        const campaignA = uniq('camp');
        const campaignB = uniq('camp');
        const expiresAt = Date.now() + 3_600_000;
        const first = await mint(3, { sat, user, campaignId: campaignA });
        const second = await mint(2, { sat, user, campaignId: campaignB, expiresAt });
        const list = await engine.listUnredeemed(sat, user);
        expect(list.map((t) => t.token).sort()).toEqual([...first.tokens, ...second.tokens].sort());
        for (const t of list) {
          const fromB = second.tokens.includes(t.token);
          const looked = (await engine.lookup(t.token))!;
          expect(t).toEqual({ token: t.token, campaignId: fromB ? campaignB : campaignA, createdAt: looked.createdAt, ...(fromB ? { expiresAt } : {}) });
        }
        // ordered by creation
        const created = list.map((t) => t.createdAt);
        expect(created).toEqual([...created].sort((a, b) => a - b));
        expect(await engine.listUnredeemed(sat, uniq('nobody'))).toEqual([]);
        expect(await engine.listUnredeemed(uniq('no-sat'), user)).toEqual([]);
      });

      it('keeps owners apart: two users of one satellite, and one user id on two satellites', async () => {
        const satA = uniq('satA');
        const satB = uniq('satB');
        const alice = uniq('alice');
        const bob = uniq('bob');
        const r = await engine.generate({
          owners: [
            { ownerSatelliteId: satA, ownerUserId: alice },
            { ownerSatelliteId: satA, ownerUserId: bob },
            { ownerSatelliteId: satB, ownerUserId: alice },
          ],
          perUser: 2,
        });
        const of = (sat: string, user: string) => r.tokens.filter((t) => t.ownerSatelliteId === sat && t.ownerUserId === user).map((t) => t.token).sort();
        expect((await listed(satA, alice)).sort()).toEqual(of(satA, alice));
        expect((await listed(satA, bob)).sort()).toEqual(of(satA, bob));
        expect((await listed(satB, alice)).sort()).toEqual(of(satB, alice));
        for (const t of of(satB, alice)) expect((await engine.lookup(t))).toMatchObject({ ownerSatelliteId: satB, ownerUserId: alice });
        // using up alice@A's tokens leaves alice@B's alone
        for (const t of of(satA, alice)) expect((await engine.redeem(t, satB, uniq('new'))).code).toBe('ok');
        expect(await listed(satA, alice)).toEqual([]);
        expect((await listed(satB, alice)).sort()).toEqual(of(satB, alice));
        expect((await listed(satA, bob)).sort()).toEqual(of(satA, bob));
        expect(await engine.revokeOwner(satB, alice)).toBe(2);
        expect((await listed(satA, bob)).sort()).toEqual(of(satA, bob));
        const stats = await engine.stats();
        expect(countsOf(stats, satA)).toEqual({ generated: 4, unredeemed: 2, reserved: 0, redeemed: 2, revoked: 0, purged: 0 });
        expect(countsOf(stats, satB)).toEqual({ generated: 2, unredeemed: 0, reserved: 0, redeemed: 0, revoked: 2, purged: 0 });
      });

      it('keeps two owners that share one bucket apart (list and revokeOwner)', async () => {
        const sat = uniq('sat');
        const alice = uniq('alice');
        const want = placeOfOwner(sat, alice).prefix;
        let bob = '';
        for (let i = 0; !bob; i++) if (placeOfOwner(sat, `bob-${i}`).prefix === want) bob = `bob-${i}`;
        const a = await mint(3, { sat, user: alice });
        const b = await mint(2, { sat, user: bob });
        expect(a.tokens[0]!.slice(0, 4)).toBe(b.tokens[0]!.slice(0, 4));
        expect((await listed(sat, alice)).sort()).toEqual([...a.tokens].sort());
        expect((await listed(sat, bob)).sort()).toEqual([...b.tokens].sort());
        expect(await engine.revokeOwner(sat, bob)).toBe(2);
        expect((await listed(sat, alice)).sort()).toEqual([...a.tokens].sort());
        for (const t of a.tokens) expect(await state(t)).toBe('unredeemed');
      });

      // lua/generate.lua: a new owner's `#<refHint>` slot already holding another owner is probed past, never taken
      it('probes past its ref hint slot when another owner holds it (lookup and list name the right owner)', async () => {
        const sat = uniq('sat');
        const user = uniq('user');
        const place = placeOfOwner(sat, user);
        const bucket = f.store.keys.bucket(place.shard, place.bucket);
        // another owner's record on this owner's first slot (satellite number 999 is no satellite of this prefix)
        await f.redis.hset(bucket, `#${place.refHint}`, '999:x');
        const m = await mint(2, { sat, user });
        for (const t of m.tokens) expect(await engine.lookup(t)).toMatchObject({ ownerSatelliteId: sat, ownerUserId: user });
        expect((await listed(sat, user)).sort()).toEqual([...m.tokens].sort());
        expect(await f.redis.hget(bucket, `#${place.refHint}`)).toBe('999:x');
        expect(await engine.revokeOwner(sat, user)).toBe(2);
      });

      it('counts generated tokens per satellite and appends one "generated" event per token', async () => {
        const sat = uniq('sat');
        const users = [uniq('u'), uniq('u')];
        const m = await mark();
        const r = await engine.generate({ owners: users.map((u) => ({ ownerSatelliteId: sat, ownerUserId: u })), perUser: 3, campaignId: uniq('camp') });
        expect(await counts(sat)).toEqual({ ...NO_COUNTS, generated: 6, unredeemed: 6 });
        const ev = await since(m);
        expect(ev).toHaveLength(6);
        for (const e of ev) {
          expect(e.names).toEqual(['type', 'at', 'row']);
          expect(e.type).toBe('generated');
          expect(e.columns).toHaveLength(13);
          expect(e.shard).toBe(placeOfToken(e.row.token.replace(/-/g, '')).shard);
          expect(e.row).toEqual(await engine.lookup(e.row.token));
          expect(e.at).toBe(e.row.createdAt);
        }
        expect(ev.map((e) => e.row.token).sort()).toEqual(r.tokens.map((t) => t.token).sort());
      });

      // listed in the order Redis returned the counters' fields: a restored Redis listed the same counts differently
      it('stats lists the satellites and the owner -> redeemer pairs sorted by id', async () => {
        const sats = ['zz', 'aa', 'mm'].map((x) => uniq(`sort-${x}`));
        const made = await engine.generate({ owners: sats.flatMap((s) => [1, 2, 3].map((i) => ({ ownerSatelliteId: s, ownerUserId: `u${i}` }))), perUser: 1 });
        for (const [i, t] of made.tokens.entries()) expect((await engine.redeem(t.token, sats[(i + 1) % 3]!, `r${i}`)).code).toBe('ok');
        const stats = await engine.stats();
        const ids = Object.keys(stats.satellites);
        expect(ids).toEqual([...ids].sort());
        const pairs = stats.redemptions.map((r) => `${r.ownerSatelliteId}\t${r.redeemerSatelliteId}`);
        expect(pairs).toEqual([...pairs].sort());
        expect(pairs.filter((p) => p.startsWith('sort-')).length).toBeGreaterThan(1);
      });

      it(`accepts exactly ${MAX_TOKENS_PER_CALL} tokens in one call, spread over every shard`, async () => {
        const sat = uniq('sat');
        const owners = Array.from({ length: 2500 }, (_, i) => ({ ownerSatelliteId: sat, ownerUserId: `many-${i}` }));
        const m = await mark();
        const r = await engine.generate({ owners, perUser: 4 });
        expect(r.tokens).toHaveLength(MAX_TOKENS_PER_CALL);
        const tokens = r.tokens.map((t) => t.token);
        expect(new Set(tokens).size).toBe(MAX_TOKENS_PER_CALL);
        for (const t of r.tokens) {
          expect(t.token).toMatch(UUID_V4);
          expect(t.token.slice(0, 4)).toBe(placeOfOwner(sat, t.ownerUserId).prefix);
        }
        expect(new Set(tokens.map((t) => placeOfToken(t.replace(/-/g, '')).shard)).size).toBe(SHARDS);
        expect(await counts(sat)).toEqual({ ...NO_COUNTS, generated: MAX_TOKENS_PER_CALL, unredeemed: MAX_TOKENS_PER_CALL });
        const ev = await since(m);
        expect(ev).toHaveLength(MAX_TOKENS_PER_CALL);
        expect(new Set(ev.map((e) => e.shard)).size).toBe(SHARDS);
        for (const i of [0, 1, 777, 2499]) {
          expect((await listed(sat, `many-${i}`)).sort()).toEqual(r.tokens.filter((t) => t.ownerUserId === `many-${i}`).map((t) => t.token).sort());
        }
      });

      it(`accepts ${MAX_TOKENS_PER_CALL} tokens for one owner in one call`, async () => {
        const m = await mint(MAX_TOKENS_PER_CALL);
        expect(new Set(m.tokens).size).toBe(MAX_TOKENS_PER_CALL);
        expect((await listed(m.sat, m.user)).length).toBe(MAX_TOKENS_PER_CALL);
        expect(await counts(m.sat)).toEqual({ ...NO_COUNTS, generated: MAX_TOKENS_PER_CALL, unredeemed: MAX_TOKENS_PER_CALL });
      });

      it('reports a token that exists already as a collision and leaves it; one that comes twice in one call is stored once', async () => {
        const sat = uniq('sat');
        const user = uniq('user');
        const place = placeOfOwner(sat, user);
        // 106 random bits make a real collision unthinkable: the test hands the store tokens it chose
        const [existing, fresh, twice] = [0, 1, 2].map(() => `${place.prefix}${randomUUID().slice(4)}`) as [string, string, string];
        const made = (tokens: string[], campaign: string) =>
          f.store.generate([{ ownerSatelliteId: sat, ownerUserId: user, place, minted: tokenSet(tokens) }], campaign);
        expect(await made([existing], 'first')).toBe(1);
        const before = await engine.lookup(existing);
        const m = await mark();
        const err = await made([fresh, twice, twice, existing], 'second').catch((e: Error) => e);
        // only the token that existed before is a collision: the caller must leave it alone
        expect(err).toBeInstanceOf(TokenCollision);
        expect((err as TokenCollision).hexes).toEqual([existing.replace(/-/g, '')]);
        expect(await engine.lookup(existing)).toEqual(before);
        expect(before).toMatchObject({ campaignId: 'first', state: 'unredeemed' });
        expect((await listed(sat, user)).sort()).toEqual([existing, fresh, twice].sort());
        expect((await changes(m)).sort()).toEqual([['generated', fresh, 'unredeemed'], ['generated', twice, 'unredeemed']].sort());
        expect(await counts(sat)).toEqual({ ...NO_COUNTS, generated: 3, unredeemed: 3 });
        // a token repeated in one call is stored once, so the count falls short (the engine then undoes the call)
        const again = `${place.prefix}${randomUUID().slice(4)}`;
        expect(await made([again, again], 'third')).toBe(1);
      });

      // the undo revoked every token of the failed call's campaign it was handed, the one it collided with
      // too when an earlier call of the same campaign had made it (and handed it out)
      // the script reads one owner's existing suffixes in slices of 4000 (Lua's unpack limit): a collision in a
      // later slice must be found as surely as one in the first
      it(`reports a collision past the first 4000 tokens of one owner's ${MAX_TOKENS_PER_CALL}, and leaves that token`, async () => {
        const sat = uniq('sat');
        const user = uniq('user');
        const place = placeOfOwner(sat, user);
        const tokens = Array.from({ length: MAX_TOKENS_PER_CALL }, () => `${place.prefix}${randomUUID().slice(4)}`);
        const made = (ts: string[], campaign: string) =>
          f.store.generate([{ ownerSatelliteId: sat, ownerUserId: user, place, minted: tokenSet(ts) }], campaign);
        // the first of the second slice and the last of the call
        const existing = [tokens[4000]!, tokens[MAX_TOKENS_PER_CALL - 1]!];
        expect(await made(existing, 'first')).toBe(2);
        const err = await made(tokens, 'second').catch((e: Error) => e);
        expect(err).toBeInstanceOf(TokenCollision);
        expect((err as TokenCollision).hexes).toEqual(existing.map((t) => t.replace(/-/g, '')));
        for (const t of existing) expect(await engine.lookup(t)).toMatchObject({ campaignId: 'first', state: 'unredeemed' });
        expect(await counts(sat)).toEqual({ ...NO_COUNTS, generated: MAX_TOKENS_PER_CALL, unredeemed: MAX_TOKENS_PER_CALL });
      });

      it('undoing a generate that collided leaves the token it collided with, also one of the same campaign', async () => {
        const sat = uniq('sat');
        const user = uniq('user');
        let earlier: string | undefined;
        const store = Object.create(f.store) as TokenStore;
        store.generate = async (batches, campaignId, expiresAt) => {
          const b = batches[0]!;
          earlier = b.minted.dashed.slice(0, 36);
          await f.store.generate([{ ...b, minted: tokenSet([earlier]) }], campaignId, expiresAt);
          return f.store.generate(batches, campaignId, expiresAt);
        };
        const err = await new TokenEngine(store).generate({ owners: [{ ownerSatelliteId: sat, ownerUserId: user }], perUser: 3, campaignId: 'same' }).catch((e: Error) => e);
        expect(err).toBeInstanceOf(TokenCollision);
        expect(await engine.lookup(earlier!)).toMatchObject({ state: 'unredeemed', campaignId: 'same' });
        // the failed call's own tokens are revoked: its caller was told of none of them
        expect(await listed(sat, user)).toEqual([earlier]);
      });

      // the store threw a failed shard's error before it read the other shards' replies, so the undo
      // revoked the earlier token those had collided with after all
      it('undoing a generate that collided leaves the token it collided with also when another shard of the call failed', async () => {
        const sat = uniq('sat');
        const user = uniq('user');
        const shard = placeOfOwner(sat, user).shard;
        const other = Array.from({ length: 200 }, (_, i) => `${user}-${i}`).find((u) => placeOfOwner(sat, u).shard !== shard)!;
        const broken = placeOfOwner(sat, other);
        const bucket = f.store.keys.bucket(broken.shard, broken.bucket);
        let earlier: string | undefined;
        const store = Object.create(f.store) as TokenStore;
        store.generate = async (batches, campaignId, expiresAt) => {
          const b = batches.find((x) => x.ownerUserId === user)!;
          earlier = b.minted.dashed.slice(0, 36);
          await f.store.generate([{ ...b, minted: tokenSet([earlier]) }], campaignId, expiresAt);
          // a key of the wrong type under the other owner's bucket: that shard's script fails
          await f.redis.set(bucket, 'not a hash');
          return f.store.generate(batches, campaignId, expiresAt);
        };
        try {
          const owners = [user, other].map((ownerUserId) => ({ ownerSatelliteId: sat, ownerUserId }));
          const err = await new TokenEngine(store).generate({ owners, perUser: 2, campaignId: 'same-failed' }).catch((e: Error) => e);
          expect(err).toBeInstanceOf(TokenCollision);
          expect(String((err as TokenCollision).cause)).toMatch(/WRONGTYPE/);
          expect(await engine.lookup(earlier!)).toMatchObject({ state: 'unredeemed', campaignId: 'same-failed' });
          expect(await listed(sat, user)).toEqual([earlier]);
        } finally {
          await f.redis.del(bucket);
        }
      });

      it(`refuses more than ${MAX_TOKENS_PER_CALL} tokens per call and writes nothing`, async () => {
        const sat = uniq('sat');
        const owner = (i: number) => ({ ownerSatelliteId: sat, ownerUserId: `u${i}` });
        const m = await mark();
        await expectInvalid(() => engine.generate({ owners: [owner(0)], perUser: MAX_TOKENS_PER_CALL + 1 }));
        await expectInvalid(() => engine.generate({ owners: [owner(0), owner(1)], perUser: MAX_TOKENS_PER_CALL / 2 + 1 }));
        await expectInvalid(() => engine.generate({ owners: Array.from({ length: MAX_TOKENS_PER_CALL + 1 }, (_, i) => owner(i)), perUser: 1 }));
        expect((await engine.stats()).satellites[sat]).toBeUndefined();
        expect(await since(m)).toEqual([]);
        expect(await listed(sat, 'u0')).toEqual([]);
      });

      it('refuses invalid perUser and expiresAt', async () => {
        const owners = [{ ownerSatelliteId: uniq('sat'), ownerUserId: 'u' }];
        for (const perUser of [0, -1, 1.5, Number.NaN, Infinity, '3' as unknown as number, undefined as unknown as number]) {
          await expectInvalid(() => engine.generate({ owners, perUser }));
        }
        // past the last ms of year 9999: e.g. microseconds sent for milliseconds
        const tooFar = [MAX_EXPIRES_AT + 1, Date.now() * 1000, Number.MAX_SAFE_INTEGER];
        for (const expiresAt of [Date.now() - 1, Date.now() - 86_400_000, 0, -5, Date.now() + 1000.5, Number.NaN, null as unknown as number, String(Date.now() + 60_000) as unknown as number, ...tooFar]) {
          await expectInvalid(() => engine.generate({ owners, perUser: 1, expiresAt }));
        }
        expect((await engine.stats()).satellites[owners[0]!.ownerSatelliteId]).toBeUndefined();
      });

      it('keeps the latest expiresAt (year 9999) exact in lookup, list and every event, the generated ones too', async () => {
        const ev = await mark();
        const m = await mint(2, { expiresAt: MAX_EXPIRES_AT });
        const [t] = m.tokens as [string, string];
        const r = await engine.reserve(t, uniq('holder'), 60_000);
        expect((await engine.release(t, r.token!.reservationId!)).code).toBe('ok');
        expect((await engine.lookup(t))?.expiresAt).toBe(MAX_EXPIRES_AT);
        expect((await engine.listUnredeemed(m.sat, m.user)).map((x) => x.expiresAt)).toEqual([MAX_EXPIRES_AT, MAX_EXPIRES_AT]);
        const events = await since(ev);
        const expires = String(MAX_EXPIRES_AT);
        expect(events.map((e) => [e.type, e.columns[6]])).toEqual([['generated', expires], ['generated', expires], ['reserved', expires], ['released', expires]]);
      });

      it('refuses ids that are empty, over 128 bytes (counting UTF-8 bytes), not strings, or hold control characters', async () => {
        const bad: unknown[] = [
          '',
          'a'.repeat(129),
          'é'.repeat(65), // 65 characters, 130 bytes
          '😀'.repeat(33), // 66 UTF-16 units, 132 bytes
          'a'.repeat(127) + 'é', // 128 characters, 129 bytes
          42,
          null,
          undefined,
          {},
          ['x'],
          'tab\there',
          'new\nline',
          'nul\u0000',
          'del\u007f', // DEL: a control character below the C1 range
          'csi\u009b31m', // C1: an escape some terminals act on
          'evil\u202egpj.exe', // a right-to-left override
          'iso\u2066late\u2069',
          'alice\u200b', // invisible: looks like "alice"
          'word\u2060joiner',
          '\ufeffbom',
          'line\u2028sep',
          'para\u2029sep',
          'soft\u00adhyphen', // invisible where the word is not broken
          'tag\u{e0041}s', // an invisible copy of "A"
          'mongolian\u180evs',
        ];
        const sat = uniq('sat');
        const m = await mark();
        for (const v of bad) {
          const id = v as string;
          await expectInvalid(() => engine.generate({ owners: [{ ownerSatelliteId: id, ownerUserId: 'u' }], perUser: 1 }));
          await expectInvalid(() => engine.generate({ owners: [{ ownerSatelliteId: sat, ownerUserId: id }], perUser: 1 }));
          // an undefined campaignId means "name one for me"
          if (v !== undefined) await expectInvalid(() => engine.generate({ owners: [{ ownerSatelliteId: sat, ownerUserId: 'u' }], perUser: 1, campaignId: id }));
          // one bad owner refuses the whole call: the good owner before it gets nothing either
          await expectInvalid(() => engine.generate({ owners: [{ ownerSatelliteId: sat, ownerUserId: 'good' }, { ownerSatelliteId: sat, ownerUserId: id }], perUser: 1 }));
        }
        expect(await since(m)).toEqual([]);
        expect((await engine.stats()).satellites[sat]).toBeUndefined();
        expect(await listed(sat, 'good')).toEqual([]);
      });

      it('refuses C1, bidi and invisible characters in a redeemer id too', async () => {
        const { tokens: [t] } = await mint(1);
        for (const id of ['csi\u009b31m', 'evil\u202egpj', 'bob\u200b']) {
          await expectInvalid(() => engine.redeem(t!, uniq('sat'), id));
          const r = await engine.reserve(t!, 'sat-r', 60_000);
          await expectInvalid(() => engine.complete(t!, r.token!.reservationId!, id));
          expect((await engine.release(t!, r.token!.reservationId!)).code).toBe('ok');
        }
        expect(await state(t!)).toBe('unredeemed');
      });

      // the rule for C1 and bidi came after ids were stored: an owner stored before it must stay reachable
      it('lists and revokes the tokens of an owner id stored before C1 and bidi were refused', async () => {
        const sat = uniq('sat');
        const user = 'old\u202eid';
        const place = placeOfOwner(sat, user);
        const minted = mintSet(place.value, 2);
        expect(await f.store.generate([{ ownerSatelliteId: sat, ownerUserId: user, minted, place }], uniq('camp'))).toBe(2);
        expect(await engine.listUnredeemed(sat, user)).toHaveLength(2);
        expect(await engine.revokeOwner(sat, user)).toBe(2);
      });

      it('accepts ids of exactly 128 bytes, multi-byte ones included, and keeps them byte for byte', async () => {
        for (const id of ['a'.repeat(128), 'é'.repeat(64), '😀'.repeat(32), 'ü'.repeat(63) + 'xy', 'x']) {
          const sat = uniq('sat');
          const r = await engine.generate({ owners: [{ ownerSatelliteId: sat, ownerUserId: id }], perUser: 1, campaignId: id });
          const token = r.tokens[0]!.token;
          expect(await engine.lookup(token)).toMatchObject({ ownerSatelliteId: sat, ownerUserId: id, campaignId: id });
          expect(await listed(sat, id)).toEqual([token]);
          const redeemer = 'R'.repeat(120) + 'ö'.repeat(4);
          expect((await engine.redeem(token, redeemer, id)).token).toMatchObject({ redeemerSatelliteId: redeemer, redeemerUserId: id });
          expect(redemptionsOf(await engine.stats(), sat)).toEqual({ [redeemer]: 1 });
        }
        // a 128-byte satellite id as owner
        const bigSat = 'Ω'.repeat(64);
        const r = await engine.generate({ owners: [{ ownerSatelliteId: bigSat, ownerUserId: 'u' }], perUser: 1 });
        expect(await engine.lookup(r.tokens[0]!.token)).toMatchObject({ ownerSatelliteId: bigSat });
        expect((await counts(bigSat)).generated).toBe(1);
      });

      // A lone UTF-16 surrogate has no UTF-8 form: Redis would store U+FFFD, merging two ids into one owner.
      it('refuses ids with lone surrogates, which cannot be stored byte for byte', async () => {
        const sat = uniq('sat');
        const r = await Promise.allSettled([
          engine.generate({ owners: [{ ownerSatelliteId: sat, ownerUserId: 'u\ud800' }], perUser: 1 }),
          engine.generate({ owners: [{ ownerSatelliteId: sat, ownerUserId: 'u\udbff' }], perUser: 1 }),
        ]);
        expect(r.map((x) => x.status)).toEqual(['rejected', 'rejected']);
      });

      it('a caller that stopped waiting gets an error, and the tokens made for it are revoked', async () => {
        const sat = uniq('sat');
        await expect(engine.generate({ owners: [{ ownerSatelliteId: sat, ownerUserId: 'u' }], perUser: 3, signal: AbortSignal.abort() })).rejects.toThrow(/stopped waiting/);
        expect(await counts(sat)).toEqual({ ...NO_COUNTS, generated: 3, revoked: 3 });
        expect(await listed(sat, 'u')).toEqual([]);
      });
    });

    describe('refused input on the other operations', () => {
      it('refuses malformed tokens with invalid_request on every single-token operation', async () => {
        const m = await mint(1);
        const t = m.tokens[0]!;
        const malformed: unknown[] = [
          '',
          'not-a-token',
          t.toUpperCase(),
          t.replace(/-/g, ''),
          `${t} `,
          `{${t}}`,
          `0${t}`, // a canonical token with text before it
          t.slice(0, 14) + '1' + t.slice(15), // version 1
          t.slice(0, 19) + 'c' + t.slice(20), // wrong variant
          42,
          null,
          undefined,
        ];
        const ops: ((x: string) => unknown)[] = [
          (x) => engine.redeem(x, 'sat', 'user'),
          (x) => engine.reserve(x, 'sat', 60_000),
          (x) => engine.complete(x, randomUUID(), 'user'),
          (x) => engine.release(x, randomUUID()),
          (x) => engine.lookup(x),
          (x) => engine.revokeToken(x),
        ];
        const ev = await mark();
        for (const x of malformed) for (const op of ops) await expectInvalid(() => op(x as string));
        expect(await since(ev)).toEqual([]);
        expect(await state(t)).toBe('unredeemed');
      });

      it('refuses invalid redeemer, satellite, reservation and campaign ids and invalid leases', async () => {
        const m = await mint(1);
        const t = m.tokens[0]!;
        const ev = await mark();
        for (const bad of ['', 'x'.repeat(129), 'ß'.repeat(65), 'a\tb', 7 as unknown as string]) {
          await expectInvalid(() => engine.redeem(t, bad, 'user'));
          await expectInvalid(() => engine.redeem(t, 'sat', bad));
          await expectInvalid(() => engine.reserve(t, bad, 60_000));
          await expectInvalid(() => engine.complete(t, bad, 'user'));
          await expectInvalid(() => engine.complete(t, randomUUID(), bad));
          await expectInvalid(() => engine.release(t, bad));
          await expectInvalid(() => engine.revokeOwner(bad, m.user));
          await expectInvalid(() => engine.revokeOwner(m.sat, bad));
          await expectInvalid(() => engine.revokeCampaign(bad));
          await expectInvalid(() => engine.listUnredeemed(bad, m.user));
          await expectInvalid(() => engine.listUnredeemed(m.sat, bad));
        }
        for (const lease of [0, -1, 1.5, Number.NaN, '100' as unknown as number]) await expectInvalid(() => engine.reserve(t, 'sat', lease));
        expect(await since(ev)).toEqual([]);
        expect(await state(t)).toBe('unredeemed');
        expect(await counts(m.sat)).toEqual({ ...NO_COUNTS, generated: 1, unredeemed: 1 });
      });

      // Lua writes a lease end past 2^53 as "9.00899508863e+15": the row the snapshot casts to bigint, and an
      // end nothing reads back exactly. A lease must end by the last ms of year 9999, like expiresAt.
      it('refuses a lease that would end after year 9999, and reserves one that ends just before it', async () => {
        const m = await mint(2);
        const [t, u] = m.tokens as [string, string];
        const ev = await mark();
        for (const lease of [Number.MAX_SAFE_INTEGER, 1e16, 1e300, Infinity, MAX_EXPIRES_AT]) await expectInvalid(() => engine.reserve(t, 'sat', lease));
        expect(await since(ev)).toEqual([]);
        expect(await state(t)).toBe('unredeemed');
        const longest = MAX_EXPIRES_AT - Date.now() - 60_000;
        const r = await engine.reserve(u, 'sat', longest);
        expect(r.code).toBe('ok');
        const events = await since(ev);
        expect(events.map((e) => e.columns[9])).toEqual([String(r.token!.leaseExpiresAt)]);
        expect(r.token!.leaseExpiresAt).toBeLessThanOrEqual(MAX_EXPIRES_AT);
        expect(Number.isSafeInteger(r.token!.leaseExpiresAt)).toBe(true);
      });
    });

    describe('redeem', () => {
      it('ok: unredeemed -> redeemed, redeemer recorded, delisted, counted, one event', async () => {
        const m = await mint(2);
        const [t, other] = m.tokens as [string, string];
        const redeemer = uniq('redeemer-sat');
        const ev = await mark();
        const before = Date.now();
        const r = await engine.redeem(t, redeemer, 'newbie');
        expect(r.code).toBe('ok');
        expect(r.token).toEqual({
          token: t,
          state: 'redeemed',
          ownerSatelliteId: m.sat,
          ownerUserId: m.user,
          campaignId: m.campaignId,
          createdAt: r.token!.createdAt,
          redeemerSatelliteId: redeemer,
          redeemerUserId: 'newbie',
          redeemedAt: r.token!.redeemedAt,
        });
        expect(r.token!.redeemedAt).toBeGreaterThanOrEqual(before - CLOCK_SLACK_MS);
        expect(await engine.lookup(t)).toEqual(r.token);
        expect(await listed(m.sat, m.user)).toEqual([other]);
        const stats = await engine.stats();
        expect(countsOf(stats, m.sat)).toEqual({ ...NO_COUNTS, generated: 2, unredeemed: 1, redeemed: 1 });
        expect(countsOf(stats, redeemer)).toEqual(NO_COUNTS);
        expect(redemptionsOf(stats, m.sat)).toEqual({ [redeemer]: 1 });
        const events = await since(ev);
        expect(events.map((e) => [e.type, e.row])).toEqual([['redeemed', r.token]]);
        expect(events[0]!.at).toBe(r.token!.redeemedAt);
      });

      it('a retry by the same satellite and user is ok again and changes nothing', async () => {
        const m = await mint(1);
        const t = m.tokens[0]!;
        const first = await engine.redeem(t, 'retry-sat', 'retry-user');
        const ev = await mark();
        const stats = await engine.stats();
        for (let i = 0; i < 3; i++) {
          const again = await engine.redeem(t, 'retry-sat', 'retry-user');
          expect(again).toEqual(first);
        }
        expect(await since(ev)).toEqual([]);
        expect(await engine.stats()).toEqual(stats);
      });

      it('anyone else gets already_redeemed (with the token, for reporting its owner), nothing changes', async () => {
        const m = await mint(1);
        const t = m.tokens[0]!;
        const first = await engine.redeem(t, 'sat-one', 'user-one');
        const ev = await mark();
        const stats = await engine.stats();
        for (const [sat, user] of [['sat-one', 'user-two'], ['sat-two', 'user-one'], [m.sat, m.user]] as const) {
          const r = await engine.redeem(t, sat, user);
          expect(r).toEqual({ code: 'already_redeemed', token: first.token });
        }
        expect(await since(ev)).toEqual([]);
        expect(await engine.stats()).toEqual(stats);
      });

      it('not_found for a well-formed token nobody made, also in a bucket that holds tokens', async () => {
        const m = await mint(1);
        const t = m.tokens[0]!;
        const neighbour = t.slice(0, 9) + randomUUID().slice(9); // same shard and bucket, other suffix
        expect(neighbour).toMatch(UUID_V4);
        const ev = await mark();
        for (const x of [randomUUID(), neighbour]) {
          expect(await engine.redeem(x, 'sat', 'user')).toEqual({ code: 'not_found' });
          expect(await engine.lookup(x)).toBeUndefined();
        }
        expect(await since(ev)).toEqual([]);
      });

      it('reserved: a held token cannot be redeemed, not even by the satellite holding it', async () => {
        const m = await mint(1);
        const t = m.tokens[0]!;
        const holder = uniq('holder');
        const res = await engine.reserve(t, holder, 60_000);
        const ev = await mark();
        for (const sat of [holder, 'someone-else']) {
          const r = await engine.redeem(t, sat, 'u');
          expect(r.code).toBe('reserved');
          expect(r.token).toEqual(res.token);
        }
        expect(await since(ev)).toEqual([]);
        expect(await counts(m.sat)).toEqual({ ...NO_COUNTS, generated: 1, reserved: 1 });
      });

      it('revoked: a revoked token cannot be redeemed', async () => {
        const m = await mint(1);
        const t = m.tokens[0]!;
        await engine.revokeToken(t);
        const ev = await mark();
        const r = await engine.redeem(t, 'sat', 'u');
        expect(r.code).toBe('revoked');
        expect(r.token).toMatchObject({ token: t, state: 'revoked', ownerSatelliteId: m.sat });
        expect(await since(ev)).toEqual([]);
      });

      it('expired: past expiresAt a token can be neither redeemed nor reserved, and is no longer listed', async () => {
        const sat = uniq('sat');
        const user = uniq('user');
        // long enough for both mints on a busy machine: a past expiresAt is refused
        const expiresAt = Date.now() + 1500;
        const soon = await mint(1, { sat, user, expiresAt });
        const later = await mint(1, { sat, user, expiresAt: Date.now() + 3_600_000 });
        const t = soon.tokens[0]!;
        await sleepUntil(expiresAt + 30);
        const ev = await mark();
        const r = await engine.redeem(t, 'sat', 'u');
        expect(r.code).toBe('expired');
        expect(r.token).toMatchObject({ token: t, state: 'unredeemed', expiresAt });
        expect((await engine.reserve(t, 'sat', 60_000)).code).toBe('expired');
        expect(await listed(sat, user)).toEqual(later.tokens);
        expect(await since(ev)).toEqual([]);
        // a token that has not expired yet is fine
        expect((await engine.redeem(later.tokens[0]!, 'sat', 'u')).code).toBe('ok');
      });
    });

    describe('reserve', () => {
      it('ok: unredeemed -> reserved with a reservation id and lease, delisted, counted, one event', async () => {
        const m = await mint(2);
        const [t, other] = m.tokens as [string, string];
        const holder = uniq('holder');
        const ev = await mark();
        const before = Date.now();
        const r = await engine.reserve(t, holder, 60_000);
        const after = Date.now();
        expect(r.code).toBe('ok');
        expect(r.token).toEqual({
          token: t,
          state: 'reserved',
          ownerSatelliteId: m.sat,
          ownerUserId: m.user,
          campaignId: m.campaignId,
          createdAt: r.token!.createdAt,
          reservationId: r.token!.reservationId,
          reservedBy: holder,
          leaseExpiresAt: r.token!.leaseExpiresAt,
        });
        expect(r.token!.reservationId).toMatch(UUID_V4);
        expect(r.token!.leaseExpiresAt).toBeGreaterThanOrEqual(before + 60_000 - CLOCK_SLACK_MS);
        expect(r.token!.leaseExpiresAt).toBeLessThanOrEqual(after + 60_000 + CLOCK_SLACK_MS);
        expect(await engine.lookup(t)).toEqual(r.token);
        expect(await listed(m.sat, m.user)).toEqual([other]);
        expect(await counts(m.sat)).toEqual({ ...NO_COUNTS, generated: 2, unredeemed: 1, reserved: 1 });
        expect(redemptionsOf(await engine.stats(), m.sat)).toEqual({});
        const events = await since(ev);
        expect(events.map((e) => [e.type, e.row])).toEqual([['reserved', r.token]]);
        expect(events[0]!.at).toBe(r.token!.leaseExpiresAt! - 60_000);
      });

      it('each reservation gets its own id', async () => {
        const m = await mint(2);
        const a = await engine.reserve(m.tokens[0]!, 'h', 60_000);
        const b = await engine.reserve(m.tokens[1]!, 'h', 60_000);
        expect(a.token!.reservationId).not.toBe(b.token!.reservationId);
      });

      it('a reservation id of the caller\'s own: repeated by the same satellite it answers ok with the same lease and appends nothing; anyone else is refused', async () => {
        const m = await mint(2);
        const [t, other] = m.tokens as [string, string];
        const mine = `signup-${randomUUID()}`;
        const first = await engine.reserve(t, 'h', 60_000, mine);
        expect([first.code, first.token!.reservationId]).toEqual(['ok', mine]);
        const ev = await mark();
        const again = await engine.reserve(t, 'h', 60_000, mine);
        expect(again).toEqual(first);
        expect(await since(ev)).toEqual([]);
        expect((await counts(m.sat)).reserved).toBe(1);
        // another satellite naming the same id, or the same satellite another id, meets the hold
        expect((await engine.reserve(t, 'other', 60_000, mine)).code).toBe('reserved');
        expect((await engine.reserve(t, 'h', 60_000, `signup-${randomUUID()}`)).code).toBe('reserved');
        expect((await engine.reserve(t, 'h', 60_000)).code).toBe('reserved');
        // completed, the id is spent: its retry is refused as for anyone
        expect((await engine.complete(t, mine, 'new-user', 'h')).code).toBe('ok');
        expect((await engine.reserve(t, 'h', 60_000, mine)).code).toBe('already_redeemed');
        // a lapsed lease with that id counts as unredeemed: reserved anew, with a new lease
        const short = await engine.reserve(other, 'h', 50, mine);
        await sleepUntil(short.token!.leaseExpiresAt! + 30);
        const renewed = await engine.reserve(other, 'h', 60_000, mine);
        expect(renewed.code).toBe('ok');
        expect(renewed.token!.leaseExpiresAt!).toBeGreaterThan(short.token!.leaseExpiresAt!);
        await expect(engine.reserve(other, 'h', 60_000, 'bad\tid')).rejects.toMatchObject({ code: 'invalid_request' });
      });

      it('a caller that stopped waiting: a reservation under a random id is not made or is given back; one under its own id is kept', async () => {
        const m = await mint(4);
        const [t, u, v, w] = m.tokens as [string, string, string, string];
        await expect(engine.reserve(t, 'h', 60_000, undefined, AbortSignal.abort())).rejects.toThrow(/stopped waiting/);
        const gone = new AbortController();
        const given = engine.reserve(u, 'h', 60_000, undefined, gone.signal);
        gone.abort();
        expect((await given).code).toBe('ok');
        // its own id's retry is answered the same reservation, so gone before or during the call it is kept
        expect((await engine.reserve(v, 'h', 60_000, `signup-${randomUUID()}`, AbortSignal.abort())).code).toBe('ok');
        const left = new AbortController();
        const kept = engine.reserve(w, 'h', 60_000, `signup-${randomUUID()}`, left.signal);
        left.abort();
        expect((await kept).code).toBe('ok');
        expect(await Promise.all(m.tokens.map(state))).toEqual(['unredeemed', 'unredeemed', 'reserved', 'reserved']);
      });

      it('reserved / already_redeemed / revoked / not_found refuse and append nothing', async () => {
        const m = await mint(3);
        const [held, used, gone] = m.tokens as [string, string, string];
        const res = await engine.reserve(held, 'holder', 60_000);
        await engine.redeem(used, 'r-sat', 'r-user');
        await engine.revokeToken(gone);
        const ev = await mark();
        const stats = await engine.stats();
        for (const sat of ['holder', 'other']) expect(await engine.reserve(held, sat, 60_000)).toEqual({ code: 'reserved', token: res.token });
        expect((await engine.reserve(used, 'holder', 60_000)).code).toBe('already_redeemed');
        expect((await engine.reserve(used, 'r-sat', 60_000)).code).toBe('already_redeemed');
        expect((await engine.reserve(gone, 'holder', 60_000)).code).toBe('revoked');
        expect(await engine.reserve(randomUUID(), 'holder', 60_000)).toEqual({ code: 'not_found' });
        expect(await since(ev)).toEqual([]);
        expect(await engine.stats()).toEqual(stats);
        expect(await engine.lookup(held)).toEqual(res.token);
      });

      it('a lapsed lease counts as unredeemed again: looked up, listed, reservable', async () => {
        const l = await lapsedReservation();
        const seen = await engine.lookup(l.token);
        expect(seen!.state).toBe('unredeemed');
        for (const k of ['reservationId', 'reservedBy', 'leaseExpiresAt'] as const) expect(seen).not.toHaveProperty(k);
        expect(await listed(l.sat, l.user)).toEqual([l.token]);
        // the counters follow the stored state until the token is touched (lua/includes/codec.lua transition)
        expect(await counts(l.sat)).toEqual({ ...NO_COUNTS, generated: 1, reserved: 1 });
        const ev = await mark();
        const again = await engine.reserve(l.token, 'second-holder', 60_000);
        expect(again.code).toBe('ok');
        expect(again.token).toMatchObject({ state: 'reserved', reservedBy: 'second-holder' });
        expect(again.token!.reservationId).not.toBe(l.reservationId);
        expect(await changes(ev)).toEqual([['reserved', l.token, 'reserved']]);
        expect(await counts(l.sat)).toEqual({ ...NO_COUNTS, generated: 1, reserved: 1 });
        expect(await listed(l.sat, l.user)).toEqual([]);
        // the first holder's reservation is gone
        expect((await engine.complete(l.token, l.reservationId, 'late')).code).toBe('reservation_mismatch');
        expect((await engine.release(l.token, l.reservationId)).code).toBe('reservation_mismatch');
        expect((await engine.complete(l.token, again.token!.reservationId!, 'newbie')).code).toBe('ok');
        expect(await counts(l.sat)).toEqual({ ...NO_COUNTS, generated: 1, redeemed: 1 });
        expect(redemptionsOf(await engine.stats(), l.sat)).toEqual({ 'second-holder': 1 });
      });

      it('a token whose lease lapsed can be redeemed; the counters move reserved -> redeemed', async () => {
        const l = await lapsedReservation();
        const ev = await mark();
        const r = await engine.redeem(l.token, 'direct-sat', 'direct-user');
        expect(r.code).toBe('ok');
        expect(r.token).toMatchObject({ state: 'redeemed', redeemerSatelliteId: 'direct-sat', redeemerUserId: 'direct-user' });
        for (const k of ['reservationId', 'reservedBy', 'leaseExpiresAt'] as const) expect(r.token).not.toHaveProperty(k);
        expect(await changes(ev)).toEqual([['redeemed', l.token, 'redeemed']]);
        const stats = await engine.stats();
        expect(countsOf(stats, l.sat)).toEqual({ ...NO_COUNTS, generated: 1, redeemed: 1 });
        expect(redemptionsOf(stats, l.sat)).toEqual({ 'direct-sat': 1 });
        expect((await engine.complete(l.token, l.reservationId, 'late')).code).toBe('reservation_mismatch');
      });

      it('a token whose lease lapsed can be revoked; the counters move reserved -> revoked', async () => {
        const l = await lapsedReservation();
        const ev = await mark();
        expect((await engine.revokeToken(l.token)).code).toBe('ok');
        expect(await changes(ev)).toEqual([['revoked', l.token, 'revoked']]);
        expect(await counts(l.sat)).toEqual({ ...NO_COUNTS, generated: 1, revoked: 1 });
      });

      /** a token that expires 1.5 s from now, reserved by 'holder' for `leaseMs` */
      async function reservedExpiring(leaseMs: number) {
        // long enough for the mint and the reserve on a busy machine: both must come before it
        const expiresAt = Date.now() + 1500;
        const m = await mint(1, { expiresAt });
        const t = m.tokens[0]!;
        const r = await engine.reserve(t, 'holder', leaseMs);
        expect(r.code).toBe('ok');
        return { m, t, r, expiresAt };
      }

      it('a token that expires while its lease holds stays held: others are told reserved, the holder completes', async () => {
        const { t, r, expiresAt } = await reservedExpiring(60_000);
        await sleepUntil(expiresAt + 30);
        expect((await engine.reserve(t, 'other', 60_000)).code).toBe('reserved');
        expect((await engine.redeem(t, 'other', 'u')).code).toBe('reserved');
        expect((await engine.complete(t, r.token!.reservationId!, 'new-user', 'holder')).code).toBe('ok');
      });

      it('a token that expired while reserved is refused once the lease lapses', async () => {
        const { m, t, r, expiresAt } = await reservedExpiring(50);
        await sleepUntil(Math.max(expiresAt, r.token!.leaseExpiresAt!) + 30);
        expect((await engine.reserve(t, 'holder', 60_000)).code).toBe('expired');
        expect((await engine.redeem(t, 'holder', 'u')).code).toBe('expired');
        expect(await listed(m.sat, m.user)).toEqual([]);
      });
    });

    describe('complete', () => {
      it('ok: reserved -> redeemed by the reserving satellite and the new user; counted; one event', async () => {
        const m = await mint(1);
        const t = m.tokens[0]!;
        const holder = uniq('holder');
        const res = await engine.reserve(t, holder, 60_000);
        const ev = await mark();
        const r = await engine.complete(t, res.token!.reservationId!, 'new-user');
        expect(r.code).toBe('ok');
        expect(r.token).toEqual({
          token: t,
          state: 'redeemed',
          ownerSatelliteId: m.sat,
          ownerUserId: m.user,
          campaignId: m.campaignId,
          createdAt: res.token!.createdAt,
          reservationId: res.token!.reservationId,
          // the reservation's id, kept for a repeated complete, and who held it: the redeemer
          reservedBy: holder,
          redeemerSatelliteId: holder,
          redeemerUserId: 'new-user',
          redeemedAt: r.token!.redeemedAt,
        });
        expect(await engine.lookup(t)).toEqual(r.token);
        const events = await since(ev);
        expect(events.map((e) => [e.type, e.row])).toEqual([['redeemed', r.token]]);
        const stats = await engine.stats();
        expect(countsOf(stats, m.sat)).toEqual({ ...NO_COUNTS, generated: 1, redeemed: 1 });
        expect(redemptionsOf(stats, m.sat)).toEqual({ [holder]: 1 });
        // a repeated complete is ok and changes nothing; a redeem retry by the recorded redeemer too
        const ev2 = await mark();
        expect(await engine.complete(t, res.token!.reservationId!, 'new-user')).toEqual(r);
        expect(await engine.redeem(t, holder, 'new-user')).toEqual(r);
        expect((await engine.redeem(t, holder, 'someone')).code).toBe('already_redeemed');
        expect((await engine.complete(t, res.token!.reservationId!, 'other-user')).code).toBe('reservation_mismatch');
        // the same call from another satellite is no repeat: the redemption went to the holder, not to it
        expect(await engine.complete(t, res.token!.reservationId!, 'new-user', holder)).toEqual(r);
        expect((await engine.complete(t, res.token!.reservationId!, 'new-user', 'intruder')).code).toBe('reservation_mismatch');
        expect(await since(ev2)).toEqual([]);
        expect(await engine.stats()).toEqual(stats);
      });

      it('reservation_mismatch: wrong id, never reserved, or redeemed directly; nothing changes', async () => {
        const m = await mint(3);
        const [held, free, used] = m.tokens as [string, string, string];
        const res = await engine.reserve(held, 'holder', 60_000);
        await engine.redeem(used, 'r-sat', 'r-user');
        const ev = await mark();
        const stats = await engine.stats();
        const wrong = await engine.complete(held, randomUUID(), 'u');
        expect(wrong).toEqual({ code: 'reservation_mismatch', token: res.token });
        // the right id from another satellite than the one that reserved: the redemption would go to the wrong one
        expect(await engine.complete(held, res.token!.reservationId!, 'u', 'intruder')).toEqual({ code: 'reservation_mismatch', token: res.token });
        expect((await engine.complete(free, randomUUID(), 'u')).code).toBe('reservation_mismatch');
        expect((await engine.complete(used, randomUUID(), 'r-user')).code).toBe('reservation_mismatch');
        expect(await since(ev)).toEqual([]);
        expect(await engine.stats()).toEqual(stats);
        expect(await engine.lookup(held)).toEqual(res.token);
      });

      it('reservation_expired: the lease lapsed; the token stays unredeemed and listed', async () => {
        const l = await lapsedReservation();
        const ev = await mark();
        const r = await engine.complete(l.token, l.reservationId, 'too-late');
        expect(r.code).toBe('reservation_expired');
        expect(r.token).toMatchObject({ token: l.token, state: 'unredeemed' });
        expect(await since(ev)).toEqual([]);
        expect(await state(l.token)).toBe('unredeemed');
        expect(await listed(l.sat, l.user)).toEqual([l.token]);
        expect(redemptionsOf(await engine.stats(), l.sat)).toEqual({});
      });

      it('not_found and revoked', async () => {
        expect(await engine.complete(randomUUID(), randomUUID(), 'u')).toEqual({ code: 'not_found' });
        const m = await mint(1);
        const t = m.tokens[0]!;
        const res = await engine.reserve(t, 'holder', 60_000);
        expect((await engine.revokeToken(t)).code).toBe('ok');
        const ev = await mark();
        const r = await engine.complete(t, res.token!.reservationId!, 'u');
        expect(r.code).toBe('revoked');
        expect(r.token).toMatchObject({ token: t, state: 'revoked' });
        expect(await since(ev)).toEqual([]);
        expect(await counts(m.sat)).toEqual({ ...NO_COUNTS, generated: 1, revoked: 1 });
      });
    });

    describe('release', () => {
      it('ok: reserved -> unredeemed, listed and reservable again, counted back, one event', async () => {
        const m = await mint(1);
        const t = m.tokens[0]!;
        const res = await engine.reserve(t, 'holder', 60_000);
        const ev = await mark();
        const r = await engine.release(t, res.token!.reservationId!);
        expect(r.code).toBe('ok');
        expect(r.token).toEqual({ token: t, state: 'unredeemed', ownerSatelliteId: m.sat, ownerUserId: m.user, campaignId: m.campaignId, createdAt: res.token!.createdAt });
        expect(await engine.lookup(t)).toEqual(r.token);
        expect(await listed(m.sat, m.user)).toEqual([t]);
        expect(await counts(m.sat)).toEqual({ ...NO_COUNTS, generated: 1, unredeemed: 1 });
        expect((await since(ev)).map((e) => [e.type, e.row])).toEqual([['released', r.token]]);
        // the old reservation is dead; a new one works
        expect((await engine.complete(t, res.token!.reservationId!, 'u')).code).toBe('reservation_mismatch');
        const again = await engine.reserve(t, 'holder2', 60_000);
        expect(again.code).toBe('ok');
        expect((await engine.complete(t, again.token!.reservationId!, 'u')).code).toBe('ok');
      });

      it('a lapsed reservation nobody took since can still be released', async () => {
        const l = await lapsedReservation();
        const ev = await mark();
        expect((await engine.release(l.token, l.reservationId)).code).toBe('ok');
        expect(await changes(ev)).toEqual([['released', l.token, 'unredeemed']]);
        expect(await counts(l.sat)).toEqual({ ...NO_COUNTS, generated: 1, unredeemed: 1 });
      });

      it('reservation_mismatch: wrong id, not reserved, released twice, redeemed, revoked; not_found', async () => {
        const m = await mint(4);
        const [held, free, done, gone] = m.tokens as [string, string, string, string];
        const res = await engine.reserve(held, 'holder', 60_000);
        const resDone = await engine.reserve(done, 'holder', 60_000);
        await engine.complete(done, resDone.token!.reservationId!, 'u');
        const resGone = await engine.reserve(gone, 'holder', 60_000);
        await engine.revokeToken(gone);
        const ev = await mark();
        const stats = await engine.stats();
        expect(await engine.release(held, randomUUID())).toEqual({ code: 'reservation_mismatch', token: res.token });
        expect(await engine.release(held, res.token!.reservationId!, 'intruder')).toEqual({ code: 'reservation_mismatch', token: res.token });
        expect((await engine.release(free, randomUUID())).code).toBe('reservation_mismatch');
        expect((await engine.release(done, resDone.token!.reservationId!)).code).toBe('reservation_mismatch');
        expect((await engine.release(gone, resGone.token!.reservationId!)).code).toBe('reservation_mismatch');
        expect(await engine.release(randomUUID(), randomUUID())).toEqual({ code: 'not_found' });
        expect(await since(ev)).toEqual([]);
        expect(await engine.stats()).toEqual(stats);
        expect((await engine.release(held, res.token!.reservationId!)).code).toBe('ok');
        expect((await engine.release(held, res.token!.reservationId!)).code).toBe('reservation_mismatch');
      });
    });

    describe('lapse (the sweep of abandoned reservations)', () => {
      it('reindexLeases writes the missing entry of a reserved token, removes the stale one of another, and counts both', async () => {
        const m = await mint(2);
        const [held, free] = m.tokens as [string, string];
        const r = await engine.reserve(held, 'h', 60_000);
        const leases = (t: string) => f.store.keys.leases(placeOfToken(hexOf(t)).shard);
        await f.redis.zrem(leases(held), hexOf(held));
        await f.redis.zadd(leases(free), 1, hexOf(free));
        expect(await f.store.reindexLeases([hexOf(held), hexOf(free)])).toBe(2);
        expect(await f.redis.zscore(leases(held), hexOf(held))).toBe(String(r.token!.leaseExpiresAt));
        expect(await f.redis.zscore(leases(free), hexOf(free))).toBeNull();
      });


      it('gives back a reservation whose lease ended over the grace ago: unredeemed, one lapsed event, counted, listed, its records gone', async () => {
        const m = await mint(4);
        const [gone, kept, released, renewed] = m.tokens as [string, string, string, string];
        const mine = async (ev: EventMark) => (await changes(ev)).filter((c) => m.tokens.includes(c[1]!));
        const abandoned = await engine.reserve(gone, 'h', 50);
        expect((await engine.reserve(kept, 'h', 60_000)).code).toBe('ok');
        const undone = await engine.reserve(released, 'h', 50);
        expect((await engine.release(released, undone.token!.reservationId!)).code).toBe('ok');
        const first = await engine.reserve(renewed, 'h', 50);
        await sleepUntil(Math.max(abandoned.token!.leaseExpiresAt!, first.token!.leaseExpiresAt!) + 30);
        // a lapsed lease reserved anew moves in the index to its new end
        const again = await engine.reserve(renewed, 'h', 60_000);
        expect([await leaseOf(gone), await leaseOf(kept) !== undefined, await leaseOf(released), await leaseOf(renewed)]).toEqual([
          abandoned.token!.leaseExpiresAt,
          true,
          undefined,
          again.token!.leaseExpiresAt,
        ]);
        expect(await counts(m.sat)).toEqual({ ...NO_COUNTS, generated: 4, unredeemed: 1, reserved: 3 });

        // within the grace nothing is given back, and a late complete is still told its reservation expired
        const ev0 = await mark();
        await engine.lapse(60_000);
        expect(await mine(ev0)).toEqual([]);
        expect((await engine.complete(gone, abandoned.token!.reservationId!, 'late', 'h')).code).toBe('reservation_expired');

        const ev = await mark();
        expect((await engine.lapse(0)).given).toBeGreaterThanOrEqual(1);
        expect(await mine(ev)).toEqual([['lapsed', gone, 'unredeemed']]);
        const row = (await since(ev)).find((e) => e.row.token === gone)!.row;
        expect(row).toEqual({ token: gone, state: 'unredeemed', ownerSatelliteId: m.sat, ownerUserId: m.user, campaignId: m.campaignId, createdAt: row.createdAt });
        expect(await counts(m.sat)).toEqual({ ...NO_COUNTS, generated: 4, unredeemed: 2, reserved: 2 });
        expect([await leaseOf(gone), await recorded(gone)]).toEqual([undefined, 0]);
        expect(await state(gone)).toBe('unredeemed');
        expect((await listed(m.sat, m.user)).sort()).toEqual([gone, released].sort());
        // given back, it holds no reservation: late calls are refused as after a release, and anyone may take it
        expect((await engine.complete(gone, abandoned.token!.reservationId!, 'late', 'h')).code).toBe('reservation_mismatch');
        expect((await engine.release(gone, abandoned.token!.reservationId!)).code).toBe('reservation_mismatch');
        expect((await engine.redeem(gone, 'r', 'newcomer')).code).toBe('ok');
        // the reservations that hold are untouched, and a second sweep finds nothing of these
        const ev2 = await mark();
        await engine.lapse(0);
        expect(await mine(ev2)).toEqual([]);
        expect([await state(kept), await state(renewed)]).toEqual(['reserved', 'reserved']);
      });

      it('Redis\' clock decides the grace, and an entry out of step with its reservation is set right without holding up the shard', async () => {
        // one owner: every token in one shard. 101 live reservations whose entries say "due long ago" (reserved by a
        // version before the index, then the index written by hand), more than a page, ahead of one abandoned
        const m = await mint(102);
        const live = m.tokens.slice(0, 101);
        const abandoned = m.tokens[101]!;
        const leases = f.store.keys.leases(placeOfToken(hexOf(abandoned)).shard);
        const ends = await Promise.all(live.map(async (t) => (await engine.reserve(t, 'h', 60_000)).token!.leaseExpiresAt!));
        await f.redis.zadd(leases, ...live.flatMap((t) => [1, hexOf(t)]));
        const gone = await engine.reserve(abandoned, 'h', 50);
        await sleepUntil(gone.token!.leaseExpiresAt! + 30);
        // the abandoned one's entry out of step too, so the script, not the sweep's reading, meets its grace
        await f.redis.zadd(leases, 1, hexOf(abandoned));
        // within the grace by Redis' clock: not given back, though the entries say so
        const ev = await mark();
        await engine.lapse(60_000);
        expect((await changes(ev)).filter((c) => m.tokens.includes(c[1]!))).toEqual([]);
        expect(await state(live[0]!)).toBe('reserved');
        expect((await counts(m.sat)).reserved).toBe(102);
        // each live entry now carries its lease's end; the abandoned one, past the grace, is given back
        expect(await Promise.all(live.map(leaseOf))).toEqual(ends);
        expect((await engine.lapse(0)).given).toBeGreaterThanOrEqual(1);
        expect((await changes(ev)).filter((c) => m.tokens.includes(c[1]!))).toEqual([['lapsed', abandoned, 'unredeemed']]);
        expect((await counts(m.sat)).reserved).toBe(101);
      });

      it('gives back a reservation whose lease cannot be read, and sweeps every other shard when one fails', async () => {
        const a = await mint(1);
        const b = await mint(1, { user: `${uniq('user')}-b` });
        const [ta, tb] = [a.tokens[0]!, b.tokens[0]!];
        // not in one shard: a wrong-typed key breaks one shard only
        expect(placeOfToken(hexOf(ta)).shard).not.toBe(placeOfToken(hexOf(tb)).shard);
        const r = await engine.reserve(ta, 'h', 60_000);
        const [sa, sb] = [placeOfToken(hexOf(ta)).shard, placeOfToken(hexOf(tb)).shard];
        // a reservation record without its lease (a row restored with none)
        await f.redis.hset(f.store.keys.reservations(sa), hexOf(ta).slice(4), `${r.token!.reservationId}\th\t`);
        const held = await engine.reserve(tb, 'h', 50);
        await sleepUntil(held.token!.leaseExpiresAt! + 30);
        const broken = f.store.keys.leases(sb);
        const saved = await f.redis.zrange(broken, 0, -1, 'WITHSCORES');
        await f.redis.del(broken);
        await f.redis.set(broken, 'not a sorted set');
        try {
          const out = await engine.lapse(0);
          expect(out.failed.map((x) => x.shard)).toEqual([sb]);
          expect(String(out.failed[0]!.error)).toMatch(/WRONGTYPE/);
          expect(await state(ta)).toBe('unredeemed');
        } finally {
          await f.redis.del(broken);
          if (saved.length) await f.redis.zadd(broken, ...saved.flatMap((v, i) => (i % 2 ? [] : [saved[i + 1]!, v])));
        }
        expect((await engine.lapse(0)).failed).toEqual([]);
        expect(await state(tb)).toBe('unredeemed');
      });

      it('removes a lease entry no reservation stands behind, and reads past a page of them', async () => {
        const m = await mint(1);
        const [t] = m.tokens as [string];
        const hex = hexOf(t);
        const leases = f.store.keys.leases(placeOfToken(hex).shard);
        // entries left behind (a write cut short): an unreserved token's and an absent token's, more than a page
        const ghosts = Array.from({ length: 150 }, () => `${hex.slice(0, 4)}${randomUUID().replace(/-/g, '').slice(4)}`);
        await f.redis.zadd(leases, 1, hex, ...ghosts.flatMap((g) => [1, g]));
        const ev = await mark();
        await engine.lapse(0);
        expect(await f.redis.zrangebyscore(leases, 0, 1)).toEqual([]);
        expect((await changes(ev)).filter((c) => c[1] === t)).toEqual([]);
        expect(await state(t)).toBe('unredeemed');
      });
    });

    describe('revoke', () => {
      it('revokeToken: ok from unredeemed and from reserved; already_redeemed, revoked, not_found refuse', async () => {
        const m = await mint(3);
        const [free, held, used] = m.tokens as [string, string, string];
        await engine.reserve(held, 'holder', 60_000);
        await engine.redeem(used, 'r', 'u');
        const ev = await mark();
        const a = await engine.revokeToken(free);
        expect(a.code).toBe('ok');
        expect(a.token).toEqual({ token: free, state: 'revoked', ownerSatelliteId: m.sat, ownerUserId: m.user, campaignId: m.campaignId, createdAt: a.token!.createdAt });
        const b = await engine.revokeToken(held);
        expect(b.code).toBe('ok');
        expect(b.token).not.toHaveProperty('reservationId');
        expect(await engine.lookup(held)).toEqual(b.token);
        expect((await since(ev)).map((e) => [e.type, e.row])).toEqual(
          // two tokens of one owner share a shard stream, in call order
          [['revoked', a.token], ['revoked', b.token]],
        );
        expect(await listed(m.sat, m.user)).toEqual([]);
        expect(await counts(m.sat)).toEqual({ ...NO_COUNTS, generated: 3, redeemed: 1, revoked: 2 });
        const ev2 = await mark();
        const stats = await engine.stats();
        const c = await engine.revokeToken(used);
        expect(c.code).toBe('already_redeemed');
        expect(c.token).toMatchObject({ state: 'redeemed', redeemerSatelliteId: 'r' });
        expect((await engine.revokeToken(free)).code).toBe('revoked');
        expect(await engine.revokeToken(randomUUID())).toEqual({ code: 'not_found' });
        expect(await since(ev2)).toEqual([]);
        expect(await engine.stats()).toEqual(stats);
      });

      it('revokeOwner: counts and revokes only that owner\'s unredeemed and reserved tokens', async () => {
        const sat = uniq('sat');
        const otherSat = uniq('sat');
        const alice = uniq('alice');
        const a = await mint(5, { sat, user: alice });
        const bob = await mint(2, { sat });
        const aliceElsewhere = await mint(2, { sat: otherSat, user: alice });
        const [free1, free2, held, used, gone] = a.tokens as [string, string, string, string, string];
        await engine.reserve(held, 'holder', 60_000);
        await engine.redeem(used, 'r', 'u');
        await engine.revokeToken(gone);
        const ev = await mark();
        expect(await engine.revokeOwner(sat, alice)).toBe(3);
        const events = await since(ev);
        expect(events.map((e) => e.type)).toEqual(['revoked', 'revoked', 'revoked']);
        expect(events.map((e) => e.row.token).sort()).toEqual([free1, free2, held].sort());
        for (const e of events) expect(e.row).toEqual(await engine.lookup(e.row.token));
        expect(await state(used)).toBe('redeemed');
        expect(await state(gone)).toBe('revoked');
        expect(await listed(sat, alice)).toEqual([]);
        expect((await listed(sat, bob.user)).sort()).toEqual([...bob.tokens].sort());
        expect((await listed(otherSat, alice)).sort()).toEqual([...aliceElsewhere.tokens].sort());
        expect(await counts(sat)).toEqual({ ...NO_COUNTS, generated: 7, unredeemed: 2, redeemed: 1, revoked: 4 });
        const ev2 = await mark();
        expect(await engine.revokeOwner(sat, alice)).toBe(0);
        expect(await engine.revokeOwner(sat, uniq('nobody'))).toBe(0);
        expect(await engine.revokeOwner(uniq('no-such-sat'), alice)).toBe(0);
        expect(await since(ev2)).toEqual([]);
      });

      it('revokeOwner takes lapsed reservations too', async () => {
        const l = await lapsedReservation();
        expect(await engine.revokeOwner(l.sat, l.user)).toBe(1);
        expect(await counts(l.sat)).toEqual({ ...NO_COUNTS, generated: 1, revoked: 1 });
      });

      // lua/revoke.lua's campaign filter: the undo of a failed generate spares a token it collided with
      it('revokeOfCampaign revokes only tokens of that campaign; another campaign\'s is left unredeemed', async () => {
        const a = await mint(1, { campaignId: uniq('campA') });
        const t = a.tokens[0]!;
        const ev = await mark();
        expect(await engine.revokeOfCampaign([t], uniq('campB'))).toBe(0);
        expect(await state(t)).toBe('unredeemed');
        expect(await since(ev)).toEqual([]);
        expect(await counts(a.sat)).toEqual({ ...NO_COUNTS, generated: 1, unredeemed: 1 });
        expect(await engine.revokeOfCampaign([t, randomUUID()], a.campaignId)).toBe(1);
        expect(await state(t)).toBe('revoked');
      });

      it('revokeOfCampaign throws when a token could not be checked, after revoking the others', async () => {
        const a = await mint(1, { campaignId: uniq('campC') });
        // a token whose bucket key holds a string: its script fails in Redis (WRONGTYPE)
        let broken: string;
        let bucket: string;
        do {
          broken = randomUUID();
          const p = placeOfToken(hexOf(broken));
          bucket = f.store.keys.bucket(p.shard, p.bucket);
        } while (await f.redis.exists(bucket));
        await f.redis.set(bucket, 'not a hash');
        await expect(engine.revokeOfCampaign([a.tokens[0]!, broken], a.campaignId)).rejects.toThrow(/WRONGTYPE/);
        await f.redis.del(bucket);
        expect(await state(a.tokens[0]!)).toBe('revoked');
      });

      it('revokeCampaign: counts across shards and owners, only that campaign, only unredeemed and reserved', async () => {
        const satA = uniq('satA');
        const satB = uniq('satB');
        const campaign = uniq('camp');
        const otherCampaign = uniq('camp');
        const ownersA = Array.from({ length: 120 }, (_, i) => ({ ownerSatelliteId: satA, ownerUserId: `c-${i}` }));
        const ownersB = Array.from({ length: 80 }, (_, i) => ({ ownerSatelliteId: satB, ownerUserId: `c-${i}` }));
        const inCampaign = (await engine.generate({ owners: [...ownersA, ...ownersB], perUser: 2, campaignId: campaign })).tokens.map((t) => t.token);
        const outside = (await engine.generate({ owners: ownersA.slice(0, 30), perUser: 1, campaignId: otherCampaign })).tokens.map((t) => t.token);
        expect(new Set(inCampaign.map((t) => placeOfToken(t.replace(/-/g, '')).shard)).size).toBeGreaterThan(32);
        const [used, held, lapsed, gone] = inCampaign as [string, string, string, string];
        await engine.redeem(used, 'r', 'u');
        await engine.reserve(held, 'holder', 60_000);
        const lapse = await engine.reserve(lapsed, 'holder', 50);
        await engine.revokeToken(gone);
        await sleepUntil(lapse.token!.leaseExpiresAt! + 30);
        const ev = await mark();
        const n = await engine.revokeCampaign(campaign);
        expect(n).toBe(inCampaign.length - 2);
        const events = await since(ev);
        expect(events).toHaveLength(n);
        expect(new Set(events.map((e) => e.row.token))).toEqual(new Set(inCampaign.filter((t) => t !== used && t !== gone)));
        for (const e of events) expect([e.type, e.row.state, e.row.campaignId]).toEqual(['revoked', 'revoked', campaign]);
        expect(await state(used)).toBe('redeemed');
        for (const t of outside) expect(await state(t)).toBe('unredeemed');
        expect((await listed(satA, 'c-0')).length).toBe(1);
        expect(await listed(satB, 'c-0')).toEqual([]);
        // the four tokens touched first all belong to satA (owners c-0 and c-1)
        const stats = await engine.stats();
        expect(countsOf(stats, satA)).toEqual({ generated: 270, unredeemed: 30, reserved: 0, redeemed: 1, revoked: 239, purged: 0 });
        expect(countsOf(stats, satB)).toEqual({ ...NO_COUNTS, generated: 160, revoked: 160 });
        const ev2 = await mark();
        expect(await engine.revokeCampaign(campaign)).toBe(0);
        expect(await engine.revokeCampaign(uniq('no-such-campaign'))).toBe(0);
        expect(await since(ev2)).toEqual([]);
      });

      it('revokeSatellite: every user of that satellite, across shards and campaigns, only unredeemed and reserved', async () => {
        const sat = uniq('satA');
        const other = uniq('satB');
        // the same user ids on both satellites: the sweep tells owners apart by satellite, not by user
        const users = Array.from({ length: 150 }, (_, i) => `s-${i}`);
        const mine = (await engine.generate({ owners: users.map((u) => ({ ownerSatelliteId: sat, ownerUserId: u })), perUser: 2, campaignId: uniq('camp') })).tokens.map((t) => t.token);
        const later = (await engine.generate({ owners: users.slice(0, 20).map((u) => ({ ownerSatelliteId: sat, ownerUserId: u })), perUser: 1, campaignId: uniq('camp') })).tokens.map((t) => t.token);
        const theirs = (await engine.generate({ owners: users.map((u) => ({ ownerSatelliteId: other, ownerUserId: u })), perUser: 1 })).tokens.map((t) => t.token);
        expect((await engine.lookup(theirs.at(-1)!))?.ownerUserId).toBe('s-149');
        expect(new Set(mine.map((t) => placeOfToken(t.replace(/-/g, '')).shard)).size).toBeGreaterThan(32);
        const [used, held, lapsed, gone] = mine as [string, string, string, string];
        await engine.redeem(used, other, 'newcomer');
        await engine.reserve(held, other, 60_000);
        const lapse = await engine.reserve(lapsed, other, 50);
        await engine.revokeToken(gone);
        await engine.redeem(theirs[0]!, sat, 'newcomer');
        await sleepUntil(lapse.token!.leaseExpiresAt! + 30);
        const ev = await mark();
        const n = await engine.revokeSatellite(sat);
        expect(n).toBe(mine.length + later.length - 2);
        const events = await since(ev);
        expect(events).toHaveLength(n);
        expect(new Set(events.map((e) => e.row.token))).toEqual(new Set([...mine, ...later].filter((t) => t !== used && t !== gone)));
        for (const e of events) expect([e.type, e.row.state, e.row.ownerSatelliteId]).toEqual(['revoked', 'revoked', sat]);
        expect(await state(used)).toBe('redeemed');
        for (const t of theirs.slice(1)) expect(await state(t)).toBe('unredeemed');
        expect(await state(theirs[0]!)).toBe('redeemed');
        expect(await listed(sat, 's-149')).toEqual([]);
        // the other satellite's s-149 keeps its token (its s-0 is the one whose token was redeemed)
        expect(await listed(other, 's-149')).toEqual(theirs.slice(-1));
        const stats = await engine.stats();
        expect(countsOf(stats, sat)).toEqual({ generated: 320, unredeemed: 0, reserved: 0, redeemed: 1, revoked: 319, purged: 0 });
        expect(countsOf(stats, other)).toEqual({ ...NO_COUNTS, generated: 150, unredeemed: 149, redeemed: 1 });
        const ev2 = await mark();
        expect(await engine.revokeSatellite(sat)).toBe(0);
        expect(await engine.revokeSatellite(uniq('no-such-sat'))).toBe(0);
        expect(await since(ev2)).toEqual([]);
        // a sweep marks nothing: the satellite's users can be given tokens again
        const again = await mint(1, { sat, user: 's-0' });
        expect(await listed(sat, 's-0')).toEqual(again.tokens);
      });

      it('revokeSatellite sweeps a satellite whose users hold reserved tokens only: its counters show none unredeemed', async () => {
        const m = await mint(1);
        const t = m.tokens[0]!;
        expect((await engine.reserve(t, 'h', 60_000)).code).toBe('ok');
        expect(await counts(m.sat)).toEqual({ ...NO_COUNTS, generated: 1, reserved: 1 });
        expect(await engine.revokeSatellite(m.sat)).toBe(1);
        expect(await state(t)).toBe('revoked');
      });

      it('a sweep goes on past a bucket that used up a call\'s budget: the shard\'s later buckets are swept too', async () => {
        const sat = uniq('sat');
        // two users of one shard, the first in an earlier bucket with enough tokens to end a revoke_sweep call
        const seen = new Map<number, { user: string; bucket: number }>();
        let pair: [string, string] | undefined;
        for (let i = 0; !pair; i++) {
          const user = `heavy-${i}`;
          const p = placeOfOwner(sat, user);
          const other = seen.get(p.shard);
          if (other && other.bucket !== p.bucket) pair = other.bucket < p.bucket ? [other.user, user] : [user, other.user];
          else seen.set(p.shard, { user, bucket: p.bucket });
        }
        const campaignId = uniq('camp');
        await mint(200, { sat, user: pair[0], campaignId });
        const light = await mint(1, { sat, user: pair[1], campaignId });
        expect(await engine.revokeCampaign(campaignId)).toBe(201);
        expect(await state(light.tokens[0]!)).toBe('revoked');
        const again = await mint(200, { sat, user: pair[0] });
        await mint(1, { sat, user: pair[1] });
        expect(await engine.revokeSatellite(sat)).toBe(201);
        expect(await listed(sat, pair[1])).toEqual([]);
        expect(await state(again.tokens[199]!)).toBe('revoked');
      });
    });

    describe('purge', () => {
      it('deletes revoked and expired tokens made before the cutoff, keeps the rest, counts them purged, one event each', async () => {
        const sat = uniq('sat');
        const campaignId = uniq('camp');
        // long enough for the calls below to land before it, on a loaded machine and on Cluster
        const soon = Date.now() + 1500;
        const a = await mint(6, { sat, user: uniq('user'), campaignId, expiresAt: soon });
        const b = await mint(3, { sat, user: uniq('user') });
        const [revoked, expired, used, held, lapsedHeld] = a.tokens as [string, string, string, string, string];
        const [openB, revokedB, revokedLater] = b.tokens as [string, string, string];
        await engine.revokeToken(revoked);
        await engine.revokeToken(revokedB);
        expect((await engine.redeem(used, 'r', 'newcomer')).code).toBe('ok');
        expect((await engine.reserve(held, 'holder', 60_000)).code).toBe('ok');
        expect((await engine.reserve(lapsedHeld, 'holder', 50)).code).toBe('ok');
        await sleepUntil(soon + 30);
        const cutoff = Date.now();
        await sleep(5);
        // made after the cutoff: not purged
        const late = await mint(1, { sat, user: uniq('user'), campaignId: b.campaignId });
        await engine.revokeToken(late.tokens[0]!);
        await engine.revokeToken(revokedLater);
        const before = await counts(sat);
        const ev = await mark();
        // another campaign's tokens are left alone when one is named
        expect(await engine.purge(cutoff, campaignId)).toBe(4);
        const events = await since(ev);
        // one event each, carrying the token's last row (what the snapshot keeps); an expired token whose
        // reservation lapsed (a sign-up abandoned) goes too: nothing can redeem, reserve or complete it
        expect(new Map(events.map((e) => [e.row.token, [e.type, e.row.state]]))).toEqual(
          new Map([[revoked, ['purged', 'revoked']], [expired, ['purged', 'unredeemed']], [lapsedHeld, ['purged', 'unredeemed']], [a.tokens[5]!, ['purged', 'unredeemed']]]),
        );
        for (const t of [revoked, expired, lapsedHeld]) expect(await engine.lookup(t)).toBeUndefined();
        expect((await engine.release(lapsedHeld, 'any')).code).toBe('not_found');
        expect([await recorded(lapsedHeld), await leaseOf(lapsedHeld)]).toEqual([0, undefined]);
        expect((await engine.redeem(expired, 'r', 'late')).code).toBe('not_found');
        expect(await state(used)).toBe('redeemed');
        expect(await state(held)).toBe('reserved');
        expect(await state(revokedB)).toBe('revoked');
        // the lapsed reservation was counted under reserved, as stored
        expect(await counts(sat)).toEqual({ ...before, unredeemed: before.unredeemed - 2, reserved: before.reserved - 1, revoked: before.revoked - 1, purged: 4 });
        expect((await engine.listRedeemed(sat, a.user)).map((t) => t.token)).toEqual([used]);
        // then b's campaign: its revoked tokens made before the cutoff, not the one made after, not the open one
        // (a purge of every campaign would take other tests' tokens here: test/snapshot-purge.test.ts has one)
        expect(await engine.purge(cutoff, b.campaignId)).toBe(2);
        expect(await engine.lookup(revokedB)).toBeUndefined();
        expect(await engine.lookup(revokedLater)).toBeUndefined();
        expect(await state(late.tokens[0]!)).toBe('revoked');
        expect(await state(openB)).toBe('unredeemed');
        expect(await listed(sat, b.user)).toEqual([openB]);
        expect(await engine.purge(cutoff, b.campaignId)).toBe(0);
        // generated keeps counting every token made
        expect(await counts(sat)).toEqual({ ...NO_COUNTS, generated: 10, unredeemed: 1, reserved: 1, redeemed: 1, revoked: 1, purged: 6 });
        await expect(engine.purge(-1)).rejects.toThrow(DomainError);
      });

      it('"made before" is strict: a revoked token made in the cutoff\'s very millisecond stays, one made before it goes', async () => {
        const m = await mint(1, { campaignId: uniq('camp') });
        const [t] = m.tokens as [string];
        expect((await engine.revokeToken(t)).code).toBe('ok');
        const createdAt = (await engine.lookup(t))!.createdAt;
        expect(await engine.purge(createdAt, m.campaignId)).toBe(0);
        expect(await state(t)).toBe('revoked');
        expect(await engine.purge(createdAt + 1, m.campaignId)).toBe(1);
        expect(await engine.lookup(t)).toBeUndefined();
      });
    });

    describe('a reservation whose lease cannot be read', () => {
      it('counts it as lapsed, as every script does, instead of failing the shard\'s purge', async () => {
        const campaignId = uniq('camp');
        const soon = Date.now() + 1000;
        const m = await mint(1, { campaignId, expiresAt: soon });
        const [t] = m.tokens as [string];
        const r = await engine.reserve(t, 'h', 60_000);
        // a reservation record without its lease (a row restored with none)
        await f.redis.hset(f.store.keys.reservations(placeOfToken(hexOf(t)).shard), hexOf(t).slice(4), `${r.token!.reservationId}\th\t`);
        await sleepUntil(soon + 30);
        expect(await engine.purge(Date.now(), campaignId)).toBe(1);
        expect(await engine.lookup(t)).toBeUndefined();
        expect([await recorded(t), await leaseOf(t)]).toEqual([0, undefined]);
      });

      it('is listed as unredeemed, as lookup reports it, instead of failing the owner\'s list', async () => {
        const m = await mint(2);
        const [t] = m.tokens as [string, string];
        const r = await engine.reserve(t, 'h', 60_000);
        await f.redis.hset(f.store.keys.reservations(placeOfToken(hexOf(t)).shard), hexOf(t).slice(4), `${r.token!.reservationId}\th\t`);
        expect((await engine.lookup(t))?.state).toBe('unredeemed');
        expect((await listed(m.sat, m.user)).sort()).toEqual([...m.tokens].sort());
      });
    });

    describe('lookup', () => {
      it('changes nothing, whatever the state', async () => {
        const m = await mint(5);
        const [, held, used, gone] = m.tokens as [string, string, string, string, string];
        await engine.reserve(held, 'holder', 60_000);
        await engine.redeem(used, 'r', 'u');
        await engine.revokeToken(gone);
        const lapse = await engine.reserve(m.tokens[4]!, 'holder', 50);
        await sleepUntil(lapse.token!.leaseExpiresAt! + 30);
        const ev = await mark();
        const stats = await engine.stats();
        const list = await engine.listUnredeemed(m.sat, m.user);
        const first = await Promise.all(m.tokens.map((t) => engine.lookup(t)));
        expect(first.map((t) => t!.state)).toEqual(['unredeemed', 'reserved', 'redeemed', 'revoked', 'unredeemed']);
        for (let i = 0; i < 3; i++) expect(await Promise.all(m.tokens.map((t) => engine.lookup(t)))).toEqual(first);
        expect(await engine.lookup(randomUUID())).toBeUndefined();
        expect(await since(ev)).toEqual([]);
        expect(await engine.stats()).toEqual(stats);
        expect(await engine.listUnredeemed(m.sat, m.user)).toEqual(list);
      });

      it('listRedeemed: only the owner\'s redeemed tokens, with redeemer and time, oldest first; changes nothing', async () => {
        const m = await mint(6, { campaignId: uniq('camp') });
        const [first, viaReserve, held, gone, , second] = m.tokens as [string, string, string, string, string, string];
        expect(await engine.listRedeemed(m.sat, m.user)).toEqual([]);
        expect((await engine.redeem(first, 'sat-x', 'new-1')).code).toBe('ok');
        const r = await engine.reserve(viaReserve, 'sat-y', 60_000);
        // redemptions in distinct milliseconds, so their order is the time's, not the tie-break's
        await sleepUntil(Date.now() + 5);
        expect((await engine.complete(viaReserve, r.token!.reservationId!, 'new-2')).code).toBe('ok');
        await engine.reserve(held, 'sat-y', 60_000);
        await engine.revokeToken(gone);
        await sleepUntil(Date.now() + 5);
        expect((await engine.redeem(second, 'sat-x', 'new-3')).code).toBe('ok');
        // another owner's redeemed token, also one a user of the same id on another satellite holds
        const other = await mint(1, { user: m.user });
        await engine.redeem(other.tokens[0]!, 'sat-x', 'new-4');
        const ev = await mark();
        const listed = await engine.listRedeemed(m.sat, m.user);
        const looked = await Promise.all([first, viaReserve, second].map((t) => engine.lookup(t)));
        expect(listed).toEqual(looked.map((t) => ({ token: t!.token, campaignId: m.campaignId, redeemerSatelliteId: t!.redeemerSatelliteId, redeemerUserId: t!.redeemerUserId, redeemedAt: t!.redeemedAt })));
        expect(listed.map((t) => [t.redeemerSatelliteId, t.redeemerUserId])).toEqual([['sat-x', 'new-1'], ['sat-y', 'new-2'], ['sat-x', 'new-3']]);
        expect(await engine.listRedeemed(other.sat, m.user)).toHaveLength(1);
        expect(await engine.listRedeemed(uniq('sat'), m.user)).toEqual([]);
        expect(await since(ev)).toEqual([]);
        await expect(engine.listRedeemed(m.sat, '')).rejects.toMatchObject({ code: 'invalid_request' });
      });

      it('storedStates: each token\'s state as stored, in order, across buckets; a lapsed lease still reads reserved; absent is undefined', async () => {
        const m = await mint(5);
        const [, held, used, gone, lapsing] = m.tokens as [string, string, string, string, string];
        await engine.reserve(held, 'holder', 60_000);
        await engine.redeem(used, 'r', 'u');
        await engine.revokeToken(gone);
        const lapse = await engine.reserve(lapsing, 'holder', 50);
        await sleepUntil(lapse.token!.leaseExpiresAt! + 30);
        const others = (await engine.generate({ owners: Array.from({ length: 50 }, (_, i) => ({ ownerSatelliteId: uniq('sat'), ownerUserId: `o-${i}` })), perUser: 1 })).tokens.map((t) => t.token);
        await engine.revokeToken(others[7]!);
        const absent = randomUUID();
        const asked = [absent, ...m.tokens, ...others, m.tokens[3]!];
        const want = [undefined, 'unredeemed', 'reserved', 'redeemed', 'revoked', 'reserved', ...others.map((_, i) => (i === 7 ? 'revoked' : 'unredeemed')), 'revoked'];
        expect(await engine.storedStates(asked)).toEqual(want);
        await expect(engine.storedStates(['not-a-token'])).rejects.toMatchObject({ code: 'invalid_request' });
      });
    });

    describe('stats and events over a whole life', () => {
      it('keep per-satellite counters, the redemption matrix and the event log in step with every transition', async () => {
        const satA = uniq('satA');
        const satB = uniq('satB');
        const satC = uniq('satC');
        const gen = await engine.generate({
          owners: [
            { ownerSatelliteId: satA, ownerUserId: 'a1' },
            { ownerSatelliteId: satA, ownerUserId: 'a2' },
            { ownerSatelliteId: satB, ownerUserId: 'b1' },
          ],
          perUser: 4,
        });
        const tok = (sat: string, user: string) => gen.tokens.filter((t) => t.ownerSatelliteId === sat && t.ownerUserId === user).map((t) => t.token);
        const [a1, a2, b1] = [tok(satA, 'a1'), tok(satA, 'a2'), tok(satB, 'b1')];
        const expected: Record<string, Counts> = {
          [satA]: { ...NO_COUNTS, generated: 8, unredeemed: 8 },
          [satB]: { ...NO_COUNTS, generated: 4, unredeemed: 4 },
        };
        const matrix: Record<string, Record<string, number>> = { [satA]: {}, [satB]: {} };
        const owned = (t: string) => (b1.includes(t) ? satB : satA);
        const move = (t: string, from: TokenState, to: TokenState) => {
          const c = expected[owned(t)]!;
          c[from]--;
          c[to]++;
        };
        const redeemedBy = (t: string, sat: string) => {
          const m = matrix[owned(t)]!;
          m[sat] = (m[sat] ?? 0) + 1;
        };
        const step = async (what: () => Promise<{ code: string }>, code: string, event?: [string, string, TokenState]) => {
          const ev = await mark();
          expect((await what()).code).toBe(code);
          expect(await changes(ev)).toEqual(event ? [event] : []);
          const stats = await engine.stats();
          for (const sat of [satA, satB]) {
            expect(countsOf(stats, sat)).toEqual(expected[sat]);
            expect(redemptionsOf(stats, sat)).toEqual(matrix[sat]);
          }
          expect(countsOf(stats, satC)).toEqual(NO_COUNTS);
        };

        await step(async () => ({ code: 'ok' }), 'ok');
        // redeem a1[0] by C, retry, refused by B
        move(a1[0]!, 'unredeemed', 'redeemed');
        redeemedBy(a1[0]!, satC);
        await step(() => engine.redeem(a1[0]!, satC, 'c1'), 'ok', ['redeemed', a1[0]!, 'redeemed']);
        await step(() => engine.redeem(a1[0]!, satC, 'c1'), 'ok');
        await step(() => engine.redeem(a1[0]!, satB, 'c1'), 'already_redeemed');
        // reserve a1[1] by B -> complete
        move(a1[1]!, 'unredeemed', 'reserved');
        let r1: Reserved | undefined;
        await step(async () => (r1 = await engine.reserve(a1[1]!, satB, 60_000)), 'ok', ['reserved', a1[1]!, 'reserved']);
        await step(() => engine.reserve(a1[1]!, satC, 60_000), 'reserved');
        await step(() => engine.redeem(a1[1]!, satC, 'x'), 'reserved');
        await step(() => engine.complete(a1[1]!, randomUUID(), 'b-new'), 'reservation_mismatch');
        move(a1[1]!, 'reserved', 'redeemed');
        redeemedBy(a1[1]!, satB);
        await step(() => engine.complete(a1[1]!, r1!.token!.reservationId!, 'b-new'), 'ok', ['redeemed', a1[1]!, 'redeemed']);
        // reserve a2[0] -> release -> redeem by A itself (same-satellite referral)
        move(a2[0]!, 'unredeemed', 'reserved');
        const r2 = await engine.reserve(a2[0]!, satC, 60_000);
        move(a2[0]!, 'reserved', 'unredeemed');
        await step(() => engine.release(a2[0]!, r2.token!.reservationId!), 'ok', ['released', a2[0]!, 'unredeemed']);
        move(a2[0]!, 'unredeemed', 'redeemed');
        redeemedBy(a2[0]!, satA);
        await step(() => engine.redeem(a2[0]!, satA, 'a-new'), 'ok', ['redeemed', a2[0]!, 'redeemed']);
        // B's tokens: one lapsed then redeemed by C, one lapsed then re-reserved and completed by A, one revoked reserved
        move(b1[0]!, 'unredeemed', 'reserved');
        move(b1[1]!, 'unredeemed', 'reserved');
        const lapseA = await engine.reserve(b1[0]!, satA, 50);
        const lapseB = await engine.reserve(b1[1]!, satA, 50);
        await sleepUntil(Math.max(lapseA.token!.leaseExpiresAt!, lapseB.token!.leaseExpiresAt!) + 30);
        await step(() => engine.complete(b1[0]!, lapseA.token!.reservationId!, 'x'), 'reservation_expired');
        move(b1[0]!, 'reserved', 'redeemed');
        redeemedBy(b1[0]!, satC);
        await step(() => engine.redeem(b1[0]!, satC, 'c2'), 'ok', ['redeemed', b1[0]!, 'redeemed']);
        let r3: Reserved | undefined;
        await step(async () => (r3 = await engine.reserve(b1[1]!, satA, 60_000)), 'ok', ['reserved', b1[1]!, 'reserved']);
        move(b1[1]!, 'reserved', 'redeemed');
        redeemedBy(b1[1]!, satA);
        await step(() => engine.complete(b1[1]!, r3!.token!.reservationId!, 'a3'), 'ok', ['redeemed', b1[1]!, 'redeemed']);
        move(b1[2]!, 'unredeemed', 'reserved');
        await engine.reserve(b1[2]!, satC, 60_000);
        move(b1[2]!, 'reserved', 'revoked');
        await step(() => engine.revokeToken(b1[2]!), 'ok', ['revoked', b1[2]!, 'revoked']);
        await step(() => engine.revokeToken(b1[2]!), 'revoked');
        await step(() => engine.revokeToken(b1[0]!), 'already_redeemed');
        // revoke owner a2 (3 left unredeemed), then the campaign (a1's 2 left and b1's 1 left)
        for (const t of a2.slice(1)) move(t, 'unredeemed', 'revoked');
        const ev = await mark();
        expect(await engine.revokeOwner(satA, 'a2')).toBe(3);
        expect((await changes(ev)).map((c) => c[0])).toEqual(['revoked', 'revoked', 'revoked']);
        for (const t of [...a1.slice(2), b1[3]!]) move(t, 'unredeemed', 'revoked');
        const ev2 = await mark();
        expect(await engine.revokeCampaign(gen.campaignId)).toBe(3);
        expect((await changes(ev2)).map((c) => c[0])).toEqual(['revoked', 'revoked', 'revoked']);
        await step(async () => ({ code: 'ok' }), 'ok');
        expect(expected[satA]).toEqual({ generated: 8, unredeemed: 0, reserved: 0, redeemed: 3, revoked: 5, purged: 0 });
        expect(expected[satB]).toEqual({ generated: 4, unredeemed: 0, reserved: 0, redeemed: 2, revoked: 2, purged: 0 });
        // and the final state of every token agrees with the counters
        for (const sat of [satA, satB]) {
          const mine = gen.tokens.filter((t) => t.ownerSatelliteId === sat);
          const looked = await Promise.all(mine.map((t) => engine.lookup(t.token)));
          const byState: Counts = { ...NO_COUNTS, generated: mine.length };
          for (const t of looked) byState[t!.state]++;
          expect(byState).toEqual(expected[sat]);
        }
        // no reservation record outlives its reservation (lua/includes/codec.lua: `:rs` holds live ones only)
        for (const { token } of gen.tokens) {
          expect([await recorded(token), await leaseOf(token)], token).toEqual([0, undefined]);
        }
      });

      // ids are opaque strings: a satellite may be called like an Object.prototype member
      it('counts satellites named __proto__, constructor and toString, and leaves Object.prototype alone', async () => {
        const names = ['__proto__', 'constructor', 'toString', 'hasOwnProperty'];
        const gen = await engine.generate({ owners: names.map((s) => ({ ownerSatelliteId: s, ownerUserId: 'u' })), perUser: 2 });
        const byProto = gen.tokens.find((t) => t.ownerSatelliteId === '__proto__')!.token;
        expect((await engine.redeem(byProto, 'constructor', 'new')).code).toBe('ok');
        const stats = await engine.stats();
        expect(({} as Record<string, unknown>).generated).toBeUndefined();
        expect(Object.keys(stats.satellites).filter((s) => names.includes(s)).sort()).toEqual([...names].sort());
        for (const s of names) expect(Object.getOwnPropertyDescriptor(stats.satellites, s)?.value, s).toEqual({ ...NO_COUNTS, generated: 2, unredeemed: s === '__proto__' ? 1 : 2, redeemed: s === '__proto__' ? 1 : 0 });
        expect(redemptionsOf(stats, '__proto__')).toEqual({ constructor: 1 });
        expect(JSON.parse(JSON.stringify(stats)).satellites.__proto__).toMatchObject({ generated: 2 });
      });

      it('the event log replays to the tokens\' current rows', async () => {
        const m = await mint(4);
        const start = await mark();
        const [a, b, c, d] = m.tokens as [string, string, string, string];
        await engine.redeem(a, 's', 'u');
        const r = await engine.reserve(b, 's', 60_000);
        await engine.complete(b, r.token!.reservationId!, 'u2');
        const r2 = await engine.reserve(c, 's', 60_000);
        await engine.release(c, r2.token!.reservationId!);
        await engine.revokeToken(d);
        const events = await since(start);
        expect(events.map((e) => e.type)).toEqual(['redeemed', 'reserved', 'redeemed', 'reserved', 'released', 'revoked']);
        const last = new Map<string, Token>();
        for (const e of events) {
          expect(e.names).toEqual(['type', 'at', 'row']);
          expect(e.columns).toHaveLength(13);
          last.set(e.row.token, e.row);
        }
        for (const t of m.tokens) expect(last.get(t)).toEqual(await engine.lookup(t));
        // stream ids and `at` never go backwards within a shard
        for (let i = 1; i < events.length; i++) expect(events[i]!.at).toBeGreaterThanOrEqual(events[i - 1]!.at);
      });
    });
  });
}
