import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { createRedis } from '../src/store/redis.js';
import { runCli } from './helpers/cli.js';
import { privateRedis } from './helpers/http.js';

describe('a CLI command that loses Redis part-way (child process, private redis-server)', () => {
  // before, every command of a failed generate's clean-up retried for tens of seconds: about 3 minutes
  // to exit, ending on ioredis's "Reached the max retries per request limit"
  it('generate gives up 10 s after Redis went away, says so, and exits 1', async () => {
    const redis = await privateRedis();
    await redis.start();
    let listed!: () => void;
    const asked = new Promise<void>((resolve) => (listed = resolve));
    let answer!: () => void;
    const answered = new Promise<void>((resolve) => (answer = resolve));
    // a satellite whose listing is answered only once Redis is gone
    const satellite = createServer((req, res) => {
      listed();
      void answered.then(() => {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ userIds: ['u0', 'u1'], nextCursor: '' }));
      });
    });
    await new Promise<void>((resolve) => satellite.listen(0, '127.0.0.1', resolve));
    try {
      const client = createRedis({ redisUrl: redis.url, redisClusterNodes: [] });
      await new SatelliteRegistry(client, 'rm-lost').add({ id: 'sat-slow', url: `http://127.0.0.1:${(satellite.address() as AddressInfo).port}` });
      client.disconnect();
      const run = runCli(['generate', '--satellite', 'sat-slow', '--per-user', '1', '--campaign', 'lost'], { REDIS_URL: redis.url, KEY_PREFIX: 'rm-lost', SATELLITE_ATTEMPTS: '1' }, { timeoutMs: 60_000 });
      await asked;
      await redis.stop('SIGKILL');
      answer();
      const r = await run;
      expect(r.code, `${r.code} ${r.stdout} ${r.stderr}`).toBe(1);
      expect(r.stderr).toMatch(/error: lost Redis \(REDIS_URL\) for 10 s: .*giving up/);
    } finally {
      answer();
      satellite.closeAllConnections();
      await new Promise((resolve) => satellite.close(resolve));
      await redis.dispose();
    }
  }, 90_000);
});
