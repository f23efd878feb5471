/** The token as every layer above the store sees it. Times are epoch milliseconds. */
export type TokenState = 'unredeemed' | 'reserved' | 'redeemed' | 'revoked';
export const TOKEN_STATES: readonly TokenState[] = ['unredeemed', 'reserved', 'redeemed', 'revoked'];

export interface Token {
  token: string;
  state: TokenState;
  ownerSatelliteId: string;
  ownerUserId: string;
  campaignId: string;
  createdAt: number;
  expiresAt?: number;
  reservationId?: string;
  reservedBy?: string;
  leaseExpiresAt?: number;
  redeemerSatelliteId?: string;
  redeemerUserId?: string;
  redeemedAt?: number;
}

/** Token-engine result codes; `resultErrors` in src/errors.ts maps them to wire codes. */
export type RedeemCode = 'ok' | 'not_found' | 'already_redeemed' | 'reserved' | 'revoked' | 'expired';
export type CompleteCode = 'ok' | 'not_found' | 'reservation_mismatch' | 'reservation_expired' | 'revoked';
export type ReleaseCode = 'ok' | 'not_found' | 'reservation_mismatch';
export type RevokeCode = 'ok' | 'not_found' | 'already_redeemed' | 'revoked';

/** `token` is present whenever the token exists (so callers can report its owner even on refusal). */
export interface Result<C extends string> {
  code: C;
  token?: Token;
}

export interface UnredeemedToken {
  token: string;
  campaignId: string;
  createdAt: number;
  expiresAt?: number;
}

/** A redeemed token of an owner, with who redeemed it (TokenStore.listRedeemed). */
export interface RedeemedToken {
  token: string;
  campaignId: string;
  redeemerSatelliteId: string;
  redeemerUserId: string;
  redeemedAt: number;
}

/**
 * The counters kept per owner satellite, in the order `stats` shows them. `purged`: deleted from Redis by a
 * purge (kept in Postgres); no longer counted in their state.
 */
export const SATELLITE_COUNTERS = ['generated', 'unredeemed', 'reserved', 'redeemed', 'revoked', 'purged'] as const;

/** Counters kept by the scripts: per owner satellite and state, and redemptions owner -> redeemer satellite. */
export interface Stats {
  satellites: Record<string, Record<(typeof SATELLITE_COUNTERS)[number], number>>;
  redemptions: { ownerSatelliteId: string; redeemerSatelliteId: string; count: number }[];
}

/** Tokens of one owner as the generate script takes them: two strings for the whole set, not two a token. */
export interface TokenSet {
  count: number;
  /** the tokens as 32 hex digits each, joined */
  hex: string;
  /** the same tokens in canonical dashed form (36 characters each), joined */
  dashed: string;
}
