import { TOKEN_STATES, type TokenState, type UnredeemedToken } from '../store/model.js';
import { ReferralError } from './error.js';
import { segment, Transport, type CallOptions, type TransportOptions } from './transport.js';

export interface Redeemed {
  token: string;
  state: 'redeemed';
  ownerSatelliteId: string;
  ownerUserId: string;
}

export interface Reserved {
  token: string;
  state: 'reserved';
  reservationId: string;
  leaseExpiresAt: number;
  ownerSatelliteId: string;
  ownerUserId: string;
}

export interface Released {
  token: string;
  state: 'unredeemed';
}

export interface LookedUp {
  token: string;
  state: TokenState;
  ownerSatelliteId: string;
  /** epoch ms; null: the token never expires */
  expiresAt: number | null;
}

/** A user's unredeemed token as `listTokens` gives it: the engine's own shape, sent as it is. */
export type ListedToken = UnredeemedToken;

/** A token of the user that someone redeemed; `redeemerUserId` only when the redeemer is one of the caller's users. */
export interface Redemption {
  token: string;
  campaignId: string;
  redeemerSatelliteId: string;
  redeemerUserId?: string;
  redeemedAt: number;
}

/** `signal`: ends the call when aborted (the sign-up it serves was given up): it rejects at once with the signal's reason, not a ReferralError. */
export interface Abortable {
  signal?: AbortSignal;
}

/**
 * `endUserIp`: the IP of the person signing up, sent as X-End-User-IP. The failure limits then count
 * that person's failed guesses apart from the satellite's (RATE_LIMIT_FAILURES per IP, a larger
 * RATE_LIMIT_SATELLITE_FAILURES per satellite), so one person typing made-up tokens is stopped without
 * stopping every sign-up of the satellite.
 */
export interface EndUser extends Abortable {
  endUserIp?: string;
}

/** A call's options from the caller's: X-End-User-IP when one is given, and the signal. */
const sent = (o: EndUser | undefined): CallOptions => ({ headers: o?.endUserIp ? { 'x-end-user-ip': o.endUserIp } : {}, signal: o?.signal });

/** what a route's defining field always is: one of these states, a list, or a count */
type Shape = readonly string[] | 'list' | 'count';

const fits = (v: unknown, shape: Shape): boolean =>
  shape === 'list' ? Array.isArray(v) : shape === 'count' ? Number.isSafeInteger(v) : typeof v === 'string' && shape.includes(v);

/**
 * `reply` when its `field` has the shape every reply of that route gives it, and each of `owner` is a
 * string, else `internal`: a 2xx map from something in front of the manager (a gateway routing elsewhere
 * answering `{"status":"ok"}`, or `{"tokens":"..."}`) read as a redemption or a list.
 */
async function holding<T>(reply: Promise<T>, field: string, shape: Shape, owner: readonly string[] = []): Promise<T> {
  const r = (await reply) as Record<string, unknown>;
  const lacking = !fits(r[field], shape) ? `${field} ${typeof shape === 'string' ? `as a ${shape}` : shape.join(' | ')}` : owner.find((f) => typeof r[f] !== 'string');
  if (lacking !== undefined) throw new ReferralError('internal', 0, `a 2xx reply without ${lacking}: not the manager's (is the url right?)`);
  return r as T;
}

/** a token's owner, in every reply that redeems or reserves it */
const OWNER = ['ownerSatelliteId', 'ownerUserId'] as const;

/**
 * What a satellite calls on sign-up. The key names the calling satellite; every refusal throws
 * ReferralError with the wire code (e.g. `token_already_redeemed`).
 */
export class SatelliteClient {
  private readonly t: Transport;

  constructor(opts: TransportOptions) {
    this.t = new Transport(opts);
  }

  redeem(token: string, userId: string, opts?: EndUser): Promise<Redeemed> {
    return holding(this.t.call('POST', '/v1/tokens/redeem', { token, userId }, { ...sent(opts), repeatable: true }), 'state', ['redeemed'], OWNER);
  }

  /**
   * `opts.reservationId`: one of your own for this sign-up (e.g. crypto.randomUUID()); a reserve retried with
   * it after a timeout or `unavailable` answers the same reservation instead of 409 token_reserved.
   */
  reserve(token: string, leaseMs?: number, opts?: EndUser & { reservationId?: string }): Promise<Reserved> {
    const body: Record<string, unknown> = { token };
    if (leaseMs !== undefined) body.leaseMs = leaseMs;
    if (opts?.reservationId !== undefined) body.reservationId = opts.reservationId;
    return holding(this.t.call('POST', '/v1/tokens/reserve', body, { ...sent(opts), repeatable: opts?.reservationId !== undefined }), 'state', ['reserved'], OWNER);
  }

  complete(token: string, reservationId: string, userId: string, opts?: EndUser): Promise<Redeemed> {
    return holding(this.t.call('POST', '/v1/tokens/complete', { token, reservationId, userId }, { ...sent(opts), repeatable: true }), 'state', ['redeemed'], OWNER);
  }

  release(token: string, reservationId: string, opts?: EndUser): Promise<Released> {
    return holding(this.t.call('POST', '/v1/tokens/release', { token, reservationId }, sent(opts)), 'state', ['unredeemed']);
  }

  async lookup(token: string, opts?: EndUser): Promise<LookedUp> {
    return holding(this.t.call('GET', `/v1/tokens/${segment('token', token)}`, undefined, sent(opts)), 'state', TOKEN_STATES, ['ownerSatelliteId']);
  }

  /** Unredeemed tokens of `userId` on the calling satellite. */
  async listTokens(userId: string, opts?: Abortable): Promise<ListedToken[]> {
    return (await holding(this.t.call<{ tokens: ListedToken[] }>('GET', `/v1/users/${segment('userId', userId)}/tokens`, undefined, sent(opts)), 'tokens', 'list')).tokens;
  }

  /** Revokes every unredeemed or reserved token of `userId` on the calling satellite (the account was closed); returns how many. */
  async revokeTokens(userId: string, opts?: Abortable): Promise<number> {
    return (await holding(this.t.call<{ revoked: number }>('DELETE', `/v1/users/${segment('userId', userId)}/tokens`, undefined, sent(opts)), 'revoked', 'count')).revoked;
  }

  /** Tokens of `userId` on the calling satellite that were redeemed (on any satellite), oldest first: referrals to reward. */
  async listRedemptions(userId: string, opts?: Abortable): Promise<Redemption[]> {
    return (await holding(this.t.call<{ redemptions: Redemption[] }>('GET', `/v1/users/${segment('userId', userId)}/redemptions`, undefined, sent(opts)), 'redemptions', 'list')).redemptions;
  }

  close(): Promise<void> {
    return this.t.close();
  }
}
