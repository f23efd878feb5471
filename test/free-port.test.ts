import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { freePort, portFreeWithin } from '../src/free-port.js';
import { runCli } from './helpers/cli.js';
import { dropSharedPrefixes, testPrefix } from './helpers/redis.js';

/** TEST-NET-1 (RFC 5737): never an address of this machine */
const NOT_OURS = '192.0.2.1';

// a port let go of inside the ephemeral range was taken by an outgoing connection before serve bound it
describe('freePort', () => {
  it('gives ports below the ephemeral range that can be listened on', async () => {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    for (let i = 0; i < 20; i++) {
      const port = await freePort();
      expect(port).toBeGreaterThanOrEqual(10_000);
      expect(port).toBeLessThan(low);
      const server = createServer();
      await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, '127.0.0.1', resolve));
      await new Promise((r) => server.close(r));
    }
  });

  // every listen failure read as "taken": HOST set to an address of another machine made serve say its port
  // was "in use by another process" (after 3 s of retries), and port 0 with workers "no free port"
  it('tells a host it cannot listen on from a port in use', async () => {
    await expect(portFreeWithin(NOT_OURS, 7480, 1000)).rejects.toThrow(`cannot listen on ${NOT_OURS} port 7480: listen EADDRNOTAVAIL`);
    await expect(freePort(NOT_OURS)).rejects.toThrow('EADDRNOTAVAIL');
    const prefix = testPrefix('badhost');
    try {
      const run = await runCli(['serve', '--host', NOT_OURS, '--port', '7480', '--workers', '1'], { KEY_PREFIX: prefix, SNAPSHOT: 'false' });
      expect(run.code).toBe(1);
      expect(run.stderr).toContain(`error: cannot listen on ${NOT_OURS} port 7480: listen EADDRNOTAVAIL`);
      expect(run.stderr).not.toContain('in use by another process');
    } finally {
      await dropSharedPrefixes(prefix);
    }
  });
});
