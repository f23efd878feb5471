import client from 'prom-client';
import { onFirstUse } from './on-first-use.js';

/**
 * Metrics of the HTTP API, in prom-client's default global registry so other parts of the
 * process (the snapshot writer in the serve primary) add theirs to the same /metrics.
 * Default process metrics include nodejs_eventloop_lag_seconds (the event-loop lag).
 */
export const registry = client.register;

let defaultsOn = false;
/** Process metrics (CPU, memory, GC, event-loop lag); once per process. */
export function collectProcessMetrics(): void {
  if (defaultsOn) return;
  defaultsOn = true;
  client.collectDefaultMetrics({ eventLoopMonitoringPrecision: 10 });
}

const httpRequests = new client.Counter({
  name: 'rm_http_requests_total',
  help: 'HTTP requests answered, by route pattern, method and status',
  labelNames: ['route', 'method', 'status'] as const,
});

const httpDuration = new client.Histogram({
  name: 'rm_http_request_duration_seconds',
  help: 'Time from request to reply, by route pattern and status',
  labelNames: ['route', 'status'] as const,
  buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5],
});

export const httpInFlight = new client.Gauge({
  name: 'rm_http_requests_in_flight',
  help: 'HTTP requests read and not yet answered (they pile up when Redis hangs, until REQUEST_TIMEOUT_MS answers them 503)',
});

/** The satellite routes' metrics (src/http/routes.ts), made with those routes. */
export const apiMetrics = onFirstUse(() => {
  const tokenResults = new client.Counter({
    name: 'rm_token_results_total',
    help: 'Token operation results (redeem, reserve, complete, release) by engine result code',
    labelNames: ['op', 'code'] as const,
  });
  // born at 0: increase() over a series that appears at 1 reads 0, so the "referrals stopped" alert missed a first redemption
  for (const op of ['redeem', 'reserve', 'complete', 'release']) tokenResults.inc({ op, code: 'ok' }, 0);
  const rateLimited = new client.Counter({
    name: 'rm_rate_limited_total',
    help: 'Requests refused with 429: by="crossed" the failure that crossed the limit, by="check" a caller already blocked; limit="satellite" or "ip" (the address block, or X-End-User-IP) the caller is over',
    labelNames: ['by', 'limit'] as const,
  });
  for (const by of ['crossed', 'check']) for (const limit of ['satellite', 'ip']) rateLimited.inc({ by, limit }, 0);
  return { tokenResults, rateLimited };
});

/** Redis failures the HTTP layer answered, made with the API server (src/http/server.ts) */
export const redisErrors = onFirstUse(() => {
  const c = new client.Counter({
    name: 'rm_redis_errors_total',
    help: 'Redis failures seen by the HTTP layer: unavailable (answered 503), replicas (answered 503: a change no replica confirmed in time, or a master refusing writes for want of replicas) or error (answered 500)',
    labelNames: ['kind'] as const,
  });
  // born at 0 like the others alerts take rate() of: a series appearing at 1 hides its first count
  for (const kind of ['unavailable', 'replicas', 'error']) c.inc({ kind }, 0);
  return c;
});

const children = new Map<string, { count: { inc(): void }; time: { observe(v: number): void } }>();
const METHODS = new Set(['get', 'post', 'delete', 'put', 'patch', 'head', 'options']);

/** Counts one answered request; label children are cached because this runs on every request. */
export function observeRequest(route: string, rawMethod: string, status: number, seconds: number): void {
  // the method is client-chosen on unknown routes: bound the label set
  const method = METHODS.has(rawMethod) ? rawMethod : 'other';
  const key = `${route} ${method} ${status}`;
  let c = children.get(key);
  if (!c) {
    const s = String(status);
    // upper case as HTTP writes it (uWS gives lower case): a query for method="POST" matched nothing
    c = { count: httpRequests.labels(route, method === 'other' ? method : method.toUpperCase(), s), time: httpDuration.labels(route, s) };
    children.set(key, c);
  }
  c.count.inc();
  c.time.observe(seconds);
}
