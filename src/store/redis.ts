import { Redis, Cluster } from 'ioredis';
import type { Config } from '../config.js';

export type RedisClient = Redis | Cluster;

export interface RedisOptions {
  /** Fail fast while Redis is down (the HTTP layer answers 503) instead of queueing without bound. */
  failFast?: boolean;
  connectionName?: string;
}

/** One factory for standalone and cluster connections, from the shared config. */
export function createRedis(config: Pick<Config, 'redisUrl' | 'redisClusterNodes'>, opts: RedisOptions = {}): RedisClient {
  const common = {
    connectionName: opts.connectionName ?? 'referral-manager',
    enableOfflineQueue: !opts.failFast,
    maxRetriesPerRequest: opts.failFast ? 1 : 20,
    // reconnect forever with capped backoff: a Redis restart must heal without restarting us
    retryStrategy: (times: number) => Math.min(50 * times, 2000),
  };
  if (config.redisClusterNodes.length > 0) {
    return new Cluster(
      config.redisClusterNodes.map((n) => {
        const [host, port] = n.split(':');
        return { host: host!, port: Number(port) };
      }),
      {
        redisOptions: common,
        enableOfflineQueue: common.enableOfflineQueue,
        clusterRetryStrategy: common.retryStrategy,
        scaleReads: 'master',
      },
    );
  }
  return new Redis(config.redisUrl, common);
}

/** The masters to talk to for node-wide commands (SCAN, SCRIPT LOAD, INFO). */
export function masters(client: RedisClient): Redis[] {
  return client instanceof Cluster ? client.nodes('master') : [client];
}

/** Keys matching `pattern` on every master, one SCAN page at a time (never KEYS), with the node that holds them. */
export async function* scanKeys(client: RedisClient, pattern: string, count = 1000): AsyncGenerator<{ node: Redis; keys: string[] }> {
  for (const node of masters(client)) {
    let cursor = '0';
    do {
      const [next, keys] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', count);
      cursor = next;
      if (keys.length) yield { node, keys };
    } while (cursor !== '0');
  }
}

/** Deletes every key under `prefix:` (one UNLINK per key, pipelined: a Cluster node refuses cross-slot UNLINK). */
export async function dropPrefix(client: RedisClient, prefix: string): Promise<void> {
  for await (const { node, keys } of scanKeys(client, `${prefix}:*`)) {
    const p = node.pipeline();
    for (const k of keys) p.unlink(k);
    await p.exec();
  }
}
