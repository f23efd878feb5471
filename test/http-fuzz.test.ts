import { connect } from 'node:net';
import { Packr } from 'msgpackr';
import { expect, it } from 'vitest';
import { ADMIN_KEY, call, rssKb } from './helpers/http.js';
import { servedFor } from './helpers/served.js';

const api = servedFor('fuzz', { env: { RATE_LIMIT_FAILURES: '1000000' }, connections: 16, satellites: [{ id: 'fuzz-sat' }] });
const packr = new Packr({ useRecords: false });

// Seeded, so a failure names a case that can be replayed.
let seed = 0x9e3779b9;
const rnd = () => ((seed = (Math.imul(seed ^ (seed >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0) / 2 ** 32);
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(rnd() * 256)));

const TOKEN = 'ffff0000-0000-4000-8000-000000000000';
const weird: unknown[] = [null, true, 0, -1, 1.5, 2 ** 53, '', 'x'.repeat(200), [], [1, 2], {}, { a: { b: [] } }, '\u0000', '🙂'.repeat(40), Buffer.from('ab')];
const routes = ['/v1/tokens/redeem', '/v1/tokens/reserve', '/v1/tokens/complete', '/v1/tokens/release', '/v1/admin/tokens/generate', '/v1/admin/tokens/revoke', '/v1/admin/satellites'];
const fields = ['token', 'userId', 'reservationId', 'leaseMs', 'satelliteId', 'userIds', 'perUser', 'tokens', 'campaignId', 'id', 'allUsers', 'madeBefore', '__proto__', 'constructor'];

interface Case {
  kind: string;
  path: string;
  body: Buffer;
  contentType: string;
}

function nested(depth: number, json: boolean): Buffer {
  if (json) return Buffer.from(`${'['.repeat(depth)}${']'.repeat(rnd() < 0.5 ? depth : 0)}`);
  return Buffer.concat([Buffer.alloc(depth, rnd() < 0.5 ? 0x91 : 0xdc), Buffer.from([0xc0])]);
}

function makeCase(): Case {
  const path = pick(routes);
  const kind = pick(['random', 'truncated', 'types', 'nesting', 'huge', 'content-type', 'ext']);
  const json = rnd() < 0.4;
  const ct = json ? 'application/json' : pick(['application/msgpack', 'application/x-msgpack']);
  const encode = (v: unknown) => (json ? Buffer.from(JSON.stringify(v) ?? 'null') : packr.pack(v));
  switch (kind) {
    case 'random':
      return { kind, path, body: bytes(Math.floor(rnd() * 600)), contentType: ct };
    case 'truncated': {
      const full = encode({ token: TOKEN, userId: 'u', reservationId: 'r', userIds: ['a', 'b'], perUser: 1, satelliteId: 's' });
      return { kind, path, body: full.subarray(0, Math.floor(rnd() * full.length)), contentType: ct };
    }
    case 'types': {
      const body: Record<string, unknown> = {};
      // own properties even for "__proto__", so the wire really carries that key
      for (let i = 0; i < 1 + rnd() * 5; i++) Object.defineProperty(body, pick(fields), { value: pick(weird), enumerable: true, configurable: true });
      return { kind, path, body: encode(rnd() < 0.1 ? pick(weird) : body), contentType: ct };
    }
    case 'nesting':
      return { kind, path, body: nested(100 + Math.floor(rnd() * 15_000), json), contentType: ct };
    case 'huge': {
      const n = pick([1000, 15_000, 16_500, 40_000]);
      return { kind, path, body: encode({ token: TOKEN, userId: 'u'.repeat(n), reservationId: 'r'.repeat(n) }), contentType: ct };
    }
    case 'content-type':
      return { kind, path, body: encode({ token: TOKEN, userId: 'u' }), contentType: pick(['text/plain', 'application/xml', 'multipart/form-data; boundary=x', 'application/jsonx', 'msgpack', '', 'application/json; charset=utf-8']) };
    default: {
      // MessagePack extension types (timestamps, msgpackr records/structures) with random payloads
      const ext = Buffer.from([pick([0xd4, 0xd5, 0xd6, 0xd7, 0xd8]), pick([0xff, 0x72, 0x73, 0x00, 0x40, 0x70])]);
      return { kind, path, body: Buffer.concat([Buffer.from([0x81, 0xa5]), Buffer.from('token'), ext, bytes(16)]), contentType: 'application/msgpack' };
    }
  }
}

async function fire(n: number, statuses: Map<number, number>): Promise<void> {
  const batch = 64;
  for (let i = 0; i < n; i += batch) {
    const cases = Array.from({ length: Math.min(batch, n - i) }, makeCase);
    const replies = await Promise.all(cases.map((c) => call(api.pool, 'POST', c.path, { key: c.path.includes('admin') ? ADMIN_KEY : api.keys['fuzz-sat'], raw: c.body, contentType: c.contentType || 'application/octet-stream', accept: 'application/json' })));
    replies.forEach((r, j) => {
      statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
      if (r.status < 400 || r.status >= 500) {
        const c = cases[j]!;
        throw new Error(`${c.kind} ${c.path} ${c.contentType} -> ${r.status} ${JSON.stringify(r.body)}; body ${c.body.subarray(0, 64).toString('hex')}`);
      }
    });
  }
}

it('answers >= 10,000 random or garbled bodies with 4xx only, stays up, and keeps memory bounded', async () => {
  const statuses = new Map<number, number>();
  const { pid } = (await call(api.pool, 'GET', '/healthz')).body;
  await fire(1000, statuses);
  const before = rssKb(pid);
  await fire(10_000, statuses);
  const after = rssKb(pid);
  expect((await call(api.pool, 'GET', '/healthz')).body.pid).toBe(pid);
  expect(after - before).toBeLessThan(64 * 1024);
  // the mix really reached the decoder, the validator and the size and media-type checks
  for (const s of [400, 413, 415]) expect(statuses.get(s) ?? 0).toBeGreaterThan(50);
  console.log('fuzz statuses', Object.fromEntries(statuses), `worker RSS ${before} -> ${after} KiB`);
});

it('survives clients that hang up mid-headers, mid-body or before reading the reply', async () => {
  const { pid } = (await call(api.pool, 'GET', '/healthz')).body;
  const body = packr.pack({ token: TOKEN, userId: 'u' });
  const full = Buffer.concat([
    Buffer.from(`POST /v1/tokens/redeem HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${api.keys['fuzz-sat']}\r\ncontent-type: application/msgpack\r\ncontent-length: ${body.length + 4000}\r\n\r\n`),
    body,
  ]);
  await Promise.all(Array.from({ length: 300 }, (_, i) => new Promise<void>((resolve) => {
    const s = connect(api.server.port, '127.0.0.1', () => {
      // cut anywhere in the request: the declared length is longer than what is ever sent
      s.write(full.subarray(0, Math.floor((i / 300) * full.length) + 1), () => setTimeout(() => s.destroy(), i % 3));
    });
    s.on('error', () => undefined);
    s.on('close', () => resolve());
  })));
  const after = await call(api.pool, 'GET', '/healthz');
  expect([after.status, after.body.pid]).toEqual([200, pid]);
  expect((await call(api.pool, 'GET', '/v1/users/u/tokens', { key: api.keys['fuzz-sat'] })).status).toBe(200);
});
