import { Cluster, type Redis } from 'ioredis';
import calculateSlot from 'cluster-key-slot';
import { addressOfKey, answerWithin, nodeAddress, type RedisClient } from './redis.js';

// Whether a Redis Cluster's masters can serve their slots: what /readyz, the serve primary's cluster watch
// and the standalone snapshot writer judge it by.

export const SLOTS = 16384;
/** how long a readiness probe waits for each Cluster master: a hung one must not hold the probe */
export const MASTER_PROBE_MS = 1000;
/** per node, the CLUSTER INFO still unanswered: a hung master gets one, not one per probe */
const asking = new WeakMap<Redis, Promise<string>>();

function clusterInfo(node: Redis, ms: number): Promise<string> {
  let reply = asking.get(node);
  if (!reply) {
    reply = (node.cluster('INFO') as Promise<string>).finally(() => asking.delete(node));
    asking.set(node, reply);
  }
  return answerWithin(reply, ms);
}

/** Redis answered, refusing the command to this user (NOPERM: an ACL user not granted it). */
export const refusedToUser = (err: unknown): boolean => err instanceof Error && err.message.startsWith('NOPERM');

/**
 * What `judge` finds wrong in each master's INFO `section` (each answering within `ms`), sorted: one line
 * per master it names, with its address in front. With `unanswered`, a master whose INFO fails is put there
 * with its error (and one already there is not asked) instead of failing the whole call.
 */
export async function judgeMasters(nodes: Redis[], section: string, ms: number, judge: (info: string) => string | undefined, unanswered?: Map<Redis, unknown>): Promise<string[]> {
  const found = await Promise.all(
    nodes
      .filter((m) => !unanswered?.has(m))
      .map(async (m) => {
        try {
          return [nodeAddress(m), judge(await answerWithin(m.info(section), ms))] as const;
        } catch (err) {
          if (!unanswered) throw err;
          unanswered.set(m, err);
          return [nodeAddress(m), undefined] as const;
        }
      }),
  );
  return found.flatMap(([address, wrong]) => (wrong === undefined ? [] : [`${address} ${wrong}`])).sort();
}

export interface ClusterProbe {
  /** each master of the slot map: `ok` or why not */
  masters: Record<string, string>;
  /** slots the map gives no master */
  slotsWithoutMaster: number;
  /** those and the slots of every master not `ok`: the slots whose tokens answer 503 */
  slotsUnserved: number;
  /** slots per master, as the map read for this probe gave them */
  slotsOf: Map<string, number>;
}

/**
 * Whether every master of a Cluster can serve its slots: each master of the client's slot map (a slot's
 * first node) as `ok` or why not (no connection, no CLUSTER INFO answer within `ms`, an error, or a
 * cluster_state other than ok: it refuses keyed commands), and how many slots have no master at all.
 * One command per master, so cheap enough to poll. A master whose connection ended has left the client's
 * pool (ioredis does not reconnect cluster nodes, it re-reads the slot map); one that hangs or has left the
 * cluster may have been replaced: the map is re-read whenever a master is not ok, so a master back, or its
 * replica promoted, is connected at once. Undefined for a single Redis.
 */
export async function clusterMasters(client: RedisClient, ms = MASTER_PROBE_MS): Promise<ClusterProbe | undefined> {
  if (!(client instanceof Cluster)) return undefined;
  /** slots per master of the map, by ioredis' key of it */
  const slotsOfKey = new Map<string, number>();
  let slotsWithoutMaster = 0;
  for (let slot = 0; slot < SLOTS; slot++) {
    const key = client.slots[slot]?.[0];
    if (key) slotsOfKey.set(key, (slotsOfKey.get(key) ?? 0) + 1);
    else slotsWithoutMaster++;
  }
  // by nodeAddress's form, as /readyz and the log name a master (ioredis keys an IPv6 one `::1:6379`)
  const slotsOf = new Map([...slotsOfKey].map(([key, n]) => [addressOfKey(key), n]));
  const pool = new Map(client.nodes('master').map((n) => [nodeAddress(n), n]));
  const states = await Promise.all(
    [...slotsOf.keys()].map(async (key) => {
      const node = pool.get(key);
      let state = 'not connected';
      if (node) {
        try {
          const s = /cluster_state:(\w+)/.exec(await clusterInfo(node, ms))?.[1];
          state = s === 'ok' ? 'ok' : `cluster_state:${s}`;
        } catch (err) {
          state = (err as Error).message;
        }
      }
      // a master gone, hung or left the cluster may have been replaced: read the map now, not at the next refresh
      if (state !== 'ok') client.refreshSlotsCache();
      return [key, state] as const;
    }),
  );
  const slotsUnserved = states.reduce((n, [key, state]) => (state === 'ok' ? n : n + slotsOf.get(key)!), slotsWithoutMaster);
  return { masters: Object.fromEntries(states), slotsWithoutMaster, slotsUnserved, slotsOf };
}

/**
 * Marks a master `ok` in `probe` as failing for `why` (it failed a question after its CLUSTER INFO), its slots
 * counted unserved.
 */
export function markFailing(probe: ClusterProbe, address: string, why: string): void {
  if (probe.masters[address] !== 'ok') return;
  probe.masters[address] = why;
  probe.slotsUnserved += probe.slotsOf.get(address) ?? 0;
}

/** What keeps a Cluster from serving every slot, one line each, from a `clusterMasters` probe: empty when nothing does. */
export function clusterFailures(probe: ClusterProbe): string[] {
  const failing = Object.entries(probe.masters).filter(([, state]) => state !== 'ok').map(([node, state]) => `master ${node}: ${state}`);
  if (probe.slotsWithoutMaster > 0) failing.push(`${probe.slotsWithoutMaster} slots without a master`);
  return failing;
}

/** Whether the master of `key`'s slot was found serving by `probe` (always, on a single Redis: no probe). */
export function servesKey(client: RedisClient, probe: ClusterProbe | undefined, key: string): boolean {
  if (!probe || !(client instanceof Cluster)) return true;
  const master = client.slots[calculateSlot(key)]?.[0];
  return master !== undefined && probe.masters[addressOfKey(master)] === 'ok';
}
