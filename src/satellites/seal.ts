import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';

/** What starts a sealed value; a key given with it is refused, so a plaintext key never reads as sealed. */
export const SEALED = 'sealed:v1:';

/**
 * Outbound keys (the manager's credentials at each satellite) sealed at rest with AES-256-GCM under
 * OUTBOUND_KEY_SECRET, so a Redis dump, an AOF file or the Postgres snapshot does not hand them out. The
 * satellite id is the associated data: a sealed value copied onto another satellite does not open.
 * The first secret seals; every one given opens, so a secret is rotated by putting the new one first,
 * running `satellites seal-keys`, then dropping the old one. No secret: keys are stored as given, and
 * values stored that way before a secret was set still read.
 */
export class OutboundKeySeal {
  private readonly secrets: Buffer[];

  /** `secrets`: 32-byte keys as 64 hex digits (config: OUTBOUND_KEY_SECRET) */
  constructor(secrets: readonly string[]) {
    this.secrets = secrets.map((s) => Buffer.from(s, 'hex'));
  }

  seal(satelliteId: string, key: string): string {
    const secret = this.secrets[0];
    if (!secret) return key;
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', secret, iv).setAAD(Buffer.from(satelliteId));
    const body = Buffer.concat([cipher.update(key, 'utf8'), cipher.final()]);
    return SEALED + Buffer.concat([iv, cipher.getAuthTag(), body]).toString('base64url');
  }

  /** The key as given; throws when it is sealed and no secret given opens it. */
  open(satelliteId: string, stored: string): string {
    if (!stored.startsWith(SEALED)) return stored;
    for (const secret of this.secrets) {
      const key = openWith(secret, satelliteId, stored);
      if (key !== undefined) return key;
    }
    throw new Error(
      this.secrets.length === 0
        ? `the outbound key of satellite "${satelliteId}" is sealed, and OUTBOUND_KEY_SECRET is not set here`
        : `the outbound key of satellite "${satelliteId}" is sealed with a secret OUTBOUND_KEY_SECRET does not hold`,
    );
  }

  /** Whether `stored` is sealed with the first secret, as `seal` stores a key now. */
  isCurrent(satelliteId: string, stored: string): boolean {
    const secret = this.secrets[0];
    return secret !== undefined && stored.startsWith(SEALED) && openWith(secret, satelliteId, stored) !== undefined;
  }

  get sealing(): boolean {
    return this.secrets.length > 0;
  }
}

/** The key in `stored` (a SEALED value), or undefined when `secret` did not seal it for this satellite (the auth tag tells). */
function openWith(secret: Buffer, satelliteId: string, stored: string): string | undefined {
  const raw = Buffer.from(stored.slice(SEALED.length), 'base64url');
  try {
    // the tag's length said: GCM takes a tag as short as 4 bytes, so a value cut short would be checked on those
    const decipher = createDecipheriv('aes-256-gcm', secret, raw.subarray(0, 12), { authTagLength: 16 }).setAAD(Buffer.from(satelliteId));
    decipher.setAuthTag(raw.subarray(12, 28));
    return Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]).toString('utf8');
  } catch {
    return undefined;
  }
}
