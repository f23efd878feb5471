import { Lease } from '../store/lease.js';
import type { RedisClient } from '../store/redis.js';
import { defineScripts, type ScriptFn } from '../store/scripts.js';
import { DomainError } from '../errors.js';

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
  failures: number;
  /** interrupted: recorded running, but no run holds the campaign (it was killed): `generate --resume` */
  status: 'pending' | 'running' | 'interrupted' | 'done' | 'failed';
  lastError?: string;
}

export interface Campaign extends CampaignMeta {
  progress: Record<string, SatelliteProgress>;
}

const COUNTERS = ['usersListed', 'usersServed', 'tokensMade', 'tokensDelivered', 'failures'] as const;
export type Counter = (typeof COUNTERS)[number];

/**
 * What a campaign made and what each satellite acknowledged, so a run can be resumed without
 * making new tokens for users already served. One hash tag per campaign ({camp:<id>}) keeps its
 * keys in one Redis Cluster slot:
 *   <p>:{camp:<id>}:meta        hash  id, perUser, expiresAt, satellites (JSON), createdAt
 *   <p>:{camp:<id>}:made:<sat>  hash  userId -> the user's tokens, comma-joined
 *   <p>:{camp:<id>}:dlv:<sat>   set   users whose tokens the satellite accepted
 *   <p>:{camp:<id>}:prog:<sat>  hash  SatelliteProgress counters, status, lastError
 *   <p>:{camp:<id>}:run         string  the running generate's holder id, with a TTL it keeps renewing
 *   <p>:{campaigns}             zset  campaign id -> createdAt (listing)
 *   <p>:{gen:<sat>}:run         string  "<campaign id> <uuid>" of the run serving the satellite, with a TTL
 */
/** A run's hold on its campaign (CampaignStore.claim). */
export interface Claim {
  /** throws ClaimLost when another run holds the campaign now */
  confirm(): Promise<void>;
  release(): Promise<void>;
}

export class ClaimLost extends Error {}

/** How long a run's claim outlives a run that stopped renewing it (a killed CLI). */
export const CLAIM_TTL_MS = 30_000;

export function campaignNotFound(id: string): never {
  throw new DomainError('campaign_not_found', `campaign "${id}" does not exist`);
}

export class CampaignStore {
  private readonly openScript: ScriptFn;
  constructor(private readonly redis: RedisClient, private readonly prefix: string) {
    this.openScript = defineScripts(redis, ['campaign_open']).campaign_open!;
  }

  private key(id: string, part: string): string {
    return `${this.prefix}:{camp:${id}}:${part}`;
  }
  private indexKey(): string {
    return `${this.prefix}:{campaigns}`;
  }

  /** Creates the campaign, or returns the existing one (created = false). */
  async open(meta: CampaignMeta): Promise<{ campaign: CampaignMeta; created: boolean }> {
    const fields: Record<string, string> = {
      id: meta.id,
      perUser: String(meta.perUser),
      satellites: JSON.stringify(meta.satellites),
      createdAt: String(meta.createdAt),
    };
    if (meta.expiresAt !== undefined) fields.expiresAt = String(meta.expiresAt);
    const created = Number(await this.openScript([this.key(meta.id, 'meta')], Object.entries(fields).flat())) === 1;
    const campaign = created ? meta : await this.require(meta.id);
    // also when it existed: a run killed between the two steps left it out of the listing
    await this.redis.zadd(this.indexKey(), 'NX', campaign.createdAt, meta.id);
    return { campaign, created };
  }

  /**
   * One run of a campaign at a time: two concurrent runs would both find a user unserved and make
   * two sets. The claim expires `ttlMs` after its holder stops renewing it (a killed CLI), so
   * --resume is never blocked for long. Undefined when another run holds it. A run confirms it before
   * each batch it makes: one that stalled past the claim (another run took over) stops there.
   */
  async claim(id: string, ttlMs = CLAIM_TTL_MS): Promise<Claim | undefined> {
    const lease = new Lease(this.redis, this.key(id, 'run'), ttlMs, id);
    return this.hold(lease, `campaign "${id}" is now run by another generate`);
  }

  /**
   * One campaign on a satellite at a time: two campaigns listing the same satellite at once both find a
   * user without tokens (neither set delivered yet) and each makes that user a set. Returns the campaign
   * holding the satellite instead when another run serves it.
   */
  async claimSatellite(sat: string, campaignId: string, ttlMs = CLAIM_TTL_MS): Promise<Claim | { heldBy: string }> {
    const lease = new Lease(this.redis, `${this.prefix}:{gen:${sat}}:run`, ttlMs, campaignId);
    const claim = await this.hold(lease, `satellite "${sat}" is now served by another generate`);
    return claim ?? { heldBy: (await lease.holder()) ?? '' };
  }

  private async hold(lease: Lease, lost: string): Promise<Claim | undefined> {
    if (!(await lease.acquire())) return undefined;
    const renew = setInterval(() => void lease.renew().catch(() => undefined), lease.ms / 3);
    renew.unref();
    return {
      confirm: async () => {
        if (!(await lease.renew())) throw new ClaimLost(`${lost} (this one stalled past its ${lease.ms / 1000} s claim): stopped before making more tokens`);
      },
      release: async () => {
        clearInterval(renew);
        await lease.release();
      },
    };
  }

  async meta(id: string): Promise<CampaignMeta | undefined> {
    const h = await this.redis.hgetall(this.key(id, 'meta'));
    if (!h.id || !h.perUser) return undefined;
    const m: CampaignMeta = { id: h.id, perUser: Number(h.perUser), satellites: JSON.parse(h.satellites ?? '[]') as string[], createdAt: Number(h.createdAt) };
    if (h.expiresAt) m.expiresAt = Number(h.expiresAt);
    return m;
  }

  async require(id: string): Promise<CampaignMeta> {
    const m = await this.meta(id);
    return m ?? campaignNotFound(id);
  }

  /** Adds satellites to a campaign's list (a re-run may name more). */
  async addSatellites(m: CampaignMeta, satellites: string[]): Promise<void> {
    const all = [...new Set([...m.satellites, ...satellites])];
    if (all.length !== m.satellites.length) await this.redis.hset(this.key(m.id, 'meta'), 'satellites', JSON.stringify(all));
  }

  async get(id: string): Promise<Campaign | undefined> {
    const m = await this.meta(id);
    if (!m) return undefined;
    const entries: [string, SatelliteProgress][] = [];
    const held = (await this.redis.exists(this.key(id, 'run'))) === 1;
    for (const sat of m.satellites) {
      const p = await this.progress(id, sat);
      if (p.status === 'running' && !held) p.status = 'interrupted';
      entries.push([sat, p]);
    }
    // own properties whatever the id: progress["__proto__"] = p would set the prototype, not a field
    return { ...m, progress: Object.fromEntries(entries) };
  }

  async list(): Promise<Campaign[]> {
    const ids = await this.redis.zrange(this.indexKey(), 0, -1);
    const all = await Promise.all(ids.map((id) => this.get(id)));
    return all.filter((c): c is Campaign => c !== undefined);
  }

  async progress(id: string, sat: string): Promise<SatelliteProgress> {
    const h = await this.redis.hgetall(this.key(id, `prog:${sat}`));
    const p: SatelliteProgress = { usersListed: 0, usersServed: 0, tokensMade: 0, tokensDelivered: 0, failures: 0, status: (h.status as SatelliteProgress['status']) ?? 'pending' };
    for (const c of COUNTERS) p[c] = Number(h[c] ?? 0);
    if (h.lastError) p.lastError = h.lastError;
    return p;
  }

  async count(id: string, sat: string, counter: Counter, n: number): Promise<void> {
    if (n !== 0) await this.redis.hincrby(this.key(id, `prog:${sat}`), counter, n);
  }

  async setStatus(id: string, sat: string, status: SatelliteProgress['status'], lastError = ''): Promise<void> {
    await this.redis.hset(this.key(id, `prog:${sat}`), { status, lastError });
  }

  /** Tokens already made for these users (undefined where none): one HMGET. */
  async made(id: string, sat: string, userIds: string[]): Promise<(string[] | undefined)[]> {
    if (userIds.length === 0) return [];
    const got = await this.redis.hmget(this.key(id, `made:${sat}`), ...userIds);
    return got.map((v) => (v ? v.split(',') : undefined));
  }

  async recordMade(id: string, sat: string, byUser: Map<string, string[]>): Promise<void> {
    if (byUser.size === 0) return;
    const fields: string[] = [];
    for (const [user, tokens] of byUser) fields.push(user, tokens.join(','));
    await this.redis.hset(this.key(id, `made:${sat}`), ...fields);
  }

  async delivered(id: string, sat: string, userIds: string[]): Promise<boolean[]> {
    if (userIds.length === 0) return [];
    const got = await this.redis.smismember(this.key(id, `dlv:${sat}`), ...userIds);
    return got.map((v) => v === 1);
  }

  async recordDelivered(id: string, sat: string, userIds: string[]): Promise<void> {
    if (userIds.length > 0) await this.redis.sadd(this.key(id, `dlv:${sat}`), ...userIds);
  }

  /** Every (user, tokens) made for a satellite, in pages of HSCAN, so memory stays bounded. */
  async *allMade(id: string, sat: string): AsyncGenerator<[string, string[]][]> {
    let cursor = '0';
    do {
      const [next, flat] = await this.redis.hscan(this.key(id, `made:${sat}`), cursor, 'COUNT', 1000);
      cursor = next;
      const page: [string, string[]][] = [];
      for (let i = 0; i < flat.length; i += 2) page.push([flat[i]!, flat[i + 1]!.split(',')]);
      if (page.length) yield page;
    } while (cursor !== '0');
  }
}
