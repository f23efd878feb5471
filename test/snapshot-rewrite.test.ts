import { describe, expect, it } from 'vitest';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { CampaignStore } from '../src/store/campaign-store.js';
import { CampaignCopy } from '../src/snapshot/campaigns.js';
import { RevocationCopy } from '../src/snapshot/revoked.js';
import { SatelliteCopy } from '../src/snapshot/satellites.js';
import type { PeriodicCopy } from '../src/snapshot/copy.js';
import { snapshotFixture } from './helpers/snapshot.js';

/**
 * The writer copies satellites, revoked campaigns and campaign records to Postgres in full once a minute (and
 * when it takes the lease). Rows that did not change must stay as they are: each rewrite of an unchanged row
 * was a new row version, so an idle deployment left one dead tuple (and its WAL) per row every minute.
 */
describe('the periodic copies leave unchanged rows alone (real Redis, real Postgres)', () => {
  const snap = snapshotFixture('rewrite');
  const tables = ['satellites', 'revoked_campaigns', 'campaigns'] as const;

  /** A fresh copy of each kind, as a writer that just took the lease makes: its first round writes everything. */
  const copies = (): PeriodicCopy<unknown>[] => [new SatelliteCopy(snap.fx.redis, snap.fx.prefix), new RevocationCopy(snap.fx.redis, snap.fx.prefix), new CampaignCopy(snap.fx.redis, snap.fx.prefix)];
  async function copyAll(): Promise<void> {
    for (const c of copies()) {
      expect(await c.due()).toBe(true);
      await c.write(snap.pool);
    }
  }
  /** every row's version (xmin): a rewrite makes a new one */
  const versions = async () => Object.fromEntries(await Promise.all(tables.map(async (t) => [t, (await snap.pool.query(`SELECT id, xmin::text AS v FROM ${t} ORDER BY id`)).rows] as const)));

  it('writes no new row version for a row that did not change, and still mends one that differs', async () => {
    const registry = new SatelliteRegistry(snap.fx.redis, snap.fx.prefix);
    for (const id of ['us1', 'eu1', 'ap1']) await registry.add({ id, url: `https://${id}.example.net` });
    for (const id of ['spring', 'summer']) await snap.fx.engine.generate({ owners: [{ ownerSatelliteId: 'us1', ownerUserId: 'alice' }], perUser: 1, campaignId: id });
    for (const id of ['spring', 'summer']) await snap.fx.store.revokeCampaign(id);
    await new CampaignStore(snap.fx.redis, snap.fx.prefix).open({ id: 'autumn', perUser: 3, satellites: ['us1', 'eu1'], createdAt: 1000, expiresAt: 9e12 });

    await copyAll();
    const before = await versions();
    expect(before.satellites).toHaveLength(3);
    expect(before.revoked_campaigns).toHaveLength(2);
    expect(before.campaigns).toHaveLength(1);

    await copyAll();
    await copyAll();
    expect(await versions()).toEqual(before);

    // what the full copy is for: a row an overlapping ex-holder of the lease wrote late is set right
    await snap.pool.query("UPDATE revoked_campaigns SET revoked_at = 1 WHERE id = 'spring'");
    await snap.pool.query(`UPDATE satellites SET fields = fields || '{"url":"https://stale.example.net"}' WHERE id = 'eu1'`);
    await snap.pool.query(`UPDATE campaigns SET meta = meta || '{"perUser":9}' WHERE id = 'autumn'`);
    await copyAll();
    const mended = await snap.pool.query<{ at: string; url: string; per: number }>(
      `SELECT (SELECT revoked_at::text FROM revoked_campaigns WHERE id = 'spring') AS at,
              (SELECT fields->>'url' FROM satellites WHERE id = 'eu1') AS url,
              (SELECT (meta->>'perUser')::int FROM campaigns WHERE id = 'autumn') AS per`,
    );
    expect(mended.rows[0]!.at).not.toBe('1');
    expect(mended.rows[0]!.url).toBe('https://eu1.example.net');
    expect(mended.rows[0]!.per).toBe(3);
  });
});
