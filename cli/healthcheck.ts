#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { loadSetting } from '../src/config.js';

/**
 * The image's HEALTHCHECK: GET /healthz of the process the container runs (PID 1, or the pid given), on
 * the port that process was told to listen on. The port is read from that process's own command line
 * (/proc/<pid>/cmdline), so `docker run ... serve --port 9000` and a `snapshot --metrics-port` writer stay
 * healthy; probing PORT alone marked them unhealthy while they served.
 */

const LOOPBACK = new Set(['0.0.0.0', '::']);

/** A flag's value in `--name v` or `--name=v` form (the last one given wins, as in commander). */
function flag(argv: string[], name: string): string | undefined {
  let value: string | undefined;
  argv.forEach((a, i) => {
    if (a === name) value = argv[i + 1];
    else if (a.startsWith(`${name}=`)) value = a.slice(name.length + 1);
  });
  return value;
}

/** The global options that take a value (cli/context.ts; a test holds the two together): their value is no command. */
export const GLOBAL_VALUES = new Set(['--redis-url', '--redis-cluster-nodes', '--redis-sentinels', '--redis-sentinel-name', '--redis-tls-ca-file', '--redis-tls-cert-file', '--redis-tls-key-file', '--key-prefix', '--database-url']);

/**
 * The command of a `main.js` (or `referral-manager`) command line: its first argument that is no option
 * or option value. Any `serve` or `snapshot` word counted before, so `satellites add --id serve` was
 * probed as a serve on 7480.
 */
function commandOf(argv: string[]): string | undefined {
  const script = argv.findIndex((a) => /(^|\/)(main\.js|referral-manager)$/.test(a));
  if (script < 0) return undefined;
  for (let i = script + 1; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('-')) return a;
    if (GLOBAL_VALUES.has(a)) i++;
  }
  return undefined;
}

/** Where `serve` or `snapshot` run with `argv` and `env` answers /healthz; undefined for any other command. */
export function healthUrl(argv: string[], env: NodeJS.ProcessEnv): string | undefined {
  const command = commandOf(argv);
  if (command !== 'serve' && command !== 'snapshot') return undefined;
  // the process read its flags and env through the same config module: its defaults and rules (an empty
  // value is the default) are the ones it listens by. Only these: a setting it took from a flag may be
  // invalid in the env
  const port = command === 'serve' ? loadSetting('port', flag(argv, '--port'), env) : loadSetting('snapshotMetricsPort', flag(argv, '--metrics-port'), env);
  const host = loadSetting('host', flag(argv, '--host'), env);
  const name = LOOPBACK.has(host) ? '127.0.0.1' : host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
  return `http://${name}:${port}/healthz`;
}

async function main(): Promise<number> {
  const pid = process.argv[2] ?? '1';
  const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  const url = healthUrl(argv, process.env);
  // a one-shot command (generate, restore, ...) listens nowhere: it is healthy while it runs. Failing here
  // marked a long `docker compose run ... generate` unhealthy after 30 s, which an autoheal would restart
  if (!url) return 0;
  const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
  if (!res.ok) console.error(`healthcheck: ${url} answered ${res.status}`);
  return res.ok ? 0 : 1;
}

// run as a script (the HEALTHCHECK); imported, it only lends healthUrl to the tests
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().then(
    (code) => process.exit(code),
    (err: Error) => {
      console.error(`healthcheck: ${err.message}`);
      process.exit(1);
    },
  );
}
