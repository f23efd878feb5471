import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { CampaignStore } from '../src/store/campaign-store.js';
import { loadConfig } from '../src/config.js';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { SatelliteKeys } from '../src/store/satellites.js';
import { startSatelliteSim, type SatelliteSim } from '../src/sim/index.js';
import { openPostgres, restoreCampaigns, startSnapshotWriter, verify, type SnapshotWriter } from '../src/snapshot/index.js';
import { freePort } from '../src/free-port.js';
import { runCli } from './helpers/cli.js';
import { testDatabase } from './helpers/pg.js';
import { dropPrefix, engineFixture, testPrefix, type EngineFixture } from './helpers/redis.js';
import { caughtUp, firstRoundDone, generateTokens, sleep } from './helpers/snapshot.js';

type CampRow = { id: string; meta: Record<string, unknown>; progress: Record<string, Record<string, unknown>> };

/**
 * generate's campaigns survive a Redis loss: the writer copies them to Postgres, restore brings them back
 * (made users from the tokens table), and `generate --resume` goes on without a second set for anyone.
 */
describe('campaigns reach Postgres and come back with restore (real Redis, real Postgres, reference satellites)', () => {
  let fx: EngineFixture;
  let db: Awaited<ReturnType<typeof testDatabase>>;
  let pool: pg.Pool;
  const sims: SatelliteSim[] = [];
  const writers: SnapshotWriter[] = [];
  const emptied = testPrefix('campe');
  let env: Record<string, string>;

  const rows = async () => (await pool.query<CampRow>('SELECT id, meta, progress FROM campaigns ORDER BY id')).rows;
  async function rowUntil(id: string, ok: (r: CampRow) => boolean): Promise<CampRow> {
    const end = Date.now() + 15_000;
    for (;;) {
      const r = (await rows()).find((x) => x.id === id);
      if (r && ok(r)) return r;
      if (Date.now() > end) throw new Error(`campaign ${id} in Postgres: ${JSON.stringify(r)}`);
      await sleep(100);
    }
  }
  const writer = async (prefix: string) => {
    const w = await startSnapshotWriter(loadConfig({ keyPrefix: prefix, databaseUrl: db.url }), { log: () => {} });
    writers.push(w);
    return w;
  };
  /** A reference satellite registered with its URL and outbound key (the writer copies the registry too). */
  const satellite = async (id: string, users: number) => {
    const outboundKey = `outbound-${id}-0123456789abcdef0123456789abcdef`;
    const sim = await startSatelliteSim({ id, users, outboundKey });
    sims.push(sim);
    await new SatelliteRegistry(fx.redis, fx.prefix).add({ id, url: sim.url, outboundKey });
    return sim;
  };
  const cli = async (args: string[]) => {
    const r = await runCli(args, env);
    expect(r.code, `${args.join(' ')}\n${r.stdout}\n${r.stderr}`).toBe(0);
    return r.stdout;
  };
  /** The writer stopped once Postgres holds every event (nothing copies Redis to Postgres any more). */
  const stopCaughtUp = async (w: SnapshotWriter) => {
    await caughtUp(fx.redis, fx.prefix, pool, 0);
    await w.stop();
  };
  /** Redis lost: every key of the prefix gone, then rebuilt from Postgres. */
  const loseAndRestore = async () => {
    await dropPrefix(fx.redis, fx.prefix);
    return cli(['restore', '--from-postgres']);
  };

  beforeAll(async () => {
    fx = await engineFixture({ label: 'camps' });
    db = await testDatabase();
    pool = await openPostgres(db.url);
    env = { KEY_PREFIX: fx.prefix, DATABASE_URL: db.url, SATELLITE_ATTEMPTS: '1' };
  });

  afterAll(async () => {
    for (const w of writers) await w.stop();
    for (const s of sims) await s.close();
    await pool?.end();
    if (fx) await dropPrefix(fx.redis, emptied);
    await fx?.close();
    await db?.drop();
  });

  it('a finished campaign is listed again with its counters, verify agrees, and --resume serves only new users', async () => {
    const sim = await satellite('sat-c', 200);
    const w = await writer(fx.prefix);
    await cli(['generate', '--satellite', 'sat-c', '--per-user', '2', '--campaign', 'spring']);
    const row = await rowUntil('spring', (r) => r.progress['sat-c']?.status === 'done' && r.progress['sat-c']?.tokensDelivered === 400);
    expect(row.meta).toEqual({ perUser: 2, satellites: ['sat-c'], createdAt: expect.any(Number) });
    expect(row.progress['sat-c']).toEqual({ usersListed: 200, usersServed: 200, tokensMade: 400, tokensDelivered: 400, usersRefused: 0, failures: 0, status: 'done' });

    // verify compares the campaign: one counter off is listed under the campaign's key (the writer is
    // stopped first, or its campaign copy could carry the change to Postgres before verify reads it)
    await stopCaughtUp(w);
    await fx.redis.hincrby(`${fx.prefix}:{camp:spring}:prog:sat-c`, 'failures', 1);
    expect((await verify(fx.redis, pool, fx.prefix)).listed).toEqual([
      { token: `${fx.prefix}:{camp:spring}:meta`, kind: 'differs', fields: [{ field: 'prog:sat-c.failures', redis: '1', postgres: '0' }] },
    ]);
    await fx.redis.hincrby(`${fx.prefix}:{camp:spring}:prog:sat-c`, 'failures', -1);

    expect(await loseAndRestore()).toMatch(/^restored 1 campaign$/m);
    const [listed] = JSON.parse(await cli(['campaigns', 'list', '--json']));
    expect(listed).toEqual({ id: 'spring', perUser: 2, satellites: ['sat-c'], createdAt: row.meta.createdAt, progress: { 'sat-c': row.progress['sat-c'] }, status: 'done' });
    expect(await cli(['campaigns', 'show', 'spring'])).toMatch(/sat-c +200 +200 +400 +400 +0 +0 +done/);
    const verified = await cli(['verify']);
    expect(verified).toContain('400 tokens in Redis, 0 differences');
    expect(verified).toContain('1 campaign in Redis');
    expect(await fx.redis.hlen(`${fx.prefix}:{camp:spring}:made:sat-c`)).toBe(200);
    expect(await fx.redis.scard(`${fx.prefix}:{camp:spring}:dlv:sat-c`)).toBe(200);

    // every served user used both tokens (redeemed: nothing left to adopt), and 5 users joined
    for (let t = sim.satellite.takeToken(), i = 0; t; t = sim.satellite.takeToken(), i++) {
      expect((await fx.engine.redeem(t.token, 'sat-c', `new-${i}`)).code).toBe('ok');
    }
    for (let i = 0; i < 5; i++) sim.satellite.join(`sat-c-z${i}`);
    const [report] = JSON.parse(await cli(['generate', '--resume', 'spring', '--json'])).satellites;
    expect(report).toMatchObject({ status: 'done', usersListed: 205, usersServed: 5, tokensMade: 10, tokensDelivered: 10 });
    expect((await fx.engine.stats()).satellites['sat-c']?.generated).toBe(410);
  });

  it('a campaign copied while running comes back failed; --resume sends what it made again and makes the rest once', async () => {
    const sim = await satellite('sat-k', 30);
    const w = await writer(fx.prefix);
    // what a generate killed part-way leaves: 10 of 30 users served, 5 of them delivered, the satellite running
    const store = new CampaignStore(fx.redis, fx.prefix);
    await store.open({ id: 'killed', perUser: 2, satellites: ['sat-k'], createdAt: Date.now() });
    await store.setStatus('killed', 'sat-k', 'running');
    const users = Array.from({ length: 10 }, (_, i) => `sat-k-u${String(i + 1).padStart(7, '0')}`);
    const made = await fx.engine.generate({ owners: users.map((ownerUserId) => ({ ownerSatelliteId: 'sat-k', ownerUserId })), perUser: 2, campaignId: 'killed' });
    const byUser = new Map(users.map((u) => [u, made.tokens.filter((t) => t.ownerUserId === u).map((t) => t.token)]));
    expect(await store.recordMade('killed', 'sat-k', byUser)).toEqual({ users: 10, tokens: 20 });
    await store.count('killed', 'sat-k', 'usersListed', 30);
    const sent = users.slice(0, 5);
    expect(sim.satellite.deliver(sent.flatMap((userId) => byUser.get(userId)!.map((token) => ({ userId, token }))))).toMatchObject({ ok: true });
    expect(await store.recordDelivered('killed', 'sat-k', new Map(sent.map((u) => [u, 2])))).toBe(10);
    await rowUntil('killed', (r) => r.progress['sat-k']?.status === 'running' && r.progress['sat-k']?.tokensDelivered === 10);

    await stopCaughtUp(w);
    expect(await loseAndRestore()).toContain('restored 2 campaigns');
    const shown = JSON.parse(await cli(['campaigns', 'show', 'killed', '--json']));
    expect(shown.status).toBe('failed'); // the overall status, as the table shows it
    expect(shown.progress['sat-k']).toEqual({
      usersListed: 30, usersServed: 10, tokensMade: 20, tokensDelivered: 0, usersRefused: 0, failures: 0, status: 'failed', lastError: expect.stringMatching(/restored .*generate --resume/),
    });
    expect(await cli(['campaigns', 'list'])).toMatch(/killed .* failed/);
    expect(await fx.redis.hlen(`${fx.prefix}:{camp:killed}:made:sat-k`)).toBe(10);
    expect(await fx.redis.scard(`${fx.prefix}:{camp:killed}:dlv:sat-k`)).toBe(0);
    expect(await cli(['verify'])).toContain(' 0 differences');

    const [report] = JSON.parse(await cli(['generate', '--resume', 'killed', '--json'])).satellites;
    expect(report).toMatchObject({ status: 'done', usersServed: 20, tokensMade: 40, tokensDelivered: 60 });
    const held = sim.satellite.holdings();
    expect(Object.values(held).map((t) => t.length)).toEqual(Array(30).fill(2));
    for (const u of users) expect(held[u]!.sort()).toEqual(byUser.get(u)!.sort());
    expect((await fx.engine.stats()).satellites['sat-k']?.generated).toBe(60);
    expect((await store.get('killed'))!.progress['sat-k']).toMatchObject({ usersServed: 30, tokensMade: 60, tokensDelivered: 60, status: 'done' });
  });

  it('a writer on an emptied Redis keeps the campaigns in Postgres', async () => {
    const before = await rows();
    expect(before.map((r) => r.id)).toEqual(['killed', 'spring']);
    const w = await writer(emptied);
    await firstRoundDone(fx.redis, emptied);
    expect(await rows()).toEqual(before);
    const listed = (await verify(fx.redis, pool, emptied, { maxListed: 10_000 })).listed.filter((d) => d.token.includes('{camp:'));
    expect(listed).toEqual([
      { token: `${emptied}:{camp:killed}:meta`, kind: 'only_postgres' },
      { token: `${emptied}:{camp:spring}:meta`, kind: 'only_postgres' },
    ]);
    await w.stop();
  });

  it('a row copied before a counter existed (usersRefused) restores it as 0, and verify agrees', async () => {
    const progress = { 'sat-o': { usersListed: 3, usersServed: 3, tokensMade: 3, tokensDelivered: 3, failures: 0, status: 'done' } };
    await pool.query('INSERT INTO campaigns (id, meta, progress) VALUES ($1, $2, $3)', ['older', JSON.stringify({ perUser: 1, satellites: ['sat-o'], createdAt: 1 }), JSON.stringify(progress)]);
    expect(await restoreCampaigns(fx.redis, pool, fx.prefix)).toMatchObject({ restored: 1 });
    expect((await new CampaignStore(fx.redis, fx.prefix).get('older'))?.progress['sat-o']).toEqual({ ...progress['sat-o'], usersRefused: 0 });
    expect((await verify(fx.redis, pool, fx.prefix)).listed.filter((d) => d.token.includes('{camp:older}'))).toEqual([]);
  });

  // a revoked campaign is never resumed: zeroing its delivered count (as for a resumable satellite) lost it for good
  it('a satellite whose run the campaign revoke stopped keeps its counters through a restore', async () => {
    const progress = { 'sat-v': { usersListed: 9, usersServed: 6, tokensMade: 12, tokensDelivered: 8, usersRefused: 1, failures: 0, status: 'revoked', lastError: 'campaign "stopped" was revoked' } };
    await pool.query('INSERT INTO campaigns (id, meta, progress) VALUES ($1, $2, $3)', ['stopped', JSON.stringify({ perUser: 2, satellites: ['sat-v'], createdAt: 1 }), JSON.stringify(progress)]);
    expect(await restoreCampaigns(fx.redis, pool, fx.prefix)).toMatchObject({ restored: 1 });
    expect((await new CampaignStore(fx.redis, fx.prefix).get('stopped'))?.progress['sat-v']).toEqual(progress['sat-v']);
    expect((await pool.query('SELECT progress FROM campaigns WHERE id = $1', ['stopped'])).rows[0].progress).toEqual(progress);
  });

  // a resume of an expired campaign refuses to run, so a delivered count zeroed by the restore stayed 0 for good
  it('the satellites of a campaign whose expiry has passed keep their counters through a restore', async () => {
    const progress = {
      'sat-e': { usersListed: 9, usersServed: 6, tokensMade: 6, tokensDelivered: 4, usersRefused: 0, failures: 0, status: 'expired', lastError: 'campaign "lapsed" expired' },
      'sat-f': { usersListed: 5, usersServed: 5, tokensMade: 5, tokensDelivered: 3, usersRefused: 0, failures: 1, status: 'failed', lastError: 'HTTP 503' },
    };
    const meta = { perUser: 1, expiresAt: Date.now() - 60_000, satellites: ['sat-e', 'sat-f'], createdAt: 1 };
    await pool.query('INSERT INTO campaigns (id, meta, progress) VALUES ($1, $2, $3)', ['lapsed', JSON.stringify(meta), JSON.stringify(progress)]);
    // a run lost with Redis after the expiry: no resume can go on with it, so it is not told to resume
    const running = { 'sat-g': { usersListed: 4, usersServed: 2, tokensMade: 2, tokensDelivered: 1, usersRefused: 0, failures: 0, status: 'running' } };
    await pool.query('INSERT INTO campaigns (id, meta, progress) VALUES ($1, $2, $3)', ['lapsed-running', JSON.stringify({ ...meta, satellites: ['sat-g'] }), JSON.stringify(running)]);
    expect(await restoreCampaigns(fx.redis, pool, fx.prefix)).toMatchObject({ restored: 2 });
    expect((await new CampaignStore(fx.redis, fx.prefix).get('lapsed'))?.progress).toEqual(progress);
    expect((await pool.query('SELECT progress FROM campaigns WHERE id = $1', ['lapsed'])).rows[0].progress).toEqual(progress);
    const expired = { 'sat-g': { ...running['sat-g'], status: 'expired', lastError: expect.stringContaining('start a new --campaign') } };
    expect((await new CampaignStore(fx.redis, fx.prefix).get('lapsed-running'))?.progress).toEqual(expired);
    expect((await pool.query('SELECT progress FROM campaigns WHERE id = $1', ['lapsed-running'])).rows[0].progress).toEqual(expired);
  });

  it('campaigns results: what became of the tokens, per owner satellite, from the snapshot', async () => {
    const sim = await satellite('sat-r', 10);
    const w = await writer(fx.prefix);
    await cli(['generate', '--satellite', 'sat-r', '--per-user', '2', '--campaign', 'results']);
    const shared = Array.from({ length: 8 }, () => sim.satellite.takeToken()!.token);
    for (const t of shared.slice(0, 3)) expect((await fx.engine.redeem(t, 'sat-r', `new-${t}`)).code).toBe('ok');
    for (const t of shared.slice(3, 5)) {
      const r = await fx.engine.reserve(t, 'sat-q', 60_000);
      expect((await fx.engine.complete(t, r.token!.reservationId!, `new-${t}`)).code).toBe('ok');
    }
    await fx.engine.reserve(shared[5]!, 'sat-q', 60_000);
    // a lease that lapses: unredeemed again
    await fx.engine.reserve(shared[6]!, 'sat-q', 50);
    await fx.engine.revokeToken(shared[7]!);
    // two more of the campaign that expire (through the engine: a campaign keeps the expiry it was made with)
    const expiresAt = Date.now() + 1500;
    await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-r', ownerUserId: 'late' }], perUser: 2, campaignId: 'results', expiresAt });
    await sleep(expiresAt + 50 - Date.now());
    await caughtUp(fx.redis, fx.prefix, pool, 0);

    const r = JSON.parse(await cli(['campaigns', 'results', 'results', '--json']));
    expect(r).toEqual({
      campaignId: 'results',
      satellites: { 'sat-r': { generated: 22, redeemed: 5, reserved: 1, unredeemed: 13, expired: 2, revoked: 1, purged: 0, redeemedOn: { 'sat-q': 2, 'sat-r': 3 } } },
      snapshotLag: { events: 0, seconds: 0 },
    });
    expect(await cli(['campaigns', 'results', 'results'])).toMatch(/^sat-r +22 +5 +22\.7% +13 +1 +2 +1 +0 +sat-q 2, sat-r 3$/m);
    // purged tokens (the revoked one and the two expired) are counted apart, as stats does, not as revoked
    await cli(['tokens', 'purge', '--older-than', '0s', '--campaign', 'results']);
    await caughtUp(fx.redis, fx.prefix, pool, 0);
    expect(JSON.parse(await cli(['campaigns', 'results', 'results', '--json'])).satellites['sat-r']).toMatchObject({ generated: 22, expired: 0, revoked: 0, purged: 3 });
    const none = await runCli(['campaigns', 'results', 'no-such-campaign'], env);
    expect([none.code, none.stderr]).toEqual([1, expect.stringContaining('no token of campaign "no-such-campaign" in the Postgres snapshot')]);
    await w.stop();
  });

  // a campaign that ran and made nothing (no satellite listed a user) failed here, exit 1, as a mistyped id does
  it('campaigns results: a campaign the snapshot knows that made no token answers all zero; an unknown id still fails', async () => {
    await satellite('sat-z', 0);
    const w = await writer(fx.prefix);
    await cli(['generate', '--satellite', 'sat-z', '--per-user', '2', '--campaign', 'made-none']);
    await rowUntil('made-none', (r) => r.progress['sat-z']?.status === 'done');
    const json = await runCli(['campaigns', 'results', 'made-none', '--json'], env);
    expect([json.code, json.stderr]).toEqual([0, '']);
    expect(JSON.parse(json.stdout)).toEqual({ campaignId: 'made-none', satellites: {}, snapshotLag: { events: 0, seconds: 0 } });
    const text = await runCli(['campaigns', 'results', 'made-none'], env);
    expect([text.code, text.stdout.split('\n').slice(1)]).toEqual([0, ['no token of this campaign in the snapshot', '']]);
    const none = await runCli(['campaigns', 'results', 'made-never'], env);
    expect([none.code, none.stderr]).toEqual([1, expect.stringContaining('no token of campaign "made-never" in the Postgres snapshot')]);
    await w.stop();
  });

  it('tokens history: a token and every change of it in order, from the snapshot, also once purged from Redis', async () => {
    const w = await writer(fx.prefix);
    const owners = [{ ownerSatelliteId: 'sat-h', ownerUserId: 'inviter' }];
    const [t, gone] = (await fx.engine.generate({ owners, perUser: 2, campaignId: 'hist' })).tokens.map((x) => x.token);
    const first = await fx.engine.reserve(t!, 'sat-q', 60_000);
    expect((await fx.engine.release(t!, first.token!.reservationId!)).code).toBe('ok');
    const second = await fx.engine.reserve(t!, 'sat-q', 60_000);
    expect((await fx.engine.complete(t!, second.token!.reservationId!, 'joiner')).code).toBe('ok');
    await fx.engine.revokeToken(gone!);
    expect(await fx.engine.purge(Date.now() + 1000, 'hist')).toBe(1);
    await caughtUp(fx.redis, fx.prefix, pool, 0);

    const h = JSON.parse(await cli(['tokens', 'history', t!, '--json']));
    expect(h.token).toMatchObject({ token: t, state: 'redeemed', ownerSatelliteId: 'sat-h', ownerUserId: 'inviter', campaignId: 'hist', redeemerSatelliteId: 'sat-q', redeemerUserId: 'joiner' });
    expect(h.events.map((e: { type: string }) => e.type)).toEqual(['generated', 'reserved', 'released', 'reserved', 'redeemed']);
    const at = h.events.map((e: { at: number }) => e.at);
    expect(at).toEqual([...at].sort((x: number, y: number) => x - y));
    expect(h.token.redeemedAt).toBe(at[4]);
    expect(h.snapshotLag).toEqual({ events: 0, seconds: 0 });
    const text = await cli(['tokens', 'history', t!]);
    expect(text).toMatch(/^redeemerUserId +joiner$/m);
    expect(text).toMatch(new RegExp(`^  ${new Date(at[2]).toISOString()}  released$`, 'm'));

    // purged: Redis no longer knows it, the snapshot still tells its story
    const shown = await runCli(['tokens', 'show', gone!], env);
    expect([shown.code, shown.stderr]).toEqual([1, expect.stringContaining(`not found in Redis; the Postgres snapshot keeps purged tokens: referral-manager tokens history ${gone}`)]);
    const purged = JSON.parse(await cli(['tokens', 'history', gone!, '--json']));
    expect(purged.token.state).toBe('revoked');
    expect(purged.purgedAt).toBeGreaterThan(0);
    expect(purged.events.map((e: { type: string }) => e.type)).toEqual(['generated', 'revoked', 'purged']);

    const unknown = await runCli(['tokens', 'history', '0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d'], env);
    expect([unknown.code, unknown.stderr]).toEqual([1, expect.stringContaining('is not in the Postgres snapshot (0 changes, 0.0 s behind Redis)')]);
    const malformed = await runCli(['tokens', 'history', 'not-a-token'], env);
    expect([malformed.code, malformed.stderr]).toEqual([2, expect.stringContaining('expected a lowercase UUIDv4')]);
    await w.stop();
  });

  // docs/snapshot.md: the history is there "without Redis"; the commands asked Redis how far the snapshot is
  // behind and, with Redis down, failed after 10 s instead of answering from Postgres
  it('tokens history and campaigns results answer from the snapshot with Redis out of reach, the lag unknown', async () => {
    const w = await writer(fx.prefix);
    const [t] = (await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-d', ownerUserId: 'inviter' }], perUser: 2, campaignId: 'redis-down' })).tokens.map((x) => x.token);
    expect((await fx.engine.redeem(t!, 'sat-q', 'joiner')).code).toBe('ok');
    await caughtUp(fx.redis, fx.prefix, pool, 0);
    await w.stop();
    const down = { ...env, REDIS_URL: `redis://127.0.0.1:${await freePort()}` };

    const h = await runCli(['tokens', 'history', t!, '--json'], down);
    expect([h.code, h.stderr]).toEqual([0, expect.stringMatching(/^note: cannot reach Redis .*how far the snapshot is behind Redis is unknown\n$/)]);
    expect(JSON.parse(h.stdout)).toMatchObject({ token: { token: t, state: 'redeemed', redeemerUserId: 'joiner' }, snapshotLag: null });
    const text = await runCli(['tokens', 'history', t!], down);
    expect([text.code, text.stdout.split('\n')[0]]).toEqual([0, 'from the Postgres snapshot (Redis out of reach: how far it is behind Redis is unknown)']);

    const r = await runCli(['campaigns', 'results', 'redis-down', '--json'], down);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ campaignId: 'redis-down', satellites: { 'sat-d': { generated: 2, redeemed: 1, reserved: 0, unredeemed: 1, expired: 0, revoked: 0, purged: 0, redeemedOn: { 'sat-q': 1 } } }, snapshotLag: null });
    const table = await runCli(['campaigns', 'results', 'redis-down'], down);
    expect([table.code, table.stdout.split('\n')[0]]).toEqual([0, 'campaign redis-down, from the Postgres snapshot (Redis out of reach: how far it is behind Redis is unknown)']);
    const unknown = await runCli(['tokens', 'history', '0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d'], down);
    expect([unknown.code, unknown.stderr]).toEqual([1, expect.stringContaining('is not in the Postgres snapshot (Redis out of reach: how far it is behind Redis is unknown)')]);
  }, 120_000);

  // Postgres refuses a NUL and a lone surrogate in jsonb: the copy failed, and the writer retried the same
  // round for ever, so no token event reached Postgres either (any satellite could send such an error)
  it('text Postgres cannot store (a NUL, a lone surrogate) in a satellite\'s error or a registered field does not stop the writer', async () => {
    const broken = createServer((_req, res) => void res.writeHead(500, { 'content-type': 'application/json' }).end('{"error":"broken\\u0000\\u001b[31m","message":"half \\ud800 done"}'));
    const port = await new Promise<number>((r) => broken.listen(0, '127.0.0.1', () => r((broken.address() as AddressInfo).port)));
    try {
      await new SatelliteRegistry(fx.redis, fx.prefix).add({ id: 'sat-nul', url: `http://127.0.0.1:${port}` });
      expect((await runCli(['generate', '--satellite', 'sat-nul', '--per-user', '1', '--campaign', 'nul'], env)).code).toBe(1);
    } finally {
      broken.close();
    }
    // a name stored before names were checked (checkText)
    await fx.redis.hset(new SatelliteKeys(fx.prefix).satellite('sat-nul'), 'name', 'old\u0000name');
    const w = await writer(fx.prefix);
    await generateTokens(fx.engine, 50, 'sat-nul');
    await caughtUp(fx.redis, fx.prefix, pool, 0, 15_000);
    const row = await rowUntil('nul', (r) => r.progress['sat-nul']?.status === 'failed');
    expect(row.progress['sat-nul']?.lastError).toBe('GET /referrals/v1/users-without-tokens: HTTP 500 broken\ufffd\ufffd[31m: half \ufffd done');
    const named = await pool.query("SELECT fields->>'name' AS name FROM satellites WHERE id = 'sat-nul'");
    expect(named.rows).toEqual([{ name: 'old\ufffdname' }]);
    await stopCaughtUp(w);
    // what Postgres could not hold is named, so the operator mends it (satellites update)
    expect((await verify(fx.redis, pool, fx.prefix)).listed).toEqual([{ token: new SatelliteKeys(fx.prefix).satellite('sat-nul'), kind: 'differs', fields: [{ field: 'name', redis: 'old\u0000name', postgres: 'old\ufffdname' }] }]);
    await fx.redis.hset(new SatelliteKeys(fx.prefix).satellite('sat-nul'), 'name', 'mended');
  });

  it('the users a satellite refused reach Postgres and come back with restore, not as delivered', async () => {
    const sim = await satellite('sat-g', 40);
    const w = await writer(fx.prefix);
    // the first run stops half way; two users it made tokens for but did not deliver close their accounts
    sim.satellite.setFailAfter(20);
    expect((await runCli(['generate', '--satellite', 'sat-g', '--per-user', '1', '--campaign', 'gone', '--batch-size', '10'], env)).code).toBe(1);
    const held = sim.satellite.holdings();
    const waiting: string[] = [];
    for await (const page of new CampaignStore(fx.redis, fx.prefix).allMade('gone', 'sat-g')) waiting.push(...page.map(([u]) => u).filter((u) => !held[u]?.length));
    const gone = waiting.sort().slice(0, 2);
    expect(gone).toHaveLength(2);
    expect(sim.satellite.leave(gone)).toBe(2);
    sim.satellite.setFailAfter(null);
    const [report] = JSON.parse(await cli(['generate', '--resume', 'gone', '--json'])).satellites;
    expect(report).toMatchObject({ status: 'done', usersRefused: 2 });

    const refusedRows = async () => (await pool.query<{ user_id: string }>("SELECT user_id FROM campaign_refusals WHERE campaign_id = 'gone' AND satellite_id = 'sat-g' ORDER BY user_id")).rows.map((r) => r.user_id);
    await rowUntil('gone', (r) => r.progress['sat-g']?.status === 'done');
    for (let end = Date.now() + 15_000; (await refusedRows()).length < 2 && Date.now() < end; ) await sleep(100);
    expect(await refusedRows()).toEqual(gone);

    // verify compares each refusal set with its copy
    await stopCaughtUp(w);
    const rej = `${fx.prefix}:{camp:gone}:rej:sat-g`;
    await fx.redis.srem(rej, gone[0]!);
    expect((await verify(fx.redis, pool, fx.prefix)).listed).toEqual([{ token: rej, kind: 'differs', fields: [{ field: 'users', redis: '1', postgres: '2' }] }]);

    await loseAndRestore();
    expect(await cli(['campaigns', 'refused', 'gone'])).toBe(gone.map((u) => `sat-g\t${u}\n`).join(''));
    expect(await fx.redis.scard(`${fx.prefix}:{camp:gone}:dlv:sat-g`)).toBe(38);
    expect(await cli(['verify'])).toContain(' 0 differences');
  });
});
