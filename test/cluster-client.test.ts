import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { createRedis } from '../src/store/redis.js';
import { testCluster } from './helpers/http.js';

describe('the CLI and writer Redis client on a Cluster', () => {
  // a command for a lost master failed after ioredis' 16 redirections x 100 ms: a generate or a revoke
  // sweep died 2 s into a failover that takes 4 s or more, though the README says a short outage is ridden out
  it('rides out a master that is gone for 3 s', async () => {
    const cluster = await testCluster(3, ['--cluster-node-timeout', '600000']);
    const redis = createRedis({ redisUrl: '', redisClusterNodes: cluster.nodes });
    try {
      const [host, port] = cluster.nodes[2]!.split(':');
      const slotOf = (key: string) => Number(spawnSync('redis-cli', ['-h', host!, '-p', port!, 'CLUSTER', 'KEYSLOT', key], { encoding: 'utf8' }).stdout.trim());
      const key = Array.from({ length: 50 }, (_, i) => `k{${i}}`).find((k) => slotOf(k) >= 10923)!;
      await redis.set(key, 'before');
      await cluster.signal(2, 'SIGKILL');
      const reply = redis.set(key, 'after');
      setTimeout(() => void cluster.restart(2), 3000);
      await expect(reply).resolves.toBe('OK');
    } finally {
      redis.disconnect();
      await cluster.stop();
    }
  });
});
