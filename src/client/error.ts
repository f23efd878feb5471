import type { ErrorCode } from '../errors.js';

/** The manager's wire codes, and `unavailable`: the client's own, for a manager it could not reach. */
export type ClientErrorCode = ErrorCode | 'unavailable';

/**
 * A refusal from the Referral Manager, carrying the wire code (`token_already_redeemed`, `rate_limited`, ...).
 * Transport failures (timeouts, refused connections) use code `unavailable` and status 0, so callers
 * switch on one field; so does a 502/503/504 that is not the manager's own reply (a proxy's error page).
 */
export class ReferralError extends Error {
  constructor(
    readonly code: ClientErrorCode,
    readonly status: number,
    message: string,
    /** seconds, from Retry-After on 429/503 */
    readonly retryAfter?: number,
    /** `cause`: for a call that got no reply, undici's error (its `code`: ECONNREFUSED, UND_ERR_CONNECT_TIMEOUT...) */
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = 'ReferralError';
  }
}
