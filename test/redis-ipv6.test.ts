import { Pool } from 'undici';
import { describe, expect, it } from 'vitest';
import { hasRedisServer } from '../bench/redis-server.js';
import { runCli } from './helpers/cli.js';
import { ADMIN_KEY, call, privateRedis, serve, testCluster } from './helpers/http.js';
import { hasIpv6Loopback, testPrefix } from './helpers/redis.js';
import { until } from './helpers/snapshot.js';
import { reachesRedis, redeemOne } from './helpers/tls.js';

// a Redis reached by its IPv6 address: seeds written `[::1]:port` were refused, so a deployment on IPv6 only
// had no way to name its Cluster or its sentinels
describe.skipIf(!hasRedisServer() || !hasIpv6Loopback)(`Redis over IPv6 (${hasIpv6Loopback ? 'on ::1' : 'skipped: this machine has no IPv6 loopback ::1'})`, () => {
  it('reaches a standalone Redis by REDIS_URL redis://[::1]:port', async () => {
    // on ::1 alone: nothing reaches it over IPv4
    const redis = await privateRedis(['--bind', '::1']);
    try {
      await redis.start();
      await reachesRedis({ REDIS_URL: `redis://[::1]:${redis.port}`, KEY_PREFIX: testPrefix('ipv6') });
    } finally {
      await redis.dispose();
    }
  });

  it('reaches a Cluster from one [::1]:port seed, its masters announced by IPv6 address and named [::1]:port in /readyz', async () => {
    // the masters announce ::1: the slot map names them by it
    const cluster = await testCluster(3, ['--bind', '127.0.0.1', '::1', '--cluster-announce-ip', '::1']);
    try {
      const ports = cluster.nodes.map((n) => Number(n.split(':')[1]));
      const env = { REDIS_CLUSTER_NODES: `[::1]:${ports[0]}`, KEY_PREFIX: testPrefix('ipv6-cluster') };
      const server = await serve(env);
      try {
        const pool = new Pool(server.url, { connections: 1 });
        const ready = await call(pool, 'GET', '/readyz');
        await pool.close();
        expect(ready.status, JSON.stringify(ready.body)).toBe(200);
        expect(Object.keys(ready.body.masters).sort()).toEqual(ports.map((p) => `[::1]:${p}`).sort());
        // the lost set and the writer's status are read from the master of their slot, found by the same name
        expect([ready.body.lostShards, ready.body.snapshot.state]).toEqual([undefined, 'off']);
        const r = await redeemOne(server);
        expect(r.status, JSON.stringify(r.body)).toBe(200);
        // the CLI by a seed written as a URL
        const stats = await runCli(['--redis-cluster-nodes', `redis://[::1]:${ports[1]}`, 'stats', '--json'], { KEY_PREFIX: env.KEY_PREFIX });
        expect(stats.stderr).toBe('');
        expect(JSON.parse(stats.stdout).satellites['sat-a'].redeemed).toBe(1);
        // a master lost is named as /readyz names it, in the log's node line and the cluster watch's
        const lost = ports[2]!;
        await cluster.signal(2, 'SIGKILL');
        const lines = [`Redis node [::1]:${lost} unreachable (`, `[redis cluster] master [::1]:${lost}: `];
        // a node killed may close its connections without an error: the node line comes when a command is sent its
        // way, as the admin stats are (every shard's counters), from a client that still maps its slots to it
        const http = new Pool(server.url, { connections: 1 });
        try {
          const named = async () => (await call(http, 'GET', '/v1/admin/stats', { key: ADMIN_KEY }), server.output());
          await until(named, (out) => lines.every((l) => out.includes(l)), 'the lost master named [::1]:port in both lines');
        } finally {
          await http.close();
        }
        // (Node's own reason may say `connect ECONNREFUSED ::1:port`)
        expect(server.output()).not.toMatch(/(node|master) ::1:/);
      } finally {
        await server.stop();
      }
    } finally {
      await cluster.stop();
    }
  });
});
