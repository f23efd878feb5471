import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'vitest';
import { parse, stringify } from 'yaml';
import { freePort, kill, waitForOutput } from '../../bench/redis-server.js';
import { MAIN } from './cli.js';
import { serve, type Served } from './http.js';
import { testDatabase } from './pg.js';
import { dropSharedPrefixes, testPrefix } from './redis.js';
import { until } from './snapshot.js';

export const DEPLOY = path.resolve(import.meta.dirname, '../../deploy');
export const RULES = path.join(DEPLOY, 'prometheus/alerts.yml');
export const HAS_PROMETHEUS = ['promtool', 'prometheus'].every((bin) => spawnSync(bin, ['--version']).status === 0);
if (!HAS_PROMETHEUS) console.warn('promtool or prometheus not found on PATH: the tests that run them are skipped (Debian: apt-get install prometheus; .ci/run installs it)');

export const METRICS_KEY = 'test-metrics-key-0123456789abcdefghij';

/** promtool's exit code and everything it printed (a failed unit test says which alert, when, and what it got); `input` is its stdin. */
export function promtool(args: string[], input = ''): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    const child = execFile('promtool', args, (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, output: stdout + stderr }));
    child.stdin!.end(input);
  });
}

export interface Prometheus {
  /** GET /api/v1/<p>: its data; throws with Prometheus' error (a bad query says why) */
  api(p: string): Promise<any>;
  /** the series of a PromQL expression at this instant, each `{metric, value: [time, "text"]}`; throws as api() does */
  query(expr: string): Promise<{ metric: Record<string, string>; value: [number, string] }[]>;
  /** every rule of every group, as evaluated last */
  rules(): Promise<AlertRule[]>;
  stop(): Promise<void>;
}

export interface AlertRule {
  name: string;
  /** "unknown" before its first evaluation, "err" when that failed (`lastError` says why) */
  health: string;
  lastError?: string;
  /** inactive, pending or firing */
  state: string;
}

/** A real Prometheus running deploy/prometheus/prometheus.yml, pointed at `targets` by job, scraping and evaluating every second. */
export async function prometheus(targets: Record<string, string>): Promise<Prometheus> {
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'rm-prometheus-'));
  const config = parse(readFileSync(path.join(DEPLOY, 'prometheus/prometheus.yml'), 'utf8'));
  const keyFile = path.join(tmp, 'metrics-key');
  writeFileSync(keyFile, METRICS_KEY);
  config.global = { scrape_interval: '1s', evaluation_interval: '1s' };
  config.rule_files = [RULES];
  for (const job of config.scrape_configs) {
    expect(Object.keys(targets)).toContain(job.job_name);
    job.authorization.credentials_file = keyFile;
    job.static_configs = [{ targets: [targets[job.job_name]] }];
  }
  const file = path.join(tmp, 'prometheus.yml');
  writeFileSync(file, stringify(config));
  const checked = await promtool(['check', 'config', file]);
  expect(checked.output).toContain('SUCCESS');
  const port = await freePort();
  const proc = spawn('prometheus', [`--config.file=${file}`, `--storage.tsdb.path=${path.join(tmp, 'data')}`, `--web.listen-address=127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  await waitForOutput(proc, /Server is ready to receive web requests/, 'prometheus', 30_000);
  const api = async (p: string): Promise<any> => {
    const body = (await (await fetch(`http://127.0.0.1:${port}/api/v1/${p}`)).json()) as { status: string; data?: unknown; error?: string };
    if (body.status !== 'success') throw new Error(`${body.error}`);
    return body.data;
  };
  return {
    api,
    query: async (expr) => (await api(`query?query=${encodeURIComponent(expr)}`)).result,
    rules: async () => (await api('rules')).groups.flatMap((g: { rules: AlertRule[] }) => g.rules),
    async stop() {
      await kill(proc, 'SIGTERM');
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}

export interface ScrapedDeployment {
  /** the serve (SNAPSHOT=true, so it runs a writer too, unless opts.serveWrites is false) */
  served: Served;
  /** the standalone writer: stop() (SIGTERM) and start() it again on the port Prometheus scrapes */
  writer: { stop(): Promise<void>; start(): Promise<void> };
  prom: Prometheus;
  stop(): Promise<void>;
}

export interface DeploymentOptions {
  /** the serve's SNAPSHOT: false leaves the lease to the standalone writer */
  serveWrites?: boolean;
  /** the DATABASE_URL both processes get for the test database's `url` (e.g. a pgProxy's in front of it) */
  reach?: (url: string) => Promise<string>;
}

/**
 * A serve and a standalone `snapshot` writer on a fresh key prefix and database, with METRICS_KEY, and a
 * real Prometheus (above) scraping both: returned once both targets are up. `env` adds to theirs.
 */
export async function scrapedDeployment(env: Record<string, string> = {}, opts: DeploymentOptions = {}): Promise<ScrapedDeployment> {
  const db = await testDatabase();
  const prefix = testPrefix('prom');
  const both = { KEY_PREFIX: prefix, DATABASE_URL: opts.reach ? await opts.reach(db.url) : db.url, METRICS_KEY, ...env };
  const writerPort = await freePort();
  let served: Served | undefined;
  let proc: ChildProcess | undefined;
  let prom: Prometheus | undefined;
  const writer = {
    async stop() {
      if (proc) await kill(proc, 'SIGTERM');
    },
    async start() {
      proc = spawn(process.execPath, [MAIN, 'snapshot', '--metrics-port', String(writerPort)], { env: { ...process.env, ...both }, stdio: 'ignore' });
      // (its log is not read: a pipe nobody reads blocks a writer that logs past the pipe's 64 KiB)
      // the writer says it listens once it serves /metrics
      await until(() => fetch(`http://127.0.0.1:${writerPort}/healthz`).then((r) => r.status, () => 0), (s) => s === 200, 'the writer listens');
    },
  };
  const stop = async () => {
    await prom?.stop();
    await writer.stop();
    await served?.stop();
    await dropSharedPrefixes(prefix);
    await db.drop();
  };
  try {
    served = await serve({ ...both, SNAPSHOT: String(opts.serveWrites ?? true) });
    await writer.start();
    prom = await prometheus({ 'referral-manager': `127.0.0.1:${served.port}`, 'referral-manager-snapshot': `127.0.0.1:${writerPort}` });
    const up = await until(() => prom!.api('targets'), (d) => d.activeTargets.length === 2 && d.activeTargets.every((t: any) => t.health === 'up'), 'both targets up');
    expect(up.activeTargets.map((t: any) => t.labels.job).sort()).toEqual(['referral-manager', 'referral-manager-snapshot']);
    return { served, writer, prom, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
