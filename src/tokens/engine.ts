import { randomUUID } from 'node:crypto';
import { format } from 'node:util';
import { logTo } from '../log.js';
import { DomainError } from '../errors.js';
import { placeOfOwner } from '../store/keys.js';
import { TokenCollision, type OwnerBatch, type TokenStore } from '../store/token-store.js';
import type { CompleteCode, RedeemCode, RedeemedToken, ReleaseCode, Result, RevokeCode, Stats, Token, TokenState, UnredeemedToken } from '../store/model.js';
import { mint, tokenAt } from './mint.js';
import { checkCampaignId, checkId, checkNewId, checkToken } from './validate.js';

/** a generate's undo that failed (serve's admin route, the CLI's generate) */
const tokensLog = logTo({ component: 'tokens' });

export const MAX_TOKENS_PER_CALL = 10_000;
/** 9999-12-31T23:59:59.999Z: a later expiresAt is a unit mistake (microseconds), not a date */
export const MAX_EXPIRES_AT = 253_402_300_799_999;

export interface GenerateRequest {
  owners: { ownerSatelliteId: string; ownerUserId: string }[];
  perUser: number;
  campaignId?: string;
  expiresAt?: number;
  /** aborted when the caller stopped waiting (an HTTP request answered 503 on its deadline): what was made is revoked */
  signal?: AbortSignal;
  /** how the caller's request names owner `i`'s field in an error (the admin route's body: userIds[i]); owners[i].<field> if not given */
  ownerField?: (i: number, field: 'ownerSatelliteId' | 'ownerUserId') => string;
}

export interface GeneratedToken {
  ownerSatelliteId: string;
  ownerUserId: string;
  token: string;
}

/** A fresh campaign id when the caller names none: sortable by time, unique. */
export function newCampaignId(): string {
  return `c-${new Date().toISOString().slice(0, 10)}-${randomUUID().slice(0, 8)}`;
}

/**
 * The token engine: validates input, makes tokens with the CSPRNG, and drives the store.
 * Tokens are random UUIDv4 whose first 4 hex digits are replaced by the owner's bucket prefix
 * (see src/store/keys.ts), which keeps them valid v4 UUIDs.
 */
export class TokenEngine {
  constructor(readonly store: TokenStore) {}

  async generate(req: GenerateRequest): Promise<{ campaignId: string; tokens: GeneratedToken[] }> {
    if (!Number.isInteger(req.perUser) || req.perUser < 1 || req.perUser > MAX_TOKENS_PER_CALL) {
      throw new DomainError('invalid_request', `perUser: must be an integer 1..${MAX_TOKENS_PER_CALL}`);
    }
    const total = req.owners.length * req.perUser;
    if (total > MAX_TOKENS_PER_CALL) {
      throw new DomainError('invalid_request', `at most ${MAX_TOKENS_PER_CALL} tokens per call, asked for ${total}`);
    }
    if (req.expiresAt !== undefined && (!Number.isSafeInteger(req.expiresAt) || req.expiresAt <= Date.now() || req.expiresAt > MAX_EXPIRES_AT)) {
      throw new DomainError('invalid_request', 'expiresAt: must be a future time in epoch milliseconds, before year 10000');
    }
    const campaignId = req.campaignId === undefined ? newCampaignId() : checkCampaignId('campaignId', req.campaignId);
    const tokens: GeneratedToken[] = [];
    const name = req.ownerField ?? ((i, field) => `owners[${i}].${field}`);
    const batches: OwnerBatch[] = req.owners.map((o, i) => {
      const ownerSatelliteId = checkNewId(name(i, 'ownerSatelliteId'), o.ownerSatelliteId);
      const ownerUserId = checkNewId(name(i, 'ownerUserId'), o.ownerUserId);
      const place = placeOfOwner(ownerSatelliteId, ownerUserId);
      const minted = mint(place.value, req.perUser);
      for (let n = 0; n < req.perUser; n++) tokens.push({ ownerSatelliteId, ownerUserId, token: tokenAt(minted, n) });
      return { ownerSatelliteId, ownerUserId, minted, place };
    });
    try {
      const created = await this.store.generate(batches, campaignId, req.expiresAt);
      if (created !== total) throw new Error(`generated ${created} of ${total} tokens`);
      if (req.signal?.aborted) throw new Error('generate: the caller stopped waiting before the tokens were made');
    } catch (err) {
      // a token this call collided with is someone's already (of this campaign too, from an earlier call)
      const theirs = err instanceof TokenCollision ? new Set(err.hexes) : undefined;
      await this.undo(theirs ? tokens.filter((t) => !theirs.has(t.token.replaceAll('-', ''))) : tokens, campaignId);
      throw err;
    }
    return { campaignId, tokens };
  }

  /**
   * A generate runs as one script per virtual shard: when one fails (a Redis error, a master down) others
   * may have made their tokens, and the caller, told of the error, never learns them. Those are revoked
   * (an event each, so the snapshot follows), so an error means no usable token was made and a retry
   * is safe. When Redis fails this too, the tokens stay: `revoke {campaignId}` clears them.
   */
  private async undo(tokens: GeneratedToken[], campaignId: string): Promise<void> {
    const r = await this.store.revokeMade(tokens.map((t) => t.token), campaignId);
    // a token whose script fails here was most likely never made (its shard is what failed)
    if (r.failed) tokensLog('error', format(`generate of campaign "${campaignId}" failed; ${r.failed} of its tokens could not be checked and revoked:`, (r.error as Error)?.message ?? r.error), { campaign: campaignId, tokens: r.failed });
  }

  async redeem(token: string, redeemerSatelliteId: string, redeemerUserId: string): Promise<Result<RedeemCode>> {
    return this.store.redeem(checkToken(token), checkId('redeemerSatelliteId', redeemerSatelliteId), checkNewId('userId', redeemerUserId));
  }

  /**
   * `reservationId`: the caller's own (one per sign-up): repeating it while the token holds that reservation
   * answers ok again with the same lease. Without it, a new random one.
   * `signal`: aborted when the caller will never get the answer (an HTTP request answered 503 on its deadline,
   * or hung up); a reservation under a random id is then given back.
   */
  async reserve(token: string, satelliteId: string, leaseMs: number, reservationId?: string, signal?: AbortSignal): Promise<Result<RedeemCode>> {
    // the script writes the lease end with %d only up to 2^53; past that it becomes "9.0e+15" text, which
    // neither the snapshot (bigint) nor a reader takes back exactly. The HTTP route caps it far lower.
    if (!Number.isSafeInteger(leaseMs) || leaseMs < 1 || Date.now() + leaseMs > MAX_EXPIRES_AT) {
      throw new DomainError('invalid_request', 'leaseMs: must be a positive integer, ending before year 10000');
    }
    const id = reservationId === undefined ? randomUUID() : checkNewId('reservationId', reservationId);
    const tok = checkToken(token);
    const sat = checkId('satelliteId', satelliteId);
    const own = reservationId !== undefined;
    // A caller that never learns our random id cannot complete or release the reservation, and its retry would
    // meet token_reserved for the whole lease: none is made for a caller already gone (its deadline passed
    // while the key was checked), and one made is given back. The release is sent at once, behind the reserve
    // on the same connection, so a hung Redis runs the two back to back, before a retry sent after the 503.
    // One with the caller's own id is kept: its retry with that id is answered the same reservation.
    if (!own && signal?.aborted) throw new Error('reserve: the caller stopped waiting before the token was reserved');
    const reply = this.store.reserve(tok, sat, leaseMs, id, own);
    if (own || !signal) return reply;
    const giveBack = () => void this.store.release(tok, id, sat).catch(() => undefined);
    signal.addEventListener('abort', giveBack, { once: true });
    try {
      return await reply;
    } finally {
      signal.removeEventListener('abort', giveBack);
    }
  }

  /**
   * `satelliteId`: the calling satellite; another than the one that reserved gets reservation_mismatch
   * (the redemption is credited to the reserving one). Absent: any (admin tools).
   */
  async complete(token: string, reservationId: string, redeemerUserId: string, satelliteId?: string): Promise<Result<CompleteCode>> {
    return this.store.complete(checkToken(token), checkId('reservationId', reservationId), checkNewId('userId', redeemerUserId), satelliteId === undefined ? '' : checkId('satelliteId', satelliteId));
  }

  async release(token: string, reservationId: string, satelliteId?: string): Promise<Result<ReleaseCode>> {
    return this.store.release(checkToken(token), checkId('reservationId', reservationId), satelliteId === undefined ? '' : checkId('satelliteId', satelliteId));
  }

  async lookup(token: string): Promise<Token | undefined> {
    return (await this.store.lookup(checkToken(token))).token;
  }

  /** Each token's state as stored, undefined where absent: many at once, for a check before a push. */
  async storedStates(tokens: string[]): Promise<(TokenState | undefined)[]> {
    return this.store.storedStates(tokens.map((t) => checkToken(t)));
  }

  async revokeToken(token: string): Promise<Result<RevokeCode>> {
    return this.store.revokeToken(checkToken(token));
  }

  /**
   * Revokes these tokens of `campaignId` (one of another campaign, or absent, is left alone); throws the
   * first error when any could not be revoked. Returns how many were.
   */
  async revokeOfCampaign(tokens: string[], campaignId: string): Promise<number> {
    const r = await this.store.revokeMade(tokens.map((t) => checkToken(t)), campaignId);
    if (r.failed) throw r.error;
    return r.revoked;
  }

  async revokeOwner(ownerSatelliteId: string, ownerUserId: string): Promise<number> {
    return this.store.revokeOwner(checkId('satelliteId', ownerSatelliteId), checkId('userId', ownerUserId));
  }

  /** `revokedAt`: recorded when the campaign was not yet registered revoked (a repair keeps an older time). */
  async revokeCampaign(campaignId: string, revokedAt?: number): Promise<number> {
    return this.store.revokeCampaign(checkId('campaignId', campaignId), revokedAt);
  }

  /** Every unredeemed or reserved token of every user of the satellite; how many were revoked. */
  async revokeSatellite(ownerSatelliteId: string): Promise<number> {
    return this.store.revokeSatellite(checkId('satelliteId', ownerSatelliteId));
  }

  /**
   * Deletes from Redis the revoked tokens, and the unredeemed ones past their expiresAt (a lapsed reservation too), made before
   * `madeBefore` (ms), of one campaign if given; Postgres keeps them. How many (`dryRun`: how many would be).
   */
  async purge(madeBefore: number, campaignId?: string, dryRun = false): Promise<number> {
    if (!Number.isSafeInteger(madeBefore) || madeBefore < 0) throw new DomainError('invalid_request', 'madeBefore: must be a time in ms');
    return this.store.purge(madeBefore, campaignId === undefined ? undefined : checkId('campaignId', campaignId), dryRun);
  }

  async listUnredeemed(ownerSatelliteId: string, ownerUserId: string): Promise<UnredeemedToken[]> {
    return this.store.listUnredeemed(checkId('satelliteId', ownerSatelliteId), checkId('userId', ownerUserId));
  }

  /** The owner's tokens someone redeemed, with who and when (a referral to reward), oldest first. */
  async listRedeemed(ownerSatelliteId: string, ownerUserId: string): Promise<RedeemedToken[]> {
    return this.store.listRedeemed(checkId('satelliteId', ownerSatelliteId), checkId('userId', ownerUserId));
  }

  stats(): Promise<Stats> {
    return this.store.stats();
  }

  /** Gives back the reservations whose lease ended over `graceMs` ago (src/tokens/lapse.ts runs it): how many, and the shards that failed. */
  lapse(graceMs: number): ReturnType<TokenStore['lapse']> {
    return this.store.lapse(graceMs);
  }
}
