import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { Pool } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../src/client/admin.js';
import { startSatelliteSim, type SatelliteSim, type SatelliteSimOptions, type SignupSummary } from '../src/sim/index.js';
import { MAIN, runCli } from './helpers/cli.js';
import { ADMIN_KEY, call, serve, type Format, type Served } from './helpers/http.js';
import { dropSharedPrefixes, SHARED_REDIS_URL, testPrefix } from './helpers/redis.js';

const pad = (n: number) => String(n).padStart(7, '0');
const userIds = (id: string, n: number) => Array.from({ length: n }, (_, i) => `${id}-u${pad(i + 1)}`);

/** Sims (and their pools) started by one test, closed after it. */
const open: { sim: SatelliteSim; pool: Pool }[] = [];
async function sim(opts: Partial<SatelliteSimOptions> & { users: number }): Promise<{ sim: SatelliteSim; pool: Pool }> {
  const s = await startSatelliteSim({ id: 'us1', ...opts });
  const entry = { sim: s, pool: new Pool(s.url, { connections: 4 }) };
  open.push(entry);
  return entry;
}
afterEach(async () => {
  for (const { sim: s, pool } of open.splice(0)) {
    await pool.close();
    await s.close();
  }
});

async function allPages(pool: Pool, limit: number, key?: string): Promise<{ pages: { userIds: string[]; nextCursor: string | null }[]; ids: string[] }> {
  const pages = [];
  let cursor = '';
  for (;;) {
    const r = await call(pool, 'GET', `/referrals/v1/users-without-tokens?cursor=${encodeURIComponent(cursor)}&limit=${limit}`, { key, format: 'msgpack' });
    expect(r.status).toBe(200);
    pages.push(r.body);
    if (r.body.nextCursor === null) break;
    cursor = r.body.nextCursor;
  }
  return { pages, ids: pages.flatMap((p) => p.userIds) };
}

const deliver = (pool: Pool, tokens: { userId: string; token: string }[], opts: { key?: string; format?: Format } = {}) =>
  call(pool, 'POST', '/referrals/v1/tokens', { body: { tokens }, format: opts.format ?? 'msgpack', key: opts.key });

describe('satellite contract', () => {
  it('pages users without tokens in id order, by cursor, nextCursor null on the last page', async () => {
    const { pool } = await sim({ users: 25 });
    const { pages, ids } = await allPages(pool, 10);
    expect(pages.map((p) => p.userIds.length)).toEqual([10, 10, 5]);
    expect(pages.map((p) => p.nextCursor)).toEqual(['us1-u0000010', 'us1-u0000020', null]);
    expect(ids).toEqual(userIds('us1', 25));

    // a page that ends exactly at the last user says so
    const exact = await allPages(pool, 25);
    expect(exact.pages).toEqual([{ userIds: userIds('us1', 25), nextCursor: null }]);

    // the default page is 1000 users; limits outside 1..10000 are refused
    const def = await call(pool, 'GET', '/referrals/v1/users-without-tokens');
    expect(def.body).toEqual({ userIds: userIds('us1', 25), nextCursor: null });
    for (const bad of ['0', '10001', 'ten', '2.5']) {
      const r = await call(pool, 'GET', `/referrals/v1/users-without-tokens?limit=${bad}`);
      expect(r.status).toBe(400);
      expect(r.body.error).toBe('invalid_request');
    }
  });

  it('stores delivered tokens; a user holding some leaves the list, and a retried delivery is answered the same', async () => {
    const { sim: s, pool } = await sim({ users: 5 });
    const tokens = [
      { userId: 'us1-u0000002', token: randomUUID() },
      { userId: 'us1-u0000002', token: randomUUID() },
      { userId: 'us1-u0000004', token: randomUUID() },
    ];
    for (const format of ['msgpack', 'json'] as const) {
      const r = await deliver(pool, tokens, { format });
      expect(r.status).toBe(200);
      expect(r.headers['content-type']).toBe(format === 'json' ? 'application/json' : 'application/msgpack');
      expect(r.body).toEqual({ accepted: 3 });
    }
    expect((await allPages(pool, 2)).ids).toEqual(['us1-u0000001', 'us1-u0000003', 'us1-u0000005']);
    const users = (await call(pool, 'GET', '/sim/users')).body.users;
    expect(users['us1-u0000002'].sort()).toEqual([tokens[0]!.token, tokens[1]!.token].sort());
    expect(users['us1-u0000004']).toEqual([tokens[2]!.token]);
    expect(users['us1-u0000001']).toEqual([]);
    expect(s.satellite.tokensStored).toBe(3);
  });

  it('answers an undecodable or empty body 400 invalid_request and an unknown content type 415, in the format asked for', async () => {
    const { pool } = await sim({ users: 1 });
    const garbled = await call(pool, 'POST', '/referrals/v1/tokens', { raw: Buffer.from([0xc1, 0xff, 0x00]), contentType: 'application/msgpack' });
    expect([garbled.status, garbled.body.error]).toEqual([400, 'invalid_request']);
    expect(garbled.body.message).toMatch(/^body: not valid MessagePack/);
    const json = await call(pool, 'POST', '/referrals/v1/tokens', { raw: '{"tokens":', contentType: 'application/json', accept: 'application/json' });
    expect([json.status, json.body.error]).toEqual([400, 'invalid_request']);
    expect(json.body.message).toMatch(/^body: not valid JSON/);
    const empty = await call(pool, 'POST', '/referrals/v1/tokens', { raw: '', contentType: 'application/json' });
    expect([empty.status, empty.body.message]).toEqual([400, 'body: empty']);
    const text = await call(pool, 'POST', '/referrals/v1/tokens', { raw: 'tokens', contentType: 'text/plain', accept: 'application/msgpack' });
    expect([text.status, text.body.error]).toEqual([415, 'unsupported_media_type']);
    // a Content-Type's parameters do not change its format (read as Accept's, q=0 made JSON MessagePack)
    const weighted = await call(pool, 'POST', '/referrals/v1/tokens', { raw: '{"tokens":[]}', contentType: 'application/json;q=0', accept: 'application/json' });
    expect([weighted.status, weighted.body]).toEqual([200, { accepted: 0 }]);
  });

  it('refuses a batch naming an unknown user, storing none of it', async () => {
    const { pool } = await sim({ users: 3 });
    const r = await deliver(pool, [
      { userId: 'us1-u0000001', token: randomUUID() },
      { userId: 'us1-u0000009', token: randomUUID() },
    ]);
    expect(r.status).toBe(400);
    expect(r.body.error).toBe('invalid_request');
    expect(r.body.message).toContain('us1-u0000009');
    expect((await call(pool, 'GET', '/sim/users')).body.users['us1-u0000001']).toEqual([]);
    expect((await allPages(pool, 10)).ids).toEqual(userIds('us1', 3));
  });

  it('forgets users who close their accounts (/sim/leave): not listed, deliveries to them refused, their tokens no longer handed out', async () => {
    const { pool } = await sim({ users: 4 });
    const token = randomUUID();
    await deliver(pool, [{ userId: 'us1-u0000002', token }]);
    const left = await call(pool, 'POST', '/sim/leave', { body: { userIds: ['us1-u0000002', 'us1-u0000003', 'nobody'] } });
    expect(left.body).toEqual({ left: 2 });
    expect((await allPages(pool, 1)).ids).toEqual(['us1-u0000001', 'us1-u0000004']);
    expect(Object.keys((await call(pool, 'GET', '/sim/users')).body.users)).toEqual(['us1-u0000001', 'us1-u0000004']);
    expect((await deliver(pool, [{ userId: 'us1-u0000003', token: randomUUID() }])).status).toBe(400);
    expect((await call(pool, 'GET', '/sim/take-token')).status).toBe(404);
    expect((await call(pool, 'POST', '/sim/leave', { body: { userIds: 'us1-u0000001' } })).status).toBe(400);
  });

  it('requires the outbound key on the /referrals routes only', async () => {
    const { pool } = await sim({ users: 2, outboundKey: 'out-key-1' });
    const list = '/referrals/v1/users-without-tokens';
    for (const key of [undefined, 'wrong-key']) {
      const r1 = await call(pool, 'GET', list, { key });
      expect(r1.status).toBe(401);
      expect(r1.body.error).toBe('unauthorized');
      const r2 = await deliver(pool, [{ userId: 'us1-u0000001', token: randomUUID() }], { key });
      expect(r2.status).toBe(401);
    }
    expect((await call(pool, 'GET', '/sim/users')).body.users['us1-u0000001']).toEqual([]);
    expect((await call(pool, 'GET', list, { key: 'out-key-1' })).status).toBe(200);
    expect((await deliver(pool, [{ userId: 'us1-u0000001', token: randomUUID() }], { key: 'out-key-1' })).body).toEqual({ accepted: 1 });
  });

  it('fails deliveries after --fail-after tokens, whole POSTs at a time, until healed', async () => {
    const { pool } = await sim({ users: 4, failAfter: 3 });
    const batch = (user: number) => [1, 2].map(() => ({ userId: `us1-u000000${user}`, token: randomUUID() }));
    expect((await deliver(pool, batch(1))).body).toEqual({ accepted: 2 });
    // 2 stored < 3: this one is taken whole, even though it passes the limit
    expect((await deliver(pool, batch(2))).body).toEqual({ accepted: 2 });
    for (const format of ['msgpack', 'json'] as const) {
      const r = await deliver(pool, batch(3), { format });
      expect(r.status).toBe(503);
      expect(r.body.error).toBe('unavailable');
    }
    expect((await call(pool, 'GET', '/sim/users')).body.users['us1-u0000003']).toEqual([]);

    const heal = await call(pool, 'POST', '/sim/fail', { body: { after: null } });
    expect(heal.body).toEqual({ after: null, stored: 4 });
    expect((await deliver(pool, batch(3))).body).toEqual({ accepted: 2 });

    expect((await call(pool, 'POST', '/sim/fail', { body: { after: 6 }, format: 'msgpack' })).body).toEqual({ after: 6, stored: 6 });
    expect((await deliver(pool, batch(4))).status).toBe(503);
    expect((await call(pool, 'POST', '/sim/fail', { body: { after: -1 } })).status).toBe(400);
  });

  it('hands out each held token once through /sim/take-token', async () => {
    const { pool } = await sim({ users: 3 });
    const held = [randomUUID(), randomUUID()];
    await deliver(pool, held.map((token) => ({ userId: 'us1-u0000002', token })));
    expect((await allPages(pool, 10)).ids).toEqual(['us1-u0000001', 'us1-u0000003']);
    const taken = [];
    for (let i = 0; i < 2; i++) {
      const r = await call(pool, 'GET', '/sim/take-token');
      expect(r.status).toBe(200);
      expect(r.body.userId).toBe('us1-u0000002');
      taken.push(r.body.token);
    }
    expect(taken.sort()).toEqual([...held].sort());
    const none = await call(pool, 'GET', '/sim/take-token');
    expect(none.status).toBe(404);
    // every token shared: the user has none left to show, so generation should serve it again
    expect((await allPages(pool, 10)).ids).toEqual(userIds('us1', 3));
    // and a token it already holds is not counted as one left
    expect((await deliver(pool, [{ userId: 'us1-u0000002', token: held[0]! }])).body).toEqual({ accepted: 1 });
    expect((await allPages(pool, 10)).ids).toEqual(userIds('us1', 3));
  });

  it('answers garbage with 4xx and keeps serving', async () => {
    const { pool } = await sim({ users: 2 });
    const tokens = '/referrals/v1/tokens';
    const cases: [string, Buffer | string, string, number][] = [
      [tokens, '{"tokens": [', 'application/json', 400],
      [tokens, '', 'application/json', 400],
      [tokens, 'null', 'application/json', 400],
      [tokens, '[1,2]', 'application/json', 400],
      [tokens, '{"tokens": "x"}', 'application/json', 400],
      [tokens, '{"tokens": [{"userId": 5, "token": "x"}]}', 'application/json', 400],
      [tokens, '{"tokens": [{"userId": "us1-u0000001", "token": "not-a-uuid"}]}', 'application/json', 400],
      [tokens, Buffer.from([0xc1, 0xff, 0x00, 0xde]), 'application/msgpack', 400],
      [tokens, Buffer.from([0xdf, 0xff, 0xff, 0xff, 0xff]), 'application/x-msgpack', 400],
      [tokens, 'tokens=1', 'application/x-www-form-urlencoded', 415],
      [tokens, Buffer.alloc(9 * 1024 * 1024, 0x20), 'application/json', 413],
      ['/sim/signups', '{"count": "many"}', 'application/json', 400],
      ['/sim/fail', '{}', 'application/json', 400],
    ];
    for (const [path, raw, contentType, status] of cases) {
      const r = await call(pool, 'POST', path, { raw, contentType });
      expect(r.status, `${path} ${contentType} ${String(raw).slice(0, 40)}`).toBe(status);
      expect(typeof r.body.error).toBe('string');
      expect(typeof r.body.message).toBe('string');
    }
    expect((await call(pool, 'GET', '/nowhere')).status).toBe(404);
    expect((await call(pool, 'DELETE', '/sim/users')).status).toBe(405);
    expect((await allPages(pool, 10)).ids).toEqual(userIds('us1', 2));
  });
});

/** Waits for a line matching `pattern` on the child's stdout; rejects if it exits first. */
function waitForLine(proc: ChildProcess, pattern: RegExp, ms = 30_000): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`no ${pattern} within ${ms} ms; output:\n${out}`)), ms);
    const onData = (d: Buffer) => {
      out += d.toString();
      const m = pattern.exec(out);
      if (m) {
        clearTimeout(timer);
        proc.stdout?.off('data', onData);
        resolve(m);
      }
    };
    proc.stdout?.on('data', onData);
    proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`satellite-sim exited with ${code}; output:\n${out}`));
    });
  });
}

describe('with the manager', () => {
  const prefix = testPrefix('sim');
  let manager: Served;
  let admin: AdminClient;
  const keys: Record<string, string> = {};
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    manager = await serve({ KEY_PREFIX: prefix, REDIS_URL: SHARED_REDIS_URL });
    admin = new AdminClient({ url: manager.url, apiKey: ADMIN_KEY });
    for (const id of ['us1', 'eu1', 'ap1']) keys[id] = (await admin.addSatellite({ id, outboundKey: `out-${id}` })).apiKey;
  });

  afterAll(async () => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    await admin?.close();
    expect(await manager?.stop()).toBe(0);
    await dropSharedPrefixes(prefix);
  });

  /** What `generate` does, by hand: every user without tokens gets `perUser` tokens from the manager. */
  async function fill(id: string, pool: Pool, perUser: number): Promise<number> {
    const { ids } = await allPages(pool, 1000, `out-${id}`);
    const made = await admin.generate({ satelliteId: id, userIds: ids, perUser });
    const r = await deliver(pool, made.tokens, { key: `out-${id}` });
    expect(r.body).toEqual({ accepted: made.tokens.length });
    return made.tokens.length;
  }

  it('signs users up across satellites through the real manager', async () => {
    const eu = await sim({ id: 'eu1', users: 40, manager: manager.url, key: keys.eu1!, outboundKey: 'out-eu1' });
    const us = await sim({ id: 'us1', users: 40, manager: manager.url, key: keys.us1!, outboundKey: 'out-us1', peers: [eu.sim.url] });
    expect(await fill('us1', us.pool, 2)).toBe(80);
    expect(await fill('eu1', eu.pool, 2)).toBe(80);

    const r = await call(us.pool, 'POST', '/sim/signups', { body: { count: 40, crossShare: 0.5 } });
    expect(r.status).toBe(200);
    const summary = r.body as SignupSummary;
    expect(summary).toMatchObject({ attempted: 40, redeemed: 40, released: 4, failed: {} });
    expect(summary.crossSatellite).toBeGreaterThan(0);
    expect(summary.crossSatellite).toBeLessThan(40);

    const stats = await admin.stats();
    const redeemed = (owner: string) => stats.redemptions.find((x) => x.ownerSatelliteId === owner && x.redeemerSatelliteId === 'us1')?.count ?? 0;
    expect(redeemed('eu1')).toBe(summary.crossSatellite);
    expect(redeemed('us1')).toBe(40 - summary.crossSatellite);
    expect(stats.satellites.us1!.redeemed + stats.satellites.eu1!.redeemed).toBe(40);
    expect(stats.satellites.us1!.reserved + stats.satellites.eu1!.reserved).toBe(0);

    // the new users joined us1, with no tokens yet: the next generation run finds them
    const newUsers = Array.from({ length: 40 }, (_, i) => `us1-n${pad(i + 1)}`);
    const held = (await call(us.pool, 'GET', '/sim/users')).body.users;
    for (const u of newUsers) expect(held[u]).toEqual([]);
    const listed = (await allPages(us.pool, 7, 'out-us1')).ids;
    expect(listed.filter((u) => u.includes('-n'))).toEqual(newUsers);
    expect(listed).toEqual([...listed].sort());

    // a sign-up whose token the manager refuses is reported by its wire code, and the user does not join
    const other = await sim({ id: 'us1', users: 0, manager: manager.url, key: keys.us1! });
    other.sim.satellite.join('us1-x');
    const made = await admin.generate({ satelliteId: 'us1', userIds: ['us1-x'], perUser: 2 });
    expect(await admin.revoke({ tokens: [made.tokens[0]!.token] })).toEqual({ revoked: 1 });
    expect((await deliver(other.pool, made.tokens)).body).toEqual({ accepted: 2 });
    expect(await other.sim.signups(2, 0)).toEqual({ attempted: 2, redeemed: 1, crossSatellite: 0, released: 0, failed: { token_revoked: 1 } });
    expect(Object.keys((await call(other.pool, 'GET', '/sim/users')).body.users)).toHaveLength(2);
  });

  it('runs as `referral-manager satellite-sim`, signs up at start once tokens arrive, exits 0 on SIGTERM', async () => {
    const peer = await sim({ id: 'eu1-peer', users: 0 });
    const proc = spawn(process.execPath, [MAIN, 'satellite-sim', '--id', 'ap1', '--users', '12', '--port', '0', '--outbound-key', 'out-ap1',
      '--manager', manager.url, '--key', keys.ap1!, '--signups', '6', '--cross-share', '0.5', '--peer', peer.sim.url], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(proc);
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
    const [, url] = (await waitForLine(proc, /satellite-sim ap1 listening on (http:\/\/\S+)\n/))!;
    const signedUp = waitForLine(proc, /signups: (\{.*\})\n/);
    const pool = new Pool(url!, { connections: 2 });
    try {
      // the peer has no tokens to give, so every sign-up falls back to ap1's own
      expect(await fill('ap1', pool, 1)).toBe(12);
      const summary = JSON.parse((await signedUp)[1]!) as SignupSummary;
      expect(summary).toEqual({ attempted: 6, redeemed: 6, crossSatellite: 0, released: 0, failed: {} });
      expect((await allPages(pool, 100, 'out-ap1')).ids.filter((u) => u.startsWith('ap1-n'))).toHaveLength(6);
    } finally {
      await pool.close();
    }
    proc.kill('SIGTERM');
    expect(await exited).toBe(0);
  });

  it('refuses bad flags with exit 2 and the usage line', async () => {
    for (const args of [
      ['--users', '10'],
      ['--id', 'x', '--users', '-3'],
      ['--id', 'x', '--users', '10', '--port', '70000'],
      ['--id', 'x', '--users', '10', '--cross-share', '1.5'],
      ['--id', 'x', '--users', '10', '--fail-after', 'soon'],
      ['--id', 'x', '--users', '10', '--signups', '5'],
      ['--id', 'x', '--users', '10', '--manager', 'not a url', '--key', 'k'],
      ['--id', 'bad id', '--users', '10'],
    ]) {
      const r = await runCli(['satellite-sim', ...args]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toContain('Usage: referral-manager satellite-sim');
    }
    // a share of sign-ups from peers, and no peer: every sign-up would take an own token
    const lonely = await runCli(['satellite-sim', '--id', 'x', '--users', '10', '--cross-share', '0.3']);
    expect(lonely.code).toBe(2);
    expect(lonely.stderr).toContain('error: --cross-share needs --peer');
    const help = await runCli(['satellite-sim', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('Examples:');
  });
});
