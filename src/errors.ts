/**
 * The one error catalogue: every wire error code, its HTTP status and default message.
 * Domain code throws (or returns) these codes; the HTTP layer and the client only translate.
 */
export const errorCatalogue = {
  invalid_request: { status: 400, message: 'the request body or parameters are invalid' },
  unauthorized: { status: 401, message: 'missing or unknown API key' },
  forbidden: { status: 403, message: 'this key may not call this route' },
  not_found: { status: 404, message: 'no such route' },
  token_not_found: { status: 404, message: 'no such token' },
  satellite_not_found: { status: 404, message: 'no such satellite' },
  campaign_not_found: { status: 404, message: 'no such campaign' },
  method_not_allowed: { status: 405, message: 'method not allowed on this route' },
  token_already_redeemed: { status: 409, message: 'the token was already redeemed' },
  token_reserved: { status: 409, message: 'the token is reserved by a sign-up in progress' },
  reservation_mismatch: { status: 409, message: 'the reservation id does not hold this token' },
  satellite_exists: { status: 409, message: 'a satellite with this id is already registered' },
  token_revoked: { status: 410, message: 'the token was revoked' },
  campaign_revoked: { status: 410, message: 'the campaign was revoked: no more tokens are made for it' },
  token_expired: { status: 410, message: 'the token has expired' },
  reservation_expired: { status: 410, message: 'the reservation lease has expired' },
  body_too_large: { status: 413, message: 'request body too large' },
  unsupported_media_type: { status: 415, message: 'use application/msgpack or application/json' },
  rate_limited: { status: 429, message: 'too many failed attempts; retry later' },
  internal: { status: 500, message: 'internal error' },
  store_unavailable: { status: 503, message: 'the token store is unavailable; retry later' },
  metrics_unavailable: { status: 503, message: "serve's primary process, which sums the workers' metrics, did not answer in time; retry later" },
} as const;

export type ErrorCode = keyof typeof errorCatalogue;

export class DomainError extends Error {
  readonly status: number;
  constructor(readonly code: ErrorCode, message?: string) {
    super(message ?? errorCatalogue[code].message);
    this.name = 'DomainError';
    this.status = errorCatalogue[code].status;
  }
}

/** Token-engine result codes (issue contract) mapped to wire error codes. */
export const resultErrors = {
  not_found: 'token_not_found',
  already_redeemed: 'token_already_redeemed',
  reserved: 'token_reserved',
  revoked: 'token_revoked',
  expired: 'token_expired',
  reservation_mismatch: 'reservation_mismatch',
  reservation_expired: 'reservation_expired',
} as const satisfies Record<string, ErrorCode>;
