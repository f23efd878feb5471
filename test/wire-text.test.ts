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

// satellites' replies (generate) and the client's were read by a second decoder with msgpackr's structured
// clone, which builds cyclic values
describe('MessagePack from a satellite', () => {
  it('is read without structured clones; an extension value or an invalid UTF-8 id is left for the flow to skip', () => {
    const cyclic: unknown[] = ['u1'];
    cyclic.push(cyclic);
    const mp = 'application/msgpack';
    expect(() => decodeBody(new Packr({ structuredClone: true }).pack({ userIds: cyclic }), mp)).toThrow();
    // Go writes a time.Time as a timestamp: one such field must not refuse the whole reply
    const at = new Date(1_700_000_000_000);
    expect(decodeBody(new Packr().pack({ userIds: ['u1'], at }), mp)).toEqual({ userIds: ['u1'], at });
    expect(decodeBody(Buffer.concat([Buffer.from([0x81, 0xa1, 0x75, 0x92, 0xa2, 0x75, 0x31, 0xa2]), Buffer.from([0xc3, 0x28])]), mp)).toEqual({ u: ['u1', '\ufffd('] });
    expect(decodeBody(new Packr().pack({ userIds: ['u1', 'u\ufffd'], next: 2 ** 40 }), mp)).toEqual({ userIds: ['u1', 'u\ufffd'], next: 2 ** 40 });
  });
});
