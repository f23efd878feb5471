import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { freePort } from './http.js';

export interface RedisClusterHandle {
  /** host:port of every master */
  nodes: string[];
  stop(): Promise<void>;
}

/** True when `redis-server --version` runs: the cluster tests need a local Redis binary. */
export function hasRedisServer(): boolean {
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  return r.status === 0 && /Redis server v=/.test(r.stdout);
}

function waitForOutput(proc: ChildProcess, pattern: RegExp, what: string, ms = 20_000): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = '';
    const done = (err?: Error) => {
      clearTimeout(timer);
      proc.stdout?.off('data', onData);
      proc.off('exit', onExit);
      if (err) reject(err);
      else resolve();
    };
    const timer = setTimeout(() => done(new Error(`${what}: no "${pattern}" within ${ms} ms; output:\n${out}`)), ms);
    const onData = (d: Buffer) => {
      out += d.toString();
      if (pattern.test(out)) done();
    };
    const onExit = (code: number | null) => done(new Error(`${what} exited with ${code}; output:\n${out}`));
    proc.stdout?.on('data', onData);
    proc.once('exit', onExit);
  });
}

function run(cmd: string, args: string[], ms = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
    proc.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => proc.kill('SIGKILL'), ms);
    proc.once('error', reject);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}:\n${out}`));
    });
  });
}

async function untilClusterOk(ports: number[], ms = 30_000): Promise<void> {
  const clients = ports.map((port) => new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 1 }));
  try {
    const deadline = Date.now() + ms;
    let last = '';
    while (Date.now() < deadline) {
      const infos = await Promise.all(clients.map((c) => c.cluster('INFO') as Promise<string>));
      last = infos.join('\n---\n');
      if (infos.every((i) => /cluster_state:ok/.test(i) && new RegExp(`cluster_known_nodes:${ports.length}\\b`).test(i))) return;
      await sleep(100);
    }
    throw new Error(`Redis Cluster not ok within ${ms} ms:\n${last}`);
  } finally {
    for (const c of clients) c.disconnect();
  }
}

/**
 * Three cluster-enabled redis-servers on free ports (no persistence, files in a temp dir), joined by
 * `redis-cli --cluster create` into 3 masters without replicas. The bus ports are picked free too,
 * since port + 10000 may be taken or past 65535.
 */
export async function startCluster(): Promise<RedisClusterHandle> {
  const dir = mkdtempSync(path.join(tmpdir(), 'rm-cluster-'));
  const procs: ChildProcess[] = [];
  const stop = async () => {
    await Promise.all(
      procs.map(
        (p) =>
          new Promise<void>((resolve) => {
            if (p.exitCode !== null || p.signalCode !== null) return resolve();
            p.once('exit', () => resolve());
            p.kill('SIGKILL');
          }),
      ),
    );
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const ports: number[] = [];
    while (ports.length < 6) {
      const p = await freePort();
      if (!ports.includes(p)) ports.push(p);
    }
    const [p1, p2, p3, b1, b2, b3] = ports as [number, number, number, number, number, number];
    const masters = [[p1, b1], [p2, b2], [p3, b3]] as const;
    for (const [port, bus] of masters) {
      const proc = spawn(
        'redis-server',
        [
          '--cluster-enabled', 'yes',
          '--cluster-config-file', path.join(dir, `nodes-${port}.conf`),
          '--cluster-port', String(bus),
          '--port', String(port),
          '--bind', '127.0.0.1',
          '--save', '',
          '--appendonly', 'no',
          '--dir', dir,
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      procs.push(proc);
      await waitForOutput(proc, /Ready to accept connections/, `redis-server :${port}`);
    }
    const nodes = masters.map(([port]) => `127.0.0.1:${port}`);
    await run('redis-cli', ['--cluster', 'create', ...nodes, '--cluster-replicas', '0', '--cluster-yes']);
    await untilClusterOk(masters.map(([port]) => port));
    return { nodes, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
