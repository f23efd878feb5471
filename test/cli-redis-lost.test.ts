import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { hasRedisServer, kill } from '../bench/redis-server.js';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { createRedis } from '../src/store/redis.js';
import { runCli } from './helpers/cli.js';
import { privateRedis, testCluster } from './helpers/http.js';
import { hasOpenssl, makeCertificates, startTlsRedis } from './helpers/tls.js';

/**
 * Runs a generate whose satellite answers its listing only after `fault` has struck Redis, so the
 * generate's Redis work (and its clean-up) meets the fault, and returns how it ended.
 */
async function generateMeeting(env: Record<string, string>, fault: () => Promise<void>) {
  let listed!: () => void;
  const asked = new Promise<void>((resolve) => (listed = resolve));
  let answer!: () => void;
  const answered = new Promise<void>((resolve) => (answer = resolve));
  const satellite = createServer((req, res) => {
    listed();
    void answered.then(() => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ userIds: Array.from({ length: 200 }, (_, i) => `u${i}`), nextCursor: '' }));
    });
  });
  await new Promise<void>((resolve) => satellite.listen(0, '127.0.0.1', resolve));
  try {
    const client = createRedis({ redisUrl: env.REDIS_URL ?? '', redisClusterNodes: env.REDIS_CLUSTER_NODES?.split(',') ?? [], redisTlsCaFile: env.REDIS_TLS_CA_FILE });
    await new SatelliteRegistry(client, 'rm-lost').add({ id: 'sat-slow', url: `http://127.0.0.1:${(satellite.address() as AddressInfo).port}` });
    client.disconnect();
    const run = runCli(['generate', '--satellite', 'sat-slow', '--per-user', '1', '--campaign', 'lost'], { ...env, KEY_PREFIX: 'rm-lost', SATELLITE_ATTEMPTS: '1' }, { timeoutMs: 60_000 });
    await asked;
    await fault();
    answer();
    return await run;
  } finally {
    answer();
    satellite.closeAllConnections();
    await new Promise((resolve) => satellite.close(resolve));
  }
}

describe('a CLI command that loses Redis part-way (child process, private redis-server / Cluster)', () => {
  // before, every command of a failed generate's clean-up retried for tens of seconds: about 3 minutes
  // to exit, ending on ioredis's "Reached the max retries per request limit"
  it('generate gives up 10 s after Redis went away, says so, and exits 1', async () => {
    const redis = await privateRedis();
    await redis.start();
    try {
      const r = await generateMeeting({ REDIS_URL: redis.url }, () => redis.stop('SIGKILL'));
      expect(r.code, `${r.code} ${r.stdout} ${r.stderr}`).toBe(1);
      expect(r.stderr).toContain(`error: lost Redis (${redis.url}) for 10 s: `);
      expect(r.stderr).toMatch(/for 10 s: .*giving up/);
    } finally {
      await redis.dispose();
    }
  }, 90_000);

  // a Redis back with a certificate no CA here signed (moved to another CA without REDIS_TLS_CA_FILE following):
  // the reason is said as connecting says it, with what to do about it
  it.skipIf(!hasRedisServer() || !hasOpenssl)('generate gives up on a TLS Redis back with a certificate of another CA, pointing at REDIS_TLS_CA_FILE', async () => {
    const [before, after] = [mkdtempSync(path.join(tmpdir(), 'rm-tls-before-')), mkdtempSync(path.join(tmpdir(), 'rm-tls-after-'))];
    makeCertificates(before);
    makeCertificates(after);
    let redis = await startTlsRedis(before);
    try {
      const { port } = redis;
      const r = await generateMeeting({ REDIS_URL: `rediss://localhost:${port}`, REDIS_TLS_CA_FILE: path.join(before, 'ca.crt') }, async () => {
        await kill(redis.proc, 'SIGKILL');
        redis = await startTlsRedis(after, ['--tls-port', String(port)]);
      });
      expect(r.code, `${r.code} ${r.stdout} ${r.stderr}`).toBe(1);
      expect(r.stderr).toMatch(/error: lost Redis \(rediss:\/\/localhost:\d+\) for 10 s: self[- ]signed certificate in certificate chain; Redis's TLS certificate is not signed by a CA trusted here: set REDIS_TLS_CA_FILE to the CA that signed it; giving up/);
    } finally {
      await kill(redis.proc, 'SIGKILL');
      rmSync(before, { recursive: true, force: true });
      rmSync(after, { recursive: true, force: true });
    }
  }, 90_000);

  // the cases below waited without end before (killed by the 60 s limit here): a hung server keeps its
  // connections open, and a Cluster client queues commands while every master is gone
  it('generate gives up once a hung Redis (SIGSTOP) leaves a command unanswered for 10 s, and exits 1', async () => {
    const redis = await privateRedis();
    await redis.start();
    try {
      const r = await generateMeeting({ REDIS_URL: redis.url }, async () => redis.signal('SIGSTOP'));
      expect(r.code, `${r.code} ${r.stdout} ${r.stderr}`).toBe(1);
      expect(r.stderr).toContain(`error: Redis (${redis.url}) did not answer within 10 s; giving up`);
    } finally {
      await redis.dispose();
    }
  }, 90_000);

  for (const [what, fault] of [
    ['every master killed', async (c: Awaited<ReturnType<typeof testCluster>>) => { for (const i of [0, 1, 2]) await c.signal(i, 'SIGKILL'); }],
    ['one master hung (SIGSTOP)', (c: Awaited<ReturnType<typeof testCluster>>) => c.signal(2, 'SIGSTOP')],
  ] as const) {
    it(`generate on a Redis Cluster with ${what} gives up after 10 s, and exits 1`, async () => {
      const cluster = await testCluster(3, ['--cluster-node-timeout', '600000']);
      try {
        const r = await generateMeeting({ REDIS_CLUSTER_NODES: cluster.nodes.join(',') }, () => fault(cluster));
        expect(r.code, `${r.code} ${r.stdout} ${r.stderr}`).toBe(1);
        expect(r.stderr).toMatch(/error: (lost Redis|Redis) \(cluster [^)]+\) (for 10 s: .*|did not answer within 10 s); giving up/);
        expect(r.stderr).toMatch(/campaign lost is incomplete/);
      } finally {
        for (const i of [0, 1, 2]) await cluster.signal(i, 'SIGCONT').catch(() => undefined);
        await cluster.stop();
      }
    }, 90_000);
  }
});
