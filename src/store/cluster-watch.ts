import client from 'prom-client';
import { Cluster, type Redis } from 'ioredis';
import { every } from '../every.js';
import type { Log, LogKind } from '../log.js';
import { onFirstUse } from '../on-first-use.js';
import { nodeAddress, type RedisClient } from './redis.js';
import { slotMoves } from './cluster-nodes.js';
import { clusterMasters, MASTER_PROBE_MS } from './cluster-probe.js';

/** made by watchCluster */
export const clusterWatchMetrics = onFirstUse(() => ({
  masterUp: new client.Gauge({
    name: 'rm_redis_cluster_master_up',
    help: 'Redis Cluster: 1 for each master of the slot map that answers with cluster_state:ok, 0 for one that does not (the tokens of its slots answer 503)',
    labelNames: ['node'] as const,
  }),
  slotsWithoutMaster: new client.Gauge({ name: 'rm_redis_cluster_slots_without_master', help: 'Redis Cluster: slots the slot map gives no master' }),
  // a failed master and its failed replicas stay in the map as the slots' owner: slots_without_master read 0
  slotsUnserved: new client.Gauge({
    name: 'rm_redis_cluster_slots_unserved',
    help: 'Redis Cluster: slots with no master, or whose master does not answer with cluster_state:ok (their tokens answer 503); of 16384',
  }),
  slotsMigrating: new client.Gauge({
    name: 'rm_redis_cluster_slots_migrating',
    help: 'Redis Cluster: slots a master marks migrating (a reshard under way, or one left unfinished: scripts on their keys may fail with TRYAGAIN)',
  }),
}));

async function migratingSlots(node: Redis, ms: number): Promise<{ slot: number; from: string; to: string }[]> {
  return (await slotMoves(node, ms)).filter((m) => !m.importing).map((m) => ({ slot: m.slot, from: m.self, to: m.peer }));
}

/** The watch's lines; `[redis cluster]` before them in a text line. */
export const CLUSTER_LOG: LogKind = { component: 'cluster', text: (_, msg) => `[redis cluster] ${msg}` };

export interface ClusterWatchOptions {
  /** probe period */
  ms?: number;
  /** a slot migrating this long is called out as a reshard left unfinished */
  stuckMs?: number;
}

/**
 * Watches a Redis Cluster from one process per host (the serve primary), so the log and the metrics say
 * what the HTTP workers only show as 503s: a master that stopped answering (down, or hung: a hung one
 * raises no client error at all) and when it answers again, judged by the probe /readyz uses (CLUSTER
 * INFO within 1 s) rather than by ioredis' node pool, which holds a dead master again after every slot-map
 * refresh; and slots left migrating by an interrupted reshard, which /readyz does not fail on (most tokens
 * still work) but which make scripts on their keys fail. Undefined for a single Redis.
 */
export function watchCluster(redis: RedisClient, log: Log, opts: ClusterWatchOptions = {}): { stop(): Promise<void> } | undefined {
  // made on a single Redis too, where the counts read 0 (README)
  const gauges = clusterWatchMetrics();
  if (!(redis instanceof Cluster)) return undefined;
  const stuckMs = opts.stuckMs ?? 60_000;
  // ok or not per master: only a change of that is logged. The reason may change every probe (a killed
  // master leaves the pool, a slot-map refresh puts it back, its connection fails again)
  let up = new Map<string, boolean>();
  let migrating = new Map<number, { since: number; said: boolean }>();
  /** each master's migrating slots as last read: one that does not answer keeps them (silence is no news) */
  let reported = new Map<string, { slot: number; from: string; to: string }[]>();
  return every(opts.ms ?? 5000, async () => {
    const probe = await clusterMasters(redis).catch(() => undefined);
    if (!probe) return;
    gauges.masterUp.reset();
    const next = new Map<string, boolean>();
    for (const [node, state] of Object.entries(probe.masters)) {
      const ok = state === 'ok';
      next.set(node, ok);
      gauges.masterUp.set({ node }, ok ? 1 : 0);
      const was = up.get(node);
      if (!ok && was !== false) log('warn', `master ${node}: ${state}; the tokens of its slots answer 503 until it or a replica answers`, { node, state });
      if (ok && was === false) log('info', `master ${node}: ok again`, { node, state });
    }
    // a master that failed and left the slot map was replaced (a replica took over): its outage is over
    // once every slot has a master again, and only then; the new master, never down, has no line of its own
    for (const [node, ok] of up) {
      if (ok || next.has(node)) continue;
      if (probe.slotsWithoutMaster === 0) log('info', `master ${node}: replaced (a replica took over its slots); every slot has a master again`, { node });
      else next.set(node, false);
    }
    up = next;
    gauges.slotsWithoutMaster.set(probe.slotsWithoutMaster);
    gauges.slotsUnserved.set(probe.slotsUnserved);

    const now = Date.now();
    const masters = redis.nodes('master');
    const read = await Promise.all(masters.map((n) => migratingSlots(n, MASTER_PROBE_MS).catch(() => undefined)));
    const heard = new Map(masters.map((n, i) => [nodeAddress(n), read[i] ?? reported.get(nodeAddress(n)) ?? []] as const));
    reported = heard;
    const found = [...heard.values()].flat();
    gauges.slotsMigrating.set(found.length);
    const seen = new Map<number, { since: number; said: boolean }>();
    for (const m of found) {
      const had = migrating.get(m.slot) ?? { since: now, said: false };
      if (!had.said && now - had.since >= stuckMs) {
        log('warn', `slot ${m.slot} has been migrating from ${m.from} to ${m.to} for ${Math.round((now - had.since) / 1000)} s: a reshard left unfinished? scripts on its keys may fail with TRYAGAIN; \`redis-cli --cluster fix ${m.from}\` finishes it`, { slot: m.slot, from: m.from, to: m.to });
        had.said = true;
      }
      seen.set(m.slot, had);
    }
    if (migrating.size === 0 && seen.size > 0) log('info', `${seen.size} slot(s) migrating (a reshard under way), e.g. slot ${found[0]!.slot} from ${found[0]!.from} to ${found[0]!.to}`, { slots: seen.size });
    if (migrating.size > 0 && seen.size === 0) log('info', 'no slot migrating any more');
    migrating = seen;
  });
}
