import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { loadConfig } from '../src/config.js';
import { openPostgres, restoreFromPostgres, startSnapshotWriter, verify } from '../src/snapshot/index.js';
import { placeOfToken } from '../src/store/keys.js';
import { hexOf } from '../src/store/codec.js';
import { testDatabase } from './helpers/pg.js';
import { dropPrefix, engineFixture, testPrefix, type EngineFixture } from './helpers/redis.js';
import { caughtUp } from './helpers/snapshot.js';

describe('verify compares the stats counters too (real Redis, real Postgres)', () => {
  let fx: EngineFixture;
  let db: Awaited<ReturnType<typeof testDatabase>>;
  let pool: pg.Pool;
  const twice = testPrefix('twice');

  beforeAll(async () => {
    fx = await engineFixture({ label: 'verc' });
    db = await testDatabase();
    pool = await openPostgres(db.url);
  });

  afterAll(async () => {
    await pool?.end();
    await dropPrefix(fx.redis, twice);
    await fx?.close();
    await db?.drop();
  });

  it('counters that disagree with the tokens (restored twice into one prefix) are listed as stats differences', async () => {
    const writer = await startSnapshotWriter(loadConfig({ keyPrefix: fx.prefix, databaseUrl: db.url }), { log: () => {} });
    const made = await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'alice' }], perUser: 3, campaignId: 'c' });
    const [t0, t1] = made.tokens.map((t) => t.token);
    expect((await fx.engine.redeem(t0!, 'sat-b', 'bob')).code).toBe('ok');
    expect((await fx.engine.reserve(t1!, 'sat-b', 60_000)).code).toBe('ok');
    await caughtUp(fx.redis, fx.prefix, pool, 5);
    await writer.stop();
    expect(await verify(fx.redis, pool, fx.prefix)).toMatchObject({ tokens: 3, differences: 0 });

    // counters off from the tokens: restoreFromPostgres run twice into one prefix (only the CLI's emptiness
    // check prevents it) rewrites every token field to the same value but doubles every counter, so
    // `stats` reports 6 generated; verify used to find 0 differences
    await restoreFromPostgres(fx.redis, pool, twice);
    await restoreFromPostgres(fx.redis, pool, twice);
    const stats = `${twice}:{${placeOfToken(hexOf(t0!)).shard}}:stats`;
    const report = await verify(fx.redis, pool, twice);
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
