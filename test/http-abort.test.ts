import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { startServer } from '../src/http/server.js';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { TokenStore } from '../src/store/token-store.js';
import { TokenEngine } from '../src/tokens/engine.js';
import { ADMIN_KEY, privateRedis } from './helpers/http.js';

describe('a caller that hangs up mid-request (in process, private redis-server)', () => {
  // the typed client's deadline is the server's and starts first: before, a generate it gave up on left
  // every token it made usable, and the documented retry made a second set
  it('a generate whose caller went away leaves no usable token: what it made is revoked', async () => {
    const redis = await privateRedis();
    await redis.start();
    const server = await startServer(loadConfig({ host: '127.0.0.1', port: 0, keyPrefix: 'rm-abort', adminKey: ADMIN_KEY }, { REDIS_URL: redis.url }));
    try {
      await new SatelliteRegistry(server.redis, 'rm-abort').add({ id: 'sat-h' });
      const body = JSON.stringify({ satelliteId: 'sat-h', userIds: Array.from({ length: 5000 }, (_, i) => `u${i}`), perUser: 2 });
      const socket = net.connect(server.port, '127.0.0.1');
      await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
      socket.on('error', () => undefined);
      // Redis paused: the request is read and waits on its scripts when the caller hangs up
      redis.signal('SIGSTOP');
      socket.write(`POST /v1/admin/tokens/generate HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer ${ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      await new Promise((r) => setTimeout(r, 500));
      socket.destroy();
      await new Promise((r) => setTimeout(r, 200));
      redis.signal('SIGCONT');
      const engine = new TokenEngine(new TokenStore(server.redis, 'rm-abort'));
      let sat = (await engine.stats()).satellites['sat-h'];
      for (const end = Date.now() + 30_000; !(sat?.generated === 10_000 && sat.revoked === 10_000) && Date.now() < end; sat = (await engine.stats()).satellites['sat-h']) {
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(sat).toMatchObject({ generated: 10_000, unredeemed: 0, revoked: 10_000 });
    } finally {
      redis.signal('SIGCONT');
      await server.close();
      await redis.dispose();
    }
  });
});
