import { spawn } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { GLOBAL_VALUES, healthUrl } from '../cli/healthcheck.js';
import { runCli } from './helpers/cli.js';
import { freePort } from '../src/free-port.js';
import { serve } from './helpers/http.js';
import { dropSharedPrefixes, testPrefix } from './helpers/redis.js';

const HEALTHCHECK = path.resolve(import.meta.dirname, '../dist/cli/healthcheck.js');
const prefix = testPrefix('hc');

/** The image's HEALTHCHECK command against process `pid`: its exit code and stderr. */
function healthcheck(pid: number, env: Record<string, string> = {}): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, [HEALTHCHECK, String(pid)], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    proc.once('exit', (code) => resolve({ code, stderr }));
  });
}

afterAll(async () => {
  await dropSharedPrefixes(prefix);
});

describe('Docker HEALTHCHECK (dist/cli/healthcheck.js)', () => {
  it('probes the port the process was started with: its flag over the env over the default', () => {
    const main = ['node', 'dist/cli/main.js'];
    expect(healthUrl([...main, 'serve'], {})).toBe('http://127.0.0.1:7480/healthz');
    expect(healthUrl([...main, 'serve'], { PORT: '8000' })).toBe('http://127.0.0.1:8000/healthz');
    expect(healthUrl([...main, 'serve', '--port', '9000'], { PORT: '8000' })).toBe('http://127.0.0.1:9000/healthz');
    expect(healthUrl([...main, '--key-prefix', 'x', 'serve', '--port=9001', '--host', '0.0.0.0'], {})).toBe('http://127.0.0.1:9001/healthz');
    // the command is the first word that is no option or option value, not any word "serve"
    expect(healthUrl([...main, 'satellites', 'add', '--id', 'serve'], {})).toBeUndefined();
    expect(healthUrl([...main, '--key-prefix', 'serve', 'snapshot'], {})).toBe('http://127.0.0.1:7481/healthz');
    expect(healthUrl(['/usr/bin/tini', '--', 'node', '/usr/local/bin/referral-manager', '--redis-url=redis://r', 'serve'], {})).toBe('http://127.0.0.1:7480/healthz');
    expect(healthUrl(['node', '/app/dist/cli/main.js', 'snapshot'], {})).toBe('http://127.0.0.1:7481/healthz');
    expect(healthUrl([...main, 'serve', '--host', '10.1.2.3'], {})).toBe('http://10.1.2.3:7480/healthz');
    expect(healthUrl([...main, 'serve'], { HOST: 'fd00::5' })).toBe('http://[fd00::5]:7480/healthz');
    // a standalone writer: its ops port, not the API's
    expect(healthUrl([...main, 'snapshot'], { PORT: '8000' })).toBe('http://127.0.0.1:7481/healthz');
    expect(healthUrl([...main, 'snapshot', '--metrics-port', '9481'], { SNAPSHOT_METRICS_PORT: '7000' })).toBe('http://127.0.0.1:9481/healthz');
    expect(healthUrl([...main, 'stats'], {})).toBeUndefined();
    // an empty value means the default, as the process itself reads it
    expect(healthUrl([...main, 'serve'], { PORT: '', HOST: '' })).toBe('http://127.0.0.1:7480/healthz');
    expect(healthUrl([...main, 'snapshot'], { SNAPSHOT_METRICS_PORT: '' })).toBe('http://127.0.0.1:7481/healthz');
    // a setting serve took from a flag may be invalid in the env: not the healthcheck's business
    expect(healthUrl([...main, '--redis-url', 'redis://r:6379', 'serve', '--workers', '2'], { WORKERS: 'abc', REDIS_URL: 'nope' })).toBe('http://127.0.0.1:7480/healthz');
  });

  // its own copy of the list (importing cli/context.ts would load ioredis for a probe run every 10 s)
  it('skips the value of every global option that takes one, as --help lists them', async () => {
    const help = (await runCli(['--help'])).stdout;
    const options = help.slice(help.indexOf('Options:'), help.indexOf('Commands:'));
    expect(new Set([...options.matchAll(/^ {2}(--[a-z-]+) </gm)].map((m) => m[1]))).toEqual(GLOBAL_VALUES);
  });

  it('is healthy for serve started with --port while PORT says otherwise, unhealthy once it stops', async () => {
    // a port on the command line, where the healthcheck reads it (serve's default here, --port 0, names none)
    const served = await serve({ KEY_PREFIX: prefix, PORT: '1' }, 1, await freePort());
    const pid = served.proc.pid!;
    try {
      expect(await healthcheck(pid, { PORT: '1' })).toEqual({ code: 0, stderr: '' });
    } finally {
      expect(await served.stop()).toBe(0);
    }
    const gone = await healthcheck(pid, { PORT: '1' });
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/^healthcheck: /);
  });

  it('is healthy for a one-shot command, which listens nowhere, for as long as it runs', async () => {
    // a process whose command line reads like the image's `generate`: node ignores the words after -e's script
    const proc = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)', '/app/dist/cli/main.js', 'generate', '--satellite', 'us1'], { stdio: 'ignore' });
    await once(proc, 'spawn');
    try {
      expect(await healthcheck(proc.pid!, { PORT: '1' })).toEqual({ code: 0, stderr: '' });
    } finally {
      proc.kill();
    }
  });
});
