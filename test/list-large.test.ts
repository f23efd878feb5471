// A user given tens of thousands of tokens (an internal account) has a list reply of megabytes. Sorting,
// building and encoding it in one go held the worker's event loop for 250-600 ms, and every sign-up sent to
// that worker meanwhile with it; the reply must still be the one document the short lists get.
import net from 'node:net';
import { Packr } from 'msgpackr';
import { Client, Pool } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { startServer, type HttpServer } from '../src/http/server.js';
import { encode } from '../src/http/wire.js';
import { TokenStore } from '../src/store/token-store.js';
import { ADMIN_KEY, call, type Format } from './helpers/http.js';
import { dropSharedPrefixes, SHARED_REDIS_URL, testPrefix } from './helpers/redis.js';

const prefix = testPrefix('list-large');
const N = 50_000;
const BATCH = 10_000;
const EXPIRES_AT = Date.UTC(2100, 0, 1);
let server: HttpServer;
let pool: Pool;
let key: string;
/** token -> expiresAt (undefined: never expires) */
const made = new Map<string, number | undefined>();

/**
 * The store's read of an owner's pages and its list, each with a hook called once it is done: the list is
 * sorted after the first, the reply built after the second.
 */
const store = TokenStore.prototype as unknown as { ownerPages(...args: unknown[]): Promise<void>; listUnredeemed(...args: unknown[]): Promise<unknown> };
const { ownerPages, listUnredeemed } = store;
let afterRead: (() => void) | undefined;
let afterList: (() => void) | undefined;

beforeAll(async () => {
  store.ownerPages = async function (this: unknown, ...args: unknown[]) {
    await ownerPages.apply(this, args);
    afterRead?.();
  };
  store.listUnredeemed = async function (this: unknown, ...args: unknown[]) {
    const tokens = await listUnredeemed.apply(this, args);
    afterList?.();
    return tokens;
  };
  server = await startServer(loadConfig({ host: '127.0.0.1', port: 0, keyPrefix: prefix, adminKey: ADMIN_KEY, snapshot: false }, { REDIS_URL: SHARED_REDIS_URL }));
  pool = new Pool(`http://127.0.0.1:${server.port}`, { connections: 4 });
  key = (await call(pool, 'POST', '/v1/admin/satellites', { key: ADMIN_KEY, body: { id: 'sat-whale' } })).body.apiKey;
  for (let n = 0; n < N; n += BATCH) {
    const expiresAt = n === 0 ? EXPIRES_AT : undefined;
    const r = await call(pool, 'POST', '/v1/admin/tokens/generate', { key: ADMIN_KEY, body: { satelliteId: 'sat-whale', userIds: ['whale'], perUser: BATCH, expiresAt } });
    expect(r.status).toBe(200);
    for (const t of r.body.tokens) made.set(t.token, expiresAt);
  }
});

afterAll(async () => {
  Object.assign(store, { ownerPages, listUnredeemed });
  await pool?.close();
  await server?.close(1000);
  await dropSharedPrefixes(prefix);
});

const listPath = '/v1/users/whale/tokens';

describe('the list of a user with tens of thousands of tokens', () => {
  it.each<Format>(['msgpack', 'json'])('is every token made, once, oldest first, as the one document encode() gives (%s)', async (format) => {
    const res = await pool.request({ method: 'GET', path: listPath, headers: { authorization: `Bearer ${key}`, accept: `application/${format}` } });
    expect(res.statusCode).toBe(200);
    const raw = Buffer.from(await res.body.arrayBuffer());
    const body = format === 'json' ? JSON.parse(raw.toString()) : new Packr({ useRecords: false, int64AsType: 'number' }).unpack(raw);
    const tokens = body.tokens as { token: string; campaignId: string; createdAt: number; expiresAt?: number }[];
    expect(tokens.length).toBe(N);
    expect(new Set(tokens.map((t) => t.token))).toEqual(new Set(made.keys()));
    for (const t of tokens) expect(t).toEqual({ token: t.token, campaignId: expect.any(String), createdAt: expect.any(Number), ...(made.get(t.token) ? { expiresAt: EXPIRES_AT } : {}) });
    const sorted = tokens.slice().sort((a, b) => a.createdAt - b.createdAt || a.token.localeCompare(b.token));
    expect(tokens.map((t) => t.token)).toEqual(sorted.map((t) => t.token));
    // what replying the whole value at once writes (expiresAt an int64 in MessagePack)
    expect(raw.equals(encode(format, body))).toBe(true);
  });

  it('lookups sent to the worker while the list is sorted, and while its reply is built, are answered before it is done', async () => {
    const probe = new Client(`http://127.0.0.1:${server.port}`);
    const [first] = made.keys();
    const order: string[] = [];
    const lookups: Promise<void>[] = [];
    const lookup = (name: string) => () => {
      order.push(`${name} sent`);
      lookups.push(call(probe, 'GET', `/v1/tokens/${first}`, { key }).then((r) => void order.push(`${name} ${r.status}`)));
    };
    try {
      // connected, and the key known to the worker: a lookup is one Redis call away
      expect((await call(probe, 'GET', `/v1/tokens/${first}`, { key })).status).toBe(200);
      afterRead = lookup('lookup while sorted');
      afterList = () => {
        order.push('sorted');
        lookup('lookup while built')();
      };
      const res = await pool.request({ method: 'GET', path: listPath, headers: { authorization: `Bearer ${key}`, accept: 'application/msgpack' } });
      order.push(`list ${res.statusCode}`);
      await res.body.arrayBuffer();
      await Promise.all(lookups);
      expect(order).toEqual(['lookup while sorted sent', 'lookup while sorted 200', 'sorted', 'lookup while built sent', 'lookup while built 200', 'list 200']);
    } finally {
      afterRead = afterList = undefined;
      await probe.close();
    }
  });

  it.each(['while it is built', 'mid-reply'])('a client gone %s leaves the worker serving', async (when) => {
    const socket = net.connect(server.port, '127.0.0.1');
    socket.on('error', () => undefined);
    const gone = new Promise<void>((resolve) => {
      const leave = () => {
        socket.destroy();
        resolve();
      };
      if (when === 'mid-reply') socket.once('data', leave);
      else afterRead = leave;
    });
    try {
      socket.write(`GET ${listPath} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\nAccept: application/json\r\n\r\n`);
      await gone;
      // the worker's next reply, whatever it did with the one left behind
      expect((await call(pool, 'GET', listPath, { key, format: 'msgpack' })).body.tokens.length).toBe(N);
    } finally {
      afterRead = undefined;
      socket.destroy();
    }
  });
});

describe('the redemptions of a user with thousands of redeemed tokens', () => {
  it.each<Format>(['msgpack', 'json'])('are every redemption, oldest first, with only the caller\'s own redeemers named, as encode() gives them (%s)', async (format) => {
    const other = (await call(pool, 'POST', '/v1/admin/satellites', { key: ADMIN_KEY, body: { id: `sat-other-${format}` } })).body.apiKey as string;
    const redeemed = [...made.keys()].slice(format === 'json' ? 0 : 2500, format === 'json' ? 2500 : 5000);
    // more than one slice of the reply: half by the whale's own satellite, half by another
    for (let i = 0; i < redeemed.length; i += 50) {
      await Promise.all(redeemed.slice(i, i + 50).map(async (token, j) => {
        const r = await call(pool, 'POST', '/v1/tokens/redeem', { key: (i + j) % 2 ? other : key, body: { token, userId: `new-${token}` } });
        expect(r.status).toBe(200);
      }));
    }
    const res = await pool.request({ method: 'GET', path: '/v1/users/whale/redemptions', headers: { authorization: `Bearer ${key}`, accept: `application/${format}` } });
    expect(res.statusCode).toBe(200);
    const raw = Buffer.from(await res.body.arrayBuffer());
    const body = format === 'json' ? JSON.parse(raw.toString()) : new Packr({ useRecords: false, int64AsType: 'number' }).unpack(raw);
    const rows = (body.redemptions as { token: string; redeemerSatelliteId: string; redeemerUserId?: string; redeemedAt: number }[]).filter((r) => redeemed.includes(r.token));
    expect(rows).toHaveLength(redeemed.length);
    for (const r of rows) expect(r.redeemerUserId).toBe(r.redeemerSatelliteId === 'sat-whale' ? `new-${r.token}` : undefined);
    const all = body.redemptions as { token: string; redeemedAt: number }[];
    expect(all.map((r) => r.token)).toEqual(all.slice().sort((a, b) => a.redeemedAt - b.redeemedAt || a.token.localeCompare(b.token)).map((r) => r.token));
    expect(raw.equals(encode(format, body))).toBe(true);
  });
});
