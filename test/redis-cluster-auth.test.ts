import { Pool } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasRedisServer, type RedisClusterHandle } from '../bench/redis-server.js';
import { runCli } from './helpers/cli.js';
import { call, serve, testCluster } from './helpers/http.js';
import { testPrefix } from './helpers/redis.js';
import { reachesRedis } from './helpers/tls.js';

/**
 * A managed Redis Cluster asks for a password (`requirepass`, the nodes' `masterauth` for their replicas) or an
 * ACL user. The seeds carry it as REDIS_URL does, and every node is reached with it: given one seed, the nodes
 * the slot map names too. What goes to a log, /readyz or the terminal never shows it.
 */
describe.skipIf(!hasRedisServer())('Redis Cluster that asks for a password', () => {
  // as a generated one may be: characters a URL must percent-encode
  const PASSWORD = 's3cr3t@p/w%x';
  const USER = 'rm-app';
  const USER_PASSWORD = 'us3r-s3cr3t';
  const WRONG = 'wr0ng-s3cr3t';
  const secrets = [PASSWORD, encodeURIComponent(PASSWORD), USER_PASSWORD, WRONG];
  const noSecret = (text: string) => {
    for (const s of secrets) expect(text).not.toContain(s);
  };
  let cluster: RedisClusterHandle;
  /** one seed: the other masters are found in the slot map */
  const seed = (credentials: string) => `redis://${credentials}@${cluster.nodes[0]}`;

  beforeAll(async () => {
    const acl = ['--user', USER, 'on', `>${USER_PASSWORD}`, '~*', '&*', '+@all'];
    cluster = await testCluster(3, ['--requirepass', PASSWORD, '--masterauth', PASSWORD, ...acl], 0, { password: PASSWORD });
  }, 60_000);
  afterAll(() => cluster?.stop());

  it('serve redeems with the password in the seed, /readyz finds every master, and the CLI reads the same cluster', async () => {
    const env = { REDIS_CLUSTER_NODES: seed(`:${encodeURIComponent(PASSWORD)}`), KEY_PREFIX: testPrefix('cluster-auth') };
    const { ready, output } = await reachesRedis(env, { quiet: /unreachable|NOAUTH|WRONGPASS/ });
    expect(Object.values(ready.masters)).toEqual(['ok', 'ok', 'ok']);
    noSecret(output);
    const config = await runCli(['config'], env);
    expect(config.stdout).toMatch(new RegExp(`^REDIS_CLUSTER_NODES +\\["redis://:\\*\\*\\*@${cluster.nodes[0]}"\\]$`, 'm'));
    noSecret(config.stdout + config.stderr);
  });

  it('reaches it as an ACL user', async () => {
    const env = { REDIS_CLUSTER_NODES: seed(`${USER}:${USER_PASSWORD}`), KEY_PREFIX: testPrefix('cluster-acl') };
    const add = await runCli(['satellites', 'add', '--id', 'sat-a', '--json'], env);
    expect(add.stderr).toBe('');
    expect(add.code).toBe(0);
    const stats = await runCli(['stats', '--json'], env);
    expect(stats.stderr).toBe('');
    expect(stats.code).toBe(0);
  });

  it('a wrong password or none: the CLI gives up saying so, serve logs it and /readyz names it, the password shown nowhere', async () => {
    for (const [credentials, said] of [[`:${WRONG}`, /WRONGPASS invalid username-password pair/], [`${USER}:${WRONG}`, /WRONGPASS invalid username-password pair/]] as const) {
      const run = await runCli(['stats'], { REDIS_CLUSTER_NODES: seed(credentials) });
      expect(run.code).toBe(1);
      expect(run.stderr).toMatch(said);
      expect(run.stderr.trim()).toMatch(new RegExp(`^error: cannot reach Redis \\(cluster redis://(${USER})?:<password>@${cluster.nodes[0]}\\) within 10 s: `));
      noSecret(run.stderr);
    }
    const none = await runCli(['stats'], { REDIS_CLUSTER_NODES: cluster.nodes[0]! });
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/NOAUTH Authentication required/);

    const server = await serve({ REDIS_CLUSTER_NODES: seed(`:${WRONG}`), KEY_PREFIX: testPrefix('cluster-wrongpass') });
    try {
      const pool = new Pool(server.url, { connections: 1 });
      const ready = await call(pool, 'GET', '/readyz');
      await pool.close();
      expect(ready.status).toBe(503);
      expect(ready.body.error).toMatch(/WRONGPASS invalid username-password pair/);
      noSecret(JSON.stringify(ready.body));
      expect(server.output()).toMatch(/Redis unreachable \([^)]*WRONGPASS invalid username-password pair/);
    } finally {
      await server.stop();
    }
    noSecret(server.output());
  });
});
