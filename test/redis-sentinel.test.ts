import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, hasRedisServer, kill, reaped, waitForOutput } from '../bench/redis-server.js';
import { AdminClient } from '../src/client/admin.js';
import { SatelliteClient } from '../src/client/index.js';
import { createRedis, subscriberOf, whyNotConnected, type RedisClient } from '../src/store/redis.js';
import { SatelliteKeys } from '../src/store/satellites.js';
import { runCli } from './helpers/cli.js';
import { ADMIN_KEY, failure, privateRedis, serve, type RestartableRedis } from './helpers/http.js';
import { testDatabase } from './helpers/pg.js';
import { hasIpv6Loopback, Redis, testPrefix } from './helpers/redis.js';
import { caughtUp, until } from './helpers/snapshot.js';
import { hasOpenssl, makeCertificates, makeClientCertificate, reachesRedis, redeemOne, startTlsRedis } from './helpers/tls.js';

const NAME = 'rm-master';
// the master's and its replicas' password, and the sentinels' own (characters a URL must percent-encode)
const MASTER_PASSWORD = 'm@ster/s3cret';
const SENTINEL_PASSWORD = 's3ntinel%pw';
// the password of README's least-privilege sentinel user, which the manager reaches the sentinels as
const CLIENT_PASSWORD = 'cl1ent:pw';
const noSecret = (text: string) => {
  for (const s of [MASTER_PASSWORD, SENTINEL_PASSWORD, CLIENT_PASSWORD].flatMap((p) => [p, encodeURIComponent(p)])) expect(text).not.toContain(s);
};

/** README's sentinel.conf line of the sentinels' least-privilege user, as written there, its password replaced */
function readmeSentinelUser(): { user: string; line: string } {
  const lines = readFileSync(path.resolve(import.meta.dirname, '../README.md'), 'utf8').split('\n').filter((l) => /^user \S+ on /.test(l));
  expect(lines).toHaveLength(1);
  return { user: lines[0]!.split(' ')[1]!, line: lines[0]!.replace(/ >\S+/, ` >${CLIENT_PASSWORD}`) };
}
const SENTINEL_USER = readmeSentinelUser();

/**
 * A redis-server in Sentinel mode of its own (free port, config in a temp dir: Sentinel rewrites it) watching
 * `masterPort` with the sentinels' and the master's passwords; `tlsDir`: over TLS only, with the certificates
 * there (makeCertificates), the master watched by the name its certificate carries; `clientAuth`: taking only
 * clients with a certificate of that CA (it shows the master its server.crt); `ipv6`: on ::1 only, the master
 * watched at ::1.
 */
async function startSentinel(masterPort: number, tlsDir?: string, clientAuth = false, ipv6 = false) {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), 'rm-sentinel-'));
  const conf = path.join(dir, 'sentinel.conf');
  const lines = [`port ${tlsDir ? 0 : port}`, `bind ${ipv6 ? '::1' : '127.0.0.1'}`, `dir ${dir}`, `requirepass "${SENTINEL_PASSWORD}"`, `sentinel sentinel-pass "${SENTINEL_PASSWORD}"`, SENTINEL_USER.line];
  if (tlsDir) {
    const f = (name: string) => path.join(tlsDir, name);
    lines.push(`tls-port ${port}`, `tls-cert-file ${f('server.crt')}`, `tls-key-file ${f('server.key')}`, `tls-ca-cert-file ${f('ca.crt')}`, `tls-auth-clients ${clientAuth ? 'yes' : 'no'}`, 'tls-replication yes', 'sentinel resolve-hostnames yes', 'sentinel announce-hostnames yes');
  }
  // quorum 2 of 3; a master silent for 1 s is down, and a failover that stalls is tried again after 3 s
  lines.push(`sentinel monitor ${NAME} ${tlsDir ? 'localhost' : ipv6 ? '::1' : '127.0.0.1'} ${masterPort} 2`, `sentinel auth-pass ${NAME} "${MASTER_PASSWORD}"`, `sentinel down-after-milliseconds ${NAME} 1000`, `sentinel failover-timeout ${NAME} 3000`, `sentinel parallel-syncs ${NAME} 2`);
  writeFileSync(conf, `${lines.join('\n')}\n`);
  // dies with the test process too: a run ended before afterAll left sentinels running
  const proc: ChildProcess = reaped(spawn('redis-server', [conf, '--sentinel'], { stdio: ['ignore', 'pipe', 'pipe'] }));
  await waitForOutput(proc, /\+monitor master/, 'redis-sentinel');
  return {
    address: ipv6 ? `[::1]:${port}` : `127.0.0.1:${port}`,
    /** SIGSTOP / SIGCONT: a sentinel that hangs, its connections accepted by the kernel and never answered */
    signal(sig: NodeJS.Signals) {
      proc.kill(sig);
    },
    async stop() {
      await kill(proc, 'SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A master, two replicas of it and three sentinels watching it, each a process of its own; `stop` ends them all. */
async function sentinelSet() {
  const stops: (() => Promise<void>)[] = [];
  try {
    const auth = ['--requirepass', MASTER_PASSWORD, '--masterauth', MASTER_PASSWORD];
    const master = await privateRedis(auth);
    stops.push(() => master.dispose());
    await master.start();
    const replicas: RestartableRedis[] = [];
    for (let i = 0; i < 2; i++) {
      const replica = await privateRedis(['--replicaof', '127.0.0.1', String(master.port), ...auth]);
      stops.push(() => replica.dispose());
      await replica.start();
      replicas.push(replica);
    }
    const processes: Awaited<ReturnType<typeof startSentinel>>[] = [];
    for (let i = 0; i < 3; i++) {
      const s = await startSentinel(master.port);
      stops.push(() => s.stop());
      processes.push(s);
    }
    const sentinels = processes.map((s) => s.address);
    const nodes = [master, ...replicas];
    /** the one the sentinels name as the master now (a failover moves it) */
    const current = async () => {
      const [, port] = (await askSentinel(sentinels[0]!, 'GET-MASTER-ADDR-BY-NAME', NAME)) as [string, string];
      return nodes.find((n) => n.port === Number(port))!;
    };
    /** until every sentinel knows the others and `replicas` replicas (a failover needs a quorum, a leader and one to promote) */
    const settled = async (replicas: number) => {
      for (const address of sentinels) {
        await until(
          async () => Object.fromEntries(chunk((await askSentinel(address, 'MASTER', NAME)) as string[])),
          (m) => m['num-other-sentinels'] === '2' && m['num-slaves'] === String(replicas) && m['flags'] === 'master',
          `sentinel ${address} knowing the others and ${replicas} replicas`,
          20_000,
        );
      }
    };
    await settled(2);
    return { master, replicas, sentinels, processes, current, settled, stop: () => Promise.all(stops.map((stop) => stop())) };
  } catch (err) {
    await Promise.all(stops.map((stop) => stop()));
    throw err;
  }
}

/** `SENTINEL ...args` asked of the sentinel at `address`, on a connection of its own */
async function askSentinel(address: string, ...args: string[]): Promise<unknown> {
  const s = new Redis({ port: Number(address.split(':')[1]), host: '127.0.0.1', password: SENTINEL_PASSWORD });
  try {
    return await s.call('SENTINEL', ...args);
  } finally {
    s.disconnect();
  }
}

const chunk = (flat: string[]): [string, string][] => Array.from({ length: flat.length / 2 }, (_, i) => [flat[2 * i]!, flat[2 * i + 1]!]);

async function readyz(url: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const r = await fetch(`${url}/readyz`);
  return { status: r.status, body: (await r.json()) as Record<string, unknown> };
}

describe.skipIf(!hasRedisServer())('Redis Sentinel (a master, two replicas, three sentinels; skipped without redis-server)', () => {
  let set: Awaited<ReturnType<typeof sentinelSet>>;
  let env: Record<string, string>;
  let probe: RedisClient;

  beforeAll(async () => {
    set = await sentinelSet();
    // REDIS_URL's password is the master's (its host is not used), the seeds' the sentinels' (README's user)
    const seeds = set.sentinels.map((s) => `redis://${SENTINEL_USER.user}:${encodeURIComponent(CLIENT_PASSWORD)}@${s}`);
    env = { REDIS_URL: `redis://:${encodeURIComponent(MASTER_PASSWORD)}@127.0.0.1:1`, REDIS_SENTINELS: seeds.join(','), REDIS_SENTINEL_NAME: NAME };
    probe = createRedis({ redisUrl: env.REDIS_URL!, redisClusterNodes: [], redisSentinels: seeds, redisSentinelName: NAME });
  }, 60_000);
  afterAll(async () => {
    await set?.stop();
    probe?.disconnect();
  });

  it('refuses a Sentinel setting without its other half, or with a Cluster, in one line', async () => {
    for (const [given, said] of [
      [{ REDIS_SENTINELS: '127.0.0.1:26379' }, 'REDIS_SENTINEL_NAME: not set, but REDIS_SENTINELS is'],
      [{ REDIS_SENTINEL_NAME: NAME }, 'REDIS_SENTINEL_NAME: set, but REDIS_SENTINELS is not'],
      [{ REDIS_SENTINELS: '127.0.0.1:26379', REDIS_SENTINEL_NAME: NAME, REDIS_CLUSTER_NODES: '127.0.0.1:7000' }, 'REDIS_SENTINELS: set together with REDIS_CLUSTER_NODES'],
    ] as const) {
      const run = await runCli(['stats'], given);
      expect(run.code, run.stderr).toBe(2);
      expect(run.stderr).toContain(said);
    }
    // the seeds as `config` echoes them: the sentinels' password masked, as REDIS_URL's
    const config = await runCli(['config'], env);
    expect(config.stdout).toMatch(new RegExp(`^REDIS_SENTINELS +\\["redis://${SENTINEL_USER.user}:\\*\\*\\*@${set.sentinels[0]}",`, 'm'));
    expect(config.stdout).toMatch(new RegExp(`^REDIS_SENTINEL_NAME +"${NAME}"$`, 'm'));
    noSecret(config.stdout + config.stderr);
  });

  it('serve generates and redeems through the master the sentinels name, /readyz names it, and the CLI reaches the same Redis', async () => {
    const prefix = testPrefix('sentinel');
    const served = await serve({ ...env, KEY_PREFIX: prefix });
    try {
      const admin = new AdminClient({ url: served.url, apiKey: ADMIN_KEY });
      const { apiKey } = await admin.addSatellite({ id: 'sat-s' });
      const [token] = (await admin.generate({ satelliteId: 'sat-s', userIds: ['alice'], perUser: 1 })).tokens.map((t) => t.token);
      expect((await new SatelliteClient({ url: served.url, apiKey }).redeem(token!, 'bob')).state).toBe('redeemed');
      expect(await readyz(served.url)).toMatchObject({ status: 200, body: { ready: true, redis: 'up', master: `127.0.0.1:${set.master.port}` } });
    } finally {
      expect(await served.stop()).toBe(0);
    }
    expect(served.output()).not.toMatch(/unreachable|NOAUTH|WRONGPASS/);
    noSecret(served.output());
    const stats = await runCli(['stats', '--json'], { ...env, KEY_PREFIX: prefix });
    expect(stats.stderr).toBe('');
    expect(JSON.parse(stats.stdout).satellites['sat-s'].redeemed).toBe(1);
  });

  it('no sentinel answering, a master name they do not know, or a wrong sentinel password: /readyz and the CLI say which, no password shown', async () => {
    const nobody = `127.0.0.1:${await freePort()}`;
    const cases = [
      [{ REDIS_SENTINELS: nobody }, `no sentinel named the master: sentinel ${nobody}: connect ECONNREFUSED ${nobody}`, true],
      [{ REDIS_SENTINEL_NAME: 'no-such-master' }, `no sentinel named the master: sentinel ${set.sentinels[0]} knows no master named "no-such-master" (REDIS_SENTINEL_NAME)`, true],
      // serve says it with the same code (sentinelSaid): the CLI alone, so fewer processes start at once
      [{ REDIS_SENTINELS: `redis://:wr0ng@${set.sentinels[1]}` }, `no sentinel named the master: sentinel ${set.sentinels[1]}: WRONGPASS invalid username-password pair`, false],
    ] as const;
    // at once: the CLI gives up after 10 s, serve waits 5 s for Redis before it listens
    await Promise.all(cases.map(async ([wrong, said, withServe]) => {
      const [run] = await Promise.all([
        runCli(['stats'], { ...env, ...wrong }),
        withServe && (async () => {
          const served = await serve({ ...env, ...wrong, KEY_PREFIX: testPrefix('sentinel-none') });
          try {
            const ready = await readyz(served.url);
            expect(ready).toMatchObject({ status: 503, body: { ready: false, redis: 'down' } });
            expect(ready.body.error).toContain(said);
            expect(served.output()).toContain(`Redis unreachable (${said}`);
          } finally {
            await served.stop();
          }
          noSecret(served.output());
        })(),
      ]);
      noSecret(run.stderr);
      expect(run.code).toBe(1);
      expect(run.stderr).toContain('error: cannot reach Redis (master "');
      expect(run.stderr).toContain(said);
    }));
    // the satellite-removal subscriber, a copy of the worker's client, knows each sentinel's answer as the client does
    const client = createRedis({ redisUrl: env.REDIS_URL!, redisClusterNodes: [], redisSentinels: [`redis://:${encodeURIComponent(SENTINEL_PASSWORD)}@${nobody}`], redisSentinelName: NAME });
    client.on('error', () => undefined);
    const sub = subscriberOf(client);
    sub.on('error', () => undefined);
    try {
      sub.subscribe('never').catch(() => undefined);
      await until(async () => whyNotConnected(sub), (why) => why !== undefined, 'the subscriber failing', 10_000);
      expect(whyNotConnected(sub)).toBe(cases[0][1]);
    } finally {
      sub.disconnect();
      client.disconnect();
    }
  });

  /**
   * serve (with the snapshot writer) redeeming one token after another while `failover` moves the master (it
   * returns once the sentinels name another one): answered 200 or 503 only, until ten in a row are 200 after the
   * switch; then every redemption answered 200 is on the new master and in Postgres, and the worker's subscriber
   * of satellite removals found the new master too. `settings` add to serve's environment.
   */
  async function redeemThroughFailover(label: string, settings: Record<string, string>, failover: (old: RestartableRedis) => Promise<void>): Promise<void> {
    const prefix = testPrefix(label);
    const db = await testDatabase();
    const served = await serve({ ...env, KEY_PREFIX: prefix, SNAPSHOT: 'true', DATABASE_URL: db.url, REDIS_WAIT_REPLICAS: '1', REDIS_WAIT_MS: '800', REQUEST_TIMEOUT_MS: '3000', AUTH_CACHE_MS: '600000', ...settings });
    const pool = new pg.Pool({ connectionString: db.url, max: 1 });
    const old = await set.current();
    try {
      const admin = new AdminClient({ url: served.url, apiKey: ADMIN_KEY });
      const { apiKey } = await admin.addSatellite({ id: 'sat-o' });
      const doomed = await admin.addSatellite({ id: 'sat-gone' });
      const tokens = (await admin.generate({ satelliteId: 'sat-o', userIds: Array.from({ length: 400 }, (_, i) => `u${i}`), perUser: 1 })).tokens.map((t) => t.token);
      const sat = new SatelliteClient({ url: served.url, apiKey, timeoutMs: 5000 });
      const gone = new SatelliteClient({ url: served.url, apiKey: doomed.apiKey, timeoutMs: 5000 });
      // its key cached by the worker (AUTH_CACHE_MS 10 min): only the removal's message can end it
      expect((await gone.lookup(tokens[0]!)).state).toBe('unredeemed');

      // redemptions one after another while the master changes, until ten in a row are answered after the switch
      const acknowledged = new Map<string, string>();
      const answers: { at: number; ok: boolean }[] = [];
      let switchedAt = Infinity;
      let abandoned = false;
      const redeeming = (async () => {
        for (const [i, token] of tokens.entries()) {
          if (abandoned) return;
          const err = await failure(sat.redeem(token, `new-${i}`));
          if (err && err.status !== 503) throw err;
          if (!err) acknowledged.set(token, `new-${i}`);
          answers.push({ at: Date.now(), ok: !err });
          const since = answers.filter((a) => a.at > switchedAt);
          if (since.length >= 10 && since.slice(-10).every((a) => a.ok)) return;
          await new Promise((r) => setTimeout(r, 20));
        }
        throw new Error('ran out of tokens before serve answered again');
      })();
      // handled where awaited below; a failover that fails first leaves it unawaited
      redeeming.catch(() => undefined);
      await until(async () => acknowledged.size, (n) => n >= 5, 'redemptions before the failover');
      const started = Date.now();
      // a failover that fails the test ends the redemptions first, so none outlives serve
      await failover(old).catch(async (err: unknown) => {
        abandoned = true;
        await redeeming.catch(() => undefined);
        throw err;
      });
      switchedAt = Date.now();
      await redeeming;
      const failed = answers.filter((a) => !a.ok);
      const back = answers.find((a) => a.ok && a.at > (failed.at(-1)?.at ?? started))!;
      console.log(`${label}: sentinels switched after ${switchedAt - started} ms, 503 for ${failed.length} redemptions, 200 again ${back.at - started} ms after the failover began`);

      const ready = await until(() => readyz(served.url), (r) => r.status === 200, '/readyz after the failover', 20_000);
      const now = await set.current();
      expect(now).not.toBe(old);
      expect(ready.body.master).toBe(`127.0.0.1:${now.port}`);

      // every redemption answered 200 is on the promoted replica, and in Postgres once the writer caught up
      const held = await Promise.all([...acknowledged.keys()].map((t) => sat.lookup(t)));
      expect(held.filter((t) => t.state !== 'redeemed')).toEqual([]);
      await caughtUp(probe, prefix);
      const rows = await pool.query<{ token: string; redeemer_user_id: string }>("SELECT token::text, redeemer_user_id FROM tokens WHERE state = 'redeemed'");
      const inPostgres = new Map(rows.rows.map((r) => [r.token, r.redeemer_user_id]));
      for (const [token, user] of acknowledged) expect(inPostgres.get(token), token).toBe(user);
      // a change answered 503 may stand or not (README): the old master may have taken one, and the writer copied it,
      // that the new master never had. verify lists those ("Redis went back in time"); never one answered 200
      const verified = await runCli(['verify'], { ...env, KEY_PREFIX: prefix, DATABASE_URL: db.url });
      const differing = [...verified.stdout.matchAll(/^([0-9a-f-]{36}) differs/gm)].map((m) => m[1]!);
      expect(differing.filter((t) => acknowledged.has(t))).toEqual([]);
      if (differing.length === 0) expect(verified.code, verified.stdout + verified.stderr).toBe(0);

      // the worker's subscriber found the new master too: a removal by the CLI ends the cached key at once
      await until(async () => (await probe.pubsub('NUMSUB', new SatelliteKeys(prefix).retired())) as [string, number], (r) => Number(r[1]) >= 1, 'the worker subscribed on the new master', 20_000);
      const removed = await runCli(['satellites', 'remove', 'sat-gone'], { ...env, KEY_PREFIX: prefix });
      expect(removed.code, removed.stderr).toBe(0);
      await until(async () => (await failure(gone.lookup(tokens[0]!)))?.status, (s) => s === 401, 'the removed key refused', 5000);
      expect(served.proc.exitCode).toBeNull();
    } finally {
      await pool.end();
      expect(await served.stop()).toBe(0);
      await db.drop();
    }
    expect(served.output()).not.toMatch(/internal error/);
  }

  /** returns once the sentinels name another master than `old` */
  const switchedFrom = (old: RestartableRedis) => until(() => set.current(), (m) => m !== old, 'the sentinels naming another master', 20_000);

  it('a manual failover (SENTINEL FAILOVER, the old master left running, then demoted to a replica): serve leaves it as the sentinels announce the new master, 200 again with no restart; no acknowledged redemption lost; the writer and the satellite-removal subscriber follow', async () => {
    let old: Redis | undefined;
    try {
      // the old master takes writes until Sentinel demotes it, the replica it promoted no longer copying them:
      // only a change every replica confirmed is surely on the new master (README, Redis Sentinel)
      await redeemThroughFailover('sentinel-manual', { REDIS_WAIT_REPLICAS: '2' }, async (master) => {
        old = new Redis({ port: master.port, host: '127.0.0.1', password: MASTER_PASSWORD });
        expect(await askSentinel(set.sentinels[0]!, 'FAILOVER', NAME)).toBe('OK');
        await switchedFrom(master);
        // every connection of serve, its writer and the probe leaves it while it still is a master: they followed the
        // sentinels' announcement, not the demotion (Sentinel demotes it seconds later, dropping its clients)
        const ours = async () => ((await old!.client('LIST')) as string).split('\n').filter((c) => / name=referral-manager/.test(c)).length;
        await until(ours, (n) => n === 0, 'serve leaving the old master', 20_000);
        expect(await old!.info('replication')).toMatch(/^role:master/m);
      });
      // once demoted it replicates from the new master: the next failover has both replicas to choose from
      await until(() => old!.info('replication'), (i) => /^role:slave/m.test(i) && /^master_link_status:up/m.test(i), 'the old master replicating from the new one', 20_000);
      await set.settled(2);
    } finally {
      old?.disconnect();
    }
  }, 60_000);

  it('a failover (the master killed): 503 for a moment, then 200 with no restart; no acknowledged redemption lost; the writer and the satellite-removal subscriber follow', async () => {
    await redeemThroughFailover('sentinel-fo', {}, async (old) => {
      await old.stop('SIGKILL');
      await switchedFrom(old);
    });
  }, 60_000);

  // after the failovers: a sentinel paused, once resumed, stays in TILT mode for 30 s and starts no failover
  it('a sentinel that hangs (SIGSTOP: its connections accepted, never answered), first in the list, and one gone, last: serve starts and redeems through the others, as does the CLI', async () => {
    const hung = set.processes[0]!;
    const prefix = testPrefix('sentinel-hung');
    const master = `127.0.0.1:${(await set.current()).port}`;
    // every connection asks each sentinel listed to announce failovers: the one gone refuses them all
    const withGone = { ...env, KEY_PREFIX: prefix, REDIS_SENTINELS: `${env.REDIS_SENTINELS},redis://${SENTINEL_USER.user}:${encodeURIComponent(CLIENT_PASSWORD)}@127.0.0.1:${await freePort()}` };
    hung.signal('SIGSTOP');
    try {
      const [run, served] = await Promise.all([runCli(['stats', '--json'], withGone), serve(withGone)]);
      try {
        expect(run.code, run.stderr).toBe(0);
        const r = await redeemOne(served);
        expect(r.status, JSON.stringify(r.body)).toBe(200);
        expect(await readyz(served.url)).toMatchObject({ status: 200, body: { ready: true, master } });
      } finally {
        expect(await served.stop()).toBe(0);
      }
      // its errors are listened to, by the satellite-removal subscriber's connections too, not printed by ioredis
      expect(served.output() + run.stderr).not.toContain('Unhandled error event');
    } finally {
      hung.signal('SIGCONT');
    }
  });

  it("runs last: the sentinels refused nothing that serve, the writer and the CLI sent above as README's sentinel user", async () => {
    for (const address of set.sentinels) {
      const s = new Redis({ port: Number(address.split(':')[1]), host: '127.0.0.1', password: SENTINEL_PASSWORD });
      try {
        const entries = (await s.call('ACL', 'LOG')) as unknown[][];
        const refused = entries.map((e) => Object.fromEntries(chunk(e.map(String)))).filter((f) => f.username === SENTINEL_USER.user);
        expect(refused.map((f) => `${f.reason} ${f.object}`), address).toEqual([]);
        // and it is the one used: the probe's connection listening for failovers is there as that user
        expect(await s.client('LIST'), address).toContain(` user=${SENTINEL_USER.user} `);
      } finally {
        s.disconnect();
      }
    }
  });
});

describe.skipIf(!hasRedisServer() || !hasOpenssl)('Redis Sentinel over TLS (a private CA; skipped without redis-server or openssl)', () => {
  let dir: string;
  let master: { port: number; proc: ChildProcess } | undefined;
  let sentinel: Awaited<ReturnType<typeof startSentinel>> | undefined;
  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'rm-tls-sentinel-'));
    makeCertificates(dir);
    master = await startTlsRedis(dir, ['--requirepass', MASTER_PASSWORD]);
    sentinel = await startSentinel(master.port, dir);
  });
  afterAll(async () => {
    await sentinel?.stop();
    if (master) await kill(master.proc, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('reaches the sentinels by rediss:// seeds and the master by REDIS_URL\'s rediss://, both checked against REDIS_TLS_CA_FILE', async () => {
    const env = {
      REDIS_URL: `rediss://:${encodeURIComponent(MASTER_PASSWORD)}@localhost:1`,
      REDIS_SENTINELS: `rediss://:${encodeURIComponent(SENTINEL_PASSWORD)}@localhost:${sentinel!.address.split(':')[1]}`,
      REDIS_SENTINEL_NAME: NAME,
      REDIS_TLS_CA_FILE: path.join(dir, 'ca.crt'),
      KEY_PREFIX: testPrefix('sentinel-tls'),
    };
    // without the CA the sentinels' certificate is refused, said as such (meanwhile: the CLI gives up after 10 s)
    const untrusted = runCli(['stats'], { ...env, REDIS_TLS_CA_FILE: '' });
    noSecret((await reachesRedis(env)).output);
    const refused = await untrusted;
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/no sentinel named the master: sentinel localhost:\d+: self[- ]signed certificate in certificate chain; Redis's TLS certificate is not signed by a CA trusted here: set REDIS_TLS_CA_FILE/);
  });
});

// mutual TLS: the master and the sentinels take only clients with a certificate of their CA
describe.skipIf(!hasRedisServer() || !hasOpenssl)('Redis Sentinel over TLS with client certificates (skipped without redis-server or openssl)', () => {
  let dir: string;
  let master: { port: number; proc: ChildProcess } | undefined;
  let sentinel: Awaited<ReturnType<typeof startSentinel>> | undefined;
  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'rm-mtls-sentinel-'));
    makeCertificates(dir);
    makeClientCertificate(dir);
    master = await startTlsRedis(dir, ['--requirepass', MASTER_PASSWORD, '--tls-auth-clients', 'yes']);
    sentinel = await startSentinel(master.port, dir, true);
  });
  afterAll(async () => {
    await sentinel?.stop();
    if (master) await kill(master.proc, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('sends REDIS_TLS_CERT_FILE to the sentinels and to the master; without it, says which sentinel refused and names the setting', async () => {
    const env = {
      REDIS_URL: `rediss://:${encodeURIComponent(MASTER_PASSWORD)}@localhost:1`,
      REDIS_SENTINELS: `rediss://:${encodeURIComponent(SENTINEL_PASSWORD)}@localhost:${sentinel!.address.split(':')[1]}`,
      REDIS_SENTINEL_NAME: NAME,
      REDIS_TLS_CA_FILE: path.join(dir, 'ca.crt'),
      REDIS_TLS_CERT_FILE: path.join(dir, 'client.crt'),
      REDIS_TLS_KEY_FILE: path.join(dir, 'client.key'),
      KEY_PREFIX: testPrefix('sentinel-mtls'),
    };
    const refusing = runCli(['stats'], { ...env, REDIS_TLS_CERT_FILE: '', REDIS_TLS_KEY_FILE: '' });
    await reachesRedis(env);
    const refused = await refusing;
    expect(refused.code).toBe(1);
    // the sentinel's alert, or the reset it was lost in, each with its hint naming the setting
    expect(refused.stderr).toMatch(/no sentinel named the master: sentinel localhost:\d+: (tlsv13 alert certificate required|(read|write) ECONNRESET|write EPIPE); .*REDIS_TLS_CERT_FILE/);
  });
});

// seeds written [::1]:port were refused: sentinels reached over IPv6 could not be named
describe.skipIf(!hasRedisServer() || !hasIpv6Loopback)(`Redis Sentinel over IPv6 (${hasIpv6Loopback ? 'on ::1' : 'skipped: this machine has no IPv6 loopback ::1'})`, () => {
  it('reaches the master a sentinel at [::1]:port names, /readyz names it [::1]:port, and a sentinel away is named so', async () => {
    const master = await privateRedis(['--bind', '::1', '--requirepass', MASTER_PASSWORD]);
    let sentinel: Awaited<ReturnType<typeof startSentinel>> | undefined;
    try {
      await master.start();
      sentinel = await startSentinel(master.port, undefined, false, true);
      const env = { REDIS_URL: `redis://:${encodeURIComponent(MASTER_PASSWORD)}@127.0.0.1:1`, REDIS_SENTINELS: `redis://:${encodeURIComponent(SENTINEL_PASSWORD)}@${sentinel.address}`, REDIS_SENTINEL_NAME: NAME, KEY_PREFIX: testPrefix('sentinel-ipv6') };
      expect((await reachesRedis(env)).ready).toMatchObject({ ready: true, redis: 'up', master: `[::1]:${master.port}` });
      const away = `[::1]:${await freePort()}`;
      const refused = await runCli(['stats'], { ...env, REDIS_SENTINELS: away });
      expect(refused.code).toBe(1);
      expect(refused.stderr).toContain(`no sentinel named the master: sentinel ${away}: connect ECONNREFUSED`);
    } finally {
      await sentinel?.stop();
      await master.dispose();
    }
  });
});

// a master demoted by hand (REPLICAOF), or one whose sentinel's message was missed, refuses writes (READONLY) on
// the connections left to it: those reconnect, asking the sentinels anew; a script it refused wrote nothing
// (a replica refuses every write of one), so it is sent again, any other command failed: one queued in a MULTI,
// sent again alone, would run outside it
describe('a Sentinel client refused a write by a demoted master', () => {
  it('reconnects, sending a refused script again and failing any other command; not for another error', () => {
    // never reached (lazy, port 1): only its options are read
    const client = createRedis({ redisUrl: 'redis://127.0.0.1:1', redisClusterNodes: [], redisSentinels: ['127.0.0.1:1'], redisSentinelName: NAME }, { failFast: true });
    try {
      const reconnect = (client as Redis).options.reconnectOnError!;
      const refused = (name: string) => Object.assign(new Error("READONLY You can't write against a read only replica."), { command: { name } });
      expect(['evalsha', 'eval', 'set', 'exec'].map((name) => reconnect(refused(name)))).toEqual([2, 2, 1, 1]);
      expect(reconnect(Object.assign(new Error('ERR unknown command'), { command: { name: 'evalsha' } }))).toBe(false);
    } finally {
      client.disconnect();
    }
  });
});
