import client from 'prom-client';
import { onFirstUse } from '../on-first-use.js';

/**
 * Snapshot writer metrics, in prom-client's default registry (served by the HTTP API's /metrics), made by
 * the process that writes or samples the lag (a writer; a serve primary with SNAPSHOT=false, whose
 * rm_snapshot_leader 0 lets the "no snapshot writer" alert fire when none runs), not on import: every serve
 * worker exported them at 0 or NaN beside the primary's.
 */
export const snapshotMetrics = onFirstUse(() => {
  const m = {
    lagEvents: new client.Gauge({ name: 'rm_snapshot_lag_events', help: 'Stream entries not yet committed to Postgres (all shards)' }),
    lagSeconds: new client.Gauge({ name: 'rm_snapshot_lag_seconds', help: 'Age of the oldest stream entry not yet committed to Postgres' }),
    batchSize: new client.Histogram({
      name: 'rm_snapshot_batch_events',
      help: 'Events applied per Postgres transaction',
      buckets: [1, 10, 100, 500, 1000, 2500, 5000, 10000],
    }),
    writeSeconds: new client.Histogram({
      name: 'rm_snapshot_write_seconds',
      help: 'Time of one batch transaction (statement and commit)',
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
    }),
    applied: new client.Counter({ name: 'rm_snapshot_events_total', help: 'Events committed to Postgres' }),
    errors: new client.Counter({ name: 'rm_snapshot_errors_total', help: 'Snapshot writer failures, by where', labelNames: ['where'] as const }),
    postgresUp: new client.Gauge({
      name: 'rm_snapshot_postgres_up',
      help: '1 while the writer holding the lease reaches Postgres (also while it migrates the schema), 0 while it retries; NaN in a process not holding the lease (it does not check)',
    }),
    leader: new client.Gauge({ name: 'rm_snapshot_leader', help: '1 while this process holds the single-writer lease' }),
    lostShards: new client.Gauge({
      name: 'rm_snapshot_redis_lost_shards',
      help: 'Virtual shards (of 64) whose tokens Redis lost while Postgres holds them, as the lease holder last found (restore them from Postgres); NaN in a process not holding the lease',
    }),
    wentBack: new client.Counter({
      name: 'rm_snapshot_redis_went_back_total',
      help: 'Shards found to have lost changes the writer had read: Redis went back to an older copy of itself (an older RDB or AOF file, a lagging replica promoted)',
    }),
    changesLost: new client.Counter({
      name: 'rm_snapshot_redis_lost_changes_total',
      help: 'Changes Postgres holds that Redis lost when it went back in time: those tokens are back in their earlier state in Redis',
    }),
  };
  // each series present from the start at 0: increase() over one that first appears at 1 reads 0, so an alert on
  // the first lost entry never fired
  for (const where of ['postgres', 'redis', 'lost', 'lag', 'status']) m.errors.inc({ where }, 0);
  m.postgresUp.set(NaN);
  m.lostShards.set(NaN);
  return m;
});
