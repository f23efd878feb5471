import { describe, expect, it } from 'vitest';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool } from 'undici';
import { runCampaign } from '../src/campaigns/flow.js';
import { CampaignStore } from '../src/store/campaign-store.js';
import { loadConfig } from '../src/config.js';
import { packr } from '../src/msgpack.js';
import { openPostgres, restoreCampaigns, restoreFromPostgres, restoreRevoked, revocationGaps, startSnapshotWriter, verify } from '../src/snapshot/index.js';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { SHARDS, placeOfOwner } from '../src/store/keys.js';
import { runCli } from './helpers/cli.js';
import { ADMIN_KEY, call, serve } from './helpers/http.js';
import { dropPrefix, engineFixtureFor } from './helpers/redis.js';
import { caughtUp, sleep, snapshotFixture } from './helpers/snapshot.js';

/**
 * A hand-written satellite: `list(page)` answers users-without-tokens (the cursor is the page number) and
 * may act first; `onPush` runs before a push is accepted. Every token pushed is kept in `pushed`.
 */
async function satellite(list: (page: number) => Promise<{ userIds: string[]; nextCursor: string | null }>, onPush: () => Promise<void> = async () => {}) {
  const pushed: string[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', async () => {
      res.setHeader('content-type', 'application/json');
      const url = new URL(req.url!, 'http://x');
      if (url.pathname === '/referrals/v1/users-without-tokens') return res.end(JSON.stringify(await list(Number(url.searchParams.get('cursor') || '0'))));
      await onPush();
      const { tokens } = packr.unpack(Buffer.concat(chunks)) as { tokens: { token: string }[] };
      pushed.push(...tokens.map((t) => t.token));
      res.end(JSON.stringify({ accepted: tokens.length }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    pushed,
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

const owners = (sat: string, users: string[]) => users.map((ownerUserId) => ({ ownerSatelliteId: sat, ownerUserId }));
const usersOf = (page: number) => Array.from({ length: 10 }, (_, i) => `u${page * 10 + i}`);

describe('a revoked campaign stays revoked', () => {
  const fx = engineFixtureFor('crev');

  it('the engine makes no token of a revoked campaign, also on shards that had none of it', async () => {
    await fx.engine.generate({ owners: owners('s1', ['a', 'b']), perUser: 2, campaignId: 'gone' });
    expect(await fx.engine.revokeCampaign('gone')).toBe(4);
    await expect(fx.engine.generate({ owners: owners('s1', usersOf(0)), perUser: 2, campaignId: 'gone' })).rejects.toMatchObject({ code: 'campaign_revoked' });
    // revoked before it made anything
    await fx.engine.revokeCampaign('never');
    await expect(fx.engine.generate({ owners: owners('s1', ['a']), perUser: 1, campaignId: 'never' })).rejects.toMatchObject({ code: 'campaign_revoked' });
    expect((await fx.engine.stats()).satellites.s1).toMatchObject({ generated: 4, unredeemed: 0, revoked: 4 });
  });

  // a revoke that failed part-way is sent again: the registry keeps the first time, as the shards' marks do
  it('a revoke sent again keeps the first revocation time in the registry', async () => {
    await fx.engine.revokeCampaign('twice');
    const registry = fx.store.keys.revokedCampaigns();
    const first = Number(await fx.redis.hget(registry, 'twice'));
    await new Promise((r) => setTimeout(r, 5));
    await fx.engine.revokeCampaign('twice');
    expect(Number(await fx.redis.hget(registry, 'twice'))).toBe(first);
  });

  it('a run revoked between two batches stops, with status revoked, and leaves no token of the campaign unredeemed', async () => {
    const campaigns = new CampaignStore(fx.redis, fx.prefix);
    const campaign = (await campaigns.open({ id: 'race', perUser: 3, satellites: ['sat-r'], createdAt: Date.now() })).campaign;
    // three pages of 10 users; the satellite is asked for page 2 after page 1 was made and delivered, and
    // the campaign is revoked right then (what an operator's `tokens revoke --campaign` does mid-run)
    const sat = await satellite(async (page) => {
      if (page === 1) await fx.engine.revokeCampaign('race');
      return { userIds: usersOf(page), nextCursor: page < 2 ? String(page + 1) : null };
    });
    try {
      const [report] = await runCampaign(
        { engine: fx.engine, campaigns, campaign, existed: false, dryRun: false, pageSize: 10, deliverBatch: 100, timeoutMs: 5000, attempts: 1 },
        [{ id: 'sat-r', url: sat.url }],
      );
      expect(report).toMatchObject({ status: 'revoked', usersServed: 10, tokensMade: 30, tokensDelivered: 30, error: expect.stringMatching(/campaign "race" was revoked/) });
    } finally {
      await sat.close();
    }
    const { pushed } = sat;
    // nothing of the campaign can be redeemed: the first page's tokens were swept, the later pages never made
    expect(pushed).toHaveLength(30);
    for (const t of pushed) expect((await fx.engine.lookup(t))?.state).toBe('revoked');
    for (const page of [0, 1, 2]) for (const u of usersOf(page)) expect(await fx.engine.listUnredeemed('sat-r', u)).toEqual([]);
    expect((await fx.engine.stats()).satellites['sat-r']).toMatchObject({ generated: 30, unredeemed: 0, revoked: 30 });
    const c = (await campaigns.get('race'))!;
    expect(c.revokedAt).toEqual(expect.any(Number));
    expect(c.progress['sat-r']).toMatchObject({ status: 'revoked', lastError: expect.stringMatching(/revoked/) });
  });

  it('a run revoked between making a batch and pushing it pushes none of the revoked tokens', async () => {
    const campaigns = new CampaignStore(fx.redis, fx.prefix);
    const campaign = (await campaigns.open({ id: 'late', perUser: 3, satellites: ['sat-l'], createdAt: Date.now() })).campaign;
    // one page of 10 users makes 30 tokens in one batch, pushed 9 at a time (whole sets of 3 in a batch of
    // 10); the campaign is revoked while the first push is accepted, so the other 21 are revoked before
    // their push: before the check they reached the satellite all the same
    let revoked = false;
    const sat = await satellite(
      async () => ({ userIds: usersOf(0), nextCursor: null }),
      async () => {
        if (!revoked) await fx.engine.revokeCampaign('late');
        revoked = true;
      },
    );
    let report;
    try {
      [report] = await runCampaign(
        { engine: fx.engine, campaigns, campaign, existed: false, dryRun: false, pageSize: 10, deliverBatch: 10, timeoutMs: 5000, attempts: 1 },
        [{ id: 'sat-l', url: sat.url }],
      );
    } finally {
      await sat.close();
    }
    expect(sat.pushed).toHaveLength(9);
    expect(report).toMatchObject({ status: 'revoked', usersServed: 10, tokensMade: 30, tokensDelivered: 9, error: expect.stringMatching(/campaign "late" was revoked at .*: its undelivered tokens are not pushed/) });
    expect((await fx.engine.stats()).satellites['sat-l']).toMatchObject({ generated: 30, unredeemed: 0, revoked: 30 });
    expect((await campaigns.get('late'))!.progress['sat-l']).toMatchObject({ status: 'revoked', tokensDelivered: 9 });
  });

  // campaigns show said 36,000 made where tokens revoke and campaigns results said 37,952 (a drill): the batch
  // the engine refused part-way had made its tokens on the shards the revoke had not marked yet
  it('a batch the engine refuses part-way (a revoke landing mid-batch) counts its tokens made, as the engine does', async () => {
    const campaigns = new CampaignStore(fx.redis, fx.prefix);
    const campaign = (await campaigns.open({ id: 'midway', perUser: 2, satellites: ['sat-m'], createdAt: Date.now() })).campaign;
    const users = Array.from({ length: 200 }, (_, i) => `m${i}`);
    // a revoke's sweep half-way: the first half of the shards marked, the batch about to be made on all
    const marked = (u: string) => placeOfOwner('sat-m', u).shard < SHARDS / 2;
    expect(users.some(marked) && !users.every(marked)).toBe(true);
    await Promise.all(Array.from({ length: SHARDS / 2 }, (_, s) => fx.redis.hset(fx.store.keys.dict(s), 'x\tmidway', String(Date.now()))));
    const sat = await satellite(async () => ({ userIds: users, nextCursor: null }));
    let report;
    try {
      [report] = await runCampaign(
        { engine: fx.engine, campaigns, campaign, existed: false, dryRun: false, pageSize: 200, deliverBatch: 100, timeoutMs: 5000, attempts: 1 },
        [{ id: 'sat-m', url: sat.url }],
      );
    } finally {
      await sat.close();
    }
    // the revoke finishing its sweep counts what it revoked: the run's engine call had revoked its own already
    expect(await fx.engine.revokeCampaign('midway')).toBe(0);
    const made = 2 * users.filter((u) => !marked(u)).length;
    expect(sat.pushed).toEqual([]);
    expect((await fx.engine.stats()).satellites['sat-m']).toMatchObject({ generated: made, unredeemed: 0, revoked: made });
    expect(report).toMatchObject({ status: 'revoked', usersServed: 0, tokensMade: made, tokensDelivered: 0 });
    const shown = await runCli(['campaigns', 'show', 'midway', '--json'], { KEY_PREFIX: fx.prefix });
    expect(JSON.parse(shown.stdout).progress['sat-m']).toMatchObject({ status: 'revoked', usersServed: 0, tokensMade: made });
  });

  it('the CLI shows the campaign revoked and refuses to resume it', async () => {
    const env = { KEY_PREFIX: fx.prefix };
    // a dry run fails as the real run does (it said it would make tokens the real run refuses to)
    for (const dry of [['--dry-run'], []]) {
      const resumed = await runCli(['generate', '--resume', 'race', ...dry], env);
      expect(resumed.code).toBe(1);
      expect(resumed.stderr).toMatch(/campaign "race" was revoked at .*: it makes and delivers no more tokens/);
    }
    const shown = await runCli(['campaigns', 'show', 'race'], env);
    expect(shown.stdout).toMatch(/campaign race: .*, revoked at \d{4}-/);
    expect(shown.stdout).toMatch(/sat-r .* revoked /);
  });

  // a campaign id only the admin route used has no record: list and show knew nothing of its revocation
  it('campaigns revoked lists every revoked id, also one generate never ran, which show names as such', async () => {
    const env = { KEY_PREFIX: fx.prefix };
    await fx.engine.revokeCampaign('adm-only');
    const listed = await runCli(['campaigns', 'revoked', '--json'], env);
    expect(listed.code, listed.stderr).toBe(0);
    const rows = JSON.parse(listed.stdout) as { id: string; revokedAt: number; ranByGenerate: boolean }[];
    expect(rows.find((r) => r.id === 'adm-only')).toEqual({ id: 'adm-only', revokedAt: expect.any(Number), ranByGenerate: false });
    expect(rows.find((r) => r.id === 'race')).toMatchObject({ ranByGenerate: true });
    expect((await runCli(['campaigns', 'revoked'], env)).stdout).toMatch(/^adm-only +\d{4}-\S+ +no$/m);
    const shown = await runCli(['campaigns', 'show', 'adm-only'], env);
    expect(shown.code).toBe(1);
    expect(shown.stderr).toMatch(/campaign "adm-only" was never run by generate .*; revoked at \d{4}-/);
  });
});

describe('the revocation survives a restore from Postgres', () => {
  const snap = snapshotFixture('crevpg');

  it('restore brings back the campaign as revoked and the engine still refuses it', async () => {
    const campaigns = new CampaignStore(snap.fx.redis, snap.fx.prefix);
    await campaigns.open({ id: 'old', perUser: 2, satellites: ['s2'], createdAt: Date.now() });
    await snap.fx.engine.generate({ owners: owners('s2', usersOf(0)), perUser: 2, campaignId: 'old' });
    await snap.fx.engine.revokeCampaign('old');
    const revokedAt = (await campaigns.revokedAt('old'))!;
    expect(revokedAt).toEqual(expect.any(Number));
    // the registry alone holds the time: the record does not repeat it
    expect(await snap.fx.redis.hget(`${snap.fx.prefix}:{camp:old}:meta`, 'revokedAt')).toBeNull();

    const w = await startSnapshotWriter(loadConfig({ keyPrefix: snap.fx.prefix, databaseUrl: snap.db.url }), { log: () => {} });
    try {
      await caughtUp(snap.fx.redis, snap.fx.prefix, snap.pool, 40);
      for (const end = Date.now() + 15_000; ; await sleep(100)) {
        const r = await snap.pool.query("SELECT (SELECT revoked_at FROM revoked_campaigns WHERE id = 'old') AS at, (SELECT count(*) FROM campaigns WHERE id = 'old') AS n");
        if (Number(r.rows[0].at) === revokedAt && Number(r.rows[0].n) === 1) break;
        if (Date.now() > end) throw new Error(`rows: ${JSON.stringify(r.rows)}`);
      }
    } finally {
      await w.stop();
    }

    await dropPrefix(snap.fx.redis, snap.fx.prefix);
    await restoreFromPostgres(snap.fx.redis, snap.pool, snap.fx.prefix);
    await restoreRevoked(snap.fx.redis, snap.pool, snap.fx.prefix);
    await restoreCampaigns(snap.fx.redis, snap.pool, snap.fx.prefix);
    expect((await campaigns.get('old'))?.revokedAt).toBe(revokedAt);
    await expect(snap.fx.engine.generate({ owners: owners('s2', usersOf(1)), perUser: 2, campaignId: 'old' })).rejects.toMatchObject({ code: 'campaign_revoked' });
    expect((await verify(snap.fx.redis, snap.pool, snap.fx.prefix)).listed).toEqual([]);
  });

  it('a campaign id only the admin route used stays revoked after Redis is rebuilt from Postgres', async () => {
    await new SatelliteRegistry(snap.fx.redis, snap.fx.prefix).add({ id: 's3' });
    const server = await serve({ KEY_PREFIX: snap.fx.prefix });
    const http = new Pool(server.url, { connections: 2 });
    const admin = (path: string, body: unknown) => call(http, 'POST', path, { key: ADMIN_KEY, body });
    const users = Array.from({ length: 40 }, (_, i) => `adm-${i}`);
    try {
      const made = await admin('/v1/admin/tokens/generate', { satelliteId: 's3', userIds: users.slice(0, 20), perUser: 2, campaignId: 'adm' });
      expect(made.status).toBe(200);
      expect((await admin('/v1/admin/tokens/revoke', { campaignId: 'adm' })).body).toEqual({ revoked: 40 });
      // no campaign record: the revocation lives in the engine alone
      expect(await new CampaignStore(snap.fx.redis, snap.fx.prefix).meta('adm')).toBeUndefined();

      // the writer has caught up once Postgres agrees with Redis
      const w = await startSnapshotWriter(loadConfig({ keyPrefix: snap.fx.prefix, databaseUrl: snap.db.url }), { log: () => {} });
      try {
        for (const end = Date.now() + 30_000; ; await sleep(200)) {
          const r = await verify(snap.fx.redis, snap.pool, snap.fx.prefix, { maxListed: 5 });
          if (r.differences === 0 && r.tokens > 0) break;
          if (Date.now() > end) throw new Error(`writer not caught up: ${JSON.stringify(r.listed)}`);
        }
      } finally {
        await w.stop();
      }

      await dropPrefix(snap.fx.redis, snap.fx.prefix);
      const env = { KEY_PREFIX: snap.fx.prefix, DATABASE_URL: snap.db.url };
      const restored = await runCli(['restore', '--from-postgres'], env);
      expect(restored.code, restored.stderr).toBe(0);
      // 20 users over many shards, most of which have no token of the campaign: each refuses it
      const again = await admin('/v1/admin/tokens/generate', { satelliteId: 's3', userIds: users.slice(20), perUser: 2, campaignId: 'adm' });
      expect([again.status, again.body.error]).toEqual([410, 'campaign_revoked']);
      const verified = await runCli(['verify'], env);
      expect(verified.code, verified.stdout).toBe(0);
      expect(verified.stdout).toMatch(/ 0 differences/);
    } finally {
      await http.close();
      await server.stop();
    }
  });

  // a newer writer's first copy of that campaign rewrote the row's meta without revokedAt, and restore then
  // made the campaign usable again (a review helper upgraded a schema-3 snapshot)
  it('a snapshot whose revocation is only in the campaign row (written when the record repeated the registry) keeps it through the upgrade and a newer writer\'s copy, and restores it revoked', async () => {
    const campaigns = new CampaignStore(snap.fx.redis, snap.fx.prefix);
    // the last test here, as it restores into an emptied prefix. What an older writer left: the campaign
    // row's meta carries revokedAt, revoked_campaigns has no row, and later migrations have not run
    await snap.pool.query(
      `INSERT INTO campaigns (id, meta, progress) VALUES ('older', $1, '{}')`,
      [JSON.stringify({ perUser: 1, satellites: ['s4'], createdAt: 1_700_000_000_000, revokedAt: 1_700_000_000_500 })],
    );
    await snap.pool.query('DELETE FROM schema_migrations WHERE version >= 7');
    // the upgrade: a newer process opens the snapshot, then its writer copies the campaign's record
    await (await openPostgres(snap.db.url)).end();
    await snap.pool.query(`UPDATE campaigns SET meta = meta - 'revokedAt' WHERE id = 'older'`);
    await dropPrefix(snap.fx.redis, snap.fx.prefix);
    await restoreRevoked(snap.fx.redis, snap.pool, snap.fx.prefix);
    await restoreCampaigns(snap.fx.redis, snap.pool, snap.fx.prefix);
    expect((await campaigns.get('older'))?.revokedAt).toBe(1_700_000_000_500);
    expect(await snap.fx.redis.hget(`${snap.fx.prefix}:{camp:older}:meta`, 'revokedAt')).toBeNull();
    await expect(snap.fx.engine.generate({ owners: owners('s4', usersOf(1)), perUser: 1, campaignId: 'older' })).rejects.toMatchObject({ code: 'campaign_revoked' });
    expect(await revocationGaps(snap.fx.redis, snap.fx.prefix)).toEqual({ unmarked: new Map(), unregistered: new Map() });
  });
});
