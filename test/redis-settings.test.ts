import { describe, expect, it } from 'vitest';
import { createRedis } from '../src/store/redis.js';
import { privateRedis, serve } from './helpers/http.js';

describe('/readyz refuses a Redis that would delete tokens', () => {
  // an allkeys-* eviction policy deletes buckets, side records and event streams once Redis is full, silently:
  // the probe said ready, and nothing warned until tokens answered 404
  it('is 503 naming the master while maxmemory is set with an allkeys-* policy, ready with volatile-* or noeviction', async () => {
    const redis = await privateRedis();
    await redis.start();
    const direct = createRedis({ redisUrl: redis.url, redisClusterNodes: [] });
    const served = await serve({ REDIS_URL: redis.url, KEY_PREFIX: 'evict' });
    const ready = async () => {
      const r = await fetch(`${served.url}/readyz`);
      return { status: r.status, body: (await r.json()) as Record<string, unknown> };
    };
    try {
      expect((await ready()).status).toBe(200);
      await direct.config('SET', 'maxmemory', '1gb');
      await direct.config('SET', 'maxmemory-policy', 'allkeys-lru');
      const refused = await ready();
      expect(refused.status).toBe(503);
      expect(refused.body).toMatchObject({ ready: false, redis: 'up', eviction: 'allkeys', error: `127.0.0.1:${redis.port} evicts any key at its maxmemory (maxmemory-policy allkeys-lru): it would delete tokens once full; set maxmemory-policy noeviction` });
      // keys without a TTL (every token key) are out of reach of the volatile-* policies
      await direct.config('SET', 'maxmemory-policy', 'volatile-lru');
      expect((await ready()).status).toBe(200);
      // no maxmemory: nothing is ever evicted
      await direct.config('SET', 'maxmemory-policy', 'allkeys-lfu');
      await direct.config('SET', 'maxmemory', '0');
      expect((await ready()).status).toBe(200);
    } finally {
      direct.disconnect();
      await served.stop();
      await redis.dispose();
    }
  });
});
