import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createRedis } from '../src/store/redis.js';
import { dropPrefix } from '../src/store/key-walk.js';

const HELPER = path.resolve(import.meta.dirname, '../dist/bench/redis-server.js');

/**
 * A node process that starts `sleep 60` through reaped() and, when `listen`, has a SIGTERM listener of its
 * own (as a bench or test runner does); the test sends it SIGTERM once the child runs.
 */
async function run(listen: boolean) {
  const script = `
    const { spawn } = require('node:child_process');
    import(${JSON.stringify(HELPER)}).then(({ reaped }) => {
      ${listen ? "process.on('SIGTERM', () => { console.log('handled'); setTimeout(() => process.exit(0), 300); });" : ''}
      const child = reaped(spawn('sleep', ['60'], { stdio: 'ignore' }));
      console.log('child ' + child.pid);
      setInterval(() => {}, 1000);
    });`;
  const proc = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  for (const end = Date.now() + 10_000; !/child \d+/.test(out); await new Promise((r) => setTimeout(r, 20))) {
    if (Date.now() > end) throw new Error(`no child started: ${out}`);
  }
  const child = Number(/child (\d+)/.exec(out)![1]);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => proc.once('exit', (code, signal) => r({ code, signal })));
  proc.kill('SIGTERM');
  const how = await exited;
  // killed, it may linger a moment as a zombie until its new parent reaps it
  const alive = () => {
    try {
      return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${child}/stat`, 'utf8'));
    } catch {
      return false; // gone
    }
  };
  for (const end = Date.now() + 2000; alive() && Date.now() < end; ) await new Promise((r) => setTimeout(r, 20));
  const survived = alive();
  if (survived) process.kill(child, 'SIGKILL');
  return { how, out, alive: survived };
}

// the bench's redis-servers (about 1 GB) outlived a Ctrl-C of the bench
describe('bench reaped(): children die with the process on a signal', () => {
  it('with no other listener: the child is killed and the process dies of the signal', async () => {
    const r = await run(false);
    expect(r.alive).toBe(false);
    expect(r.how).toEqual({ code: null, signal: 'SIGTERM' });
  });

  it('with a listener of its own: the child is killed and that listener runs once, not again on a re-raised signal', async () => {
    const r = await run(true);
    expect(r.alive).toBe(false);
    expect(r.how).toEqual({ code: 0, signal: null });
    expect(r.out.match(/handled/g)).toEqual(['handled']);
  });
});

// an interrupted HTTP bench left its tokens (two sets, ~2 keys each) on the shared Redis for good
describe('bench/http.js interrupted', () => {
  /** The bench with `tokens` tokens on the shared Redis, once its output matches `reached`; its prefix and a client there. */
  async function benchUntil(tokens: number, reached: RegExp) {
    const proc = spawn(process.execPath, [path.resolve(import.meta.dirname, '../dist/bench/http.js'), '--tokens', String(tokens), '--only', 'ours'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const run = { proc, out: '' };
    proc.stdout!.on('data', (d: Buffer) => (run.out += d.toString()));
    proc.stderr!.on('data', (d: Buffer) => (run.out += d.toString()));
    const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
    for (const end = Date.now() + 60_000; !reached.test(run.out); await new Promise((r) => setTimeout(r, 20))) {
      if (Date.now() > end || proc.exitCode !== null) throw new Error(`the bench never reached ${reached}: ${run.out}`);
    }
    const [, prefix, url] = /keys under (bench-http-[0-9a-f]+) on (\S+)/.exec(run.out)!;
    const redis = createRedis({ redisUrl: url!, redisClusterNodes: [] });
    const keys = () => redis.keys(`${prefix}:*`);
    return { run, exited, keys, prefix: prefix!, redis };
  }

  it('on SIGINT stops its server, removes the keys it made and exits 130', async () => {
    const { run, exited, keys, redis } = await benchUntil(2000, /^ours \(/m);
    try {
      expect(await keys()).not.toHaveLength(0);
      run.proc.kill('SIGINT');
      expect(await exited, run.out).toBe(130);
      expect(await keys()).toEqual([]);
    } finally {
      redis.disconnect();
    }
  }, 90_000);

  // the drop ran while generation went on: calls after the signal, or the one in flight, left keys behind
  it('on SIGINT while it generates tokens, removes every key it made', async () => {
    const { run, exited, keys, prefix, redis } = await benchUntil(300_000, /^generating /m);
    try {
      for (const end = Date.now() + 30_000; (await keys()).length < 100; await new Promise((r) => setTimeout(r, 20))) {
        if (Date.now() > end) throw new Error('no tokens appeared');
      }
      run.proc.kill('SIGINT');
      expect(await exited, run.out).toBe(130);
      expect(run.out).not.toMatch(/^ours \(/m); // cut short in generation, as meant
      await new Promise((r) => setTimeout(r, 300)); // a write the process sent just before it exited
      expect(await keys()).toEqual([]);
    } finally {
      await dropPrefix(redis, prefix);
      redis.disconnect();
    }
  }, 90_000);
});
