import { readFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Below the kernel's ephemeral range, where outgoing connections take their local ports: a port let go of
 * in that range is often taken by one (a Redis or Postgres client) before it is listened on again.
 */
function belowEphemeral(): number {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    if (low > 11_000) return low;
  } catch {
    // not Linux: the IANA dynamic range starts at 49152
  }
  return 49_152;
}

/**
 * The port bound and let go, or undefined when another process holds it. Any other failure is thrown: a HOST
 * that is no address of this machine (EADDRNOTAVAIL) or does not resolve (ENOTFOUND) was reported as "port in use".
 */
function probe(host: string, port: number): Promise<number | undefined> {
  return new Promise((resolve, reject) => {
    const server = createServer().once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE') resolve(undefined);
      else reject(new Error(`cannot listen on ${host} port ${port}: ${err.message}`));
    });
    server.listen(port, host, () => {
      const { port: bound } = server.address() as AddressInfo;
      server.close(() => resolve(bound));
    });
  });
}

/**
 * A port free on `host` now, then let go (someone else may still take it before it is used): one picked at
 * random between 10000 and the ephemeral range, else one the kernel picks.
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const top = belowEphemeral();
  for (let i = 0; i < 20; i++) {
    const port = await probe(host, 10_000 + Math.floor(Math.random() * (top - 10_000)));
    if (port !== undefined) return port;
  }
  const port = await probe(host, 0);
  if (port === undefined) throw new Error(`no free port on ${host}`);
  return port;
}

/**
 * Waits up to `ms` for `port` on `host` to be free (a serve killed just before may leave workers that are
 * still exiting); false when it stays taken.
 */
export async function portFreeWithin(host: string, port: number, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; ; await sleep(100)) {
    if ((await probe(host, port)) !== undefined) return true;
    if (Date.now() >= end) return false;
  }
}

/**
 * Throws when another process holds `port` on `host` for 3 s (`remedy`: what the message offers besides
 * stopping it). uWS listens with SO_REUSEPORT, so a second process on a port in use joined it without a word
 * and answered a share of the first one's connections; a port just let go of (workers still exiting) gets
 * that moment.
 */
export async function refuseTakenPort(host: string, port: number, remedy: string): Promise<void> {
  if (!(await portFreeWithin(host, port, 3000))) throw new Error(`port ${port} on ${host} is in use by another process: stop it, or ${remedy}`);
}
