import { randomFillSync } from 'node:crypto';
import type { TokenSet } from '../store/model.js';

// ASCII of the two hex digits of each byte value
const HIGH = Uint8Array.from({ length: 256 }, (_, b) => '0123456789abcdef'.charCodeAt(b >> 4));
const LOW = Uint8Array.from({ length: 256 }, (_, b) => '0123456789abcdef'.charCodeAt(b & 15));
const DASH = 0x2d;

// CSPRNG bytes drawn 64 KiB at a time, each byte handed out once: randomFillSync costs microseconds a call
// whatever its size (randomUUID keeps a cache for the same reason)
const POOL_BYTES = 65_536;
let pool = Buffer.alloc(0);
let used = 0;

function randomBytesFromPool(n: number): Buffer {
  if (used + n > pool.length) {
    pool = randomFillSync(Buffer.allocUnsafeSlow(Math.max(POOL_BYTES, n)));
    used = 0;
  }
  used += n;
  return pool.subarray(used - n, used);
}

/**
 * `count` random UUIDv4 from the CSPRNG whose first 16 bits are `prefix` (the owner's shard and bucket,
 * src/store/keys.ts): 106 random bits stay. Made from one slice of the pool, as two strings for the whole
 * set, not a randomUUID plus a handful of slices per token: Node's side of generation was bound by its
 * allocations.
 */
export function mint(prefix: number, count: number): TokenSet {
  const raw = randomBytesFromPool(count * 16);
  const text = Buffer.allocUnsafe(count * 36);
  for (let t = 0, r = 0, o = 0; t < count; t++, r += 16) {
    raw[r] = prefix >>> 8;
    raw[r + 1] = prefix & 0xff;
    raw[r + 6] = (raw[r + 6]! & 0x0f) | 0x40; // version 4
    raw[r + 8] = (raw[r + 8]! & 0x3f) | 0x80; // RFC 4122 variant
    for (let i = 0; i < 16; i++) {
      if (i === 4 || i === 6 || i === 8 || i === 10) text[o++] = DASH;
      const b = raw[r + i]!;
      text[o++] = HIGH[b]!;
      text[o++] = LOW[b]!;
    }
  }
  return { count, hex: raw.toString('hex'), dashed: text.toString('latin1') };
}

/** the i-th token of a minted set, dashed */
export function tokenAt(m: TokenSet, i: number): string {
  return m.dashed.slice(i * 36, i * 36 + 36);
}
