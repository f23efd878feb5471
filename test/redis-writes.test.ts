import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RedisClient } from '../src/store/redis.js';
import { privateRedisClient } from './helpers/redis.js';

// A private redis-server, so its read counter counts this test's connection alone.
describe('commands sent in one event-loop turn leave in one write', () => {
  let p: Awaited<ReturnType<typeof privateRedisClient>>;
  let redis: RedisClient;
  let probe: Redis;

  beforeAll(async () => {
    p = await privateRedisClient();
    redis = p.redis;
    probe = new Redis(p.server.url);
    await redis.ping();
  });
  afterAll(async () => {
    probe?.disconnect();
    await p?.close();
  });

  const reads = async () => Number(/total_reads_processed:(\d+)/.exec(await probe.info('stats'))?.[1]);

  it('200 commands issued together reach Redis in a handful of reads, answered in order', async () => {
    const before = await reads();
    const replies = await Promise.all(Array.from({ length: 200 }, () => redis.incr('n')));
    const used = (await reads()) - before - 1; // the probe's own INFO is one read
    expect(replies).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    expect(used).toBeLessThanOrEqual(5);
  });

  // requests of many connections arrive in separate callbacks of one turn, each followed by its own
  // process.nextTick queue: the socket stays corked until the check phase, not just to the callback's end
  it('commands made in separate callbacks of one turn still leave together', async () => {
    const before = await reads();
    const replies = await Promise.all(Array.from({ length: 200 }, () => new Promise<number>((r) => setTimeout(() => r(redis.incr('cb')), 1))));
    const used = (await reads()) - before - 1;
    expect(replies).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    expect(used).toBeLessThanOrEqual(5);
  });

  it('commands of separate turns are not held back', async () => {
    await redis.set('turns', '0');
    for (let i = 1; i <= 3; i++) {
      await new Promise((r) => setImmediate(r));
      expect(await redis.incr('turns')).toBe(i);
    }
    const before = await reads();
    await redis.set('a', '1');
    await redis.set('b', '2');
    expect((await reads()) - before - 1).toBe(2);
  });
});
