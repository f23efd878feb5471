import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { OutboundKeySeal, SEALED } from '../src/satellites/seal.js';
import { createRedis, type RedisClient } from '../src/store/redis.js';
import { SatelliteKeys } from '../src/store/satellites.js';
import { ADMIN_KEY, serve } from './helpers/http.js';
import { dropPrefix, SHARED_REDIS_URL, testPrefix } from './helpers/redis.js';

const prefix = testPrefix('seal');
const keys = new SatelliteKeys(prefix);
const secret = () => randomBytes(32).toString('hex');
let redis: RedisClient;

beforeAll(() => {
  redis = createRedis({ redisUrl: SHARED_REDIS_URL, redisClusterNodes: [] });
});

afterAll(async () => {
  await dropPrefix(redis, prefix);
  redis.disconnect();
});

const stored = (id: string) => redis.hget(keys.satellite(id), 'outboundKey');

describe('OutboundKeySeal', () => {
  it('opens what it sealed, for that satellite only, under any of its secrets', () => {
    const [a, b] = [secret(), secret()];
    const sealed = new OutboundKeySeal([a]).seal('us1', 'k-ünï');
    expect(sealed.startsWith(SEALED)).toBe(true);
    expect(sealed).not.toContain('k-');
    expect(new OutboundKeySeal([a]).seal('us1', 'k-ünï')).not.toBe(sealed); // a fresh IV each time
    expect(new OutboundKeySeal([b, a]).open('us1', sealed)).toBe('k-ünï');
    expect(() => new OutboundKeySeal([a]).open('eu1', sealed)).toThrow(/satellite "eu1" is sealed with a secret/);
    expect(() => new OutboundKeySeal([b]).open('us1', sealed)).toThrow(/does not hold/);
    expect(() => new OutboundKeySeal([]).open('us1', sealed)).toThrow(/OUTBOUND_KEY_SECRET is not set/);
    // a flipped bit fails the auth tag rather than opening to garbage
    const body = Buffer.from(sealed.slice(SEALED.length), 'base64url');
    body.writeUInt8(body.readUInt8(body.length - 1) ^ 1, body.length - 1);
    expect(() => new OutboundKeySeal([a]).open('us1', SEALED + body.toString('base64url'))).toThrow();
    // and so does one in the last byte of the tag (bytes 12..27): GCM also verifies a tag cut short
    const tag = Buffer.from(sealed.slice(SEALED.length), 'base64url');
    tag.writeUInt8(tag.readUInt8(27) ^ 1, 27);
    expect(() => new OutboundKeySeal([a]).open('us1', SEALED + tag.toString('base64url'))).toThrow();
    // a value cut short to a 4-byte tag: GCM verifies a short tag unless told its length, so one of 2^32
    // guesses written into Redis would open (here the true tag's first 4 bytes, sealing the empty key)
    const empty = Buffer.from(new OutboundKeySeal([a]).seal('us1', '').slice(SEALED.length), 'base64url');
    expect(() => new OutboundKeySeal([a]).open('us1', SEALED + empty.subarray(0, 16).toString('base64url'))).toThrow(/does not hold/);
    expect(new OutboundKeySeal([a]).open('us1', SEALED + empty.toString('base64url'))).toBe('');
    // stored before any secret was set: read as it is
    expect(new OutboundKeySeal([a]).open('us1', 'plain')).toBe('plain');
    expect(new OutboundKeySeal([]).seal('us1', 'plain')).toBe('plain');
  });
});

describe('satellite registry with OUTBOUND_KEY_SECRET', () => {
  it('stores outbound keys sealed (add and update), opens them for generate, and lists them as set', async () => {
    const s = secret();
    const registry = new SatelliteRegistry(redis, prefix, [s]);
    await registry.add({ id: 'a1', url: 'https://a1.example', outboundKey: 'key-a1' });
    expect(await stored('a1')).toMatch(new RegExp(`^${SEALED}`));
    expect(await stored('a1')).not.toContain('key-a1');
    expect(registry.outboundKey(await registry.require('a1'))).toBe('key-a1');
    await registry.update('a1', { outboundKey: 'key-a1-new' });
    expect(await stored('a1')).not.toContain('key-a1-new');
    expect(registry.outboundKey(await registry.require('a1'))).toBe('key-a1-new');
    // listed as stored: sealed, never opened
    const sealedA1 = (await stored('a1'))!;
    expect((await registry.list()).find((x) => x.id === 'a1')?.outboundKey).toBe(sealedA1);
    // without the secret (a CLI run without it) the key is refused with the reason, never sent sealed
    expect(() => new SatelliteRegistry(redis, prefix).outboundKey({ id: 'a1', createdAt: 0, outboundKey: sealedA1 })).toThrow(/is sealed, and OUTBOUND_KEY_SECRET is not set/);
    await expect(registry.add({ id: 'a2', outboundKey: `${SEALED}x` })).rejects.toMatchObject({ code: 'invalid_request' });
    // cleared, it is gone, not an empty key sealed
    await registry.add({ id: 'a3', outboundKey: 'key-a3' });
    expect(await registry.update('a3', { outboundKey: null })).not.toHaveProperty('outboundKey');
    expect(await stored('a3')).toBeNull();
  });

  it('seal-keys seals keys stored plain, re-seals under a new first secret, and names those it cannot open', async () => {
    const [oldS, newS, lost] = [secret(), secret(), secret()];
    await new SatelliteRegistry(redis, prefix).add({ id: 'b1', outboundKey: 'plain-b1' });
    await new SatelliteRegistry(redis, prefix, [oldS]).add({ id: 'b2', outboundKey: 'old-b2' });
    await new SatelliteRegistry(redis, prefix, [lost]).add({ id: 'b3', outboundKey: 'lost-b3' });
    await new SatelliteRegistry(redis, prefix, [newS]).add({ id: 'b4', outboundKey: 'new-b4' });
    const before = { b3: await stored('b3'), b4: await stored('b4') };

    const registry = new SatelliteRegistry(redis, prefix, [newS, oldS]);
    // the registry also holds the first test's a1, sealed under a secret of its own
    const r = await registry.sealKeys();
    expect(r.sealed.sort()).toEqual(['b1', 'b2']);
    expect(r.unreadable).toEqual(['a1', 'b3']);
    expect(r.current).toBe(1);
    expect(await stored('b3')).toBe(before.b3);
    expect(await stored('b4')).toBe(before.b4);
    // now every readable key opens with the new secret alone: the old one can be dropped
    const onlyNew = new SatelliteRegistry(redis, prefix, [newS]);
    for (const [id, key] of [['b1', 'plain-b1'], ['b2', 'old-b2'], ['b4', 'new-b4']]) expect(onlyNew.outboundKey(await onlyNew.require(id!))).toBe(key);
    expect((await registry.sealKeys()).sealed).toEqual([]);
    await expect(new SatelliteRegistry(redis, prefix).sealKeys()).rejects.toThrow(/OUTBOUND_KEY_SECRET is not set/);
  });
  // seal-keys lists, then writes each key sealed anew: an update or a remove between the two must win
  it('seal-keys leaves a key changed or a satellite removed after its list as the change left it', async () => {
    const s = secret();
    await new SatelliteRegistry(redis, prefix).add({ id: 'c1', outboundKey: 'plain-c1' });
    await new SatelliteRegistry(redis, prefix).add({ id: 'c2', outboundKey: 'plain-c2' });
    const registry = new SatelliteRegistry(redis, prefix, [s]);
    const list = registry.list.bind(registry);
    const racing = Object.create(registry) as SatelliteRegistry;
    racing.list = async () => {
      const listed = (await list()).filter((x) => x.id === 'c1' || x.id === 'c2');
      await registry.update('c1', { outboundKey: 'changed-c1' });
      await registry.remove('c2');
      return listed;
    };
    const r = await racing.sealKeys();
    expect(r.sealed).toEqual([]);
    expect(registry.outboundKey(await registry.require('c1'))).toBe('changed-c1');
    expect(await redis.exists(keys.satellite('c2'))).toBe(0);
  });
});

describe('serve with OUTBOUND_KEY_SECRET', () => {
  it('seals the outbound key the admin routes are given (add and update), and lists it as set', async () => {
    const served = await serve({ KEY_PREFIX: prefix, OUTBOUND_KEY_SECRET: secret() });
    const admin = (method: string, path: string, body?: unknown) =>
      fetch(`${served.url}${path}`, { method, headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
    try {
      expect((await admin('POST', '/v1/admin/satellites', { id: 'h1', outboundKey: 'http-key-1' })).status).toBe(201);
      expect(await stored('h1')).toMatch(new RegExp(`^${SEALED}`));
      expect(await stored('h1')).not.toContain('http-key-1');
      expect((await admin('PATCH', '/v1/admin/satellites/h1', { outboundKey: 'http-key-2' })).status).toBe(200);
      expect(await stored('h1')).not.toContain('http-key-2');
      const listed = (await (await admin('GET', '/v1/admin/satellites')).json()) as { satellites: { id: string; hasOutboundKey: boolean }[] };
      expect(listed.satellites.find((x) => x.id === 'h1')?.hasOutboundKey).toBe(true);
    } finally {
      expect(await served.stop()).toBe(0);
    }
  });
});
