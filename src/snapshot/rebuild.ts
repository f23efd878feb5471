import type pg from 'pg';
import type { RedisClient } from '../store/redis.js';
import { dropKeys } from '../store/key-walk.js';
import { Keys } from '../store/keys.js';
import { Lease } from '../store/lease.js';
import { sampleLag } from './lag.js';
import { anyKey, dropEngineKeys, restoreFromPostgres } from './restore.js';
import { restoreSatellites } from './satellites.js';
import { restoreCampaigns } from './campaigns.js';
import { registerMarkedRevocations, restoreRevoked } from './revoked.js';
import { counted } from '../plural.js';

export interface RebuildOptions {
  /** restore over keys already under the prefix: the engine's are deleted first */
  force?: boolean;
  /** with force: even though the event streams hold changes Postgres lacks (they are lost) */
  discardPending?: boolean;
  /** names this restore to a writer that finds the lease taken */
  holder: string;
  /** told each step that changed Redis as it is done: a restore that fails later has said what it did (the wipe) */
  say: (line: string) => void;
}

export interface RebuildReport {
  tokens: number;
  satellites: { restored: number; kept: number };
  campaigns: { restored: number; kept: number };
  revocations: { restored: number; kept: number };
}

const LEASE_MS = 10_000;

/**
 * `restore --from-postgres`: rebuilds Redis under `prefix` from Postgres, holding the snapshot writer's lease
 * throughout, so no writer recreates the streams it deletes (a restore then died on BUSYGROUP halfway, and
 * changes made meanwhile went into streams it deleted, lost from Redis and Postgres alike).
 */
export async function rebuildRedis(redis: RedisClient, pool: pg.Pool, prefix: string, opts: RebuildOptions): Promise<RebuildReport> {
  const keys = new Keys(prefix);
  // checked before anything is touched, force or not
  const busy = `a snapshot writer holds its lease under "${prefix}:" (a serve or \`referral-manager snapshot\` runs against this Redis, or one stopped less than its lease, ${LEASE_MS / 1000} s, ago): stop every serve and snapshot of this prefix, then restore`;
  if (await redis.exists(keys.snapshotLease())) throw new Error(busy);
  const filled = await anyKey(redis, prefix);
  // held for the whole restore: a writer started meanwhile (a serve restarted by its supervisor) stands by
  // instead of recreating the streams under it
  const held = await new Lease(redis, keys.snapshotLease(), LEASE_MS, opts.holder).hold();
  if (!held) throw new Error(busy);
  try {
    if (filled) {
      if (!opts.force) throw new Error(`Redis has keys under "${prefix}:"; refusing to restore over them (use --force)`);
      // the streams hold changes Postgres lacks: a restore deletes them, so an acknowledged redeem was undone
      // (the token open to a second referral) and verify, comparing the result, found nothing
      const lag = await sampleLag(redis, prefix);
      if (lag.events > 0 && !opts.discardPending) {
        throw new Error(`${counted(lag.events, 'change')} in the event streams of "${prefix}:" have not reached Postgres (the oldest ${lag.seconds.toFixed(0)} s ago); a restore would lose them (a redeem undone, a token gone): run \`referral-manager snapshot\` until rm_snapshot_lag_events is 0 and stop it, or pass --discard-pending to lose them`);
      }
      const marksOnly = await registerMarkedRevocations(redis, prefix);
      if (marksOnly) opts.say(`registered ${counted(marksOnly, 'campaign revocation')} only the old shards held, so the restore keeps them`);
      opts.say(`deleted ${counted(await dropEngineKeys(redis, prefix), 'key')} of the engine under "${prefix}:"`);
      // failures counted against the emptied Redis (every token a 404) were no guesses: a satellite
      // that crossed the limit then stayed refused (429) for the rest of the window after the restore
      const windows = await dropKeys(redis, keys.failurePattern());
      if (windows) opts.say(`cleared ${counted(windows, 'rate-limit window')}`);
    }
    const tokens = await restoreFromPostgres(redis, pool, prefix);
    const satellites = await restoreSatellites(redis, pool, prefix);
    const revocations = await restoreRevoked(redis, pool, prefix);
    const campaigns = await restoreCampaigns(redis, pool, prefix);
    // a lease lost meanwhile (Redis restarted, or this process stalled past it) let a writer in under the restore
    if (!(await held.confirm())) {
      throw new Error(`the snapshot lease was lost during the restore (Redis restarted or lost it, or this process stalled past ${LEASE_MS / 1000} s): a writer may have started under it; stop every serve and snapshot of this prefix and restore again`);
    }
    return { tokens, satellites, campaigns, revocations };
  } finally {
    await held.release().catch(() => undefined);
  }
}
