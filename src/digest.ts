import * as crypto from 'node:crypto';

/**
 * Hex digest of a string. The one-shot crypto.hash (Node >= 20.12) costs a fraction of
 * createHash().update().digest(); both run per request or per owner on hot paths.
 */
export const hexDigest: (algorithm: 'sha1' | 'sha256', s: string) => string =
  typeof crypto.hash === 'function' ? (a, s) => crypto.hash(a, s) : (a, s) => crypto.createHash(a).update(s).digest('hex');
