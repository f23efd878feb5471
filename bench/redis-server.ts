import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { freePort } from '../src/free-port.js';

/**
 * Throw-away redis-servers on free ports, for benches that measure Redis itself (memory, CPU,
 * commandstats) and for tests that kill Redis or need a Cluster: the shared 6379 carries other people's
 * keys and load, and may not be flushed or stopped. No persistence, so neither RDB forks nor AOF writes
 * land in the numbers.
 */
export interface PrivateRedis {
  url: string;
  port: number;
  pid: number;
  stop(): Promise<void>;
}

export interface RedisClusterHandle {
  /** host:port of every server (without replicas: every master) */
  nodes: string[];
  /** signals server `i`: SIGKILL (a crash; waits for the exit), SIGSTOP / SIGCONT (a master that hangs) */
  signal(i: number, sig: NodeJS.Signals): Promise<void>;
  /** starts a killed server `i` again on its ports and nodes.conf: it rejoins with its slots, empty (no persistence) */
  restart(i: number): Promise<void>;
  stop(): Promise<void>;
}

export { freePort };

/** True when `redis-server --version` runs: private servers and clusters need a local Redis binary. */
export function hasRedisServer(): boolean {
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  return r.status === 0 && /Redis server v=/.test(r.stdout);
}

const serverArgs = (port: number, dir: string) => ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'];

const children = new Set<ChildProcess>();

/**
 * `proc` dies with this process, also on Ctrl-C or SIGTERM: an interrupted `npm run bench` left its private
 * redis-servers running, holding gigabytes, and its servers under test on their ports.
 */
export function reaped(proc: ChildProcess): ChildProcess {
  hookExit();
  children.add(proc);
  proc.once('exit', () => children.delete(proc));
  return proc;
}

let hooked = false;
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  const killAll = () => {
    for (const c of children) {
      c.kill('SIGCONT'); // a paused (SIGSTOP) server does not act on signals
      c.kill('SIGKILL');
    }
  };
  process.on('exit', killAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      killAll();
      // then as if unhandled: the default action. Another listener has run already on this signal; raising it
      // again would run it twice
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    });
  }
}

/** Signals a child process and waits for its exit (at once if it has exited already). */
export function kill(proc: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  return new Promise((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
    proc.once('exit', () => resolve());
    proc.kill(signal);
  });
}

export async function startRedis(extraArgs: string[] = []): Promise<PrivateRedis> {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), 'rm-bench-redis-'));
  const proc = reaped(spawn('redis-server', [...serverArgs(port, dir), ...extraArgs], { stdio: ['ignore', 'pipe', 'pipe'] }));
  try {
    await ready(proc, `redis-server :${port}`);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    pid: proc.pid!,
    async stop() {
      await kill(proc, 'SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Who the cluster's own tools (create, the wait for it) log in as, when `extraArgs` ask for a password (`--requirepass`, an ACL `--user`). */
export interface RedisAuth {
  username?: string;
  password: string;
}

/**
 * `masters` (at least 3, what `redis-cli --cluster create` accepts) cluster-enabled redis-servers joined
 * into a Cluster, each master with `replicas` replicas (which node becomes which is redis-cli's choice:
 * ask CLUSTER NODES). Bus ports are picked free too, since port + 10000 may be taken or past 65535.
 */
export async function startCluster(masters = 3, extraArgs: string[] = [], replicas = 0, auth?: RedisAuth): Promise<RedisClusterHandle> {
  const servers = masters * (1 + replicas);
  const dir = mkdtempSync(path.join(tmpdir(), 'rm-cluster-'));
  const procs: ChildProcess[] = [];
  const stop = async () => {
    for (const p of procs) p.kill('SIGCONT'); // a paused (SIGSTOP) server does not act on signals
    await Promise.all(procs.map((p) => kill(p, 'SIGKILL')));
    rmSync(dir, { recursive: true, force: true });
  };
  const ports: number[] = [];
  const start = async (i: number) => {
    const port = ports[i]!;
    const bus = ['--cluster-enabled', 'yes', '--cluster-config-file', path.join(dir, `nodes-${port}.conf`), '--cluster-port', String(ports[servers + i])];
    const proc = reaped(spawn('redis-server', [...serverArgs(port, dir), ...bus, ...extraArgs], { stdio: ['ignore', 'pipe', 'pipe'] }));
    procs[i] = proc;
    await ready(proc, `redis-server :${port}`);
  };
  try {
    while (ports.length < 2 * servers) {
      const p = await freePort();
      if (!ports.includes(p)) ports.push(p);
    }
    const clientPorts = ports.slice(0, servers);
    for (let i = 0; i < servers; i++) await start(i);
    const nodes = clientPorts.map((port) => `127.0.0.1:${port}`);
    await redisCli(['--cluster', 'create', ...nodes, '--cluster-replicas', String(replicas), '--cluster-yes'], auth);
    await untilClusterOk(clientPorts, auth);
    return {
      nodes,
      stop,
      async signal(i, sig) {
        if (sig === 'SIGKILL') await kill(procs[i]!, sig);
        else procs[i]!.kill(sig);
      },
      restart: start,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Resolves once `proc` has printed `pattern` (stdout or stderr); rejects when it exits or `ms` passes first. */
export function waitForOutput(proc: ChildProcess, pattern: RegExp, what: string, ms = 20_000): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let out = '';
    let match: RegExpExecArray | null = null;
    const done = (err?: Error) => {
      clearTimeout(timer);
      proc.stdout?.off('data', onData);
      proc.stderr?.off('data', onData);
      proc.off('error', done);
      proc.off('exit', onExit);
      if (err) reject(err);
      else resolve(match!);
    };
    const timer = setTimeout(() => done(new Error(`${what}: no "${pattern}" within ${ms} ms; output:\n${out}`)), ms);
    const onData = (d: Buffer) => {
      out += d.toString();
      match = pattern.exec(out);
      if (match) done();
    };
    const onExit = (code: number | null) => done(new Error(`${what} exited with ${code}; output:\n${out}`));
    proc.stdout?.on('data', onData);
    proc.stderr?.on('data', onData);
    proc.once('error', done);
    proc.once('exit', onExit);
  });
}

const ready = (proc: ChildProcess, what: string) => waitForOutput(proc, /Ready to accept connections/, what);

function redisCli(args: string[], auth?: RedisAuth): Promise<string> {
  return new Promise((resolve, reject) => {
    // the password by env, not -a: redis-cli warns of a password on its command line
    const login = auth?.username ? ['--user', auth.username] : [];
    const proc = spawn('redis-cli', [...login, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: auth ? { ...process.env, REDISCLI_AUTH: auth.password } : process.env });
    let out = '';
    proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
    proc.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => proc.kill('SIGKILL'), 60_000);
    proc.once('error', reject);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`redis-cli ${args.join(' ')} exited with ${code}:\n${out}`));
    });
  });
}

async function untilClusterOk(ports: number[], auth?: RedisAuth, ms = 30_000): Promise<void> {
  const clients = ports.map((port) => new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 1, ...auth }));
  try {
    const deadline = Date.now() + ms;
    let last = '';
    while (Date.now() < deadline) {
      const infos = await Promise.all(clients.map((c) => c.cluster('INFO') as Promise<string>));
      last = infos.join('\n---\n');
      // a replica whose first sync has not finished cannot take over: wait for every replica's link too
      const links = await Promise.all(clients.map((c) => c.info('replication')));
      last += `\n---\n${links.join('\n---\n')}`;
      const synced = links.every((i) => !/role:slave/.test(i) || /master_link_status:up/.test(i));
      if (synced && infos.every((i) => /cluster_state:ok/.test(i) && new RegExp(`cluster_known_nodes:${ports.length}\\b`).test(i))) return;
      await sleep(100);
    }
    throw new Error(`Redis Cluster not ok within ${ms} ms:\n${last}`);
  } finally {
    for (const c of clients) c.disconnect();
  }
}

/** One INFO section as name -> value. */
export async function info(redis: { info(section: string): Promise<string> }, section: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const line of (await redis.info(section)).split('\r\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}

/** CPU seconds (user + system) the Redis server has used since it started. */
export async function redisCpuSeconds(redis: { info(section: string): Promise<string> }): Promise<number> {
  const c = await info(redis, 'cpu');
  return Number(c.used_cpu_user) + Number(c.used_cpu_sys);
}
