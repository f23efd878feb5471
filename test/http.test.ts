import net from 'node:net';
import { Packr } from 'msgpackr';
import { Pool } from 'undici';
import { describe, expect, it } from 'vitest';
import { AdminClient } from '../src/client/admin.js';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { createRedis } from '../src/store/redis.js';
import { ADMIN_KEY, call, rawExchange, type Format } from './helpers/http.js';
import { SHARED_REDIS_URL } from './helpers/redis.js';
import { servedFor } from './helpers/served.js';

const api = servedFor('http', {
  env: { AUTH_CACHE_MS: '200', RATE_LIMIT_FAILURES: '100000' },
  connections: 8,
  satellites: [{ id: 'sat-a', name: 'A', url: 'https://a.example' }, { id: 'sat-b' }],
});

const admin = (method: string, path: string, body?: unknown, format: Format = 'json') => call(api.pool, method, path, { key: ADMIN_KEY, body, format });

async function tokensFor(satelliteId: string, userId: string, n: number, extra: Record<string, unknown> = {}): Promise<string[]> {
  const r = await admin('POST', '/v1/admin/tokens/generate', { satelliteId, userIds: [userId], perUser: n, ...extra });
  expect(r.status).toBe(200);
  return r.body.tokens.map((t: { token: string }) => t.token);
}

describe.each<Format>(['json', 'msgpack'])('satellite routes in %s', (format) => {
  const as = (key: string, method: string, path: string, body?: unknown) => call(api.pool, method, path, { key, body, format });
  const expectError = (r: { status: number; body: any; headers: Record<string, unknown> }, status: number, code: string) => {
    expect(r.status).toBe(status);
    expect(r.body.error).toBe(code);
    expect(typeof r.body.message).toBe('string');
    expect(String(r.headers['content-type'])).toContain(format);
  };

  it('redeems a token of satellite A with satellite B key and reports the owner; a second redeem is 409', async () => {
    const [t] = await tokensFor('sat-a', `alice-${format}`, 1);
    const r = await as(api.keys['sat-b'], 'POST', '/v1/tokens/redeem', { token: t, userId: 'bob' });
    expect(r.status).toBe(200);
    expect(r.body).toEqual({ token: t, state: 'redeemed', ownerSatelliteId: 'sat-a', ownerUserId: `alice-${format}` });
    expectError(await as(api.keys['sat-a'], 'POST', '/v1/tokens/redeem', { token: t, userId: 'carol' }), 409, 'token_already_redeemed');
    const looked = await as(api.keys['sat-a'], 'GET', `/v1/tokens/${t}`);
    expect(looked.status).toBe(200);
    expect(looked.body).toMatchObject({ token: t, state: 'redeemed', ownerSatelliteId: 'sat-a' });
  });

  // a Go satellite's nil pointer field without `omitempty` is sent as null: it was refused 400 "leaseMs: must be integer"
  it('null for an optional field is its absence; for a required one, a 400 naming it', async () => {
    const [t] = await tokensFor('sat-a', `nil-${format}`, 1);
    const r = await as(api.keys['sat-b'], 'POST', '/v1/tokens/reserve', { token: t, leaseMs: null, reservationId: null });
    expect(r.status).toBe(200);
    expect(r.body.leaseExpiresAt - Date.now()).toBeGreaterThan(10_000); // the default lease, not 0
    const missing = await as(api.keys['sat-b'], 'POST', '/v1/tokens/complete', { token: t, reservationId: r.body.reservationId, userId: null });
    expectError(missing, 400, 'invalid_request');
    expect(missing.body.message).toMatch(/userId/);
  });

  it('answers 404 token_not_found for unknown tokens on redeem, reserve and lookup', async () => {
    const t = 'ffff0000-0000-4000-8000-000000000000';
    expectError(await as(api.keys['sat-a'], 'POST', '/v1/tokens/redeem', { token: t, userId: 'u' }), 404, 'token_not_found');
    expectError(await as(api.keys['sat-a'], 'POST', '/v1/tokens/reserve', { token: t }), 404, 'token_not_found');
    expectError(await as(api.keys['sat-a'], 'GET', `/v1/tokens/${t}`), 404, 'token_not_found');
  });

  it('reserve -> token_reserved for others -> complete with the reservation redeems', async () => {
    const [t] = await tokensFor('sat-a', 'res-owner', 1);
    const r = await as(api.keys['sat-b'], 'POST', '/v1/tokens/reserve', { token: t, leaseMs: 60_000 });
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ token: t, state: 'reserved', ownerSatelliteId: 'sat-a', ownerUserId: 'res-owner' });
    expect(typeof r.body.reservationId).toBe('string');
    expect(r.body.leaseExpiresAt).toBeGreaterThan(Date.now());
    expectError(await as(api.keys['sat-a'], 'POST', '/v1/tokens/redeem', { token: t, userId: 'x' }), 409, 'token_reserved');
    expectError(await as(api.keys['sat-a'], 'POST', '/v1/tokens/reserve', { token: t }), 409, 'token_reserved');
    expectError(await as(api.keys['sat-b'], 'POST', '/v1/tokens/complete', { token: t, reservationId: 'not-it', userId: 'new' }), 409, 'reservation_mismatch');
    const done = await as(api.keys['sat-b'], 'POST', '/v1/tokens/complete', { token: t, reservationId: r.body.reservationId, userId: 'new' });
    expect(done.status).toBe(200);
    expect(done.body).toEqual({ token: t, state: 'redeemed', ownerSatelliteId: 'sat-a', ownerUserId: 'res-owner' });
  });

  // a reserve that dropped leaseMs held the token for MAX_LEASE_MS (1 h) instead of DEFAULT_LEASE_MS
  // (10 min), and nothing else looks at how long a lease is
  it('a lease lasts the leaseMs given, else DEFAULT_LEASE_MS (10 min)', async () => {
    const [given, unset] = await tokensFor('sat-a', 'lease-owner', 2);
    for (const [t, leaseMs, expected] of [[given, 60_000, 60_000], [unset, undefined, 10 * 60_000]] as const) {
      const before = Date.now();
      const r = await as(api.keys['sat-b'], 'POST', '/v1/tokens/reserve', { token: t, leaseMs });
      expect(r.status).toBe(200);
      // Redis's clock and ours are one machine's; a second either way for the round trip
      expect(r.body.leaseExpiresAt).toBeGreaterThanOrEqual(before + expected - 1000);
      expect(r.body.leaseExpiresAt).toBeLessThanOrEqual(Date.now() + expected + 1000);
    }
  });

  it('reserve with a reservationId of the satellite\'s own: its retry answers the same reservation, not 409', async () => {
    const [t] = await tokensFor('sat-a', 'own-id-owner', 1);
    const reservationId = `signup-${t}`;
    const first = await as(api.keys['sat-b'], 'POST', '/v1/tokens/reserve', { token: t, leaseMs: 60_000, reservationId });
    expect([first.status, first.body.reservationId]).toEqual([200, reservationId]);
    const retry = await as(api.keys['sat-b'], 'POST', '/v1/tokens/reserve', { token: t, leaseMs: 60_000, reservationId });
    expect([retry.status, retry.body]).toEqual([200, first.body]);
    expectError(await as(api.keys['sat-a'], 'POST', '/v1/tokens/reserve', { token: t, reservationId }), 409, 'token_reserved');
    expectError(await as(api.keys['sat-b'], 'POST', '/v1/tokens/reserve', { token: t, reservationId: 5 }), 400, 'invalid_request');
    expect((await as(api.keys['sat-b'], 'POST', '/v1/tokens/complete', { token: t, reservationId, userId: 'own-id-new' })).status).toBe(200);
  });

  it('release gives the token back; a wrong reservation is 409 reservation_mismatch', async () => {
    const [t] = await tokensFor('sat-a', 'rel-owner', 1);
    const r = await as(api.keys['sat-b'], 'POST', '/v1/tokens/reserve', { token: t });
    expectError(await as(api.keys['sat-b'], 'POST', '/v1/tokens/release', { token: t, reservationId: 'nope' }), 409, 'reservation_mismatch');
    const rel = await as(api.keys['sat-b'], 'POST', '/v1/tokens/release', { token: t, reservationId: r.body.reservationId });
    expect(rel.status).toBe(200);
    expect(rel.body).toEqual({ token: t, state: 'unredeemed' });
    expect((await as(api.keys['sat-b'], 'POST', '/v1/tokens/redeem', { token: t, userId: 'z' })).status).toBe(200);
  });

  // complete credited the redemption to the reserving satellite whoever called, with the caller's user id
  it('only the satellite that reserved may complete or release: another holding the reservation id gets 409 reservation_mismatch', async () => {
    const [t] = await tokensFor('sat-a', 'held-owner', 1);
    const r = await as(api.keys['sat-b'], 'POST', '/v1/tokens/reserve', { token: t });
    const mine = { token: t, reservationId: r.body.reservationId };
    expectError(await as(api.keys['sat-a'], 'POST', '/v1/tokens/release', mine), 409, 'reservation_mismatch');
    expectError(await as(api.keys['sat-a'], 'POST', '/v1/tokens/complete', { ...mine, userId: 'a-user' }), 409, 'reservation_mismatch');
    expect((await as(api.keys['sat-b'], 'POST', '/v1/tokens/complete', { ...mine, userId: 'b-user' })).status).toBe(200);
    // the retry of a completed call: ok for the satellite that made it, not for another
    expect((await as(api.keys['sat-b'], 'POST', '/v1/tokens/complete', { ...mine, userId: 'b-user' })).status).toBe(200);
    expectError(await as(api.keys['sat-a'], 'POST', '/v1/tokens/complete', { ...mine, userId: 'b-user' }), 409, 'reservation_mismatch');
  });

  it('an expired lease is 410 reservation_expired on complete', async () => {
    const [t] = await tokensFor('sat-a', 'lease-owner', 1);
    const r = await as(api.keys['sat-b'], 'POST', '/v1/tokens/reserve', { token: t, leaseMs: 1 });
    expect(r.status).toBe(200);
    await new Promise((s) => setTimeout(s, 30));
    expectError(await as(api.keys['sat-b'], 'POST', '/v1/tokens/complete', { token: t, reservationId: r.body.reservationId, userId: 'late' }), 410, 'reservation_expired');
  });

  it('revoked and expired tokens are 410', async () => {
    const [rv] = await tokensFor('sat-a', 'rv-owner', 1);
    expect((await admin('POST', '/v1/admin/tokens/revoke', { tokens: [rv] }, format)).body).toEqual({ revoked: 1 });
    expectError(await as(api.keys['sat-b'], 'POST', '/v1/tokens/redeem', { token: rv, userId: 'u' }), 410, 'token_revoked');
    // long enough for the generate call on a busy machine (a past expiresAt is refused), then wait it out
    const expiresAt = Date.now() + 1500;
    const [ex] = await tokensFor('sat-a', 'ex-owner', 1, { expiresAt });
    await new Promise((s) => setTimeout(s, expiresAt + 50 - Date.now()));
    expectError(await as(api.keys['sat-b'], 'POST', '/v1/tokens/redeem', { token: ex, userId: 'u' }), 410, 'token_expired');
  });

  it('lookup always carries expiresAt: epoch ms, or null for a token that never expires', async () => {
    const [never] = await tokensFor('sat-a', `never-${format}`, 1);
    const at = Date.now() + 3_600_000;
    const [dated] = await tokensFor('sat-a', `dated-${format}`, 1, { expiresAt: at });
    expect((await as(api.keys['sat-b'], 'GET', `/v1/tokens/${never}`)).body).toEqual({ token: never, state: 'unredeemed', ownerSatelliteId: 'sat-a', expiresAt: null });
    expect((await as(api.keys['sat-b'], 'GET', `/v1/tokens/${dated}`)).body).toEqual({ token: dated, state: 'unredeemed', ownerSatelliteId: 'sat-a', expiresAt: at });
  });

  it('lists the unredeemed tokens of a user on the calling satellite only', async () => {
    const user = `lister-${format}`;
    const made = await tokensFor('sat-a', user, 3);
    const mine = await as(api.keys['sat-a'], 'GET', `/v1/users/${user}/tokens`);
    expect(mine.status).toBe(200);
    expect(mine.body.tokens.map((t: { token: string }) => t.token).sort()).toEqual([...made].sort());
    expect(mine.body.tokens[0]).toMatchObject({ campaignId: expect.any(String), createdAt: expect.any(Number) });
    const theirs = await as(api.keys['sat-b'], 'GET', `/v1/users/${user}/tokens`);
    expect(theirs.status).toBe(200);
    expect(theirs.body.tokens).toEqual([]);
  });

  it('revokes the open tokens of a user who closed the account, on the calling satellite only', async () => {
    const user = `closing-${format}`;
    const [used, held, open1, open2] = await tokensFor('sat-a', user, 4);
    // a user of the same id on another satellite
    const other = `sat-close-${format}`;
    const keyOther = (await admin('POST', '/v1/admin/satellites', { id: other })).body.apiKey;
    const [onOther] = await tokensFor(other, user, 1);
    expect((await as(api.keys['sat-b'], 'POST', '/v1/tokens/redeem', { token: used, userId: 'friend' })).status).toBe(200);
    expect((await as(api.keys['sat-b'], 'POST', '/v1/tokens/reserve', { token: held })).status).toBe(200);
    const r = await as(api.keys['sat-a'], 'DELETE', `/v1/users/${user}/tokens`);
    expect(r.status).toBe(200);
    expect(String(r.headers['content-type'])).toContain(format);
    expect(r.body).toEqual({ revoked: 3 });
    for (const t of [held, open1, open2]) expectError(await as(api.keys['sat-b'], 'POST', '/v1/tokens/redeem', { token: t, userId: 'late' }), 410, 'token_revoked');
    // the redeemed one stays a referral; the other satellite's user of the same id keeps its token
    expect((await as(api.keys['sat-a'], 'GET', `/v1/users/${user}/redemptions`)).body.redemptions.map((t: { token: string }) => t.token)).toEqual([used]);
    expect((await as(keyOther, 'GET', `/v1/users/${user}/tokens`)).body.tokens.map((t: { token: string }) => t.token)).toEqual([onOther]);
    expect((await as(api.keys['sat-a'], 'DELETE', `/v1/users/${user}/tokens`)).body).toEqual({ revoked: 0 });
  });

  it('lists the redeemed tokens of a user on the calling satellite, naming the redeemer user only when it is the caller\'s', async () => {
    const user = `referrer-${format}`;
    const [toB, toA, held, unused] = await tokensFor('sat-a', user, 4);
    expect((await as(api.keys['sat-a'], 'GET', `/v1/users/${user}/redemptions`)).body).toEqual({ redemptions: [] });
    expect((await as(api.keys['sat-b'], 'POST', '/v1/tokens/redeem', { token: toB, userId: 'bob' })).status).toBe(200);
    // the next redemption in a later millisecond: the list is in redemption time order
    await new Promise((s) => setTimeout(s, 5));
    const r = await as(api.keys['sat-a'], 'POST', '/v1/tokens/reserve', { token: toA });
    expect((await as(api.keys['sat-a'], 'POST', '/v1/tokens/complete', { token: toA, reservationId: r.body.reservationId, userId: 'carol' })).status).toBe(200);
    expect((await as(api.keys['sat-b'], 'POST', '/v1/tokens/reserve', { token: held })).status).toBe(200);
    const mine = await as(api.keys['sat-a'], 'GET', `/v1/users/${user}/redemptions`);
    expect(mine.status).toBe(200);
    expect(String(mine.headers['content-type'])).toContain(format);
    const at = { campaignId: expect.any(String), redeemedAt: expect.any(Number) };
    // bob is sat-b's user: sat-a learns that its user brought someone to sat-b, not who
    expect(mine.body.redemptions).toEqual([
      { token: toB, redeemerSatelliteId: 'sat-b', ...at },
      { token: toA, redeemerSatelliteId: 'sat-a', redeemerUserId: 'carol', ...at },
    ]);
    expect(mine.body.redemptions[0].redeemedAt).toBeLessThan(mine.body.redemptions[1].redeemedAt);
    // the reserved and the unused token are still the user's to share
    expect((await as(api.keys['sat-a'], 'GET', `/v1/users/${user}/tokens`)).body.tokens.map((t: { token: string }) => t.token)).toEqual([unused]);
    // sat-b has no user of that id with tokens: nothing
    expect((await as(api.keys['sat-b'], 'GET', `/v1/users/${user}/redemptions`)).body).toEqual({ redemptions: [] });
  });

  it('refuses invalid bodies with 400 invalid_request naming the field', async () => {
    let r = await as(api.keys['sat-a'], 'POST', '/v1/tokens/redeem', { token: 12, userId: 'u' });
    expectError(r, 400, 'invalid_request');
    expect(r.body.message).toMatch(/^token:/);
    r = await as(api.keys['sat-a'], 'POST', '/v1/tokens/redeem', { token: 'ffff0000-0000-4000-8000-000000000000' });
    expectError(r, 400, 'invalid_request');
    expect(r.body.message).toMatch(/userId/);
    r = await as(api.keys['sat-a'], 'POST', '/v1/tokens/redeem', { token: 'FFFF0000-0000-4000-8000-00000000000Z', userId: 'u' });
    expectError(r, 400, 'invalid_request');
    r = await as(api.keys['sat-a'], 'POST', '/v1/tokens/reserve', { token: 'ffff0000-0000-4000-8000-000000000000', leaseMs: '5' });
    expect(r.body.message).toMatch(/^leaseMs:/);
    r = await call(api.pool, 'POST', '/v1/tokens/redeem', { key: api.keys['sat-a'], raw: format === 'json' ? '{"token":' : Buffer.from([0x82, 0xa5]), contentType: `application/${format}`, accept: `application/${format}` });
    expectError(r, 400, 'invalid_request');
    expectError(await as(api.keys['sat-a'], 'GET', '/v1/tokens/not-a-token'), 400, 'invalid_request');
    // an empty one too (uWS matches no route then: it was a 404 "no route", read as a wrong url)
    for (const [method, path, name] of [['GET', '/v1/users//tokens', 'userId'], ['DELETE', '/v1/users//tokens', 'userId'], ['GET', '/v1/users//redemptions', 'userId'], ['GET', '/v1/tokens/', 'token']]) {
      r = await as(api.keys['sat-a'], method!, path!);
      expectError(r, 400, 'invalid_request');
      expect(r.body.message).toBe(`${name}: must not be empty`);
    }
    expectError(await as(api.keys['sat-a'], 'GET', '/v1/users/u/nope'), 404, 'not_found');
    // a path parameter that does not decode is named like a body field
    for (const [path, name] of [['/v1/tokens/%ZZ', 'token'], ['/v1/users/%C3%28/tokens', 'userId']]) {
      r = await as(api.keys['sat-a'], 'GET', path!);
      expectError(r, 400, 'invalid_request');
      expect(r.body.message).toBe(`${name}: bad percent-encoding`);
    }
  });

  it('413 body_too_large, 415 unsupported_media_type, 405, 404', async () => {
    const big = { token: 'ffff0000-0000-4000-8000-000000000000', userId: 'x'.repeat(17 * 1024) };
    expectError(await as(api.keys['sat-a'], 'POST', '/v1/tokens/redeem', big), 413, 'body_too_large');
    const adminBig = await call(api.pool, 'POST', '/v1/admin/tokens/revoke', { key: ADMIN_KEY, body: { campaignId: 'y'.repeat(9 * 1024 * 1024) }, format });
    expectError(adminBig, 413, 'body_too_large');
    const r = await call(api.pool, 'POST', '/v1/tokens/redeem', { key: api.keys['sat-a'], raw: 'token=1', contentType: 'text/plain', accept: `application/${format}` });
    expectError(r, 415, 'unsupported_media_type');
    expectError(await as(api.keys['sat-a'], 'PUT', '/v1/tokens/redeem', {}), 405, 'method_not_allowed');
    expectError(await as(api.keys['sat-a'], 'GET', '/v1/nothing/here'), 404, 'not_found');
  });
});

describe('a chunked body (no Content-Length)', () => {
  // router.ts counts the bytes as they arrive: without a Content-Length the early check has nothing to read
  it('over the satellite limit is refused 413 body_too_large while it streams; the server answers on', async () => {
    const chunk = (s: string) => `${s.length.toString(16)}\r\n${s}\r\n`;
    const head = `POST /v1/tokens/redeem HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer ${api.keys['sat-a']}\r\nContent-Type: application/json\r\nAccept: application/json\r\nTransfer-Encoding: chunked\r\n\r\n`;
    const body = `{"token":"ffff0000-0000-4000-8000-000000000000","userId":"${'x'.repeat(17 * 1024)}"}`;
    const pieces = body.match(/[^]{1,4096}/g)!.map(chunk).join('');
    const r = await rawExchange(api.server.url, `${head}${pieces}0\r\n\r\n`);
    expect(r).toMatch(/^HTTP\/1.1 413 /);
    expect(JSON.parse(r.slice(r.indexOf('\r\n\r\n') + 4)).error).toBe('body_too_large');
    // a small chunked body reaches the route (404: no such token), and the server still answers
    const small = await rawExchange(api.server.url, `${head}${chunk('{"token":"ffff0000-0000-4000-8000-000000000000",')}${chunk('"userId":"u"}')}0\r\n\r\n`);
    expect(small).toMatch(/^HTTP\/1.1 404 /);
    expect((await call(api.pool, 'GET', '/v1/users/nobody/tokens', { key: api.keys['sat-a'] })).status).toBe(200);
  });
});

/** Sends a request head announcing `length` body bytes and only the first KiB of them; resolves with the reply's status line. */
async function partialBody(path: string, auth: string, length: number): Promise<string> {
  const socket = net.connect(Number(new URL(api.server.url).port), '127.0.0.1');
  socket.on('error', () => undefined);
  try {
    let got = '';
    const status = new Promise<string>((resolve) => {
      socket.on('data', (d: Buffer) => {
        got += d.toString('latin1');
        if (got.includes('\r\n')) resolve(got.slice(0, got.indexOf('\r\n')));
      });
      setTimeout(() => resolve('no reply within 10 s'), 10_000);
    });
    socket.write(`POST ${path} HTTP/1.1\r\nHost: t\r\n${auth}Content-Type: application/json\r\nContent-Length: ${length}\r\n\r\n{"tokens":["${'a'.repeat(1000)}`);
    return await status;
  } finally {
    socket.destroy();
  }
}

describe('strings that are not valid UTF-8', () => {
  // decoded to U+FFFD: the user ids 61 ff and 61 fe were the same user, both redeeming one token
  it('are refused, 400, in MessagePack and in JSON; a real U+FFFD is kept', async () => {
    const [t1, t2] = await tokensFor('sat-a', 'utf8-owner', 2);
    const str = (b: Buffer) => Buffer.concat([Buffer.from([0xa0 + b.length]), b]);
    const redeemBody = (token: string, userId: Buffer) => Buffer.concat([Buffer.from([0x82]), str(Buffer.from('token')), Buffer.from([0xd9, 36]), Buffer.from(token), str(Buffer.from('userId')), str(userId)]);
    const msgpack = (raw: Buffer) => call(api.pool, 'POST', '/v1/tokens/redeem', { key: api.keys['sat-b'], raw, contentType: 'application/msgpack', accept: 'application/json' });
    const bad = await msgpack(redeemBody(t1!, Buffer.from([0x61, 0xff])));
    expect([bad.status, bad.body]).toEqual([400, { error: 'invalid_request', message: 'body: a string is not valid UTF-8' }]);
    const json = await call(api.pool, 'POST', '/v1/tokens/redeem', { key: api.keys['sat-b'], raw: Buffer.concat([Buffer.from(`{"token":"${t1}","userId":"a`), Buffer.from([0xfe]), Buffer.from('"}')]), contentType: 'application/json' });
    expect([json.status, json.body.message]).toEqual([400, 'body: not valid UTF-8']);
    // U+FFFD itself is a character like any other, sent as UTF-8 or as a JSON escape
    expect((await msgpack(redeemBody(t1!, Buffer.from('a\ufffd')))).status).toBe(200);
    expect((await call(api.pool, 'POST', '/v1/tokens/redeem', { key: api.keys['sat-b'], raw: `{"token":"${t2}","userId":"b\\ufffd"}`, contentType: 'application/json' })).status).toBe(200);
  });

  // U+FFFD was counted in the body against those in the values: a real one in a field the route ignores, or a
  // replacement's bytes standing across a string's end and the next header (EF BF | BD: a 29-byte string's), let one through
  it('are refused whatever else the body holds', async () => {
    const [t] = await tokensFor('sat-a', 'utf8-owner-2', 1);
    const str = (b: Buffer) => Buffer.concat([Buffer.from([0xa0 + b.length]), b]);
    const redeem = (userId: Buffer, extra: Buffer) => call(api.pool, 'POST', '/v1/tokens/redeem', {
      key: api.keys['sat-b'], contentType: 'application/msgpack', accept: 'application/json',
      raw: Buffer.concat([Buffer.from([0x83]), str(Buffer.from('token')), Buffer.from([0xd9, 36]), Buffer.from(t!), str(Buffer.from('userId')), str(userId), extra]),
    });
    const keyed = await redeem(Buffer.from([0x62, 0xff]), Buffer.concat([str(Buffer.from('\ufffd')), Buffer.from([0xc0])]));
    expect([keyed.status, keyed.body]).toEqual([400, { error: 'invalid_request', message: 'body: a string is not valid UTF-8' }]);
    const across = await redeem(Buffer.from([0x62, 0xef, 0xbf]), Buffer.concat([str(Buffer.from('x'.repeat(29))), Buffer.from([0xc0])]));
    expect([across.status, across.body]).toEqual([400, { error: 'invalid_request', message: 'body: a string is not valid UTF-8' }]);
    // a key that is not valid UTF-8 is refused too; a real U+FFFD in a key the route ignores is not
    const badKey = await redeem(Buffer.from('u'), Buffer.concat([str(Buffer.from([0x78, 0xfe])), Buffer.from([0xc0])]));
    expect([badKey.status, badKey.body.message]).toEqual([400, 'body: a string is not valid UTF-8']);
    expect((await redeem(Buffer.from('u'), Buffer.concat([str(Buffer.from('x\ufffd')), Buffer.from([0xc0])]))).status).toBe(200);
  });
});

describe('Accept with q-values', () => {
  it('Accept q-values choose the reply format: the highest q, not the first listed', async () => {
    const r = await call(api.pool, 'GET', '/v1/users/nobody/tokens', { key: api.keys['sat-a'], accept: 'application/json;q=0.1, application/msgpack;q=0.9' });
    expect([r.status, r.headers['content-type']]).toEqual([200, 'application/msgpack']);
    const j = await call(api.pool, 'GET', '/v1/users/nobody/tokens', { key: api.keys['sat-a'], accept: 'application/msgpack;q=0.5, application/json' });
    expect([j.status, j.headers['content-type']]).toEqual([200, 'application/json']);
    // MessagePack's aliases are one format, at the highest q given to any of them; a media type is case-insensitive
    for (const accept of ['application/msgpack;q=0.9, application/x-msgpack;q=0.1, application/json;q=0.5', 'APPLICATION/MSGPACK;q=0.9, application/json;q=0.5']) {
      const r = await call(api.pool, 'GET', '/v1/users/nobody/tokens', { key: api.keys['sat-a'], accept });
      expect([accept, r.status, r.headers['content-type']]).toEqual([accept, 200, 'application/msgpack']);
    }
  });

  it('a type given q=0 is not answered in: Accept "application/msgpack;q=0, application/json" gets JSON', async () => {
    const r = await call(api.pool, 'GET', '/v1/users/nobody/tokens', { key: api.keys['sat-a'], accept: 'application/msgpack;q=0, application/json' });
    expect([r.status, r.headers['content-type']]).toEqual([200, 'application/json']);
    expect(r.body).toEqual({ tokens: [] });
    // refusing the request's own format, naming no other: the other one (it was answered in the refused one)
    const msgpackOnly = await call(api.pool, 'GET', '/v1/users/nobody/tokens', { key: api.keys['sat-a'], accept: 'application/json;q=0' });
    expect([msgpackOnly.status, msgpackOnly.headers['content-type']]).toEqual([200, 'application/msgpack']);
    const jsonOnly = await call(api.pool, 'POST', '/v1/tokens/redeem', { key: api.keys['sat-a'], format: 'msgpack', body: { token: '00000000-0000-4000-8000-000000000000', userId: 'x' }, accept: 'application/msgpack;q=0' });
    expect([jsonOnly.status, jsonOnly.headers['content-type']]).toEqual([404, 'application/json']);
    // refusing both names no format: the request's, else JSON, as with no Accept
    const neither = await call(api.pool, 'GET', '/v1/users/nobody/tokens', { key: api.keys['sat-a'], accept: 'application/json;q=0, application/msgpack;q=0' });
    expect([neither.status, neither.headers['content-type']]).toEqual([200, 'application/json']);
  });

  // a type not named takes the wildcard's q: "JSON at 0.5, anything else at 0.9" was answered in JSON
  it('a wildcard weighs the type not named: application/json;q=0.5, */*;q=0.9 gets MessagePack', async () => {
    for (const [accept, type] of [
      ['application/json;q=0.5, */*;q=0.9', 'application/msgpack'],
      ['application/msgpack;q=0.2, application/*;q=0.8, */*;q=0.1', 'application/json'],
      ['application/json;q=0, */*;q=0.1', 'application/msgpack'],
      // a tie with a wildcard goes to the type named; wildcards alone (a browser's Accept) leave the default
      ['*/*, application/msgpack', 'application/msgpack'],
      ['text/html, application/xhtml+xml, */*;q=0.8', 'application/json'],
    ]) {
      const r = await call(api.pool, 'GET', '/v1/users/nobody/tokens', { key: api.keys['sat-a'], accept });
      expect([accept, r.status, r.headers['content-type']]).toEqual([accept, 200, type]);
    }
    // wildcards alone: the request's own format, as with no Accept
    const packed = await call(api.pool, 'POST', '/v1/tokens/redeem', { key: api.keys['sat-a'], format: 'msgpack', body: { token: '00000000-0000-4000-8000-000000000000', userId: 'x' }, accept: '*/*' });
    expect([packed.status, packed.headers['content-type']]).toEqual([404, 'application/msgpack']);
  });

  // wire.ts formatOf: a tie in q goes to the first listed (RFC 9110 gives no order; the code picks one, stably)
  it('two types at equal q: the first listed is answered in', async () => {
    for (const [accept, type] of [
      ['application/msgpack, application/json', 'application/msgpack'],
      ['application/json, application/msgpack', 'application/json'],
      ['application/msgpack;q=0.5, application/json;q=0.5', 'application/msgpack'],
      ['application/json;q=0.5, application/msgpack;q=0.5', 'application/json'],
    ]) {
      const r = await call(api.pool, 'GET', '/v1/users/nobody/tokens', { key: api.keys['sat-a'], accept });
      expect([accept, r.status, r.headers['content-type']]).toEqual([accept, 200, type]);
    }
  });
});

describe('MessagePack integers, as a Go satellite reads them', () => {
  // msgpackr wrote a ms time as a float64 (0xcb), which Go's decoders refuse for an int64 field
  it('every time in a reply is an int64, not a float64; small numbers stay small', async () => {
    const strict = new Packr({ useRecords: false }); // 64-bit integers as BigInt, floats as numbers: tells them apart
    const raw = async (method: string, path: string, key: string, body?: unknown) => {
      const res = await api.pool.request({ method: method as 'GET', path, headers: { authorization: `Bearer ${key}`, accept: 'application/msgpack', ...(body ? { 'content-type': 'application/msgpack' } : {}) }, body: body ? strict.pack(body) : undefined });
      return strict.unpack(Buffer.from(await res.body.arrayBuffer()));
    };
    const at = Date.now() + 3_600_000;
    const [t1, t2] = await tokensFor('sat-a', 'go-owner', 2, { expiresAt: at });
    expect(await raw('GET', `/v1/tokens/${t1}`, api.keys['sat-b'])).toMatchObject({ expiresAt: BigInt(at) });
    const reserved = await raw('POST', '/v1/tokens/reserve', api.keys['sat-b'], { token: t1, leaseMs: 60_000 });
    expect(typeof reserved.leaseExpiresAt).toBe('bigint');
    const [listed] = (await raw('GET', '/v1/users/go-owner/tokens', api.keys['sat-a'])).tokens;
    expect(listed).toMatchObject({ token: t2, createdAt: expect.any(BigInt), expiresAt: BigInt(at) });
    await raw('POST', '/v1/tokens/redeem', api.keys['sat-b'], { token: t2, userId: 'go-joiner' });
    const [redeemed] = (await raw('GET', '/v1/users/go-owner/redemptions', api.keys['sat-a'])).redemptions;
    expect(typeof redeemed.redeemedAt).toBe('bigint');
    expect(await raw('POST', '/v1/admin/tokens/revoke', ADMIN_KEY, { tokens: [t1] })).toEqual({ revoked: 1 });
  });
});

describe('admin routes', () => {
  it('refuses a missing or satellite key before receiving the body (up to 8 MiB is not read for a 401/403)', async () => {
    const length = 4 * 1024 * 1024;
    expect(await partialBody('/v1/admin/tokens/revoke', '', length)).toMatch(/^HTTP\/1.1 401/);
    expect(await partialBody('/v1/admin/tokens/revoke', 'Authorization: Bearer wrong-key\r\n', length)).toMatch(/^HTTP\/1.1 401/);
    expect(await partialBody('/v1/admin/tokens/revoke', `Authorization: Bearer ${api.keys['sat-a']}\r\n`, length)).toMatch(/^HTTP\/1.1 403/);
  });

  // an admin change cannot be undone: a misspelt field ignored made it something else (a rotation with the
  // default grace for `grace: 0`, tokens that never expire for `expiresat`), so it is refused and nothing changes
  it('refuses a field it does not know in every admin body, in both formats, and changes nothing', async () => {
    const stats = async () => (await admin('GET', '/v1/admin/stats')).body;
    const before = { stats: await stats(), satellites: (await admin('GET', '/v1/admin/satellites')).body };
    const refused: [string, string, Record<string, unknown>, string][] = [
      ['POST', '/v1/admin/satellites', { id: 'sat-misspelt', outboundkey: 'k' }, 'outboundkey'],
      ['PATCH', '/v1/admin/satellites/sat-a', { name: 'renamed', URL: 'https://elsewhere.example' }, 'URL'],
      ['POST', '/v1/admin/satellites/sat-a/rotate-key', { grace: 0 }, 'grace'],
      ['POST', '/v1/admin/tokens/generate', { satelliteId: 'sat-a', userIds: ['u-misspelt'], perUser: 1, expiresat: Date.now() + 1000 }, 'expiresat'],
      ['POST', '/v1/admin/tokens/revoke', { campaignId: 'camp-misspelt', alluser: true }, 'alluser'],
      ['POST', '/v1/admin/tokens/purge', { madeBefore: Date.now(), dryrun: true }, 'dryrun'],
    ];
    for (const format of ['json', 'msgpack'] as const) {
      for (const [method, path, body, field] of refused) {
        const r = await admin(method, path, body, format);
        expect([r.status, r.body], `${method} ${path}`).toEqual([400, { error: 'invalid_request', message: `${field}: is not a field of this route` }]);
      }
    }
    expect({ stats: await stats(), satellites: (await admin('GET', '/v1/admin/satellites')).body }).toEqual(before);
    expect((await call(api.pool, 'GET', '/v1/users/u/tokens', { key: api.keys['sat-a'] })).status).toBe(200);
  });

  it('adds, lists, rotates and removes satellites', async () => {
    const added = await admin('POST', '/v1/admin/satellites', { id: 'sat-c', outboundKey: 'secret' }, 'msgpack');
    expect(added.status).toBe(201);
    expect(added.body.apiKey).toMatch(/^rmk_[A-Za-z0-9_-]{43}$/);
    for (const format of ['json', 'msgpack'] as const) {
      const dup = await admin('POST', '/v1/admin/satellites', { id: 'sat-c' }, format);
      expect([dup.status, dup.body.error, String(dup.headers['content-type'])]).toEqual([409, 'satellite_exists', `application/${format}`]);
    }
    const list = await admin('GET', '/v1/admin/satellites');
    const c = list.body.satellites.find((s: { id: string }) => s.id === 'sat-c');
    expect(c).toMatchObject({ id: 'sat-c', hasOutboundKey: true });
    expect(c.outboundKey).toBeUndefined();
    const rotated = await admin('POST', '/v1/admin/satellites/sat-c/rotate-key');
    expect(rotated.status).toBe(200);
    expect(rotated.body.apiKey).not.toBe(added.body.apiKey);
    expect((await admin('DELETE', '/v1/admin/satellites/sat-c')).status).toBe(200);
    for (const format of ['json', 'msgpack'] as const) {
      const gone = await admin('DELETE', '/v1/admin/satellites/sat-c', undefined, format);
      expect([gone.status, gone.body.error, String(gone.headers['content-type'])]).toEqual([404, 'satellite_not_found', `application/${format}`]);
    }
    expect((await admin('POST', '/v1/admin/satellites/sat-c/rotate-key', {})).body.error).toBe('satellite_not_found');
  });

  it('generate refuses a campaignId with braces, as the CLI does; revoke still takes one', async () => {
    for (const campaignId of ['a{b', 'c}', '{x}']) {
      for (const format of ['json', 'msgpack'] as const) {
        const r = await admin('POST', '/v1/admin/tokens/generate', { satelliteId: 'sat-a', userIds: ['brace-user'], perUser: 1, campaignId }, format);
        expect([r.status, r.body.error, r.body.message]).toEqual([400, 'invalid_request', 'campaignId: must not contain { or }']);
      }
      const revoked = await admin('POST', '/v1/admin/tokens/revoke', { campaignId });
      expect([revoked.status, revoked.body]).toEqual([200, { revoked: 0 }]);
    }
    expect((await call(api.pool, 'GET', '/v1/users/brace-user/tokens', { key: api.keys['sat-a'] })).body.tokens).toEqual([]);
  });

  it('writes an audit line for each admin call that may change something, refused ones too, and never a key', async () => {
    const added = await admin('POST', '/v1/admin/satellites', { id: 'sat-audit', outboundKey: 'outbound-secret-audit' });
    const rotated = await admin('POST', '/v1/admin/satellites/sat-audit/rotate-key');
    await admin('PATCH', '/v1/admin/satellites/sat-audit', { name: 'Audited', outboundKey: null, url: 'https://sat.example/x' });
    const [t] = await tokensFor('sat-audit', 'audit-user', 1);
    await admin('POST', '/v1/admin/tokens/revoke', { tokens: [t] });
    expect((await call(api.pool, 'POST', '/v1/admin/tokens/revoke', { key: api.keys['sat-a'], body: { campaignId: 'audit-camp' } })).status).toBe(403);
    expect((await call(api.pool, 'DELETE', '/v1/admin/satellites/sat-audit', { key: 'not-the-admin-key' })).status).toBe(401);
    expect((await admin('POST', '/v1/admin/tokens/revoke', { satelliteId: 'sat-audit' })).status).toBe(400);
    // refused from the headers alone, before the body is read
    expect((await call(api.pool, 'POST', '/v1/admin/tokens/revoke', { key: ADMIN_KEY, raw: 'x', contentType: 'text/plain' })).status).toBe(415);
    expect((await call(api.pool, 'POST', '/v1/admin/tokens/revoke', { key: ADMIN_KEY, raw: Buffer.alloc(8 * 1024 * 1024 + 1, 0x20), contentType: 'application/json' })).status).toBe(413);
    await admin('GET', '/v1/admin/satellites');
    await admin('DELETE', '/v1/admin/satellites/sat-audit');
    // the server writes its lines in order: this test's start at the line of its first call
    let lines: any[] = [];
    for (const deadline = Date.now() + 5000; lines.length < 11 && Date.now() < deadline; await new Promise((r) => setTimeout(r, 20))) {
      const all = api.server.output().split('\n').filter((l) => l.startsWith('{"audit"')).map((l) => JSON.parse(l));
      lines = all.slice(all.findIndex((l) => l.body?.id === 'sat-audit'));
    }
    const brief = lines.map((l) => [l.method, l.path, l.status, l.error]);
    expect(brief).toEqual([
      ['POST', '/v1/admin/satellites', 201, undefined],
      ['POST', '/v1/admin/satellites/sat-audit/rotate-key', 200, undefined],
      ['PATCH', '/v1/admin/satellites/sat-audit', 200, undefined],
      ['POST', '/v1/admin/tokens/generate', 200, undefined],
      ['POST', '/v1/admin/tokens/revoke', 200, undefined],
      ['POST', '/v1/admin/tokens/revoke', 403, 'forbidden'],
      ['DELETE', '/v1/admin/satellites/sat-audit', 401, 'unauthorized'],
      ['POST', '/v1/admin/tokens/revoke', 400, 'invalid_request'],
      ['POST', '/v1/admin/tokens/revoke', 415, 'unsupported_media_type'],
      ['POST', '/v1/admin/tokens/revoke', 413, 'body_too_large'],
      ['DELETE', '/v1/admin/satellites/sat-audit', 200, undefined],
    ]);
    for (const l of lines) {
      expect(l).toMatchObject({ audit: 'admin', ip: expect.stringMatching(/127\.0\.0\.1/), ms: expect.any(Number) });
      expect(Date.now() - Date.parse(l.at)).toBeLessThan(60_000);
    }
    expect(lines[0].body).toEqual({ id: 'sat-audit', outboundKey: '<redacted>' });
    expect(lines[0].result).toMatchObject({ id: 'sat-audit', apiKey: '<redacted>' });
    expect(lines[2].body).toEqual({ name: 'Audited', outboundKey: null, url: 'https://sat.example/x' });
    expect(lines[3].body).toMatchObject({ satelliteId: 'sat-audit', userIds: '[1 items]', perUser: 1 });
    expect(lines[3].result).toMatchObject({ tokens: '[1 items]' });
    expect([lines[4].body, lines[4].result]).toEqual([{ tokens: '[1 items]' }, { revoked: 1 }]);
    expect(lines[5].body).toBeUndefined();
    const written = api.server.output();
    for (const secret of [added.body.apiKey, rotated.body.apiKey, 'outbound-secret-audit', t]) expect(written).not.toContain(secret);
  });

  // anyone may call an admin route, key or no key: each such call wrote its whole path, up to uWS' 16 KiB head
  it('clips a long path in the audit line', async () => {
    const id = `long-${'x'.repeat(12_000)}`;
    expect((await call(api.pool, 'DELETE', `/v1/admin/satellites/${id}`, { key: 'not-the-admin-key' })).status).toBe(401);
    let line: any;
    for (const deadline = Date.now() + 5000; !line && Date.now() < deadline; await new Promise((r) => setTimeout(r, 20))) {
      line = api.server.output().split('\n').filter((l) => l.startsWith('{"audit"')).map((l) => JSON.parse(l)).find((l) => l.path.startsWith('/v1/admin/satellites/long-'));
    }
    expect(line).toMatchObject({ method: 'DELETE', status: 401, error: 'unauthorized' });
    expect(line.path).toBe(`/v1/admin/satellites/${id}`.slice(0, 512) + '…');
  });

  it('answers 400 to MessagePack extension types (an Error, a Set, a Date), not 500 or a 503 that blames Redis', async () => {
    const packr = new Packr({ useRecords: false });
    // msgpackr decodes its own extensions into live objects: an Error with a name and message the sender chose
    const error = (name: string) => Buffer.concat([Buffer.from('d46500', 'hex'), packr.pack([name, 'sender text', null])]);
    const set = Buffer.concat([Buffer.from('d47300', 'hex'), packr.pack(['a'])]);
    const unavailable = async () => Number(/^rm_redis_errors_total\{kind="unavailable"\} (\d+)$/m.exec((await call(api.pool, 'GET', '/metrics')).body)?.[1] ?? 0);
    const before = await unavailable();
    const asMap = (field: string, value: Buffer) => Buffer.concat([Buffer.from([0x81, 0xa0 + field.length]), Buffer.from(field), value]);
    for (const [path, method, key, raw] of [
      ['/v1/admin/satellites/sat-a/rotate-key', 'POST', ADMIN_KEY, error('MaxRetriesPerRequestError')],
      ['/v1/admin/tokens/revoke', 'POST', ADMIN_KEY, error('Error')],
      ['/v1/admin/satellites/sat-a', 'PATCH', ADMIN_KEY, error('TypeError')],
      ['/v1/admin/satellites/sat-a', 'PATCH', ADMIN_KEY, asMap('name', error('Error'))],
      ['/v1/admin/tokens/revoke', 'POST', ADMIN_KEY, set],
      ['/v1/admin/tokens/revoke', 'POST', ADMIN_KEY, asMap('tokens', Buffer.from('d6ff00000000', 'hex'))],
      ['/v1/tokens/release', 'POST', api.keys['sat-a'], asMap('token', error('Error'))],
      // msgpackr's structured-clone extensions: {x: a = [a]}, a cycle that kept a worker busy for good, before auth
      ['/v1/tokens/redeem', 'POST', api.keys['sat-a'], Buffer.from('81a178d6690000000191d67000000001', 'hex')],
      // a BigInt extension in an unknown field: the satellite was added, and its audit line said 500
      ['/v1/admin/satellites', 'POST', ADMIN_KEY, new Packr({ useRecords: false, useBigIntExtension: true }).pack({ id: 'sat-big', note: 2n ** 70n })],
    ] as const) {
      const r = await call(api.pool, method, path, { key, raw, contentType: 'application/msgpack', accept: 'application/json' });
      expect([path, r.status, r.body.error]).toEqual([path, 400, 'invalid_request']);
    }
    // without a key the cycle was decoded before auth too: now refused at once
    const keyless = await call(api.pool, 'POST', '/v1/tokens/redeem', { raw: Buffer.from('81a178d6690000000191d67000000001', 'hex'), contentType: 'application/msgpack', accept: 'application/json' });
    expect([keyless.status, keyless.body.error]).toEqual([401, 'unauthorized']);
    expect(await unavailable()).toBe(before);
    expect(api.server.output()).not.toContain('sender text');
    // the key still works: nothing was rotated
    expect((await call(api.pool, 'GET', '/v1/users/u/tokens', { key: api.keys['sat-a'] })).status).toBe(200);
  });

  it('PATCH /v1/admin/satellites/:id sets and clears fields; the key keeps working', async () => {
    const { apiKey } = (await admin('POST', '/v1/admin/satellites', { id: 'sat-upd', name: 'Old' })).body;
    for (const format of ['json', 'msgpack'] as const) {
      const r = await admin('PATCH', '/v1/admin/satellites/sat-upd', { url: `https://${format}.example`, outboundKey: 'k1' }, format);
      expect([r.status, String(r.headers['content-type'])]).toEqual([200, `application/${format}`]);
      expect(r.body).toEqual({ id: 'sat-upd', name: 'Old', url: `https://${format}.example`, hasOutboundKey: true, createdAt: expect.any(Number) });
    }
    // null clears; a field not sent is kept
    const cleared = await admin('PATCH', '/v1/admin/satellites/sat-upd', { name: null, outboundKey: null }, 'msgpack');
    expect(cleared.body).toEqual({ id: 'sat-upd', url: 'https://msgpack.example', hasOutboundKey: false, createdAt: expect.any(Number) });
    const listedNow = (await admin('GET', '/v1/admin/satellites')).body.satellites.find((s: { id: string }) => s.id === 'sat-upd');
    expect(listedNow).toEqual(cleared.body);
    expect((await call(api.pool, 'GET', '/v1/users/u/tokens', { key: apiKey })).status).toBe(200);

    for (const [body, status, code] of [
      [{}, 400, 'invalid_request'],
      [{ url: 'ftp://x.example' }, 400, 'invalid_request'],
      [{ url: '' }, 400, 'invalid_request'],
      [{ name: 7 }, 400, 'invalid_request'],
      [undefined, 400, 'invalid_request'],
      // Postgres refuses a NUL in the registry's jsonb: accepted, it stopped every snapshot write
      [{ name: 'EU\u00001' }, 400, 'invalid_request'],
      [{ outboundKey: 'k\u0000' }, 400, 'invalid_request'],
      [{ url: 'https://x.example/\u0000' }, 400, 'invalid_request'],
    ] as const) {
      const r = await admin('PATCH', '/v1/admin/satellites/sat-upd', body);
      expect([r.status, r.body.error]).toEqual([status, code]);
    }
    expect((await admin('POST', '/v1/admin/satellites', { id: 'sat-nul', name: 'a\u0000b' })).status).toBe(400);
    const missing = await admin('PATCH', '/v1/admin/satellites/sat-nope', { name: 'x' });
    expect([missing.status, missing.body.error]).toEqual([404, 'satellite_not_found']);
    // a satellite key may not change the registry
    expect((await call(api.pool, 'PATCH', '/v1/admin/satellites/sat-upd', { key: apiKey, body: { name: 'x' } })).status).toBe(403);
  });

  it('rotate-key: the old key works during the grace period, then not', async () => {
    const { apiKey: old } = (await admin('POST', '/v1/admin/satellites', { id: 'sat-rot' })).body;
    // a grace past any date is refused before anything rotates (the CLI's --grace has the same cap)
    const endless = await admin('POST', '/v1/admin/satellites/sat-rot/rotate-key', { graceMs: 1e20 });
    expect([endless.status, endless.body.error]).toEqual([400, 'invalid_request']);
    // a grace long enough for the two requests below on a busy machine
    const graceMs = 3000;
    const fresh = (await admin('POST', '/v1/admin/satellites/sat-rot/rotate-key', { graceMs })).body.apiKey;
    const rotatedBy = Date.now(); // the grace ends graceMs after a moment before this
    const list = (key: string) => call(api.pool, 'GET', '/v1/users/u/tokens', { key });
    expect((await list(old)).status).toBe(200);
    expect((await list(fresh)).status).toBe(200);
    // grace + the in-process key cache (AUTH_CACHE_MS=200)
    await new Promise((s) => setTimeout(s, rotatedBy + graceMs + 200 + 50 - Date.now()));
    expect((await list(old)).status).toBe(401);
    expect((await list(fresh)).status).toBe(200);
  });

  // a rotation retried because its reply was lost dropped every older key: the one the satellite still used died at once
  it('rotate-key twice within the grace: every retired key works until its grace ends; a rotation without grace retires them all', async () => {
    const { apiKey: k0 } = (await admin('POST', '/v1/admin/satellites', { id: 'sat-rot2' })).body;
    const list = (key: string) => call(api.pool, 'GET', '/v1/users/u/tokens', { key });
    const rotate = async (graceMs: number) => (await admin('POST', '/v1/admin/satellites/sat-rot2/rotate-key', { graceMs })).body.apiKey as string;
    const k1 = await rotate(600_000);
    const k2 = await rotate(600_000);
    await new Promise((s) => setTimeout(s, 250)); // past the in-process key cache (AUTH_CACHE_MS=200)
    for (const k of [k0, k1, k2]) expect((await list(k)).status).toBe(200);
    const k3 = await rotate(0);
    await new Promise((s) => setTimeout(s, 250));
    expect(await Promise.all([k0, k1, k2, k3].map(async (k) => (await list(k)).status))).toEqual([401, 401, 401, 200]);
  });

  it('a removed satellite\'s key is refused: at once after DELETE on this worker, soon after a remove elsewhere', async () => {
    const list = (key: string) => call(api.pool, 'GET', '/v1/users/u/tokens', { key });
    // removed through the API: the worker that removed it drops its cached key at once
    const { apiKey: viaApi } = (await admin('POST', '/v1/admin/satellites', { id: 'sat-del-api' })).body;
    expect((await list(viaApi)).status).toBe(200); // now cached (AUTH_CACHE_MS=200)
    expect((await admin('DELETE', '/v1/admin/satellites/sat-del-api')).status).toBe(200);
    expect((await list(viaApi)).status).toBe(401);
    // removed by another process (`referral-manager satellites remove`): Redis tells the worker (test/auth-cache.test.ts)
    const { apiKey: viaCli } = (await admin('POST', '/v1/admin/satellites', { id: 'sat-del-cli' })).body;
    expect((await list(viaCli)).status).toBe(200);
    const redis = createRedis({ redisUrl: SHARED_REDIS_URL, redisClusterNodes: [] });
    try {
      await new SatelliteRegistry(redis, api.prefix).remove('sat-del-cli');
    } finally {
      redis.disconnect();
    }
    const deadline = Date.now() + 10_000;
    let status = 0;
    while ((status = (await list(viaCli)).status) === 200 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(status).toBe(401);
  });

  it('revokes nothing when one token of a {tokens} list is malformed (400 names it)', async () => {
    const [good] = await tokensFor('sat-a', 'partial-revoke', 1);
    const bad = await admin('POST', '/v1/admin/tokens/revoke', { tokens: [good, good!.toUpperCase()] });
    expect([bad.status, bad.body.error, bad.body.message]).toEqual([400, 'invalid_request', 'tokens[1]: must be a lowercase UUIDv4']);
    expect((await call(api.pool, 'GET', `/v1/tokens/${good}`, { key: api.keys['sat-b'] })).body.state).toBe('unredeemed');
  });

  // the schema's own messages name an array item "userIds.1"; fieldOf gives it the index form
  // docs/http.md promises "userIds[3]: must NOT have more than 128 characters"
  it('names an array item a schema refuses by its index, userIds[1], as the docs say', async () => {
    const long = await admin('POST', '/v1/admin/tokens/generate', { satelliteId: 'sat-a', userIds: ['u', 'x'.repeat(129)], perUser: 1 });
    expect([long.status, long.body.error, long.body.message]).toEqual([400, 'invalid_request', 'userIds[1]: must NOT have more than 128 characters']);
    const typed = await admin('POST', '/v1/admin/tokens/revoke', { tokens: ['ffff0000-0000-4000-8000-000000000000', 7] });
    expect(typed.body.message).toBe('tokens[1]: must be string');
  });

  it('refuses a revoke body that mixes forms (400) and revokes nothing: it used to serve one form and drop the other', async () => {
    const [t] = await tokensFor('sat-a', 'mixed-revoke', 1, { campaignId: 'camp-mixed' });
    const mixed = [
      { tokens: [t], campaignId: 'camp-mixed' },
      { satelliteId: 'sat-a', campaignId: 'camp-mixed' }, // "the campaign on sat-a" was the whole campaign
      { userId: 'mixed-revoke', campaignId: 'camp-mixed' },
      { tokens: [t], satelliteId: 'sat-a', userId: 'mixed-revoke' },
      { satelliteId: 'sat-a' }, // a forgotten userId must not widen to every user of sat-a
      { userId: 'mixed-revoke', allUsers: true },
      { allUsers: true },
      { satelliteId: 'sat-a', userId: 'mixed-revoke', allUsers: true },
      { satelliteId: 'sat-a', allUsers: true, campaignId: 'camp-mixed' },
      {}, // none (a check for more than one form let it through, to "campaignId: must be a string")
    ];
    for (const body of mixed) {
      const r = await admin('POST', '/v1/admin/tokens/revoke', body);
      expect([r.status, r.body.error, r.body.message], JSON.stringify(body)).toEqual([400, 'invalid_request', 'body: give exactly one of: tokens, or satelliteId and userId, or satelliteId and allUsers: true, or campaignId']);
    }
    const falsy = await admin('POST', '/v1/admin/tokens/revoke', { satelliteId: 'sat-a', allUsers: false });
    expect([falsy.status, falsy.body.error]).toEqual([400, 'invalid_request']);
    expect((await call(api.pool, 'GET', `/v1/tokens/${t}`, { key: api.keys['sat-b'] })).body.state).toBe('unredeemed');
  });

  it('revokes every open token of a satellite\'s users with {satelliteId, allUsers: true}, and no other satellite\'s', async () => {
    expect((await admin('POST', '/v1/admin/satellites', { id: 'sat-retired' })).status).toBe(201);
    const gen = await admin('POST', '/v1/admin/tokens/generate', { satelliteId: 'sat-retired', userIds: ['r1', 'r2', 'r3'], perUser: 2 }, 'msgpack');
    const tokens: string[] = gen.body.tokens.map((t: { token: string }) => t.token);
    const [kept] = await tokensFor('sat-a', 'r1', 1);
    expect((await call(api.pool, 'POST', '/v1/tokens/redeem', { key: api.keys['sat-a'], body: { token: tokens[0], userId: 'newcomer' } })).status).toBe(200);
    for (const format of ['json', 'msgpack'] as const) {
      const r = await admin('POST', '/v1/admin/tokens/revoke', { satelliteId: 'sat-retired', allUsers: true }, format);
      expect([r.status, r.body]).toEqual([200, { revoked: format === 'json' ? 5 : 0 }]);
    }
    const redeem = await call(api.pool, 'POST', '/v1/tokens/redeem', { key: api.keys['sat-a'], body: { token: tokens[1], userId: 'late' } });
    expect([redeem.status, redeem.body.error]).toEqual([410, 'token_revoked']);
    expect((await call(api.pool, 'GET', `/v1/tokens/${tokens[0]}`, { key: api.keys['sat-b'] })).body.state).toBe('redeemed');
    expect((await call(api.pool, 'GET', `/v1/tokens/${kept}`, { key: api.keys['sat-b'] })).body.state).toBe('unredeemed');
  });

  it('POST /v1/admin/tokens/purge deletes a campaign\'s revoked tokens made before madeBefore; AdminClient.purge too', async () => {
    const [gone, kept, alsoGone] = await tokensFor('sat-a', 'purge-user', 3, { campaignId: 'camp-purge' });
    await admin('POST', '/v1/admin/tokens/revoke', { tokens: [gone, alsoGone] });
    const before = (await admin('GET', '/v1/admin/stats')).body.satellites['sat-a'];
    const dry = await admin('POST', '/v1/admin/tokens/purge', { madeBefore: Date.now() + 60_000, campaignId: 'camp-purge', dryRun: true });
    expect([dry.status, dry.body]).toEqual([200, { wouldPurge: 2 }]);
    // a misspelt dryRun is refused, not ignored into a real purge
    const misspelt = await admin('POST', '/v1/admin/tokens/purge', { madeBefore: Date.now() + 60_000, campaignId: 'camp-purge', dryrun: true });
    expect([misspelt.status, misspelt.body]).toEqual([400, { error: 'invalid_request', message: 'dryrun: is not a field of this route' }]);
    expect((await call(api.pool, 'GET', `/v1/tokens/${gone}`, { key: api.keys['sat-b'] })).body.state).toBe('revoked');
    const r = await admin('POST', '/v1/admin/tokens/purge', { madeBefore: Date.now() + 60_000, campaignId: 'camp-purge' }, 'msgpack');
    expect([r.status, r.body]).toEqual([200, { purged: 2 }]);
    expect((await call(api.pool, 'GET', `/v1/tokens/${gone}`, { key: api.keys['sat-b'] })).status).toBe(404);
    expect((await call(api.pool, 'GET', `/v1/tokens/${kept}`, { key: api.keys['sat-b'] })).body.state).toBe('unredeemed');
    const after = (await admin('GET', '/v1/admin/stats')).body.satellites['sat-a'];
    expect(after).toEqual({ ...before, revoked: before.revoked - 2, purged: before.purged + 2 });
    for (const body of [{}, { madeBefore: -1 }, { madeBefore: 'soon' }, { madeBefore: 1.5 }, { madeBefore: 1, campaignId: '' }, { madeBefore: 1, dryRun: 'yes' }]) {
      const bad = await admin('POST', '/v1/admin/tokens/purge', body);
      expect([bad.status, bad.body.error], JSON.stringify(body)).toEqual([400, 'invalid_request']);
    }
    const client = new AdminClient({ url: api.server.url, apiKey: ADMIN_KEY });
    try {
      expect(await client.purgeDryRun(Date.now() + 60_000, 'camp-purge')).toEqual({ wouldPurge: 0 });
      expect(await client.purge(Date.now() + 60_000, 'camp-purge')).toEqual({ purged: 0 });
    } finally {
      await client.close();
    }
  });

  it('generates up to 10,000 tokens in one call, revokes by owner and campaign, reports stats', async () => {
    const before = (await admin('GET', '/v1/admin/stats')).body.satellites['sat-b'] ?? { generated: 0, revoked: 0 };
    const users = Array.from({ length: 5000 }, (_, i) => `bulk-${i}`);
    const gen = await admin('POST', '/v1/admin/tokens/generate', { satelliteId: 'sat-b', userIds: users, perUser: 2, campaignId: 'camp-bulk' }, 'msgpack');
    expect(gen.status).toBe(200);
    expect(gen.body.campaignId).toBe('camp-bulk');
    expect(gen.body.tokens).toHaveLength(10_000);
    expect(gen.body.tokens[0]).toEqual({ userId: 'bulk-0', token: expect.stringMatching(/^[0-9a-f-]{36}$/) });
    expect((await admin('POST', '/v1/admin/tokens/generate', { satelliteId: 'sat-b', userIds: users, perUser: 3 })).body.error).toBe('invalid_request');
    expect((await admin('POST', '/v1/admin/tokens/generate', { satelliteId: 'nope', userIds: ['u'], perUser: 1 })).body.error).toBe('satellite_not_found');
    // a bad user id is named as the body names it (it read owners[1].ownerUserId, and userIds.0 from the schema)
    expect((await admin('POST', '/v1/admin/tokens/generate', { satelliteId: 'sat-b', userIds: ['ok', 'ali\u200bce'], perUser: 1 })).body.message).toMatch(/^userIds\[1\]: must not contain /);
    expect((await admin('POST', '/v1/admin/tokens/generate', { satelliteId: 'sat-b', userIds: ['x'.repeat(129)], perUser: 1 })).body.message).toBe('userIds[0]: must NOT have more than 128 characters');
    // a new user of sat-a joins through one of them: the redemptions matrix shows sat-b -> sat-a
    const joined = await call(api.pool, 'POST', '/v1/tokens/redeem', { key: api.keys['sat-a'], body: { token: gen.body.tokens[2].token, userId: 'bulk-joiner' } });
    expect(joined.body).toMatchObject({ state: 'redeemed', ownerSatelliteId: 'sat-b', ownerUserId: 'bulk-1' });
    expect((await admin('POST', '/v1/admin/tokens/revoke', { satelliteId: 'sat-b', userId: 'bulk-0' })).body).toEqual({ revoked: 2 });
    expect((await admin('POST', '/v1/admin/tokens/revoke', { campaignId: 'camp-bulk' })).body).toEqual({ revoked: 9997 });
    // the campaign stays revoked: generating for it again makes nothing
    const again = await admin('POST', '/v1/admin/tokens/generate', { satelliteId: 'sat-b', userIds: ['bulk-0'], perUser: 1, campaignId: 'camp-bulk' });
    expect([again.status, again.body.error]).toEqual([410, 'campaign_revoked']);
    expect((await admin('POST', '/v1/admin/tokens/revoke', {})).body.error).toBe('invalid_request');
    const stats = await admin('GET', '/v1/admin/stats');
    expect(stats.status).toBe(200);
    expect(stats.body.satellites['sat-b']).toMatchObject({ generated: before.generated + 10_000, revoked: before.revoked + 9999 });
    expect(stats.body.redemptions).toEqual(expect.arrayContaining([expect.objectContaining({ ownerSatelliteId: 'sat-b', redeemerSatelliteId: 'sat-a' })]));
  });
});

describe('auth', () => {
  const token = 'ffff0000-0000-4000-8000-000000000000';
  const satelliteRoutes: [string, string, unknown?][] = [
    ['POST', '/v1/tokens/redeem', { token, userId: 'u' }],
    ['POST', '/v1/tokens/reserve', { token }],
    ['POST', '/v1/tokens/complete', { token, reservationId: 'r', userId: 'u' }],
    ['POST', '/v1/tokens/release', { token, reservationId: 'r' }],
    ['GET', `/v1/tokens/${token}`],
    ['GET', '/v1/users/u/tokens'],
    ['GET', '/v1/users/u/redemptions'],
    ['DELETE', '/v1/users/u/tokens'],
  ];
  const adminRoutes: [string, string, unknown?][] = [
    ['POST', '/v1/admin/satellites', { id: 'never' }],
    ['GET', '/v1/admin/satellites'],
    ['DELETE', '/v1/admin/satellites/sat-a'],
    ['POST', '/v1/admin/satellites/sat-a/rotate-key', {}],
    ['POST', '/v1/admin/tokens/generate', { satelliteId: 'sat-a', userIds: ['u'], perUser: 1 }],
    ['POST', '/v1/admin/tokens/revoke', { campaignId: 'c' }],
    ['GET', '/v1/admin/stats'],
  ];

  it('every satellite and admin route refuses a missing or unknown key with 401', async () => {
    for (const [method, path, body] of [...satelliteRoutes, ...adminRoutes]) {
      for (const key of [undefined, 'rmk_wrong', `${ADMIN_KEY}x`]) {
        for (const format of ['json', 'msgpack'] as const) {
          const r = await call(api.pool, method, path, { key, body, format });
          expect([method, path, key, r.status, r.body.error, String(r.headers['content-type'])]).toEqual([method, path, key, 401, 'unauthorized', `application/${format}`]);
        }
      }
    }
  });

  it('Authorization takes "Bearer", any case, then spaces or a tab, then the key', async () => {
    for (const header of [`Bearer ${api.keys['sat-a']}`, `bearer  ${api.keys['sat-a']}`, `BEARER\t${api.keys['sat-a']}`, `Bearer ${api.keys['sat-a']} `]) {
      const r = await api.pool.request({ method: 'GET', path: '/v1/users/nobody/tokens', headers: { authorization: header } });
      expect([JSON.stringify(header), r.statusCode]).toEqual([JSON.stringify(header), 200]);
      await r.body.arrayBuffer();
    }
    const basic = await api.pool.request({ method: 'GET', path: '/v1/users/nobody/tokens', headers: { authorization: `Basic ${api.keys['sat-a']}` } });
    expect(basic.statusCode).toBe(401);
    await basic.body.arrayBuffer();
  });

  it('admin routes refuse satellite keys with 403, satellite routes refuse the admin key with 403', async () => {
    for (const [method, path, body] of adminRoutes) {
      const r = await call(api.pool, method, path, { key: api.keys['sat-a'], body, format: 'msgpack' });
      expect([path, r.status, r.body.error]).toEqual([path, 403, 'forbidden']);
    }
    for (const [method, path, body] of satelliteRoutes) {
      const r = await call(api.pool, method, path, { key: ADMIN_KEY, body });
      expect([path, r.status, r.body.error]).toEqual([path, 403, 'forbidden']);
    }
  });

  it('HEAD is GET without a body: same status and Content-Length, and the keep-alive connection stays usable', async () => {
    const one = new Pool(api.server.url, { connections: 1 });
    try {
      const get = await one.request({ method: 'GET', path: '/healthz' });
      const length = (await get.body.arrayBuffer()).byteLength;
      for (const [path, status] of [['/healthz', 200], ['/readyz', 200], ['/nope', 404], ['/v1/tokens/redeem', 405]] as const) {
        const r = await one.request({ method: 'HEAD', path });
        expect(r.statusCode).toBe(status);
        expect((await r.body.arrayBuffer()).byteLength).toBe(0);
        if (path === '/healthz') expect(Number(r.headers['content-length'])).toBe(length);
        if (status === 405) expect(r.headers.allow).toBe('POST');
      }
      expect((await call(one, 'GET', '/healthz')).body).toMatchObject({ status: 'ok' });
      expect((await call(one, 'OPTIONS', '/healthz')).headers.allow).toBe('GET, HEAD');
    } finally {
      await one.close();
    }
  });

  it('a body without Content-Type is 415 before any key is looked at, like a wrong type', async () => {
    for (const key of [undefined, ADMIN_KEY]) {
      const r = await api.pool.request({ method: 'POST', path: '/v1/tokens/redeem', headers: key ? { authorization: `Bearer ${key}` } : {}, body: '{}' });
      expect(r.statusCode).toBe(415);
      expect(JSON.parse(await r.body.text())).toMatchObject({ error: 'unsupported_media_type', message: expect.stringMatching(/content-type missing/) });
      // and the wrong type (without the early check it was a 401 for a missing key)
      const typed = await api.pool.request({ method: 'POST', path: '/v1/tokens/redeem', headers: { 'content-type': 'text/plain', ...(key ? { authorization: `Bearer ${key}` } : {}) }, body: '{}' });
      expect(typed.statusCode).toBe(415);
      expect(JSON.parse(await typed.body.text())).toMatchObject({ error: 'unsupported_media_type', message: expect.stringMatching(/"text\/plain" not supported/) });
    }
  });

  it('ops routes need no key', async () => {
    expect((await call(api.pool, 'GET', '/healthz')).body).toMatchObject({ status: 'ok' });
    const ready = await call(api.pool, 'GET', '/readyz');
    expect(ready.status).toBe(200);
    expect(ready.body).toMatchObject({ ready: true, redis: 'up', scripts: 'loaded', snapshot: { state: 'off' } });
    const metrics = await call(api.pool, 'GET', '/metrics');
    expect(metrics.status).toBe(200);
    for (const name of ['rm_http_requests_total', 'rm_http_request_duration_seconds_bucket', 'rm_token_results_total', 'rm_redis_errors_total', 'nodejs_eventloop_lag_seconds', 'process_resident_memory_bytes']) {
      expect(metrics.body).toContain(name);
    }
    expect(metrics.body).toMatch(/rm_token_results_total\{op="redeem",code="ok"\} \d+/);
  });
});

describe('reply format', () => {
  it('follows Accept, else the request content type, else JSON', async () => {
    const body = { token: 'ffff0000-0000-4000-8000-000000000000', userId: 'u' };
    const packed = new Packr({ useRecords: false }).pack(body);
    let r = await call(api.pool, 'POST', '/v1/tokens/redeem', { key: api.keys['sat-a'], raw: JSON.stringify(body), contentType: 'application/json', accept: 'application/msgpack' });
    expect(String(r.headers['content-type'])).toBe('application/msgpack');
    r = await call(api.pool, 'POST', '/v1/tokens/redeem', { key: api.keys['sat-a'], raw: packed, contentType: 'application/x-msgpack', accept: '*/*' });
    expect(String(r.headers['content-type'])).toBe('application/msgpack');
    expect(r.body.error).toBe('token_not_found');
    r = await call(api.pool, 'GET', '/v1/users/u/tokens', { key: api.keys['sat-a'], accept: 'text/html' });
    expect(String(r.headers['content-type'])).toBe('application/json');
  });
});
