import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterEach } from 'vitest';

export const MAIN = path.resolve(import.meta.dirname, '../../dist/cli/main.js');

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * CLI children still running: a test that timed out (vitest's limit is shorter than runCli's) must not
 * leave them behind, nor what they started. `demo` starts a service and satellites of its own, so it leads
 * its own process group and the whole group is killed; the others stay in vitest's group, so a Ctrl-C of
 * the test run still reaches them (a child in a group of its own would outlive an interrupted run).
 */
const live = new Set<ChildProcess>();
const leaders = new WeakSet<ChildProcess>();
const killGroup = (proc: ChildProcess) => {
  try {
    if (leaders.has(proc)) process.kill(-proc.pid!, 'SIGKILL');
    else proc.kill('SIGKILL');
  } catch {
    // the group is gone already
  }
};
afterEach(() => {
  for (const proc of live) killGroup(proc);
  live.clear();
});

/** Runs the built `referral-manager` binary as a child process (npm test builds dist/ first). */
/** `whenStarted`: called with the child once spawned (to signal it mid-run) */
export function runCli(args: string[], env: Record<string, string> = {}, opts: { input?: string; timeoutMs?: number; whenStarted?: (proc: ChildProcess) => void } = {}): Promise<CliRun> {
  if (!existsSync(MAIN)) throw new Error('dist/cli/main.js missing: run `npx tsc -p tsconfig.json` (npm test does)');
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [MAIN, ...args], { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'], detached: args[0] === 'demo' });
    if (args[0] === 'demo') leaders.add(proc);
    live.add(proc);
    opts.whenStarted?.(proc);
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      killGroup(proc);
      reject(new Error(`referral-manager ${args.join(' ')}: no exit within ${opts.timeoutMs ?? 120_000} ms\nstdout:\n${stdout}\nstderr:\n${stderr}`));
    }, opts.timeoutMs ?? 120_000);
    proc.once('error', reject);
    proc.once('exit', (code) => {
      live.delete(proc);
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    proc.stdin.end(opts.input ?? '');
  });
}
