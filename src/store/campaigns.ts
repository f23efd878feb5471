import { Keys, SHARDS } from './keys.js';
import type { RedisClient } from './redis.js';

/**
 * Redis layout of generation campaigns (CampaignStore, src/store/campaign-store.ts, reads and writes it; the
 * snapshot copies the records to Postgres and back). One hash tag per campaign ({camp:<id>}) keeps its
 * keys in one Redis Cluster slot:
 *   <p>:{camp:<id>}:meta        hash  id, perUser, expiresAt, satellites (JSON), createdAt
 *   <p>:{camp:<id>}:made:<sat>  hash  userId -> the user's tokens, comma-joined
 *   <p>:{camp:<id>}:dlv:<sat>   set   users whose tokens the satellite accepted
 *   <p>:{camp:<id>}:rej:<sat>   set   users whose tokens the satellite refused (src/campaigns/delivery.ts; tokens revoked)
 *   <p>:{camp:<id>}:prog:<sat>  hash  SatelliteProgress counters, status, lastError
 *   <p>:{camp:<id>}:run         string  the running generate's holder id, with a TTL it keeps renewing
 *   <p>:{campaigns}             zset  campaign id -> createdAt (listing)
 *   <p>:{gen:<sat>}:run         string  "<campaign id> <uuid>" of the run serving the satellite, with a TTL
 */
export class CampaignKeys {
  constructor(readonly prefix: string) {}
  private key(id: string, part: string): string {
    return `${this.prefix}:{camp:${id}}:${part}`;
  }
  meta(id: string): string {
    return this.key(id, 'meta');
  }
  made(id: string, sat: string): string {
    return this.key(id, `made:${sat}`);
  }
  delivered(id: string, sat: string): string {
    return this.key(id, `dlv:${sat}`);
  }
  refused(id: string, sat: string): string {
    return this.key(id, `rej:${sat}`);
  }
  progress(id: string, sat: string): string {
    return this.key(id, `prog:${sat}`);
  }
  run(id: string): string {
    return this.key(id, 'run');
  }
  index(): string {
    return `${this.prefix}:{campaigns}`;
  }
  satelliteRun(sat: string): string {
    return `${this.prefix}:{gen:${sat}}:run`;
  }
}

export interface CampaignMeta {
  id: string;
  perUser: number;
  expiresAt?: number;
  satellites: string[];
  createdAt: number;
}

/** Per satellite, summed over every run of the campaign. */
export interface SatelliteProgress {
  usersListed: number;
  usersServed: number;
  tokensMade: number;
  tokensDelivered: number;
  /** users whose tokens the satellite refused even alone in a push; their tokens are revoked */
  usersRefused: number;
  failures: number;
  /**
   * interrupted: recorded running, but no run holds the campaign (it was killed): `generate --resume`; never stored.
   * revoked: the campaign was revoked while this satellite was served, and its run stopped there.
   * expired: the campaign's expiresAt passed while this satellite was served, and its run stopped there.
   * removed: the satellite was removed (`satellites remove`) before it was served in full; a resume skips it.
   */
  status: 'pending' | 'running' | 'interrupted' | 'done' | 'failed' | 'revoked' | 'expired' | 'removed';
  lastError?: string;
}

/** A campaign's record as stored, without what it made and delivered per user (that can be millions of users). */
export interface CampaignRecord extends CampaignMeta {
  progress: Record<string, SatelliteProgress>;
}

export const COUNTERS = ['usersListed', 'usersServed', 'tokensMade', 'tokensDelivered', 'usersRefused', 'failures'] as const;
export type Counter = (typeof COUNTERS)[number];

/** The meta hash's fields. */
export function metaFields(meta: CampaignMeta): Record<string, string> {
  const fields: Record<string, string> = { id: meta.id, perUser: String(meta.perUser), satellites: JSON.stringify(meta.satellites), createdAt: String(meta.createdAt) };
  if (meta.expiresAt !== undefined) fields.expiresAt = String(meta.expiresAt);
  return fields;
}

/** A meta hash; undefined when the campaign does not exist. */
export function parseMeta(h: Record<string, string>): CampaignMeta | undefined {
  if (!h.id || !h.perUser) return undefined;
  const m: CampaignMeta = { id: h.id, perUser: Number(h.perUser), satellites: JSON.parse(h.satellites ?? '[]') as string[], createdAt: Number(h.createdAt) };
  if (h.expiresAt) m.expiresAt = Number(h.expiresAt);
  return m;
}

/**
 * A progress hash (strings), or a progress row Postgres holds (numbers); an absent one is a satellite no run
 * has started: pending, all zero. A counter missing (a row copied before that counter existed) reads 0.
 */
export function parseProgress(h: Partial<Record<keyof SatelliteProgress, string | number>>): SatelliteProgress {
  const p: SatelliteProgress = { usersListed: 0, usersServed: 0, tokensMade: 0, tokensDelivered: 0, usersRefused: 0, failures: 0, status: (h.status as SatelliteProgress['status']) ?? 'pending' };
  for (const c of COUNTERS) p[c] = Number(h[c] ?? 0);
  if (h.lastError) p.lastError = String(h.lastError);
  return p;
}

/**
 * The records of these campaigns (absent ones left out), in two round trips whatever their number: every
 * meta hash, then every progress hash (the commands of one turn go out together, src/store/redis.ts).
 */
export async function readCampaigns(redis: RedisClient, keys: CampaignKeys, ids: string[]): Promise<CampaignRecord[]> {
  const metas = (await Promise.all(ids.map((id) => redis.hgetall(keys.meta(id))))).map(parseMeta).filter((m): m is CampaignMeta => m !== undefined);
  const progress = await Promise.all(metas.map((m) => Promise.all(m.satellites.map((sat) => redis.hgetall(keys.progress(m.id, sat))))));
  // own properties whatever the satellite id: progress["__proto__"] = p would set the prototype, not a field
  return metas.map((m, i) => ({ ...m, progress: Object.fromEntries(m.satellites.map((sat, j) => [sat, parseProgress(progress[i]![j]!)])) }));
}

/** Every listed campaign's record, in creation order. */
export async function readAllCampaigns(redis: RedisClient, keys: CampaignKeys): Promise<CampaignRecord[]> {
  return readCampaigns(redis, keys, await redis.zrange(keys.index(), 0, -1));
}

/** Adds made users (tokens comma-joined) of one satellite, and records those `delivered` picks as accepted by it. */
export async function addMade(redis: RedisClient, keys: CampaignKeys, id: string, sat: string, made: [user: string, tokens: string][], delivered: (user: string) => boolean): Promise<void> {
  if (made.length === 0) return;
  const tx = redis.multi().hset(keys.made(id, sat), ...made.flat());
  const accepted = made.map(([u]) => u).filter(delivered);
  if (accepted.length) tx.sadd(keys.delivered(id, sat), ...accepted);
  await tx.exec();
}

/**
 * The users a satellite refused in a campaign, in pages of SSCAN (so memory stays bounded), unordered. A set kept
 * compact (an intset: numeric ids, up to set-max-intset-entries) comes whole in one page, whatever its size.
 */
export async function* readRefused(redis: RedisClient, keys: CampaignKeys, id: string, sat: string): AsyncGenerator<string[]> {
  let cursor = '0';
  do {
    const [next, users] = await redis.sscan(keys.refused(id, sat), cursor, 'COUNT', 1000);
    cursor = next;
    if (users.length) yield users;
  } while (cursor !== '0');
}

/** Records users refused by a satellite (restore: the refusals the snapshot holds). */
export async function addRefused(redis: RedisClient, keys: CampaignKeys, id: string, sat: string, users: string[]): Promise<void> {
  if (users.length) await redis.sadd(keys.refused(id, sat), ...users);
}

export async function campaignExists(redis: RedisClient, keys: CampaignKeys, id: string): Promise<boolean> {
  return (await redis.exists(keys.meta(id))) === 1;
}

/**
 * Writes a campaign's record: the progress and the meta hash in one MULTI (one slot), then the listing.
 * The meta hash is what makes a campaign exist (campaignExists, CampaignStore.require).
 */
export async function writeCampaign(redis: RedisClient, keys: CampaignKeys, c: CampaignRecord): Promise<void> {
  const tx = redis.multi();
  for (const [sat, p] of Object.entries(c.progress)) {
    const fields: Record<string, string> = { status: p.status, lastError: p.lastError ?? '' };
    for (const counter of COUNTERS) fields[counter] = String(p[counter]);
    tx.hset(keys.progress(c.id, sat), fields);
  }
  await tx.hset(keys.meta(c.id), metaFields(c)).exec();
  await redis.zadd(keys.index(), 'NX', c.createdAt, c.id);
}

/**
 * Marks a campaign revoked in every virtual shard's dictionary, as lua/revoke_sweep.lua does when it
 * sweeps a shard, so generate.lua refuses it: for a restore, whose dictionaries are rebuilt from tokens.
 */
export async function markRevokedInShards(redis: RedisClient, prefix: string, id: string, revokedAt: number): Promise<void> {
  const keys = new Keys(prefix);
  await Promise.all(Array.from({ length: SHARDS }, (_, s) => redis.hsetnx(keys.dict(s), `x\t${id}`, String(revokedAt))));
}
