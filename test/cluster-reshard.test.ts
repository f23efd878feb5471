import calculateSlot from 'cluster-key-slot';
import { Redis } from 'ioredis';
import { Pool } from 'undici';
import { afterAll, describe, expect, it } from 'vitest';
import { hasRedisServer } from '../bench/redis-server.js';
import { Keys, placeOfToken, SHARDS } from '../src/store/keys.js';
import { createRedis } from '../src/store/redis.js';
import { NO_REPLICA_WAIT } from '../src/store/replicas.js';
import { TokenStore } from '../src/store/token-store.js';
import { TokenEngine } from '../src/tokens/engine.js';
import { runCli } from './helpers/cli.js';
import { ADMIN_KEY, call, serve, testCluster } from './helpers/http.js';
import { testDatabase } from './helpers/pg.js';
import { directClients } from './helpers/redis.js';
import { caughtUp, sleep } from './helpers/snapshot.js';

const PREFIX = 'reshard';
/** shards whose slots move, one after another */
const MOVED = 3;
/** answers taken on a shard while its keys are split between the two masters, before the move goes on */
const ANSWERS_WHILE_SPLIT = 3;

const haveRedis = hasRedisServer();
if (!haveRedis) console.warn('cluster-reshard: redis-server is not installed; skipping the live Redis Cluster reshard test');

const cleanup: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const f of cleanup.reverse()) await f().catch(() => {});
});

/**
 * A live reshard, done by hand as `redis-cli --cluster reshard` does it but slowly: the slots of a few shards
 * move from one master to another a few keys at a time while a satellite redeems over HTTP and the snapshot
 * writer copies the shards' streams (each stream, with its consumer group, moves with its slot). While a
 * slot's keys are split, scripts on it fail with TRYAGAIN (some of their keys are on each side) and the
 * client's redirections run out: that must answer 503 with Retry-After, never 500, and lose nothing.
 */
describe.skipIf(!haveRedis)('a live reshard: shards\' slots moved between Cluster masters under HTTP load, the snapshot writer running', () => {
  it('answers only 200 or 503 store_unavailable, keeps every acknowledged redemption, and Postgres equals Redis after', async () => {
    const cluster = await testCluster(3, []);
    cleanup.push(() => cluster.stop());
    const db = await testDatabase();
    cleanup.push(() => db.drop());
    const nodes = directClients(cluster.nodes);
    cleanup.push(async () => nodes.forEach((n) => n.disconnect()));
    const [from, to] = nodes as [Redis, Redis];
    const [toHost, toPort] = cluster.nodes[1]!.split(':') as [string, string];
    const fromId = String(await from.call('CLUSTER', 'MYID'));
    const toId = String(await to.call('CLUSTER', 'MYID'));
    // CLUSTER SLOTS: [start, end, [host, port, id], ...replicas]
    const ranges = ((await from.call('CLUSTER', 'SLOTS')) as [number, number, [string, number, string]][]).filter((r) => r[2][2] === fromId);
    const keys = new Keys(PREFIX);
    const slotOf = (shard: number) => calculateSlot(keys.tag(shard));
    const moving = Array.from({ length: SHARDS }, (_, s) => s).filter((s) => ranges.some(([a, b]) => slotOf(s) >= a && slotOf(s) <= b)).slice(0, MOVED);
    expect(moving).toHaveLength(MOVED);

    const server = await serve({ REDIS_CLUSTER_NODES: cluster.nodes.join(','), KEY_PREFIX: PREFIX, SNAPSHOT: 'true', DATABASE_URL: db.url });
    cleanup.push(() => server.stop());
    // a hang shows as a failed request, well before the test's own timeout
    const pool = new Pool(server.url, { connections: 8, headersTimeout: 30_000, bodyTimeout: 30_000 });
    cleanup.push(() => pool.close());
    const sat = await call(pool, 'POST', '/v1/admin/satellites', { key: ADMIN_KEY, body: { id: 'sat' } });
    expect(sat.status).toBe(201);
    const apiKey = sat.body.apiKey as string;
    /** per shard, the redemptions to make: [token, userId], a 503 puts its pair back to be retried as it was */
    const open = Array.from({ length: SHARDS }, () => [] as [string, string][]);
    for (let part = 0; part < 4; part++) {
      const gen = await call(pool, 'POST', '/v1/admin/tokens/generate', { key: ADMIN_KEY, body: { satelliteId: 'sat', userIds: Array.from({ length: 500 }, (_, i) => `owner-${part}-${i}`), perUser: 4 } });
      expect(gen.status).toBe(200);
      for (const { token } of gen.body.tokens as { token: string }[]) open[placeOfToken(token.replace(/-/g, '')).shard]!.push([token, `new-${part}-${token}`]);
    }

    const acked = new Map<string, string>();
    const answers = new Map<string, number>();
    const answered = new Array<number>(SHARDS).fill(0);
    const surprises: string[] = [];
    /** the shard whose slot is moving: half the load goes to it */
    let target: number | undefined;
    let running = true;
    const redeemOne = async (focused: boolean) => {
      const nonEmpty = open.flatMap((o, s) => (o.length ? [s] : []));
      const shard = focused && target !== undefined && open[target]!.length ? target : nonEmpty[Math.floor(Math.random() * nonEmpty.length)];
      if (shard === undefined) return sleep(50);
      const [token, userId] = open[shard]!.shift()!;
      let what: string;
      try {
        const r = await call(pool, 'POST', '/v1/tokens/redeem', { key: apiKey, body: { token, userId } });
        what = `${r.status} ${r.body?.error ?? ''}`.trim();
        if (r.status === 200) acked.set(token, userId);
        else open[shard]!.push([token, userId]);
        if (r.status === 503 && r.headers['retry-after'] === undefined) surprises.push(`503 without Retry-After on ${token}`);
        if (what !== '200' && what !== '503 store_unavailable' && surprises.length < 20) surprises.push(`${what} ${JSON.stringify(r.body)} on ${token} (shard ${shard})`);
      } catch (err) {
        what = 'no answer';
        open[shard]!.push([token, userId]);
        if (surprises.length < 20) surprises.push(`no answer on ${token}: ${String(err)}`);
      }
      answers.set(what, (answers.get(what) ?? 0) + 1);
      answered[shard]!++;
      // as a satellite would: not in a tight loop, and backing off on a 503
      await sleep(what === '200' ? 5 : 100);
    };
    const load = Array.from({ length: 6 }, async (_, i) => {
      while (running) await redeemOne(i % 2 === 0);
    });

    const moves: string[] = [];
    const started = Date.now();
    for (const shard of moving) {
      const slot = slotOf(shard);
      target = shard;
      const t0 = Date.now();
      await to.call('CLUSTER', 'SETSLOT', slot, 'IMPORTING', fromId);
      await from.call('CLUSTER', 'SETSLOT', slot, 'MIGRATING', toId);
      const total = Number(await from.call('CLUSTER', 'COUNTKEYSINSLOT', slot));
      let moved = 0;
      let waited = false;
      for (;;) {
        const batch = (await from.call('CLUSTER', 'GETKEYSINSLOT', slot, 5)) as string[];
        if (!batch.length) break;
        await from.call('MIGRATE', toHost, toPort, '', 0, 10_000, 'KEYS', ...batch);
        moved += batch.length;
        if (!waited && moved * 2 >= total) {
          // half the slot's keys on each master: the load must meet this, however slow the machine
          waited = true;
          const before = answered[shard]!;
          for (const end = Date.now() + 60_000; answered[shard]! < before + ANSWERS_WHILE_SPLIT; await sleep(50)) {
            if (Date.now() > end) throw new Error(`shard ${shard}: no ${ANSWERS_WHILE_SPLIT} answers within 60 s while its keys were split; answers ${JSON.stringify(Object.fromEntries(answers))}`);
          }
        }
        await sleep(50);
      }
      for (const n of [to, from, ...nodes.slice(2)]) await n.call('CLUSTER', 'SETSLOT', slot, 'NODE', toId);
      moves.push(`shard ${shard} (slot ${slot}, ${moved} keys) in ${Date.now() - t0} ms`);
    }
    target = undefined;
    // the moved shards answer again: each gets redemptions after its move
    const after = moving.map((s) => answered[s]!);
    for (const end = Date.now() + 30_000; moving.some((s, i) => answered[s]! < after[i]! + 3) && Date.now() < end; ) await sleep(50);
    running = false;
    await Promise.all(load);
    const summary = `moves: ${moves.join(', ')} (${Date.now() - started} ms); answers ${JSON.stringify(Object.fromEntries(answers))}`;
    expect(surprises, summary).toEqual([]);
    expect(answers.get('200') ?? 0, summary).toBeGreaterThan(0);

    // every moved shard's keys, its stream and the writer's group on it, are on the other master now
    for (const s of moving) {
      expect(Number(await from.call('CLUSTER', 'COUNTKEYSINSLOT', slotOf(s))), summary).toBe(0);
      const groups = (await to.call('XINFO', 'GROUPS', keys.events(s))) as unknown[][];
      expect(groups.map((g) => g[1]), `shard ${s}`).toEqual(['snapshot']);
    }
    // redemptions of the moved shards still succeed once the slots are settled
    for (const s of moving) {
      const [token, userId] = open[s]!.shift()!;
      const r = await call(pool, 'POST', '/v1/tokens/redeem', { key: apiKey, body: { token, userId } });
      expect(r.status, `shard ${s} after its move: ${JSON.stringify(r.body)}`).toBe(200);
      acked.set(token, userId);
    }

    const seed = createRedis({ redisUrl: '', redisClusterNodes: cluster.nodes });
    cleanup.push(async () => seed.disconnect());
    const engine = new TokenEngine(new TokenStore(seed, PREFIX, NO_REPLICA_WAIT));
    const lost: string[] = [];
    for (const [token, userId] of acked) {
      const t = await engine.lookup(token);
      if (t?.state !== 'redeemed' || t.redeemerUserId !== userId) lost.push(`${token}: ${t?.state} by ${t?.redeemerUserId}`);
    }
    expect(lost, `${lost.length} of ${acked.size} acknowledged redemptions lost; ${summary}`).toEqual([]);

    await caughtUp(seed, PREFIX);
    const verified = await runCli(['verify'], { REDIS_CLUSTER_NODES: cluster.nodes.join(','), DATABASE_URL: db.url, KEY_PREFIX: PREFIX }, { timeoutMs: 60_000 });
    expect(verified.code, `${verified.stdout}${verified.stderr}`).toBe(0);
    expect(verified.stdout).toMatch(/ 0 differences/);
    expect(server.output(), 'the snapshot writer logged no error').not.toMatch(/\[snapshot\] error/);
    expect(await server.stop(), 'serve exits 0 on SIGTERM').toBe(0);
  }, 180_000);
});
