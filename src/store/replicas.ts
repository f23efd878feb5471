import { Cluster, type Redis } from 'ioredis';
import calculateSlot from 'cluster-key-slot';
import { addressOfKey, masters, nodeAddress, type RedisClient } from './redis.js';
import { judgeMasters } from './cluster-probe.js';
import type { Config } from '../config.js';

/**
 * A state change a replica may not have: its master might lose it in a failover. The message starts like
 * the refusal of a master with `min-replicas-to-write`, and both answer 503 (src/http/server.ts storeDown):
 * the change may stand, and a retry is answered as a retry (the same redeemer gets ok again).
 */
export class NotReplicated extends Error {
  constructor(detail: string) {
    super(`NOREPLICAS ${detail}`);
    this.name = 'NotReplicated';
  }
}

const ignore = () => undefined;

/** REDIS_WAIT_REPLICAS and REDIS_WAIT_MS, as a store takes them */
export type ReplicaWait = Pick<Config, 'redisWaitReplicas' | 'redisWaitMs'>;

/** for stores that only read (or a bench, a test): nothing to wait for */
export const NO_REPLICA_WAIT: ReplicaWait = { redisWaitReplicas: 0, redisWaitMs: 0 };

/**
 * REDIS_WAIT_REPLICAS: after a state change, WAIT until that many replicas of the master that took it have
 * it too, so a replica promoted by a failover (Sentinel, Cluster) holds every change a caller was told
 * about. Redis replicates asynchronously: without this an acknowledged redemption can vanish with its
 * master, and the token be redeemed again. WAIT counts the writes of the connection it is sent on, so it
 * goes to the very connection the script went to: on a Cluster, the client's connection to the master of
 * the key's slot. It blocks that connection until the replicas answer (they are asked at once), which
 * commands pipelined behind it wait for: the price of the guarantee, paid only when it is asked for.
 */
export class ReplicaAck {
  constructor(
    private readonly redis: RedisClient,
    private readonly replicas: number,
    private readonly timeoutMs: number,
  ) {}

  /** per master, the WAIT in flight on its connection and the one that follows it */
  private readonly waits = new Map<Redis, { current: Promise<number>; next?: Promise<number> }>();

  get on(): boolean {
    return this.replicas > 0;
  }

  /**
   * Replicas that have this connection's writes so far. A WAIT blocks the connection it is sent on, so WAITs
   * sent one per change ran one after another: with a replica gone, 40 changes at once took 40 timeouts, the
   * reads queued behind them too, and most were answered as "Redis unavailable" by the request deadline. A
   * change made while a WAIT is in flight (which may have been sent before it) shares the next one, sent when
   * that ends: it covers every write made before it. So at most two WAITs per master, whatever the load.
   */
  private acked(node: Redis): Promise<number> {
    const w = this.waits.get(node);
    if (!w) return this.send(node);
    w.next ??= w.current.then(ignore, ignore).then(() => this.send(node));
    return w.next;
  }

  private send(node: Redis): Promise<number> {
    const current = node.wait(this.replicas, this.timeoutMs).then(Number);
    const entry = { current };
    this.waits.set(node, entry);
    const done = () => void (this.waits.get(node) === entry && this.waits.delete(node));
    current.then(done, done);
    return current;
  }

  /** Resolves once the changes sent to the masters of `keys` reached enough replicas; throws NotReplicated when they did not within the timeout. */
  async after(...keys: string[]): Promise<void> {
    if (!this.on) return;
    await Promise.all([...new Set(keys.map((k) => this.masterOf(k)))].map((node) => this.wait(node)));
  }

  /** The same for every master: after a sweep over all shards. */
  async afterAll(): Promise<void> {
    if (!this.on) return;
    await Promise.all(masters(this.redis).map((node) => this.wait(node)));
  }

  private masterOf(key: string): Redis {
    if (!(this.redis instanceof Cluster)) return this.redis;
    const slot = calculateSlot(key);
    const address = this.redis.slots[slot]?.[0];
    const node = address === undefined ? undefined : this.redis.nodes('master').find((n) => nodeAddress(n) === addressOfKey(address));
    // the slot map is moving (a failover): which connection wrote cannot be told, so neither can the copies
    if (!node) throw new NotReplicated(`cannot tell whether the change reached a replica: no connection to the master of slot ${slot}`);
    return node;
  }

  private async wait(node: Redis): Promise<void> {
    const acked = await this.acked(node);
    if (acked < this.replicas) {
      throw new NotReplicated(`${acked} of ${this.replicas} replicas of ${nodeAddress(node)} acknowledged the change within ${this.timeoutMs} ms`);
    }
  }
}

/**
 * The masters with fewer replicas online than REDIS_WAIT_REPLICAS asks for, as "host:port has n of m
 * replicas online": every change they take is answered 503 after REDIS_WAIT_MS (WAIT cannot be met), while
 * lookups still work. Empty when the wait is off.
 */
export async function replicaShortfall(nodes: Redis[], wanted: number, probeMs: number, unanswered?: Map<Redis, unknown>): Promise<string[]> {
  if (wanted <= 0) return [];
  const judge = (info: string) => {
    const online = info.split('\n').filter((l) => /^slave\d+:.*state=online/.test(l)).length;
    return online < wanted ? `has ${online} of the ${wanted} replicas REDIS_WAIT_REPLICAS asks for online` : undefined;
  };
  return judgeMasters(nodes, 'replication', probeMs, judge, unanswered);
}
