import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { unpack } from 'msgpackr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCampaign } from '../src/campaigns/flow.js';
import { CampaignStore, type CampaignMeta } from '../src/store/campaign-store.js';
import { engineFixture, type EngineFixture } from './helpers/redis.js';

/**
 * A satellite that ignores the page limit and lists every user in one page (`users` ids), and takes every push
 * whole: the tokens it was pushed, by user.
 */
async function oneBigPage(users: string[]): Promise<{ url: string; held: Map<string, string[]>; close(): Promise<void> }> {
  const held = new Map<string, string[]>();
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      let reply: unknown;
      if (req.method === 'GET') {
        reply = { userIds: users.filter((u) => !held.has(u)), nextCursor: null };
      } else {
        const { tokens } = unpack(Buffer.concat(chunks)) as { tokens: { userId: string; token: string }[] };
        for (const t of tokens) held.set(t.userId, [...(held.get(t.userId) ?? []), t.token]);
        reply = { accepted: tokens.length };
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(reply));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    held,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

describe('a satellite listing 130,000 users in one page (real Redis)', () => {
  const N = 130_000;
  let fx: EngineFixture;
  let sat: Awaited<ReturnType<typeof oneBigPage>>;
  const users = Array.from({ length: N }, (_, i) => `u${i}`);
  const campaign: CampaignMeta = { id: 'adopt-all', perUser: 1, satellites: ['sat-h'], createdAt: Date.now() };

  beforeAll(async () => {
    fx = await engineFixture({ label: 'huge-page' });
    sat = await oneBigPage(users);
  });
  afterAll(async () => {
    await sat?.close();
    await fx?.close();
  });

  // The resume adopts the sets an earlier run made but never recorded (src/campaigns/flow.ts, adopt): it added
  // them to the page's pending sets as arguments of one push(...), and past ~125,000 that overflowed the
  // stack: the satellite failed with "Maximum call stack size exceeded" on every resume, nothing delivered.
  it('a resume adopts the sets of every user of the page and delivers them, none made twice', async () => {
    const campaigns = new CampaignStore(fx.redis, fx.prefix);
    await campaigns.open(campaign);
    await campaigns.addSatellites(campaign, campaign.satellites);
    // made by a run that stopped before recording them (or by the admin route under the campaign's id)
    const made = new Map<string, string>();
    for (let i = 0; i < N; i += 10_000) {
      const owners = users.slice(i, i + 10_000).map((ownerUserId) => ({ ownerSatelliteId: 'sat-h', ownerUserId }));
      for (const t of (await fx.engine.generate({ owners, perUser: 1, campaignId: campaign.id })).tokens) made.set(t.ownerUserId, t.token);
    }

    const [report] = await runCampaign(
      { engine: fx.engine, campaigns, campaign, existed: true, dryRun: false, pageSize: 1000, deliverBatch: 10_000, timeoutMs: 60_000, attempts: 1 },
      [{ id: 'sat-h', url: sat.url }],
    );
    expect(report, report?.error).toMatchObject({ status: 'done', usersListed: N, usersServed: N, tokensMade: N, tokensDelivered: N });
    expect(sat.held.size).toBe(N);
    expect([...sat.held].every(([u, tokens]) => tokens.length === 1 && tokens[0] === made.get(u))).toBe(true);
    expect((await fx.engine.stats()).satellites['sat-h']?.generated).toBe(N);
  }, 300_000);
});

describe('one owner holding 130,000 tokens (real Redis)', () => {
  let fx: EngineFixture;
  beforeAll(async () => {
    fx = await engineFixture({ label: 'huge-states' });
  });
  afterAll(async () => {
    await fx?.close();
  });

  // storedStates read each bucket's records with one HMGET spread over its tokens, and one owner's tokens share
  // a bucket: TokenEngine is the package's API, and a caller asking for 130,000 of one owner's tokens got
  // "Maximum call stack size exceeded" (delivery asks in chunks of 20,000)
  it('storedStates: every token of the owner, in the order asked', async () => {
    const N = 130_000;
    const made: string[] = [];
    for (let n = 0; n < N; n += 10_000) {
      for (const t of (await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-s', ownerUserId: 'famous' }], perUser: 10_000, campaignId: 'c' })).tokens) made.push(t.token);
    }
    expect((await fx.engine.revokeToken(made[N - 1]!)).code).toBe('ok');
    const absent = '00000000-0000-4000-8000-000000000000';
    const states = await fx.engine.storedStates([...made, absent]);
    expect(states.length).toBe(N + 1);
    expect([states[0], states[N - 2], states[N - 1], states[N]]).toEqual(['unredeemed', 'unredeemed', 'revoked', undefined]);
    expect(states.slice(0, N - 1).every((s) => s === 'unredeemed')).toBe(true);
  }, 120_000);
});
