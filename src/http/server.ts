import uws from 'uWebSockets.js';
import type { Config } from '../config.js';
import { logTo } from '../log.js';
import { collectProcessMetrics, redisErrors, registry as metricsRegistry } from '../metrics.js';
import { SatelliteRegistry } from '../satellites/registry.js';
import { answerWithin, createRedis, logOutages, REQUESTS_ANSWER_503, whenReady, type RedisClient } from '../store/redis.js';
import { MASTER_PROBE_MS } from '../store/cluster-probe.js';
import { readiness } from './readiness.js';
import { TokenStore } from '../store/token-store.js';
import { TokenEngine } from '../tokens/engine.js';
import { Authenticator } from './auth.js';
import { FailureLimiter } from './rate-limit.js';
import { listen, mount } from './router.js';
import { routes } from './routes.js';
import type { Traffic } from './wire.js';

export interface HttpServer {
  port: number;
  redis: RedisClient;
  /** stop accepting, wait for in-flight requests (up to `graceMs`), close Redis */
  close(graceMs?: number): Promise<void>;
  /** for `ms`, every reply says Connection: close: its clients connect again, and the shared port spreads them */
  rebalance(ms: number): void;
}

export interface ServerOptions {
  /** /metrics text; default: this process's registry (the serve workers ask the primary for the aggregate) */
  metrics?: () => Promise<string>;
}

/**
 * Null when uWebSockets.js runs its native binary; else why not. The package takes its JavaScript fallback
 * silently (with UWS_USE_FALLBACK, or on a Node it has no binary for: this build has them for Node 16, 18
 * and 20 only), which serves the same routes several times slower and lacks parts of the native API.
 */
export function uwsNotNative(): string | null {
  if (String(uws.App).includes('[native code]')) return null;
  return `uWebSockets.js runs its JavaScript fallback, not its native binary (Node ${process.version}, module ABI ${process.versions.modules}${process.env.UWS_USE_FALLBACK ? `, UWS_USE_FALLBACK=${process.env.UWS_USE_FALLBACK}` : ''}): run serve on Node 20, whose binary this build ships`;
}

/** how long a drain waits with no request before it closes the remaining (idle) connections */
const DRAIN_QUIET_MS = 250;

/**
 * True for failures that mean "Redis cannot take this right now" rather than a bug: unreachable, loading,
 * a failover under way (READONLY, MASTERDOWN, TRYAGAIN), full (OOM), busy with a script, or short of
 * replicas (NOREPLICAS: a master with `min-replicas-to-write` refusing writes, or a change REDIS_WAIT_REPLICAS
 * replicas did not confirm in time, src/store/replicas.ts). All are worth a retry, so they answer 503 with
 * Retry-After, not 500. A Cluster client retries MOVED, ASK, TRYAGAIN, CLUSTERDOWN and lost connections
 * itself and, once out of tries, fails with "Too many Cluster redirections. Last error: ...": a cluster
 * that is down or resharding, so 503 too.
 */
function storeDown(redis: RedisClient, err: unknown): boolean {
  if (redis.status !== 'ready') return true;
  const e = err as { name?: string; message?: string; code?: string };
  return e?.name === 'MaxRetriesPerRequestError' || /Connection is closed|Stream isn't writeable|ECONNREFUSED|ECONNRESET|EPIPE|ETIMEDOUT|^Too many Cluster redirections|^(LOADING|CLUSTERDOWN|READONLY|MASTERDOWN|TRYAGAIN|OOM|BUSY|NOREPLICAS) /.test(e?.message ?? '');
}

/** Starts one HTTP worker on config.host:config.port (SO_REUSEPORT, so several processes can share it). */
export async function startServer(config: Config, opts: ServerOptions = {}): Promise<HttpServer> {
  collectProcessMetrics();
  redisErrors();
  const log = logTo({ component: 'http' });
  const redis = createRedis(config, { failFast: true, connectionName: 'referral-manager-http' });
  logOutages(redis, logTo({ component: 'redis', text: (_, msg) => `[http ${process.pid}]: ${msg}`, fields: { client: 'http' } }), REQUESTS_ANSWER_503);
  const store = new TokenStore(redis, config.keyPrefix, config);
  const satellites = new SatelliteRegistry(redis, config.keyPrefix, config.outboundKeySecrets);
  const auth = new Authenticator(satellites, config.adminKey, config.authCacheMs);
  // a remove or rotation by another worker, host or the CLI ends the keys this worker cached at once
  const retired = satellites.onRetired((id) => auth.forget(id));
  try {
    // fail-fast commands are refused until the first connect: wait for it, a little
    await whenReady(redis, 5000);
    await store.preload();
    // before the first key is cached: a remove in the moment between would reach this worker only by the TTL
    await answerWithin(retired.subscribed, 5000).catch((err: Error) => log('warn', `not yet subscribed to satellite removals (${err.message}): a key removed meanwhile works here for up to AUTH_CACHE_MS`));
  } catch (err) {
    log('warn', `redis not ready at start (${(err as Error).message}); serving 503 until it is`);
  }
  const engine = new TokenEngine(store);
  const limiter = new FailureLimiter(redis, config.keyPrefix, { ip: config.rateLimitFailures, satellite: config.rateLimitSatelliteFailures }, config.rateLimitWindowMs);
  const traffic: Traffic = { n: 0, draining: false };
  // a worker of serve, whose primary starts the writer once the workers listen (SNAPSHOT on)
  const ownWriterSince = config.snapshot ? Date.now() : undefined;
  const app = uws.App();
  mount(
    app,
    routes({
      config, engine, registry: satellites, auth, limiter,
      // a hung master is named only if its probe gives up before the request deadline answers a bare 503
      ready: () => readiness(redis, config.keyPrefix, Math.min(MASTER_PROBE_MS, Math.floor(config.requestTimeoutMs / 2)), config.redisWaitReplicas, ownWriterSince),
      metrics: opts.metrics ?? (() => metricsRegistry.metrics()),
    }),
    { auth, traffic, timeoutMs: config.requestTimeoutMs, storeDown: (err) => storeDown(redis, err), metricsKey: config.metricsKey },
  );
  const { socket, port } = await listen(app, config.host, config.port);
  let closed: Promise<void> | undefined;
  return {
    port,
    redis,
    rebalance(ms) {
      traffic.closeUntil = Date.now() + ms;
    },
    close(graceMs = 10_000) {
      closed ??= (async () => {
        traffic.draining = true;
        traffic.lastAt = Date.now();
        uws.us_listen_socket_close(socket);
        const deadline = Date.now() + graceMs;
        // in flight, or a request within DRAIN_QUIET_MS: a keep-alive connection whose last reply went out before
        // the drain (no Connection: close) may have its next request on the way; closing as soon as nothing was
        // in flight cut such requests off unanswered. Each is answered with Connection: close instead, and its
        // client moves on, so under load the connections leave one by one and the drain ends once they have
        while ((traffic.n > 0 || Date.now() - traffic.lastAt < DRAIN_QUIET_MS) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
        // idle keep-alive connections: a client would otherwise send its next request into a closing process
        (app as uws.TemplatedApp & { close(): void }).close(); // the native App has it (closes every socket); the typings of this build lack it
        retired.close();
        redis.disconnect();
      })();
      return closed;
    },
  };
}
