import * as crypto from 'node:crypto';

/**
 * Hex digest of a string. The one-shot crypto.hash (Node >= 20.12) costs a fraction of
 * createHash().update().digest(); both run per request or per owner on hot paths.
 */
export const hexDigest: (algorithm: 'sha1' | 'sha256', s: string) => string =
  typeof crypto.hash === 'function' ? (a, s) => crypto.hash(a, s) : (a, s) => crypto.createHash(a).update(s).digest('hex');

/** What the manager stores of an API key: its SHA-256. */
export function hashKey(key: string): string {
  return hexDigest('sha256', key);
}

/** Constant-time comparison of two key hashes (or keys) of any length: their SHA-256s are compared. */
export function sameKey(a: string, b: string): boolean {
  return crypto.timingSafeEqual(crypto.createHash('sha256').update(a).digest(), crypto.createHash('sha256').update(b).digest());
}
