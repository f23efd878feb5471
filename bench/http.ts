import type { ChildProcess } from 'node:child_process';
import os from 'node:os';
import { randomBytes, randomUUID } from 'node:crypto';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import autocannon from 'autocannon';
import { loadConfig } from '../src/config.js';
import { packr } from '../src/msgpack.js';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { createRedis, type RedisClient } from '../src/store/redis.js';
import { dropPrefix } from '../src/store/key-walk.js';
import { TokenStore } from '../src/store/token-store.js';
import { TokenEngine } from '../src/tokens/engine.js';
import { sampleLag } from '../src/snapshot/index.js';
import { treeCpuSeconds } from './proc.js';
import { numberFlag } from './flags.js';
import { freePort, redisCpuSeconds } from './redis-server.js';
import { benchDir, serveArgs, startServer, stopServer } from './servers.js';
import { watchLag } from './snapshot.js';
import { NO_REPLICA_WAIT } from '../src/store/replicas.js';

/**
 * Redeem throughput: our API (uWS + MessagePack + Lua) vs (a) a uWS ceiling that only reads the body and
 * answers a constant, and (b) the same redeem written plainly with Fastify + JSON + ioredis.
 * Every request is a first-time redeem of a distinct pre-generated token (autocannon's
 * setupRequest walks the token list and `amount` stops at its end), so all answers should be 200; the
 * first tenth (at most 20,000) warms up and is not measured.
 * Each server runs in its own process; autocannon runs here, 100 connections, Buffer bodies.
 *   node dist/bench/http.js [--tokens N] [--workers W] [--connections C] [--only ceiling,ours,fastify,ours-cores]
 */

export interface BenchOptions {
  /** redeems measured per target (and tokens generated for each of ours and Fastify) */
  tokens?: number;
  /** worker processes of our server (the baselines are one process each) */
  workers?: number;
  connections?: number;
  /** measure only these targets (ratios need the first three) */
  only?: Target[];
  /** for 'snapshot': a database the serve primary's snapshot writer fills while ours runs again */
  snapshotDatabaseUrl?: string;
}

export type Target = 'ceiling' | 'ours' | 'fastify' | 'snapshot' | 'ours-cores';

export interface Measured {
  reqPerSec: number;
  p50: number;
  p99: number;
  non2xx: number;
  errors: number;
  /** CPU per answered request during the measured run: the server's processes (all workers), and Redis */
  serverCpuUs?: number;
  redisCpuUs?: number;
}

export interface BenchResult {
  ours?: Measured;
  ceiling?: Measured;
  fastify?: Measured;
  /** ours as `npm start` runs it, one worker per core (measured when that differs from `workers`) */
  oursAllCores?: Measured & { workers: number };
  /** ours again with the Postgres snapshot writer running in serve, and the worst writer lag sampled meanwhile */
  snapshot?: Measured & { maxLagSeconds: number; maxLagEvents: number };
  oursOverCeiling?: number;
  oursOverFastify?: number;
}

/**
 * A warm-up on the first tenth of the bodies (JIT, connections, Redis), then the measured run on the rest,
 * with the CPU the server and Redis spent on it: steadier than req/s on a shared machine.
 */
async function load(url: string, key: string, bodies: Buffer[], contentType: string, connections: number, pid: number, redis: RedisClient): Promise<Measured> {
  const warm = Math.min(20_000, Math.floor(bodies.length / 10));
  await once(url, key, bodies.slice(0, warm), contentType, connections);
  const [server0, redis0] = [treeCpuSeconds(pid), await redisCpuSeconds(redis)];
  const m = await once(url, key, bodies.slice(warm), contentType, connections);
  const [server1, redis1] = [treeCpuSeconds(pid), await redisCpuSeconds(redis)];
  const answered = bodies.length - warm;
  return { ...m, serverCpuUs: Math.round(((server1 - server0) / answered) * 1e6), redisCpuUs: Math.round(((redis1 - redis0) / answered) * 1e6) };
}

async function once(url: string, key: string, bodies: Buffer[], contentType: string, connections: number): Promise<Measured> {
  let i = 0;
  let answered = 0;
  let last = 0;
  const t0 = performance.now();
  const r = await autocannon({
    url,
    connections,
    amount: bodies.length,
    requests: [{
      method: 'POST',
      path: '/v1/tokens/redeem',
      headers: { 'content-type': contentType, accept: contentType, authorization: `Bearer ${key}` },
      setupRequest: (req) => ({ ...req, body: bodies[i++ % bodies.length] }),
      onResponse: () => {
        answered++;
        last = performance.now();
      },
    }],
  });
  // autocannon ends `amount` runs on its 1 s tick, so its own duration is rounded up: time the answers instead
  return { reqPerSec: Math.round(answered / ((last - t0) / 1000)), p50: r.latency.p50, p99: r.latency.p99, non2xx: r.non2xx, errors: r.errors };
}

/** Runs one write of token generation; `step` refuses to start one once the run is interrupted. */
type Step = <T>(write: () => Promise<T>) => Promise<T>;

/** N tokens of our engine (owner satellite bench-owner), 10,000 per generate call. */
async function ourTokens(engine: TokenEngine, n: number, step: Step): Promise<string[]> {
  const out: string[] = [];
  for (let done = 0; done < n; done += 10_000) {
    const users = Math.min(10_000, n - done) / 10;
    const owners = Array.from({ length: Math.ceil(users) }, (_, u) => ({ ownerSatelliteId: 'bench-owner', ownerUserId: `u${done + u}` }));
    const r = await step(() => engine.generate({ owners, perUser: 10 }));
    for (const t of r.tokens) out.push(t.token);
  }
  return out.slice(0, n);
}

async function plainTokens(redis: RedisClient, prefix: string, n: number, step: Step): Promise<string[]> {
  const out: string[] = [];
  for (let done = 0; done < n; done += 10_000) {
    const p = redis.pipeline();
    for (let j = 0; j < Math.min(10_000, n - done); j++) {
      const t = randomUUID();
      out.push(t);
      p.hset(`${prefix}:t:${t}`, { state: 'unredeemed', owner: 'bench-owner', ownerUser: `u${done + j}` });
    }
    await step(() => p.exec());
  }
  return out;
}

export async function run(opts: BenchOptions = {}): Promise<BenchResult> {
  const n = opts.tokens ?? 500_000;
  const workers = opts.workers ?? 1;
  const connections = opts.connections ?? 100;
  const log = console.log;
  const config = loadConfig();
  const prefix = `bench-http-${randomBytes(3).toString('hex')}`;
  const redis = createRedis(config);
  const procs: ChildProcess[] = [];
  // Ctrl-C or SIGTERM mid-run: the keys this run put on that Redis (two sets of tokens) go with it. A
  // listener, not once(): reaped() raises the signal again only when no other listener has it. A second
  // signal stops at once.
  let interrupted = false;
  // the write in flight: the keys are dropped after it, or it would add some behind the drop's SCAN
  let writing: Promise<unknown> = Promise.resolve();
  const step: Step = (write) => {
    if (interrupted) return Promise.reject(new Error('interrupted'));
    const w = write();
    writing = w.catch(() => {});
    return w;
  };
  const onSignal = (sig: NodeJS.Signals) => {
    if (interrupted) process.exit(128 + os.constants.signals[sig]);
    interrupted = true;
    log(`${sig}: removing the keys under ${prefix} (${sig} again stops at once)`);
    void Promise.all([...procs.map(stopServer), writing])
      .then(() => dropPrefix(redis, prefix))
      .finally(() => process.exit(128 + os.constants.signals[sig]));
  };
  process.on('SIGINT', onSignal).on('SIGTERM', onSignal);
  log(`keys under ${prefix} on ${config.redisUrl}`);
  try {
    const store = new TokenStore(redis, prefix, NO_REPLICA_WAIT);
    await store.preload();
    const registry = new SatelliteRegistry(redis, prefix);
    await step(() => registry.add({ id: 'bench-owner' }));
    const { apiKey } = await step(() => registry.add({ id: 'bench-redeemer' }));
    log(`generating ${n} tokens for ours and ${n} for Fastify ...`);
    const ours = (await ourTokens(new TokenEngine(store), n, step)).map((token, i) => packr.pack({ token, userId: `r${i}` }));
    const plain = (await plainTokens(redis, prefix, n, step)).map((token, i) => Buffer.from(JSON.stringify({ token, userId: `r${i}` })));

    const cores = os.cpus().length;
    const want = (t: Target) =>
      opts.only ? opts.only.includes(t) : t === 'snapshot' ? opts.snapshotDatabaseUrl !== undefined : t !== 'ours-cores' || cores !== workers;
    const withWriter = want('snapshot') ? (await ourTokens(new TokenEngine(store), n, step)).map((token, i) => packr.pack({ token, userId: `s${i}` })) : [];

    const measure = async (args: string[], env: Record<string, string>, bodies: Buffer[], type: string, ready?: () => Promise<void>) => {
      const port = await freePort();
      const proc = await startServer([...args.map((a) => (a === 'PORT' ? String(port) : a))], env);
      procs.push(proc);
      await ready?.();
      const m = await load(`http://127.0.0.1:${port}`, apiKey, bodies, type, connections, proc.pid!, redis);
      await stopServer(procs.pop()!);
      return m;
    };
    const serveEnv = { KEY_PREFIX: prefix, REDIS_URL: config.redisUrl, SNAPSHOT: 'false', RATE_LIMIT_FAILURES: String(1e9) };
    const result: BenchResult = {};
    if (want('ceiling')) {
      log('ceiling (uWS, read body, constant reply) ...');
      result.ceiling = await measure([path.join(benchDir, 'baseline-uws.js'), 'PORT'], {}, ours, 'application/msgpack');
    }
    if (want('ours')) {
      log(`ours (${workers} worker${workers > 1 ? 's' : ''}) ...`);
      result.ours = await measure(serveArgs(workers), serveEnv, ours, 'application/msgpack');
    }
    if (want('ours-cores')) {
      log(`ours (${cores} workers, one per core: npm start's default) ...`);
      const bodies = (await ourTokens(new TokenEngine(store), n, step)).map((token, i) => packr.pack({ token, userId: `c${i}` }));
      result.oursAllCores = { ...(await measure(serveArgs(cores), serveEnv, bodies, 'application/msgpack')), workers: cores };
    }
    if (want('snapshot')) {
      if (!opts.snapshotDatabaseUrl) throw new Error('the snapshot target needs snapshotDatabaseUrl');
      log(`ours (${workers}w) with the snapshot writer filling Postgres ...`);
      let lag: ReturnType<typeof watchLag> | undefined;
      // the writer first drains what generation and the runs before queued; lag is measured from then on
      const caughtUp = async () => {
        while ((await sampleLag(redis, prefix)).events > 0) await new Promise((r) => setTimeout(r, 100));
        lag = watchLag(redis, prefix);
      };
      const m = await measure(serveArgs(workers), { ...serveEnv, SNAPSHOT: 'true', DATABASE_URL: opts.snapshotDatabaseUrl }, withWriter, 'application/msgpack', caughtUp);
      const worst = await lag!.stop();
      result.snapshot = { ...m, maxLagSeconds: worst.seconds, maxLagEvents: worst.events };
    }
    if (want('fastify')) {
      log('Fastify + JSON + ioredis ...');
      result.fastify = await measure([path.join(benchDir, 'baseline-fastify.js'), 'PORT', config.redisUrl, prefix, apiKey], {}, plain, 'application/json');
    }
    if (result.ours && result.ceiling) result.oursOverCeiling = +(result.ours.reqPerSec / result.ceiling.reqPerSec).toFixed(2);
    if (result.ours && result.fastify) result.oursOverFastify = +(result.ours.reqPerSec / result.fastify.reqPerSec).toFixed(2);

    log(`\nredeem, ${n} distinct first-time redeems per target (first tenth, at most 20,000, warm-up), ${connections} connections`);
    log('target                       req/s     p50 ms   p99 ms   non-2xx  errors   server µs/req  redis µs/req');
    const rows = [
      ['uWS ceiling', result.ceiling], [`ours (${workers}w)`, result.ours], ['Fastify+JSON+ioredis', result.fastify],
      [`ours (${result.oursAllCores?.workers}w, one per core)`, result.oursAllCores], [`ours (${workers}w) + snapshot`, result.snapshot],
    ] as const;
    for (const [name, m] of rows) {
      if (m) log(`${name.padEnd(26)} ${String(m.reqPerSec).padStart(8)} ${String(m.p50).padStart(9)} ${String(m.p99).padStart(8)} ${String(m.non2xx).padStart(9)} ${String(m.errors).padStart(7)} ${String(m.serverCpuUs ?? '-').padStart(15)} ${String(m.redisCpuUs ?? '-').padStart(13)}`);
    }
    if (result.snapshot) log(`snapshot writer lag during that run: worst ${result.snapshot.maxLagSeconds.toFixed(3)} s, ${result.snapshot.maxLagEvents} events (target < 1 s)`);
    log(`ours / ceiling = ${result.oursOverCeiling ?? '-'} (target >= 0.7)   ours / Fastify = ${result.oursOverFastify ?? '-'} (target >= 2.0)   ours p99 = ${result.ours?.p99 ?? '-'} ms (target <= 10)`);
    return result;
  } catch (err) {
    // a run the signal cut short (its server killed mid-start): the handler removes the keys and exits
    if (interrupted) await new Promise(() => {});
    throw err;
  } finally {
    process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
    await Promise.all(procs.map(stopServer));
    await dropPrefix(redis, prefix);
    redis.disconnect();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const i = process.argv.indexOf('--only');
  const only = i > 0 ? (process.argv[i + 1]!.split(',') as Target[]) : undefined;
  await run({ tokens: numberFlag('tokens'), workers: numberFlag('workers'), connections: numberFlag('connections'), only });
}
