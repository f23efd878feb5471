import { describe, expect, it } from 'vitest';
import { caughtUp, each, sleep, snapshotFixture } from './helpers/snapshot.js';
import { runCli } from './helpers/cli.js';
import { restoreFromPostgres, startSnapshotWriter, verify } from '../src/snapshot/index.js';
import { TokenStore } from '../src/store/token-store.js';
import { TokenEngine } from '../src/tokens/engine.js';
import { loadConfig } from '../src/config.js';
import { NO_REPLICA_WAIT } from '../src/store/replicas.js';

describe('purge and the snapshot (real Redis, real Postgres)', () => {
  const snap = snapshotFixture('purge');

  it('purged tokens keep their last row in Postgres, marked purged; verify agrees; restore leaves them out and keeps the counters', async () => {
    snap.writer = await startSnapshotWriter(loadConfig({ keyPrefix: snap.fx.prefix, databaseUrl: snap.db.url }), { log: () => {} });
    // long enough for the changes below to land before it on a loaded machine
    const soon = Date.now() + 2000;
    const owners = (sat: string) => Array.from({ length: 100 }, (_, i) => ({ ownerSatelliteId: sat, ownerUserId: `u${i}` }));
    const a = (await snap.fx.engine.generate({ owners: owners('sat-a'), perUser: 3, campaignId: 'old' })).tokens.map((t) => t.token);
    const b = (await snap.fx.engine.generate({ owners: owners('sat-b'), perUser: 2, campaignId: 'short', expiresAt: soon })).tokens.map((t) => t.token);
    await each(a.slice(0, 120), 8, async (t) => expect((await snap.fx.engine.revokeToken(t)).code).toBe('ok'));
    await each(a.slice(120, 180), 8, async (t, i) => expect((await snap.fx.engine.redeem(t, 'sat-b', `new${i}`)).code).toBe('ok'));
    await each(b.slice(0, 50), 8, async (t, i) => expect((await snap.fx.engine.redeem(t, 'sat-a', `joined${i}`)).code).toBe('ok'));
    await sleep(Math.max(0, soon + 30 - Date.now()));

    const counted = await snap.fx.engine.stats();
    const dry = await runCli(['tokens', 'purge', '--older-than', '0s', '--dry-run'], { KEY_PREFIX: snap.fx.prefix });
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toMatch(/^would purge 270 revoked or expired tokens made before \S+ \(dry run: nothing changed\)\n$/);
    expect(await snap.fx.engine.stats()).toEqual(counted);
    expect(await snap.fx.engine.lookup(a[0]!)).toMatchObject({ state: 'revoked' });
    const run = await runCli(['tokens', 'purge', '--older-than', '0s', '--json'], { KEY_PREFIX: snap.fx.prefix });
    expect(run.code, run.stderr).toBe(0);
    // a's 120 revoked tokens, and b's 150 that expired unredeemed
    expect(JSON.parse(run.stdout)).toEqual({ purged: 270 });
    await caughtUp(snap.fx.redis, snap.fx.prefix, snap.pool, 300 + 200 + 120 + 60 + 50 + 270);

    const rows = (await snap.pool.query<{ campaign_id: string; state: string; purged: boolean; n: number }>(
      'SELECT campaign_id, state, purged_at IS NOT NULL AS purged, count(*)::int AS n FROM tokens GROUP BY 1, 2, 3 ORDER BY 1, 2, 3',
    )).rows;
    expect(rows).toEqual([
      { campaign_id: 'old', state: 'redeemed', purged: false, n: 60 },
      { campaign_id: 'old', state: 'revoked', purged: true, n: 120 },
      { campaign_id: 'old', state: 'unredeemed', purged: false, n: 120 },
      { campaign_id: 'short', state: 'redeemed', purged: false, n: 50 },
      { campaign_id: 'short', state: 'unredeemed', purged: true, n: 150 },
    ]);
    const stats = await snap.fx.engine.stats();
    expect(stats.satellites).toEqual({
      'sat-a': { generated: 300, unredeemed: 120, reserved: 0, redeemed: 60, revoked: 0, purged: 120 },
      'sat-b': { generated: 200, unredeemed: 0, reserved: 0, redeemed: 50, revoked: 0, purged: 150 },
    });
    const report = await verify(snap.fx.redis, snap.pool, snap.fx.prefix);
    expect(report.listed).toEqual([]);
    expect(report).toMatchObject({ tokens: 230, differences: 0 });

    expect(await restoreFromPostgres(snap.fx.redis, snap.pool, snap.other)).toBe(230);
    const restored = new TokenEngine(new TokenStore(snap.fx.redis, snap.other, NO_REPLICA_WAIT));
    expect(await restored.stats()).toEqual(stats);
    expect(await restored.lookup(a[0]!)).toBeUndefined();
    expect(await restored.lookup(b[199]!)).toBeUndefined();
    expect(await restored.lookup(a[299]!)).toEqual(await snap.fx.engine.lookup(a[299]!));
    expect((await verify(snap.fx.redis, snap.pool, snap.other)).differences).toBe(0);

    // a row marked purged whose token Redis still holds is a difference, and so are the counters it moves
    await snap.pool.query('UPDATE tokens SET purged_at = 1 WHERE token = $1', [a[299]]);
    const marked = await verify(snap.fx.redis, snap.pool, snap.other);
    expect(marked.listed).toEqual([
      { token: a[299], kind: 'differs', fields: [{ field: 'purged', redis: 'no', postgres: 'yes' }] },
      { token: expect.stringMatching(/:stats$/), kind: 'stats', fields: expect.arrayContaining([expect.objectContaining({ field: 'sat-a\tpurged' })]) },
    ]);
  }, 120_000);
});
