import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, inject } from 'vitest';
import { createRedis, type RedisClient } from '../../src/store/redis.js';
import { dropPrefix } from '../../src/store/key-walk.js';
import { TokenStore } from '../../src/store/token-store.js';
import { TokenEngine } from '../../src/tokens/engine.js';
import { privateRedis } from './http.js';
import { NO_REPLICA_WAIT } from '../../src/store/replicas.js';
import { SHARED_REDIS_URL } from './services.js';

export { SHARED_REDIS_URL };

/** Whether this machine has the IPv6 loopback address ::1, for private servers on it (a container without IPv6 has none). */
export const hasIpv6Loopback = Object.values(os.networkInterfaces()).some((addresses) => addresses?.some((a) => a.family === 'IPv6' && a.address === '::1'));

/**
 * A key prefix no other test run uses, so tests never trample each other or a developer's data; the run's id
 * in it lets the run find what a test left behind (test/helpers/leaks.ts).
 */
export function testPrefix(label = 't'): string {
  // KEY_PREFIX takes 32 characters at most: the longest label (14) and a suffix a test adds (`-none`) fit
  return `t${inject('testRun')}-${label}-${randomBytes(4).toString('hex')}`;
}

export interface EngineFixture {
  redis: RedisClient;
  engine: TokenEngine;
  store: TokenStore;
  prefix: string;
  close(): Promise<void>;
}

export async function engineFixture(opts: { redis?: () => RedisClient; label?: string } = {}): Promise<EngineFixture> {
  const redis = opts.redis ? opts.redis() : createRedis({ redisUrl: SHARED_REDIS_URL, redisClusterNodes: [] });
  const prefix = testPrefix(opts.label);
  const store = new TokenStore(redis, prefix, NO_REPLICA_WAIT);
  await store.preload();
  return {
    redis,
    store,
    engine: new TokenEngine(store),
    prefix,
    async close() {
      await dropPrefix(redis, prefix);
      redis.disconnect();
    },
  };
}

/**
 * An engine fixture (key prefix `label`) for the describe block it is called in: made before its tests and
 * removed after them. The fields are set once beforeAll ran.
 */
export function engineFixtureFor(label: string): EngineFixture {
  const fx = {} as EngineFixture;
  beforeAll(async () => void Object.assign(fx, await engineFixture({ label })));
  // made only if its beforeAll did
  afterAll(async () => await fx.close?.());
  return fx;
}

/** A redis-server of the test's own (free port, AOF on) and a client on it, for what would disturb a shared one. */
export async function privateRedisClient(): Promise<{ server: Awaited<ReturnType<typeof privateRedis>>; redis: RedisClient; close(): Promise<void> }> {
  const server = await privateRedis();
  await server.start();
  const redis = createRedis({ redisUrl: server.url, redisClusterNodes: [] });
  return {
    server,
    redis,
    async close() {
      redis.disconnect();
      await server.dispose();
    },
  };
}

/** Removes every key under each prefix from the shared Redis, on a connection of its own (after a serve's run). */
export async function dropSharedPrefixes(...prefixes: string[]): Promise<void> {
  const redis = createRedis({ redisUrl: SHARED_REDIS_URL, redisClusterNodes: [] });
  try {
    for (const p of prefixes) await dropPrefix(redis, p);
  } finally {
    redis.disconnect();
  }
}

/** A plain connection to each node of a cluster, to set slots and read roles by hand (a killed node's reconnects stay quiet). */
export function directClients(nodes: string[]): Redis[] {
  return nodes.map((n) => new Redis(Number(n.split(':')[1]), n.split(':')[0]!).on('error', () => undefined));
}

export { Redis, dropPrefix };
