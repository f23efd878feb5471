import { describe, expect, it } from 'vitest';
import { Cluster, Redis } from 'ioredis';
import client from 'prom-client';
import { CLUSTER_LOG, watchCluster } from '../src/store/cluster-watch.js';
import { logTo } from '../src/log.js';
import { createRedis } from '../src/store/redis.js';
import { testCluster } from './helpers/http.js';
import { directClients } from './helpers/redis.js';
import { sleep } from './helpers/snapshot.js';

const gauge = async (name: string, labels: Record<string, string> = {}) =>
  (await client.register.getSingleMetric(name)!.get()).values.find((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x))?.value;

// a hung master raised no client error, so nothing was logged while its third of the tokens answered 503;
// nor was its return, and a slot left migrating by an interrupted reshard showed nowhere
describe('watchCluster (the serve primary): a real 3-master Redis Cluster', () => {
  it('logs a master that stops answering or refuses keyed commands (cluster_state:fail) and its return, and a slot left migrating; the gauges follow', async () => {
    const cluster = await testCluster(3, ['--cluster-node-timeout', '600000']);
    const redis = createRedis({ redisUrl: '', redisClusterNodes: cluster.nodes }, { failFast: true, commandTimeoutMs: 2000 });
    redis.on('error', () => {});
    const lines: string[] = [];
    const watch = watchCluster(redis, logTo(CLUSTER_LOG, (l) => lines.push(l)), { ms: 200, stuckMs: 1500 })!;
    const until = async (re: RegExp) => {
      for (const end = Date.now() + 15_000; !lines.some((l) => re.test(l)) && Date.now() < end; ) await sleep(50);
      return lines.find((l) => re.test(l));
    };
    const hung = cluster.nodes[2]!;
    try {
      for (const end = Date.now() + 10_000; (await gauge('rm_redis_cluster_master_up', { node: hung })) !== 1 && Date.now() < end; ) await sleep(50);
      expect(await gauge('rm_redis_cluster_master_up', { node: hung })).toBe(1);
      expect(lines).toEqual([]);
      expect(await gauge('rm_redis_cluster_slots_unserved')).toBe(0);
      const itsSlots = redis instanceof Cluster ? redis.slots.filter((s) => s[0] === hung).length : 0;
      expect(itsSlots).toBeGreaterThan(5000);

      await cluster.signal(2, 'SIGSTOP');
      expect(await until(/master .* no answer/)).toBe(`[redis cluster] master ${hung}: no answer within 1000 ms; the tokens of its slots answer 503 until it or a replica answers`);
      expect(await gauge('rm_redis_cluster_master_up', { node: hung })).toBe(0);
      // it still owns its slots in the map: none is "without a master", all are unserved
      expect(await gauge('rm_redis_cluster_slots_without_master')).toBe(0);
      expect(await gauge('rm_redis_cluster_slots_unserved')).toBe(itsSlots);
      await cluster.signal(2, 'SIGCONT');
      expect(await until(/ok again/)).toBe(`[redis cluster] master ${hung}: ok again`);
      expect(await gauge('rm_redis_cluster_slots_unserved')).toBe(0);
      expect(lines.filter((l) => l.includes(hung))).toHaveLength(2); // one line each way, not one a probe

      // killed: the client drops it from its pool and a slot-map refresh puts it back, so the reason changes
      // from probe to probe; still one line each way
      await cluster.signal(2, 'SIGKILL');
      await until(new RegExp(`master ${hung}: (?!no answer)`));
      await sleep(2000); // ten probes
      await cluster.restart(2);
      for (const end = Date.now() + 15_000; lines.filter((l) => l.includes(hung)).length < 4 && Date.now() < end; ) await sleep(50);
      expect(lines.filter((l) => l.includes(hung)).slice(2)).toEqual([expect.stringMatching(new RegExp(`^\\[redis cluster\\] master ${hung}: .*; the tokens of its slots answer 503`)), `[redis cluster] master ${hung}: ok again`]);

      // what an interrupted `redis-cli --cluster reshard` leaves: the slot marked migrating on its owner
      const [owner, target] = directClients(cluster.nodes.slice(0, 2)) as [Redis, Redis];
      try {
        // a master that answers but refuses keyed commands: one slot left unassigned in its own view
        const failing = cluster.nodes[1]!;
        const slot = redis instanceof Cluster ? redis.slots.findIndex((s) => s[0] === failing) : -1;
        await target.cluster('DELSLOTS', slot);
        expect(await until(new RegExp(`master ${failing}: cluster_state`))).toBe(`[redis cluster] master ${failing}: cluster_state:fail; the tokens of its slots answer 503 until it or a replica answers`);
        expect(await gauge('rm_redis_cluster_master_up', { node: failing })).toBe(0);
        await target.cluster('ADDSLOTS', slot);
        expect(await until(new RegExp(`master ${failing}: ok again`))).toBe(`[redis cluster] master ${failing}: ok again`);

        const targetId = (await target.cluster('MYID')) as string;
        await owner.cluster('SETSLOT', 0, 'MIGRATING', targetId);
        expect(await until(/migrating \(a reshard under way\)/)).toBe(`[redis cluster] 1 slot(s) migrating (a reshard under way), e.g. slot 0 from ${cluster.nodes[0]} to ${cluster.nodes[1]}`);
        expect(await gauge('rm_redis_cluster_slots_migrating')).toBe(1);
        expect(await until(/left unfinished/)).toMatch(new RegExp(`^\\[redis cluster\\] slot 0 has been migrating from ${cluster.nodes[0]} to ${cluster.nodes[1]} for \\d+ s: a reshard left unfinished\\?`));
        // its owner not answering is no news about the slot: it was read as "no slot migrating any more"
        await cluster.signal(0, 'SIGSTOP');
        await until(new RegExp(`master ${cluster.nodes[0]}: no answer`));
        await sleep(1500);
        await cluster.signal(0, 'SIGCONT');
        expect(lines.filter((l) => /no slot migrating/.test(l))).toEqual([]);
        expect(await gauge('rm_redis_cluster_slots_migrating')).toBe(1);
        await owner.cluster('SETSLOT', 0, 'STABLE');
        expect(await until(/no slot migrating/)).toBe('[redis cluster] no slot migrating any more');
        expect(await gauge('rm_redis_cluster_slots_migrating')).toBe(0);
      } finally {
        owner.disconnect();
        target.disconnect();
      }
    } finally {
      await watch.stop();
      redis.disconnect();
      await cluster.stop();
    }
  }, 90_000);

  // a killed master's replica takes its slots and the old one leaves the slot map: its outage ends there,
  // and only once every slot has a master again
  it('logs a master replaced by its replica once the replica serves its slots', async () => {
    const cluster = await testCluster(3, ['--cluster-node-timeout', '1000'], 1);
    const redis = createRedis({ redisUrl: '', redisClusterNodes: cluster.nodes }, { failFast: true, commandTimeoutMs: 2000 });
    redis.on('error', () => {});
    const lines: string[] = [];
    const watch = watchCluster(redis, logTo(CLUSTER_LOG, (l) => lines.push(l)), { ms: 200 })!;
    try {
      const victim = () => (redis instanceof Cluster ? redis.slots[0]?.[0] : undefined) ?? '';
      for (const end = Date.now() + 10_000; (await gauge('rm_redis_cluster_master_up', { node: victim() })) !== 1 && Date.now() < end; ) await sleep(50);
      const killed = victim();
      expect(killed).not.toBe('');
      await cluster.signal(cluster.nodes.indexOf(killed), 'SIGKILL');
      for (const end = Date.now() + 30_000; !lines.some((l) => l.includes('replaced')) && Date.now() < end; ) await sleep(50);
      expect(lines.filter((l) => l.includes(killed))).toEqual([
        expect.stringMatching(new RegExp(`^\\[redis cluster\\] master ${killed}: .*; the tokens of its slots answer 503`)),
        `[redis cluster] master ${killed}: replaced (a replica took over its slots); every slot has a master again`,
      ]);
      expect(await gauge('rm_redis_cluster_slots_unserved')).toBe(0);
    } finally {
      await watch.stop();
      redis.disconnect();
      await cluster.stop();
    }
  }, 60_000);
  // ioredis never unassigns a slot it once read, so "slots without a master" are ones no node has claimed since
  // the client started (a cluster still being set up). A master replaced meanwhile is not over its outage: the
  // "replaced" line (which says every slot has a master again) waits until the last slot has one
  it('a master replaced while some slot has no master stays down, with no "replaced" line, until every slot has one', async () => {
    const cluster = await testCluster(3, ['--cluster-node-timeout', '1000', '--cluster-require-full-coverage', 'no'], 1);
    const servers = directClients(cluster.nodes);
    const UNCLAIMED = 16383;
    // unassigned in every server's view before the client reads the map
    for (const s of servers) await s.cluster('DELSLOTS', UNCLAIMED);
    const redis = createRedis({ redisUrl: '', redisClusterNodes: cluster.nodes }, { failFast: true, commandTimeoutMs: 2000 });
    redis.on('error', () => {});
    const lines: string[] = [];
    const watch = watchCluster(redis, logTo(CLUSTER_LOG, (l) => lines.push(l)), { ms: 200 })!;
    try {
      const ownerOf = (slot: number) => (redis instanceof Cluster ? redis.slots[slot]?.[0] : undefined) ?? '';
      for (const end = Date.now() + 10_000; (await gauge('rm_redis_cluster_master_up', { node: ownerOf(0) })) !== 1 && Date.now() < end; ) await sleep(50);
      expect(await gauge('rm_redis_cluster_slots_without_master')).toBe(1);
      const killed = ownerOf(0);
      expect(killed).not.toBe('');
      await cluster.signal(cluster.nodes.indexOf(killed), 'SIGKILL');
      // its replica took slot 0 over and answers: the killed master has left the map
      for (const end = Date.now() + 30_000; !(ownerOf(0) !== killed && (await gauge('rm_redis_cluster_master_up', { node: ownerOf(0) })) === 1) && Date.now() < end; ) await sleep(50);
      expect(ownerOf(0)).not.toBe(killed);
      await sleep(1000); // five probes
      expect(lines.filter((l) => l.includes(killed))).toEqual([expect.stringMatching(new RegExp(`^\\[redis cluster\\] master ${killed}: .*; the tokens of its slots answer 503`))]);
      expect(await gauge('rm_redis_cluster_slots_without_master')).toBe(1);

      // a live master claims the last slot: seen at the next slot-map refresh (every 5 s)
      const claimer = servers[cluster.nodes.indexOf(ownerOf(UNCLAIMED - 1))]!;
      await claimer.cluster('ADDSLOTS', UNCLAIMED);
      for (const end = Date.now() + 20_000; !lines.some((l) => l.includes('replaced')) && Date.now() < end; ) await sleep(50);
      expect(lines.filter((l) => l.includes(killed)).slice(1)).toEqual([`[redis cluster] master ${killed}: replaced (a replica took over its slots); every slot has a master again`]);
      expect(await gauge('rm_redis_cluster_slots_without_master')).toBe(0);
    } finally {
      await watch.stop();
      redis.disconnect();
      for (const s of servers) s.disconnect();
      await cluster.stop();
    }
  }, 60_000);
});
