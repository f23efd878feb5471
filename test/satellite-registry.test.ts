import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { SATELLITE_FIELD_MAX, SatelliteRegistry } from '../src/satellites/registry.js';
import { Authenticator } from '../src/http/auth.js';
import { createRedis, type RedisClient } from '../src/store/redis.js';
import { SatelliteKeys } from '../src/store/satellites.js';
import { dropPrefix, SHARED_REDIS_URL, testPrefix } from './helpers/redis.js';

const prefix = testPrefix('satreg');
let redis: RedisClient;
let registry: SatelliteRegistry;

beforeAll(() => {
  redis = createRedis({ redisUrl: SHARED_REDIS_URL, redisClusterNodes: [] });
  registry = new SatelliteRegistry(redis, prefix);
});

afterAll(async () => {
  await dropPrefix(redis, prefix);
  redis.disconnect();
});

describe('satellite registry update', () => {
  it('sets the given fields, clears the null ones and keeps the rest, id, createdAt and key', async () => {
    const { apiKey } = await registry.add({ id: 'u1', name: 'One', outboundKey: 'secret' });
    const before = await registry.require('u1');
    expect(await registry.update('u1', { url: 'https://u1.example', name: null })).toEqual({
      id: 'u1',
      url: 'https://u1.example',
      outboundKey: 'secret',
      createdAt: before.createdAt,
    });
    expect((await registry.keyHolder(apiKey))?.id).toBe('u1');
    expect(await registry.update('u1', { outboundKey: null, url: null })).toEqual({ id: 'u1', createdAt: before.createdAt });
  });

  it('refuses an update with nothing to change, an empty or invalid value, and an unknown satellite', async () => {
    await registry.add({ id: 'u2' });
    await expect(registry.update('u2', {})).rejects.toMatchObject({ code: 'invalid_request' });
    await expect(registry.update('u2', { name: '' })).rejects.toMatchObject({ code: 'invalid_request' });
    await expect(registry.update('u2', { url: 'mailto:x@example.net' })).rejects.toMatchObject({ code: 'invalid_request' });
    // generate calls the origin and path only: these parts would be dropped, and a password shown by every list
    await expect(registry.update('u2', { url: 'https://sat:s3cret@u2.example' })).rejects.toMatchObject({ code: 'invalid_request', message: expect.stringContaining('user or password') });
    await expect(registry.add({ id: 'u2b', url: 'https://u2.example/referrals?region=eu' })).rejects.toMatchObject({ code: 'invalid_request', message: 'url: must not hold a query or fragment' });
    // a user alone, or a fragment alone, is refused as well
    await expect(registry.update('u2', { url: 'https://sat@u2.example' })).rejects.toMatchObject({ code: 'invalid_request', message: expect.stringContaining('user or password') });
    await expect(registry.update('u2', { url: 'https://u2.example/referrals#eu' })).rejects.toMatchObject({ code: 'invalid_request', message: 'url: must not hold a query or fragment' });
    await expect(registry.update('u2', { outboundKey: 'k'.repeat(4097) })).rejects.toMatchObject({ code: 'invalid_request' });
    // sent as a header: beyond Latin-1 undici refuses it, é would go as one Latin-1 byte, outer spaces are trimmed
    for (const outboundKey of ['key€0123456789', 'keyé0123456789', ' key0123456789', 'key0123456789 ', 'key\u00a00123']) {
      await expect(registry.update('u2', { outboundKey }), outboundKey).rejects.toMatchObject({ code: 'invalid_request', message: expect.stringContaining('printable ASCII') });
    }
    expect(await registry.update('u2', { outboundKey: 'a key with ~!@#$%^&*() inside' })).toMatchObject({ id: 'u2' });
    await expect(registry.update('nobody', { name: 'x' })).rejects.toMatchObject({ code: 'satellite_not_found' });
    // add takes the same rules
    await expect(registry.add({ id: 'u3', name: '' })).rejects.toMatchObject({ code: 'invalid_request' });
    expect(await registry.get('u3')).toBeUndefined();
    // an id shown in the CLI and the audit log: no C1 escape, no bidi override, nothing invisible
    for (const id of ['u4\u009b2J', 'u5\u202e', 'u6\u200b']) {
      await expect(registry.add({ id })).rejects.toMatchObject({ code: 'invalid_request' });
      expect(await registry.get(id)).toBeUndefined();
    }
  });

  // the HTTP schemas take their maxLength from SATELLITE_FIELD_MAX: a value they let through must be stored
  it('takes each field at its longest', async () => {
    const url = 'https://u7.example/';
    const longest = { name: 'n'.repeat(SATELLITE_FIELD_MAX.name), url: url + 'p'.repeat(SATELLITE_FIELD_MAX.url - url.length), outboundKey: 'k'.repeat(SATELLITE_FIELD_MAX.outboundKey) };
    await registry.add({ id: 'u7', ...longest });
    expect(await registry.require('u7')).toMatchObject(longest);
    expect(await registry.update('u7', { name: 'm'.repeat(SATELLITE_FIELD_MAX.name) })).toMatchObject({ name: 'm'.repeat(SATELLITE_FIELD_MAX.name) });
    await expect(registry.update('u7', { name: 'm'.repeat(SATELLITE_FIELD_MAX.name + 1) })).rejects.toMatchObject({ code: 'invalid_request' });
  });

  it('an update racing a remove never brings back a partial record', async () => {
    const keys = new SatelliteKeys(prefix);
    for (let i = 0; i < 50; i++) {
      const id = `race-${i}`;
      await registry.add({ id });
      const [updated] = await Promise.allSettled([registry.update(id, { url: 'https://race.example' }), registry.remove(id)]);
      if (updated.status === 'rejected') expect(updated.reason).toMatchObject({ code: 'satellite_not_found' });
      expect(await redis.exists(keys.satellite(id))).toBe(0);
      await expect(registry.update(id, { name: 'late' })).rejects.toMatchObject({ code: 'satellite_not_found' });
      expect(await redis.exists(keys.satellite(id))).toBe(0);
    }
  });
});

// a key check waiting on Redis when this worker served the remove put the key back in its cache, so the
// worker that should forget at once kept the removed satellite working for the cache time
describe('the worker\'s key cache', () => {
  it('does not keep a key a check read before the remove this worker served', async () => {
    const { apiKey } = await registry.add({ id: 'u-cache' });
    // the gate is on keyHolder, what the Authenticator reads
    const read = registry.keyHolder.bind(registry);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const slow = Object.create(registry) as SatelliteRegistry;
    slow.keyHolder = async (key: string) => {
      const holder = await read(key);
      await gate;
      return holder;
    };
    const auth = new Authenticator(slow, '', 60_000);
    const before = auth.satellite(apiKey);
    await new Promise((r) => setTimeout(r, 50)); // the check has read Redis and waits at the gate
    await registry.remove('u-cache');
    auth.forget('u-cache');
    release();
    expect(await before).toBe('u-cache'); // read before the remove: that request is served
    expect(await auth.satellite(apiKey)).toBeUndefined();
  });
});

// the cache kept a rotated key for the whole AUTH_CACHE_MS it was checked in, so a grace ended up to that long late
describe('a rotated key in the worker\'s key cache', () => {
  it('stops working when its grace ends, not when the cache entry lapses', async () => {
    const { apiKey: old } = await registry.add({ id: 'u-grace' });
    const auth = new Authenticator(registry, '', 60_000);
    const { apiKey: fresh } = await registry.rotateKey('u-grace', 300);
    expect(await auth.satellite(old)).toBe('u-grace'); // in its grace: checked, and cached
    // the grace's end is what bounds the cache entry; a current key has none
    expect(await registry.keyHolder(old)).toEqual({ id: 'u-grace', until: expect.any(Number) });
    expect(await registry.keyHolder(fresh)).toEqual({ id: 'u-grace' });
    await new Promise((r) => setTimeout(r, 400));
    expect(await auth.satellite(old)).toBeUndefined();
    expect(await auth.satellite(fresh)).toBe('u-grace');
  });
});

describe('the grace of a rotated key', () => {
  it('ends at the millisecond it names: the key works the one before, not that one', async () => {
    const { apiKey: old } = await registry.add({ id: 'u-edge' });
    await registry.rotateKey('u-edge', 600_000);
    const holder = await registry.keyHolder(old);
    expect(holder).toEqual({ id: 'u-edge', until: expect.any(Number) });
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      vi.setSystemTime(holder!.until! - 1);
      expect(await registry.keyHolder(old)).toEqual(holder);
      vi.setSystemTime(holder!.until!);
      expect(await registry.keyHolder(old)).toBeUndefined();
    } finally {
      vi.useRealTimers();
    }
  });
});

// with no ADMIN_KEY no key opens the admin routes: not even an empty one, should a caller ever pass it
describe('the admin key', () => {
  it('is none when not set; when set only that key is it', () => {
    expect(new Authenticator(registry, '', 0).isAdmin('')).toBe(false);
    expect(new Authenticator(registry, '', 0).adminEnabled).toBe(false);
    const auth = new Authenticator(registry, 'the-admin-key', 0);
    expect(auth.isAdmin('the-admin-key')).toBe(true);
    expect(auth.isAdmin('the-admin-ke')).toBe(false);
    expect(auth.isAdmin('')).toBe(false);
  });
});

// a graced rotation keeps the retired keys still in their grace; one whose grace ended must go from the index and
// from prevKeyHash there, else every graced rotation left one more dead entry for good (copied to Postgres, restored)
describe('rotating a key again', () => {
  it('drops the retired keys whose grace ended and keeps those still in it', async () => {
    const keys = new SatelliteKeys(prefix);
    await registry.add({ id: 'u-rot' });
    const indexed = async () => Object.values(await redis.hgetall(keys.index())).filter((v) => v.startsWith('u-rot\t'));
    await registry.rotateKey('u-rot', 1);
    await new Promise((r) => setTimeout(r, 20)); // the first retired key's grace ended
    const { apiKey: k2 } = await registry.rotateKey('u-rot', 600_000);
    const until = Number((await indexed()).find((v) => v !== 'u-rot\t')!.split('\t')[1]);
    expect((await redis.hget(keys.satellite('u-rot'), 'prevKeyHash'))!.split(' ')).toHaveLength(1);
    expect((await indexed()).sort()).toEqual(['u-rot\t', `u-rot\t${until}`]);
    const { apiKey: k3 } = await registry.rotateKey('u-rot', 600_000);
    // k2 is in its grace: kept beside the key it replaced
    expect((await redis.hget(keys.satellite('u-rot'), 'prevKeyHash'))!.split(' ')).toHaveLength(2);
    expect(await indexed()).toHaveLength(3);
    expect((await registry.keyHolder(k2))?.id).toBe('u-rot');
    expect((await registry.keyHolder(k3))?.id).toBe('u-rot');
  });
});

// remove drops every index entry naming the satellite, found by the id before the tab: an id that only starts
// with the removed one is another satellite, whose keys must keep working
describe('removing a satellite', () => {
  it('leaves the keys of a satellite whose id starts with the removed one', async () => {
    const { apiKey: removed } = await registry.add({ id: 'p1' });
    const { apiKey: retired } = await registry.add({ id: 'p10' });
    const { apiKey: current } = await registry.rotateKey('p10', 600_000);
    await registry.remove('p1');
    expect((await registry.keyHolder(removed))?.id).toBeUndefined();
    expect((await registry.keyHolder(retired))?.id).toBe('p10');
    expect((await registry.keyHolder(current))?.id).toBe('p10');
  });
});

// the notice every serve worker forgets a satellite's cached keys on (src/http/server.ts) was a PUBLISH sent after
// the script: a caller that died or lost Redis in between left the removed or leaked key working for AUTH_CACHE_MS
describe('the notice of a remove or a rotation', () => {
  it('is published by the script itself, so it goes out though the caller could send nothing after it', async () => {
    const keys = new SatelliteKeys(prefix);
    const sub = createRedis({ redisUrl: SHARED_REDIS_URL, redisClusterNodes: [] });
    const caller = createRedis({ redisUrl: SHARED_REDIS_URL, redisClusterNodes: [] });
    const heard: string[] = [];
    try {
      sub.on('message', (_channel: string, id: string) => heard.push(id));
      await sub.subscribe(keys.retired());
      // Redis gone from this caller once its script ran: a PUBLISH of its own is lost
      caller.publish = (() => Promise.reject(new Error('Connection is closed.'))) as unknown as typeof caller.publish;
      const lost = new SatelliteRegistry(caller, prefix);
      await lost.add({ id: 'n-rot' });
      await lost.add({ id: 'n-rm' });
      await expect(lost.remove('n-nobody')).rejects.toMatchObject({ code: 'satellite_not_found' }); // nothing to tell
      await lost.rotateKey('n-rot', 60_000);
      await lost.remove('n-rm');
      for (const end = Date.now() + 5000; heard.length < 2 && Date.now() < end; ) await new Promise((r) => setTimeout(r, 20));
      expect(heard).toEqual(['n-rot', 'n-rm']);
    } finally {
      sub.disconnect();
      caller.disconnect();
    }
  });
});
