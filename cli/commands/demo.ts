import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type { Command } from 'commander';
import { freePort } from '../../src/free-port.js';
import { createRedis } from '../../src/store/redis.js';
import { dropPrefix } from '../../src/store/key-walk.js';
import { configFrom } from '../context.js';

const MAIN = process.argv[1]!;

interface Child {
  proc: ChildProcess;
  stop(): Promise<void>;
}

/** This binary again, as a child (serve or satellite-sim); resolves once it says it is listening. */
function start(args: string[], env: Record<string, string>): Promise<Child> {
  const proc = spawn(process.execPath, [MAIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  return new Promise((resolve, reject) => {
    let out = '';
    const onData = (d: Buffer) => {
      out += d.toString();
      if (/listening on/.test(out)) {
        proc.stdout!.off('data', onData);
        proc.stderr!.off('data', onData);
        resolve({ proc, stop: async () => void (proc.exitCode === null && proc.kill('SIGTERM'), await exited) });
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    proc.once('exit', (code) => reject(new Error(`referral-manager ${args[0]} exited ${code}:\n${out}`)));
  });
}

/** This binary again, to completion, its output shown; resolves with stdout. */
function run(args: string[], env: Record<string, string>, show = true): Promise<string> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [MAIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (show) process.stdout.write(d);
    });
    proc.once('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`referral-manager ${args.join(' ')} exited ${code}`))));
  });
}

async function post(url: string, body: unknown): Promise<unknown> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json' }, body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${await res.text()}`);
  return res.json();
}

const step = (s: string) => console.log(`\n== ${s}`);

/** `referral-manager demo` (npm run demo): the whole product on this machine in one command. */
export function register(program: Command): void {
  program
    .command('demo')
    .description('start the service and two reference satellites, run a campaign on both, sign users up across satellites, print stats')
    .option('--users <n>', 'users per satellite', '2000')
    .option('--signups <n>', 'sign-ups per satellite', '300')
    .option('--keep', 'keep the demo keys in Redis (under a demo-* prefix) instead of deleting them')
    .addHelpText('after', '\nNeeds Redis (REDIS_URL). Uses a fresh key prefix and deletes it afterwards.\n\nExamples:\n  npm run demo\n  referral-manager demo --users 10000 --signups 1000')
    .action(async function (this: Command, opts: { users: string; signups: string; keep?: boolean }) {
      if (!/^\d+$/.test(opts.users) || !/^\d+$/.test(opts.signups)) this.error('error: --users and --signups take integers');
      const prefix = `demo-${randomBytes(3).toString('hex')}`;
      const config = configFrom(this, { keyPrefix: prefix });
      const env = { REDIS_URL: config.redisUrl, REDIS_CLUSTER_NODES: config.redisClusterNodes.join(','), REDIS_SENTINELS: config.redisSentinels.join(','), REDIS_SENTINEL_NAME: config.redisSentinelName, KEY_PREFIX: prefix, ADMIN_KEY: randomBytes(24).toString('hex'), SNAPSHOT: 'false' };
      const children: Child[] = [];
      try {
        step(`manager: referral-manager serve (key prefix ${prefix}; snapshot off so the demo leaves Postgres alone)`);
        const port = await freePort();
        children.push(await start(['serve', '--host', '127.0.0.1', '--port', String(port), '--workers', '1'], env));
        const manager = `http://127.0.0.1:${port}`;
        console.log(`listening on ${manager}`);

        const sats = [{ id: 'us1', port: await freePort() }, { id: 'eu1', port: await freePort() }];
        step('register the two satellites: referral-manager satellites add --id <id> --url <url> --outbound-key <key> --json');
        const keys: Record<string, string> = {};
        for (const s of sats) {
          const out = await run(['satellites', 'add', '--id', s.id, '--url', `http://127.0.0.1:${s.port}`, '--outbound-key', `demo-outbound-${s.id}`, '--json'], env, false);
          keys[s.id] = (JSON.parse(out) as { apiKey: string }).apiKey;
          console.log(`${s.id}: api key ${keys[s.id]!.slice(0, 10)}... (shown once)`);
        }

        step(`two reference satellites with ${opts.users} users each: referral-manager satellite-sim ...`);
        for (const s of sats) {
          const peer = sats.find((p) => p !== s)!;
          const args = ['satellite-sim', '--id', s.id, '--port', String(s.port), '--users', opts.users, '--manager', manager, '--key', keys[s.id]!, '--outbound-key', `demo-outbound-${s.id}`, '--peer', `http://127.0.0.1:${peer.port}`];
          children.push(await start(args, env));
          console.log(`${s.id} on http://127.0.0.1:${s.port}`);
        }

        step('a campaign on both: referral-manager generate --all --per-user 3 --expires 30d --campaign demo');
        await run(['generate', '--all', '--per-user', '3', '--expires', '30d', '--campaign', 'demo', '--no-progress'], env);

        step(`${opts.signups} sign-ups on each satellite, half of them with the other satellite's tokens`);
        for (const s of sats) {
          const summary = await post(`http://127.0.0.1:${s.port}/sim/signups`, { count: Number(opts.signups), crossShare: 0.5 });
          console.log(`${s.id}: ${JSON.stringify(summary)}`);
        }

        step('referral-manager stats');
        await run(['stats'], env);
        step('referral-manager campaigns show demo');
        await run(['campaigns', 'show', 'demo'], env);
      } finally {
        for (const c of children.reverse()) await c.stop();
        if (opts.keep) console.log(`\nkept: inspect with --key-prefix ${prefix}`);
        else {
          const redis = createRedis(config);
          await dropPrefix(redis, prefix).finally(() => redis.disconnect());
        }
      }
    });
}
