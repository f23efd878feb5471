import type pg from 'pg';
import { snapshotMetrics } from './metrics.js';
import { committedBetween } from './positions.js';
import type { WentBack } from './streams.js';
import type { LogFields } from '../log.js';

/**
 * The writer's word on shards found gone back in time (ShardStreams): said at once, so a writer stopped before
 * the count still leaves the loss in its log and in rm_snapshot_redis_went_back_total (the read that found it
 * moved the group: no later writer sees it again), then counted from Postgres. No /readyz 503: the other tokens
 * still work, and a failover losing the last milliseconds would otherwise take every instance out until
 * someone acts. `verify --repair-redis` mends.
 */
export class WentBackReport {
  /** found, not yet counted */
  private readonly uncounted: WentBack[] = [];
  private counting = false;
  private readonly m = snapshotMetrics();

  constructor(private readonly log: (level: 'warn' | 'error', msg: string, fields?: LogFields) => void) {}

  found(w: WentBack): void {
    const at = `Redis went back in time on shard ${w.shard} (restarted from an older RDB or AOF file, or a replica that lagged was promoted): its event stream's group stood at ${w.group}, the writer had read up to ${w.read}`;
    // the group went back, but not the stream: a replica that had every change, not yet every read of them
    if (w.kept === w.read) return this.log('warn', `${at}; Redis still holds every change the writer read, so none is lost`, { shard: w.shard });
    this.m.wentBack.inc();
    this.log('error', `${at}; Redis lost the changes after ${w.kept}: how many of them Postgres holds follows`, { shard: w.shard });
    this.uncounted.push(w);
  }

  /**
   * Counts what Postgres holds of each uncounted shard's lost changes (rm_snapshot_redis_lost_changes_total)
   * and says it. The writer's loop calls it between rounds, not on finding: a loss found by a prefetch while
   * the batch read before it was still being committed counted that batch short. One not counted now
   * (Postgres down too, a crash of the whole host) waits for the next call.
   */
  async count(pool: pg.Pool): Promise<void> {
    if (this.counting || !this.uncounted.length) return;
    this.counting = true;
    try {
      for (const w of this.uncounted.splice(0)) {
        const c = await committedBetween(pool, w.shard, w.kept, w.read).catch(() => undefined);
        if (!c) {
          this.uncounted.push(w);
          continue;
        }
        this.m.changesLost.inc(c.events);
        this.log('error', `shard ${w.shard}: Postgres holds ${c.events} change(s) of ${c.tokens} token(s) after ${w.kept} that Redis lost when it went back in time. Those tokens are in their earlier state in Redis (a lost redemption can be redeemed again): once the snapshot has caught up, \`referral-manager verify --repair-redis\` gives them back what Postgres holds (runbook "Redis went back in time")`, { shard: w.shard, changes: c.events, tokens: c.tokens });
      }
    } finally {
      this.counting = false;
    }
  }
}
