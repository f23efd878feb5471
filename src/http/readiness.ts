import type { Redis } from 'ioredis';
import { answerWithin, isSentinel, masters, nodeAddress, redisErrorText, whyNotConnected, type RedisClient } from '../store/redis.js';
import { clusterFailures, clusterMasters, markFailing, refusedToUser, servesKey, SLOTS, type ClusterProbe } from '../store/cluster-probe.js';
import { Keys } from '../store/keys.js';
import { ensureScripts } from '../store/scripts.js';
import { replicaShortfall } from '../store/replicas.js';
import { evictingMasters } from '../store/eviction.js';
import { readSnapshotStatus } from '../snapshot/status.js';
import { lostShardsMessage, readLostShards } from '../snapshot/lost.js';

export interface Readiness {
  ready: boolean;
  details: Record<string, unknown>;
}

/**
 * Ready = Redis can serve tokens and the scripts are loaded. On a Cluster every master of the slot map is
 * probed with CLUSTER INFO (a PING reaches just one node), each named in the reply.
 *
 * A part of the Cluster down (a master killed or hung while the others still serve, or one short of the
 * replicas REDIS_WAIT_REPLICAS asks for) is `redis: "degraded"`, still 200: every instance sees the same
 * Cluster, so a 503 took them all out of rotation at once and turned the lost master's share of sign-ups
 * answering 503 into every sign-up failing (a Kubernetes Service with no ready endpoint refuses connections).
 * 503 is kept for what no instance can serve around: no master serving, Redis down, a master that would
 * evict tokens, tokens lost that the snapshot holds (they would be answered 404, a wrong answer, not a retry).
 *
 * The snapshot writer's state is reported but does not make a worker unready: sign-ups must keep working
 * while Postgres is away (the events wait in Redis). `ownWriterSince`: when this worker started, if its serve
 * runs a snapshot writer (readSnapshotStatus).
 */
export async function readiness(redis: RedisClient, prefix: string, probeMs: number, waitReplicas: number, ownWriterSince?: number): Promise<Readiness> {
  let cluster: Record<string, unknown> = {};
  const degraded: string[] = [];
  let serving: Redis[];
  let probe: ClusterProbe | undefined;
  try {
    probe = await clusterMasters(redis, probeMs);
    // a master that answered its CLUSTER INFO and then fails the INFO asked next (killed or hung in between)
    // is one part of the Cluster down, as the probe would have found it a moment later, not all of it (one
    // Redis failing them is Redis down: not collected, they throw)
    const unanswered = new Map<Redis, unknown>();
    const collect = probe ? unanswered : undefined;
    if (probe) {
      const { masters: states } = probe;
      serving = masters(redis).filter((m) => states[nodeAddress(m)] === 'ok');
    } else {
      // bounded like a master's probe: a hung Redis answered nothing until the request timeout, then the
      // generic 503, so a probe with a shorter timeout saw no reason at all
      await answerWithin(redis.ping(), probeMs);
      serving = masters(redis);
      // the one a failover moved: which server the sentinels named
      if (isSentinel(redis)) cluster = { master: nodeAddress(serving[0]!) };
    }
    // REDIS_WAIT_REPLICAS without the replicas: every change answered 503 while the probe said ready, so a
    // load balancer kept sending sign-ups to instances that could redeem nothing
    const short = await replicaShortfall(serving, waitReplicas, probeMs, collect);
    // Redis would delete tokens once full, silently: refused before it happens, while it can still be set right
    const evicting = await evictingMasters(serving, probeMs, collect);
    if (probe) {
      // before the refusal below, whose reply lists the masters as every Cluster reply does (markFailing, after,
      // writes into this same object)
      cluster = { masters: probe.masters };
      // INFO refused to the user on every master (no +info, README "A least-privilege ACL user"): not each master
      // down. One master refusing it (its ACL set apart from the others') is that master's part, as any failure
      const refused = [...unanswered.values()];
      if (serving.length && refused.length === serving.length && refused.every(refusedToUser)) throw refused[0];
      for (const [m, err] of unanswered) markFailing(probe, nodeAddress(m), redisErrorText(err));
      serving = serving.filter((m) => !unanswered.has(m));
      const failing = clusterFailures(probe);
      if (failing.length && probe.slotsUnserved >= SLOTS) {
        // a client that never read the slot map knows no master: why it cannot connect is the news
        const why = whyNotConnected(redis);
        return { ready: false, details: { redis: 'down', ...cluster, error: [...failing, ...(why ? [`not connected: ${why}`] : [])].join('; ') } };
      }
      if (failing.length) {
        degraded.push(...failing);
        cluster.slotsUnserved = probe.slotsUnserved;
      }
    }
    if (short.length && short.length === serving.length) {
      return { ready: false, details: { redis: 'up', ...cluster, replicas: 'short', error: `${short.join('; ')}: every state change on its slots is answered 503` } };
    }
    degraded.push(...short.map((s) => `${s}: every state change on its slots is answered 503`));
    if (evicting.length) return { ready: false, details: { redis: 'up', ...cluster, eviction: 'allkeys', error: `${evicting.join('; ')}: it would delete tokens once full; set maxmemory-policy noeviction` } };
  } catch (err) {
    // INFO refused to an ACL user without +info: said as Redis down, the operator looked for an outage
    if (refusedToUser(err)) return { ready: false, details: { redis: 'up', ...cluster, error: `${(err as Error).message}: the Redis user must be granted it (README, "A least-privilege ACL user")` } };
    return { ready: false, details: { redis: 'down', ...cluster, error: redisErrorText(err, redis) } };
  }
  const redisState = degraded.length ? { redis: 'degraded', ...cluster, degraded: degraded.join('; ') } : { redis: 'up', ...cluster };
  // what lives in one slot (the lost set, the writer's status) may sit on a master that does not serve: unknown
  // then, not asked (a hung one would hold the probe past the request deadline)
  const keys = new Keys(prefix);
  const inSlot = <T, U>(key: string, read: () => Promise<T>, unknown: U): Promise<T | U> => (servesKey(redis, probe, key) ? read() : Promise.resolve(unknown));
  try {
    // a Redis restarted without persistence, or a replica just promoted, lacks them: loaded again here, and
    // ready once that succeeded (reported not ready, every instance's probe flapped at each failover)
    const scripts = await ensureScripts(serving);
    // Redis answers but lost tokens Postgres holds (src/snapshot/lost.ts): they would be answered 404, for good
    const lost = await inSlot(keys.lostShards(), () => readLostShards(redis, prefix), 'unknown' as const);
    if (lost !== 'unknown' && lost.length) {
      return { ready: false, details: { ...redisState, lostShards: lost, error: lostShardsMessage(lost) } };
    }
    const snapshot = await inSlot(keys.snapshotStatus(), () => readSnapshotStatus(redis, prefix, ownWriterSince), { state: 'unknown' as const });
    return { ready: true, details: { ...redisState, scripts, ...(lost === 'unknown' ? { lostShards: lost } : {}), snapshot } };
  } catch (err) {
    return { ready: false, details: { ...redisState, scripts: 'unknown', error: (err as Error).message } };
  }
}
