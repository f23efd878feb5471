import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { SatelliteApi, SatelliteCallError, type SatelliteApiOptions } from '../src/campaigns/satellite-api.js';

/** `use` with a SatelliteApi on a satellite answering with `handler` (on a free port), both closed after. */
async function withSatellite(handler: http.RequestListener, opts: Omit<SatelliteApiOptions, 'url'>, use: (api: SatelliteApi) => Promise<void>): Promise<void> {
  const server = http.createServer(handler);
  const port = await new Promise<number>((r) => server.listen(0, '127.0.0.1', () => r((server.address() as AddressInfo).port)));
  const api = new SatelliteApi({ url: `http://127.0.0.1:${port}`, ...opts });
  try {
    await use(api);
  } finally {
    await api.close();
    server.closeAllConnections();
    server.close();
  }
}

describe('calls to a satellite (generate)', () => {
  // undici said "The operation was aborted due to timeout": the marketer could not tell which setting to raise
  it('a satellite that does not answer in time fails naming the time and SATELLITE_TIMEOUT_MS', async () => {
    await withSatellite(() => undefined, { timeoutMs: 200, attempts: 1 }, async (api) => {
      await expect(api.usersWithoutTokens(null, 10)).rejects.toThrow('GET /referrals/v1/users-without-tokens: no answer within 200 ms (SATELLITE_TIMEOUT_MS)');
    });
  });
  // the error's retryAfterMs is the least the next attempt waits (SatelliteApi.call): a satellite asking for an
  // hour (or a day, as a date) must not stall a generate run that long; a minute is the most it is granted
  it('a 503 with Retry-After of an hour, or a date a day ahead, holds the retry back a minute at most', async () => {
    const headers = ['3600', new Date(Date.now() + 86_400_000).toUTCString()];
    let i = 0;
    const busy: http.RequestListener = (_req, res) => res.writeHead(503, { 'retry-after': headers[i++]!, 'content-type': 'application/json' }).end('{"error":"busy"}');
    await withSatellite(busy, { timeoutMs: 2000, attempts: 1 }, async (api) => {
      for (const header of headers) {
        const err = await api.usersWithoutTokens(null, 10).catch((e: unknown) => e);
        expect(err, header).toBeInstanceOf(SatelliteCallError);
        expect(err, header).toMatchObject({ status: 503, retryable: true, retryAfterMs: 60_000 });
      }
    });
  });

  it('a 408 (a proxy timing the request out) is retried, as a 429 or a 5xx is', async () => {
    let calls = 0;
    const proxy: http.RequestListener = (_req, res) => {
      if (++calls === 1) return res.writeHead(408, { connection: 'close' }).end();
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"userIds":["u1"],"nextCursor":null}');
    };
    await withSatellite(proxy, { timeoutMs: 2000, attempts: 2, backoffMs: 10 }, async (api) => {
      expect(await api.usersWithoutTokens(null, 10)).toMatchObject({ userIds: ['u1'] });
      expect(calls).toBe(2);
    });
  });

  // which statuses a retry may help: a refusal answered again the same way only slows the run down
  it('retries 408, 429 and every 5xx; no other 4xx', async () => {
    for (const [status, retried] of [[408, true], [429, true], [500, true], [502, true], [503, true], [400, false], [401, false], [403, false], [404, false], [422, false], [499, false]] as const) {
      let calls = 0;
      const answer: http.RequestListener = (_req, res) => void (++calls === 1 ? res.writeHead(status).end() : res.writeHead(200, { 'content-type': 'application/json' }).end('{"userIds":[],"nextCursor":null}'));
      await withSatellite(answer, { timeoutMs: 2000, attempts: 2, backoffMs: 1 }, async (api) => {
        const err = await api.usersWithoutTokens(null, 10).then(() => undefined, (e: unknown) => e);
        expect([status, calls, err === undefined]).toEqual([status, retried ? 2 : 1, retried]);
      });
    }
  });

  it('an error reply without a body is named by its reason phrase', async () => {
    await withSatellite((_req, res) => res.writeHead(431).end(), { timeoutMs: 2000, attempts: 1 }, async (api) => {
      await expect(api.usersWithoutTokens('c'.repeat(100), 10)).rejects.toThrow(/^GET \/referrals\/v1\/users-without-tokens: HTTP 431 Request Header Fields Too Large$/);
    });
  });

  it('a 200 carrying an error in place of the contract\'s fields is quoted in the failure', async () => {
    const sloppy: http.RequestListener = (_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"error":"internal","message":"database is down"}');
    await withSatellite(sloppy, { timeoutMs: 2000, attempts: 1 }, async (api) => {
      await expect(api.usersWithoutTokens(null, 10)).rejects.toThrow('users-without-tokens: reply has no userIds array; it said "internal: database is down"');
      await expect(api.pushTokens([{ userId: 'u', token: 't' }])).rejects.toThrow('tokens: reply has no numeric accepted (a whole number of tokens, 0 or more); it said "internal: database is down"');
    });
  });
});
