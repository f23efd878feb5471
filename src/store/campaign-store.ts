import { Keys, SHARDS } from './keys.js';
import { Lease } from './lease.js';
import { ARGS_PER_CALL, type RedisClient } from './redis.js';
import { defineScripts, type ScriptFn } from './scripts.js';
import { slices } from '../collections.js';
import { DomainError } from '../errors.js';
import { CampaignKeys, metaFields, parseMeta, parseProgress, readAllCampaigns, readCampaigns, readRefused, type CampaignMeta, type CampaignRecord, type Counter, type SatelliteProgress } from './campaigns.js';

export type { CampaignMeta, SatelliteProgress, Counter } from './campaigns.js';
/**
 * A campaign's record; a satellite's status may read `interrupted` (CampaignStore.get). `revokedAt`: when
 * `revoke {campaignId}` revoked it, from the registry of revoked campaigns (the record does not repeat it).
 */
export type Campaign = CampaignRecord & { revokedAt?: number };

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

/**
 * What a campaign made and what each satellite accepted, so a run can be resumed without making new
 * tokens for users already served. Its Redis layout is in src/store/campaigns.ts.
 */
export class CampaignStore {
  private readonly openScript: ScriptFn;
  private readonly refuseScript: ScriptFn;
  private readonly madeScript: ScriptFn;
  private readonly deliveredScript: ScriptFn;
  private readonly keys: CampaignKeys;
  private readonly revokedKey: string;
  private readonly engineKeys: Keys;
  constructor(private readonly redis: RedisClient, prefix: string) {
    const scripts = defineScripts(redis, ['campaign_open', 'campaign_refuse', 'campaign_made', 'campaign_delivered']);
    this.openScript = scripts.campaign_open;
    this.refuseScript = scripts.campaign_refuse;
    this.madeScript = scripts.campaign_made;
    this.deliveredScript = scripts.campaign_delivered;
    this.keys = new CampaignKeys(prefix);
    this.engineKeys = new Keys(prefix);
    this.revokedKey = this.engineKeys.revokedCampaigns();
  }

  /** Creates the campaign, or returns the existing one (created = false). */
  async open(meta: CampaignMeta): Promise<{ campaign: CampaignMeta; created: boolean }> {
    const created = Number(await this.openScript([this.keys.meta(meta.id)], Object.entries(metaFields(meta)).flat())) === 1;
    const campaign = created ? meta : await this.require(meta.id);
    // also when it existed: a run killed between the two steps left it out of the listing
    await this.redis.zadd(this.keys.index(), 'NX', campaign.createdAt, meta.id);
    return { campaign, created };
  }

  /**
   * One run of a campaign at a time: two concurrent runs would both find a user unserved and make
   * two sets. The claim expires `ttlMs` after its holder stops renewing it (a killed CLI), so
   * --resume is never blocked for long. Undefined when another run holds it. A run confirms it before
   * each batch it makes and each push: one that stalled past the claim (another run took over) stops there.
   */
  async claim(id: string, ttlMs = CLAIM_TTL_MS): Promise<Claim | undefined> {
    const lease = new Lease(this.redis, this.keys.run(id), ttlMs, id);
    return this.hold(lease, `campaign "${id}" may be run by another generate now`);
  }

  /**
   * One campaign on a satellite at a time: two campaigns listing the same satellite at once both find a
   * user without tokens (neither set delivered yet) and each makes that user a set. Returns the campaign
   * holding the satellite instead when another run serves it.
   */
  async claimSatellite(sat: string, campaignId: string): Promise<Claim | { heldBy: string }> {
    const lease = new Lease(this.redis, this.keys.satelliteRun(sat), CLAIM_TTL_MS, campaignId);
    const claim = await this.hold(lease, `satellite "${sat}" may be served by another campaign now`);
    return claim ?? { heldBy: (await lease.holder()) ?? '' };
  }

  /** `lost`: what a lapsed claim may mean; it said the other run held it, when a stalled run's claim had only lapsed */
  private async hold(lease: Lease, lost: string): Promise<Claim | undefined> {
    const held = await lease.hold();
    if (!held) return undefined;
    return {
      confirm: async () => {
        if (!(await held.confirm())) throw new ClaimLost(`${lost}: this run stalled past its ${lease.ms / 1000} s claim, which lapsed; stopped before making or pushing more tokens`);
      },
      release: held.release,
    };
  }

  async meta(id: string): Promise<CampaignMeta | undefined> {
    return parseMeta(await this.redis.hgetall(this.keys.meta(id)));
  }

  /**
   * When the campaign was revoked (`revoke {campaignId}`), undefined while it is not: one HGET of the
   * registry of revoked campaigns, which the revoke writes before it sweeps any shard.
   */
  async revokedAt(id: string): Promise<number | undefined> {
    const at = await this.redis.hget(this.revokedKey, id);
    return at ? Number(at) : undefined;
  }

  /**
   * Every revoked campaign id with its revokedAt, oldest first: also ids only the admin route used, which have
   * no record here (campaigns list shows only what generate ran).
   */
  async revoked(): Promise<{ id: string; revokedAt: number; ranByGenerate: boolean }[]> {
    const all = Object.entries(await this.redis.hgetall(this.revokedKey)).map(([id, at]) => ({ id, revokedAt: Number(at) }));
    const ran = await Promise.all(all.map((r) => this.redis.exists(this.keys.meta(r.id))));
    return all.map((r, i) => ({ ...r, ranByGenerate: ran[i] === 1 })).sort((a, b) => a.revokedAt - b.revokedAt || (a.id < b.id ? -1 : 1));
  }

  /**
   * Whether the engine made tokens under this id: a shard's dictionary names every campaign it holds a token of,
   * and keeps the name once they are purged. An id only the admin route used has tokens and no record here.
   */
  async madeTokens(id: string): Promise<boolean> {
    const named = await Promise.all(Array.from({ length: SHARDS }, (_, s) => this.redis.hexists(this.engineKeys.dict(s), `c\t${id}`)));
    return named.includes(1);
  }

  async require(id: string): Promise<CampaignMeta> {
    const m = await this.meta(id);
    return m ?? campaignNotFound(id);
  }

  /** Adds satellites to a campaign's list (a re-run may name more). */
  async addSatellites(m: CampaignMeta, satellites: string[]): Promise<void> {
    const all = [...new Set([...m.satellites, ...satellites])];
    if (all.length !== m.satellites.length) await this.redis.hset(this.keys.meta(m.id), 'satellites', JSON.stringify(all));
  }

  async get(id: string): Promise<Campaign | undefined> {
    const [c] = await readCampaigns(this.redis, this.keys, [id]);
    return c && (await this.view([c]))[0];
  }

  async list(): Promise<Campaign[]> {
    return this.view(await readAllCampaigns(this.redis, this.keys));
  }

  /**
   * A satellite recorded running in a campaign no run holds was left so by a killed run: interrupted.
   * Each campaign's revokedAt comes from the registry (one HMGET for all).
   */
  private async view(all: CampaignRecord[]): Promise<Campaign[]> {
    if (all.length === 0) return [];
    const [held, revoked] = await Promise.all([Promise.all(all.map((c) => this.redis.exists(this.keys.run(c.id)))), this.redis.hmget(this.revokedKey, ...all.map((c) => c.id))]);
    return all.map((c, i) => {
      if (held[i] !== 1) for (const p of Object.values(c.progress)) if (p.status === 'running') p.status = 'interrupted';
      const at = revoked[i];
      return at ? { ...c, revokedAt: Number(at) } : c;
    });
  }

  async progress(id: string, sat: string): Promise<SatelliteProgress> {
    return parseProgress(await this.redis.hgetall(this.keys.progress(id, sat)));
  }

  async count(id: string, sat: string, counter: Counter, n: number): Promise<void> {
    if (n !== 0) await this.redis.hincrby(this.keys.progress(id, sat), counter, n);
  }

  async setStatus(id: string, sat: string, status: SatelliteProgress['status'], lastError = ''): Promise<void> {
    await this.redis.hset(this.keys.progress(id, sat), { status, lastError });
  }

  /**
   * Tokens already made for these users (undefined where none): one HMGET a slice. A satellite ignoring the
   * page limit listed 130,000 ids, and one call spread over them all overflowed the stack, on every resume too.
   */
  async made(id: string, sat: string, userIds: string[]): Promise<(string[] | undefined)[]> {
    const out: (string[] | undefined)[] = [];
    for (const slice of slices(userIds, ARGS_PER_CALL)) for (const v of await this.redis.hmget(this.keys.made(id, sat), ...slice)) out.push(v ? v.split(',') : undefined);
    return out;
  }

  /**
   * Records the tokens made for each user and adds the users not recorded before, and their tokens, to
   * usersServed and tokensMade, in one step per slice (lua/campaign_made.lua says why). Returns what was new.
   */
  async recordMade(id: string, sat: string, byUser: Map<string, string[]>): Promise<{ users: number; tokens: number }> {
    const args: string[] = [];
    for (const [user, tokens] of byUser) args.push(user, tokens.join(','));
    let users = 0;
    let tokens = 0;
    for (const slice of slices(args, ARGS_PER_CALL)) {
      const [u, t] = (await this.madeScript([this.keys.made(id, sat), this.keys.progress(id, sat)], slice)) as [number, number];
      users += u;
      tokens += t;
    }
    return { users, tokens };
  }

  /**
   * Records the users whose whole set the satellite accepted (user -> the set's size) and adds the sets of
   * those not recorded before to tokensDelivered, in one step per slice (lua/campaign_delivered.lua).
   * Returns the tokens added.
   */
  async recordDelivered(id: string, sat: string, sets: Map<string, number>): Promise<number> {
    const args: string[] = [];
    for (const [user, n] of sets) args.push(user, String(n));
    let tokens = 0;
    for (const slice of slices(args, ARGS_PER_CALL)) tokens += Number(await this.deliveredScript([this.keys.delivered(id, sat), this.keys.progress(id, sat)], slice));
    return tokens;
  }

  /** Users the campaign is done with on this satellite: their tokens were accepted, or refused (recordRefused); a slice at a time, as made. */
  async settled(id: string, sat: string, userIds: string[]): Promise<boolean[]> {
    const out: boolean[] = [];
    for (const slice of slices(userIds, ARGS_PER_CALL)) {
      const [dlv, rej] = await Promise.all([this.redis.smismember(this.keys.delivered(id, sat), ...slice), this.redis.smismember(this.keys.refused(id, sat), ...slice)]);
      for (let i = 0; i < slice.length; i++) out.push(dlv[i] === 1 || rej[i] === 1);
    }
    return out;
  }

  /**
   * Records the users refused and adds those not recorded before to the usersRefused counter, in one step
   * per slice (lua/campaign_refuse.lua says why). Returns how many were new.
   */
  async recordRefused(id: string, sat: string, userIds: string[]): Promise<number> {
    let fresh = 0;
    for (const slice of slices(userIds, ARGS_PER_CALL)) fresh += Number(await this.refuseScript([this.keys.refused(id, sat), this.keys.progress(id, sat)], slice));
    return fresh;
  }

  /** The users a satellite refused in this campaign (recordRefused), in pages of SSCAN, unordered. */
  refusedUsers(id: string, sat: string): AsyncGenerator<string[]> {
    return readRefused(this.redis, this.keys, id, sat);
  }

  /** Every (user, tokens) made for a satellite, in pages of HSCAN, so memory stays bounded. */
  async *allMade(id: string, sat: string): AsyncGenerator<[string, string[]][]> {
    let cursor = '0';
    do {
      const [next, flat] = await this.redis.hscan(this.keys.made(id, sat), cursor, 'COUNT', 1000);
      cursor = next;
      const page: [string, string[]][] = [];
      for (let i = 0; i < flat.length; i += 2) page.push([flat[i]!, flat[i + 1]!.split(',')]);
      if (page.length) yield page;
    } while (cursor !== '0');
  }
}
