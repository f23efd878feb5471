import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Packr } from 'msgpackr';
import { Client, type Dispatcher } from 'undici';
import { afterAll } from 'vitest';
import { freePort, kill, startCluster, waitForOutput, type RedisAuth, type RedisClusterHandle } from '../../bench/redis-server.js';
import type { ReferralError } from '../../src/client/index.js';
import { MAIN } from './cli.js';

/**
 * Servers this test file started and has not stopped. Tests stop them in finally / afterAll, but a
 * test that times out never reaches its finally: this root-level afterAll (it runs after the file's
 * own) stops what is left, so no serve or redis-server outlives the file.
 */
const leftovers = new Set<() => Promise<unknown>>();
afterAll(async () => {
  await Promise.all([...leftovers].map((stop) => stop().catch(() => undefined)));
  leftovers.clear();
});
/** A Redis Cluster (bench/redis-server.ts) that the leftovers stop too, when a test fails before its own finally. */
export async function testCluster(masters: number, args: string[], replicas = 0, auth?: RedisAuth): Promise<RedisClusterHandle> {
  const cluster = await startCluster(masters, args, replicas, auth);
  const stop = async () => {
    leftovers.delete(stop);
    await cluster.stop();
  };
  leftovers.add(stop);
  return { ...cluster, stop };
}

export const ADMIN_KEY = 'test-admin-key-0123456789abcdefghijklmnop';
const packr = new Packr({ useRecords: false, int64AsType: 'number' });

export interface Served {
  url: string;
  port: number;
  proc: ChildProcess;
  /** everything it printed so far, stdout and stderr */
  output(): string;
  /** what it printed so far on each stream alone */
  stdout(): string;
  stderr(): string;
  /** SIGTERM and the exit code */
  stop(): Promise<number | null>;
}

/** Runs `referral-manager serve` from dist/ (npm test builds first) as a child process; `port` 0: the one it prints. */
export async function serve(env: Record<string, string>, workers = 1, askPort?: number): Promise<Served> {
  if (!existsSync(MAIN)) throw new Error('dist/cli/main.js missing: run `npx tsc -p tsconfig.json` (npm test does)');
  const proc = spawn(process.execPath, [MAIN, 'serve', '--host', '127.0.0.1', '--port', String(askPort ?? 0), '--workers', String(workers)], {
    env: { ...process.env, ADMIN_KEY, SNAPSHOT: 'false', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const streams = { stdout: '', stderr: '' };
  for (const name of ['stdout', 'stderr'] as const) {
    proc[name]!.on('data', (d: Buffer) => {
      output += d.toString();
      streams[name] += d.toString();
    });
  }
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const killNow = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL'); // its workers follow (disconnect)
    return exited;
  };
  leftovers.add(killNow);
  void exited.then(() => leftovers.delete(killNow));
  // 40 s: a serve of one worker took over 20 s to listen in a CI run at load 9 (one test, the next passed)
  const port = Number((await waitForOutput(proc, /listening on [^\s]+:(\d+) /, 'serve', 40_000))[1]);
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    proc,
    output: () => output,
    stdout: () => streams.stdout,
    stderr: () => streams.stderr,
    async stop() {
      if (proc.exitCode === null) proc.kill('SIGTERM');
      return exited;
    },
  };
}

export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: any;
}

export type Format = 'json' | 'msgpack';

/** One request with an explicit format, on a pool or one connection (a Client); the reply is decoded by its content type. */
export async function call(pool: Dispatcher, method: string, urlPath: string, opts: { key?: string; body?: unknown; format?: Format; raw?: Buffer | string; contentType?: string; accept?: string } = {}): Promise<Reply> {
  const format = opts.format ?? 'json';
  const headers: Record<string, string> = {};
  if (opts.key) headers.authorization = `Bearer ${opts.key}`;
  let body: Buffer | string | undefined = opts.raw;
  if (opts.body !== undefined) body = format === 'json' ? JSON.stringify(opts.body) : packr.pack(opts.body);
  const type = opts.contentType ?? (format === 'json' ? 'application/json' : 'application/msgpack');
  if (body !== undefined) headers['content-type'] = type;
  if (opts.accept) headers.accept = opts.accept;
  else if (body === undefined) headers.accept = format === 'json' ? 'application/json' : 'application/msgpack';
  const res = await pool.request({ method: method as 'GET', path: urlPath, headers, body });
  const buf = Buffer.from(await res.body.arrayBuffer());
  const ct = String(res.headers['content-type'] ?? '');
  let decoded: unknown = buf;
  if (ct.startsWith('application/json')) decoded = JSON.parse(buf.toString());
  else if (ct.startsWith('application/msgpack')) decoded = packr.unpack(buf);
  else if (ct.startsWith('text/')) decoded = buf.toString();
  return { status: res.statusCode, headers: res.headers, body: decoded };
}

export interface RestartableRedis {
  url: string;
  port: number;
  start(): Promise<void>;
  /** SIGTERM (a clean shutdown) or SIGKILL (a crash: only what the AOF holds survives), then wait for the exit */
  stop(sig?: 'SIGTERM' | 'SIGKILL'): Promise<void>;
  /** SIGSTOP / SIGCONT: a Redis that hangs without closing its connections */
  signal(sig: NodeJS.Signals): void;
  /** stop and delete its AOF directory */
  dispose(): Promise<void>;
}

/** A redis-server of its own on a free port (AOF in a temp dir, so data survives a restart); `args` add to its command line. */
export async function privateRedis(args: string[] = []): Promise<RestartableRedis> {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), 'rm-redis-'));
  let proc: ChildProcess | undefined;
  const stop = async (sig: 'SIGTERM' | 'SIGKILL' = 'SIGTERM') => {
    if (proc) await kill(proc, sig);
  };
  const dispose = async () => {
    leftovers.delete(dispose);
    proc?.kill('SIGCONT'); // a paused (SIGSTOP) server does not act on SIGTERM
    await stop();
    rmSync(dir, { recursive: true, force: true });
  };
  leftovers.add(dispose);
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    async start() {
      proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--appendonly', 'yes', '--save', '', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
      await waitForOutput(proc, /Ready to accept connections/, 'redis-server');
    },
    stop,
    signal(sig) {
      proc?.kill(sig);
    },
    dispose,
  };
}

/** Resident memory of a process in KiB (Linux /proc). */
export function rssKb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1]);
}

/** Sends `raw` on a fresh socket to the server at `url`; resolves with everything it wrote until it ended the reply or closed (or 10 s passed). */
export async function rawExchange(url: string, raw: string): Promise<string> {
  const socket = net.connect(Number(new URL(url).port), '127.0.0.1');
  socket.on('error', () => undefined);
  try {
    let got = '';
    const done = new Promise<string>((resolve) => {
      socket.on('data', (d: Buffer) => {
        got += d.toString('latin1');
        const head = got.indexOf('\r\n\r\n');
        const length = /\r\ncontent-length: *(\d+)/i.exec(got);
        if (head >= 0 && length && got.length >= head + 4 + Number(length[1])) resolve(got);
      });
      socket.on('close', () => resolve(got));
      setTimeout(() => resolve(`${got}(no whole reply within 10 s)`), 10_000);
    });
    socket.write(raw);
    return await done;
  } finally {
    socket.destroy();
  }
}

/**
 * A keep-alive connection to each of `workers` workers of a serve at `url`, by the pid `pidOf` reads through
 * it: the kernel picks a worker for each new connection, so connections are opened, and the extra ones closed,
 * until every worker has one. Throws (closing them) when `tries` connections did not reach them all.
 */
export async function connectionPerWorker(url: string, workers: number, pidOf: (c: Client) => Promise<number>, tries: number): Promise<Map<number, Client>> {
  const found = new Map<number, Client>();
  for (let i = 0; i < tries && found.size < workers; i++) {
    const c = new Client(url);
    const pid = await pidOf(c);
    if (found.has(pid)) await c.close();
    else found.set(pid, c);
  }
  if (found.size < workers) {
    await Promise.all([...found.values()].map((c) => c.close()));
    throw new Error(`${tries} connections reached ${found.size} of the ${workers} workers`);
  }
  return found;
}

/** The error `call` failed with (a client's ReferralError), or undefined when it succeeded. */
export async function failure(call: Promise<unknown>): Promise<ReferralError | undefined> {
  try {
    await call;
    return undefined;
  } catch (err) {
    return err as ReferralError;
  }
}
