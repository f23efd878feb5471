import { DomainError } from '../errors.js';
import { inLanes, pushTo, slices, sortInTurns } from '../collections.js';
import { ARGS_PER_CALL, type RedisClient } from './redis.js';
import { NotReplicated, ReplicaAck, type ReplicaWait } from './replicas.js';
import { defineScripts, preloadScripts, type ScriptFn, type ScriptName } from './scripts.js';
import { BUCKETS_PER_SHARD, Keys, SHARDS, placeOfOwner, placeOfToken, type OwnerPlace } from './keys.js';
import { STATE_NAME, dashed, decodeResult, hexOf } from './codec.js';
import { SATELLITE_COUNTERS, type CompleteCode, type RedeemCode, type ReleaseCode, type RedeemedToken, type Result, type RevokeCode, type Stats, type TokenSet, type TokenState, type UnredeemedToken } from './model.js';

/**
 * New tokens equal to tokens that existed before (hex): those were left untouched, and must stay so. `cause`:
 * a shard's script that failed in the same call (collisions in that shard cannot be known).
 */
export class TokenCollision extends Error {
  constructor(readonly hexes: string[], cause?: unknown) {
    super(`token collision on ${hexes.join(', ')}${cause === undefined ? '' : `; and ${(cause as Error).message ?? cause}`}`, { cause });
  }
}

/**
 * A generate refused because its campaign was revoked. `made`: the tokens other shards of the call had made
 * before the revoke marked them (TokenEngine.generate revokes them at once), which the engine's counts, the
 * snapshot and a revoke's sweep see as the campaign's.
 */
export class CampaignRevokedInGenerate extends DomainError {
  constructor(campaignId: string, readonly made: number) {
    super('campaign_revoked', `campaign "${campaignId}" was revoked: no more tokens are made for it`);
  }
}

export interface OwnerBatch {
  ownerSatelliteId: string;
  ownerUserId: string;
  /** the new tokens, already placed in the owner's bucket (their first 16 bits are the place's) */
  minted: TokenSet;
  /** placeOfOwner(ownerSatelliteId, ownerUserId): the caller made the tokens for it */
  place: OwnerPlace;
}

/**
 * A sweep call (lua/includes/sweep.lua) stops once its work passes SWEEP_BUDGET (about µs of Redis time: a
 * record read costs 1, a token changed 16) or it has read SWEEP_WINDOW buckets; SWEEP_LANES shards are swept
 * at once.
 */
const SWEEP_BUDGET = 1_000;
const SWEEP_WINDOW = 128;
const SWEEP_LANES = 2;
/** Lapsed reservations one lapse call gives back at most (lua/lapse.lua: ~20 µs of Redis each). */
const LAPSE_PAGE = 100;
/**
 * Fields of an owner's bucket one call of list, list_redeemed or an owner revoke scans (HSCAN COUNT;
 * lua/includes/owner.lua): about 1 ms of Redis for a list, 3 for a revoke, at 100k tokens of one owner.
 */
const OWNER_PAGE = 256;

/**
 * Redis side of the token engine: one method per Lua script, inputs already validated.
 * Tokens arrive in their canonical dashed form; the scripts get them both as 32 hex digits (they store
 * a 28-digit suffix under the bucket that the first 4 digits name) and dashed (for replies and events).
 */
export class TokenStore {
  readonly keys: Keys;
  private readonly s: Record<ScriptName, ScriptFn>;
  private readonly ack: ReplicaAck;

  /**
   * `wait`: REDIS_WAIT_REPLICAS and REDIS_WAIT_MS; a change is answered once that many replicas have it
   * (src/store/replicas.ts). Required, so no caller that changes tokens drops the setting unawares; a
   * reader, a bench or a test passes NO_REPLICA_WAIT.
   */
  constructor(readonly redis: RedisClient, prefix: string, wait: ReplicaWait) {
    this.keys = new Keys(prefix);
    this.s = defineScripts(redis);
    this.ack = new ReplicaAck(redis, wait.redisWaitReplicas, wait.redisWaitMs);
  }

  preload(): Promise<void> {
    return preloadScripts(this.redis);
  }

  /** Writes owners' tokens, one script call per virtual shard, all shards in parallel. */
  async generate(batches: OwnerBatch[], campaignId: string, expiresAt?: number): Promise<number> {
    const byShard = new Map<number, { keys: string[]; args: (string | number)[]; owners: number; bucketIndex: Map<number, number> }>();
    for (const b of batches) {
      const { place } = b;
      let g = byShard.get(place.shard);
      if (!g) {
        const k = this.keys;
        // args[2], the owner count, is filled in once all owners are in
        g = { keys: [k.dict(place.shard), k.stats(place.shard), k.events(place.shard)], args: [campaignId, expiresAt ?? '', 0], owners: 0, bucketIndex: new Map() };
        byShard.set(place.shard, g);
      }
      let idx = g.bucketIndex.get(place.bucket);
      if (idx === undefined) {
        idx = g.keys.push(this.keys.bucket(place.shard, place.bucket));
        g.bucketIndex.set(place.bucket, idx);
      }
      g.args.push(idx, place.refHint, b.ownerSatelliteId, b.ownerUserId, b.minted.count, b.minted.hex, b.minted.dashed);
      g.owners++;
    }
    // every call settles before an error is thrown: the caller then revokes what was made (TokenEngine.generate),
    // and a call still running would make tokens after that
    const settled = await Promise.allSettled(
      [...byShard.values()].map((g) => {
        g.args[2] = g.owners;
        return this.s.generate(g.keys, g.args);
      }),
    );
    const replies = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value as (number | string)[]] : []));
    // read before a failure is thrown: the caller undoes the call, and must spare what the others collided with
    const collided = replies.flatMap((r) => r.slice(1).map(String));
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw collided.length ? new TokenCollision(collided, failed.reason) : failed.reason;
    if (replies.some((r) => r[0] === 'campaign_revoked')) throw new CampaignRevokedInGenerate(campaignId, replies.reduce((sum, r) => sum + (r[0] === 'campaign_revoked' ? 0 : Number(r[0])), 0));
    if (collided.length) throw new TokenCollision(collided);
    await this.ack.after(...[...byShard.values()].map((g) => g.keys[0]!));
    return replies.reduce((sum, r) => sum + Number(r[0]), 0);
  }

  // the scripts also get the token dashed, for their reply and event row: cheaper passed on than made in Lua
  private single<C extends string>(script: 'redeem' | 'reserve' | 'complete' | 'release', token: string, args: (string | number)[]): Promise<Result<C>> {
    const hex = hexOf(token);
    const keys = this.keys.tokenKeys(placeOfToken(hex));
    return this.changed(keys[0]!, this.s[script](keys, [hex, ...args, token]).then((r) => decodeResult<C>(r)));
  }

  /** The reply of a script on `key`'s shard; an 'ok' (a change, or the replay of one) once the replicas asked for have it. */
  private changed<R extends { code: string }>(key: string, reply: Promise<R>): Promise<R> {
    // off (the default), the hot path keeps its one promise
    if (!this.ack.on) return reply;
    return reply.then(async (r) => {
      if (r.code === 'ok') await this.ack.after(key);
      return r;
    });
  }

  redeem(token: string, redeemerSatelliteId: string, redeemerUserId: string): Promise<Result<RedeemCode>> {
    return this.single('redeem', token, [redeemerSatelliteId, redeemerUserId]);
  }

  /** `own`: the satellite chose `reservationId` (its repeat is answered ok, lua/reserve.lua) */
  reserve(token: string, satelliteId: string, leaseMs: number, reservationId: string, own: boolean): Promise<Result<RedeemCode>> {
    const reply = this.single<RedeemCode>('reserve', token, [satelliteId, leaseMs, reservationId]);
    // off (the default), the hot path keeps its one promise
    if (!this.ack.on || own) return reply;
    return reply.catch(async (err: unknown) => {
      // A reserve the replicas did not confirm is answered 503, and the satellite never learns an id of ours: its
      // retry would meet token_reserved for the whole lease, so the token is given back (best effort, unconfirmed
      // too). One with the satellite's own id is kept: its retry with that id is answered ok, and a release here
      // undid such a retry answered 200 meanwhile (another sign-up then took the token). A redeem or complete
      // needs no undo: its retry by the same user is answered ok.
      if (err instanceof NotReplicated) {
        const hex = hexOf(token);
        await this.s.release(this.keys.tokenKeys(placeOfToken(hex)), [hex, reservationId, satelliteId, token]).catch(() => undefined);
      }
      throw err;
    });
  }

  /** `satelliteId`: the caller, which must be the satellite that reserved ('': any) */
  complete(token: string, reservationId: string, redeemerUserId: string, satelliteId: string): Promise<Result<CompleteCode>> {
    return this.single('complete', token, [reservationId, redeemerUserId, satelliteId]);
  }

  release(token: string, reservationId: string, satelliteId: string): Promise<Result<ReleaseCode>> {
    return this.single('release', token, [reservationId, satelliteId]);
  }

  lookup(token: string): Promise<Result<'ok' | 'not_found'>> {
    const hex = hexOf(token);
    const keys = this.keys.tokenKeys(placeOfToken(hex)).slice(0, 4);
    return this.s.lookup(keys, [hex, token]).then((r) => decodeResult(r));
  }

  revokeToken(token: string): Promise<Result<RevokeCode>> {
    const hex = hexOf(token);
    const keys = this.keys.tokenKeys(placeOfToken(hex));
    return this.changed(keys[0]!, this.s.revoke(keys, ['token', hex]).then((r) => decodeResult<RevokeCode>(r)));
  }

  /**
   * Revokes tokens a failed generate of `campaignId` may have made; a token that is absent or of another
   * campaign (one it collided with) is left alone. Every call settles; returns how many were revoked and
   * the first error of those that failed.
   */
  async revokeMade(tokens: string[], campaignId: string): Promise<{ revoked: number; failed: number; error?: unknown }> {
    const rs = await Promise.allSettled(tokens.map((t) => {
      const hex = hexOf(t);
      return this.s.revoke(this.keys.tokenKeys(placeOfToken(hex)), ['token', hex, campaignId]) as Promise<string[]>;
    }));
    const failed = rs.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    const revoked = rs.filter((r) => r.status === 'fulfilled' && r.value[0] === 'ok').length;
    return { revoked, failed: failed.length, error: failed[0]?.reason };
  }

  /**
   * The stored state of each of these tokens (undefined: absent), without a script: one HMGET per bucket
   * they fall in, as the state is the first letter of a token's record (lua/includes/codec.lua). A lapsed
   * lease still reads `reserved`; `revoked` and `redeemed` are final.
   */
  async storedStates(tokens: string[]): Promise<(TokenState | undefined)[]> {
    const byBucket = new Map<string, number[]>();
    tokens.forEach((t, i) => {
      const p = placeOfToken(hexOf(t));
      pushTo(byBucket, this.keys.bucket(p.shard, p.bucket), i);
    });
    const states = new Array<TokenState | undefined>(tokens.length);
    // a slice of a bucket a call: one owner's tokens share a bucket, and 130,000 of them as the arguments of one
    // HMGET overflowed the stack (and one call that long holds Redis)
    await Promise.all(
      [...byBucket].flatMap(([bucket, all]) =>
        [...slices(all, ARGS_PER_CALL)].map(async (at) => {
          const records = await this.redis.hmget(bucket, ...at.map((i) => hexOf(tokens[i]!).slice(4)));
          records.forEach((r, j) => (states[at[j]!] = r ? STATE_NAME[r[0]!] : undefined));
        }),
      ),
    );
    return states;
  }

  async revokeOwner(ownerSatelliteId: string, ownerUserId: string): Promise<number> {
    const p = placeOfOwner(ownerSatelliteId, ownerUserId);
    const keys = this.keys.tokenKeys(p);
    let revoked = 0;
    await this.ownerPages('revoke', keys, ['owner', ownerSatelliteId, ownerUserId, p.refHint, p.prefix], (r) => (revoked += Number(r[1])));
    await this.ack.after(keys[0]!);
    return revoked;
  }

  /**
   * Runs an owner script (lua/includes/owner.lua) page by page: each call scans about OWNER_PAGE fields of
   * the owner's bucket from the cursor the last one replied first, until that is '0'.
   */
  private async ownerPages(script: 'list' | 'list_redeemed' | 'revoke', keys: string[], args: (string | number)[], page: (reply: string[]) => void): Promise<void> {
    let cursor = '0';
    do {
      const r = (await this.s[script](keys, [...args, cursor, OWNER_PAGE])) as string[];
      cursor = String(r[0]);
      page(r);
    } while (cursor !== '0');
  }

  /**
   * Records the revocation first in the registry of revoked campaigns (which the snapshot carries, for every
   * campaign id, and which generate's CLI reads), then sweeps every shard; each shard's sweep also marks it,
   * atomically, so a generate still running for the campaign makes nothing there afterwards (lua/generate.lua).
   * The marks hold the registry's time. Many slots: a revoke that fails part-way is sent again (each step
   * keeps the first time), or mended by `verify --repair-revocations`.
   * `revokedAt`: the time to record if the campaign is not yet registered revoked (default: now).
   */
  async revokeCampaign(campaignId: string, revokedAt?: number): Promise<number> {
    const at = Number(await this.s.revocation_record([this.keys.revokedCampaigns()], revokedAt === undefined ? [campaignId] : [campaignId, revokedAt]));
    const n = await this.sweep('revoke_sweep', ['campaign', campaignId], [at]);
    await this.ack.afterAll();
    return n;
  }

  /**
   * Revokes every unredeemed or reserved token of every user of one satellite (a satellite retired or whose
   * users' invitations must stop). It marks nothing: tokens made afterwards are not touched.
   */
  async revokeSatellite(ownerSatelliteId: string): Promise<number> {
    const n = await this.sweep('revoke_sweep', ['satellite', ownerSatelliteId], []);
    await this.ack.afterAll();
    return n;
  }

  /**
   * Deletes revoked tokens, and unredeemed ones past their expiresAt (a lapsed reservation too), made before `madeBefore` (of one
   * campaign if given), from Redis; Postgres keeps them, marked purged (lua/purge.lua). How many (`dryRun`:
   * how many would be, with nothing changed).
   */
  purge(madeBefore: number, campaignId?: string, dryRun = false): Promise<number> {
    return this.sweep('purge', [madeBefore, campaignId ?? ''], dryRun ? ['dry'] : []);
  }

  /**
   * lua/revoke_sweep.lua or lua/purge.lua over every shard, SWEEP_LANES shards at a time, each in calls of
   * bounded work (SWEEP_BUDGET): Redis runs a client's queued calls back to back, so one call per shard, all
   * sent at once, held other clients' redeems up to 260 ms at 1M tokens (bench/sweep.ts). How many tokens
   * the calls changed.
   */
  private async sweep(script: 'revoke_sweep' | 'purge', what: (string | number)[], more: (string | number)[]): Promise<number> {
    const k = this.keys;
    let changed = 0;
    await inLanes(SHARDS, SWEEP_LANES, async (shard) => {
      const head = k.shardKeys(shard);
      for (let from = 0, cursor = '0'; from >= 0; ) {
        const keys = [...head];
        for (let b = from; b < Math.min(from + SWEEP_WINDOW, BUCKETS_PER_SHARD); b++) keys.push(k.bucket(shard, b));
        const r = (await this.s[script](keys, [...what, shard, BUCKETS_PER_SHARD, from, SWEEP_BUDGET, cursor, ...more])) as [string, number, number, string];
        changed += Number(r[1]);
        from = Number(r[2]);
        cursor = String(r[3]);
      }
    });
    return changed;
  }

  /**
   * Gives back every reservation whose lease ended over `graceMs` ago (lua/lapse.lua): a sign-up that neither
   * completed nor released. One read of each shard's lease index (nearly always empty), then calls of at most
   * LAPSE_PAGE tokens, SWEEP_LANES shards at a time. How many were given back, and the shards that failed
   * (the others are swept all the same).
   */
  async lapse(graceMs: number): Promise<{ given: number; failed: { shard: number; error: unknown }[] }> {
    const k = this.keys;
    // Redis' clock decides in the script; this one only picks what to send
    const before = Date.now() - graceMs;
    const read = (shard: number) => this.redis.zrangebyscore(k.leases(shard), '-inf', before, 'LIMIT', 0, LAPSE_PAGE);
    let given = 0;
    const failed: { shard: number; error: unknown }[] = [];
    const due = await Promise.all(Array.from({ length: SHARDS }, (_, shard) => read(shard).catch((error: unknown) => (failed.push({ shard, error }), []))));
    await inLanes(SHARDS, SWEEP_LANES, async (shard) => {
      try {
        for (let page = due[shard]!; page.length; page = await read(shard)) {
          const [n, removed, written] = await this.lapseCall(shard, page, graceMs);
          given += n;
          // the last page, or one holding entries Redis' clock says are not due yet: read again, they would come back
          if (page.length < LAPSE_PAGE || n + removed + written < page.length) return;
        }
      } catch (error) {
        failed.push({ shard, error });
      }
    });
    return { given, failed };
  }

  /**
   * Writes the lease index entry of each of these tokens (hex) that is reserved, at its stored lease, and removes
   * the entry of each that is not (lua/lapse.lua with an endless grace): `verify --repair-leases`. How many entries changed.
   */
  async reindexLeases(hexes: string[]): Promise<number> {
    const byShard = new Map<number, string[]>();
    for (const hex of hexes) pushTo(byShard, placeOfToken(hex).shard, hex);
    let changed = 0;
    for (const [shard, all] of byShard) {
      for (let i = 0; i < all.length; i += LAPSE_PAGE) {
        const [, removed, written] = await this.lapseCall(shard, all.slice(i, i + LAPSE_PAGE), Number.MAX_SAFE_INTEGER);
        changed += removed + written;
      }
    }
    return changed;
  }

  private async lapseCall(shard: number, hexes: string[], graceMs: number): Promise<[number, number, number]> {
    const k = this.keys;
    const buckets = hexes.map((hex) => k.bucket(shard, placeOfToken(hex).bucket));
    return (await this.s.lapse([...k.shardKeys(shard), ...buckets], [graceMs, ...hexes])) as [number, number, number];
  }

  /** An owner's redeemed tokens, oldest redemption first. */
  async listRedeemed(ownerSatelliteId: string, ownerUserId: string): Promise<RedeemedToken[]> {
    const p = placeOfOwner(ownerSatelliteId, ownerUserId);
    const [bucket, dict, , rd] = this.keys.tokenKeys(p);
    // by token: a resize of the bucket between pages may show one twice
    const found = new Map<string, RedeemedToken>();
    await this.ownerPages('list_redeemed', [bucket!, dict!, rd!], [ownerSatelliteId, ownerUserId, p.refHint, p.prefix], (r) => {
      for (let i = 1; i < r.length; i += 5) {
        found.set(r[i]!, { token: dashed(r[i]!), campaignId: r[i + 1]!, redeemerSatelliteId: r[i + 2]!, redeemerUserId: r[i + 3]!, redeemedAt: Number(r[i + 4]) });
      }
    });
    return sortInTurns([...found.values()], (a, b) => a.redeemedAt - b.redeemedAt || a.token.localeCompare(b.token));
  }

  async listUnredeemed(ownerSatelliteId: string, ownerUserId: string): Promise<UnredeemedToken[]> {
    const p = placeOfOwner(ownerSatelliteId, ownerUserId);
    const keys = this.keys.tokenKeys(p).slice(0, 3);
    const found = new Map<string, UnredeemedToken>();
    await this.ownerPages('list', keys, [ownerSatelliteId, ownerUserId, p.refHint, p.prefix], (r) => {
      for (let i = 1; i < r.length; i += 4) {
        const t: UnredeemedToken = { token: dashed(r[i]!), campaignId: r[i + 1]!, createdAt: Number(r[i + 2]) };
        if (r[i + 3]) t.expiresAt = Number(r[i + 3]);
        found.set(r[i]!, t);
      }
    });
    return sortInTurns([...found.values()], (a, b) => a.createdAt - b.createdAt || a.token.localeCompare(b.token));
  }

  /** Sums the per-shard counters the scripts keep. */
  async stats(): Promise<Stats> {
    const all = await Promise.all(Array.from({ length: SHARDS }, (_, s) => this.redis.hgetall(this.keys.stats(s))));
    // satellite ids are opaque: in a plain object "__proto__" would reach Object.prototype and "constructor"
    // an inherited function, so the counts are gathered in a Map and made own properties at the end
    const sats = new Map<string, Stats['satellites'][string]>();
    const matrix = new Map<string, number>();
    for (const h of all) {
      for (const [field, value] of Object.entries(h)) {
        const parts = field.split('\t');
        if (parts[0] === 'x' && parts.length === 3) {
          const k = `${parts[1]}\t${parts[2]}`;
          matrix.set(k, (matrix.get(k) ?? 0) + Number(value));
        } else if (parts.length === 2) {
          let sat = sats.get(parts[0]!);
          if (!sat) sats.set(parts[0]!, (sat = Object.fromEntries(SATELLITE_COUNTERS.map((c) => [c, 0])) as Stats['satellites'][string]));
          const counter = parts[1] as (typeof SATELLITE_COUNTERS)[number];
          if (SATELLITE_COUNTERS.includes(counter)) sat[counter] += Number(value);
        }
      }
    }
    // sorted by id (but JavaScript puts number-like keys of an object first, in numeric order): in the order
    // Redis returned the fields, a restored Redis (which writes them in another order) listed the same counts differently
    const byId = <T>([a]: [string, T], [b]: [string, T]) => (a < b ? -1 : a > b ? 1 : 0);
    const out: Stats = { satellites: Object.fromEntries([...sats].sort(byId)), redemptions: [] };
    for (const [k, count] of [...matrix].sort(byId)) {
      const [ownerSatelliteId, redeemerSatelliteId] = k.split('\t') as [string, string];
      out.redemptions.push({ ownerSatelliteId, redeemerSatelliteId, count });
    }
    return out;
  }
}
