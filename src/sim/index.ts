import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { SatelliteClient } from '../client/index.js';
import { SimSatellite } from './satellite.js';
import { createSimServer } from './server.js';
import { runSignups, type SignupSummary } from './signups.js';

export { SimSatellite, MAX_USERS } from './satellite.js';
export { createSimServer } from './server.js';
export type { SignupSummary } from './signups.js';

export interface SatelliteSimOptions {
  id: string;
  users: number;
  /** 0 (the default) picks a free port */
  port?: number;
  host?: string;
  /** the manager's base URL and this satellite's API key there, needed for sign-ups */
  manager?: string;
  key?: string;
  outboundKey?: string;
  failAfter?: number | null;
  peers?: string[];
  /** share of sign-ups using a peer's token, default 0.5 */
  crossShare?: number;
  /** sign-ups to run once this satellite's users hold tokens */
  signups?: number;
}

export interface SatelliteSim {
  url: string;
  port: number;
  satellite: SimSatellite;
  signups(count: number, crossShare?: number): Promise<SignupSummary>;
  /** the start-up sign-ups (opts.signups), undefined if closed before tokens arrived */
  startup?: Promise<SignupSummary | undefined>;
  close(): Promise<void>;
}

const POLL_MS = 500;

/** Starts a reference satellite in this process. */
export async function startSatelliteSim(opts: SatelliteSimOptions): Promise<SatelliteSim> {
  const satellite = new SimSatellite(opts.id, opts.users, opts.failAfter ?? null);
  const client = opts.manager !== undefined && opts.key !== undefined ? new SatelliteClient({ url: opts.manager, apiKey: opts.key }) : undefined;
  if (opts.signups !== undefined && !client) throw new Error('sign-ups need the manager URL and this satellite\'s API key');
  const peers = opts.peers ?? [];
  const signups = client
    ? (count: number, crossShare?: number) => runSignups(satellite, client, { count, crossShare: crossShare ?? opts.crossShare ?? 0.5, peers })
    : undefined;

  const server = createSimServer({ satellite, outboundKey: opts.outboundKey, signups });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const host = opts.host ?? '127.0.0.1';

  let closed = false;
  const startup =
    opts.signups !== undefined && signups
      ? (async () => {
          while (!satellite.hasTokensToGive()) {
            if (closed) return undefined;
            await sleep(POLL_MS);
          }
          return closed ? undefined : signups(opts.signups!);
        })()
      : undefined;

  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    port,
    satellite,
    startup,
    signups: signups ?? (() => Promise.reject(new Error('this sim was started without the manager URL and key'))),
    async close() {
      closed = true;
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await client?.close();
    },
  };
}
