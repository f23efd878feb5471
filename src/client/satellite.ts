import type { TokenState } from '../store/model.js';
import { segment, Transport, type TransportOptions } from './transport.js';

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

export interface ListedToken {
  token: string;
  campaignId: string;
  createdAt: number;
  expiresAt?: number;
}

/** A token of the user that someone redeemed; `redeemerUserId` only when the redeemer is one of the caller's users. */
export interface Redemption {
  token: string;
  campaignId: string;
  redeemerSatelliteId: string;
  redeemerUserId?: string;
  redeemedAt: number;
}

/**
 * `endUserIp`: the IP of the person signing up, sent as X-End-User-IP. The failure limits then count
 * that person's failed guesses apart from the satellite's (RATE_LIMIT_FAILURES per IP, a larger
 * RATE_LIMIT_SATELLITE_FAILURES per satellite), so one person typing made-up tokens is stopped without
 * stopping every sign-up of the satellite.
 */
export interface EndUser {
  endUserIp?: string;
}

const endUser = (o: EndUser | undefined): Record<string, string> => (o?.endUserIp ? { 'x-end-user-ip': o.endUserIp } : {});

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
    return this.t.call('POST', '/v1/tokens/redeem', { token, userId }, undefined, endUser(opts));
  }

  /**
   * `opts.reservationId`: one of your own for this sign-up (e.g. crypto.randomUUID()); a reserve retried with
   * it after a timeout or `unavailable` answers the same reservation instead of 409 token_reserved.
   */
  reserve(token: string, leaseMs?: number, opts?: EndUser & { reservationId?: string }): Promise<Reserved> {
    const body: Record<string, unknown> = { token };
    if (leaseMs !== undefined) body.leaseMs = leaseMs;
    if (opts?.reservationId !== undefined) body.reservationId = opts.reservationId;
    return this.t.call('POST', '/v1/tokens/reserve', body, undefined, endUser(opts));
  }

  complete(token: string, reservationId: string, userId: string, opts?: EndUser): Promise<Redeemed> {
    return this.t.call('POST', '/v1/tokens/complete', { token, reservationId, userId }, undefined, endUser(opts));
  }

  release(token: string, reservationId: string, opts?: EndUser): Promise<Released> {
    return this.t.call('POST', '/v1/tokens/release', { token, reservationId }, undefined, endUser(opts));
  }

  async lookup(token: string, opts?: EndUser): Promise<LookedUp> {
    return this.t.call('GET', `/v1/tokens/${segment('token', token)}`, undefined, undefined, endUser(opts));
  }

  /** Unredeemed tokens of `userId` on the calling satellite. */
  async listTokens(userId: string): Promise<ListedToken[]> {
    return (await this.t.call<{ tokens: ListedToken[] }>('GET', `/v1/users/${segment('userId', userId)}/tokens`)).tokens;
  }

  /** Revokes every unredeemed or reserved token of `userId` on the calling satellite (the account was closed); returns how many. */
  async revokeTokens(userId: string): Promise<number> {
    return (await this.t.call<{ revoked: number }>('DELETE', `/v1/users/${segment('userId', userId)}/tokens`)).revoked;
  }

  /** Tokens of `userId` on the calling satellite that were redeemed (on any satellite), oldest first: referrals to reward. */
  async listRedemptions(userId: string): Promise<Redemption[]> {
    return (await this.t.call<{ redemptions: Redemption[] }>('GET', `/v1/users/${segment('userId', userId)}/redemptions`)).redemptions;
  }

  close(): Promise<void> {
    return this.t.close();
  }
}
