import type pg from 'pg';
import type { RedisClient } from '../store/redis.js';
import { Keys, SHARDS } from '../store/keys.js';
import { dashed, hexOf } from '../store/codec.js';
import { TokenStore } from '../store/token-store.js';
import { EXPORT_FIELDS } from '../store/export.js';
import { readRegistry, SatelliteKeys } from '../store/satellites.js';
import { CampaignKeys, COUNTERS, readAllCampaigns, type CampaignRecord } from '../store/campaigns.js';
import { pgCampaigns } from './campaigns.js';
import { pgShardRows } from './pg-rows.js';
import { readShardRows, type Row } from './rows.js';
import { pgRevoked, readRevoked, restoreRevoked, revocationGaps } from './revoked.js';
import { pgSatellites } from './satellites.js';
import { resyncTokens } from './resync.js';
import { reapplyRows } from './reapply.js';
import { NO_REPLICA_WAIT } from '../store/replicas.js';
import { sampleLag } from './lag.js';

export interface Difference {
  /**
   * the token; for `stats`, the shard's counters key; for a satellite, its registry key (`<p>:{sat}:s:<id>`);
   * for a campaign, its record's key (`<p>:{camp:<id>}:meta`); for the users a satellite refused in a
   * campaign, their set's key (`<p>:{camp:<id>}:rej:<sat>`); for a revoked campaign, the registry's key
   * and the campaign id (`<p>:{revoked}:campaigns/<id>`)
   */
  token: string;
  /**
   * only_redis | only_postgres | field names that differ | counters that differ from the shard's rows;
   * inside Redis, for a revoked campaign: `unmarked` (registered, but `shards` lack its mark, so generate
   * still makes its tokens there) or `unregistered` (marked on `shards`, missing from the registry, so a
   * restore would lose the revocation). `verify --repair-revocations` mends both. Also inside Redis,
   * `lease_index`: a reserved token missing from its shard's lease index or at another lease there (the lapse
   * sweep, which reads only the index, never gives it back), or an entry left for a token not reserved;
   * `verify --repair-leases` mends it.
   */
  kind: 'only_redis' | 'only_postgres' | 'differs' | 'stats' | 'unmarked' | 'unregistered' | 'lease_index';
  fields?: FieldDifference[];
  shards?: number[];
}

export interface FieldDifference {
  field: string;
  redis: string;
  postgres: string;
}

export interface VerifyReport {
  tokens: number;
  satellites: number;
  campaigns: number;
  /** campaign ids in Redis' registry of revoked campaigns */
  revokedCampaigns: number;
  /**
   * stream entries the snapshot writer had not copied yet (`rm_snapshot_lag_events`), the more of its readings
   * as verify started and ended: while above 0, differences of the tokens they changed may be only that lag
   */
  lagEvents: number;
  differences: number;
  /** the first `maxListed` differences */
  listed: Difference[];
  /** with `repairTokens`: tokens of those differences queued to be copied to Postgres again (`resyncTokens`) */
  resynced?: number;
  /** with `repairLeases`: lease index entries written or removed */
  leasesRepaired?: number;
  /** with `repairRedis`: tokens given back in Redis the state or the row Postgres holds (`reapplyRows`) */
  reapplied?: number;
  /** with `repairRedis`: campaign revocations Postgres holds that Redis' registry lacked, registered and marked again */
  revocationsRestored?: number;
}

export interface VerifyOptions {
  /** differences listed (default 100) */
  maxListed?: number;
  /**
   * Queue a copy from Redis of each token Postgres lacks a change of, where only that can be: a token Postgres
   * has no row of, or one Redis holds redeemed or revoked (states a token never leaves) where Postgres
   * still has it unredeemed or reserved. Any other difference could as well be a change Redis lost (a
   * failover, a restart from an older file), which a copy would erase from the durable record: left to an operator.
   */
  repairTokens?: boolean;
  /**
   * Mend the `lease_index` differences inside Redis: each token's entry is written at its stored lease if it is
   * reserved, else removed, by a script that reads the token's state as it runs (lua/lapse.lua), so a change
   * made since the comparison is not undone. Reservations made by a version before the index need it once.
   */
  repairLeases?: boolean;
  /**
   * Give Redis back the changes only a Redis that went back in time explains (runbook "Redis went back in
   * time"): a token Postgres holds redeemed or revoked (states a token never leaves) where Redis holds it open
   * gets Postgres' state (also one Postgres holds purged: its revocation and purge were both lost), and a
   * token Postgres holds (not purged) that Redis lacks is written back; each only if Redis still holds it so
   * as its script runs. First, revocations of campaigns Postgres holds and Redis lacks are registered and
   * marked again. Every other difference is only listed.
   */
  repairRedis?: boolean;
}

const FINAL = new Set(['redeemed', 'revoked']);
const OPEN = new Set(['unredeemed', 'reserved']);
/**
 * One side holds open a token the other holds in a state a token never leaves: only a change the first side
 * lacks explains it (Postgres behind: the writer missed it; Redis behind: Redis went back in time).
 */
const behind = (open: Row, final: Row): boolean => OPEN.has(open[1]!) && FINAL.has(final[1]!);

/** Adds one Postgres row to the counters the scripts keep in `<p>:{s}:stats` (lua/includes/codec.lua). */
function count(counters: Map<string, number>, p: Row): void {
  const add = (field: string) => counters.set(field, (counters.get(field) ?? 0) + 1);
  add(`${p[2]}\tgenerated`);
  // a purged token (pgShardRows' 14th value) left Redis and its state's count (lua/purge.lua)
  add(`${p[2]}\t${p[13] === 'purged' ? 'purged' : p[1]}`);
  if (p[1] === 'redeemed') add(`x\t${p[2]}\t${p[10]}`);
}

/**
 * Compares every token in Redis with Postgres, one virtual shard at a time (memory bounded by one
 * shard), and reports missing rows on either side and differing fields; then the shard's stats
 * counters with the counts of its Postgres rows (a counter at 0 and an absent one are the same), as
 * `stats` and every other reader of the counters would be wrong with every token right.
 */
export async function verify(redis: RedisClient, pool: pg.Pool, prefix: string, { maxListed = 100, repairTokens = false, repairLeases = false, repairRedis = false }: VerifyOptions = {}): Promise<VerifyReport> {
  const keys = new Keys(prefix);
  const report: VerifyReport = { tokens: 0, satellites: 0, campaigns: 0, revokedCampaigns: 0, lagEvents: (await sampleLag(redis, prefix)).events, differences: 0, listed: [] };
  if (repairTokens) report.resynced = 0;
  const store = repairLeases ? new TokenStore(redis, prefix, NO_REPLICA_WAIT) : undefined;
  if (store) report.leasesRepaired = 0;
  if (repairRedis) {
    report.reapplied = 0;
    // revocations Redis lost (registry and shard marks): back from Postgres first, so generate refuses them again
    report.revocationsRestored = (await restoreRevoked(redis, pool, prefix)).restored;
  }
  const note = (d: Difference) => {
    report.differences++;
    if (report.listed.length < maxListed) report.listed.push(d);
  };
  for (let shard = 0; shard < SHARDS; shard++) {
    const inRedis = await readShardRows(redis, keys, shard);
    report.tokens += inRedis.size;
    const unindexed = await leaseIndexGaps(redis, keys, shard, inRedis);
    for (const token of unindexed) note({ token, kind: 'lease_index' });
    if (store && unindexed.length) report.leasesRepaired! += await store.reindexLeases(unindexed.map(hexOf));
    const counters = new Map<string, number>();
    const postgresBehind: string[] = [];
    const lostFinal: Row[] = [];
    const lostRows: Row[] = [];
    for await (const page of pgShardRows(pool, shard)) {
      for (const p of page) {
        count(counters, p);
        const r = inRedis.get(p[0]!);
        if (p[13] === 'purged') {
          if (r) note({ token: p[0]!, kind: 'differs', fields: [{ field: 'purged', redis: 'no', postgres: 'yes' }] });
          // a revoke and the purge after it both lost: the token is open again in Redis. It gets its
          // revocation back; the next `tokens purge` deletes it again
          if (r && repairRedis && behind(r, p)) lostFinal.push(p);
          inRedis.delete(p[0]!);
          continue;
        }
        if (!r) {
          note({ token: p[0]!, kind: 'only_postgres' });
          if (repairRedis) lostRows.push(p);
          continue;
        }
        inRedis.delete(p[0]!);
        const fields = EXPORT_FIELDS.flatMap((field, i) => (r[i] === p[i] ? [] : [{ field, redis: r[i]!, postgres: p[i]! }]));
        if (fields.length) note({ token: p[0]!, kind: 'differs', fields });
        if (behind(p, r)) postgresBehind.push(p[0]!);
        if (repairRedis && behind(r, p)) lostFinal.push(p);
      }
    }
    for (const token of inRedis.keys()) note({ token, kind: 'only_redis' });
    if (repairTokens) report.resynced! += await resyncTokens(redis, prefix, shard, [...postgresBehind, ...inRedis.keys()]);
    if (repairRedis) report.reapplied! += await reapplyRows(redis, prefix, shard, lostFinal, lostRows);
    // a counter at 0 is the same as an absent one
    const stats = Object.entries(await redis.hgetall(keys.stats(shard))).filter(([, v]) => Number(v) !== 0);
    const rows = [...counters].map(([field, n]) => [field, String(n)]);
    const fields = differing(Object.fromEntries(stats), Object.fromEntries(rows), (_, v) => v ?? '0');
    if (fields.length) note({ token: keys.stats(shard), kind: 'stats', fields });
  }
  report.satellites = await compareSatellites(redis, pool, prefix, note);
  report.campaigns = await compareCampaigns(redis, pool, prefix, note);
  report.revokedCampaigns = await compareRevoked(redis, pool, prefix, note);
  const gaps = await revocationGaps(redis, prefix);
  const at = (id: string) => `${keys.revokedCampaigns()}/${id}`;
  for (const [id, shards] of gaps.unmarked) note({ token: at(id), kind: 'unmarked', shards });
  for (const [id, m] of gaps.unregistered) note({ token: at(id), kind: 'unregistered', shards: m.shards });
  report.lagEvents = Math.max(report.lagEvents, (await sampleLag(redis, prefix)).events);
  return report;
}

/**
 * Tokens whose entry in the shard's lease index disagrees with their record (`rows`, read just before): reserved
 * and missing there or at another lease, or indexed and not reserved.
 */
async function leaseIndexGaps(redis: RedisClient, keys: Keys, shard: number, rows: Map<string, Row>): Promise<string[]> {
  const flat = await redis.zrange(keys.leases(shard), 0, -1, 'WITHSCORES');
  const indexed = new Map<string, string>();
  for (let i = 0; i < flat.length; i += 2) indexed.set(dashed(flat[i]!), flat[i + 1]!);
  const out: string[] = [];
  for (const [token, r] of rows) {
    if (r[1] !== 'reserved') continue;
    // a lease that cannot be read is indexed at 0 (lua/restore.lua), as the scripts read it
    if (indexed.get(token) !== (r[9] || '0')) out.push(token);
    indexed.delete(token);
  }
  return [...out, ...indexed.keys()];
}

/** The registry of revoked campaigns against Postgres' copy: each id and its revokedAt. */
async function compareRevoked(redis: RedisClient, pool: pg.Pool, prefix: string, note: (d: Difference) => void): Promise<number> {
  const key = new Keys(prefix).revokedCampaigns();
  const records = (m: Map<string, number>) => [...m].map(([id, at]) => ({ id, revokedAt: String(at) }));
  return compareRecords(records(await readRevoked(redis, prefix)), records(await pgRevoked(pool)), (id) => `${key}/${id}`, note, (r, p) =>
    r.revokedAt === p.revokedAt ? [] : [{ field: 'revokedAt', redis: r.revokedAt, postgres: p.revokedAt }],
  );
}

/** Registered satellites against Postgres' copy; an `outboundKey` (a secret) shows only as set or not. */
async function compareSatellites(redis: RedisClient, pool: pg.Pool, prefix: string, note: (d: Difference) => void): Promise<number> {
  const keys = new SatelliteKeys(prefix);
  const shown = (field: string, v: string | undefined) => (v === undefined ? '' : field === 'outboundKey' ? '(set)' : v);
  const apiKeys = (k: Record<string, string>) => JSON.stringify(Object.entries(k).sort(([x], [y]) => (x < y ? -1 : 1)));
  return compareRecords((await readRegistry(redis, keys)).satellites, await pgSatellites(pool), (id) => keys.satellite(id), note, (r, p) => {
    const fields = differing(r.fields, p.fields, shown);
    if (apiKeys(r.apiKeys) !== apiKeys(p.apiKeys)) fields.push({ field: 'apiKeys', redis: apiKeys(r.apiKeys), postgres: apiKeys(p.apiKeys) });
    return fields;
  });
}

/**
 * Listed campaigns against Postgres' copy: settings and, per satellite, the counters, status and last
 * error, as fields `prog:<satellite>.<name>` (the progress hash they come from). The per-user lists are
 * not in the copy; the tokens they name are compared above.
 */
async function compareCampaigns(redis: RedisClient, pool: pg.Pool, prefix: string, note: (d: Difference) => void): Promise<number> {
  const keys = new CampaignKeys(prefix);
  const campaigns = await readAllCampaigns(redis, keys);
  await compareRefusals(redis, pool, keys, campaigns, note);
  return compareRecords(campaigns, await pgCampaigns(pool), (id) => keys.meta(id), note, (r, p) =>
    differing(campaignFields(r), campaignFields(p), (_, v) => v ?? ''),
  );
}

/**
 * The users each satellite of a listed campaign refused against Postgres' copy, by count (the sets only
 * grow and are copied whole), as field `users` under the set's key.
 */
async function compareRefusals(redis: RedisClient, pool: pg.Pool, keys: CampaignKeys, campaigns: CampaignRecord[], note: (d: Difference) => void): Promise<void> {
  const res = await pool.query<{ id: string; sat: string; n: string }>('SELECT campaign_id AS id, satellite_id AS sat, count(*) AS n FROM campaign_refusals GROUP BY 1, 2');
  const copied = new Map(res.rows.map((r) => [JSON.stringify([r.id, r.sat]), r.n]));
  const sets = campaigns.flatMap((c) => c.satellites.map((sat) => ({ id: c.id, sat, key: keys.refused(c.id, sat) })));
  const sizes = await Promise.all(sets.map((s) => redis.scard(s.key)));
  sets.forEach((s, i) => {
    const [r, p] = [String(sizes[i]), copied.get(JSON.stringify([s.id, s.sat])) ?? '0'];
    if (r !== p) note({ token: s.key, kind: 'differs', fields: [{ field: 'users', redis: r, postgres: p }] });
  });
}

/**
 * Records held whole on both sides (satellites, campaigns), matched by id: each one only in Redis, only in
 * Postgres, or with `fields` that differ is noted under its Redis key. Returns how many Redis holds.
 */
function compareRecords<T extends { id: string }>(
  redis: T[],
  postgres: T[],
  keyOf: (id: string) => string,
  note: (d: Difference) => void,
  fields: (r: T, p: T) => FieldDifference[],
): number {
  const inRedis = new Map(redis.map((r) => [r.id, r]));
  for (const p of postgres) {
    const r = inRedis.get(p.id);
    inRedis.delete(p.id);
    if (!r) {
      note({ token: keyOf(p.id), kind: 'only_postgres' });
      continue;
    }
    const differ = fields(r, p);
    if (differ.length) note({ token: keyOf(p.id), kind: 'differs', fields: differ });
  }
  for (const id of inRedis.keys()) note({ token: keyOf(id), kind: 'only_redis' });
  return redis.length;
}

function campaignFields(c: CampaignRecord): Record<string, string> {
  const out = new Map<string, string>([['perUser', String(c.perUser)], ['satellites', JSON.stringify(c.satellites)], ['createdAt', String(c.createdAt)]]);
  if (c.expiresAt !== undefined) out.set('expiresAt', String(c.expiresAt));
  for (const [sat, p] of Object.entries(c.progress)) {
    for (const counter of COUNTERS) out.set(`prog:${sat}.${counter}`, String(p[counter]));
    out.set(`prog:${sat}.status`, p.status);
    if (p.lastError) out.set(`prog:${sat}.lastError`, p.lastError);
  }
  return Object.fromEntries(out);
}

/** The fields named on either side whose values differ, sorted by name; `show` renders a value (undefined: absent). */
function differing(redis: Record<string, string>, postgres: Record<string, string>, show: (field: string, v: string | undefined) => string): FieldDifference[] {
  const names = [...new Set([...Object.keys(redis), ...Object.keys(postgres)])].sort();
  return names.flatMap((field) => {
    const [a, b] = [redis[field], postgres[field]];
    return a === b ? [] : [{ field, redis: show(field, a), postgres: show(field, b) }];
  });
}
