import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { startServer } from '../src/http/server.js';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { ADMIN_KEY, privateRedis } from './helpers/http.js';

/** One keep-alive HTTP/1.1 connection; `ask` sends a request and resolves with the raw reply head. */
async function connection(port: number) {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  socket.on('error', () => undefined);
  let buffered = '';
  socket.on('data', (d: Buffer) => (buffered += d.toString('latin1')));
  let isClosed = false;
  void closed.then(() => (isClosed = true));
  const ask = async (request: string): Promise<string> => {
    buffered = '';
    socket.write(request);
    for (;;) {
      const end = buffered.indexOf('\r\n\r\n');
      const length = /content-length: (\d+)/i.exec(buffered)?.[1];
      if (end >= 0 && length !== undefined && buffered.length >= end + 4 + Number(length)) return buffered.slice(0, end).toLowerCase();
      if (isClosed) throw new Error(`connection closed before a whole reply: ${JSON.stringify(buffered.slice(0, 200))}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  return { socket, closed, ask };
}

describe('close (SIGTERM drain), in process', () => {
  it('answers in-flight requests with Connection: close and then closes idle keep-alive connections', async () => {
    // a private Redis, paused (SIGSTOP) while the request is in flight: it cannot be answered before the
    // close, however slow the machine
    const redisServer = await privateRedis();
    await redisServer.start();
    const config = loadConfig({ host: '127.0.0.1', port: 0, keyPrefix: 'rm-drain', adminKey: ADMIN_KEY }, { REDIS_URL: redisServer.url });
    const server = await startServer(config);
    try {
      const idle = await connection(server.port);
      expect(await idle.ask('GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n')).toMatch(/^http\/1.1 200/);
      await new SatelliteRegistry(server.redis, 'rm-drain').add({ id: 'sat-d' });
      const busy = await connection(server.port);
      const body = JSON.stringify({ satelliteId: 'sat-d', userIds: Array.from({ length: 5000 }, (_, i) => `u${i}`), perUser: 2 });
      redisServer.signal('SIGSTOP');
      const slow = busy.ask(`POST /v1/admin/tokens/generate HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer ${ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      await new Promise((r) => setTimeout(r, 500)); // time for the server to read the request
      const closing = server.close();
      await new Promise((r) => setTimeout(r, 100)); // draining now
      redisServer.signal('SIGCONT');
      const head = await slow;
      expect(head).toMatch(/^http\/1.1 200/);
      expect(head).toContain('\r\nconnection: close');
      await closing;
      // both connections are closed by the server once it has drained, not left for the next request to hit
      await expect(Promise.race([Promise.all([idle.closed, busy.closed]).then(() => 'closed'), new Promise((r) => setTimeout(() => r('still open'), 5000))])).resolves.toBe('closed');
    } finally {
      redisServer.signal('SIGCONT');
      await server.close();
      await redisServer.dispose();
    }
  });
});
