import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Redis } from 'ioredis';
import type pg from 'pg';
import { parse } from 'shell-quote';
import { Pool } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasRedisServer, type RedisClusterHandle } from '../bench/redis-server.js';
import { openPostgres, verify } from '../src/snapshot/index.js';
import { createRedis } from '../src/store/redis.js';
import { runCli } from './helpers/cli.js';
import { ADMIN_KEY, call, privateRedis, serve, testCluster, type RestartableRedis, type Served } from './helpers/http.js';
import { testDatabase } from './helpers/pg.js';
import { until } from './helpers/snapshot.js';
import { reachesRedis } from './helpers/tls.js';

/**
 * README's least-privilege ACL user, read from README itself so the line cannot drift from what the code
 * sends: set as written on a private Redis (with a replica, for REDIS_WAIT_REPLICAS), then serve with its
 * snapshot writer and the CLI run as that user, and Redis's ACL LOG must show nothing refused. Refusals
 * ioredis swallows (its INFO ready check, CLIENT SETNAME) and those Lua scripts take under pcall (XINFO)
 * show only there.
 */
const README = readFileSync(path.resolve(import.meta.dirname, '../README.md'), 'utf8');

/** README's `ACL SETUSER` line as Redis arguments, the password replaced by `password`; every argument must survive a shell */
function readmeAcl(password: string): { user: string; prefix: string; args: string[] } {
  const lines = README.split('\n').filter((l) => l.startsWith('ACL SETUSER '));
  expect(lines).toHaveLength(1);
  const words = parse(lines[0]!);
  // an unquoted `>pw`, `~rm:*` or `a|b` is a redirection, a glob or a pipe to a shell: parse gives objects for them
  expect(words.filter((w) => typeof w !== 'string')).toEqual([]);
  const args = (words as string[]).slice(2).map((w) => (w.startsWith('>') ? `>${password}` : w));
  const prefix = /^~(.+):\*$/.exec(args.find((w) => w.startsWith('~'))!)![1]!;
  return { user: args[0]!, prefix, args };
}

/** ACL LOG entries, each as its reason and object (a command, key or channel) */
async function aclLog(admin: Redis): Promise<string[]> {
  const entries = (await admin.call('ACL', 'LOG')) as unknown[][];
  return entries.map((e) => {
    const f: Record<string, unknown> = {};
    for (let i = 0; i < e.length; i += 2) f[String(e[i])] = e[i + 1];
    return `${f.reason} ${f.context} ${f.object}`;
  });
}

describe.skipIf(!hasRedisServer())("README's least-privilege ACL user (private Redis and replica, real Postgres)", () => {
  const ADMIN_PASSWORD = 'adm1n-s3cr3t';
  const USER_PASSWORD = 'acl-us3r-s3cr3t';
  const acl = readmeAcl(USER_PASSWORD);
  let master: RestartableRedis;
  let replica: RestartableRedis;
  let admin: Redis;
  let db: Awaited<ReturnType<typeof testDatabase>>;
  let pgPool: pg.Pool;
  let env: Record<string, string>;

  beforeAll(async () => {
    master = await privateRedis(['--requirepass', ADMIN_PASSWORD]);
    await master.start();
    replica = await privateRedis(['--replicaof', '127.0.0.1', String(master.port), '--masterauth', ADMIN_PASSWORD]);
    await replica.start();
    admin = new Redis(master.port, '127.0.0.1', { password: ADMIN_PASSWORD, lazyConnect: true });
    await admin.connect();
    expect(await admin.call('ACL', 'SETUSER', ...acl.args)).toBe('OK');
    db = await testDatabase();
    pgPool = await openPostgres(db.url);
    env = {
      REDIS_URL: `redis://${acl.user}:${USER_PASSWORD}@127.0.0.1:${master.port}`,
      KEY_PREFIX: acl.prefix,
      DATABASE_URL: db.url,
      REDIS_WAIT_REPLICAS: '1',
      TOKEN_COUNTS_MS: '200',
      LEASE_SWEEP_MS: '200',
      LEASE_SWEEP_GRACE_MS: '0',
    };
    await until(async () => await admin.info('replication'), (info) => /^slave0:.*state=online/m.test(info), 'replica online');
  }, 60_000);
  afterAll(async () => {
    admin?.disconnect();
    await pgPool?.end();
    await db?.drop();
    await replica?.dispose();
    await master?.dispose();
  });

  it('serve, its snapshot writer and the CLI do everything as that user, with nothing refused', async () => {
    let server: Served | undefined = await serve({ ...env, SNAPSHOT: 'true' });
    const http = new Pool(server.url, { connections: 2 });
    try {
      const satA = await call(http, 'POST', '/v1/admin/satellites', { key: ADMIN_KEY, body: { id: 'sat-a' } });
      expect(satA.status, JSON.stringify(satA.body)).toBe(201);
      const satB = await call(http, 'POST', '/v1/admin/satellites', { key: ADMIN_KEY, body: { id: 'sat-b', name: 'B' } });
      const [a, b] = [satA.body.apiKey as string, satB.body.apiKey as string];
      expect((await call(http, 'PATCH', '/v1/admin/satellites/sat-b', { key: ADMIN_KEY, body: { name: 'Bee' } })).status).toBe(200);
      const gen = await call(http, 'POST', '/v1/admin/tokens/generate', { key: ADMIN_KEY, body: { satelliteId: 'sat-a', userIds: ['alice', 'carol'], perUser: 4, campaignId: 'spring' } });
      expect(gen.status, JSON.stringify(gen.body)).toBe(200);
      const mine = gen.body.tokens.filter((t: { userId: string }) => t.userId === 'alice').map((t: { token: string }) => t.token) as string[];
      const [t0, t1, t2, t3] = mine as [string, string, string, string];
      const other = await call(http, 'POST', '/v1/admin/tokens/generate', { key: ADMIN_KEY, body: { satelliteId: 'sat-a', userIds: ['dave'], perUser: 2, campaignId: 'autumn' } });
      expect(other.status).toBe(200);

      expect((await call(http, 'POST', '/v1/tokens/redeem', { key: b, body: { token: t0, userId: 'bob' } })).status).toBe(200);
      const held = await call(http, 'POST', '/v1/tokens/reserve', { key: b, body: { token: t1, reservationId: 'signup-1' } });
      expect(held.status, JSON.stringify(held.body)).toBe(200);
      expect((await call(http, 'POST', '/v1/tokens/complete', { key: b, body: { token: t1, reservationId: held.body.reservationId, userId: 'erin' } })).status).toBe(200);
      const again = await call(http, 'POST', '/v1/tokens/reserve', { key: b, body: { token: t2 } });
      expect((await call(http, 'POST', '/v1/tokens/release', { key: b, body: { token: t2, reservationId: again.body.reservationId } })).status).toBe(200);
      // a lease of 1 ms, given back by the lapse sweep (LEASE_SWEEP_GRACE_MS 0)
      expect((await call(http, 'POST', '/v1/tokens/reserve', { key: b, body: { token: t3, leaseMs: 1 } })).status).toBe(200);
      await until(async () => (await pgPool.query("SELECT count(*)::int AS n FROM token_events WHERE token = $1 AND type = 'lapsed'", [t3])).rows[0].n, (n) => n === 1, 'the lapsed lease in Postgres');
      expect((await call(http, 'GET', `/v1/tokens/${t2}`, { key: b })).body.state).toBe('unredeemed');
      expect((await call(http, 'GET', '/v1/users/alice/tokens', { key: a })).status).toBe(200);
      expect((await call(http, 'GET', '/v1/users/alice/redemptions', { key: a })).body.redemptions).toHaveLength(2);
      // a failure the rate limiter counts
      expect((await call(http, 'POST', '/v1/tokens/redeem', { key: b, body: { token: '00000000-0000-4000-8000-000000000000', userId: 'mallory' } })).status).toBe(404);

      const revoke = (body: unknown) => call(http, 'POST', '/v1/admin/tokens/revoke', { key: ADMIN_KEY, body });
      expect((await revoke({ tokens: [t2] })).body.revoked).toBe(1);
      expect((await revoke({ campaignId: 'autumn' })).body.revoked).toBe(2);
      expect((await revoke({ satelliteId: 'sat-a', userId: 'carol' })).body.revoked).toBe(4);
      expect((await call(http, 'DELETE', '/v1/users/alice/tokens', { key: a })).status).toBe(200);
      expect((await call(http, 'POST', '/v1/admin/tokens/purge', { key: ADMIN_KEY, body: { madeBefore: 1, dryRun: true } })).status).toBe(200);
      expect((await call(http, 'GET', '/v1/admin/stats', { key: ADMIN_KEY })).status).toBe(200);
      // a key retired without grace: published to every worker
      expect((await call(http, 'POST', '/v1/admin/satellites/sat-b/rotate-key', { key: ADMIN_KEY, body: { graceMs: 0 } })).status).toBe(200);
      expect((await call(http, 'GET', `/v1/tokens/${t0}`, { key: b })).status).toBe(401);

      // the registry is copied once a second, the events as they come
      const asUser = createRedis({ redisUrl: env.REDIS_URL!, redisClusterNodes: [] });
      try {
        await until(() => verify(asUser, pgPool, acl.prefix), (r) => r.differences === 0 && r.lagEvents === 0, 'Postgres caught up');
      } finally {
        asUser.disconnect();
      }
      const ready = await call(http, 'GET', '/readyz');
      expect(ready.status, JSON.stringify(ready.body)).toBe(200);
      expect(ready.body.redis).toBe('up');
      expect((await call(http, 'GET', '/metrics')).body).toMatch(/^rm_tokens\{/m);
    } finally {
      await http.close();
      expect(await server.stop()).toBe(0);
    }
    expect(server.output()).not.toMatch(/NOPERM|Skipping the ready check/);
    server = undefined;

    const stats = await runCli(['stats', '--json'], env);
    expect(stats.stderr).toBe('');
    expect(JSON.parse(stats.stdout).satellites['sat-a'].redeemed).toBe(2);
    const checked = await runCli(['verify', '--json'], env);
    expect(checked.stderr).toBe('');
    expect(JSON.parse(checked.stdout)).toMatchObject({ tokens: 10, differences: 0 });
    const restore = await runCli(['restore', '--from-postgres', '--force'], env);
    expect(restore.stderr, restore.stdout).toBe('');
    expect(restore.code).toBe(0);
    expect(restore.stdout).toContain(`restored 10 tokens into prefix "${acl.prefix}"`);
    const after = await runCli(['verify', '--json'], env);
    expect(after.code, after.stderr).toBe(0);
    expect(JSON.parse(after.stdout)).toMatchObject({ tokens: 10, differences: 0 });

    // ioredis sends CLIENT SETINFO on Redis 7.2 and later, and ignores its refusal (README: 7.0 refuses the name in ACL SETUSER)
    expect((await aclLog(admin)).filter((e) => !e.endsWith(' client|setinfo'))).toEqual([]);
  }, 180_000);

  it('without +info /readyz is 503 saying the user may not run INFO, not that Redis is down', async () => {
    const args = ['rm-noinfo', ...acl.args.slice(1).filter((w) => w !== '+info')];
    expect(args).toHaveLength(acl.args.length - 1);
    expect(await admin.call('ACL', 'SETUSER', ...args)).toBe('OK');
    const server = await serve({ ...env, REDIS_URL: `redis://rm-noinfo:${USER_PASSWORD}@127.0.0.1:${master.port}`, REDIS_WAIT_REPLICAS: '0' });
    const http = new Pool(server.url, { connections: 1 });
    try {
      const ready = await call(http, 'GET', '/readyz');
      expect(ready.status).toBe(503);
      expect(ready.body.redis).toBe('up');
      expect(ready.body.error).toMatch(/^NOPERM .*'info' command: the Redis user must be granted it \(README, "A least-privilege ACL user"\)$/);
    } finally {
      await http.close();
      await server.stop();
      await admin.call('ACL', 'DELUSER', 'rm-noinfo');
    }
  });

  it('the user reaches nothing outside the prefix: keys, channels, and commands not listed', async () => {
    const user = new Redis(master.port, '127.0.0.1', { username: acl.user, password: USER_PASSWORD, lazyConnect: true });
    await user.connect();
    try {
      expect(await user.set(`${acl.prefix}:probe`, '1')).toBe('OK');
      expect(await user.del(`${acl.prefix}:probe`)).toBe(1);
      for (const key of ['other:probe', `${acl.prefix}x:probe`, `{${acl.prefix}}:probe`]) {
        await expect(user.set(key, '1')).rejects.toThrow(/^NOPERM/);
        await expect(user.get(key)).rejects.toThrow(/^NOPERM/);
      }
      await expect(user.publish('other:channel', 'x')).rejects.toThrow(/^NOPERM/);
      await expect(user.keys('*')).rejects.toThrow(/^NOPERM/);
      await expect(user.config('GET', 'maxmemory-policy')).rejects.toThrow(/^NOPERM/);
      await expect(user.flushdb()).rejects.toThrow(/^NOPERM/);
      await expect(user.eval("return redis.call('SET', 'other:probe', '1')", 0)).rejects.toThrow(/can't access/);
    } finally {
      user.disconnect();
    }
  });
});

describe.skipIf(!hasRedisServer())("README's least-privilege ACL user on a Redis Cluster (set on every node)", () => {
  const ADMIN_PASSWORD = 'adm1n-s3cr3t';
  const USER_PASSWORD = 'acl-us3r-s3cr3t';
  const acl = readmeAcl(USER_PASSWORD);
  let cluster: RedisClusterHandle;
  let admins: Redis[] = [];
  const seeds = (user: string) => cluster.nodes.map((n) => `redis://${user}:${USER_PASSWORD}@${n}`).join(',');
  const setUser = (args: string[]) => Promise.all(admins.map((a) => a.call('ACL', 'SETUSER', ...args)));

  beforeAll(async () => {
    cluster = await testCluster(3, ['--requirepass', ADMIN_PASSWORD, '--masterauth', ADMIN_PASSWORD], 0, { password: ADMIN_PASSWORD });
    admins = cluster.nodes.map((n) => new Redis(Number(n.split(':')[1]), '127.0.0.1', { password: ADMIN_PASSWORD }));
    await setUser(acl.args);
  }, 60_000);
  afterAll(async () => {
    for (const a of admins) a.disconnect();
    await cluster?.stop();
  });

  it('serve redeems, /readyz finds every master, the CLI reads and exports, nothing refused on any node', async () => {
    const env = { REDIS_CLUSTER_NODES: seeds(acl.user), KEY_PREFIX: acl.prefix };
    const { ready } = await reachesRedis(env, { quiet: /NOPERM|Skipping the ready check/ });
    expect(Object.values(ready.masters)).toEqual(['ok', 'ok', 'ok']);
    // export walks every master's keys (SCAN) and checks the slot map around it (CLUSTER SLOTS, CLUSTER NODES)
    const exported = await runCli(['export', '--format', 'jsonl'], env);
    expect(exported.stderr).toBe('');
    expect(exported.stdout.trim().split('\n')).toHaveLength(1);
    for (const a of admins) expect((await aclLog(a)).filter((e) => !e.endsWith(' client|setinfo'))).toEqual([]);
  }, 120_000);

  it('without +info /readyz is 503 saying the user may not run INFO, not that every master is down', async () => {
    await setUser(['rm-noinfo', ...acl.args.slice(1).filter((w) => w !== '+info')]);
    const server = await serve({ REDIS_CLUSTER_NODES: seeds('rm-noinfo'), KEY_PREFIX: acl.prefix });
    const http = new Pool(server.url, { connections: 1 });
    try {
      const ready = await call(http, 'GET', '/readyz');
      expect(ready.status).toBe(503);
      expect(ready.body.redis).toBe('up');
      expect(ready.body.error).toMatch(/^NOPERM .*'info' command: the Redis user must be granted it/);
      // as every Cluster reply of /readyz: each master, each answering CLUSTER INFO
      expect(Object.values(ready.body.masters)).toEqual(['ok', 'ok', 'ok']);
    } finally {
      await http.close();
      await server.stop();
    }
  });
});
