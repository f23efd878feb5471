// A serve worker caches each satellite key it checked for AUTH_CACHE_MS. Only the worker that served a remove
// or rotation used to drop its copy: every other worker, and all of them after a `referral-manager satellites`
// command, kept a removed satellite's key (or one a leak made its owner retire without grace) for that long.
import { Client, Pool } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from './helpers/cli.js';
import { ADMIN_KEY, call, connectionPerWorker, privateRedis, serve, testCluster, type Served } from './helpers/http.js';
import { directClients, dropSharedPrefixes, SHARED_REDIS_URL, testPrefix } from './helpers/redis.js';
import { lateSubscriberProxy } from './helpers/redis-proxy.js';
import { loadConfig } from '../src/config.js';
import { startServer } from '../src/http/server.js';
import { createRedis, type RedisClient } from '../src/store/redis.js';
import { SatelliteKeys } from '../src/store/satellites.js';

const prefix = testPrefix('auth-cache');
let server: Served;
/** a keep-alive connection to each of the 2 workers, by pid */
const workers = new Map<number, Client>();

const pidOf = async (c: Client) => (await call(c, 'GET', '/healthz')).body.pid as number;

const admin = async (method: string, path: string, body?: unknown) => await call([...workers.values()][0]!, method, path, { key: ADMIN_KEY, body });
const cli = async (...args: string[]) => {
  const run = await runCli(['satellites', ...args], { KEY_PREFIX: prefix });
  expect(run.code, run.stderr).toBe(0);
  return run.stdout;
};

/** Each worker's status for `key`, polled until every one answers `status` or 15 s passed (far below the cache's 10 minutes). */
async function statusOnEachWorker(key: string, status: number): Promise<number[]> {
  const ask = async () => await Promise.all([...workers.values()].map(async (c) => (await call(c, 'GET', '/v1/users/u/tokens', { key })).status));
  let seen = await ask();
  for (const end = Date.now() + 15_000; seen.some((s) => s !== status) && Date.now() < end; seen = await ask()) await new Promise((r) => setTimeout(r, 100));
  return seen;
}

/**
 * The indexes of `nodes` holding a subscription to the registry's notices under `keyPrefix`, once `n` are held on
 * them together (polled up to 15 s).
 */
async function listenersOn(nodes: RedisClient[], keyPrefix: string, n: number): Promise<number[]> {
  const channel = new SatelliteKeys(keyPrefix).retired();
  const counts = async () => await Promise.all(nodes.map(async (r) => Number(((await r.pubsub('NUMSUB', channel)) as [string, number])[1])));
  const sum = (c: number[]) => c.reduce((a, b) => a + b, 0);
  let seen = await counts();
  for (const end = Date.now() + 15_000; sum(seen) < n && Date.now() < end; seen = await counts()) await new Promise((r) => setTimeout(r, 100));
  expect(sum(seen)).toBe(n);
  return seen.flatMap((c, i) => (c > 0 ? [i] : []));
}

/** Waits (up to 15 s) until `n` connections listen for the registry's notices under `keyPrefix`, on the Redis servers at `urls` together. */
async function subscribed(urls: string[], keyPrefix: string, n: number): Promise<void> {
  const nodes = urls.map((redisUrl) => createRedis({ redisUrl, redisClusterNodes: [] }));
  try {
    await listenersOn(nodes, keyPrefix, n);
  } finally {
    for (const r of nodes) r.disconnect();
  }
}

/** The key of a new satellite `id`, served once on `pool`, and so cached by its worker. */
async function cachedOn(pool: Pool, id: string): Promise<string> {
  const { apiKey } = (await call(pool, 'POST', '/v1/admin/satellites', { key: ADMIN_KEY, body: { id } })).body;
  expect((await call(pool, 'GET', '/v1/users/u/tokens', { key: apiKey })).status).toBe(200);
  return apiKey;
}

/** `key`'s status on `pool`, polled while it is 200, for up to 15 s (far below the cache's 10 minutes). */
async function refusedSoon(pool: Pool, key: string): Promise<number> {
  const list = async () => (await call(pool, 'GET', '/v1/users/u/tokens', { key })).status;
  let status = await list();
  for (const end = Date.now() + 15_000; status === 200 && Date.now() < end; status = await list()) await new Promise((r) => setTimeout(r, 100));
  return status;
}

/** Removes satellite `id` with the CLI on the Redis of `env`, then expects `key` refused on `pool` soon (refusedSoon). */
async function removedByCli(pool: Pool, id: string, key: string, env: Record<string, string>): Promise<void> {
  const run = await runCli(['satellites', 'remove', id], { KEY_PREFIX: 'rm-test', ...env });
  expect(run.code, run.stderr).toBe(0);
  expect(await refusedSoon(pool, key)).toBe(401);
}

let satellites = 0;

/** A new satellite whose key both workers have served, and so cache: its id and key. */
async function cachedSatellite(): Promise<[string, string]> {
  const id = `sat-${++satellites}`;
  const r = await admin('POST', '/v1/admin/satellites', { id });
  expect(r.status).toBe(201);
  expect(await statusOnEachWorker(r.body.apiKey, 200)).toEqual([200, 200]);
  return [id, r.body.apiKey];
}

describe('a key cached by every serve worker', () => {
  beforeAll(async () => {
    // 10 minutes: a key still answered 200 a few seconds after its end can only come from a worker's cache
    server = await serve({ KEY_PREFIX: prefix, AUTH_CACHE_MS: '600000' }, 2, 0);
    for (const [pid, c] of await connectionPerWorker(server.url, 2, pidOf, 200)) workers.set(pid, c);
    await subscribed([SHARED_REDIS_URL], prefix, 2);
  }, 120_000); // up to 200 connections to find both workers: slow on a loaded machine

  // each status read on a connection came from the worker it was found on, so from both
  afterEach(async () => expect(await Promise.all([...workers.values()].map(pidOf))).toEqual([...workers.keys()]));

  afterAll(async () => {
    await Promise.all([...workers.values()].map((c) => c.destroy()));
    expect(await server?.stop()).toBe(0);
    await dropSharedPrefixes(prefix);
  });

  it.each([
    ['the admin route (on one of the workers)', async (id: string) => expect((await admin('DELETE', `/v1/admin/satellites/${id}`)).status).toBe(200)],
    ['the CLI (no worker hears of it over HTTP)', async (id: string) => void (await cli('remove', id))],
  ])('is refused by every worker soon after its satellite is removed through %s', async (_, remove) => {
    const [id, key] = await cachedSatellite();
    await remove(id);
    expect(await statusOnEachWorker(key, 401)).toEqual([401, 401]);
  });

  it.each([
    ['the admin route (on one of the workers)', async (id: string) => (await admin('POST', `/v1/admin/satellites/${id}/rotate-key`, { graceMs: 0 })).body.apiKey as string],
    ['the CLI (no worker hears of it over HTTP)', async (id: string) => (JSON.parse(await cli('rotate-key', id, '--grace', '0', '--json')) as { apiKey: string }).apiKey],
  ])('is refused by every worker soon after it is rotated without grace through %s; the new key works', async (_, rotate) => {
    const [id, old] = await cachedSatellite();
    const key = await rotate(id);
    expect(await statusOnEachWorker(old, 401)).toEqual([401, 401]);
    expect(await statusOnEachWorker(key, 200)).toEqual([200, 200]);
  });
});

describe('a worker whose Redis restarted', () => {
  // what is published while the worker is away from Redis is lost (AUTH_CACHE_MS then ends the key); after it
  // reconnects it must listen again, or every later remove would wait out the cache too
  it('listens again once it has reconnected: a later remove ends the cached key at once', async () => {
    const redis = await privateRedis();
    await redis.start();
    const server = await serve({ REDIS_URL: redis.url, KEY_PREFIX: 'rm-test', AUTH_CACHE_MS: '600000' });
    const pool = new Pool(server.url, { connections: 1 });
    try {
      const key = await cachedOn(pool, 'sat');
      await redis.stop(); // the AOF keeps the satellite
      await redis.start();
      await subscribed([redis.url], 'rm-test', 1);
      await removedByCli(pool, 'sat', key, { REDIS_URL: redis.url });
    } finally {
      await pool.close();
      await server.stop();
      await redis.dispose();
    }
  });
});

describe('a worker on a Redis Cluster', () => {
  // the subscriber is a node of the cluster's choosing, the CLI publishes on another one: the cluster bus
  // broadcasts it. Then the node its subscription is on is killed and a replica takes over that node's slots:
  // a subscription left on the dead node, or lost with it, would let every later remove wait out the cache
  it('hears of removes made by the CLI at once; still after the node it listens on is killed, and after that node is restarted', async () => {
    const cluster = await testCluster(3, ['--cluster-node-timeout', '1000'], 1);
    const servers = directClients(cluster.nodes);
    const roles = await Promise.all(servers.map(async (s) => (await s.role())[0]));
    // the subscriber starts on one of the seeds: given only masters, killing its node is a failover
    const masters = cluster.nodes.filter((_, i) => roles[i] === 'master');
    const server = await serve({ REDIS_CLUSTER_NODES: masters.join(','), KEY_PREFIX: 'rm-test', AUTH_CACHE_MS: '600000' });
    const pool = new Pool(server.url, { connections: 1 });
    /** the index of the node the worker listens on, among `live` (once one of them has it, up to 15 s) */
    const listener = async (live: number[]) => live[(await listenersOn(live.map((i) => servers[i]!), 'rm-test', 1))[0]!]!;
    const nodes = (indexes: number[]) => ({ REDIS_CLUSTER_NODES: indexes.map((i) => cluster.nodes[i]!).join(',') });
    try {
      const [now, first, second] = [await cachedOn(pool, 'sat-0'), await cachedOn(pool, 'sat-1'), await cachedOn(pool, 'sat-2')];
      const all = cluster.nodes.map((_, i) => i);
      const killed = await listener(all);
      await removedByCli(pool, 'sat-0', now, nodes(all));
      expect(roles[killed]).toBe('master');
      await cluster.signal(killed, 'SIGKILL');
      const live = all.filter((i) => i !== killed);
      await listener(live);
      // the CLI waits for the replica to take the slot over
      await removedByCli(pool, 'sat-1', first, nodes(live));
      await cluster.restart(killed);
      await removedByCli(pool, 'sat-2', second, nodes(all));
    } finally {
      for (const s of servers) s.disconnect();
      await pool.close();
      await server.stop();
      await cluster.stop();
    }
  }, 60_000);
});

describe('a worker starting', () => {
  // a key it cached before it listened for notices would miss a remove made in that moment, and live on for the TTL
  it('listens for the notices before it serves: it starts once Redis confirmed the subscription', async () => {
    const own = testPrefix('auth-start');
    // the connection that subscribes reaches Redis 1.5 s late; the others at once
    const proxy = await lateSubscriberProxy(SHARED_REDIS_URL, 1500);
    const redis = createRedis({ redisUrl: SHARED_REDIS_URL, redisClusterNodes: [] });
    try {
      const server = await startServer(loadConfig({ host: '127.0.0.1', port: 0, keyPrefix: own, adminKey: ADMIN_KEY }, { REDIS_URL: proxy.url }));
      const listening = Number(((await redis.pubsub('NUMSUB', new SatelliteKeys(own).retired())) as [string, number])[1]);
      await server.close();
      expect(listening).toBe(1);
    } finally {
      redis.disconnect();
      await proxy.close();
      await dropSharedPrefixes(own);
    }
  });
});
