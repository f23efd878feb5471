import type pg from 'pg';
import { applyEvents } from './apply.js';
import type { StreamEvent } from './events.js';
import { snapshotMetrics } from './metrics.js';
import { withClient } from './postgres.js';

/** The writer's commits: each batch in one transaction, timed and counted. */
export class Commits {
  private commits = 0;
  private readonly m = snapshotMetrics();

  /** `crashAfter`: SNAPSHOT_TEST_CRASH_AFTER_COMMIT, the fault tests' hook (0: off) */
  constructor(private readonly crashAfter: number) {}

  async commit(pool: pg.Pool, batch: StreamEvent[]): Promise<void> {
    const seconds = await withClient(pool, async (client) => {
      const t0 = performance.now();
      await client.query('BEGIN');
      await applyEvents(client, batch);
      await client.query('COMMIT');
      return (performance.now() - t0) / 1000;
    });
    this.m.writeSeconds.observe(seconds);
    this.m.batchSize.observe(batch.length);
    this.m.applied.inc(batch.length);
    this.commits++;
    if (this.crashAfter > 0 && this.commits >= this.crashAfter) process.kill(process.pid, 'SIGKILL');
  }
}
