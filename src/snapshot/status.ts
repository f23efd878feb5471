import { Keys } from '../store/keys.js';
import type { RedisClient } from '../store/redis.js';

/** What any process (e.g. an HTTP worker's /readyz) can learn about the snapshot writer. */
export interface SnapshotStatus {
  /**
   * up: writing to Postgres; down: Postgres unreachable, retrying; migrating: Postgres answers, the writer applies
   * a schema migration or waits for another process' (`migration` says which), writing nothing meanwhile; off: no
   * writer running; starting: this serve runs a writer that has not reported yet
   */
  state: 'up' | 'down' | 'migrating' | 'off' | 'starting';
  /** while migrating: the migration applied, or the Postgres backend whose migration it waits for */
  migration?: string;
  lagEvents?: number;
  lagSeconds?: number;
  /** epoch ms of the writer's last report */
  at?: number;
}

/** the writer refreshes the status every second; a writer gone for this long reads as off */
const STATUS_TTL_MS = 5000;

export async function writeSnapshotStatus(redis: RedisClient, prefix: string, s: SnapshotStatus): Promise<void> {
  await redis.set(new Keys(prefix).snapshotStatus(), JSON.stringify(s), 'PX', STATUS_TTL_MS);
}

/**
 * `ownWriterSince`: when the reading process started, if it is part of a serve that runs a writer. No report
 * since then is a writer starting: `off` (nothing yet, or a farewell of the writer before) said none runs.
 */
export async function readSnapshotStatus(redis: RedisClient, prefix: string, ownWriterSince?: number): Promise<SnapshotStatus> {
  const s = parse(await redis.get(new Keys(prefix).snapshotStatus()));
  return s.state === 'off' && ownWriterSince !== undefined && (s.at ?? 0) < ownWriterSince ? { state: 'starting' } : s;
}

function parse(raw: string | null): SnapshotStatus {
  if (!raw) return { state: 'off' };
  try {
    return JSON.parse(raw) as SnapshotStatus;
  } catch {
    return { state: 'off' };
  }
}
