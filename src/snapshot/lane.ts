import type { Keys } from '../store/keys.js';
import type { StreamEvent } from './events.js';
import type { ReadResult, ShardStreams } from './streams.js';
import { Backoff } from './backoff.js';
import { failedToConnect } from './postgres.js';
import type { LogFields } from '../log.js';

/** A statement timeout (57014, query_canceled) or pg's own query_timeout: the batch was too slow (or Postgres hangs). */
const timedOut = (err: unknown): boolean => (err as { code?: unknown }).code === '57014' || (err as Error).message === 'Query read timeout';

/**
 * Postgres answered with an error of the statement (a SQLSTATE), not one of reaching it: a connection error
 * (class 08), a shutdown or start-up (57P), too many connections (53300), a missing database (3D000) or a
 * refused login (class 28) mean it cannot be reached, and so does any error opening a connection, whatever
 * its SQLSTATE: a database made to refuse connections (`ALLOW_CONNECTIONS false`, 55000) or whose CONNECT
 * right was revoked (42501) was read as a write refused "even alone", blaming a sound stream entry the
 * operator was then told to delete, while rm_snapshot_postgres_up stayed 1.
 */
export function refusedBy(err: unknown): boolean {
  const { code, syscall } = err as { code?: unknown; syscall?: unknown };
  // a socket's error (a `syscall` with it) is Node's, never Postgres': EPIPE, five capitals, read as a SQLSTATE
  // when a write met a connection pg_terminate_backend had ended, and the batch was halved as if refused
  return typeof code === 'string' && syscall === undefined && /^[0-9A-Z]{5}$/.test(code) && !/^(08|57P|53300|3D000|28)/.test(code) && !failedToConnect(err);
}

/**
 * A refusal that says nothing of the entries: a conflict (class 40: deadlock, serialization failure), a database
 * made read-only or a transaction state (class 25), a full disk or memory (class 53), an I/O error (class 58).
 * Halved down to one sound entry, each was logged as refused "even alone", to be removed by hand (a read-only
 * database did that to one entry of every lane); the same batch is tried again after the lane's backoff instead.
 */
const notTheEntries = (code: string): boolean => /^(40|25|53|58)/.test(code);

/** What a lane needs of the writer that runs it. */
export interface LaneDeps {
  streams: ShardStreams;
  keys: Keys;
  /** SNAPSHOT_BATCH: the most events of one transaction */
  batchMax: number;
  /** applies one batch in one transaction */
  commit(batch: StreamEvent[]): Promise<void>;
  /** acks pending ids whose entries are gone, and says so */
  ackLost(empty: Map<number, string[]>): Promise<void>;
  /** whether the writer still runs and holds the lease */
  writing(): boolean;
  log(level: 'error', msg: string, fields?: LogFields): void;
}

/**
 * A group of shards whose batches go to Postgres on a connection of their own, so Postgres works on several
 * transactions at once. A token lives in one shard, so lanes never touch one row. While a lane writes a full
 * round it reads its next one from Redis (only new entries: a re-read of pending entries could return the
 * ones being committed).
 */
export class Lane {
  prefetch: Promise<ReadResult> | undefined;
  /** most events of its next transaction: halved after each batch Postgres refuses or that times out, grown back after each commit (grow) */
  private size: number;
  /** how long a transaction may take: how long the last one that timed out ran (a statement or query timeout) */
  private limitMs = Infinity;
  /** the last entry Postgres refused alone, said once */
  private refusedAlone = '';
  /** after a batch Postgres refused: the lane's own backoff, and when it tries again */
  readonly backoff = new Backoff();
  retryAt = 0;

  constructor(readonly shards: number[], private readonly d: LaneDeps) {
    this.size = d.batchMax;
  }

  /**
   * One read, write and ack. A failure re-reads this lane's pending entries next, and only this lane's: when
   * every failure re-read every shard, one entry Postgres refuses (a hand-made row) kept the healthy lanes
   * re-reading their empty pending lists round after round, and no shard was copied at all.
   */
  async round(): Promise<number> {
    try {
      return await this.roundOf();
    } catch (err) {
      // what was prefetched stays pending in Redis and is re-read with the rest
      await this.dropPrefetch();
      this.d.streams.reread(this.shards);
      throw err;
    }
  }

  /**
   * After a round: a failure Postgres answered (a refusal) makes this lane wait on its own, true; any other
   * (Postgres or Redis out of reach) is every lane's, false. When the whole loop backed off for one bad
   * entry, the other three lanes slowed about tenfold (one round per 5 s).
   */
  settle(result: PromiseSettledResult<number>): boolean {
    if (result.status === 'fulfilled') {
      this.backoff.reset();
      return true;
    }
    if (!refusedBy(result.reason)) return false;
    this.retryAt = Date.now() + this.backoff.next();
    return true;
  }

  /** Drops what was prefetched (it stays pending in Redis). */
  async dropPrefetch(): Promise<void> {
    await this.prefetch?.catch(() => {});
    this.prefetch = undefined;
  }

  private async roundOf(): Promise<number> {
    const { streams } = this.d;
    // taken before the await: a failed prefetch must not be awaited again by every later round
    const prefetched = this.prefetch;
    this.prefetch = undefined;
    const got = await (prefetched ?? streams.read(this.shards));
    streams.used(got);
    const { events, empty } = got;
    await this.d.ackLost(empty);
    if (events.length >= streams.perShard && !streams.rereading(this.shards)) {
      this.prefetch = streams.read(this.shards);
      // it may fail (Redis restarted empty: NOGROUP) while the batch is being written, before anything
      // awaits it; unhandled, that rejection would end the process (serve with it). It is awaited later.
      this.prefetch.catch(() => {});
    }
    for (let i = 0; i < events.length && this.d.writing(); ) {
      const batch = events.slice(i, i + this.size);
      const t0 = performance.now();
      try {
        await this.d.commit(batch);
      } catch (err) {
        if (!this.shrink(batch, err, performance.now() - t0)) throw err;
        continue;
      }
      this.grow(batch.length, performance.now() - t0);
      await streams.ackAndTrim(batch);
      i += batch.length;
    }
    return events.length;
  }

  /**
   * After a commit of `n` events in `ms`: doubled, but no bigger than what takes half the time limit at that
   * pace. A fixed cap (half the batch that timed out, at least 250, for a minute) had rows slower than the
   * limit allows 250 of meet the timeout at every doubling back: each lane's round ended in one, its backoff
   * grew to 5 s, and it copied 125 events every 5 s. Sized by pace, a lane that was small behind a lock
   * doubles back at once when the lock goes, and one behind slow rows stays under the limit.
   */
  private grow(n: number, ms: number): void {
    this.size = Math.max(1, Math.min(this.d.batchMax, this.size * 2, Math.floor((n * this.limitMs) / 2 / Math.max(ms, 1))));
  }

  /**
   * After a batch failed: whether to try again at once, half as big. So when Postgres refuses it (a row it
   * rejects), the entries before that one reach it, and the one refused alone is named (once). Before, one
   * such entry held its lane's whole batch (thousands) and no log line named it. A batch too slow for a
   * statement timeout or the writer's query timeout (too big, or Postgres stalled by a lock) is halved too,
   * but tried after the lane's backoff, not at once: behind a lock every half timed out too, down to batches
   * of one, each "refused alone" though nothing was wrong with it. How long it ran is the time limit `grow`
   * keeps to. A refusal of the database, not of an entry (a conflict, read-only, a full disk: notTheEntries),
   * is tried again as it was, after the backoff: no entry is to blame.
   */
  private shrink(batch: StreamEvent[], err: unknown, ms: number): boolean {
    if (timedOut(err)) {
      this.size = Math.ceil(batch.length / 2);
      this.limitMs = ms;
      return false;
    }
    if (!refusedBy(err) || notTheEntries((err as { code: string }).code)) return false;
    if (batch.length > 1) {
      this.size = Math.ceil(batch.length / 2);
      return true;
    }
    const entry = `${this.d.keys.events(batch[0]!.shard)} ${batch[0]!.id}`;
    if (entry !== this.refusedAlone) {
      this.d.log('error', `Postgres refuses stream entry ${entry} (${batch[0]!.type}) even alone (${(err as Error).message}); shards ${this.shards.join(',')} wait behind it until the cause is mended or the entry is removed (docs/snapshot.md)`, { entry, shards: this.shards, code: (err as { code?: string }).code });
    }
    this.refusedAlone = entry;
    return false;
  }
}
