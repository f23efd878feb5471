import { describe, expect, it } from 'vitest';
import { Packr } from 'msgpackr';
import { decodeBody, retryAfterMs } from '../src/msgpack.js';
import { printable } from '../src/tokens/validate.js';

describe('Retry-After', () => {
  it('reads seconds and an HTTP date, nothing else', () => {
    expect(retryAfterMs('7')).toBe(7000);
    expect(retryAfterMs('7', 5000)).toBe(5000);
    const at = retryAfterMs(new Date(Date.now() + 30_000).toUTCString())!;
    expect(at).toBeGreaterThan(28_000);
    expect(at).toBeLessThanOrEqual(30_000);
    expect(retryAfterMs(new Date(Date.now() - 60_000).toUTCString())).toBe(0);
    // V8's Date.parse takes these as dates long past: they are no Retry-After
    for (const junk of ['5,5', 'abc 12', '1.5', '-3', '']) expect(retryAfterMs(junk), junk).toBeUndefined();
    expect(retryAfterMs(undefined)).toBeUndefined();
  });
});

describe('text from a satellite, made printable', () => {
  it('replaces C0 and C1 controls and lone surrogates, keeps the rest', () => {
    expect(printable('ok \u00e9 🙂')).toBe('ok \u00e9 🙂');
    expect(printable('a\u0000b\u001b[31mc\u009bd\ud800e\u007f')).toBe('a\ufffdb\ufffd[31mc\ufffdd\ufffde\ufffd');
  });
});

// satellites' replies (generate) and the client's were read by a second, looser decoder than the API's:
// msgpackr's structured clone built cyclic values, and its extensions live objects
describe('MessagePack from a satellite', () => {
  it('is read as plain data only, as the API reads requests', () => {
    const cyclic: unknown[] = ['u1'];
    cyclic.push(cyclic);
    const mp = 'application/msgpack';
    expect(() => decodeBody(new Packr({ structuredClone: true }).pack({ userIds: cyclic }), mp)).toThrow();
    expect(() => decodeBody(new Packr({ moreTypes: true }).pack({ userIds: [new Error('boom')] }), mp)).toThrow(/extension type not accepted \(Error\)/);
    expect(() => decodeBody(Buffer.concat([Buffer.from([0x81, 0xa1, 0x75, 0xa2]), Buffer.from([0xc3, 0x28])]), mp)).toThrow(/not valid UTF-8/);
    expect(decodeBody(new Packr().pack({ userIds: ['u1', 'u\ufffd'], next: 2 ** 40 }), mp)).toEqual({ userIds: ['u1', 'u\ufffd'], next: 2 ** 40 });
  });
});
