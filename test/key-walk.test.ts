import { describe, expect, it } from 'vitest';
import type { Redis } from 'ioredis';
import { dropKeys } from '../src/store/key-walk.js';
import type { RedisClient } from '../src/store/redis.js';
import { engineFixtureFor } from './helpers/redis.js';

// restore and rebuild delete with dropKeys: its filter and its error check, held here on their own
describe('dropKeys (real Redis)', () => {
  const fx = engineFixtureFor('keywalk');

  it('deletes and counts only the keys `keep` accepts', async () => {
    await fx.redis.mset(`${fx.prefix}:a:1`, '1', `${fx.prefix}:a:2`, '1', `${fx.prefix}:b:1`, '1');
    expect(await dropKeys(fx.redis, `${fx.prefix}:*`, (k) => k.includes(':a:'))).toBe(2);
    expect(await fx.redis.exists(`${fx.prefix}:a:1`, `${fx.prefix}:a:2`, `${fx.prefix}:b:1`)).toBe(1);
    expect(await dropKeys(fx.redis, `${fx.prefix}:*`)).toBe(1);
  });

  // a Redis holding more keys than one SCAN page (COUNT 1000) answers them over several cursors
  it('walks every SCAN page, not only the first', async () => {
    const keys = Array.from({ length: 2500 }, (_, i) => [`${fx.prefix}:p:${i}`, '1']).flat();
    await fx.redis.mset(...keys);
    expect(await dropKeys(fx.redis, `${fx.prefix}:p:*`)).toBe(2500);
    expect(await fx.redis.exists(`${fx.prefix}:p:0`, `${fx.prefix}:p:2499`)).toBe(0);
  });

  it('fails on a key it could not delete, rather than count it deleted', async () => {
    await fx.redis.set(`${fx.prefix}:c:1`, 'not a number');
    // a pipeline whose UNLINK is answered with an error (INCR of text stands in for it)
    const failing = new Proxy(fx.redis as Redis, {
      get(target, prop, receiver) {
        if (prop !== 'pipeline') return Reflect.get(target, prop, receiver);
        return () => {
          const p = target.pipeline();
          p.unlink = ((k: string) => p.incr(k)) as typeof p.unlink;
          return p;
        };
      },
    });
    await expect(dropKeys(failing as unknown as RedisClient, `${fx.prefix}:c:*`)).rejects.toThrow(/not an integer/);
  });
});
