import { afterAll, describe, expect, it } from 'vitest';
import { freePort } from '../bench/redis-server.js';
import { AdminClient } from '../src/client/admin.js';
import { CampaignStore } from '../src/store/campaign-store.js';
import { ReferralError, SatelliteClient } from '../src/client/index.js';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { startSatelliteSim, type SatelliteSim } from '../src/sim/index.js';
import { CampaignKeys } from '../src/store/campaigns.js';
import { createRedis } from '../src/store/redis.js';
import { TokenStore } from '../src/store/token-store.js';
import { TokenEngine } from '../src/tokens/engine.js';
import { runCli } from './helpers/cli.js';
import { ADMIN_KEY, privateRedis, serve, testCluster, type RestartableRedis, type Served } from './helpers/http.js';
import { pgProxy, testDatabase } from './helpers/pg.js';
import { engineFixture, SHARED_REDIS_URL } from './helpers/redis.js';
import { caughtUp, sleep } from './helpers/snapshot.js';
import { NO_REPLICA_WAIT } from '../src/store/replicas.js';

/** How long faults are injected under load; CHAOS_MS=600000 for a soak. */
const CHAOS_MS = Number(process.env.CHAOS_MS ?? 40_000);
const PREFIX = 'chaos';
/** answers a satellite may get while the manager is being broken: anything else is a bug */
const EXPECTED = new Set(['token_already_redeemed', 'token_reserved', 'reservation_mismatch', 'reservation_expired', 'unavailable', 'store_unavailable']);

const FAULTS = ['kill -9 a worker', 'kill -9 serve, start it', 'Postgres unreachable 4 s', 'SIGTERM serve, start it', 'kill -9 Redis (AOF), start it', 'SIGSTOP Redis 2.5 s'] as const;

const cleanup: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const f of cleanup.reverse()) await f().catch(() => {});
});

/**
 * The whole product at once, with real processes: serve (2 workers and the snapshot writer) on a Redis of its
 * own with an AOF, satellites redeeming and reserving over HTTP from both sides, while in turn a worker is
 * killed, serve is killed or stopped and started again, Redis is killed and restarted or paused, and Postgres
 * is cut off. The fault tests elsewhere break one part at a time; this one looks for what only shows when
 * they break together.
 */
describe('chaos: serve under load while its workers, serve, Redis and its way to Postgres are broken', () => {
  it('loses no acknowledged redemption, redeems no token twice, answers only expected codes, and Postgres equals Redis after', async () => {
    const redis = await privateRedis(['--appendfsync', 'always']);
    await redis.start();
    cleanup.push(() => redis.dispose());
    const db = await testDatabase();
    cleanup.push(() => db.drop());
    // the writer reaches Postgres through a proxy the test can cut
    const proxy = await pgProxy(db.url);
    cleanup.push(() => proxy.close());
    const env = { REDIS_URL: redis.url, DATABASE_URL: proxy.url, KEY_PREFIX: PREFIX, SNAPSHOT: 'true', REQUEST_TIMEOUT_MS: '1000', AUTH_CACHE_MS: '1000' };
    const port = await freePort();
    let server: Served = await serve(env, 2, port);
    cleanup.push(() => server.stop());

    const admin = new AdminClient({ url: server.url, apiKey: ADMIN_KEY });
    const sats = ['sat-a', 'sat-b'];
    const clients: SatelliteClient[] = [];
    const tokens: string[] = [];
    for (const id of sats) {
      const { apiKey } = await admin.addSatellite({ id });
      clients.push(new SatelliteClient({ url: server.url, apiKey, timeoutMs: 3000, connections: 8 }));
      // in calls of 2,500 tokens: one of 10,000 passed REQUEST_TIMEOUT_MS (1 s here) on an fsync-always AOF
      // while other test files ran beside it (503, twice in CI runs), failing the test before its chaos began
      for (let part = 0; part < 8; part++) {
        const users = Array.from({ length: 500 }, (_, i) => `${id}-owner-${part}-${i}`);
        tokens.push(...(await admin.generate({ satelliteId: id, userIds: users, perUser: 5 })).tokens.map((t) => t.token));
      }
    }

    /** token -> the redeemers it was acknowledged to (more than one: a token redeemed twice) */
    const acked = new Map<string, Set<string>>();
    /** token -> every redeemer that tried it (a redeem whose answer was lost may still have landed) */
    const tried = new Map<string, Set<string>>();
    const surprises: string[] = [];
    const counts = new Map<string, number>();
    const note = (what: string) => counts.set(what, (counts.get(what) ?? 0) + 1);
    let user = 0;
    let running = true;
    /** tokens not yet seen redeemed: most attempts go to these, so the load keeps making redemptions */
    const open = [...tokens];
    const closed = (token: string) => {
      const i = open.indexOf(token);
      if (i >= 0) open.splice(i, 1);
    };

    const attempt = async () => {
      const pool = open.length > 0 && Math.random() < 0.9 ? open : tokens;
      const token = pool[Math.floor(Math.random() * pool.length)]!;
      const side = Math.floor(Math.random() * 2);
      const client = clients[side]!;
      const redeemer = `${sats[side]}\t${`new-${user++}`}`;
      const userId = redeemer.split('\t')[1]!;
      if (!tried.has(token)) tried.set(token, new Set());
      tried.get(token)!.add(redeemer);
      const ok = () => {
        if (!acked.has(token)) acked.set(token, new Set());
        acked.get(token)!.add(redeemer);
        closed(token);
        note('ok');
      };
      const r = Math.random();
      try {
        if (r < 0.6) {
          await client.redeem(token, userId);
          ok();
        } else {
          const held = await client.reserve(token, 1500);
          if (r < 0.85) {
            await client.complete(token, held.reservationId, userId);
            ok();
          } else {
            await client.release(token, held.reservationId);
            note('released');
          }
        }
      } catch (err) {
        const code = err instanceof ReferralError ? err.code : `not a ReferralError: ${String(err)}`;
        note(code);
        const expected = EXPECTED.has(code);
        if (!expected && surprises.length < 20) surprises.push(`${code} (${err instanceof Error ? err.message : ''}) on ${token}`);
        if (code === 'token_already_redeemed') closed(token);
        // as a satellite would: not in a tight loop while the manager is down
        if (!expected || code === 'unavailable' || code === 'store_unavailable') await sleep(50);
      }
    };
    const load = Array.from({ length: 8 }, async () => {
      while (running) await attempt();
    });

    const faults: string[] = [];
    const restart = async (how: 'SIGKILL' | 'SIGTERM') => {
      if (how === 'SIGKILL') {
        server.proc.kill('SIGKILL');
        await server.stop();
      } else {
        const code = await server.stop();
        if (code !== 0) surprises.push(`serve exited ${code} on SIGTERM`);
      }
      server = await serve(env, 2, port);
    };
    /** the pid of a worker, as /healthz tells it */
    const aWorker = async () => ((await (await fetch(`${server.url}/healthz`)).json()) as { pid: number }).pid;
    // every fault at least once, however slowly the restarts go on a loaded machine
    const end = Date.now() + CHAOS_MS;
    for (let i = 0; Date.now() < end || i < FAULTS.length; i++) {
      await sleep(2000 + Math.random() * 3000);
      const fault = FAULTS[i % FAULTS.length]!;
      faults.push(fault);
      if (fault === 'kill -9 a worker') {
        const pid = await aWorker().catch(() => undefined); // none while a replacement starts: then nothing breaks this round
        if (pid) process.kill(pid, 'SIGKILL');
      }
      else if (fault === 'kill -9 serve, start it') await restart('SIGKILL');
      else if (fault === 'SIGTERM serve, start it') await restart('SIGTERM');
      else if (fault === 'kill -9 Redis (AOF), start it') await killRedis(redis);
      else if (fault === 'Postgres unreachable 4 s') {
        await proxy.close();
        await sleep(4000);
        proxy.open();
      }
      else {
        redis.signal('SIGSTOP');
        await sleep(2500);
        redis.signal('SIGCONT');
      }
    }
    running = false;
    await Promise.all(load);
    const summary = `faults: ${faults.join(', ')}; answers: ${JSON.stringify(Object.fromEntries(counts))}`;
    expect(surprises, summary).toEqual([]);

    // everything recovers by itself, no restart of ours: a token made now is redeemed within seconds
    const fresh = (await soon(() => admin.generate({ satelliteId: 'sat-a', userIds: ['after'], perUser: 1 }))).tokens[0]!.token;
    tokens.push(fresh);
    tried.set(fresh, new Set(['sat-b\tafter-faults']));
    await soon(() => clients[1]!.redeem(fresh, 'after-faults'));
    acked.set(fresh, new Set(['sat-b\tafter-faults']));
    await admin.close();
    await Promise.all(clients.map((c) => c.close()));

    const direct = createRedis({ redisUrl: redis.url, redisClusterNodes: [] });
    cleanup.push(async () => direct.disconnect());
    await caughtUp(direct, PREFIX);
    expect(await server.stop(), 'serve exits 0 on SIGTERM').toBe(0);

    // every acknowledged redemption is in Redis, by the redeemer it was acknowledged to, and only one
    const engine = new TokenEngine(new TokenStore(direct, PREFIX, NO_REPLICA_WAIT));
    for (const [token, who] of acked) {
      expect([...who], `${token} acknowledged to several redeemers`).toHaveLength(1);
      const t = await engine.lookup(token);
      expect(t && `${t.state} ${t.redeemerSatelliteId}\t${t.redeemerUserId}`, token).toBe(`redeemed ${[...who][0]}`);
    }
    // and a token redeemed without an acknowledgement (its answer lost to a fault) went to one who tried it
    let redeemed = 0;
    for (const token of tokens) {
      const t = (await engine.lookup(token))!;
      expect(t, token).toBeDefined();
      if (t.state !== 'redeemed') continue;
      redeemed++;
      expect(tried.get(token)?.has(`${t.redeemerSatelliteId}\t${t.redeemerUserId}`), token).toBe(true);
    }
    // the counters the scripts keep agree with the tokens (a script cut short by a kill would leave them apart)
    const stats = await engine.stats();
    expect(Object.values(stats.satellites).reduce((n, s) => n + s.redeemed, 0), summary).toBe(redeemed);

    const verified = await runCli(['verify'], { REDIS_URL: redis.url, DATABASE_URL: db.url, KEY_PREFIX: PREFIX }, { timeoutMs: 60_000 });
    expect(verified.code, `${verified.stdout}${verified.stderr}`).toBe(0);
  }, CHAOS_MS + 200_000);
});

/** `call`'s answer, retried for up to `ms` while it fails. */
async function soon<T>(call: () => Promise<T>, ms = 10_000): Promise<T> {
  for (const end = Date.now() + ms; ; await sleep(200)) {
    try {
      return await call();
    } catch (err) {
      if (Date.now() > end) throw err;
    }
  }
}

async function killRedis(redis: RestartableRedis): Promise<void> {
  await redis.stop('SIGKILL');
  await redis.start();
}

/**
 * The generation flow's promise under the worst a cron job can do: a generate killed (SIGKILL, no cleanup)
 * at any moment, again and again, then resumed. The claims a killed run holds lapse in 30 s; the test lets
 * them lapse at once (deleting them) instead of waiting.
 */
describe('chaos: generate killed (kill -9) at random moments, then resumed', () => {
  it('gives every user exactly its set: none twice, none lost, no token made twice or left undelivered', async () => {
    const USERS = 5000;
    const PER_USER = 2;
    const fx = await engineFixture({ label: 'chaos-gen' });
    cleanup.push(() => fx.close());
    const sats = ['sat-x', 'sat-y'];
    const sims: SatelliteSim[] = [];
    for (const id of sats) {
      const outboundKey = `outbound-${id}-0123456789abcdef0123456789abcdef`;
      const sim = await startSatelliteSim({ id, users: USERS, outboundKey });
      cleanup.push(() => sim.close());
      sims.push(sim);
      await new SatelliteRegistry(fx.redis, fx.prefix).add({ id, url: sim.url, outboundKey });
    }
    const env = { KEY_PREFIX: fx.prefix, REDIS_URL: SHARED_REDIS_URL };
    const store = new CampaignStore(fx.redis, fx.prefix);
    const keys = new CampaignKeys(fx.prefix);
    const first = ['generate', '--all', '--per-user', String(PER_USER), '--campaign', 'chaos', '--batch-size', '100', '--page-size', '200'];
    const args = async () => ((await store.meta('chaos')) ? ['generate', '--resume', 'chaos'] : first);
    const held = () => sims.reduce((n, sim) => n + Object.values(sim.satellite.holdings()).reduce((m, t) => m + t.length, 0), 0);
    // each run is killed once the satellites hold a given share of the tokens (mid-delivery, wherever that
    // falls in a run), the first at a random moment (mostly mid-making)
    const shares = [0, ...Array.from({ length: 5 }, () => Math.random())].sort((x, y) => x - y);
    const runs: string[] = [];
    for (const share of shares) {
      const target = share * sats.length * USERS * PER_USER;
      const run = await runCli(await args(), env, {
        timeoutMs: 60_000,
        whenStarted: (p) => {
          const at = Date.now() + 300 + Math.random() * 700;
          const watch = setInterval(() => {
            if (share === 0 ? Date.now() >= at : held() >= target) p.kill('SIGKILL');
          }, 5);
          p.once('exit', () => clearInterval(watch));
        },
      });
      runs.push(`${share === 0 ? 'at random' : `at ${Math.round(target)} held`}: ${run.code ?? 'killed'} with ${held()} held`);
      await fx.redis.del(keys.run('chaos'), ...sats.map((s) => keys.satelliteRun(s)));
    }
    const last = await runCli([...(await args()), '--json'], env, { timeoutMs: 60_000 });
    expect(last.code, `${runs.join(', ')}\n${last.stderr}`).toBe(0);

    for (const [i, sim] of sims.entries()) {
      const held = sim.satellite.holdings();
      const users = Object.keys(held);
      expect(users).toHaveLength(USERS);
      expect(users.filter((u) => held[u]!.length !== PER_USER), runs.join(', ')).toEqual([]);
      const all = users.flatMap((u) => held[u]!.map((token) => ({ u, token })));
      expect(new Set(all.map((t) => t.token)).size).toBe(all.length);
      for (let j = 0; j < all.length; j += 500) {
        const found = await Promise.all(all.slice(j, j + 500).map((t) => fx.engine.lookup(t.token)));
        found.forEach((t, k) => expect(t, all[j + k]!.token).toMatchObject({ ownerSatelliteId: sats[i], ownerUserId: all[j + k]!.u, state: 'unredeemed', campaignId: 'chaos' }));
      }
      // a set made by a run killed before recording it was adopted by the resume, not made again
      const counted = (await fx.engine.stats()).satellites[sats[i]!]!;
      expect({ generated: counted.generated, revoked: counted.revoked }, runs.join(', ')).toEqual({ generated: USERS * PER_USER, revoked: 0 });
    }
    const shown = (await store.get('chaos'))!;
    for (const s of sats) expect(shown.progress[s]).toMatchObject({ status: 'done', tokensDelivered: USERS * PER_USER });
  }, 180_000);
});

/**
 * A Redis Cluster with a replica per master losing a master under load: the replica takes over (after
 * cluster-node-timeout) and the manager follows it by itself. On one host a replica receives each write
 * in the same event-loop turn of its master as the answer goes out, so nothing answered is lost here;
 * across hosts replication lag can lose a few (README, "What a 200 promises").
 */
describe('chaos: a Redis Cluster master killed under load, its replica taking over', () => {
  it('serves every shard again without a restart of ours, and keeps every acknowledged redemption', async () => {
    const cluster = await testCluster(3, ['--cluster-node-timeout', '2000'], 1);
    const seed = createRedis({ redisUrl: '', redisClusterNodes: cluster.nodes });
    cleanup.push(async () => seed.disconnect());
    const nodesText = String(await (seed as unknown as { cluster(sub: 'NODES'): Promise<string> }).cluster('NODES'));
    // CLUSTER NODES: <id> <host:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slots...>: a master serving slots
    const victim = nodesText.split('\n').find((l) => l.split(' ')[2]?.split(',').includes('master') && l.split(' ').length > 8)!.split(' ')[1]!.split('@')[0]!;
    const server = await serve({ REDIS_CLUSTER_NODES: cluster.nodes.join(','), KEY_PREFIX: 'chaos-failover', SNAPSHOT: 'false', REQUEST_TIMEOUT_MS: '1000', TOKEN_COUNTS_MS: '0' });
    cleanup.push(() => server.stop());
    const admin = new AdminClient({ url: server.url, apiKey: ADMIN_KEY });
    const { apiKey } = await admin.addSatellite({ id: 'sat' });
    const client = new SatelliteClient({ url: server.url, apiKey, timeoutMs: 3000 });
    const tokens = (await admin.generate({ satelliteId: 'sat', userIds: Array.from({ length: 2000 }, (_, i) => `owner-${i}`), perUser: 5 })).tokens.map((t) => t.token);

    const acked = new Map<string, string>();
    const answers = new Map<string, number>();
    let running = true;
    let n = 0;
    const load = Array.from({ length: 6 }, async () => {
      while (running) {
        const token = tokens[n % tokens.length]!;
        const userId = `new-${n++}`;
        try {
          await client.redeem(token, userId);
          acked.set(token, userId);
          answers.set('ok', (answers.get('ok') ?? 0) + 1);
        } catch (err) {
          const code = err instanceof ReferralError ? err.code : String(err);
          answers.set(code, (answers.get(code) ?? 0) + 1);
          if (code === 'unavailable' || code === 'store_unavailable') await sleep(50);
        }
      }
    });
    await sleep(2000);
    await cluster.signal(cluster.nodes.indexOf(victim), 'SIGKILL');
    await sleep(10_000);
    running = false;
    await Promise.all(load);
    const summary = `killed ${victim}; answers ${JSON.stringify(Object.fromEntries(answers))}`;
    expect(answers.get('ok') ?? 0, summary).toBeGreaterThan(0);
    expect([...answers.keys()].filter((c) => !['ok', 'token_already_redeemed', 'store_unavailable', 'unavailable'].includes(c)), summary).toEqual([]);

    // every shard answers again: tokens made now (about ten on each of the 64 shards) redeem
    const fresh = (await soon(() => admin.generate({ satelliteId: 'sat', userIds: Array.from({ length: 640 }, (_, i) => `after-${i}`), perUser: 1 }), 20_000)).tokens;
    await Promise.all(fresh.map((t) => soon(() => client.redeem(t.token, `joined-${t.userId}`), 20_000)));
    await soon(async () => {
      const r = await fetch(`${server.url}/readyz`);
      if (r.status !== 200) throw new Error(`/readyz ${r.status}: ${await r.text()}`);
    }, 20_000);
    await Promise.all([admin.close(), client.close()]);
    // the log says the master went, and that its outage ended when the replica took over
    await soon(async () => {
      if (!server.output().includes(`master ${victim}: replaced`)) throw new Error(`no recovery line:\n${server.output()}`);
    });
    expect(server.output()).toMatch(new RegExp(`master ${victim}: .*the tokens of its slots answer 503`));

    const engine = new TokenEngine(new TokenStore(seed, 'chaos-failover', NO_REPLICA_WAIT));
    const lost: string[] = [];
    for (const [token, userId] of acked) {
      const t = await engine.lookup(token);
      if (t?.state !== 'redeemed' || t.redeemerUserId !== userId) lost.push(token);
    }
    expect(lost, `${lost.length} of ${acked.size} acknowledged redemptions lost; ${summary}`).toEqual([]);
  }, 120_000);
});
