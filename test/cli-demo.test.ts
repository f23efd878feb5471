import { connect } from 'node:net';
import { describe, expect, it } from 'vitest';
import { createRedis } from '../src/store/redis.js';
import { runCli } from './helpers/cli.js';
import { SHARED_REDIS_URL } from './helpers/redis.js';

/** Whether something accepts TCP connections on 127.0.0.1:port. */
const listening = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = connect(port, '127.0.0.1', () => (s.destroy(), resolve(true)));
    s.on('error', () => resolve(false));
  });

describe('referral-manager demo (npm run demo)', () => {
  it('runs the whole product: service, two satellites, a campaign, cross-satellite sign-ups, stats; then cleans up', async () => {
    const run = await runCli(['demo', '--users', '200', '--signups', '20'], { REDIS_URL: SHARED_REDIS_URL }, { timeoutMs: 120_000 });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/us1\s+200\s+600\s+600\s+0\s+0\s+done/);
    expect(run.stdout).toMatch(/eu1\s+200\s+600\s+600\s+0\s+0\s+done/);
    expect(run.stdout).toMatch(/"redeemed":20/);
    expect(run.stdout).toMatch(/total\s+1200\s+\d+\s+0\s+40\s+0/);
    expect(run.stdout).toMatch(/owner \\ redeemer/);

    // cleaned up: no key of its prefix is left in Redis, and the service and satellites it started are gone
    const prefix = /key prefix (demo-[0-9a-f]+)/.exec(run.stdout)?.[1];
    expect(prefix, 'the demo names its key prefix').toBeDefined();
    const redis = createRedis({ redisUrl: SHARED_REDIS_URL, redisClusterNodes: [] });
    try {
      const left: string[] = [];
      let cursor = '0';
      do {
        const [next, keys] = await (redis as import('ioredis').Redis).scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 10_000);
        cursor = next;
        left.push(...keys);
      } while (cursor !== '0');
      expect(left).toEqual([]);
    } finally {
      redis.disconnect();
    }
    const ports = [...run.stdout.matchAll(/(?:listening|us1|eu1) on http:\/\/127\.0\.0\.1:(\d+)/g)].map((m) => Number(m[1]));
    expect(ports).toHaveLength(3);
    for (const port of ports) expect(await listening(port), `port ${port}`).toBe(false);
    // longer than runCli's 120 s, so a hung demo is killed by runCli rather than left running past the test
  }, 150_000);
});
