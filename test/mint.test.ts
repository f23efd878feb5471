import { describe, expect, it } from 'vitest';
import { mint, tokenAt } from '../src/tokens/mint.js';
import { UUID_V4 } from './helpers/engine-suite.js';

describe('mint (token bytes from the CSPRNG)', () => {
  it('makes canonical UUIDv4 tokens that start with the bucket prefix; hex and dashed agree', () => {
    for (const prefix of [0x0000, 0xabcd, 0xffff, 0x0f00]) {
      const m = mint(prefix, 500);
      expect(m.count).toBe(500);
      expect(m.hex).toHaveLength(500 * 32);
      expect(m.dashed).toHaveLength(500 * 36);
      const tokens = Array.from({ length: 500 }, (_, i) => tokenAt(m, i));
      for (const [i, t] of tokens.entries()) {
        expect(t).toMatch(UUID_V4);
        expect(t.slice(0, 4)).toBe(prefix.toString(16).padStart(4, '0'));
        expect(t.replace(/-/g, '')).toBe(m.hex.slice(i * 32, i * 32 + 32));
      }
      expect(new Set(tokens).size).toBe(500);
    }
  });

  it('never hands out the same random bytes twice, across refills of its pool', () => {
    const seen = new Set<string>();
    // 9,000 tokens a call is 144 KB of randomness: more than one pool each time
    for (let call = 0; call < 4; call++) {
      const m = mint(0x1234, 9_000);
      for (let i = 0; i < m.count; i++) seen.add(m.hex.slice(i * 32 + 4, i * 32 + 32));
    }
    expect(seen.size).toBe(36_000);
  });

  it('keeps the random bits random: each of the 106 free bits is set about half the time', () => {
    const m = mint(0, 4_000);
    const ones = new Array<number>(128).fill(0);
    for (let i = 0; i < m.count; i++) {
      const hex = m.hex.slice(i * 32, i * 32 + 32);
      for (let bit = 0; bit < 128; bit++) if ((parseInt(hex[bit >> 2]!, 16) >> (3 - (bit & 3))) & 1) ones[bit]!++;
    }
    // fixed: the 16 prefix bits, the 4 version bits (48..51) and the 2 variant bits (64, 65)
    const fixed = new Set([...Array.from({ length: 16 }, (_, b) => b), 48, 49, 50, 51, 64, 65]);
    for (let bit = 0; bit < 128; bit++) {
      if (fixed.has(bit)) continue;
      // 4,000 fair coins: the mean is 2,000 and the standard deviation 31.6; 6 deviations is never hit by chance
      expect(Math.abs(ones[bit]! - 2_000)).toBeLessThan(190);
    }
  });
});
