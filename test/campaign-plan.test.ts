import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { planRun, type RunRequest } from '../src/campaigns/plan.js';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { CampaignStore } from '../src/store/campaign-store.js';
import { engineFixture, type EngineFixture } from './helpers/redis.js';

describe('what a generate run serves (planRun, real Redis)', () => {
  let fx: EngineFixture;
  let campaigns: CampaignStore;
  let registry: SatelliteRegistry;
  beforeAll(async () => {
    fx = await engineFixture({ label: 'plan' });
    campaigns = new CampaignStore(fx.redis, fx.prefix);
    registry = new SatelliteRegistry(fx.redis, fx.prefix);
    await registry.add({ id: 's1', url: 'http://127.0.0.1:9/' });
  });
  afterAll(async () => {
    await fx?.close();
  });

  const notesOf = async (req: Partial<RunRequest>) => {
    const notes: string[] = [];
    await planRun(registry, campaigns, { id: 'next', resume: false, all: false, satellites: ['s1'], perUser: 3, dryRun: true, ...req }, (l) => notes.push(l));
    return notes;
  };

  it('notes another campaign that failed with sets made and not delivered, not one whose only undelivered sets are of users refused', async () => {
    // failed with 3 of 6 tokens delivered, and the other 3 the set of a user the satellite refused: settled
    await campaigns.open({ id: 'settled', perUser: 3, satellites: ['s1'], createdAt: 1 });
    await campaigns.count('settled', 's1', 'tokensMade', 6);
    await campaigns.count('settled', 's1', 'tokensDelivered', 3);
    await campaigns.count('settled', 's1', 'usersRefused', 1);
    await campaigns.setStatus('settled', 's1', 'failed', 'listing failed');
    expect(await notesOf({})).toEqual([]);
    // one more set made and not delivered: waiting for a resume
    await campaigns.count('settled', 's1', 'tokensMade', 3);
    expect(await notesOf({})).toEqual([expect.stringContaining('note: campaign "settled" made tokens for satellite s1 it has not delivered (failed)')]);
    // ...and not for itself
    expect(await notesOf({ id: 'settled' })).toEqual([]);
  });

  // each filter of the note held: an interrupted run is noted, a revoked or an expired campaign is not
  it('notes an interrupted run (a killed or Ctrl-C\'d generate) too, but no campaign revoked or expired: its resume is refused', async () => {
    const undelivered = async (id: string, extra: { expiresAt?: number } = {}) => {
      await campaigns.open({ id, perUser: 3, satellites: ['s1'], createdAt: 1, ...extra });
      await campaigns.count(id, 's1', 'tokensMade', 3);
      await campaigns.setStatus(id, 's1', 'failed', 'listing failed');
    };
    // recorded running, no run holding it: read as interrupted
    await campaigns.open({ id: 'killed', perUser: 3, satellites: ['s1'], createdAt: 1 });
    await campaigns.count('killed', 's1', 'tokensMade', 3);
    await campaigns.setStatus('killed', 's1', 'running');
    const killed = (await notesOf({ id: 'next-k' })).filter((l) => l.includes('"killed"'));
    expect(killed).toEqual([expect.stringContaining('note: campaign "killed" made tokens for satellite s1 it has not delivered (interrupted)')]);
    await undelivered('revoked-one');
    await fx.engine.revokeCampaign('revoked-one');
    await undelivered('expired-one', { expiresAt: Date.now() - 1000 });
    const notes = await notesOf({ id: 'next-r' });
    expect(notes.filter((l) => l.includes('revoked-one') || l.includes('expired-one'))).toEqual([]);
  });

  it('a satellite named twice is served once', async () => {
    const plan = await planRun(registry, campaigns, { id: 'twice', resume: false, all: false, satellites: ['s1', 's1'], perUser: 3, dryRun: true }, () => {});
    expect(plan.satellites.map((s) => s.id)).toEqual(['s1']);
  });

  it('a campaign list it cannot read is a note, not a failure of the run', async () => {
    const broken = Object.create(campaigns, { list: { value: () => Promise.reject(new Error('list broke')) } }) as CampaignStore;
    const notes: string[] = [];
    const plan = await planRun(registry, broken, { id: 'next-b', resume: false, all: false, satellites: ['s1'], perUser: 3, dryRun: true }, (l) => notes.push(l));
    expect(plan.satellites.map((s) => s.id)).toEqual(['s1']);
    expect(notes).toEqual(['note: could not read the other campaigns to check for undelivered sets (list broke)']);
  });

  it('a resume records a satellite removed since as removed, but leaves one it had served in full done', async () => {
    await campaigns.open({ id: 'shrunk', perUser: 3, satellites: ['s1', 'gone-done', 'gone-failed'], createdAt: 1 });
    await campaigns.setStatus('shrunk', 'gone-done', 'done');
    await campaigns.setStatus('shrunk', 'gone-failed', 'failed', 'listing failed');
    // a dry run records nothing
    await planRun(registry, campaigns, { id: 'shrunk', resume: true, all: false, satellites: [], dryRun: true }, () => {});
    expect((await campaigns.progress('shrunk', 'gone-failed')).status).toBe('failed');
    const plan = await planRun(registry, campaigns, { id: 'shrunk', resume: true, all: false, satellites: [], dryRun: false }, () => {});
    expect(plan.skipped.map((r) => r.satelliteId)).toEqual(['gone-done', 'gone-failed']);
    expect((await campaigns.progress('shrunk', 'gone-done')).status).toBe('done');
    expect((await campaigns.progress('shrunk', 'gone-failed')).status).toBe('removed');
  });
});
