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
});
