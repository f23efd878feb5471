import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { SatelliteApi } from '../src/campaigns/satellite-api.js';

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
});
