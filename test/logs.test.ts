import net from 'node:net';
import { Pool } from 'undici';
import { describe, expect, it } from 'vitest';
import { freePort } from '../bench/redis-server.js';
import { runCli, type CliRun } from './helpers/cli.js';
import { ADMIN_KEY, call, privateRedis, serve } from './helpers/http.js';
import { dropSharedPrefixes, SHARED_REDIS_URL, testPrefix } from './helpers/redis.js';
import { until } from './helpers/snapshot.js';

interface LogLine {
  time: string;
  level: string;
  component: string;
  pid: number;
  msg: string;
  [field: string]: unknown;
}

/** Every line of `text` (one stream of a process) as a JSON log line; fails naming the first line that is none. */
function logLines(text: string): LogLine[] {
  return text.split('\n').filter(Boolean).map((line) => {
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      throw new Error(`not a JSON line: ${line}`);
    }
    expect(parsed, line).toMatchObject({
      time: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/),
      level: expect.stringMatching(/^(debug|info|warn|error)$/),
      component: expect.stringMatching(/^[a-z]+$/),
      pid: expect.any(Number),
      msg: expect.any(String),
    });
    return parsed as LogLine;
  });
}

const unreachablePostgres = async () => `postgres://postgres@127.0.0.1:${await freePort()}/rm_nopg`;

/** `referral-manager snapshot` with `env`, stopped (SIGTERM) once its stderr says `until`. */
function snapshotUntil(env: Record<string, string>, said: RegExp): Promise<CliRun> {
  return runCli(['snapshot'], { SNAPSHOT_METRICS_PORT: '0', ...env }, {
    timeoutMs: 30_000,
    whenStarted(proc) {
      let stderr = '';
      const watch = (d: Buffer) => {
        stderr += d.toString();
        if (!said.test(stderr)) return;
        // once: a second SIGTERM, while it stops, ends it at once
        proc.stderr!.off('data', watch);
        proc.kill('SIGTERM');
      };
      proc.stderr!.on('data', watch);
    },
  });
}

describe('LOG_FORMAT and LOG_LEVEL (real processes)', () => {
  it('serve with LOG_FORMAT=json: every line of its primary, its worker and its writer is a JSON object, for an admin call, a Redis outage and its end, Postgres out of reach and the stop', async () => {
    const redis = await privateRedis();
    await redis.start();
    // sslmode=require: node-postgres warns through Node's own warnings, which print as text
    const server = await serve({ LOG_FORMAT: 'json', REDIS_URL: redis.url, KEY_PREFIX: 'rm-logs', SNAPSHOT: 'true', DATABASE_URL: `${await unreachablePostgres()}?sslmode=require` });
    const pool = new Pool(server.url, { connections: 1 });
    let code: number | null;
    try {
      const added = await call(pool, 'POST', '/v1/admin/satellites', { key: ADMIN_KEY, body: { id: 'sat-log', outboundKey: 'o'.repeat(40) } });
      expect(added.status).toBe(201);
      await until(async () => server.stderr(), (t) => t.includes('Postgres unreachable'), 'the writer\'s warning');
      await redis.stop();
      expect((await call(pool, 'GET', '/readyz')).status).toBe(503);
      await redis.start();
      await until(() => call(pool, 'GET', '/readyz'), (r) => r.status === 200, '/readyz 200 again');
      // the worker's line and the writer's (each its own connection)
      await until(async () => server.stderr(), (t) => (t.match(/Redis reachable again/g) ?? []).length >= 2, 'the return of Redis');
    } finally {
      await pool.close();
      code = await server.stop();
      await redis.dispose();
    }
    expect(code).toBe(0);

    const out = logLines(server.stdout());
    const err = logLines(server.stderr());
    const listening = out.find((l) => l.msg.startsWith('listening on'));
    expect(listening).toMatchObject({ level: 'info', component: 'serve', port: server.port, workers: 1 });
    const primary = listening!.pid;
    // the audit line keeps its documented fields, a key still redacted
    expect(out.filter((l) => l.component === 'audit')).toEqual([
      expect.objectContaining({ level: 'info', audit: 'admin', at: expect.any(String), method: 'POST', path: '/v1/admin/satellites', ip: expect.any(String), status: 201, ms: expect.any(Number), body: { id: 'sat-log', outboundKey: '<redacted>' } }),
    ]);
    const redisLines = err.filter((l) => l.component === 'redis');
    const down = redisLines.filter((l) => l.msg.startsWith('Redis unreachable'));
    // the worker is a child process of its own: it writes JSON too
    expect(down.map((l) => [l.level, l.pid === primary ? 'snapshot' : 'http', l.client])).toEqual(expect.arrayContaining([['warn', 'http', 'http'], ['warn', 'snapshot', 'snapshot']]));
    expect(redisLines.filter((l) => l.msg === 'Redis reachable again').map((l) => [l.level, l.client]).sort()).toEqual([['info', 'http'], ['info', 'snapshot']]);
    expect(err.filter((l) => l.msg.startsWith('Postgres unreachable'))).toEqual([expect.objectContaining({ level: 'warn', component: 'snapshot', pid: primary, code: 'ECONNREFUSED' })]);
    expect(err.filter((l) => l.component === 'node')).toEqual([expect.objectContaining({ level: 'warn', pid: primary, msg: expect.stringMatching(/^Warning: SECURITY WARNING: The SSL modes/) })]);
    expect(err.find((l) => l.msg.startsWith('stopped in'))).toMatchObject({ level: 'info', component: 'serve', pid: primary, ms: expect.any(Number) });
  });

  it('LOG_LEVEL=warn drops the info lines of `referral-manager snapshot`, in either format; its warnings stay', async () => {
    const prefix = testPrefix('loglevel');
    try {
      const env = { REDIS_URL: SHARED_REDIS_URL, KEY_PREFIX: prefix, DATABASE_URL: await unreachablePostgres(), LOG_LEVEL: 'warn' };
      const json = await snapshotUntil({ ...env, LOG_FORMAT: 'json' }, /Postgres unreachable/);
      expect(json.code).toBe(0);
      expect(logLines(json.stdout)).toEqual([]);
      const lines = logLines(json.stderr);
      expect(lines.filter((l) => l.level === 'info' || l.level === 'debug')).toEqual([]);
      expect(lines.filter((l) => l.msg.startsWith('Postgres unreachable'))).toEqual([expect.objectContaining({ level: 'warn', component: 'snapshot' })]);

      // the text lines as they always were, less the info ones ("[snapshot] info: /healthz, /readyz and /metrics on ...")
      const text = await snapshotUntil({ ...env, LOG_FORMAT: 'text' }, /Postgres unreachable/);
      expect(text.code).toBe(0);
      expect(text.stderr).toMatch(/^\[snapshot\] warn: Postgres unreachable at 127\.0\.0\.1:\d+\/rm_nopg \(connect ECONNREFUSED 127\.0\.0\.1:\d+\); retrying with backoff, events wait in Redis$/m);
      expect(text.stderr).not.toMatch(/info/);
      const unfiltered = await snapshotUntil({ ...env, LOG_LEVEL: '' }, /Postgres unreachable/);
      expect(unfiltered.stderr).toMatch(/^\[snapshot\] info: \/healthz, \/readyz and \/metrics on 0\.0\.0\.0:\d+$/m);
    } finally {
      await dropSharedPrefixes(prefix);
    }
  });

  it('an unknown LOG_FORMAT or LOG_LEVEL is one configuration error; as a flag, a usage error', async () => {
    // where it to start anyway, on a prefix of its own and no Postgres
    const prefix = testPrefix('logbad');
    const safe = { REDIS_URL: SHARED_REDIS_URL, KEY_PREFIX: prefix, DATABASE_URL: await unreachablePostgres(), SNAPSHOT: 'false', SNAPSHOT_METRICS_PORT: '0' };
    try {
      const env = await runCli(['serve', '--port', '0', '--workers', '1'], { ...safe, LOG_FORMAT: 'yaml', LOG_LEVEL: 'verbose' }, { timeoutMs: 20_000 });
      expect([env.code, env.stdout]).toEqual([2, '']);
      expect(env.stderr).toBe('invalid configuration:\n  - LOG_FORMAT: expected text or json, got "yaml"\n  - LOG_LEVEL: expected debug, info, warn or error, got "verbose"\n');
      const flag = await runCli(['snapshot', '--log-level', 'loud'], safe, { timeoutMs: 20_000 });
      expect(flag.code).toBe(2);
      expect(flag.stderr).toMatch(/^error: --log-level: expected debug, info, warn or error, got "loud"\n/);
    } finally {
      await dropSharedPrefixes(prefix);
    }
  });

  it('a serve or snapshot that cannot start (its port taken) says why in a JSON line with LOG_FORMAT=json', async () => {
    const taken = net.createServer();
    await new Promise<void>((listening) => taken.listen(0, '127.0.0.1', listening));
    try {
      const port = (taken.address() as net.AddressInfo).port;
      const run = await runCli(['serve', '--host', '127.0.0.1', '--port', String(port), '--log-format', 'json'], { KEY_PREFIX: testPrefix('logtaken'), SNAPSHOT: 'false' }, { timeoutMs: 20_000 });
      expect(run.code).toBe(1);
      expect(logLines(run.stdout)).toEqual([]);
      expect(logLines(run.stderr).filter((l) => l.level === 'error')).toEqual([expect.objectContaining({ component: 'serve', msg: expect.stringContaining(`port ${port} on 127.0.0.1 is in use`) })]);
      const writer = await runCli(['snapshot', '--metrics-port', String(port), '--log-format', 'json'], { KEY_PREFIX: testPrefix('logtaken'), DATABASE_URL: await unreachablePostgres() }, { timeoutMs: 20_000 });
      expect(writer.code).toBe(1);
      expect(logLines(writer.stderr).filter((l) => l.level === 'error')).toEqual([expect.objectContaining({ component: 'snapshot', msg: expect.stringContaining(`port ${port} on `) })]);
    } finally {
      taken.close();
    }
  });
});
