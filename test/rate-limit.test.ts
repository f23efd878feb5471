import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { addressBlock, endUserIp, FailureLimiter } from '../src/http/rate-limit.js';
import { Keys } from '../src/store/keys.js';
import { createRedis } from '../src/store/redis.js';
import { dropPrefix, SHARED_REDIS_URL, testPrefix } from './helpers/redis.js';

const redis = createRedis({ redisUrl: SHARED_REDIS_URL, redisClusterNodes: [] });
const prefix = testPrefix('rl');
afterAll(async () => {
  await dropPrefix(redis, prefix);
  redis.disconnect();
});

/** uWS's text form of an IPv6 address: eight groups of four hex digits. */
const v6 = (...groups: number[]) => groups.map((g) => g.toString(16).padStart(4, '0')).join(':');

describe('FailureLimiter per address', () => {
  it('counts IPv6 callers per /64, so a new address in the same block for every guess does not escape', async () => {
    const limiter = new FailureLimiter(redis, prefix, { ip: 3, satellite: 3 }, 60_000);
    const waits = [];
    for (let i = 1; i <= 4; i++) waits.push(await limiter.fail(`sat-${i}`, v6(0x2001, 0xdb8, 7, 1, 0, 0, 0, i), false));
    expect(waits.slice(0, 3)).toEqual([undefined, undefined, undefined]);
    expect(waits[3]).toMatchObject({ limit: 'ip', seconds: expect.any(Number) });
    expect(waits[3]!.seconds).toBeGreaterThan(0);
    expect(limiter.check('sat-9', v6(0x2001, 0xdb8, 7, 1, 0xabcd, 1, 2, 3), false)).toMatchObject({ limit: 'ip' });
    // the next /64 and IPv4 callers are their own
    expect(limiter.check('sat-9', v6(0x2001, 0xdb8, 7, 2, 0, 0, 0, 1), false)).toBeUndefined();
    expect(limiter.check('sat-9', '0000:0000:0000:0000:0000:ffff:0a00:0001', false)).toBeUndefined();
  });

  // a satellite naming another's server address (or any person's) in X-End-User-IP used up that address's
  // failures for every satellite: its own guesses locked the other satellite out
  it('counts an address a satellite names for that satellite only; the TCP peer for all', async () => {
    const limiter = new FailureLimiter(redis, prefix, { ip: 2, satellite: 100 }, 60_000);
    for (let i = 0; i < 3; i++) await limiter.fail('sat-b', '10.9.9.9', true);
    expect(limiter.check('sat-b', '10.9.9.9', true)).toMatchObject({ limit: 'ip' });
    expect(limiter.check('sat-a', '10.9.9.9', false)).toBeUndefined();
    expect(limiter.check('sat-a', '10.9.9.9', true)).toBeUndefined();
    expect(await limiter.fail('sat-a', '10.9.9.9', false)).toBeUndefined();
    // peers are shared: two satellites calling from one host are one address
    await limiter.fail('sat-c', '10.9.9.9', false);
    expect(await limiter.fail('sat-a', '10.9.9.9', false)).toMatchObject({ limit: 'ip' });
    expect(limiter.check('sat-c', '10.9.9.9', false)).toMatchObject({ limit: 'ip' });
    // keys an operator's shell can handle: no whitespace (a tab split them under xargs)
    const keys = await redis.keys(`${prefix}:rl:*`);
    expect(keys.some((k) => k.includes('sat-b@10.9.9.9'))).toBe(true);
    expect(keys.filter((k) => /\s/.test(k))).toEqual([]);
  });

  // no other test holds these. Without the PEXPIRE every window left one
  // key per guessing address in Redis for good; an entry past its window kept the address blocked in process
  // until a restart; with both limits crossed the metric named the satellite's, not the address's
  it('counters expire after two windows; a block ends with its window; the address is named when both limits are crossed', async () => {
    const windowMs = 1000;
    const limiter = new FailureLimiter(redis, prefix, { ip: 1, satellite: 1 }, windowMs);
    // start early in a window, so the block below outlives the checks made at once (750 ms or more: a loaded
    // machine pauses a test for hundreds)
    while (Date.now() % windowMs > windowMs / 4) await new Promise((r) => setTimeout(r, 5));
    expect(await limiter.fail('sat-x', '10.7.7.7', false)).toBeUndefined();
    expect(await limiter.fail('sat-x', '10.7.7.8', false)).toEqual({ limit: 'satellite', seconds: 1 });
    expect(await limiter.fail('sat-x', '10.7.7.7', false)).toEqual({ limit: 'ip', seconds: 1 });
    const keys = await redis.keys(`${prefix}:rl:*10.7.7.7*`);
    expect(keys).toHaveLength(1);
    const ttl = await redis.pttl(keys[0]!);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(2 * windowMs);
    expect(limiter.check('sat-x', '10.7.7.7', false)).toMatchObject({ limit: 'ip' });
    expect(limiter.satelliteBlock('sat-x')).toMatchObject({ limit: 'satellite' });
    await new Promise((r) => setTimeout(r, windowMs + 50));
    expect(limiter.check('sat-x', '10.7.7.7', false)).toBeUndefined();
    expect(limiter.satelliteBlock('sat-x')).toBeUndefined();
  });

});

// Date alone is faked, to put each call at a chosen millisecond; Redis and its timers run for real
describe('FailureLimiter windows', () => {
  const windowMs = 60_000;
  const start = Math.ceil(Date.now() / windowMs + 10) * windowMs; // a window start no other test is in
  afterEach(() => vi.useRealTimers());

  it('counts each window afresh: one failure per window never crosses a limit of one', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const limiter = new FailureLimiter(redis, prefix, { ip: 1, satellite: 100 }, windowMs);
    for (let w = 0; w < 3; w++) {
      vi.setSystemTime(start + w * windowMs + 5);
      expect(await limiter.fail('sat-w', '10.6.6.6', false), `window ${w}`).toBeUndefined();
    }
    expect(await limiter.fail('sat-w', '10.6.6.6', false)).toMatchObject({ limit: 'ip' });
  });

  it('a block ends at the first millisecond of the next window', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const limiter = new FailureLimiter(redis, prefix, { ip: 0, satellite: 100 }, windowMs);
    vi.setSystemTime(start + windowMs - 1500);
    expect(await limiter.fail('sat-e', '10.5.5.5', false)).toEqual({ limit: 'ip', seconds: 2 });
    vi.setSystemTime(start + windowMs - 1);
    expect(limiter.check('sat-e', '10.5.5.5', false)).toEqual({ limit: 'ip', seconds: 1 });
    vi.setSystemTime(start + windowMs);
    expect(limiter.check('sat-e', '10.5.5.5', false)).toBeUndefined();
  });

  // one person's burst of guesses (all in flight at once, as concurrent requests are before any answer blocks
  // the address) was counted in full toward the satellite too: past its limit, every other person's mistyped
  // token and every 409 of that satellite was answered 429, which the per-address limit is there to prevent
  it('a guess refused for its address over the limit does not count toward the satellite', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(start + 5);
    const limiter = new FailureLimiter(redis, prefix, { ip: 2, satellite: 5 }, windowMs);
    const waits = await Promise.all(Array.from({ length: 10 }, () => limiter.fail('sat-p', '10.3.3.3', true)));
    expect(waits.filter((w) => w === undefined)).toHaveLength(2);
    expect(waits.filter((w) => w?.limit === 'ip')).toHaveLength(8);
    expect(limiter.satelliteBlock('sat-p')).toBeUndefined();
    expect(await redis.get(new Keys(prefix).failures('s:sat-p', start / windowMs))).toBe('2');
    // another person's first mistyped token is answered for what it is
    expect(await limiter.fail('sat-p', '10.3.3.4', true)).toBeUndefined();
    // the satellite's own limit still holds for guesses spread over addresses
    for (const last of [5, 6, 7]) await limiter.fail('sat-p', `10.3.4.${last}`, true);
    expect(await limiter.fail('sat-p', '10.3.4.8', true)).toEqual({ limit: 'satellite', seconds: 60 });
    expect(limiter.satelliteBlock('sat-p')).toMatchObject({ limit: 'satellite' });
  });

  // a counter Redis refuses to count (OOM at maxmemory, a key of another type) must fail the request, not
  // let the guess through uncounted
  it('throws when Redis refuses the count', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(start + 5);
    await redis.hset(new Keys(prefix).failures('i:10.4.4.4', start / windowMs), 'not', 'a counter');
    const limiter = new FailureLimiter(redis, prefix, { ip: 5, satellite: 100 }, windowMs);
    await expect(limiter.fail('sat-r', '10.4.4.4', false)).rejects.toThrow(/WRONGTYPE/);
  });
});

describe('addressBlock', () => {
  it('keeps IPv4 addresses whole, dotted or mapped into IPv6', () => {
    expect(addressBlock('10.0.0.1')).toBe('10.0.0.1');
    expect(addressBlock('0000:0000:0000:0000:0000:ffff:0a00:0001')).not.toBe(addressBlock('0000:0000:0000:0000:0000:ffff:0a00:0002'));
    expect(addressBlock(v6(0x2001, 0xdb8, 0, 1, 5, 6, 7, 8))).toBe('2001:0db8:0000:0001::/64');
  });
});

describe('endUserIp (X-End-User-IP)', () => {
  it('gives an address in the form a peer has, IPv4 inside IPv6 as that IPv4 host; anything else is no address', () => {
    expect(endUserIp(' 1.2.3.4 ')).toBe('1.2.3.4');
    expect(endUserIp('2001:DB8::1')).toBe('2001:0db8:0000:0000:0000:0000:0000:0001');
    expect(endUserIp('fe80::1%eth0')).toBe('fe80:0000:0000:0000:0000:0000:0000:0001');
    // mapped (dotted or hex) and NAT64 forms were each one /64 shared by every IPv4 host
    for (const a of ['::ffff:1.2.3.4', '::FFFF:102:304', '64:ff9b::1.2.3.4', '0:0:0:0:0:ffff:1.2.3.4']) expect(endUserIp(a), a).toBe('1.2.3.4');
    // with a port, as Go's Request.RemoteAddr gives a peer: the port is dropped
    expect(endUserIp('203.0.113.7:51234')).toBe('203.0.113.7');
    expect(endUserIp('[2001:db8::1]:51234')).toBe('2001:0db8:0000:0000:0000:0000:0000:0001');
    expect(endUserIp('[::ffff:1.2.3.4]:80')).toBe('1.2.3.4');
    expect(endUserIp('[::1]')).toBe('0000:0000:0000:0000:0000:0000:0000:0001');
    // the highest port, and a zone inside the brackets
    expect(endUserIp('1.2.3.4:65535')).toBe('1.2.3.4');
    expect(endUserIp('[2001:db8::1]:65535')).toBe('2001:0db8:0000:0000:0000:0000:0000:0001');
    expect(endUserIp('[fe80::1%eth0]:51234')).toBe('fe80:0000:0000:0000:0000:0000:0000:0001');
    for (const a of ['1.2.3.4%x', 'nope', '1.2.3', '1.2.3:80', '1.2.3.4:', '1.2.3.4:123456', '1.2.3.4:99999', '[2001:db8::1]:65536', '[nope]:80', '[1.2.3.4]', '[1.2.3.4]:80', '2001:db8::1:80:1:2:3:4', '1.2.3.4, 5.6.7.8', '']) expect(endUserIp(a), a).toBeUndefined();
  });
});
