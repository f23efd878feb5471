import cluster, { type Worker } from 'node:cluster';
import { AggregatorRegistry } from 'prom-client';
import type { Config } from '../config.js';
import { freePort, refuseTakenPort } from '../free-port.js';
import { logTo } from '../log.js';
import { collectProcessMetrics, registry } from '../metrics.js';
import { METRICS_WAIT_MS, STOP_SIGNALS } from './ops.js';
import { HttpError } from './router.js';
import { startServer } from './server.js';

/**
 * `serve` as processes: a primary that forks N uWS workers sharing one port (SO_REUSEPORT) and
 * answers their /metrics with the sum over every process (workers and primary), gathered over
 * node:cluster IPC. Port 0: a free port is chosen here (or by the one worker), and every worker listens on it.
 */

type Msg =
  | { rm: 'hello' }
  | { rm: 'start'; port: number }
  | { rm: 'listening'; port: number }
  | { rm: 'metrics?'; id: number }
  | { rm: 'metrics'; id: number; text: string }
  | { rm: 'collect'; id: number }
  | { rm: 'rebalance' }
  /** the answer to a `collect`, or (id 0) a worker's own report: every PUSH_MS, and its last as it exits */
  | { rm: 'collected'; id: number; json: metric[] };

// the primary's wait for the workers: half a worker's wait for it, so the sum of those that did answer arrives first
const COLLECT_TIMEOUT_MS = METRICS_WAIT_MS / 2;
/**
 * How often a worker sends its counters unasked: a worker that dies takes with it what it counted since
 * the primary last heard from it. Heard only at scrapes, a kill -9 lost up to a scrape interval of
 * requests (98 of 200 in a review helper's run), and a worker that died before its first scrape all of them.
 */
const PUSH_MS = 1000;
/**
 * After a replacement listens, how long the other workers close every keep-alive connection they answer. Its
 * clients had reconnected while it started, all to the others (the shared port had no other listener), and
 * nothing moved them back: the replacement sat idle while one worker carried the load (a review helper's soak).
 * Connecting anew, they are spread over every worker again.
 */
const REBALANCE_MS = 1000;
type metric = Awaited<ReturnType<typeof registry.getMetricsAsJSON>>[number];

/** process gauges that are each process's limit: the server's is the largest, not their sum */
const LIMITS = new Set(['process_max_fds']);

export interface Primary {
  port: number;
  /** SIGTERM every worker, wait for them to drain and exit */
  stop(): Promise<void>;
}

export async function runPrimary(config: Config): Promise<Primary> {
  // on stdout, as it always was
  const log = logTo({ component: 'serve', stdout: true });
  collectProcessMetrics();
  // uSockets sets SO_REUSEPORT only on a given port: a worker listening on 0 could not be joined
  let port = config.port === 0 && config.workers > 1 ? await freePort(config.host) : config.port;
  // a second serve on a port in use took a share of the first one's connections (another deployment's keys and tokens)
  if (config.port !== 0) await refuseTakenPort(config.host, port, 'give serve another --port');
  let stopping = false;
  let seq = 0;
  const pending = new Map<number, { replies: Map<number, metric[]>; asked: Set<number>; left: number; done: () => void }>();
  /** each live worker's counters and histograms as last collected */
  const lastSeen = new Map<number, metric[]>();
  /**
   * Those of the workers that died, summed: kept in every later /metrics, so a replaced worker does not
   * take its share of a counter with it (Prometheus would read the drop as a reset: rate() jumps, and an
   * alert on 5xx or 503 rates could fire). What it counted after its last report (PUSH_MS) is lost.
   */
  let retired: metric[] = [];
  let retiring = Promise.resolve();

  // A worker that dies after it listened is replaced; one that dies before (port taken, bad config) fails the start.
  // Replacements wait a pause that doubles (100 ms .. 10 s) while workers keep dying within a minute of the
  // last death, so a crash loop does not fork as fast as it can; a replacement that dies before it listens
  // is retried the same way rather than leaving the pool one short.
  let pause = 0;
  let lastDeath = 0;
  let restart: NodeJS.Timeout | undefined;
  const replace = (why: string) => {
    if (stopping) return;
    const now = Date.now();
    pause = now - lastDeath > 60_000 ? 100 : Math.min(pause * 2, 10_000);
    lastDeath = now;
    log('warn', `${why}; starting another in ${pause} ms`, { pauseMs: pause });
    restart = setTimeout(() => {
      if (stopping) return;
      fork().then(
        (w) => {
          for (const o of Object.values(cluster.workers ?? {})) if (o && o !== w && o.isConnected()) o.send({ rm: 'rebalance' } satisfies Msg);
        },
        (err: Error) => replace(err.message),
      );
    }, pause);
  };
  const fork = (): Promise<Worker> =>
    new Promise((resolve, reject) => {
      const w = cluster.fork();
      // a send to a worker that died between the isConnected() check and the write emits EPIPE here:
      // unheard, it ended the primary, and every worker with it (a review helper saw it under scrapes and kills)
      w.on('error', () => undefined);
      let listening = false;
      w.on('message', (m: Msg) => {
        onMessage(w, m);
        if (m.rm === 'listening' && !listening) {
          listening = true;
          port = m.port;
          resolve(w);
        }
      });
      w.once('exit', (code, signal) => {
        const seen = lastSeen.get(w.id);
        lastSeen.delete(w.id);
        // a scrape waiting for its answer need not wait out the 2 s
        for (const p of pending.values()) if (p.asked.has(w.id) && !p.replies.has(w.id) && --p.left === 0) p.done();
        // in turn: two deaths at once must not each add to the sum the other has not yet written
        if (seen) retiring = retiring.then(async () => void (retired = await AggregatorRegistry.aggregate([retired, seen]).getMetricsAsJSON()));
        if (!listening) return reject(new Error(`worker ${w.id} exited (${code ?? signal}) before listening`));
        replace(`worker ${w.id} exited (${code ?? signal})`);
      });
    });

  const onMessage = (w: Worker, m: Msg) => {
    // the worker asks once its listener is attached (a message sent earlier would be lost)
    if (m.rm === 'hello') w.send({ rm: 'start', port } satisfies Msg);
    if (m.rm === 'metrics?') void aggregate().then((text) => w.isConnected() && w.send({ rm: 'metrics', id: m.id, text } satisfies Msg));
    // a worker that died is in the retired sum already
    if (m.rm === 'collected' && !w.isDead()) {
      // (the typings give the type as an enum; prom-client sets the name)
      lastSeen.set(w.id, m.json.filter((x) => ['counter', 'histogram'].includes(String(x.type))));
      const p = pending.get(m.id);
      if (!p) return;
      p.replies.set(w.id, m.json);
      if (--p.left === 0) p.done();
    }
  };

  const aggregate = async (): Promise<string> => {
    const id = ++seq;
    const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => !!w && w.isConnected());
    const own = await registry.getMetricsAsJSON();
    const replies = new Map<number, metric[]>();
    await new Promise<void>((done) => {
      const timer = setTimeout(done, COLLECT_TIMEOUT_MS);
      pending.set(id, { replies, asked: new Set(workers.map((w) => w.id)), left: workers.length, done: () => (clearTimeout(timer), done()) });
      if (workers.length === 0) done();
      for (const w of workers) w.send({ rm: 'collect', id } satisfies Msg);
    });
    pending.delete(id);
    // until no death is still being added to the retired sum (one may come while waiting for another)
    for (let r = retiring; ; r = retiring) {
      await r;
      if (r === retiring) break;
    }
    // each worker once: one that answered and died since is in the retired sum (its reply would count it
    // twice); one too slow to answer, or whose channel closed before its exit was seen, counts its counters
    // as last collected (leaving it out lowers them)
    const parts = [own, retired];
    for (const [wid, seen] of lastSeen) parts.push(replies.get(wid) ?? seen);
    // a limit, not an amount: N processes' summed was no process's (process_max_fds read 3x the ulimit)
    for (const part of parts) for (const m of part) if (LIMITS.has(m.name)) m.aggregator = 'max';
    return AggregatorRegistry.aggregate(parts).metrics();
  };

  try {
    await fork();
    await Promise.all(Array.from({ length: config.workers - 1 }, fork));
  } catch (err) {
    stopping = true;
    for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGTERM');
    throw err;
  }
  log('info', `listening on ${config.host}:${port} (${config.workers} worker${config.workers > 1 ? 's' : ''})`, { host: config.host, port, workers: config.workers });

  return {
    port,
    async stop() {
      stopping = true;
      clearTimeout(restart);
      const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => !!w);
      await Promise.all(workers.map((w) => new Promise<void>((done) => {
        if (w.isDead()) return done();
        w.once('exit', () => done());
        w.process.kill('SIGTERM');
      })));
    },
  };
}

/** A worker: waits for its port from the primary, serves, drains on SIGTERM (or SIGINT, SIGHUP) and exits 0. */
export async function runWorker(config: Config): Promise<void> {
  // before it listens there is nothing to drain (Ctrl-C reaches the whole process group: dying by the
  // signal, it read as a worker that failed to start)
  const early = () => process.exit(0);
  for (const sig of STOP_SIGNALS) process.on(sig, early);
  const port = await new Promise<number>((resolve) => {
    const onStart = (m: Msg) => {
      if (m.rm !== 'start') return;
      process.off('message', onStart);
      resolve(m.port);
    };
    process.on('message', onStart);
    process.send?.({ rm: 'hello' } satisfies Msg);
  });
  /** Sends this worker's registry: the answer to collection `id`, or (0) a report of its own; then `then`. */
  const report = (id = 0, then: () => void = () => {}) =>
    void registry.getMetricsAsJSON().then(
      (json) => (process.connected ? process.send!({ rm: 'collected', id, json } satisfies Msg, undefined, {}, () => then()) : then()),
      () => then(),
    );
  let seq = 0;
  const metricsLog = logTo({ component: 'metrics', text: (_, msg) => `[metrics] ${msg}` });
  const waiting = new Map<number, (text: string) => void>();
  process.on('message', (m: Msg) => {
    if (m.rm === 'collect') report(m.id);
    if (m.rm === 'metrics') waiting.get(m.id)?.(m.text);
  });
  // a primary that does not answer is stopped or busy, not broken: 503 and retry, where a 500 would read as a bug
  const metrics = () =>
    new Promise<string>((resolve, reject) => {
      const id = ++seq;
      const unanswered = () => {
        waiting.delete(id);
        // the 503 alone leaves no trace: the scrape that failed is counted only in a later one that succeeds
        metricsLog('warn', `serve's primary did not answer within ${METRICS_WAIT_MS} ms: /metrics answered 503 metrics_unavailable`);
        reject(new HttpError('metrics_unavailable', undefined, [['retry-after', '1']]));
      };
      const timer = setTimeout(unanswered, METRICS_WAIT_MS);
      waiting.set(id, (text) => (clearTimeout(timer), waiting.delete(id), resolve(text)));
      process.send?.({ rm: 'metrics?', id } satisfies Msg);
    });
  const server = await startServer({ ...config, port }, { metrics });
  process.on('message', (m: Msg) => m.rm === 'rebalance' && server.rebalance(REBALANCE_MS));
  setInterval(() => report(), PUSH_MS).unref();
  // idempotent: Ctrl-C signals the whole process group and the primary then sends SIGTERM too. The last
  // report goes as it exits, unless the primary does not take it within a second (stopped, or gone)
  const shutdown = () => void server.close().then(() => (setTimeout(() => process.exit(0), 1000).unref(), report(0, () => process.exit(0))));
  for (const sig of STOP_SIGNALS) process.off(sig, early).on(sig, shutdown);
  // a primary gone (killed) needs nothing here: Node's cluster exits a worker at once on an unexpected
  // 'disconnect', before any listener of ours could drain (a test holds it: no orphan keeps the port)
  process.send?.({ rm: 'listening', port: server.port } satisfies Msg);
}
