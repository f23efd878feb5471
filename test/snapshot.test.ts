import { spawn, spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { caughtUp, each, generateTokens, snapshotFixture, until } from './helpers/snapshot.js';
import { restoreFromPostgres, startSnapshotWriter, verify, readSnapshotStatus } from '../src/snapshot/index.js';
import { TokenStore } from '../src/store/token-store.js';
import { TokenEngine } from '../src/tokens/engine.js';
import { loadConfig } from '../src/config.js';
import { hashKey } from '../src/digest.js';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { SHARED_REDIS_URL } from './helpers/redis.js';
import { Keys, placeOfOwner } from '../src/store/keys.js';
import { mint } from '../src/tokens/mint.js';
import { NO_REPLICA_WAIT } from '../src/store/replicas.js';
import { MAIN } from './helpers/cli.js';

const TOTAL = 100_000;

// one story in steps, each building on what the one before left (100k tokens are made once): run the file,
// not one step alone (-t on a later step fails for want of its world)
describe('snapshot writer, restore and verify (real Redis, real Postgres)', () => {
  const snap = snapshotFixture('snap');
  let tokens: string[] = [];
  let events = 0;

  it('100k tokens generated and half redeemed (plus reserve/complete/release/revoke) -> Postgres equals Redis', async () => {
    const config = loadConfig({ redisUrl: SHARED_REDIS_URL, keyPrefix: snap.fx.prefix, databaseUrl: snap.db.url, snapshotBatch: 5000 });
    snap.writer = await startSnapshotWriter(config, { log: () => {} });
    tokens = await generateTokens(snap.fx.engine, TOTAL);
    events += TOTAL;
    await each(tokens.slice(0, TOTAL / 2), 64, async (t, i) => {
      expect((await snap.fx.engine.redeem(t, 'sat-b', `r${i}`)).code).toBe('ok');
    });
    events += TOTAL / 2;
    // other transitions on a few hundred of the rest: reserve (kept), reserve+complete, reserve+release, revoke
    const rest = tokens.slice(TOTAL / 2);
    await each(rest.slice(0, 200), 16, async (t) => {
      expect((await snap.fx.engine.reserve(t, 'sat-c', 60_000)).code).toBe('ok');
    });
    await each(rest.slice(200, 400), 16, async (t, i) => {
      const r = await snap.fx.engine.reserve(t, 'sat-c', 60_000);
      expect((await snap.fx.engine.complete(t, r.token!.reservationId!, `c${i}`)).code).toBe('ok');
    });
    await each(rest.slice(400, 600), 16, async (t) => {
      const r = await snap.fx.engine.reserve(t, 'sat-c', 60_000);
      expect((await snap.fx.engine.release(t, r.token!.reservationId!)).code).toBe('ok');
    });
    await each(rest.slice(600, 800), 16, async (t) => {
      expect((await snap.fx.engine.revokeToken(t)).code).toBe('ok');
    });
    events += 200 + 400 + 400 + 200;

    await caughtUp(snap.fx.redis, snap.fx.prefix, snap.pool, events);
    const counts = (await snap.pool.query('SELECT state, count(*)::int AS n FROM tokens GROUP BY state ORDER BY state')).rows;
    expect(counts).toEqual([
      { state: 'redeemed', n: TOTAL / 2 + 200 },
      { state: 'reserved', n: 200 },
      { state: 'revoked', n: 200 },
      { state: 'unredeemed', n: TOTAL / 2 - 600 },
    ]);
    expect(Number((await snap.pool.query('SELECT count(*) FROM token_events')).rows[0].count)).toBe(events);
    const report = await verify(snap.fx.redis, snap.pool, snap.fx.prefix);
    expect(report.listed).toEqual([]);
    expect(report).toMatchObject({ tokens: TOTAL, differences: 0 });
    // the streams are trimmed below what Postgres holds
    const left = await Promise.all(Array.from({ length: 64 }, (_, s) => snap.fx.redis.xlen(snap.fx.store.keys.events(s))));
    expect(left.reduce((a, b) => a + b, 0)).toBeLessThan(events);
    // the writer reports once a second: poll, the machine may be busy
    let status = await readSnapshotStatus(snap.fx.redis, snap.fx.prefix);
    for (const end = Date.now() + 30_000; !(status.state === 'up' && status.lagEvents === 0) && Date.now() < end; ) {
      await new Promise((r) => setTimeout(r, 100));
      status = await readSnapshotStatus(snap.fx.redis, snap.fx.prefix);
    }
    expect(status).toMatchObject({ state: 'up', lagEvents: 0 });
  }, 180_000);

  it('verify lists a difference when Redis and Postgres disagree', async () => {
    await snap.writer!.stop();
    snap.writer = undefined;
    expect(await readSnapshotStatus(snap.fx.redis, snap.fx.prefix)).toMatchObject({ state: 'off' });
    const t = tokens[TOTAL - 1]!;
    await snap.pool.query(`UPDATE tokens SET state = 'revoked' WHERE token = $1`, [t]);
    const report = await verify(snap.fx.redis, snap.pool, snap.fx.prefix);
    await snap.pool.query(`UPDATE tokens SET state = 'unredeemed' WHERE token = $1`, [t]);
    // the token, and its shard's counters, which no longer match the shard's rows
    expect(report.differences).toBe(2);
    expect(report.listed[0]).toMatchObject({ token: t, kind: 'differs', fields: [{ field: 'state', redis: 'unredeemed', postgres: 'revoked' }] });
    expect(report.listed[1]).toMatchObject({ kind: 'stats', fields: [{ field: 'sat-a\trevoked' }, { field: 'sat-a\tunredeemed' }] });
  });

  it('restore into an empty prefix rebuilds tokens, owners, dictionaries and stats; verify finds 0 differences', async () => {
    const restored = await restoreFromPostgres(snap.fx.redis, snap.pool, snap.other);
    expect(restored).toBe(TOTAL);
    const report = await verify(snap.fx.redis, snap.pool, snap.other);
    expect(report).toMatchObject({ tokens: TOTAL, differences: 0 });
    const engine = new TokenEngine(new TokenStore(snap.fx.redis, snap.other, NO_REPLICA_WAIT));
    expect(await engine.stats()).toEqual(await snap.fx.engine.stats());
    // owner records are found by the same hint/probing: the owner's list matches the original
    const owner = { sat: 'sat-a', user: `u${TOTAL - 10}` };
    expect(await engine.listUnredeemed(owner.sat, owner.user)).toEqual(await snap.fx.engine.listUnredeemed(owner.sat, owner.user));
    expect(await engine.lookup(tokens[0]!)).toEqual(await snap.fx.engine.lookup(tokens[0]!));
    // the 200 reservations are back in the lease index too, with their ends, for the lapse sweep
    const leases = async (prefix: string) => {
      const all = await Promise.all(Array.from({ length: 64 }, (_, s) => snap.fx.redis.zrange(new Keys(prefix).leases(s), 0, -1, 'WITHSCORES')));
      return all.flatMap((r) => r.flatMap((v, i) => (i % 2 ? [] : [`${v} ${r[i + 1]}`]))).sort();
    };
    const restoredLeases = await leases(snap.other);
    expect(restoredLeases).toHaveLength(200);
    expect(restoredLeases).toEqual(await leases(snap.fx.prefix));
    // the restored engine keeps working, and its new events sort after everything Postgres holds
    const t = tokens[TOTAL - 2]!;
    expect((await engine.redeem(t, 'sat-b', 'after-restore')).code).toBe('ok');
    const config = loadConfig({ keyPrefix: snap.other, databaseUrl: snap.db.url });
    snap.writer = await startSnapshotWriter(config, { log: () => {} });
    await caughtUp(snap.fx.redis, snap.other, snap.pool, events + 1);
    expect((await snap.pool.query('SELECT redeemer_user_id FROM tokens WHERE token = $1', [t])).rows[0].redeemer_user_id).toBe('after-restore');
    expect((await verify(snap.fx.redis, snap.pool, snap.other)).differences).toBe(0);
  }, 120_000);

  it('CLI: restore refuses a non-empty prefix (exit 1), restores with --force, verify exits 0 / 1 on a difference', async () => {
    await snap.writer?.stop();
    snap.writer = undefined;
    const cli = (...args: string[]) =>
      spawnSync(process.execPath, [MAIN, ...args], {
        env: { ...process.env, KEY_PREFIX: snap.other, DATABASE_URL: snap.db.url, REDIS_URL: SHARED_REDIS_URL },
        encoding: 'utf8',
      });
    const refused = cli('restore', '--from-postgres');
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(/refusing to restore.*--force/);
    expect(cli('restore').status).toBe(2);
    expect(cli('verify', '--max', 'abc').status).toBe(2);
    const t = tokens[TOTAL - 3]!;
    await snap.pool.query(`UPDATE tokens SET owner_user_id = 'someone-else' WHERE token = $1`, [t]);
    const bad = cli('verify');
    expect(bad.status).toBe(1);
    expect(bad.stdout).toContain(`${t} differs ownerUserId: redis=`);
    await snap.pool.query(`UPDATE tokens SET owner_user_id = $2 WHERE token = $1`, [t, (await snap.fx.engine.lookup(t))!.ownerUserId]);
    // a satellite in the snapshot comes back with its key
    const key = 'rmk_restored-key';
    await snap.pool.query('INSERT INTO satellites (id, fields, api_keys) VALUES ($1, $2, $3)', [
      'sat-x', { id: 'sat-x', createdAt: '1', keyHash: hashKey(key) }, { [hashKey(key)]: 'sat-x\t' }]);
    // a failure window counted while Redis was empty (every token a 404) must not keep a satellite refused
    await snap.fx.redis.set(`${snap.other}:rl:s:sat-x:123`, '500', 'PX', 60_000);
    // a writer running against the prefix: refused before anything is touched, --force or not (the writer
    // recreated the streams restore had deleted; restore died on BUSYGROUP halfway, and changes were lost)
    const running = await startSnapshotWriter(loadConfig({ redisUrl: SHARED_REDIS_URL, keyPrefix: snap.other, databaseUrl: snap.db.url }), { log: () => {} });
    try {
      await until(() => snap.fx.redis.exists(`${snap.other}:{snap}:lease`), (n) => n === 1, 'the writer holding its lease', 10_000);
      const raced = cli('restore', '--from-postgres', '--force');
      expect([raced.status, raced.stderr]).toEqual([1, expect.stringContaining('a snapshot writer holds its lease')]);
      expect((await snap.fx.engine.lookup(t))?.token).toBe(t);
      expect(await new TokenEngine(new TokenStore(snap.fx.redis, snap.other, NO_REPLICA_WAIT)).lookup(t)).toBeDefined();
    } finally {
      await running.stop();
    }
    // the restore holds the lease while it runs: a writer started meanwhile (a serve its supervisor restarted)
    // stands by instead of recreating the streams under it
    const lease = `${snap.other}:{snap}:lease`;
    /** `restore --from-postgres --force` started, once it holds the lease */
    const restoreRunning = async () => {
      const c = spawn(process.execPath, [MAIN, 'restore', '--from-postgres', '--force'], {
        env: { ...process.env, KEY_PREFIX: snap.other, DATABASE_URL: snap.db.url, REDIS_URL: SHARED_REDIS_URL },
      });
      const run = { out: '', err: '', exited: new Promise<number | null>((r) => c.once('exit', r)) };
      c.stdout.on('data', (d: Buffer) => (run.out += d));
      c.stderr.on('data', (d: Buffer) => (run.err += d));
      await until(() => snap.fx.redis.get(lease), (v) => v?.startsWith('restore on ') ?? false, 'the restore holding the lease', 20_000);
      return run;
    };
    const restoring = await restoreRunning();
    const standby = await startSnapshotWriter(loadConfig({ redisUrl: SHARED_REDIS_URL, keyPrefix: snap.other, databaseUrl: snap.db.url }), { log: () => {} });
    let led = false;
    const watch = setInterval(() => (led ||= standby.status().leader), 5);
    const code = await restoring.exited;
    clearInterval(watch);
    await standby.stop();
    expect(led).toBe(false);
    const forced = { status: code, stdout: restoring.out };
    expect(forced.status).toBe(0);
    expect(forced.stdout).toContain('cleared 1 rate-limit window');
    expect(await snap.fx.redis.exists(`${snap.other}:rl:s:sat-x:123`)).toBe(0);
    expect(forced.stdout).toContain(`restored ${TOTAL} tokens`);
    expect(forced.stdout).toContain('restored 1 satellite with their API keys');
    expect((await new SatelliteRegistry(snap.fx.redis, snap.other).keyHolder(key))?.id).toBe('sat-x');
    const good = cli('verify');
    expect(good.stdout).toContain(`${TOTAL} tokens in Redis, 0 differences`);
    expect(good.stdout).toContain('1 satellite in Redis');
    expect(good.status).toBe(0);

    // a lease lost under it (Redis restarted, a stall) let a writer in unseen: said, exit 1
    const cut = await restoreRunning();
    await snap.fx.redis.del(lease);
    expect([await cut.exited, cut.err]).toEqual([1, expect.stringContaining('the snapshot lease was lost during the restore')]);
  }, 120_000);
});

describe('snapshot of ids that need quoting (real Redis, real Postgres)', () => {
  const snap = snapshotFixture('snap-odd');

  it('quotes, backslashes, commas, braces, spaces, "NULL", line/paragraph separators and non-ASCII ids reach Postgres and come back byte for byte', async () => {
    snap.writer = await startSnapshotWriter(loadConfig({ keyPrefix: snap.fx.prefix, databaseUrl: snap.db.url }), { log: () => {} });
    const fresh = ['a"b', 'back\\slash\\', 'com,ma', '{brace}', 'NULL', ' spaced ', 'ünï©ødé', "it's", 'x'.repeat(128), '😀'.repeat(32)];
    const r = await snap.fx.engine.generate({ owners: fresh.map((u) => ({ ownerSatelliteId: 'sat "q",{1}', ownerUserId: u })), perUser: 1, campaignId: 'camp\\,"x" y' }); // a campaign id takes no braces (checkCampaignId)
    // new ids refuse the separators (checkNewId); ids stored before that rule still travel: stored as the store takes them
    const legacy = ['line\u2028sep', '\u2029para'];
    for (const u of legacy) {
      const place = placeOfOwner('sat "q",{1}', u);
      await snap.fx.store.generate([{ ownerSatelliteId: 'sat "q",{1}', ownerUserId: u, minted: mint(place.value, 1), place }], 'camp\\,"x" y');
    }
    const odd = [...fresh, ...legacy];
    expect((await snap.fx.engine.redeem(r.tokens[0]!.token, 'sat\\b', 'NULL')).code).toBe('ok');
    expect((await snap.fx.engine.reserve(r.tokens[1]!.token, '{r,"s"}', 60_000)).code).toBe('ok');
    await caughtUp(snap.fx.redis, snap.fx.prefix, snap.pool, odd.length + 2);
    const rows = (await snap.pool.query<{ user: string }>('SELECT owner_satellite_id AS sat, owner_user_id AS user, campaign_id AS camp FROM tokens')).rows
      .sort((a, b) => (a.user < b.user ? -1 : 1));
    expect(rows).toEqual([...odd].sort().map((user) => ({ sat: 'sat "q",{1}', user, camp: 'camp\\,"x" y' })));
    const first = (await snap.pool.query('SELECT redeemer_satellite_id, redeemer_user_id FROM tokens WHERE token = $1', [r.tokens[0]!.token])).rows[0];
    expect(first).toEqual({ redeemer_satellite_id: 'sat\\b', redeemer_user_id: 'NULL' });
    expect(await verify(snap.fx.redis, snap.pool, snap.fx.prefix)).toMatchObject({ tokens: odd.length, differences: 0 });
    expect(await restoreFromPostgres(snap.fx.redis, snap.pool, snap.other)).toBe(odd.length);
    expect(await verify(snap.fx.redis, snap.pool, snap.other)).toMatchObject({ tokens: odd.length, differences: 0 });
  }, 60_000);
});
