import type { Redis } from 'ioredis';
import { judgeMasters } from './cluster-probe.js';

/**
 * The masters that may evict token keys, as "host:port evicts any key at its maxmemory (maxmemory-policy X)":
 * an `allkeys-*` policy with a maxmemory set. Buckets, side records and event streams carry no TTL, so the
 * `volatile-*` policies (and noeviction, the default) never touch them; an `allkeys-*` one deletes them
 * silently once Redis is full: tokens gone, events gone, and nothing in Postgres for the changes not yet copied.
 */
export function evictingMasters(nodes: Redis[], probeMs: number, unanswered?: Map<Redis, unknown>): Promise<string[]> {
  const judge = (info: string) => {
    const max = Number(/^maxmemory:(\d+)/m.exec(info)?.[1] ?? 0);
    const policy = /^maxmemory_policy:(\S+)/m.exec(info)?.[1] ?? 'noeviction';
    return max > 0 && policy.startsWith('allkeys') ? `evicts any key at its maxmemory (maxmemory-policy ${policy})` : undefined;
  };
  return judgeMasters(nodes, 'memory', probeMs, judge, unanswered);
}
