import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { restoreFromPostgres, startSnapshotWriter, verify } from '../src/snapshot/index.js';
import { placeOfToken } from '../src/store/keys.js';
import { hexOf } from '../src/store/codec.js';
import { caughtUp, snapshotFixture } from './helpers/snapshot.js';

describe('verify compares the stats counters too (real Redis, real Postgres)', () => {
  const snap = snapshotFixture('verc');

  it('counters that disagree with the tokens (restored twice into one prefix) are listed as stats differences', async () => {
    snap.writer = await startSnapshotWriter(loadConfig({ keyPrefix: snap.fx.prefix, databaseUrl: snap.db.url }), { log: () => {} });
    const made = await snap.fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'alice' }], perUser: 3, campaignId: 'c' });
    const [t0, t1] = made.tokens.map((t) => t.token);
    expect((await snap.fx.engine.redeem(t0!, 'sat-b', 'bob')).code).toBe('ok');
    expect((await snap.fx.engine.reserve(t1!, 'sat-b', 60_000)).code).toBe('ok');
    await caughtUp(snap.fx.redis, snap.fx.prefix, snap.pool, 5);
    await snap.writer.stop();
    snap.writer = undefined;
    expect(await verify(snap.fx.redis, snap.pool, snap.fx.prefix)).toMatchObject({ tokens: 3, differences: 0 });

    // counters off from the tokens: restoreFromPostgres run twice into one prefix (only the CLI's emptiness
    // check prevents it) rewrites every token field to the same value but doubles every counter, so
    // `stats` reports 6 generated; verify used to find 0 differences
    await restoreFromPostgres(snap.fx.redis, snap.pool, snap.other);
    await restoreFromPostgres(snap.fx.redis, snap.pool, snap.other);
    const stats = `${snap.other}:{${placeOfToken(hexOf(t0!)).shard}}:stats`;
    const report = await verify(snap.fx.redis, snap.pool, snap.other);
    expect(report.differences).toBe(1);
    expect(report.listed).toEqual([
      {
        token: stats,
        kind: 'stats',
        fields: [
          { field: 'sat-a\tgenerated', redis: '6', postgres: '3' },
          { field: 'sat-a\tredeemed', redis: '2', postgres: '1' },
          { field: 'sat-a\treserved', redis: '2', postgres: '1' },
          { field: 'sat-a\tunredeemed', redis: '2', postgres: '1' },
          { field: 'x\tsat-a\tsat-b', redis: '2', postgres: '1' },
        ],
      },
    ]);
  }, 60_000);
});
