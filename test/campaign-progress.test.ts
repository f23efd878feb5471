import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCampaign, type ProgressEvent } from '../src/campaigns/flow.js';
import { CampaignStore, type CampaignMeta } from '../src/store/campaign-store.js';
import { startSatelliteSim, type SatelliteSim } from '../src/sim/index.js';
import { engineFixture, type EngineFixture } from './helpers/redis.js';

/** What the generate progress bars are fed: each bar's total must end equal to its count. */
describe('generation progress (real Redis, a reference satellite)', () => {
  const USERS = 400;
  const PER_USER = 3;
  let fx: EngineFixture;
  let sim: SatelliteSim;
  let campaigns: CampaignStore;
  const campaign: CampaignMeta = { id: 'progress', perUser: PER_USER, satellites: ['sat-p'], createdAt: Date.now() };

  beforeAll(async () => {
    fx = await engineFixture({ label: 'progress' });
    // deliveries fail once 500 tokens are stored: the first run stops part-way
    sim = await startSatelliteSim({ id: 'sat-p', users: USERS, failAfter: 500 });
    campaigns = new CampaignStore(fx.redis, fx.prefix);
    await campaigns.open(campaign);
    await campaigns.addSatellites(campaign, campaign.satellites);
  });
  afterAll(async () => {
    await sim?.close();
    await fx?.close();
  });

  async function run(existed: boolean) {
    const seen: Partial<Record<ProgressEvent, number>> = {};
    const [report] = await runCampaign(
      {
        engine: fx.engine, campaigns, campaign, existed, dryRun: false, pageSize: 100, deliverBatch: 150, timeoutMs: 30_000, attempts: 1, backoffMs: 1,
        onProgress: (_sat, event, n) => void (seen[event] = (seen[event] ?? 0) + n),
      },
      [{ id: 'sat-p', url: sim.url }],
    );
    return { report: report!, seen };
  }

  it('a run that lost its claim to another run makes no more tokens and leaves the status alone', async () => {
    const other: CampaignMeta = { id: 'stalled', perUser: 1, satellites: ['sat-p'], createdAt: Date.now() };
    await campaigns.open(other);
    await campaigns.addSatellites(other, other.satellites);
    const mine = (await campaigns.claim(other.id, 60_000))!;
    // it stalled past its claim, and another run took the campaign
    await fx.redis.del(`${fx.prefix}:{camp:stalled}:run`);
    const theirs = (await campaigns.claim(other.id, 60_000))!;
    await campaigns.setStatus(other.id, 'sat-p', 'running');
    try {
      const [report] = await runCampaign(
        { engine: fx.engine, campaigns, campaign: other, existed: false, dryRun: false, pageSize: 100, deliverBatch: 150, timeoutMs: 30_000, attempts: 1, claim: mine },
        [{ id: 'sat-p', url: sim.url }],
      );
      expect(report).toMatchObject({ status: 'failed', tokensMade: 0, error: expect.stringMatching(/may be run by another generate now: this run stalled past its 60 s claim, which lapsed/) });
      expect((await fx.engine.stats()).satellites['sat-p']?.generated ?? 0).toBe(0);
      expect((await campaigns.progress(other.id, 'sat-p')).status).toBe('running');
    } finally {
      await mine.release();
      await theirs.release();
    }
  });

  it('a second campaign on a satellite another campaign is serving stops before making anything, and can be resumed', async () => {
    const other: CampaignMeta = { id: 'meanwhile', perUser: 1, satellites: ['sat-p'], createdAt: Date.now() };
    await campaigns.open(other);
    await campaigns.addSatellites(other, other.satellites);
    const serving = await campaigns.claimSatellite('sat-p', 'progress');
    if ('heldBy' in serving) throw new Error(`sat-p already held by ${serving.heldBy}`);
    const runOther = async () =>
      (await runCampaign(
        { engine: fx.engine, campaigns, campaign: other, existed: true, dryRun: false, pageSize: 100, deliverBatch: 150, timeoutMs: 2000, attempts: 1 },
        [{ id: 'sat-p', url: sim.url }],
      ))[0]!;
    try {
      const report = await runOther();
      expect(report).toMatchObject({ status: 'failed', usersListed: 0, tokensMade: 0, error: expect.stringMatching(/being served by campaign "progress"/) });
      expect((await fx.engine.stats()).satellites['sat-p']?.generated ?? 0).toBe(0);
      expect((await campaigns.progress(other.id, 'sat-p')).status).toBe('failed');
    } finally {
      await serving.release();
    }
    // the satellite is free again: the refused run did not keep a claim of its own
    const again = await campaigns.claimSatellite('sat-p', 'progress');
    expect('heldBy' in again).toBe(false);
    if (!('heldBy' in again)) await again.release();
  });

  it('a resumed run and a later run of the same campaign plan only what they make and deliver', async () => {
    const first = await run(false);
    expect(first.report.status).toBe('failed');
    expect(first.seen.tokensToMake).toBe(first.seen.tokensMade);
    expect(first.seen.tokensDelivered).toBeLessThan(first.seen.tokensToDeliver!);

    sim.satellite.setFailAfter(null);
    // two users the first run made tokens for but could not deliver to close their accounts: the
    // satellite refuses them, and the delivered bar's total drops their tokens again
    const held = sim.satellite.holdings();
    const empty = Object.keys(held).filter((u) => held[u]!.length === 0);
    const made = await campaigns.made(campaign.id, 'sat-p', empty);
    expect(sim.satellite.leave(empty.filter((_, i) => made[i]).slice(0, 2))).toBe(2);
    const second = await run(true);
    expect(second.report).toMatchObject({ status: 'done', usersRefused: 2 });
    expect(second.seen.tokensToMake).toBe(second.seen.tokensMade);
    expect(second.seen.tokensToDeliver).toBe(second.seen.tokensDelivered);
    expect(first.seen.tokensMade! + second.seen.tokensMade!).toBe(USERS * PER_USER);
    expect(Object.values(sim.satellite.holdings()).every((t) => t.length === PER_USER)).toBe(true);

    // users who used every token are listed again; the campaign served them already, so it makes nothing
    while (sim.satellite.takeToken());
    const later = await run(true);
    expect(later.report.status).toBe('done');
    expect(later.seen.usersListed).toBe(USERS - 2);
    expect(later.seen.tokensMade ?? 0).toBe(0);
    expect(later.seen.tokensToMake ?? 0).toBe(0);
    expect(later.seen.tokensToDeliver ?? 0).toBe(later.seen.tokensDelivered ?? 0);
  });
});

describe('a user\'s set split over several deliveries', () => {
  it('counts its tokens delivered once, when the last part is accepted, also across a stop and a resume', async () => {
    const fx = await engineFixture({ label: 'split' });
    // 4 users x 10 tokens in parts of 5; the satellite fails once it holds 15: user 0 whole, half of user 1
    const sim = await startSatelliteSim({ id: 'sat-s', users: 4, failAfter: 15 });
    const campaigns = new CampaignStore(fx.redis, fx.prefix);
    const campaign: CampaignMeta = { id: 'split', perUser: 10, satellites: ['sat-s'], createdAt: Date.now() };
    await campaigns.open(campaign);
    await campaigns.addSatellites(campaign, campaign.satellites);
    const run = async (existed: boolean) =>
      (await runCampaign(
        { engine: fx.engine, campaigns, campaign, existed, dryRun: false, pageSize: 100, deliverBatch: 5, timeoutMs: 2000, attempts: 1, backoffMs: 1 },
        [{ id: 'sat-s', url: sim.url }],
      ))[0]!;
    try {
      const first = await run(false);
      expect(first).toMatchObject({ status: 'failed', tokensMade: 40, tokensDelivered: 10 });
      sim.satellite.setFailAfter(null);
      const resumed = await run(true);
      expect(resumed).toMatchObject({ status: 'done', tokensMade: 0, tokensDelivered: 30 });
      expect(Object.values(sim.satellite.holdings()).map((t) => t.length)).toEqual([10, 10, 10, 10]);
      expect(await campaigns.progress('split', 'sat-s')).toMatchObject({ tokensMade: 40, tokensDelivered: 40 });
    } finally {
      await sim.close();
      await fx.close();
    }
  });
});
