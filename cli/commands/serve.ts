import cluster from 'node:cluster';
import type { Command } from 'commander';
import { runPrimary, runWorker } from '../../src/http/cluster.js';
import { STOP_SIGNALS } from '../../src/http/ops.js';
import { uwsNotNative } from '../../src/http/server.js';
import { reportLag, SNAPSHOT_LOG, startSnapshotWriter } from '../../src/snapshot/index.js';
import { CLUSTER_LOG, watchCluster } from '../../src/store/cluster-watch.js';
import { logTo, setLogging } from '../../src/log.js';
import { createRedis } from '../../src/store/redis.js';
import { TokenStore } from '../../src/store/token-store.js';
import { TokenEngine } from '../../src/tokens/engine.js';
import { reportTokenCounts } from '../../src/tokens/metrics.js';
import { sweepLapsed } from '../../src/tokens/lapse.js';
import { configFrom } from '../context.js';
import { NO_REPLICA_WAIT } from '../../src/store/replicas.js';

/** `referral-manager serve`: the HTTP API in N worker processes on one port; SIGTERM (or SIGINT, SIGHUP) drains and exits 0. */
export function register(program: Command): void {
  program
    .command('serve')
    .description('run the HTTP API (N worker processes sharing one port)')
    .option('--port <port>', 'port to listen on (env PORT)')
    .option('--host <host>', 'address to listen on (env HOST)')
    .option('--workers <n>', 'worker processes (env WORKERS; default one per core)')
    .option('--log-format <format>', 'text or json (env LOG_FORMAT; default text)')
    .option('--log-level <level>', 'debug, info, warn or error (env LOG_LEVEL; default info)')
    .addHelpText('after', '\nExamples:\n  ADMIN_KEY=... referral-manager serve\n  referral-manager serve --port 8080 --workers 4')
    .action(async function (this: Command, opts: { port?: string; host?: string; workers?: string; logFormat?: string; logLevel?: string }) {
      const config = configFrom(this, { port: opts.port, host: opts.host, workers: opts.workers, logFormat: opts.logFormat, logLevel: opts.logLevel });
      // a worker runs this too (node:cluster forks the same command line and environment): its lines alike
      setLogging(config);
      if (!cluster.isPrimary) return runWorker(config);
      const log = logTo({ component: 'serve', text: (level, msg) => (level === 'warn' ? `warn: ${msg}` : msg) });
      const fallback = uwsNotNative();
      if (fallback) throw new Error(fallback);

      // handlers first: without them a SIGTERM right after the workers listen killed serve undrained. While
      // the workers start (~10 s when Redis is down) a signal stops at once, as nothing is served yet; once
      // they listen it waits the moment until the primary's services are up, then drains
      let shutdown: ((sig: NodeJS.Signals) => Promise<void>) | undefined;
      let early: NodeJS.Signals | undefined;
      let starting = true;
      const onSignal = (sig: NodeJS.Signals) => {
        if (shutdown) return void shutdown(sig);
        if (!starting) return void (early ??= sig);
        log('info', `${sig} while starting: stopping`, { signal: sig });
        for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGTERM');
        process.exit(0);
      };
      for (const sig of STOP_SIGNALS) process.on(sig, onSignal);
      if (config.adminKey === '') {
        log('warn', 'ADMIN_KEY is not set: the admin routes (/v1/admin/...) answer 401 to any key but a satellite\'s (403); the CLI, which talks to Redis, still works');
      }
      const primary = await runPrimary(config);
      starting = false;
      // Services of the primary (one per deployment, not per worker) start here and join `stops`, run at
      // shutdown alongside the workers' drain (each is bounded; in turn they could outlast a container's
      // 10 s stop grace): the snapshot writer (config.snapshot), the lag and token-count readings, the lapsed-lease sweep, the Cluster watch.
      const stops: (() => Promise<void>)[] = [];
      // for the readings: one fails at once while Redis is down, and after 2 s while it hangs, so
      // neither holds up shutdown
      const redis = createRedis(config, { connectionName: 'referral-manager-primary', failFast: true, commandTimeoutMs: 2000 });
      redis.on('error', () => {}); // reconnects by itself; failed readings are counted in the metrics
      // a Redis Cluster's masters and migrating slots, in the log and the metrics (undefined for one Redis)
      const watch = watchCluster(redis, logTo(CLUSTER_LOG));
      if (watch) stops.push(() => watch.stop());
      const engine = new TokenEngine(new TokenStore(redis, config.keyPrefix, NO_REPLICA_WAIT));
      if (config.tokenCountsMs > 0) {
        const counts = reportTokenCounts(engine, config.tokenCountsMs);
        stops.push(() => counts.stop());
      }
      if (config.leaseSweepMs > 0) {
        const sweep = sweepLapsed(engine, config.leaseSweepMs, config.leaseSweepGraceMs);
        stops.push(() => sweep.stop());
      }
      if (config.snapshot) {
        const writer = await startSnapshotWriter(config);
        stops.push(() => writer.stop());
      } else {
        // nothing trims the event streams but a writer: say so once, where the operator looks first
        logTo(SNAPSHOT_LOG)('warn', 'SNAPSHOT=false: this process writes nothing to Postgres; every state change waits in the Redis event streams (~220 B each) until a `referral-manager snapshot` runs against this Redis');
        // and keep rm_snapshot_lag_* true here, so a lag alert fires if no writer runs anywhere
        const lag = reportLag(redis, config.keyPrefix);
        stops.push(() => lag.stop());
      }
      let stopping = false;
      shutdown = async (sig: NodeJS.Signals) => {
        if (stopping) return;
        stopping = true;
        // a stop must be told from a crash in the log
        const t0 = Date.now();
        log('info', `${sig}: draining (requests in flight are answered, up to 10 s), then stopping`, { signal: sig });
        await Promise.all([primary.stop(), ...stops.map((stop) => stop())]);
        redis.disconnect();
        const ms = Date.now() - t0;
        log('info', `stopped in ${ms} ms`, { ms });
        process.exit(0);
      };
      if (early) void shutdown(early);
    });
}
