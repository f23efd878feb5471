import { pushTo } from '../collections.js';
import { SHARDS, type Keys } from '../store/keys.js';
import type { RedisClient } from '../store/redis.js';
import { compareIds, parseEntry, type StreamEvent } from './events.js';
import { defineScripts, type ScriptFn } from '../store/scripts.js';
import { GROUP } from './lag.js';

/** a stream entry as XREADGROUP gives it: fields null when it was trimmed while pending */
type Entry = [string, string[] | null];
type XReadReply = [string, Entry[]][] | null;

export interface ReadResult {
  events: StreamEvent[];
  /** pending ids whose entries were trimmed: ack only */
  empty: Map<number, string[]>;
  /** shards whose pending entries are all re-read: they switch to new entries once this result is used */
  drained: number[];
}

/**
 * A shard whose group had delivered `read` (to this process, or per Postgres) but now stands at `group`: Redis
 * went back to an older copy of itself (restarted from an older RDB or AOF file, or a replica that lagged was
 * promoted). `kept` is the newest entry up to `read` it still holds: the changes after it, up to `read`, are
 * gone from Redis (Postgres holds those it committed).
 */
export interface WentBack {
  shard: number;
  group: string;
  kept: string;
  read: string;
}

/** What a read of new entries finds that no later read could: told at once (a read whose result is dropped, a prefetch, must not take it along). */
export interface StreamNews {
  wentBack(w: WentBack): void;
  /** `n` entries of shard `shard`'s stream after `group` (the group's position) were removed before they were read */
  removedUnread(shard: number, n: number, group: string): void;
}

/**
 * A shard's event stream and the writer's consumer group on it, made if missing (a new stream's group told it
 * read none of it), and the group's count of entries read written as it stands (lua/ensure_group.lua).
 */
export function ensureGroup(redis: RedisClient, stream: string): Promise<unknown> {
  return defineScripts(redis, ['ensure_group']).ensure_group([stream], [GROUP]);
}

const newer = (a: string, b: string) => (!a || (b && compareIds(b, a) > 0) ? b : a);

/**
 * The writer's side of the shards' event streams: the consumer group, reads, acks and trims. A shard
 * re-reads its pending entries (id 0) after a start (`rereadAll`) or its lane's failure (`reread`), then reads new ones ('>').
 */
export class ShardStreams {
  private readonly pendingMode = new Array<boolean>(SHARDS).fill(true);
  private groupsReady = false;
  /**
   * Per shard, the newest entry its group is known to have delivered ('' unknown): by this process' reads,
   * by the group itself, or by what Postgres holds (every committed entry was delivered first). Only reads
   * move a group forward, so a group found behind it went back with Redis; the writer's own next read
   * would move it forward again and hide that, so every read of new entries asks the group first, in the
   * same script (lua/read_new.lua).
   */
  private readonly delivered = new Array<string>(SHARDS).fill('');
  /** lua/read_new.lua, lua/trim_below.lua */
  private readonly readNew: ScriptFn;
  private readonly trimBelow: ScriptFn;

  constructor(
    private readonly redis: RedisClient,
    private readonly keys: Keys,
    private readonly consumer: string,
    /** entries read per shard and call */
    readonly perShard: number,
    private readonly news: StreamNews,
  ) {
    ({ read_new: this.readNew, trim_below: this.trimBelow } = defineScripts(redis, ['read_new', 'trim_below']));
  }

  /** Makes every shard's stream and group (ensureGroup) once, and again after `lostGroups` (a Redis that lost its data). */
  async ensureGroups(): Promise<void> {
    if (this.groupsReady) return;
    await Promise.all(Array.from({ length: SHARDS }, (_, s) => ensureGroup(this.redis, this.keys.events(s))));
    this.groupsReady = true;
  }

  lostGroups(): void {
    this.groupsReady = false;
  }

  /** Every shard re-reads its pending entries next: on taking the lease, and once a lease period after. */
  rereadAll(): void {
    this.pendingMode.fill(true);
  }

  /** These shards re-read their pending entries next: after their lane failed. */
  reread(shards: number[]): void {
    for (const s of shards) this.pendingMode[s] = true;
  }

  /** Whether any of `shards` still re-reads its pending entries. */
  rereading(shards: number[]): boolean {
    return shards.some((s) => this.pendingMode[s]);
  }

  /** Ids of the newest events Postgres holds per shard: delivered by the group before they were committed. */
  knowCommitted(newest: Map<number, string>): void {
    for (const [s, id] of newest) this.delivered[s] = newer(this.delivered[s]!, id);
  }

  async read(shards: number[]): Promise<ReadResult> {
    const events: StreamEvent[] = [];
    const empty = new Map<number, string[]>();
    const drained: number[] = [];
    const modes = shards.map((s) => this.pendingMode[s]);
    const replies = await Promise.all(
      shards.map(async (s, i) => {
        const key = this.keys.events(s);
        if (modes[i]) {
          const reply = (await this.redis.xreadgroup('GROUP', GROUP, this.consumer, 'COUNT', this.perShard, 'STREAMS', key, '0')) as XReadReply;
          return { entries: reply?.[0]?.[1] ?? [], at: undefined, unread: 0 };
        }
        const [at, entries, unread] = (await this.readNew([key], [GROUP, this.consumer, this.perShard])) as [string, Entry[], number];
        return { entries, at, unread };
      }),
    );
    for (const [i, { entries, at, unread }] of replies.entries()) {
      const s = shards[i]!;
      if (unread > 0) this.news.removedUnread(s, unread, at!);
      if (modes[i] && entries.length === 0) drained.push(s);
      for (const [id, fields] of entries) {
        const e = parseEntry(s, id, fields);
        if (e) events.push(e);
        else pushTo(empty, s, id);
      }
      if (at === undefined) continue;
      const known = this.delivered[s]!;
      // a group at 0-0 never delivered anything: one made anew (its stream was lost), not one gone back
      if (known && at && at !== '0-0' && compareIds(at, known) < 0) {
        // not failing the read over it: its entries are delivered now, and the group moved past the evidence
        // (unanswered, the group's position stands in: the count then takes what Redis kept after it as lost too)
        const kept = await this.newestUpTo(s, known, at).catch(() => at);
        this.delivered[s] = '';
        this.news.wentBack({ shard: s, group: at, kept, read: known });
      }
      this.delivered[s] = newer(newer(this.delivered[s]!, at), entries.at(-1)?.[0] ?? '');
    }
    return { events, empty, drained };
  }

  /** The newest entry of shard `s`'s stream up to `upTo`, or `floor` when none is newer than it. */
  private async newestUpTo(s: number, upTo: string, floor: string): Promise<string> {
    const [last] = (await this.redis.xrevrange(this.keys.events(s), upTo, `(${floor}`, 'COUNT', 1)) as [string, string[]][];
    return last?.[0] ?? floor;
  }

  /** A read result is being used: its drained shards read new entries from now on. */
  used(got: ReadResult): void {
    for (const s of got.drained) this.pendingMode[s] = false;
  }

  /** Acks a committed batch and trims each shard below what is committed. */
  async ackAndTrim(batch: StreamEvent[]): Promise<void> {
    const byShard = new Map<number, string[]>();
    for (const e of batch) pushTo(byShard, e.shard, e.id);
    await Promise.all(
      [...byShard].map(async ([s, ids]) => {
        const stream = this.keys.events(s);
        await this.redis.xack(stream, GROUP, ...ids);
        if (this.pendingMode[s]) return;
        // entries are read in order: everything below the newest committed id is committed, but for entries
        // still pending or not delivered, which lua/trim_below.lua keeps
        await this.trimBelow([stream], [GROUP, ids.reduce((a, b) => (compareIds(a, b) >= 0 ? a : b))]);
      }),
    );
  }

  /**
   * Acks pending ids whose entries are gone (trimmed by something else), shard by shard: how many were acked,
   * and the first failure. Every shard acked is counted, also when another failed: those ids are gone for good.
   */
  async ackLost(empty: Map<number, string[]>): Promise<{ acked: number; error?: unknown }> {
    const acks = await Promise.allSettled([...empty].map(async ([s, ids]) => (await this.redis.xack(this.keys.events(s), GROUP, ...ids), ids.length)));
    let acked = 0;
    let error: unknown;
    for (const a of acks) {
      if (a.status === 'fulfilled') acked += a.value;
      else error ??= a.reason;
    }
    return { acked, error };
  }
}
