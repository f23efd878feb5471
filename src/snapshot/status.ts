import { Keys } from '../store/keys.js';
import type { RedisClient } from '../store/redis.js';

/** What any process (e.g. an HTTP worker's /readyz) can learn about the snapshot writer. */
export interface SnapshotStatus {
  /** up: writing to Postgres; down: Postgres unreachable, retrying; off: no writer running */
  state: 'up' | 'down' | 'off';
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

export async function readSnapshotStatus(redis: RedisClient, prefix: string): Promise<SnapshotStatus> {
  const raw = await redis.get(new Keys(prefix).snapshotStatus());
  if (!raw) return { state: 'off' };
  try {
    return JSON.parse(raw) as SnapshotStatus;
  } catch {
    return { state: 'off' };
  }
}
