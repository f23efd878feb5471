import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { SatelliteApi, SatelliteCallError } from '../src/campaigns/satellite-api.js';

describe('calls to a satellite (generate)', () => {
  // undici said "The operation was aborted due to timeout": the marketer could not tell which setting to raise
  it('a satellite that does not answer in time fails naming the time and SATELLITE_TIMEOUT_MS', async () => {
    const silent = http.createServer(() => undefined);
    const port = await new Promise<number>((r) => silent.listen(0, '127.0.0.1', () => r((silent.address() as AddressInfo).port)));
    const api = new SatelliteApi({ url: `http://127.0.0.1:${port}`, timeoutMs: 200, attempts: 1 });
    try {
      await expect(api.usersWithoutTokens(null, 10)).rejects.toThrow('GET /referrals/v1/users-without-tokens: no answer within 200 ms (SATELLITE_TIMEOUT_MS)');
    } finally {
      await api.close();
      silent.closeAllConnections();
      silent.close();
    }
  });
  // the error's retryAfterMs is the least the next attempt waits (SatelliteApi.call): a satellite asking for an
  // hour (or a day, as a date) must not stall a generate run that long; a minute is the most it is granted
  it('a 503 with Retry-After of an hour, or a date a day ahead, holds the retry back a minute at most', async () => {
    const headers = ['3600', new Date(Date.now() + 86_400_000).toUTCString()];
    let i = 0;
    const busy = http.createServer((_req, res) => res.writeHead(503, { 'retry-after': headers[i++]!, 'content-type': 'application/json' }).end('{"error":"busy"}'));
    const port = await new Promise<number>((r) => busy.listen(0, '127.0.0.1', () => r((busy.address() as AddressInfo).port)));
    const api = new SatelliteApi({ url: `http://127.0.0.1:${port}`, timeoutMs: 2000, attempts: 1 });
    try {
      for (const header of headers) {
        const err = await api.usersWithoutTokens(null, 10).catch((e: unknown) => e);
        expect(err, header).toBeInstanceOf(SatelliteCallError);
        expect(err, header).toMatchObject({ status: 503, retryable: true, retryAfterMs: 60_000 });
      }
    } finally {
      await api.close();
      busy.closeAllConnections();
      busy.close();
    }
  });

  it('a 408 (a proxy timing the request out) is retried, as a 429 or a 5xx is', async () => {
    let calls = 0;
    const proxy = http.createServer((_req, res) => {
      if (++calls === 1) return res.writeHead(408, { connection: 'close' }).end();
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"userIds":["u1"],"nextCursor":null}');
    });
    const port = await new Promise<number>((r) => proxy.listen(0, '127.0.0.1', () => r((proxy.address() as AddressInfo).port)));
    const api = new SatelliteApi({ url: `http://127.0.0.1:${port}`, timeoutMs: 2000, attempts: 2, backoffMs: 10 });
    try {
      expect(await api.usersWithoutTokens(null, 10)).toMatchObject({ userIds: ['u1'] });
      expect(calls).toBe(2);
    } finally {
      await api.close();
      proxy.closeAllConnections();
      proxy.close();
    }
  });

  it('an error reply without a body is named by its reason phrase', async () => {
    const bare = http.createServer((_req, res) => res.writeHead(431).end());
    const port = await new Promise<number>((r) => bare.listen(0, '127.0.0.1', () => r((bare.address() as AddressInfo).port)));
    const api = new SatelliteApi({ url: `http://127.0.0.1:${port}`, timeoutMs: 2000, attempts: 1 });
    try {
      await expect(api.usersWithoutTokens('c'.repeat(100), 10)).rejects.toThrow(/^GET \/referrals\/v1\/users-without-tokens: HTTP 431 Request Header Fields Too Large$/);
    } finally {
      await api.close();
      bare.closeAllConnections();
      bare.close();
    }
  });

  it('a 200 carrying an error in place of the contract\'s fields is quoted in the failure', async () => {
    const sloppy = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"error":"internal","message":"database is down"}'));
    const port = await new Promise<number>((r) => sloppy.listen(0, '127.0.0.1', () => r((sloppy.address() as AddressInfo).port)));
    const api = new SatelliteApi({ url: `http://127.0.0.1:${port}`, timeoutMs: 2000, attempts: 1 });
    try {
      await expect(api.usersWithoutTokens(null, 10)).rejects.toThrow('users-without-tokens: reply has no userIds array; it said "internal: database is down"');
      await expect(api.pushTokens([{ userId: 'u', token: 't' }])).rejects.toThrow('tokens: reply has no numeric accepted (a whole number of tokens, 0 or more); it said "internal: database is down"');
    } finally {
      await api.close();
      sloppy.closeAllConnections();
      sloppy.close();
    }
  });
});
