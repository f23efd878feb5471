import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { reaped, waitForOutput } from './redis-server.js';

/** Servers under test, each in its own process so its CPU and event loop are its own, not the load generator's. */

// run from dist/bench: the baselines sit next to this file, the CLI in dist/cli
export const benchDir = path.dirname(fileURLToPath(import.meta.url));

/** `serve` with `workers` workers; 'PORT' stands for the port, filled in by the caller. */
export const serveArgs = (workers: number) => [path.join(benchDir, '..', 'cli', 'main.js'), 'serve', '--host', '127.0.0.1', '--port', 'PORT', '--workers', String(workers)];

// BENCH_NODE_FLAGS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof") go to every server under test, and serve's workers
const nodeFlags = process.env.BENCH_NODE_FLAGS?.split(' ').filter(Boolean) ?? [];

/** A node process running `args`, once it says it is listening. */
export async function startServer(args: string[], env: Record<string, string> = {}): Promise<ChildProcess> {
  const proc = reaped(spawn(process.execPath, [...nodeFlags, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] }));
  await waitForOutput(proc, /listening/, args.join(' '), 60_000);
  return proc;
}

export function stopServer(proc: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (proc.exitCode !== null) return resolve();
    proc.once('exit', () => resolve());
    proc.kill('SIGTERM');
  });
}
