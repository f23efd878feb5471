import type { Satellite, SatelliteFields } from '../satellites/model.js';
import type { Stats } from '../store/model.js';
import { segment, Transport, type TransportOptions } from './transport.js';

/** A satellite as listed: its outbound key is never sent, only whether one is set. */
export type ListedSatellite = Omit<Satellite, 'outboundKey'> & { hasOutboundKey: boolean };

export type RevokeSelector = { tokens: string[] } | { satelliteId: string; userId: string } | { satelliteId: string; allUsers: true } | { campaignId: string };

/** What updateSatellite changes: null clears a field, one left out is kept. */
export type { SatelliteFields };

/** How long the server lets a campaign's or a satellite's revoke, or a purge, run (SWEEP_TIMEOUT_MS in src/http/admin-routes.ts). */
const SWEEP_WAIT_MS = 10 * 60_000;

/** The admin routes (ADMIN_KEY), for the CLI and ops tooling. */
export class AdminClient {
  private readonly t: Transport;

  constructor(opts: TransportOptions) {
    this.t = new Transport(opts);
  }

  addSatellite(input: { id: string; name?: string; url?: string; outboundKey?: string }): Promise<{ id: string; apiKey: string }> {
    return this.t.call('POST', '/v1/admin/satellites', input);
  }

  async listSatellites(): Promise<ListedSatellite[]> {
    return (await this.t.call<{ satellites: ListedSatellite[] }>('GET', '/v1/admin/satellites')).satellites;
  }

  /** Sets the given fields; null clears one. Answers the satellite as listed. */
  async updateSatellite(id: string, change: SatelliteFields): Promise<ListedSatellite> {
    return this.t.call('PATCH', `/v1/admin/satellites/${segment('id', id)}`, change);
  }

  async removeSatellite(id: string): Promise<void> {
    await this.t.call('DELETE', `/v1/admin/satellites/${segment('id', id)}`);
  }

  /** A new key; the old one keeps working for `graceMs` (default: the server's KEY_GRACE_MS; 0 ends it now). */
  async rotateKey(id: string, graceMs?: number): Promise<{ apiKey: string }> {
    return this.t.call('POST', `/v1/admin/satellites/${segment('id', id)}/rotate-key`, graceMs === undefined ? {} : { graceMs });
  }

  generate(req: { satelliteId: string; userIds: string[]; perUser: number; expiresAt?: number; campaignId?: string }): Promise<{ campaignId: string; tokens: { userId: string; token: string }[] }> {
    return this.t.call('POST', '/v1/admin/tokens/generate', req);
  }

  /** A campaign's or a whole satellite's revoke sweeps every shard: it may take minutes at scale, so it may wait that long. */
  revoke(selector: RevokeSelector): Promise<{ revoked: number }> {
    return this.t.call('POST', '/v1/admin/tokens/revoke', selector, { timeoutMs: 'campaignId' in selector || 'allUsers' in selector ? SWEEP_WAIT_MS : undefined });
  }

  /** Deletes revoked and expired tokens made before `madeBefore` (ms) from Redis (`tokens purge`); a sweep, so it may take minutes. */
  purge(madeBefore: number, campaignId?: string): Promise<{ purged: number }> {
    return this.t.call('POST', '/v1/admin/tokens/purge', campaignId === undefined ? { madeBefore } : { madeBefore, campaignId }, { timeoutMs: SWEEP_WAIT_MS });
  }

  /** How many tokens `purge` would delete, changing nothing. */
  purgeDryRun(madeBefore: number, campaignId?: string): Promise<{ wouldPurge: number }> {
    const body = { madeBefore, dryRun: true, ...(campaignId === undefined ? {} : { campaignId }) };
    return this.t.call('POST', '/v1/admin/tokens/purge', body, { timeoutMs: SWEEP_WAIT_MS, repeatable: true });
  }

  stats(): Promise<Stats> {
    return this.t.call('GET', '/v1/admin/stats');
  }

  close(): Promise<void> {
    return this.t.close();
  }
}
