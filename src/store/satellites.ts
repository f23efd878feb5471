import type { RedisClient } from './redis.js';

/**
 * Redis layout of the satellite registry (src/satellites/registry.ts), all under the hash tag {sat} so
 * its multi-key updates stay in one cluster slot. Kept here, below the registry, because the snapshot
 * copies it to Postgres and back.
 *   <p>:{sat}:s:<id>   hash   the satellite's fields (id, createdAt, keyHash, prevKeyHash, name, url, outboundKey)
 *   <p>:{sat}:keys     hash   sha256(key) -> "<satelliteId>\t<validUntil ms or empty>"
 *   <p>:{sat}:ids      set    registered ids
 *   <p>:{sat}:removed  set    ids removed and not added again: the snapshot deletes them from Postgres
 *   <p>:{sat}:retired  channel (no key) the id of each satellite removed or whose key was rotated, for the
 *                      serve workers' key caches (classic pub/sub: a Redis Cluster broadcasts it to every node)
 */
export class SatelliteKeys {
  constructor(readonly prefix: string) {}
  satellite(id: string): string {
    return `${this.prefix}:{sat}:s:${id}`;
  }
  index(): string {
    return `${this.prefix}:{sat}:keys`;
  }
  ids(): string {
    return `${this.prefix}:{sat}:ids`;
  }
  removed(): string {
    return `${this.prefix}:{sat}:removed`;
  }
  retired(): string {
    return `${this.prefix}:{sat}:retired`;
  }
}

/** One registered satellite as Redis holds it: its hash, and the key index entries naming it. */
export interface SatelliteRecord {
  id: string;
  fields: Record<string, string>;
  apiKeys: Record<string, string>;
}

/**
 * Every registered satellite, sorted by id, and the removed ids. Read in one MULTI, so a record, its keys
 * and the removed set agree (add and remove keep a registered id out of the removed set).
 */
export async function readRegistry(redis: RedisClient, keys: SatelliteKeys): Promise<{ satellites: SatelliteRecord[]; removed: string[] }> {
  const ids = (await redis.smembers(keys.ids())).sort();
  const tx = redis.multi();
  for (const id of ids) tx.hgetall(keys.satellite(id));
  tx.hgetall(keys.index()).smembers(keys.removed());
  const replies = (await tx.exec()) ?? [];
  for (const [err] of replies) if (err) throw err;
  const removed = (replies.pop()![1] as string[]).sort();
  const index = replies.pop()![1] as Record<string, string>;
  const records = ids.map((id, i) => ({ id, fields: replies[i]![1] as Record<string, string>, apiKeys: {} as Record<string, string> }));
  const byId = new Map(records.map((r) => [r.id, r]));
  for (const [hash, entry] of Object.entries(index)) {
    const r = byId.get(entry.slice(0, entry.indexOf('\t')));
    if (r) r.apiKeys[hash] = entry;
  }
  // an id whose hash is gone was removed between SMEMBERS and MULTI
  return { satellites: records.filter((r) => r.fields.id !== undefined), removed };
}

/** Registers `r` unless its id already is; false when it was. */
export async function insertSatellite(redis: RedisClient, keys: SatelliteKeys, r: SatelliteRecord): Promise<boolean> {
  if ((await redis.sadd(keys.ids(), r.id)) === 0) return false;
  const tx = redis.multi().hset(keys.satellite(r.id), r.fields).srem(keys.removed(), r.id);
  if (Object.keys(r.apiKeys).length > 0) tx.hset(keys.index(), r.apiKeys);
  await tx.exec();
  return true;
}
