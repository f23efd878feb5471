import uws from 'uWebSockets.js';
import { refuseTakenPort } from '../free-port.js';
import { collectProcessMetrics, registry } from '../metrics.js';
import { listen, mount, ok, type Route } from './router.js';

/**
 * How long a serve worker waits for its primary's sum of every process's metrics (twice the primary's own
 * wait for the workers, cluster.ts). The route's deadline is above it whatever REQUEST_TIMEOUT_MS, so a
 * silent primary is answered metrics_unavailable, not store_unavailable, which sent on-call to Redis.
 */
export const METRICS_WAIT_MS = 4000;

/**
 * What serve (primary and workers) and the standalone writer drain on, then exit 0: SIGTERM (a deploy),
 * SIGINT (Ctrl-C) and SIGHUP (the operator's terminal closed, its whole process group told).
 */
export const STOP_SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const;

export interface OpsDeps {
  ready(): Promise<{ ready: boolean; details: Record<string, unknown> }>;
  metrics(): Promise<string>;
}

/** `/healthz`, `/readyz`, `/metrics`: no key, the same on the API and on the standalone snapshot writer. */
export function opsRoutes(d: OpsDeps): Route[] {
  return [
    { method: 'get', pattern: '/healthz', auth: 'none', handler: async () => ok({ status: 'ok', pid: process.pid }) },
    {
      method: 'get', pattern: '/readyz', auth: 'none',
      async handler() {
        const r = await d.ready();
        // a 503 like every other: a load balancer or script polling it learns when to ask again
        return r.ready ? ok({ ready: true, ...r.details }) : { status: 503, value: { ready: false, ...r.details }, headers: [['Retry-After', '1']] };
      },
    },
    {
      method: 'get', pattern: '/metrics', auth: 'metrics', timeoutMs: METRICS_WAIT_MS + 1000,
      handler: async () => ({ raw: await d.metrics(), contentType: 'text/plain; version=0.0.4; charset=utf-8' }),
    },
  ];
}

export interface OpsServer {
  port: number;
  close(): void;
}

/** The ops routes alone on host:port (0: any free port), for processes that serve no API; `metricsKey`: METRICS_KEY. */
export async function startOpsServer(host: string, port: number, ready: OpsDeps['ready'], metricsKey = ''): Promise<OpsServer> {
  // on a port a serve (or another writer) holds, it answered a share of that process's calls
  if (port !== 0) await refuseTakenPort(host, port, 'give this one another port');
  collectProcessMetrics();
  const app = uws.App();
  mount(app, opsRoutes({ ready, metrics: () => registry.metrics() }), { traffic: { n: 0, draining: false }, timeoutMs: 5000, storeDown: () => false, metricsKey });
  const { socket, port: bound } = await listen(app, host, port);
  return { port: bound, close: () => uws.us_listen_socket_close(socket) };
}
