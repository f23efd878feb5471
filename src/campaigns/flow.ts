import { setTimeout as sleep } from 'node:timers/promises';
import { inLanes, pushAll, pushTo } from '../collections.js';
import { hexDigest } from '../digest.js';
import { DomainError } from '../errors.js';
import { MAX_TOKENS_PER_CALL, type TokenEngine } from '../tokens/engine.js';
import { checkNewId, printable } from '../tokens/validate.js';
import { CLAIM_TTL_MS, ClaimLost, type CampaignMeta, type CampaignStore, type Claim, type Counter, type SatelliteProgress } from '../store/campaign-store.js';
import { CampaignRevokedInGenerate } from '../store/token-store.js';
import type { SatelliteRegistry } from '../satellites/registry.js';
import { SatelliteApi } from './satellite-api.js';
import { REMOVED } from './plan.js';
import { Delivery, tokenCount, type UserTokens } from './delivery.js';
import { counted } from '../plural.js';

export interface FlowSatellite {
  id: string;
  url: string;
  outboundKey?: string;
}

export interface FlowOptions {
  engine: TokenEngine;
  campaigns: CampaignStore;
  campaign: CampaignMeta;
  /** the campaign had runs before: look for tokens made but not recorded (a crash between the two) */
  existed: boolean;
  dryRun: boolean;
  /** users asked for per page */
  pageSize: number;
  /** most pages listed per satellite in one run (default: no limit): a listing that never ends, a new cursor every page, fails here */
  maxPages?: number;
  /** most tokens pushed to a satellite per request */
  deliverBatch: number;
  /** per call to a satellite, and attempts per call (retried with backoff) */
  timeoutMs: number;
  attempts: number;
  backoffMs?: number;
  /**
   * aborted on generate's SIGINT/SIGTERM: each satellite stops before its next page, batch or push (a call
   * in flight is cut), recorded failed with the abort's reason, so --resume goes on from there
   */
  stop?: AbortSignal;
  /** the run's claim on the campaign, confirmed before each batch it makes and each push (absent in a dry run) */
  claim?: Pick<Claim, 'confirm'>;
  /** read before each batch made and each push: a satellite removed meanwhile (satellites remove) is served no more */
  registry?: Pick<SatelliteRegistry, 'get'>;
  onProgress?: (satelliteId: string, event: ProgressEvent, n: number) => void;
  /** a line for the operator while the run waits on something (stderr, or above the progress bars) */
  say?: (line: string) => void;
}

/** The run's counters as they grow, and what each page is about to make and deliver (the bars' totals). */
export type ProgressEvent = Counter | 'tokensToMake' | 'tokensToDeliver';

/** One run's counters for a satellite (its stored progress sums them over every run) and what became of it. */
export interface SatelliteReport extends Pick<SatelliteProgress, 'usersListed' | 'usersServed' | 'tokensMade' | 'tokensDelivered'> {
  satelliteId: string;
  /**
   * users whose tokens the satellite refused even alone in a push, or whose set a resume found revoked, lost
   * or superseded by another campaign's (src/campaigns/delivery.ts); their tokens are revoked but for
   * `usersRefusedKept` of them
   */
  usersRefused: number;
  /** of those, users whose tokens were kept: another campaign served them meanwhile, or the satellite took part of the set */
  usersRefusedKept?: number;
  /** the first such refusal, with its user, to show the operator why */
  refusal?: string;
  /** failed calls to the satellite (retried or not) and user ids it sent that are not valid ids */
  failures: number;
  /** user ids it listed that are not valid ids (skipped; counted in failures too), and the first of them, why */
  usersInvalid: number;
  invalidUser?: string;
  /**
   * revoked: the campaign was revoked while this run served the satellite; it stopped making and pushing tokens.
   * skipped: never run (generate --all leaves out a satellite registered without a url: it only redeems)
   * expired: the campaign's expiresAt passed while this run served the satellite; it stopped making and pushing
   * tokens (they could not be redeemed), and a resume cannot go on
   */
  status: 'done' | 'failed' | 'revoked' | 'expired' | 'dry-run' | 'skipped';
  error?: string;
}

/**
 * The seed's generation flow for one campaign over many satellites, in parallel: page through each
 * satellite's users without tokens, make perUser tokens for each user the campaign has not served,
 * record them, push them to the satellite, record what it accepted. Every step is recorded before
 * the next, so a rerun of the same campaign (`--resume`) delivers what is missing and never makes a
 * user a second set. A satellite that keeps failing is reported; the others go on.
 */
export async function runCampaign(opts: FlowOptions, satellites: FlowSatellite[]): Promise<SatelliteReport[]> {
  return Promise.all(satellites.map((s) => new SatelliteRun(opts, s).run()));
}

/** The shortest wait before a retried call to a satellite that is said (stderr, or above the progress bars). */
const SAY_WAIT_MS = 5000;

/** The campaign's expiresAt passed during the run: nothing more is made (the engine refuses a past expiry) or pushed. */
class CampaignExpired extends Error {}

/** The satellite was removed during the run: nothing more is made for it or pushed to it, as a resume would skip it. */
class SatelliteRemoved extends Error {}

class SatelliteRun {
  private readonly report: SatelliteReport;
  private readonly id: string;
  private readonly sat: string;
  private readonly api: SatelliteApi;
  private readonly delivery: Delivery;
  /** this run's hold on the satellite (CampaignStore.claimSatellite), confirmed before each batch it makes and each push */
  private satClaim?: Claim;

  constructor(private readonly o: FlowOptions, s: FlowSatellite) {
    this.id = o.campaign.id;
    this.sat = s.id;
    this.api = new SatelliteApi({
      url: s.url,
      key: s.outboundKey,
      timeoutMs: o.timeoutMs,
      attempts: o.attempts,
      backoffMs: o.backoffMs,
      onRetry: (err, attempt, waitMs) => {
        void this.count('failures', 1).catch(() => undefined);
        // a satellite's Retry-After holds a call up to a minute an attempt: minutes without a word look like a hung run
        if (waitMs >= SAY_WAIT_MS) o.say?.(`satellite ${s.id}: ${err.message}; retrying in ${Math.round(waitMs / 1000)} s (attempt ${attempt + 1} of ${o.attempts})`);
      },
      signal: o.stop,
    });
    this.delivery = new Delivery({
      campaignId: this.id,
      satelliteId: this.sat,
      api: this.api,
      campaigns: o.campaigns,
      engine: o.engine,
      batch: o.deliverBatch,
      beforePush: async () => {
        o.stop?.throwIfAborted();
        this.refuseExpired();
        await this.confirmClaims();
        await this.refuseRemoved();
        return this.refuseRevoked();
      },
      counted: (counter, n) => this.count(counter, n, true),
      onProgress: (event, n) => o.onProgress?.(this.sat, event, n),
    });
    this.report = { satelliteId: s.id, usersListed: 0, usersServed: 0, tokensMade: 0, tokensDelivered: 0, usersRefused: 0, failures: 0, usersInvalid: 0, status: o.dryRun ? 'dry-run' : 'done' };
  }

  async run(): Promise<SatelliteReport> {
    try {
      if (!this.o.dryRun) {
        let held = await this.o.campaigns.claimSatellite(this.sat, this.id);
        // this run holds the campaign, so a claim in its name is a killed run's, lapsing within its TTL: waited
        // for (a resume right after a kill failed, and had to be run again half a minute later), and said, or
        // the resume sat silent for up to half a minute
        // (no holder: it lapsed between the refused SET NX and the read of its holder, so try again)
        if ('heldBy' in held && held.heldBy === this.id) this.o.say?.(`satellite ${this.sat}: a killed run of this campaign still claims it; waiting up to ${CLAIM_TTL_MS / 1000} s for that claim to lapse`);
        for (const end = Date.now() + CLAIM_TTL_MS + 1000; 'heldBy' in held && (held.heldBy === this.id || held.heldBy === '') && Date.now() < end; ) {
          await sleep(250, undefined, { signal: this.o.stop }).catch(() => this.o.stop?.throwIfAborted());
          held = await this.o.campaigns.claimSatellite(this.sat, this.id);
        }
        if ('heldBy' in held) {
          if (held.heldBy === this.id) throw new Error(`satellite "${this.sat}" is still claimed by another run of this campaign after ${CLAIM_TTL_MS / 1000} s`);
          throw new Error(`satellite "${this.sat}" is being served by campaign "${held.heldBy}"; run this one again with --resume when that one ends (a killed run of it holds the satellite up to ${CLAIM_TTL_MS / 1000} s: then resume that one first)`);
        }
        this.satClaim = held;
        await this.o.campaigns.setStatus(this.id, this.sat, 'running');
      }
      // a dry run delivers nothing, but counts what an earlier run left undelivered (a resume pushes it)
      if (this.o.existed) await (this.o.dryRun ? this.countPending() : this.deliverPending());
      let cursor: string | null = null;
      const seen = new Set<string>();
      do {
        this.o.stop?.throwIfAborted();
        if (seen.size >= (this.o.maxPages ?? Infinity)) throw new Error(`satellite listing did not end after ${this.o.maxPages} pages; raise --max-pages if it has that many users`);
        const page = await this.api.usersWithoutTokens(cursor, this.o.pageSize);
        // a cursor given twice would list the same pages for ever. A Go satellite takes a cursor of up to a
        // megabyte: kept as digests (up to --max-pages of them), and cut in the error, which the campaign's record keeps
        if (page.nextCursor !== null) {
          const digest = hexDigest('sha256', page.nextCursor);
          if (seen.has(digest)) throw new Error(`satellite repeated cursor "${printable(page.nextCursor, 100)}"`);
          seen.add(digest);
        }
        // a satellite ignoring the limit is served a limit's worth at a time: one synchronous pass over its page
        // of 10 million ids held the event loop so long that replies from Redis timed out, and the run failed
        // blaming Redis, its status left running. A user listed twice in a page is one user listed.
        const listed = new Set<unknown>();
        for (let i = 0; i < page.userIds.length; i += this.o.pageSize) {
          const part = page.userIds.slice(i, i + this.o.pageSize).filter((u) => !listed.has(u) && listed.add(u));
          await this.count('usersListed', part.length);
          await this.servePage(part);
        }
        cursor = page.nextCursor;
      } while (cursor !== null);
      if (!this.o.dryRun) {
        await this.delivery.settleDeferred();
        await this.o.campaigns.setStatus(this.id, this.sat, 'done');
      }
    } catch (err) {
      // the engine refuses every batch of a revoked campaign (lua/generate.lua) and refuseRevoked every
      // push of one, so this is where a run stops
      // a removed satellite is reported as a resume reports it (skipped, not a failure) and recorded removed
      const status = err instanceof DomainError && err.code === 'campaign_revoked' ? 'revoked' : err instanceof CampaignExpired ? 'expired' : err instanceof SatelliteRemoved ? 'skipped' : 'failed';
      this.report.status = status;
      this.report.error = (err as Error).message;
      if (status !== 'failed') await this.countHeldInPart();
      // a run that lost its claim leaves the status to the run holding it now
      if (!this.o.dryRun && !(err instanceof ClaimLost)) await this.o.campaigns.setStatus(this.id, this.sat, status === 'skipped' ? 'removed' : status, this.report.error).catch(() => undefined);
    } finally {
      if (this.delivery.refusal) this.report.refusal = this.delivery.refusal;
      if (this.delivery.refusedKept) this.report.usersRefusedKept = this.delivery.refusedKept;
      await this.api.close();
      await this.satClaim?.release().catch(() => undefined);
    }
    return this.report;
  }

  /** The sets an earlier run made whose delivery did not finish, a page at a time. */
  private async *unsettled(): AsyncGenerator<UserTokens[]> {
    for await (const page of this.o.campaigns.allMade(this.id, this.sat)) {
      const done = await this.o.campaigns.settled(this.id, this.sat, page.map(([u]) => u));
      yield page.filter((_, i) => !done[i]);
    }
  }

  /** Tokens recorded by an earlier run whose delivery did not finish. */
  private async deliverPending(): Promise<void> {
    for await (const sets of this.unsettled()) {
      const due = await this.delivery.due(sets, true);
      this.plan('tokensToDeliver', tokenCount(due));
      await this.delivery.deliver(due, false);
    }
  }

  /** The dry run's deliverPending: the tokens a resume would push (before its checks for revoked ones), as delivered. */
  private async countPending(): Promise<void> {
    for await (const sets of this.unsettled()) await this.count('tokensDelivered', tokenCount(sets));
  }

  /** `listed`: distinct, as the listing loop leaves them */
  private async servePage(listed: unknown[]): Promise<void> {
    const userIds: string[] = [];
    let invalid = 0;
    for (const u of listed) {
      try {
        userIds.push(checkNewId('userId', u));
      } catch (err) {
        invalid++;
        // not String(u): a satellite's map with a toString field made it throw, failing the whole run
        this.report.invalidUser ??= `${JSON.stringify(printable(typeof u === 'string' ? u : (JSON.stringify(u) ?? typeof u)).slice(0, 100))}: ${(err as Error).message}`;
      }
    }
    // counted once a page: once an id, a satellite sending its ids as numbers cost a Redis call for each user
    this.report.usersInvalid += invalid;
    await this.count('failures', invalid);
    const [made, done] = await Promise.all([this.o.campaigns.made(this.id, this.sat, userIds), this.o.campaigns.settled(this.id, this.sat, userIds)]);
    const undelivered: UserTokens[] = [];
    let fresh: string[] = [];
    userIds.forEach((u, i) => {
      const tokens = made[i];
      if (!tokens) fresh.push(u);
      else if (!done[i]) undelivered.push([u, tokens]);
    });
    if (this.o.dryRun) {
      this.plan('tokensToMake', fresh.length * this.o.campaign.perUser);
      await this.count('usersServed', fresh.length);
      await this.count('tokensMade', fresh.length * this.o.campaign.perUser);
      return;
    }
    // listed now: the satellite says they hold no tokens, whatever other campaigns made
    const pending = await this.delivery.due(undelivered, false);
    if (this.o.existed && fresh.length) {
      const adopted = await this.adopt(fresh);
      // a satellite ignoring the page limit lists 130,000 users: spread, their sets overflowed the stack
      pushAll(pending, adopted);
      const taken = new Set(adopted.map(([u]) => u));
      fresh = fresh.filter((u) => !taken.has(u));
    }
    this.plan('tokensToMake', fresh.length * this.o.campaign.perUser);
    this.plan('tokensToDeliver', tokenCount(pending) + fresh.length * this.o.campaign.perUser);
    await this.delivery.deliver(pending);
    const perChunk = Math.max(1, Math.floor(MAX_TOKENS_PER_CALL / this.o.campaign.perUser));
    for (let i = 0; i < fresh.length; i += perChunk) await this.delivery.deliver(await this.make(fresh.slice(i, i + perChunk)));
  }

  private async make(users: string[]): Promise<UserTokens[]> {
    const { campaign } = this.o;
    this.o.stop?.throwIfAborted();
    this.refuseExpired();
    await this.confirmClaims();
    await this.refuseRemoved();
    const req = { owners: users.map((ownerUserId) => ({ ownerSatelliteId: this.sat, ownerUserId })), perUser: campaign.perUser, campaignId: campaign.id };
    let made;
    try {
      made = await this.o.engine.generate(campaign.expiresAt === undefined ? req : { ...req, expiresAt: campaign.expiresAt });
    } catch (err) {
      // a revoke landing mid-batch: the shards it had not marked yet made their tokens, then revoked at once.
      // campaigns results and the revoke count them as the campaign's; left out here, campaigns show said
      // fewer made than were revoked (36,000 against 37,952 in a drill)
      if (err instanceof CampaignRevokedInGenerate) await this.count('tokensMade', err.made);
      throw err;
    }
    const byUser = new Map<string, string[]>();
    for (const t of made.tokens) pushTo(byUser, t.ownerUserId, t.token);
    await this.recordMade(byUser);
    return [...byUser];
  }

  /** Records the sets made and counts the users and tokens the record did not hold yet (the store counted them in the same step). */
  private async recordMade(byUser: Map<string, string[]>): Promise<void> {
    const fresh = await this.o.campaigns.recordMade(this.id, this.sat, byUser);
    await this.count('usersServed', fresh.users, true);
    await this.count('tokensMade', fresh.tokens, true);
  }

  /**
   * Users this campaign has no record of may still hold its tokens when an earlier run stopped
   * between making and recording them: adopt those instead of making a second set.
   */
  private async adopt(users: string[]): Promise<UserTokens[]> {
    const out: UserTokens[] = [];
    await inLanes(users.length, 32, async (i) => {
      const mine = (await this.o.engine.listUnredeemed(this.sat, users[i]!)).filter((t) => t.campaignId === this.id).map((t) => t.token);
      if (mine.length) out.push([users[i]!, mine]);
    });
    // the run that made them stopped before recording (and counting) them
    await this.recordMade(new Map(out));
    return out;
  }

  /**
   * A revoked or expired campaign never goes on, so a set larger than a batch stopped between two parts stays
   * in part with the satellite (its tokens revoked, or expired): those tokens count delivered, the error
   * names them, and the counts say what the satellite holds. A run that can resume does not count them: it
   * pushes the whole set again, and counts it then.
   */
  private async countHeldInPart(): Promise<void> {
    const held = this.delivery.heldInPart();
    if (!held.first) return;
    const [user, n] = held.first;
    this.report.error += `; ${counted(held.tokens, 'token')} of sets pushed in parts reached the satellite before (${counted(held.users, 'user')}, first "${user}" with ${n}): counted delivered, the rest of those sets not pushed`;
    await this.count('tokensDelivered', held.tokens).catch(() => undefined);
  }

  /**
   * Before each batch made and each push. A run that stalled past its claims (a laptop asleep) and woke up
   * pushed the sets it had made before: another campaign had served those users meanwhile (they held
   * nothing yet), and each held a set of both.
   */
  private async confirmClaims(): Promise<void> {
    await this.o.claim?.confirm();
    await this.satClaim?.confirm();
  }

  /**
   * Tokens made before a revocation are swept by it; pushed afterwards, users would see tokens that cannot
   * be redeemed. So each push first reads the campaign's entry in the registry of revoked campaigns
   * (written before the sweep starts) and stops the run as the engine's refusal does. A revoke landing between this read and the push still lets that
   * one batch through; that window is accepted: its tokens are swept like every other of the campaign (none
   * can be redeemed), and closing it would need revoke to wait for every run delivering the campaign.
   */
  private async refuseRevoked(): Promise<void> {
    const at = await this.o.campaigns.revokedAt(this.id);
    if (at !== undefined) throw new DomainError('campaign_revoked', `campaign "${this.id}" was revoked at ${new Date(at).toISOString()}: its undelivered tokens are not pushed`);
  }

  /**
   * The run read the satellite's url and key once: removed meanwhile (retired, or its url handed to someone
   * else), it kept being made tokens and pushed them to the end of its listing, exit 0, though a resume and the
   * admin route serve no removed satellite. The sets made and not pushed stay undelivered, as a resume leaves them.
   */
  private async refuseRemoved(): Promise<void> {
    if (this.o.registry && !(await this.o.registry.get(this.sat))) {
      throw new SatelliteRemoved(`${REMOVED}: removed while this run served it; nothing more is made for it or pushed to it`);
    }
  }

  /**
   * A run longer than the campaign's remaining life failed at the engine's refusal of a past expiry, blaming
   * the satellite and hinting a resume that could only refuse, and pushed tokens already expired.
   */
  private refuseExpired(): void {
    const at = this.o.campaign.expiresAt;
    if (at !== undefined && at <= Date.now()) {
      throw new CampaignExpired(`campaign "${this.id}" expired at ${new Date(at).toISOString()}: its tokens can no longer be redeemed, so no more are made or pushed; start a new --campaign for the users it did not serve`);
    }
  }

  private plan(event: 'tokensToMake' | 'tokensToDeliver', n: number): void {
    if (n > 0) this.o.onProgress?.(this.sat, event, n);
  }

  /** Counts for this run's report, the campaign's totals (unless `stored` counted them already) and the progress bar. */
  private async count(counter: Counter, n: number, stored = false): Promise<void> {
    if (n === 0) return;
    this.report[counter] += n;
    this.o.onProgress?.(this.sat, counter, n);
    if (!this.o.dryRun && !stored) await this.o.campaigns.count(this.id, this.sat, counter, n);
  }
}
