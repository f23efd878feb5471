import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { loadConfig } from '../src/config.js';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { openPostgres, restoreFromPostgres, restoreSatellites, startSnapshotWriter, verify, type SnapshotWriter } from '../src/snapshot/index.js';
import { runCli } from './helpers/cli.js';
import { testDatabase } from './helpers/pg.js';
import { dropPrefix, engineFixture, testPrefix, type EngineFixture } from './helpers/redis.js';
import { caughtUp, firstRoundDone, sleep } from './helpers/snapshot.js';

type SatRow = { id: string; fields: Record<string, string>; api_keys: Record<string, string> };

describe('satellites reach Postgres and come back with restore (real Redis, real Postgres)', () => {
  let fx: EngineFixture;
  let db: Awaited<ReturnType<typeof testDatabase>>;
  let pool: pg.Pool;
  const writers: SnapshotWriter[] = [];
  const restored = testPrefix('satr');
  const emptied = testPrefix('sate');
  const updated = testPrefix('satu');
  const rebuilt = testPrefix('satb');
  const retired = testPrefix('satx');

  const rows = async () => (await pool.query<SatRow>('SELECT id, fields, api_keys FROM satellites ORDER BY id')).rows;
  async function rowsUntil(ok: (r: SatRow[]) => boolean): Promise<SatRow[]> {
    const end = Date.now() + 15_000;
    for (;;) {
      const r = await rows();
      if (ok(r)) return r;
      if (Date.now() > end) throw new Error(`satellites in Postgres: ${JSON.stringify(r)}`);
      await sleep(100);
    }
  }
  const writer = async (prefix: string) => {
    const w = await startSnapshotWriter(loadConfig({ keyPrefix: prefix, databaseUrl: db.url }), { log: () => {} });
    writers.push(w);
    return w;
  };

  beforeAll(async () => {
    fx = await engineFixture({ label: 'sats' });
    db = await testDatabase();
    pool = await openPostgres(db.url);
  });

  afterAll(async () => {
    for (const w of writers) await w.stop();
    await pool?.end();
    if (fx) for (const p of [restored, emptied, updated, rebuilt, retired]) await dropPrefix(fx.redis, p);
    await fx?.close();
    await db?.drop();
  });

  it('added, rotated, updated and removed satellites are copied; restore brings back working keys; verify compares them', async () => {
    const reg = new SatelliteRegistry(fx.redis, fx.prefix);
    const w = await writer(fx.prefix);
    const a = await reg.add({ id: 'sat-a', name: 'US1', url: 'https://us1.example', outboundKey: 'secret-out' });
    const b = await reg.add({ id: 'sat-b' });
    const a2 = await reg.rotateKey('sat-a', 3_600_000);
    await reg.remove('sat-b');
    await reg.update('sat-a', { url: 'https://us1-new.example', name: null });
    const made = await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'alice' }], perUser: 2, campaignId: 'c' });
    await caughtUp(fx.redis, fx.prefix, pool, 2);

    const copied = await rowsUntil((r) => r.length === 1 && Object.keys(r[0]!.api_keys).length === 2);
    expect(copied[0]).toMatchObject({ id: 'sat-a', fields: { url: 'https://us1-new.example', outboundKey: 'secret-out' } });
    expect(copied[0]!.fields.name).toBeUndefined(); // cleared by the update
    expect(await verify(fx.redis, pool, fx.prefix)).toMatchObject({ tokens: 2, satellites: 1, differences: 0 });
    await w.stop();

    // Redis lost: rebuilt from Postgres alone, both of sat-a's keys work (the old one in its grace), sat-b's does not
    expect(await restoreFromPostgres(fx.redis, pool, restored)).toBe(2);
    expect(await restoreSatellites(fx.redis, pool, restored)).toEqual({ restored: 1, kept: 0 });
    const back = new SatelliteRegistry(fx.redis, restored);
    expect((await back.keyHolder(a2.apiKey))?.id).toBe('sat-a');
    expect((await back.keyHolder(a.apiKey))?.id).toBe('sat-a');
    expect((await back.keyHolder(b.apiKey))?.id).toBeUndefined();
    expect(await back.get('sat-a')).toEqual(await reg.get('sat-a'));
    expect(await verify(fx.redis, pool, restored)).toMatchObject({ tokens: 2, satellites: 1, differences: 0 });
    // a satellite registered since the snapshot is newer than it: kept
    expect(await restoreSatellites(fx.redis, pool, restored)).toEqual({ restored: 0, kept: 1 });

    // verify sees a satellite that differs, and does not print the outbound key
    await reg.rotateKey('sat-a', 0);
    const report = await verify(fx.redis, pool, fx.prefix);
    expect(report.listed).toEqual([expect.objectContaining({ token: `${fx.prefix}:{sat}:s:sat-a`, kind: 'differs' })]);
    expect(report.listed[0]!.fields!.map((f) => f.field).sort()).toEqual(['apiKeys', 'keyHash', 'prevKeyHash']);
    expect(JSON.stringify(report)).not.toContain('secret-out');
    expect(made.tokens).toHaveLength(2);
  });

  it('a writer on an emptied Redis keeps the satellites in Postgres; a removed one is deleted, one added again is copied', async () => {
    const before = await rows();
    expect(before.map((r) => r.id)).toEqual(['sat-a']);
    const w = await writer(emptied);
    await firstRoundDone(fx.redis, emptied);
    expect(await rows()).toEqual(before);
    const listed = (await verify(fx.redis, pool, emptied)).listed.filter((d) => d.token.includes('{sat}'));
    expect(listed).toEqual([{ token: `${emptied}:{sat}:s:sat-a`, kind: 'only_postgres' }]);

    const reg = new SatelliteRegistry(fx.redis, emptied);
    await reg.add({ id: 'sat-a', name: 'US1 again' });
    await rowsUntil((r) => r[0]?.fields.name === 'US1 again');
    await reg.remove('sat-a');
    await rowsUntil((r) => r.length === 0);
    await reg.add({ id: 'sat-a' });
    const r = await rowsUntil((x) => x.length === 1);
    expect(r[0]!.fields.name).toBeUndefined();
    await w.stop();
  });

  it('an update made after the satellite reached Postgres is copied too, and restore brings the new fields back', async () => {
    const reg = new SatelliteRegistry(fx.redis, updated);
    const w = await writer(updated);
    const { apiKey } = await reg.add({ id: 'sat-u', name: 'Before', url: 'https://before.example' });
    await rowsUntil((r) => r.some((x) => x.id === 'sat-u' && x.fields.url === 'https://before.example'));
    // the copy must see a change of fields alone: no key, id or removal changed
    await reg.update('sat-u', { url: 'https://after.example', name: null, outboundKey: 'out-u' });
    const r = await rowsUntil((x) => x.some((y) => y.id === 'sat-u' && y.fields.url === 'https://after.example'));
    const row = r.find((x) => x.id === 'sat-u')!;
    expect(row.fields.name).toBeUndefined();
    expect(row.fields.outboundKey).toBe('out-u');
    await w.stop();

    expect(await restoreSatellites(fx.redis, pool, rebuilt)).toMatchObject({ kept: 0 });
    const back = new SatelliteRegistry(fx.redis, rebuilt);
    expect(await back.get('sat-u')).toEqual({ id: 'sat-u', url: 'https://after.example', outboundKey: 'out-u', createdAt: (await reg.get('sat-u'))!.createdAt });
    expect((await back.keyHolder(apiKey))?.id).toBe('sat-u');
  });

  // a satellite removed (say its key leaked) before the writer copied the removal came back, key and all,
  // with `restore --force` on a Redis whose registry survived (a Cluster master lost, the {sat} one kept)
  it('restore --force leaves a satellite removed in Redis removed, though Postgres still holds it', async () => {
    const reg = new SatelliteRegistry(fx.redis, retired);
    const w = await writer(retired);
    const { apiKey } = await reg.add({ id: 'sat-x' });
    await rowsUntil((r) => r.some((x) => x.id === 'sat-x'));
    await w.stop();
    await reg.remove('sat-x');
    expect((await reg.keyHolder(apiKey))?.id).toBeUndefined();

    const r = await runCli(['restore', '--from-postgres', '--force'], { KEY_PREFIX: retired, DATABASE_URL: db.url });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(await reg.get('sat-x')).toBeUndefined();
    expect((await reg.keyHolder(apiKey))?.id).toBeUndefined();
    // the satellites of the snapshot Redis lacks came back; the removal is the writer's to copy
    expect(await reg.get('sat-u')).toBeDefined();
    expect((await verify(fx.redis, pool, retired)).listed.filter((d) => d.token.includes('{sat}'))).toEqual([{ token: `${retired}:{sat}:s:sat-x`, kind: 'only_postgres' }]);
    const w2 = await writer(retired);
    await rowsUntil((x) => !x.some((y) => y.id === 'sat-x'));
    await w2.stop();
  });
});
