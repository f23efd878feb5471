import { gzipSync } from 'node:zlib';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { unpack } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { runCli } from './helpers/cli.js';
import { countingProxy } from './helpers/redis-proxy.js';
import { engineFixture, SHARED_REDIS_URL, type EngineFixture } from './helpers/redis.js';

/**
 * generate against a satellite that misbehaves on the wire: the built CLI as a child process, real Redis, a
 * satellite written for one misbehaviour (`answer`), registered as s1 with `outboundKey`.
 */
async function against(answer: (req: IncomingMessage & { body: Buffer }, res: ServerResponse) => void, outboundKey: string, fn: (fx: EngineFixture, env: Record<string, string>) => Promise<void>): Promise<void> {
  const fx = await engineFixture({ label: 'genadv' });
  // a megabyte of header, as a Go satellite's default (MaxHeaderBytes) takes
  const server = createServer({ maxHeaderSize: 1 << 21 }, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c)).on('end', () => answer(Object.assign(req, { body: Buffer.concat(chunks) }), res));
  });
  try {
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    await new SatelliteRegistry(fx.redis, fx.prefix).add({ id: 's1', url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, outboundKey });
    await fn(fx, { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
  } finally {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await fx.close();
  }
}

describe('generate against a satellite that misbehaves', () => {
  it('a refusal echoing the outbound key at length leaves the key and the length out of the output and the campaign record', async () => {
    const key = 'outbound-s1-0123456789abcdef0123456789abcdef';
    const echo = (req: IncomingMessage, res: ServerResponse) =>
      res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'unauthorized', message: `bad key ${req.headers.authorization} ${'x'.repeat(1_000_000)}` }));
    await against(echo, key, async (fx, env) => {
      const run = await runCli(['generate', '--satellite', 's1', '--per-user', '2', '--campaign', 'adv', '--json'], env);
      expect(run.code).toBe(1);
      const report = JSON.parse(run.stdout).satellites[0];
      expect(report.error).toMatch(/^GET \/referrals\/v1\/users-without-tokens: HTTP 401 unauthorized: bad key Bearer <outbound key> x+\.\.\.$/);
      expect(run.stdout + run.stderr).not.toContain(key);
      expect(run.stderr.length).toBeLessThan(2000);
      const show = await runCli(['campaigns', 'show', 'adv', '--json'], env);
      const lastError = JSON.parse(show.stdout).progress.s1.lastError as string;
      expect(lastError).toBe(report.error);
      expect(lastError.length).toBeLessThan(400);
    });
  });

  // quoted raw (no error or message field), a PHP satellite's JSON writes a / of the key as \/; a redirect's
  // query carries it percent-encoded: neither matched the key, and both were printed and kept
  it('a refusal echoing the outbound key JSON-escaped, or a redirect carrying it encoded, leaves it out too', async () => {
    const key = 'outbound/s1+0123456789abcdef0123456789abcdef==';
    const escaped = key.replaceAll('/', '\\/');
    for (const [campaign, answer] of [
      ['php', (_req: IncomingMessage, res: ServerResponse) => res.writeHead(401, { 'content-type': 'application/json' }).end(`{"detail":"bad key ${escaped}"}`)],
      ['loc', (_req: IncomingMessage, res: ServerResponse) => res.writeHead(302, { location: `https://login.example.net/?k=${encodeURIComponent(key)}` }).end()],
    ] as const) {
      await against(answer, key, async (_fx, env) => {
        const run = await runCli(['generate', '--satellite', 's1', '--per-user', '2', '--campaign', campaign, '--json'], env);
        expect(run.code).toBe(1);
        expect(JSON.parse(run.stdout).satellites[0].error).toContain('<outbound key>');
        for (const form of [key, escaped, encodeURIComponent(key)]) expect(run.stdout + run.stderr).not.toContain(form);
      });
    }
  });

  it('a redirect (http to https) fails the satellite naming where it leads', async () => {
    const moved = (req: IncomingMessage, res: ServerResponse) => res.writeHead(301, { location: `https://sat.example.net${req.url}` }).end();
    await against(moved, 'outbound-s1-0123456789abcdef0123456789abcdef', async (_fx, env) => {
      const run = await runCli(['generate', '--satellite', 's1', '--per-user', '2', '--campaign', 'moved'], env);
      expect(run.code).toBe(1);
      expect(run.stderr).toContain('satellite s1 failed: GET /referrals/v1/users-without-tokens: HTTP 301 redirects to https://sat.example.net/referrals/v1/users-without-tokens?cursor=&limit=1000 (redirects are not followed');
    });
  });

  it('a cursor repeated is quoted short in the error, however long it is', async () => {
    const long = 'c'.repeat(100_000);
    const loop = (_req: IncomingMessage, res: ServerResponse) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ userIds: [], nextCursor: long }));
    await against(loop, 'outbound-s1-0123456789abcdef0123456789abcdef', async (_fx, env) => {
      const run = await runCli(['generate', '--satellite', 's1', '--per-user', '2', '--campaign', 'loop', '--json'], env);
      expect(run.code).toBe(1);
      expect(JSON.parse(run.stdout).satellites[0].error).toBe(`satellite repeated cursor "${'c'.repeat(100)}..."`);
    });
  });

  // a page of 10 million ids (110 MB, under the reply limit) was gone through in one synchronous pass: the
  // event loop held for tens of seconds, Redis replies timed out, and the run failed blaming Redis
  it('a page far larger than the limit asked is served a limit\'s worth of users at a time, a user listed twice once', async () => {
    const ids = Array.from({ length: 3000 }, (_, i) => `u${i}`);
    ids[2500] = 'u5';
    const pushes: number[] = [];
    const all = (req: IncomingMessage & { body: Buffer }, res: ServerResponse) => {
      let reply: unknown = { userIds: ids, nextCursor: null };
      if (req.method === 'POST') {
        const { tokens } = unpack(req.body) as { tokens: unknown[] };
        pushes.push(tokens.length);
        reply = { accepted: tokens.length };
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(reply));
    };
    await against(all, 'outbound-s1-0123456789abcdef0123456789abcdef', async (_fx, env) => {
      const run = await runCli(['generate', '--satellite', 's1', '--per-user', '1', '--campaign', 'big', '--page-size', '1000', '--batch-size', '5000', '--json'], env);
      expect(run.code, run.stderr).toBe(0);
      expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ usersListed: 2999, usersServed: 2999, tokensDelivered: 2999, status: 'done' });
      expect(pushes).toEqual([1000, 1000, 999]);
    });
  });

  // RFC 9110: a request without Accept-Encoding takes any coding, and undici decodes none
  it('a gateway gzipping what the request does not refuse serves the run; one gzipping regardless is named', async () => {
    const gateway = (always: boolean) => (req: IncomingMessage & { body: Buffer }, res: ServerResponse) => {
      const reply = JSON.stringify(req.method === 'POST' ? { accepted: (unpack(req.body) as { tokens: unknown[] }).tokens.length } : { userIds: ['a', 'b'], nextCursor: null });
      if (!always && /identity/.test(String(req.headers['accept-encoding']))) return res.writeHead(200, { 'content-type': 'application/json' }).end(reply);
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' }).end(gzipSync(reply));
    };
    await against(gateway(false), 'outbound-s1-0123456789abcdef0123456789abcdef', async (_fx, env) => {
      const run = await runCli(['generate', '--satellite', 's1', '--per-user', '2', '--campaign', 'zip', '--json'], env);
      expect(run.code, run.stderr).toBe(0);
      expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ usersServed: 2, tokensDelivered: 4, status: 'done' });
    });
    await against(gateway(true), 'outbound-s1-0123456789abcdef0123456789abcdef', async (_fx, env) => {
      const run = await runCli(['generate', '--satellite', 's1', '--per-user', '2', '--campaign', 'zip'], env);
      expect(run.code).toBe(1);
      expect(run.stderr).toContain('HTTP 200 body not decodable as JSON (Content-Encoding "gzip" where identity was asked)');
    });
  });

  // a Go satellite sending its ids as numbers: each was counted in its own Redis call, 200,000 of them 13 s
  it('user ids that are not ids are counted once a page, not one Redis call each', async () => {
    const numbers = (_req: IncomingMessage, res: ServerResponse) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ userIds: Array.from({ length: 2000 }, (_, i) => i), nextCursor: null }));
    await against(numbers, 'outbound-s1-0123456789abcdef0123456789abcdef', async (_fx, env) => {
      const proxy = await countingProxy(SHARED_REDIS_URL, 'hincrby');
      try {
        const run = await runCli(['generate', '--satellite', 's1', '--per-user', '1', '--campaign', 'nums', '--json'], { ...env, REDIS_URL: proxy.url });
        expect(run.code, run.stderr).toBe(0);
        expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ usersListed: 2000, usersInvalid: 2000, failures: 2000, status: 'done' });
        expect(proxy.count()).toBeGreaterThan(0);
        expect(proxy.count()).toBeLessThan(20);
      } finally {
        await proxy.close();
      }
    });
  });

  it('a push answered accepted -1 (no count) fails the satellite, refusing nobody', async () => {
    const sentinel = (req: IncomingMessage, res: ServerResponse) =>
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(req.method === 'POST' ? { accepted: -1 } : { userIds: ['a', 'b'], nextCursor: null }));
    await against(sentinel, 'outbound-s1-0123456789abcdef0123456789abcdef', async (fx, env) => {
      const run = await runCli(['generate', '--satellite', 's1', '--per-user', '2', '--campaign', 'neg', '--json'], env);
      expect(run.code).toBe(1);
      expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ usersRefused: 0, tokensDelivered: 0, status: 'failed', error: expect.stringContaining('reply has no numeric accepted') });
      // made, waiting for a resume: not revoked
      expect(await fx.engine.listUnredeemed('s1', 'a')).toHaveLength(2);
    });
  });

  it('a retry held back by the satellite\'s Retry-After is said while the run waits', async () => {
    let busy = true;
    const throttled = (req: IncomingMessage & { body: Buffer }, res: ServerResponse) => {
      if (busy) {
        busy = false;
        return res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '5' }).end('{"error":"busy","message":"try later"}');
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(req.method === 'POST' ? { accepted: (unpack(req.body) as { tokens: unknown[] }).tokens.length } : { userIds: ['a'], nextCursor: null }));
    };
    await against(throttled, 'outbound-s1-0123456789abcdef0123456789abcdef', async (_fx, env) => {
      const run = await runCli(['generate', '--satellite', 's1', '--per-user', '1', '--campaign', 'wait'], { ...env, SATELLITE_ATTEMPTS: '2' });
      expect(run.code, run.stderr).toBe(0);
      expect(run.stderr).toContain('satellite s1: GET /referrals/v1/users-without-tokens: HTTP 503 busy: try later; retrying in 5 s (attempt 2 of 2)');
    });
  });
});
