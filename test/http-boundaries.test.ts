// Edges of src/http and src/client that no other test would notice broken:
// each test here fails when the line it names is changed (a limit by one, a header dropped, a check skipped).
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { Packr } from 'msgpackr';
import { Pool } from 'undici';
import { describe, expect, it } from 'vitest';
import { ReferralError, SatelliteClient } from '../src/client/index.js';
import { ADMIN_KEY, call, rawExchange, serve } from './helpers/http.js';
import { dropSharedPrefixes } from './helpers/redis.js';
import { servedFor } from './helpers/served.js';

const api = servedFor('http-edges', { env: { RATE_LIMIT_FAILURES: '100000' }, satellites: [{ id: 'sat-a' }] });

const admin = (method: string, path: string, body?: unknown) => call(api.pool, method, path, { key: ADMIN_KEY, body });

const SATELLITE_BODY_LIMIT = 16 * 1024;

describe('the satellite body limit (16 KiB)', () => {
  /** a redeem body of exactly `n` bytes: JSON padded with spaces */
  const body = (n: number) => {
    const json = '{"token":"ffff0000-0000-4000-8000-000000000000","userId":"u"}';
    return json + ' '.repeat(n - json.length);
  };
  const head = (extra: string) => `POST /v1/tokens/redeem HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer ${api.keys['sat-a']}\r\nContent-Type: application/json\r\nAccept: application/json\r\n${extra}\r\n`;
  const chunked = (s: string) => `${head('Transfer-Encoding: chunked\r\n')}${s.match(/[^]{1,4096}/g)!.map((c) => `${c.length.toString(16)}\r\n${c}\r\n`).join('')}0\r\n\r\n`;
  const sized = (s: string) => `${head(`Content-Length: ${s.length}\r\n`)}${s}`;

  it('takes a body of exactly the limit and refuses one byte more, streamed or announced', async () => {
    for (const send of [chunked, sized]) {
      expect(await rawExchange(api.server.url, send(body(SATELLITE_BODY_LIMIT)))).toMatch(/^HTTP\/1.1 404 /); // read: no such token
      const over = await rawExchange(api.server.url, send(body(SATELLITE_BODY_LIMIT + 1)));
      expect(over).toMatch(/^HTTP\/1.1 413 /);
      expect(over).toContain('"error":"body_too_large"');
    }
    // announced one byte over, it is refused before any of it arrives
    const early = await rawExchange(api.server.url, head(`Content-Length: ${SATELLITE_BODY_LIMIT + 1}\r\n`));
    expect(early).toMatch(/^HTTP\/1.1 413 /);
  });
});

describe('a rotated key cached by the worker', () => {
  it('stops working when its grace ends, though AUTH_CACHE_MS (5 s here) is longer', async () => {
    const old = (await admin('POST', '/v1/admin/satellites', { id: 'sat-rot' })).body.apiKey;
    expect((await admin('POST', '/v1/admin/satellites/sat-rot/rotate-key', { graceMs: 500 })).status).toBe(200);
    // served in the grace, and so cached
    expect((await call(api.pool, 'GET', '/v1/users/u/tokens', { key: old })).status).toBe(200);
    await new Promise((r) => setTimeout(r, 1500));
    const after = await call(api.pool, 'GET', '/v1/users/u/tokens', { key: old });
    expect([after.status, after.body.error]).toEqual([401, 'unauthorized']);
  });
});

describe('a key rotated without grace', () => {
  // rotate-key without its auth.forget passed every other test (they wait out a short
  // AUTH_CACHE_MS); docs/http.md: the worker that served the rotate forgets at once, a leaked key is cut off
  it('is refused at once on the worker that served the rotation, though AUTH_CACHE_MS (5 s here) is longer', async () => {
    const old = (await admin('POST', '/v1/admin/satellites', { id: 'sat-leak' })).body.apiKey;
    expect((await call(api.pool, 'GET', '/v1/users/u/tokens', { key: old })).status).toBe(200); // cached now
    expect((await admin('POST', '/v1/admin/satellites/sat-leak/rotate-key', { graceMs: 0 })).status).toBe(200);
    const after = await call(api.pool, 'GET', '/v1/users/u/tokens', { key: old });
    expect([after.status, after.body.error]).toEqual([401, 'unauthorized']);
  });
});

describe('a reply larger than the socket takes at once', () => {
  // reply() without its onWritable continuation passed every other test, as no reply of
  // theirs outgrew the kernel's socket buffers: the 7 MB listing here then stopped at ~4 MB and hung
  it('is sent whole: the rest follows as the client reads (backpressure)', async () => {
    const url = `https://sat.example/${'p'.repeat(2000)}`;
    for (let i = 0; i < 3000; i += 100) {
      await Promise.all(Array.from({ length: 100 }, (_, j) => admin('POST', '/v1/admin/satellites', { id: `big-${i + j}`, url, name: 'n'.repeat(256) })));
    }
    const raw = await rawExchange(api.server.url, `GET /v1/admin/satellites HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer ${ADMIN_KEY}\r\nAccept: application/json\r\n\r\n`);
    const head = raw.indexOf('\r\n\r\n');
    const length = Number(/\r\ncontent-length: *(\d+)/i.exec(raw)?.[1]);
    expect(length).toBeGreaterThan(6_000_000);
    expect(raw.length - head - 4).toBe(length);
    const listed = JSON.parse(Buffer.from(raw.slice(head + 4), 'latin1').toString()) as { satellites: { id: string }[] };
    expect(listed.satellites.filter((s) => s.id.startsWith('big-'))).toHaveLength(3000);
  });
});

// uWS's getHeader gives the first of two lines: a proxy adding its own X-End-User-IP behind one the person
// signing up had set left the person's, a new one for every guess, to be counted
describe('X-End-User-IP sent twice', () => {
  it('is a list, refused 400 as one in a single line is, whichever line holds what', async () => {
    const lookup = (lines: string[]) => rawExchange(api.server.url, `GET /v1/tokens/ffff0000-0000-4000-8000-000000000000 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer ${api.keys['sat-a']}\r\n${lines.map((l) => `${l}\r\n`).join('')}\r\n`);
    for (const lines of [['X-End-User-IP: 198.51.100.1', 'X-End-User-IP: 198.51.100.2'], ['X-End-User-IP: 198.51.100.3', 'x-end-user-ip: 198.51.100.3'], ['X-End-User-IP: 198.51.100.4, 198.51.100.5']]) {
      const reply = await lookup(lines);
      expect(reply.split('\r\n')[0], lines.join(' | ')).toBe('HTTP/1.1 400 Bad Request');
      expect(reply).toContain('"message":"X-End-User-IP: not an IP address"');
    }
    // one line, as every client sends it, is taken
    expect((await lookup(['X-End-User-IP: 198.51.100.6'])).split('\r\n')[0]).toBe('HTTP/1.1 404 Not Found');
  });
});

describe('the typed client on the manager\'s own 429', () => {
  it('carries Retry-After as retryAfter (seconds), as it does for a proxy\'s', async () => {
    const limited = await serve({ KEY_PREFIX: `${api.prefix}-rl`, RATE_LIMIT_FAILURES: '1', RATE_LIMIT_WINDOW_MS: '60000' });
    const adminPool = new Pool(limited.url);
    const key = (await call(adminPool, 'POST', '/v1/admin/satellites', { key: ADMIN_KEY, body: { id: 'sat-rl' } })).body.apiKey;
    const client = new SatelliteClient({ url: limited.url, apiKey: key });
    try {
      const unknown = (i: number) => `ffff0000-0000-4000-8000-${String(i).padStart(12, '0')}`;
      const errors: ReferralError[] = [];
      for (let i = 0; i < 3; i++) errors.push(await client.lookup(unknown(i)).then(() => { throw new Error('a lookup of an unknown token succeeded'); }, (e: ReferralError) => e));
      expect(errors.map((e) => e.code)).toEqual(['token_not_found', 'rate_limited', 'rate_limited']);
      expect(errors[0]!.retryAfter).toBeUndefined();
      for (const e of errors.slice(1)) {
        expect(e.status).toBe(429);
        expect(e.retryAfter).toBeGreaterThanOrEqual(1);
        expect(e.retryAfter).toBeLessThanOrEqual(60);
      }
    } finally {
      await client.close();
      await adminPool.close();
      expect(await limited.stop()).toBe(0);
      await dropSharedPrefixes(`${api.prefix}-rl`);
    }
  });
});

describe('the typed client on a 2xx that is not the manager\'s', () => {
  it('is internal when the type is neither MessagePack nor JSON, even if its bytes decode to the right map', async () => {
    const redeemed = new Packr({ useRecords: false }).pack({ token: 't', state: 'redeemed', ownerSatelliteId: 's', ownerUserId: 'u' });
    const proxy = http.createServer((_req, res) => void res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(redeemed));
    const port = await new Promise<number>((r) => proxy.listen(0, '127.0.0.1', () => r((proxy.address() as AddressInfo).port)));
    const client = new SatelliteClient({ url: `http://127.0.0.1:${port}`, apiKey: 'k' });
    try {
      const err = await client.redeem('ffff0000-0000-4000-8000-000000000000', 'u').then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(ReferralError);
      expect(err).toMatchObject({ code: 'internal', status: 200 });
    } finally {
      await client.close();
      proxy.close();
    }
  });
});

/**
 * One keep-alive connection, raw: `send` writes bytes and reads as many replies as `heads` has items (a HEAD's
 * reply carries no body, whatever its Content-Length says), giving each reply's header section, or `closed` for
 * each the server did not answer before it closed the connection.
 */
function keepAlive(url: string) {
  const socket = net.connect(Number(new URL(url).port), '127.0.0.1');
  socket.on('error', () => undefined);
  let buf = '';
  let closed = false;
  let wake = () => {};
  socket.on('data', (d: Buffer) => {
    buf += d.toString('latin1');
    wake();
  });
  socket.on('close', () => {
    closed = true;
    wake();
  });
  async function send(raw: string, heads: boolean[]): Promise<string[]> {
    socket.write(raw);
    const out: string[] = [];
    const deadline = Date.now() + 10_000;
    while (out.length < heads.length) {
      const end = buf.indexOf('\r\n\r\n');
      if (end >= 0) {
        const head = buf.slice(0, end);
        if (head.startsWith('HTTP/1.1 100 ')) {
          buf = buf.slice(end + 4);
          continue;
        }
        const length = heads[out.length] ? 0 : Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
        if (buf.length >= end + 4 + length) {
          out.push(head);
          buf = buf.slice(end + 4 + length);
          continue;
        }
      }
      if (closed || Date.now() > deadline) {
        while (out.length < heads.length) out.push(closed ? 'closed' : 'no reply within 10 s');
        break;
      }
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, 100);
      });
    }
    return out;
  }
  return { send, close: () => socket.destroy() };
}

const statusLine = (head: string) => head.split('\r\n')[0];

// uWS's endWithoutBody(length) never counted such a reply as finished, so the connection stayed "busy": the next
// request on it (a load balancer's next keep-alive HEAD /healthz) was met by a close without an answer
describe('HEAD on a keep-alive connection', () => {
  const head = (path: string) => `HEAD ${path} HTTP/1.1\r\nHost: t\r\n\r\n`;
  const get = 'GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n';
  it('leaves the connection usable: the next request, sent later or in the same write, is answered', async () => {
    const c = keepAlive(api.server.url);
    try {
      const [first] = await c.send(head('/healthz'), [true]);
      expect(statusLine(first!)).toBe('HTTP/1.1 200 OK');
      expect(first).toMatch(/\r\ncontent-length: 2\d(\r\n|$)/i); // GET's: {"status":"ok","pid":<pid>}
      expect((await c.send(get, [false])).map(statusLine)).toEqual(['HTTP/1.1 200 OK']);
      expect((await c.send(head('/healthz') + head('/nope') + get, [true, true, false])).map(statusLine)).toEqual(['HTTP/1.1 200 OK', 'HTTP/1.1 404 Not Found', 'HTTP/1.1 200 OK']);
      // a route answered after Redis does, the same
      expect((await c.send(head('/readyz'), [true])).map(statusLine)).toEqual(['HTTP/1.1 200 OK']);
      expect((await c.send(head(`/v1/users/u/tokens`), [true])).map(statusLine)).toEqual(['HTTP/1.1 401 Unauthorized']);
      expect((await c.send(get, [false])).map(statusLine)).toEqual(['HTTP/1.1 200 OK']);
    } finally {
      c.close();
    }
  });
});

// uWS frames a body by the first Content-Length and reads an empty one as 0: the rest of the body was parsed as
// the connection's next request and answered (a second request smuggled past a front end that frames otherwise)
describe('a Content-Length that leaves the body\'s end in doubt', () => {
  const smuggled = 'GET /v1/smuggled HTTP/1.1\r\nHost: t\r\n\r\n';
  const redeem = (lengths: string[]) => `POST /v1/tokens/redeem HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer ${api.keys['sat-a']}\r\nContent-Type: application/json\r\n${lengths.map((l) => `Content-Length:${l}\r\n`).join('')}\r\n`;
  it('is refused 400 and the connection closed: what follows is never taken for a request', async () => {
    for (const [lengths, body] of [[[' 2', ` ${2 + smuggled.length}`], '{}'], [[' '], ''], [[' 2', ' '], '{}'], [[` ${2 + smuggled.length}`, ' 2'], `{}${smuggled}`]] as const) {
      const c = keepAlive(api.server.url);
      try {
        const [reply] = await c.send(redeem([...lengths]) + body, [false]);
        expect(statusLine(reply!), lengths.join('|')).toBe('HTTP/1.1 400 Bad Request');
        expect(reply).toMatch(/\r\nconnection: close/i);
        // sent after the reply: on a connection left open it was answered (404 no route GET /v1/smuggled)
        expect(await c.send(smuggled, [false]), lengths.join('|')).toEqual(['closed']);
      } finally {
        c.close();
      }
    }
    // in the same write as the request: the connection closes before answering anything that follows
    const c = keepAlive(api.server.url);
    try {
      const replies = await c.send(`${redeem([' 2', ` ${2 + smuggled.length}`])}{}${smuggled}`, [false, false]);
      expect(replies.filter((r) => r.includes('HTTP/1.1 404'))).toEqual([]);
      expect(replies.at(-1)).toBe('closed');
    } finally {
      c.close();
    }
    // a HEAD too (its reply has no body)
    const head = keepAlive(api.server.url);
    try {
      const [reply] = await head.send('HEAD /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 3\r\n\r\n', [true]);
      expect(statusLine(reply!)).toBe('HTTP/1.1 400 Bad Request');
      expect(await head.send(smuggled, [false])).toEqual(['closed']);
    } finally {
      head.close();
    }
    // one value sent twice is one value; a request with no body still keeps its connection
    const same = keepAlive(api.server.url);
    try {
      expect((await same.send(`${redeem([' 2', ' 2'])}{}`, [false])).map(statusLine)).toEqual(['HTTP/1.1 400 Bad Request']);
      expect((await same.send('GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n', [false])).map(statusLine)).toEqual(['HTTP/1.1 200 OK']);
      expect((await same.send(`POST /v1/admin/satellites/sat-a/rotate-key HTTP/1.1\r\nHost: t\r\n\r\n`, [false])).map(statusLine)).toEqual(['HTTP/1.1 401 Unauthorized']);
      expect((await same.send('GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n', [false])).map(statusLine)).toEqual(['HTTP/1.1 200 OK']);
    } finally {
      same.close();
    }
  });
});

// formatOf reads Accept's q; in a Content-Type it means nothing, and `q=0` there turned a JSON body into one read as MessagePack
describe('a Content-Type with parameters', () => {
  it('is its media type: charset and even q change nothing', async () => {
    const body = '{"token":"ffff0000-0000-4000-8000-000000000000","userId":"u"}';
    for (const contentType of ['application/json; charset=utf-8', 'APPLICATION/JSON', 'application/json;q=0', 'application/json; q=0.5']) {
      const r = await call(api.pool, 'POST', '/v1/tokens/redeem', { key: api.keys['sat-a'], raw: body, contentType, accept: 'application/json' });
      expect([contentType, r.status, r.body.error]).toEqual([contentType, 404, 'token_not_found']);
    }
    const packed = new Packr({ useRecords: false }).pack({ token: 'ffff0000-0000-4000-8000-000000000000', userId: 'u' });
    const r = await call(api.pool, 'POST', '/v1/tokens/redeem', { key: api.keys['sat-a'], raw: packed, contentType: 'application/msgpack;q=0' });
    expect([r.status, r.body.error, r.headers['content-type']]).toEqual([404, 'token_not_found', 'application/msgpack']);
  });
});
