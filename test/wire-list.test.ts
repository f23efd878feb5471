// A long list reply is encoded a slice at a time (src/http/wire.ts encodeList) and sorted a run at a time
// (src/collections.ts sortInTurns); satellites decode it as the one document encode() gives, so it must be that
// document byte for byte at every size where MessagePack's array header changes (16, 65,536) or a slice ends.
import { describe, expect, it } from 'vitest';
import { sortInTurns } from '../src/collections.js';
import { encode, encodeList } from '../src/http/wire.js';

const row = (i: number) => ({ token: `t-${i}`, createdAt: 1_700_000_000_000 + i, ...(i % 3 ? {} : { expiresAt: 4_102_444_800_000 }), note: i % 7 ? undefined : 'é"\\' });

describe('a list reply encoded a slice at a time', () => {
  it.each([0, 1, 15, 16, 2000, 2001, 2015, 2016, 4000, 4017, 65_535, 65_536, 70_001])('is the bytes encode() gives for %i items, in both formats', async (n) => {
    const items = Array.from({ length: n }, (_, i) => i);
    for (const format of ['msgpack', 'json'] as const) {
      const whole = encode(format, { tokens: items.map(row) });
      expect((await encodeList(format, { key: 'tokens', items, each: row }))!.equals(whole), format).toBe(true);
    }
  });

  it('stops once the client is gone', async () => {
    let slices = 0;
    const out = await encodeList('json', { key: 'tokens', items: Array.from({ length: 10_000 }, (_, i) => i), each: row }, () => ++slices > 2);
    expect(out).toBeUndefined();
    expect(slices).toBe(3);
  });
});

describe('a sort a run at a time', () => {
  it.each([0, 1, 2000, 2001, 4000, 6001, 20_000])('orders %i items as Array.prototype.sort does, ties kept in their order', async (n) => {
    // few distinct keys: most comparisons are ties, which a stable sort keeps in input order
    const items = Array.from({ length: n }, (_, i) => ({ key: (i * 7919) % 13, i }));
    const expected = items.slice().sort((a, b) => a.key - b.key);
    expect(await sortInTurns(items, (a, b) => a.key - b.key)).toEqual(expected);
  });
});
