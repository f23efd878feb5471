import { quote } from 'shell-quote';
import { pushTo } from '../collections.js';
import { counted } from '../plural.js';
import type { SatelliteRegistry } from '../satellites/registry.js';
import type { FlowSatellite, SatelliteReport } from './flow.js';
import type { CampaignMeta, CampaignStore } from '../store/campaign-store.js';

/** why a run skips a satellite: --all skips one without a url; a campaign's own removed since is skipped too */
export const NO_URL = 'no url registered';
export const REMOVED = 'no longer registered (satellites remove)';

/** An id as a shell word, so a suggested command can be pasted whatever the id holds. */
export const sh = (id: string): string => quote([id]);

/** What a generate run is asked for, its flags already checked. */
export interface RunRequest {
  id: string;
  /** the campaign's own settings and satellites */
  resume: boolean;
  /** every registered satellite with a url (one without is skipped); else `satellites` */
  all: boolean;
  satellites: readonly string[];
  perUser?: number;
  expiresAt?: number;
  dryRun: boolean;
  /** how a suggested command starts, with the global flags of this one (`referral-manager --key-prefix x`): run as printed, it must reach the same deployment */
  command?: string;
}

export interface RunPlan {
  /** opened (or found, for a dry run) */
  campaign: CampaignMeta;
  /** the campaign was there before this run */
  existed: boolean;
  satellites: FlowSatellite[];
  skipped: SatelliteReport[];
}

const skippedReport = (satelliteId: string, error: string): SatelliteReport => ({
  satelliteId, usersListed: 0, usersServed: 0, tokensMade: 0, tokensDelivered: 0, usersRefused: 0, failures: 0, usersInvalid: 0, status: 'skipped', error,
});

/** A satellite url as the same satellite would be reached: no trailing slash, default port and case left out. */
function sameUrl(raw: string): string {
  try {
    const u = new URL(raw);
    return `${u.origin}${u.pathname.replace(/\/+$/, '')}`;
  } catch {
    return raw;
  }
}

/**
 * Decides what a run of `req.id` serves, and opens the campaign (not on a dry run): refuses a campaign
 * revoked, expired or asked for another --per-user, picks the satellites and their outbound keys, records a
 * campaign's satellite removed since as `removed`. `note` hears what the marketer should know that is no
 * failure. The run itself checks revocation and expiry again before each push (src/campaigns/flow.ts).
 */
export async function planRun(registry: SatelliteRegistry, campaigns: CampaignStore, req: RunRequest, note: (line: string) => void): Promise<RunPlan> {
  const { id } = req;
  const existing = req.resume ? await campaigns.require(id) : await campaigns.meta(id);
  // a dry run fails as the real run would: it said it would make tokens the real run then refused to
  // (the registry also holds an id the admin route revoked)
  const revokedAt = await campaigns.revokedAt(id);
  if (revokedAt !== undefined) {
    throw new Error(`campaign "${id}" was revoked at ${new Date(revokedAt).toISOString()}: it makes and delivers no more tokens; start a new --campaign`);
  }
  // its undelivered tokens can no longer be redeemed, and the engine makes none that expire in the past
  if (existing?.expiresAt !== undefined && existing.expiresAt <= Date.now()) {
    throw new Error(`campaign "${id}" expired at ${new Date(existing.expiresAt).toISOString()}: its tokens can no longer be redeemed, so it makes and delivers no more; start a new --campaign`);
  }
  if (existing && req.perUser !== undefined && existing.perUser !== req.perUser) {
    throw new Error(`campaign "${id}" makes ${counted(existing.perUser, 'token')} per user, not ${req.perUser}: choose another --campaign`);
  }
  // --expires is relative, so rerunning the same command line gives another date: keep the campaign's
  // (its tokens should expire together), but say so rather than drop the flag silently
  if (existing && req.expiresAt !== undefined) {
    const kept = existing.expiresAt === undefined ? 'no expiry' : `expiry ${new Date(existing.expiresAt).toISOString()}`;
    note(`note: campaign "${id}" keeps its ${kept}; --expires applies to new campaigns only`);
  }
  const chosen = req.resume ? existing!.satellites : req.all ? (await registry.list()).map((s) => s.id) : [...new Set(req.satellites)];
  if (chosen.length === 0) throw new Error('no satellites registered (referral-manager satellites add --id <id> --url <url>)');
  const satellites: FlowSatellite[] = [];
  const skipped: SatelliteReport[] = [];
  const removed: string[] = [];
  for (const satId of chosen) {
    // a campaign's satellite removed since: the others are still served (nothing adds it back to a campaign)
    const s = req.resume ? await registry.get(satId) : await registry.require(satId);
    if (!s) {
      skipped.push(skippedReport(satId, REMOVED));
      removed.push(satId);
    } else if (s.url) {
      // opened before any satellite is called: a key this run cannot open stops it with the reason
      const outboundKey = registry.outboundKey(s);
      satellites.push(outboundKey ? { id: s.id, url: s.url, outboundKey } : { id: s.id, url: s.url });
    }
    // --all means every satellite that can be served; a named one (or a campaign's own) must be
    else if (req.all) skipped.push(skippedReport(satId, NO_URL));
    else throw new Error(`satellite "${satId}" has no url: referral-manager satellites update ${sh(satId)} --url <url>`);
  }
  // one not served in full can never be: said so in the record, so the campaign can end `done` (it
  // stayed `failed` for good), also when none is left
  if (!req.dryRun) {
    for (const satId of removed) if ((await campaigns.progress(id, satId)).status !== 'done') await campaigns.setStatus(id, satId, 'removed', REMOVED);
  }
  if (satellites.length === 0) {
    if (req.resume) throw new Error(`campaign "${id}" has no satellite left to serve: ${skipped.map((r) => r.satelliteId).join(', ')} ${REMOVED}`);
    throw new Error(`no registered satellite has a url: nothing to serve (${skipped.map((r) => r.satelliteId).join(', ')} ${NO_URL}; referral-manager satellites update <id> --url <url> gives one)`);
  }
  // one satellite registered twice (two ids, one url) lists the same users to both: each gets two sets
  const byUrl = new Map<string, string[]>();
  for (const s of satellites) pushTo(byUrl, sameUrl(s.url), s.id);
  for (const [url, ids] of byUrl) {
    if (ids.length > 1) note(`note: satellites ${ids.join(', ')} have the same url ${url}: a user it lists gets a set from each`);
  }
  // another campaign's sets made for these satellites and never delivered (its run failed or was killed):
  // the satellite lists their users again, and a user this run serves then holds both campaigns' tokens
  // (that campaign's resume keeps them: a push may have reached the user unrecorded)
  // a warning only: a record it cannot read must not stop the run
  const others = await campaigns.list().catch((err: unknown) => {
    note(`note: could not read the other campaigns to check for undelivered sets (${(err as Error).message})`);
    return [];
  });
  for (const other of others) {
    if (other.id === id || other.revokedAt !== undefined || (other.expiresAt !== undefined && other.expiresAt <= Date.now())) continue;
    for (const s of satellites) {
      const p = other.progress[s.id];
      // the sets of users it refused are settled (revoked or kept), never delivered again: not waiting
      if (p && (p.status === 'failed' || p.status === 'interrupted') && p.tokensMade - p.tokensDelivered > p.usersRefused * other.perUser) {
        note(`note: campaign "${other.id}" made tokens for satellite ${s.id} it has not delivered (${p.status}): a user of those this run serves would hold a set of each; resume it first (${req.command ?? 'referral-manager'} generate --resume ${sh(other.id)})`);
      }
    }
  }
  // a skipped satellite stays out of the campaign's record: it is not pending there, and running the
  // same --all --campaign again once it has a url adds and serves it
  const satIds = satellites.map((s) => s.id);
  const planned: CampaignMeta = { id, perUser: req.perUser ?? existing!.perUser, satellites: satIds, createdAt: Date.now() };
  if (req.expiresAt !== undefined) planned.expiresAt = req.expiresAt;
  let campaign = existing ?? planned;
  if (!req.dryRun) {
    campaign = (await campaigns.open(planned)).campaign;
    await campaigns.addSatellites(campaign, satIds);
  }
  return { campaign, existed: existing !== undefined, satellites, skipped };
}
