import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { packr } from '../src/msgpack.js';
import { createSimServer, SimSatellite, startSatelliteSim, type SatelliteSim } from '../src/sim/index.js';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { CampaignStore } from '../src/store/campaign-store.js';
import { CampaignKeys } from '../src/store/campaigns.js';
import { MAIN, runCli } from './helpers/cli.js';
import { engineFixture, type EngineFixture } from './helpers/redis.js';

type Pushed = { userId: string; token: string }[];

/** An error reply of a hand-written satellite: its status and headers. */
type Refused = { status: number; headers?: Record<string, string> };

/** A hand-written satellite's answer to a delivery: its reply's `accepted`, or a Refused; a promise that never settles leaves it unanswered. */
type Push = (tokens: Pushed) => number | Refused | Promise<number | Refused>;

/**
 * A satellite written by hand for one contract corner: `list` answers the users-without-tokens listing
 * (a page, or a Refused), `push` a delivery. Registered as `id` in the fixture's registry.
 */
async function handWrittenSatellite(fx: EngineFixture, id: string, list: () => unknown, push: Push) {
  const refuse = (res: ServerResponse, reply: Refused) =>
    res.writeHead(reply.status, reply.headers).end(JSON.stringify({ error: 'refused', message: `HTTP ${reply.status} from the hand-written satellite` }));
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', async () => {
      res.setHeader('content-type', 'application/json');
      if (req.url!.startsWith('/referrals/v1/users-without-tokens')) {
        const page = list();
        return typeof (page as Refused | undefined)?.status === 'number' ? refuse(res, page as Refused) : res.end(JSON.stringify(page));
      }
      const { tokens } = packr.unpack(Buffer.concat(chunks)) as { tokens: Pushed };
      const reply = await push(tokens);
      if (typeof reply === 'number') return res.end(JSON.stringify({ accepted: reply }));
      refuse(res, reply);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  await new SatelliteRegistry(fx.redis, fx.prefix).add({ id, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });
  return {
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * `fn` on an engine fixture of its own; `handWritten` opens a hand-written satellite in it. Once `fn` ends,
 * however it ends, the satellites opened are closed in the order they were opened, then the fixture.
 */
async function withEngine(fn: (fx: EngineFixture, handWritten: (id: string, list: () => unknown, push: Push) => Promise<void>) => Promise<void>): Promise<void> {
  const fx = await engineFixture({ label: 'gen' });
  const satellites: { close(): Promise<void> }[] = [];
  try {
    await fn(fx, async (id, list, push) => void satellites.push(await handWrittenSatellite(fx, id, list, push)));
  } finally {
    for (const satellite of satellites) await satellite.close();
    await fx.close();
  }
}

/**
 * The generation flow end to end: the built CLI as a child process, real Redis, reference
 * satellites serving the satellite contract over HTTP.
 */
const USERS = 5000;
const PER_USER = 3;

async function control(sim: SatelliteSim, method: 'GET' | 'POST', path: string, body?: unknown): Promise<any> {
  const res = await fetch(`${sim.url}${path}`, {
    method,
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  expect(res.status).toBe(200);
  return res.json();
}

async function holdings(sim: SatelliteSim): Promise<Record<string, string[]>> {
  return (await control(sim, 'GET', '/sim/users')).users;
}

/** The satellite's users holding no token, each with the campaign's tokens made for it (undefined: none made). */
async function waitingUsers(fx: EngineFixture, held: Record<string, string[]>, campaignId: string, satId: string): Promise<Map<string, string[] | undefined>> {
  const empty = Object.keys(held).filter((u) => held[u]!.length === 0);
  const made = await new CampaignStore(fx.redis, fx.prefix).made(campaignId, satId, empty);
  return new Map(empty.map((u, i) => [u, made[i]]));
}

/**
 * A satellite of 20 users that refuses deliveries once it holds 10 tokens, and a generate of `campaign`
 * (2 tokens a user, 4 a push) that failed there. `waiting`: the users whose tokens were made, not delivered.
 */
async function stoppedPartWay(satId: string, campaign: string) {
  const fx = await engineFixture({ label: 'gen' });
  const sim = await startSatelliteSim({ id: satId, users: 20, failAfter: 10 });
  const close = async () => {
    await sim.close();
    await fx.close();
  };
  try {
    await new SatelliteRegistry(fx.redis, fx.prefix).add({ id: satId, url: sim.url });
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
    expect((await runCli(['generate', '--all', '--per-user', '2', '--campaign', campaign, '--batch-size', '4'], env)).code).toBe(1);
    const waiting = [...(await waitingUsers(fx, sim.satellite.holdings(), campaign, satId))].filter(([, m]) => m !== undefined).map(([u]) => u);
    expect(waiting.length, 'users whose tokens were made, not delivered').toBeGreaterThan(0);
    return { fx, sim, env, waiting, close };
  } catch (err) {
    await close();
    throw err;
  }
}

/** A world of its own: key prefix, engine, satellites registered with their URL and outbound key. */
/** 1 for each user whose tokens the satellite accepted in the campaign, else 0 */
function delivered(fx: EngineFixture, campaignId: string, satId: string, userIds: string[]): Promise<number[]> {
  return fx.redis.smismember(new CampaignKeys(fx.prefix).delivered(campaignId, satId), ...userIds);
}

async function world(ids: string[], opts: { failAfter?: number } = {}) {
  const fx = await engineFixture({ label: 'gen' });
  const registry = new SatelliteRegistry(fx.redis, fx.prefix);
  const sims: Record<string, SatelliteSim> = {};
  for (const id of ids) {
    const outboundKey = `outbound-${id}-0123456789abcdef0123456789abcdef`;
    sims[id] = await startSatelliteSim({ id, users: USERS, outboundKey, failAfter: id === ids[ids.length - 1] ? (opts.failAfter ?? null) : null });
    await registry.add({ id, url: sims[id]!.url, outboundKey });
  }
  const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '2' };
  return {
    fx,
    sims,
    env,
    gen: (args: string[]) => runCli(['generate', ...args], env),
    async close() {
      await Promise.all(Object.values(sims).map((s) => s.close()));
      await fx.close();
    },
  };
}

/** Every user of the satellite holds exactly `n` tokens, each in Redis, unredeemed, owned by that user of that satellite. */
async function expectServed(fx: EngineFixture, satId: string, sim: SatelliteSim, n: number, campaignId: string): Promise<void> {
  const held = await holdings(sim);
  const users = Object.keys(held);
  expect(users).toHaveLength(USERS);
  const bad = users.filter((u) => held[u]!.length !== n);
  expect(bad).toEqual([]);
  const all = users.flatMap((u) => held[u]!.map((token) => ({ u, token })));
  expect(new Set(all.map((t) => t.token)).size).toBe(all.length);
  for (let i = 0; i < all.length; i += 500) {
    const found = await Promise.all(all.slice(i, i + 500).map((t) => fx.engine.lookup(t.token)));
    found.forEach((tok, j) => {
      const want = all[i + j]!;
      expect(tok, want.token).toMatchObject({ ownerSatelliteId: satId, ownerUserId: want.u, state: 'unredeemed', campaignId });
    });
  }
  // nothing made beyond what was delivered
  const stats = await fx.engine.stats();
  expect(stats.satellites[satId]?.generated).toBe(USERS * n);
}

describe('generate over two satellites', () => {
  let w: Awaited<ReturnType<typeof world>>;
  beforeAll(async () => {
    w = await world(['sat-a', 'sat-b']);
  });
  afterAll(() => w?.close());

  it('gives every user of both satellites exactly 3 tokens, all in Redis, all owned right', async () => {
    const run = await w.gen(['--satellite', 'sat-a', '--satellite', 'sat-b', '--per-user', String(PER_USER), '--campaign', 'spring', '--json']);
    expect(run.code, run.stderr).toBe(0);
    const report = JSON.parse(run.stdout);
    expect(report.campaignId).toBe('spring');
    for (const r of report.satellites) {
      expect(r).toMatchObject({ usersServed: USERS, tokensMade: USERS * PER_USER, tokensDelivered: USERS * PER_USER, status: 'done' });
    }
    await expectServed(w.fx, 'sat-a', w.sims['sat-a']!, PER_USER, 'spring');
    await expectServed(w.fx, 'sat-b', w.sims['sat-b']!, PER_USER, 'spring');
  });

  it('running the campaign again, or another one, gives nobody a second set while they hold tokens', async () => {
    const again = await w.gen(['--all', '--per-user', String(PER_USER), '--campaign', 'spring', '--json']);
    expect(again.code, again.stderr).toBe(0);
    const other = await w.gen(['--all', '--per-user', String(PER_USER), '--json']);
    expect(other.code, other.stderr).toBe(0);
    for (const run of [again, other]) for (const r of JSON.parse(run.stdout).satellites) expect(r).toMatchObject({ tokensMade: 0, tokensDelivered: 0 });
    await expectServed(w.fx, 'sat-a', w.sims['sat-a']!, PER_USER, 'spring');
    await expectServed(w.fx, 'sat-b', w.sims['sat-b']!, PER_USER, 'spring');
  });

  it('refuses to continue a campaign with another per-user count', async () => {
    const run = await w.gen(['--all', '--per-user', '5', '--campaign', 'spring']);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/makes 3 tokens per user, not 5/);
  });

  it('refuses a second run of a campaign while one holds it, and makes nothing', async () => {
    const held = await new CampaignStore(w.fx.redis, w.fx.prefix).claim('spring');
    expect(held).toBeDefined();
    const before = (await w.fx.engine.stats()).satellites['sat-a']?.generated;
    const run = await w.gen(['--all', '--per-user', String(PER_USER), '--campaign', 'spring']);
    await held!.release();
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/campaign "spring" is being run by another generate/);
    expect((await w.fx.engine.stats()).satellites['sat-a']?.generated).toBe(before);
    const after = await w.gen(['--all', '--per-user', String(PER_USER), '--campaign', 'spring']);
    expect(after.code, after.stderr).toBe(0);
  });

  it('campaigns list and show report what was made and delivered', async () => {
    const show = await runCli(['campaigns', 'show', 'spring', '--json'], w.env);
    expect(show.code, show.stderr).toBe(0);
    const c = JSON.parse(show.stdout);
    expect(c.status).toBe('done');
    expect(c.progress['sat-a']).toMatchObject({ usersServed: USERS, tokensMade: USERS * PER_USER, tokensDelivered: USERS * PER_USER, status: 'done' });
    const list = await runCli(['campaigns', 'list'], w.env);
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/spring/);
    const missing = await runCli(['campaigns', 'show', 'nope'], w.env);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/campaign "nope" does not exist/);
  });
});

describe('a satellite that fails half-way, then --resume', () => {
  let w: Awaited<ReturnType<typeof world>>;
  beforeAll(async () => {
    // sat-d refuses deliveries once it has accepted half of its tokens
    w = await world(['sat-c', 'sat-d'], { failAfter: (USERS * PER_USER) / 2 });
  });
  afterAll(() => w?.close());

  it('reports the failing satellite, serves the other, and resume delivers the rest: nothing lost, nothing doubled', async () => {
    const first = await w.gen(['--all', '--per-user', String(PER_USER), '--campaign', 'autumn', '--batch-size', '1500', '--json']);
    expect(first.code).toBe(1);
    expect(first.stderr).toMatch(/satellite sat-d failed/);
    expect(first.stderr).toMatch(/generate --resume autumn/);
    const byId = Object.fromEntries(JSON.parse(first.stdout).satellites.map((r: { satelliteId: string }) => [r.satelliteId, r]));
    expect(byId['sat-c']).toMatchObject({ status: 'done', tokensDelivered: USERS * PER_USER });
    expect(byId['sat-d'].status).toBe('failed');
    expect(byId['sat-d'].tokensDelivered).toBeLessThan(USERS * PER_USER);
    expect(byId['sat-d'].failures).toBeGreaterThan(0);
    // a new campaign on sat-d now would serve users autumn made sets for: said before it starts
    const winter = await w.gen(['--satellite', 'sat-d', '--per-user', String(PER_USER), '--campaign', 'winter', '--dry-run']);
    expect(winter.stderr).toContain('note: campaign "autumn" made tokens for satellite sat-d it has not delivered (failed): a user of those this run serves would hold a set of each; resume it first (referral-manager generate --resume autumn)');
    expect((await w.gen(['--satellite', 'sat-c', '--per-user', String(PER_USER), '--campaign', 'winter', '--dry-run'])).stderr).not.toContain('note: campaign "autumn"');
    // the prefix given as a flag: the suggested resume carries it, or run as printed it resumes another deployment's "autumn"
    const flagged = await runCli(['--key-prefix', w.fx.prefix, 'generate', '--satellite', 'sat-d', '--per-user', String(PER_USER), '--campaign', 'winter', '--dry-run'], { SATELLITE_ATTEMPTS: '2' });
    expect(flagged.stderr).toContain(`resume it first (referral-manager --key-prefix ${w.fx.prefix} generate --resume autumn)`);

    // an earlier run stopped between making a user's tokens and recording them: resume adopts them
    const store = new CampaignStore(w.fx.redis, w.fx.prefix);
    const waiting = [...(await waitingUsers(w.fx, await holdings(w.sims['sat-d']!), 'autumn', 'sat-d'))];
    expect(waiting.some(([, m]) => m !== undefined), 'some tokens made but not delivered').toBe(true);
    const orphan = waiting.find(([, m]) => m === undefined)?.[0]!;
    expect(orphan, 'a user the failed run never reached').toBeDefined();
    const orphanTokens = (await w.fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-d', ownerUserId: orphan }], perUser: PER_USER, campaignId: 'autumn' })).tokens;
    // ...which the satellite does not have: the previous run never recorded them
    await control(w.sims['sat-d']!, 'POST', '/sim/fail', { after: null });

    const resumed = await w.gen(['--resume', 'autumn', '--json']);
    expect(resumed.code, resumed.stderr).toBe(0);
    await expectServed(w.fx, 'sat-c', w.sims['sat-c']!, PER_USER, 'autumn');
    await expectServed(w.fx, 'sat-d', w.sims['sat-d']!, PER_USER, 'autumn');
    expect((await holdings(w.sims['sat-d']!))[orphan]!.sort()).toEqual(orphanTokens.map((t) => t.token).sort());
    // the adopted set counts as made, so `campaigns show` adds up: every user served once, made = delivered
    expect(await store.progress('autumn', 'sat-d')).toMatchObject({ usersServed: USERS, tokensMade: USERS * PER_USER, status: 'done' });
  });
});

describe('--resume after one of the campaign\'s satellites was removed', () => {
  let w: Awaited<ReturnType<typeof world>>;
  beforeAll(async () => {
    // the last one fails half-way
    w = await world(['sat-gone', 'sat-left'], { failAfter: (USERS * PER_USER) / 2 });
  });
  afterAll(() => w?.close());

  it('serves the others and reports the removed one skipped (exit 0), instead of failing the whole resume', async () => {
    const first = await w.gen(['--all', '--per-user', String(PER_USER), '--campaign', 'orphaned', '--json']);
    expect(first.code).toBe(1);
    const removed = await runCli(['satellites', 'remove', 'sat-gone'], w.env);
    expect(removed.code, removed.stderr).toBe(0);
    await control(w.sims['sat-left']!, 'POST', '/sim/fail', { after: null });

    const resumed = await w.gen(['--resume', 'orphaned', '--json']);
    expect(resumed.code, resumed.stderr).toBe(0);
    const byId = Object.fromEntries(JSON.parse(resumed.stdout).satellites.map((r: { satelliteId: string }) => [r.satelliteId, r]));
    expect(byId['sat-gone']).toMatchObject({ status: 'skipped', error: expect.stringMatching(/no longer registered/), tokensMade: 0 });
    expect(byId['sat-left']).toMatchObject({ status: 'done' });
    expect(resumed.stderr).toMatch(/satellite sat-gone skipped: no longer registered/);
    await expectServed(w.fx, 'sat-left', w.sims['sat-left']!, PER_USER, 'orphaned');
  });
});

// a removed satellite that had failed stayed `failed` in the record: the campaign could never end `done`
describe('--resume after a satellite that failed half-way was removed', () => {
  let w: Awaited<ReturnType<typeof world>>;
  beforeAll(async () => {
    w = await world(['sat-kept', 'sat-dropped'], { failAfter: (USERS * PER_USER) / 2 });
  });
  afterAll(() => w?.close());

  it('records it removed, and the campaign ends done', async () => {
    expect((await w.gen(['--all', '--per-user', String(PER_USER), '--campaign', 'dropped', '--json'])).code).toBe(1);
    expect((await runCli(['satellites', 'remove', 'sat-dropped'], w.env)).code).toBe(0);
    const resumed = await w.gen(['--resume', 'dropped', '--json']);
    expect(resumed.code, resumed.stderr).toBe(0);
    const shown = JSON.parse((await runCli(['campaigns', 'show', 'dropped', '--json'], w.env)).stdout);
    expect(shown.status).toBe('done');
    expect(shown.progress['sat-dropped']).toMatchObject({ status: 'removed', lastError: expect.stringMatching(/no longer registered/) });
    expect(shown.progress['sat-kept']).toMatchObject({ status: 'done' });
  });
});

describe('--resume after the only satellite, which failed half-way, was removed', () => {
  let w: Awaited<ReturnType<typeof world>>;
  beforeAll(async () => {
    w = await world(['sat-only'], { failAfter: (USERS * PER_USER) / 2 });
  });
  afterAll(() => w?.close());

  it('exits 1 with nothing left to serve, and records it removed: the campaign is done', async () => {
    expect((await w.gen(['--all', '--per-user', String(PER_USER), '--campaign', 'alone', '--json'])).code).toBe(1);
    expect((await runCli(['satellites', 'remove', 'sat-only'], w.env)).code).toBe(0);
    const resumed = await w.gen(['--resume', 'alone', '--json']);
    expect(resumed.code).toBe(1);
    expect(resumed.stderr).toMatch(/has no satellite left to serve/);
    const shown = JSON.parse((await runCli(['campaigns', 'show', 'alone', '--json'], w.env)).stdout);
    expect(shown.status).toBe('done');
    expect(shown.progress['sat-only']).toMatchObject({ status: 'removed' });
  });
});

// the run read the satellite's url and key once: removed while served, it kept receiving new tokens to the
// end of its listing (exit 0, done), though a resume, and the admin route, serve no removed satellite
describe('a satellite removed (satellites remove) while a run serves it', () => {
  it('gets no push after the removal: it ends removed, skipped in the report, and the others are served (exit 0)', () => withEngine(async (fx, handWritten) => {
    const pushed: string[] = [];
    await handWritten('sat-retired', () => ({ userIds: ['u0', 'u1', 'u2'], nextCursor: null }), async (tokens) => {
      pushed.push(...tokens.map((t) => t.userId));
      if (pushed.length === 1) await new SatelliteRegistry(fx.redis, fx.prefix).remove('sat-retired');
      return tokens.length;
    });
    await handWritten('sat-staying', () => ({ userIds: ['v0', 'v1'], nextCursor: null }), (tokens) => tokens.length);
    const env = { KEY_PREFIX: fx.prefix };
    const run = await runCli(['generate', '--all', '--per-user', '1', '--batch-size', '1', '--campaign', 'retired', '--json'], env);
    expect(run.code, run.stderr).toBe(0);
    expect(pushed).toEqual(['u0']);
    const byId = Object.fromEntries(JSON.parse(run.stdout).satellites.map((r: { satelliteId: string }) => [r.satelliteId, r]));
    expect(byId['sat-retired']).toMatchObject({ status: 'skipped', error: expect.stringMatching(/no longer registered.*removed while this run served it/), tokensDelivered: 1 });
    expect(byId['sat-staying']).toMatchObject({ status: 'done', tokensDelivered: 2 });
    expect(run.stderr).toMatch(/satellite sat-retired stopped: no longer registered/);
    const shown = JSON.parse((await runCli(['campaigns', 'show', 'retired', '--json'], env)).stdout);
    expect(shown.status).toBe('done');
    expect(shown.progress['sat-retired']).toMatchObject({ status: 'removed', tokensDelivered: 1 });
  }));
});

describe('a satellite refusing some users (accounts closed after the listing)', () => {
  let w: Awaited<ReturnType<typeof world>>;
  beforeAll(async () => {
    w = await world(['sat-r'], { failAfter: (USERS * PER_USER) / 2 });
  });
  afterAll(() => w?.close());

  it('--resume delivers to every other user, revokes the refused users\' tokens, and does not push them again', async () => {
    const first = await w.gen(['--all', '--per-user', String(PER_USER), '--campaign', 'closed', '--batch-size', '1500', '--json']);
    expect(first.code).toBe(1);
    const store = new CampaignStore(w.fx.redis, w.fx.prefix);
    const waiting = await waitingUsers(w.fx, await holdings(w.sims['sat-r']!), 'closed', 'sat-r');
    // three users with tokens made but not delivered close their accounts, spread over the pending batch
    const pending = [...waiting].filter(([, m]) => m !== undefined).map(([u]) => u);
    expect(pending.length).toBeGreaterThan(100);
    const gone = [pending[3]!, pending[50]!, pending[pending.length - 1]!];
    const goneTokens = gone.flatMap((u) => waiting.get(u)!);
    expect(await control(w.sims['sat-r']!, 'POST', '/sim/leave', { userIds: gone })).toEqual({ left: 3 });
    await control(w.sims['sat-r']!, 'POST', '/sim/fail', { after: null });

    // before, the satellite's 400 for the batch holding them failed every --resume, and nobody else in it was served
    const resumed = await w.gen(['--resume', 'closed', '--json']);
    expect(resumed.code, resumed.stderr).toBe(0);
    const report = JSON.parse(resumed.stdout).satellites[0];
    expect(report).toMatchObject({ status: 'done', usersRefused: 3 });
    expect(report.refusal).toMatch(/HTTP 400 invalid_request: unknown userId/);
    expect(resumed.stderr).toMatch(/satellite sat-r: 3 users not given this campaign's tokens \(first .*unknown userId/);

    const now = await holdings(w.sims['sat-r']!);
    expect(Object.keys(now)).toHaveLength(USERS - 3);
    expect(Object.values(now).filter((t) => t.length !== PER_USER)).toEqual([]);
    for (const t of goneTokens) expect((await w.fx.engine.lookup(t))?.state, t).toBe('revoked');
    expect(await store.progress('closed', 'sat-r')).toMatchObject({ usersRefused: 3, tokensDelivered: (USERS - 3) * PER_USER, status: 'done' });
    // who they were, for the satellite's team
    const listed = await runCli(['campaigns', 'refused', 'closed'], w.env);
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.stdout).toBe([...gone].sort().map((u) => `sat-r\t${u}\n`).join(''));
    const json = await runCli(['campaigns', 'refused', 'closed', '--satellite', 'sat-r', '--json'], w.env);
    expect(JSON.parse(json.stdout)).toEqual({ 'sat-r': [...gone].sort() });
    const other = await runCli(['campaigns', 'refused', 'closed', '--satellite', 'sat-x'], w.env);
    expect([other.code, other.stderr]).toEqual([1, expect.stringContaining('campaign "closed" has no satellite "sat-x"')]);

    // settled: a second --resume pushes nothing, refuses nobody again, and fails no call
    const again = await w.gen(['--resume', 'closed', '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout).satellites[0]).toMatchObject({ tokensDelivered: 0, usersRefused: 0, failures: 0, status: 'done' });
  });
});

describe('dry run and usage', () => {
  let w: Awaited<ReturnType<typeof world>>;
  beforeAll(async () => {
    w = await world(['sat-e']);
  });
  afterAll(() => w?.close());

  async function keyCount(): Promise<number> {
    let n = 0;
    let cursor = '0';
    do {
      const [next, keys] = await (w.fx.redis as import('ioredis').Redis).scan(cursor, 'MATCH', `${w.fx.prefix}:*`, 'COUNT', 1000);
      cursor = next;
      n += keys.length;
    } while (cursor !== '0');
    return n;
  }

  it('--dry-run changes nothing and says what would happen', async () => {
    const before = { keys: await keyCount(), held: await holdings(w.sims['sat-e']!) };
    const run = await w.gen(['--satellite', 'sat-e', '--per-user', '2', '--campaign', 'dry', '--dry-run']);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/dry run \(nothing changed\) of campaign dry/);
    expect(run.stdout).toMatch(new RegExp(`sat-e\\s+${USERS}\\s+${USERS * 2}\\s+0\\s+0\\s+0\\s+dry-run`));
    expect(await keyCount()).toBe(before.keys);
    expect(await holdings(w.sims['sat-e']!)).toEqual(before.held);
    expect(await new CampaignStore(w.fx.redis, w.fx.prefix).meta('dry')).toBeUndefined();
  });

  it.each([
    [['--per-user', '3'], /choose the satellites/],
    [['--all', '--satellite', 'sat-e', '--per-user', '3'], /choose the satellites/],
    [['--all'], /--per-user <n> is required/],
    [['--all', '--per-user', 'three'], /--per-user must be an integer/],
    [['--all', '--per-user', '0'], /--per-user must be an integer/],
    [['--all', '--per-user', '10001'], /--per-user must be an integer 1\.\.10000/],
    [['--all', '--per-user', '3', '--expires', 'soon'], /--expires must look like/],
    [['--all', '--per-user', '3', '--expires', '0d'], /--expires must be longer than 0/],
    [['--all', '--per-user', '3', '--expires', '3000000d', '--dry-run'], /end before the year 10000/],
    [['--resume', 'x', '--all'], /--resume takes the campaign's own settings/],
    [['--resume', 'x', '--per-user', '3'], /--resume takes the campaign's own settings/],
    [['--resume', 'x', '--expires', '10d'], /--resume takes the campaign's own settings/],
    [['--resume', 'x', '--campaign', 'y'], /--resume takes the campaign's own settings/],
    [['--all', '--per-user', '3', '--campaign', 'c}:made:x'], /--campaign: must not contain \{ or \}/],
    [['--all', '--per-user', '3', '--no-such-flag'], /unknown option/],
  ])('bad flags %j → exit 2 with the usage line', async (args, message) => {
    const run = await w.gen(args as string[]);
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(message as RegExp);
    expect(run.stderr).toMatch(/Usage: referral-manager generate \[options\]/);
  });

  it('rerunning a campaign with another --expires keeps the campaign\'s expiry and says so', async () => {
    const first = await w.gen(['--all', '--per-user', '1', '--campaign', 'spring', '--expires', '10d']);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stderr).not.toMatch(/note:/);
    const expiresAt = (await new CampaignStore(w.fx.redis, w.fx.prefix).meta('spring'))!.expiresAt!;
    const again = await w.gen(['--all', '--per-user', '1', '--campaign', 'spring', '--expires', '20d']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toContain(`note: campaign "spring" keeps its expiry ${new Date(expiresAt).toISOString()}; --expires applies to new campaigns only`);
    expect((await new CampaignStore(w.fx.redis, w.fx.prefix).meta('spring'))!.expiresAt).toBe(expiresAt);
    // another count is refused, the campaign's said as counted
    const other = await w.gen(['--all', '--per-user', '2', '--campaign', 'spring']);
    expect(other.code).toBe(1);
    expect(other.stderr).toContain('campaign "spring" makes 1 token per user, not 2: choose another --campaign');
  });

  it('unknown satellite or campaign → exit 1 and a clear message', async () => {
    const sat = await w.gen(['--satellite', 'nope', '--per-user', '3']);
    expect(sat.code).toBe(1);
    expect(sat.stderr).toMatch(/satellite "nope" is not registered/);
    const camp = await w.gen(['--resume', 'nope']);
    expect(camp.code).toBe(1);
    expect(camp.stderr).toMatch(/campaign "nope" does not exist/);
  });
});

describe('dry run of a campaign with tokens made but not delivered', () => {
  let w: Awaited<ReturnType<typeof world>>;
  beforeAll(async () => {
    w = await world(['sat-f'], { failAfter: (USERS * PER_USER) / 2 });
  });
  afterAll(() => w?.close());

  it('--resume --dry-run and --campaign --dry-run deliver nothing and record nothing', async () => {
    const first = await w.gen(['--all', '--per-user', String(PER_USER), '--campaign', 'winter', '--batch-size', '1500']);
    expect(first.code).toBe(1);
    await control(w.sims['sat-f']!, 'POST', '/sim/fail', { after: null });
    const store = new CampaignStore(w.fx.redis, w.fx.prefix);
    const before = { held: await holdings(w.sims['sat-f']!), dlv: await w.fx.redis.scard(`${w.fx.prefix}:{camp:winter}:dlv:sat-f`) };
    // what the failed run made and did not deliver, which the resume pushes
    let undelivered = 0;
    for await (const page of store.allMade('winter', 'sat-f')) {
      const done = await store.settled('winter', 'sat-f', page.map(([u]) => u));
      undelivered += page.filter((_, i) => !done[i]).reduce((n, [, t]) => n + t.length, 0);
    }
    expect(undelivered).toBeGreaterThan(0);
    for (const args of [['--resume', 'winter'], ['--all', '--per-user', String(PER_USER), '--campaign', 'winter']]) {
      const dry = await w.gen([...args, '--dry-run', '--json']);
      expect(dry.code, dry.stderr).toBe(0);
      // it said 0 to deliver, and the real resume then delivered them
      expect(JSON.parse(dry.stdout).satellites.find((r: { satelliteId: string }) => r.satelliteId === 'sat-f')).toMatchObject({ tokensDelivered: undelivered, status: 'dry-run' });
      expect(await holdings(w.sims['sat-f']!)).toEqual(before.held);
      expect(await w.fx.redis.scard(`${w.fx.prefix}:{camp:winter}:dlv:sat-f`)).toBe(before.dlv);
    }
    expect((await store.progress('winter', 'sat-f')).status).toBe('failed');
    const resumed = await w.gen(['--resume', 'winter']);
    expect(resumed.code, resumed.stderr).toBe(0);
    await expectServed(w.fx, 'sat-f', w.sims['sat-f']!, PER_USER, 'winter');
  });
});

describe('--all with a satellite registered without a url (it only redeems)', () => {
  let w: Awaited<ReturnType<typeof world>>;
  beforeAll(async () => {
    w = await world(['sat-h']);
    await new SatelliteRegistry(w.fx.redis, w.fx.prefix).add({ id: 'redeem-only' });
  });
  afterAll(() => w?.close());

  it('serves the others, reports it skipped (exit 0), keeps it out of the campaign, and serves it on the same run once it has a url', async () => {
    const dry = await w.gen(['--all', '--per-user', '2', '--campaign', 'mixed', '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toMatch(/redeem-only\s+0\s+0\s+0\s+0\s+0\s+skipped/);
    // a dry run without --campaign made no campaign: its hint names none (it named the id it drew)
    const unnamed = await w.gen(['--all', '--per-user', '2', '--dry-run']);
    expect(unnamed.stderr).toMatch(/, referral-manager generate --all --per-user 2 serves it$/m);

    const run = await w.gen(['--all', '--per-user', '2', '--campaign', 'mixed', '--json']);
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).satellites).toEqual([
      expect.objectContaining({ satelliteId: 'sat-h', status: 'done', usersServed: USERS }),
      { satelliteId: 'redeem-only', usersListed: 0, usersServed: 0, tokensMade: 0, tokensDelivered: 0, usersRefused: 0, failures: 0, usersInvalid: 0, status: 'skipped', error: 'no url registered' },
    ]);
    expect(run.stderr).toMatch(/satellite redeem-only skipped: no url registered; after referral-manager satellites update redeem-only --url <url>, referral-manager generate --all --per-user 2 --campaign mixed serves it/);
    await expectServed(w.fx, 'sat-h', w.sims['sat-h']!, 2, 'mixed');
    // not pending for ever: the campaign never took it, so it is done
    const store = new CampaignStore(w.fx.redis, w.fx.prefix);
    expect((await store.meta('mixed'))!.satellites).toEqual(['sat-h']);
    const show = await runCli(['campaigns', 'show', 'mixed'], w.env);
    expect(show.stdout).toMatch(/^campaign mixed: .*, done$/m);
    expect(show.stdout).not.toContain('redeem-only');

    // named explicitly, it is still an error
    const named = await w.gen(['--satellite', 'redeem-only', '--per-user', '2', '--campaign', 'mixed']);
    expect(named.code).toBe(1);
    expect(named.stderr).toMatch(/satellite "redeem-only" has no url: referral-manager satellites update redeem-only --url <url>/);

    // given a url: the same command line serves it, and nobody of sat-h gets a second set
    const sim = await startSatelliteSim({ id: 'redeem-only', users: USERS, failAfter: null });
    try {
      const updated = await runCli(['satellites', 'update', 'redeem-only', '--url', sim.url], w.env);
      expect(updated.code, updated.stderr).toBe(0);
      const again = await w.gen(['--all', '--per-user', '2', '--campaign', 'mixed']);
      expect(again.code, again.stderr).toBe(0);
      expect(again.stderr).not.toMatch(/skipped/);
      await expectServed(w.fx, 'redeem-only', sim, 2, 'mixed');
      await expectServed(w.fx, 'sat-h', w.sims['sat-h']!, 2, 'mixed');
      expect((await store.meta('mixed'))!.satellites).toEqual(['sat-h', 'redeem-only']);
    } finally {
      await sim.close();
    }
  });

  it('--all when no satellite has a url → exit 1, nothing recorded', () => withEngine(async (fx) => {
    await new SatelliteRegistry(fx.redis, fx.prefix).add({ id: 'redeem-only' });
    const run = await runCli(['generate', '--all', '--per-user', '2', '--campaign', 'none'], { KEY_PREFIX: fx.prefix });
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/no registered satellite has a url: nothing to serve \(redeem-only no url registered; referral-manager satellites update <id> --url <url> gives one\)/);
    expect(await new CampaignStore(fx.redis, fx.prefix).meta('none')).toBeUndefined();
  }));
});

describe('outbound keys sealed with OUTBOUND_KEY_SECRET', () => {
  it('a key added through the CLI is stored sealed; generate opens it with the secret, and without it stops before calling', async () => {
    const fx = await engineFixture({ label: 'gen' });
    const outboundKey = 'outbound-sealed-0123456789abcdef0123456789abcdef';
    const sim = await startSatelliteSim({ id: 'sat-s', users: 40, outboundKey });
    const sealed = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1', OUTBOUND_KEY_SECRET: randomBytes(32).toString('hex') };
    try {
      const add = await runCli(['satellites', 'add', '--id', 'sat-s', '--url', sim.url, '--outbound-key', outboundKey], sealed);
      expect(add.code, add.stderr).toBe(0);
      const stored = await fx.redis.hget(`${fx.prefix}:{sat}:s:sat-s`, 'outboundKey');
      expect(stored).toMatch(/^sealed:v1:/);
      expect(stored).not.toContain(outboundKey);

      const without = await runCli(['generate', '--all', '--per-user', '2', '--campaign', 'nosecret'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
      expect(without.code).toBe(1);
      expect(without.stderr).toMatch(/the outbound key of satellite "sat-s" is sealed, and OUTBOUND_KEY_SECRET is not set here/);
      expect(Object.values(await holdings(sim)).flat()).toEqual([]);

      // the satellite refuses any key but its own (401), so a delivery proves the key went out opened
      const run = await runCli(['generate', '--all', '--per-user', '2', '--campaign', 'withsecret', '--json'], sealed);
      expect(run.code, run.stderr).toBe(0);
      const held = await holdings(sim);
      expect(Object.keys(held)).toHaveLength(40);
      expect(Object.values(held).every((t) => t.length === 2)).toBe(true);

      const noSecret = await runCli(['satellites', 'seal-keys'], { KEY_PREFIX: fx.prefix });
      expect(noSecret.code).toBe(1);
      expect(noSecret.stderr).toMatch(/OUTBOUND_KEY_SECRET is not set: nothing to seal/);
      const seal = await runCli(['satellites', 'seal-keys', '--json'], sealed);
      expect(seal.code, seal.stderr).toBe(0);
      expect(JSON.parse(seal.stdout)).toEqual({ sealed: [], current: 1, unreadable: [] });
      const other = await runCli(['satellites', 'seal-keys'], { ...sealed, OUTBOUND_KEY_SECRET: randomBytes(32).toString('hex') });
      expect(other.code).toBe(1);
      expect(other.stderr).toMatch(/opens the outbound key of: sat-s/);
    } finally {
      await sim.close();
      await fx.close();
    }
  });
});

describe('--batch-size smaller than --per-user', () => {
  it('no request to the satellite carries more than --batch-size tokens: a user\'s set is split', async () => {
    const fx = await engineFixture({ label: 'gen' });
    const satellite = new SimSatellite('sat-g', 40);
    // sizes as received, with no body limit: a limit of 5 tokens' bytes took pushes of 6, and a 413 hid larger ones
    const sizes: number[] = [];
    const deliver = satellite.deliver.bind(satellite);
    satellite.deliver = (pairs) => (sizes.push(pairs.length), deliver(pairs));
    const server = createSimServer({ satellite });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      await new SatelliteRegistry(fx.redis, fx.prefix).add({ id: 'sat-g', url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });
      const run = await runCli(['generate', '--all', '--per-user', '10', '--batch-size', '5', '--campaign', 'split', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
      expect(run.code, run.stderr).toBe(0);
      expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ usersServed: 40, tokensMade: 400, tokensDelivered: 400, failures: 0, status: 'done' });
      expect(sizes.filter((n) => n > 5)).toEqual([]);
      expect(Object.values(satellite.holdings()).every((held) => held.length === 10)).toBe(true);
      expect(await delivered(fx, 'split', 'sat-g', Object.keys(satellite.holdings()))).not.toContain(0);
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await fx.close();
    }
  });
});

describe('--batch-size larger than --per-user', () => {
  // a set split over two pushes for no reason: the satellite shows the user a part, and a stop between the
  // two leaves it holding part of a set
  it('pushes each user\'s set whole, in one request, starting a new one when it does not fit', () => withEngine(async (fx, handWritten) => {
    const pushes: string[] = [];
    await handWritten('sat-whole', () => ({ userIds: ['u0', 'u1', 'u2'], nextCursor: null }), (tokens) => {
      pushes.push(tokens.map((t) => t.userId).join(' '));
      return tokens.length;
    });
    const run = await runCli(['generate', '--all', '--per-user', '3', '--batch-size', '5', '--campaign', 'whole', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code, run.stderr).toBe(0);
    expect(pushes).toEqual(['u0 u0 u0', 'u1 u1 u1', 'u2 u2 u2']);
  }));
});

describe('a campaign revoked between two parts of a set larger than --batch-size', () => {
  // the parts pushed stayed with the satellite, and the counts said it held nothing: a set counts delivered
  // once its last part is, which no run of a revoked campaign pushes
  it('stops before the next part, exit 1, and counts delivered the part the satellite holds', () => withEngine(async (fx, handWritten) => {
    const pushed: Pushed = [];
    await handWritten('sat-cut', () => ({ userIds: ['u0'], nextCursor: null }), async (tokens) => {
      if (!pushed.length) await fx.engine.revokeCampaign('cut');
      pushed.push(...tokens);
      return tokens.length;
    });
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
    const run = await runCli(['generate', '--all', '--per-user', '12', '--batch-size', '5', '--campaign', 'cut', '--json'], env);
    expect(run.code, run.stderr).toBe(1);
    expect(pushed).toHaveLength(5);
    const report = JSON.parse(run.stdout).satellites[0];
    expect(report).toMatchObject({ status: 'revoked', usersServed: 1, tokensMade: 12, tokensDelivered: 5 });
    expect(report.error).toMatch(/campaign "cut" was revoked at .*: its undelivered tokens are not pushed; 5 tokens of sets pushed in parts reached the satellite before \(1 user, first "u0" with 5\): counted delivered, the rest of those sets not pushed/);
    expect(run.stderr).toMatch(/satellite sat-cut stopped: campaign "cut" was revoked/);
    expect(run.stderr).not.toMatch(/--resume/);
    const shown = JSON.parse((await runCli(['campaigns', 'show', 'cut', '--json'], env)).stdout);
    expect(shown).toMatchObject({ status: 'revoked', progress: { 'sat-cut': { status: 'revoked', tokensMade: 12, tokensDelivered: 5, lastError: report.error } } });
    for (const { token } of pushed) expect((await fx.engine.lookup(token))?.state).toBe('revoked');
  }));
});

describe('a campaign stopped between two parts of a set, after other sets were finished or refused', () => {
  // only the set the satellite holds in part counts: a finished set was counted when its last part was, and
  // a refused user's parts were revoked with its set
  it('revoked: counts delivered only the part of the set still in part', () => withEngine(async (fx, handWritten) => {
    const pushed: Pushed = [];
    await handWritten('sat-parts', () => ({ userIds: ['u0', 'u1', 'u2'], nextCursor: null }), async (tokens) => {
      // u1 closed its account after its first part
      if (tokens.some((t) => t.userId === 'u1') && pushed.some((t) => t.userId === 'u1')) return { status: 409 };
      if (tokens.some((t) => t.userId === 'u2')) await fx.engine.revokeCampaign('parts');
      pushed.push(...tokens);
      return tokens.length;
    });
    const run = await runCli(['generate', '--all', '--per-user', '12', '--batch-size', '5', '--campaign', 'parts', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code, run.stderr).toBe(1);
    // pushes of 5: u0's 12 (its last 2 with u1's first 3), u1's next 5 refused, then u2's first token with u1's last 4 left out
    expect(pushed.map((t) => t.userId).join()).toBe([...Array(12).fill('u0'), ...Array(3).fill('u1'), 'u2'].join());
    const report = JSON.parse(run.stdout).satellites[0];
    expect(report).toMatchObject({ status: 'revoked', usersServed: 3, tokensMade: 36, usersRefused: 1, tokensDelivered: 13 });
    expect(report.error).toMatch(/; 1 token of sets pushed in parts reached the satellite before \(1 user, first "u2" with 1\)/);
  }));

  it('expired: counts delivered the part the satellite holds, as a revoked one does', () => withEngine(async (fx, handWritten) => {
    const pushed: Pushed = [];
    await handWritten('sat-late', () => ({ userIds: ['u0'], nextCursor: null }), async (tokens) => {
      // the first part is accepted just after the campaign expired
      const expiresAt = (await new CampaignStore(fx.redis, fx.prefix).get('late'))!.expiresAt!;
      await new Promise((r) => setTimeout(r, Math.max(0, expiresAt - Date.now() + 100)));
      pushed.push(...tokens);
      return tokens.length;
    });
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
    const run = await runCli(['generate', '--all', '--per-user', '12', '--batch-size', '5', '--campaign', 'late', '--expires', '4s', '--json'], env);
    expect(run.code, run.stderr).toBe(1);
    expect(pushed).toHaveLength(5);
    const report = JSON.parse(run.stdout).satellites[0];
    expect(report).toMatchObject({ status: 'expired', tokensMade: 12, tokensDelivered: 5 });
    expect(report.error).toMatch(/campaign "late" expired at .*; 5 tokens of sets pushed in parts reached the satellite before \(1 user, first "u0" with 5\)/);
    expect((await new CampaignStore(fx.redis, fx.prefix).get('late'))!.progress['sat-late']).toMatchObject({ status: 'expired', tokensDelivered: 5 });
  }));
});

describe('a campaign that expires between two pages of the listing', () => {
  // the next batch was left to the engine's refusal of a past expiry: the run ended failed, blaming the
  // satellite, with a resume hint that could only be refused
  it('stops as expired before making the next page\'s tokens, no resume hinted', () => withEngine(async (fx, handWritten) => {
    let listings = 0;
    await handWritten('sat-pages', () => (listings++ ? { userIds: ['u1'], nextCursor: null } : { userIds: ['u0'], nextCursor: 'p2' }), async (tokens) => {
      const expiresAt = (await new CampaignStore(fx.redis, fx.prefix).get('pages'))!.expiresAt!;
      await new Promise((r) => setTimeout(r, Math.max(0, expiresAt - Date.now() + 100)));
      return tokens.length;
    });
    const run = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'pages', '--expires', '4s', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code).toBe(1);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ status: 'expired', usersListed: 2, tokensMade: 1, tokensDelivered: 1, error: expect.stringMatching(/campaign "pages" expired at .*no more are made or pushed/) });
    expect(run.stderr).not.toContain('--resume');
  }));
});

describe('a refused push split after the campaign was revoked, or the run\'s claims lapsed, during it', () => {
  // the halves of a refused push went out unchecked: the satellite got the tokens of a campaign revoked while
  // it refused the push, and a run that had lost its claims pushed on
  for (const [what, during, status, error] of [
    ['revoked', (fx: EngineFixture) => fx.engine.revokeCampaign('halves-revoked'), 'revoked', /campaign "halves-revoked" was revoked at .*: its undelivered tokens are not pushed/],
    ['claims lapsed', (fx: EngineFixture) => fx.redis.del(new CampaignKeys(fx.prefix).run('halves-claims lapsed'), new CampaignKeys(fx.prefix).satelliteRun('sat-halves')), 'failed', /stalled past its 30 s claim, which lapsed/],
  ] as const) {
    it(`pushes none of the halves (${what})`, () => withEngine(async (fx, handWritten) => {
      const accepted: Pushed = [];
      let refused = 0;
      await handWritten('sat-halves', () => ({ userIds: ['u0', 'u1', 'u2', 'u3'], nextCursor: null }), async (tokens) => {
        // u3 closed the account: the push holding it is refused, and the run splits it
        if (tokens.some((t) => t.userId === 'u3')) {
          if (refused++ === 0) await during(fx);
          return { status: 409 };
        }
        accepted.push(...tokens);
        return tokens.length;
      });
      const run = await runCli(['generate', '--all', '--per-user', '2', '--campaign', `halves-${what}`, '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
      expect(run.code, run.stderr).toBe(1);
      expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ status, tokensMade: 8, tokensDelivered: 0, usersRefused: 0, error: expect.stringMatching(error) });
      expect([accepted, refused]).toEqual([[], 1]);
    }));
  }
});

describe('a satellite ending its listing with nextCursor ""', () => {
  it('is taken as the last page (a Go satellite\'s zero-value string), not as a cursor listing everything again', () => withEngine(async (fx, handWritten) => {
    const held = new Map<string, number>();
    let listings = 0;
    // users u0..u2 without tokens, then none: every page says nextCursor "" (no more pages)
    await handWritten(
      'sat-go',
      () => (listings++, { userIds: ['u0', 'u1', 'u2'].filter((u) => !held.has(u)), nextCursor: '' }),
      (tokens) => {
        for (const t of tokens) held.set(t.userId, (held.get(t.userId) ?? 0) + 1);
        return tokens.length;
      },
    );
    const run = await runCli(['generate', '--all', '--per-user', '2', '--campaign', 'go', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ usersServed: 3, tokensDelivered: 6, status: 'done' });
    expect(listings).toBe(1);
    expect([...held.values()]).toEqual([2, 2, 2]);
  }));
});

describe('generate interrupted (Ctrl-C, or a cron timeout\'s SIGTERM)', () => {
  // before: the process died mid-step, no hint, and --resume was refused until the claims lapsed (30 s)
  it('stops at once, records the satellite failed, releases its claims and prints the resume hint with the flags given; --resume then finishes', () => withEngine(async (fx, handWritten) => {
    let hang = true;
    let pushed!: () => void;
    const pushing = new Promise<void>((r) => (pushed = r));
    const held = new Map<string, number>();
    await handWritten('sat-int', () => ({ userIds: ['u0', 'u1', 'u2'], nextCursor: null }), (tokens) => {
      // the first push never answers (a satellite hanging): generate waits on it when the signal comes
      if (hang) return (pushed(), new Promise<never>(() => {}));
      for (const t of tokens) held.set(t.userId, (held.get(t.userId) ?? 0) + 1);
      return tokens.length;
    });
    const env = { SATELLITE_TIMEOUT_MS: '60000', SATELLITE_ATTEMPTS: '1' };
    const t0 = Date.now();
    const run = await runCli(['--key-prefix', fx.prefix, 'generate', '--all', '--per-user', '2', '--campaign', 'cut short', '--json'], env, {
      whenStarted: (proc) => void pushing.then(() => proc.kill('SIGINT')),
    });
    expect(run.code, run.stderr).toBe(130);
    expect(Date.now() - t0).toBeLessThan(20_000); // not the 60 s the hanging push would take
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ status: 'failed', error: 'interrupted by SIGINT', tokensMade: 6, tokensDelivered: 0 });
    expect(run.stderr).toContain(`referral-manager --key-prefix ${fx.prefix} generate --resume 'cut short'`);
    expect(await new CampaignStore(fx.redis, fx.prefix).progress('cut short', 'sat-int')).toMatchObject({ status: 'failed', lastError: 'interrupted by SIGINT' });

    hang = false;
    const resumed = await runCli(['--key-prefix', fx.prefix, 'generate', '--resume', 'cut short', '--json'], env);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(JSON.parse(resumed.stdout).satellites[0]).toMatchObject({ status: 'done', tokensDelivered: 6 });
    expect([...held.values()]).toEqual([2, 2, 2]);
  }));
});

describe('a satellite whose listing never ends (an empty page with a new cursor every time)', () => {
  // a repeated cursor was caught, an ever-new one was not: generate listed ~3,000 pages a second for ever
  it('fails that satellite after --max-pages pages, with the reason; the others are served', () => withEngine(async (fx, handWritten) => {
    let listings = 0;
    await handWritten('sat-endless', () => ({ userIds: [], nextCursor: `c${++listings}` }), (tokens) => tokens.length);
    await handWritten('sat-fine', () => ({ userIds: ['u0', 'u1'], nextCursor: null }), (tokens) => tokens.length);
    const run = await runCli(['generate', '--all', '--per-user', '1', '--max-pages', '50', '--campaign', 'endless', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code).toBe(1);
    const bySatellite = Object.fromEntries((JSON.parse(run.stdout).satellites as { satelliteId: string }[]).map((r) => [r.satelliteId, r]));
    expect(bySatellite['sat-endless']).toMatchObject({ status: 'failed', error: 'satellite listing did not end after 50 pages; raise --max-pages if it has that many users' });
    expect(bySatellite['sat-fine']).toMatchObject({ status: 'done', tokensDelivered: 2 });
    expect(listings).toBe(50);
    expect(run.stderr).toContain('--resume endless');
  }));

  it('refuses a --max-pages that is not a positive integer (usage error)', async () => {
    const run = await runCli(['generate', '--all', '--per-user', '1', '--max-pages', '0']);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('--max-pages must be an integer');
  });
});

describe('a satellite answering 429 with Retry-After', () => {
  // the backoff (~0.2 s, then doubling) ignored it: a satellite allowing one call per 5 s was reported failed
  it('is asked again no sooner than it said', () => withEngine(async (fx, handWritten) => {
    const listedAt: number[] = [];
    await handWritten(
      'sat-429',
      () => (listedAt.push(Date.now()) === 1 ? { status: 429, headers: { 'retry-after': '2' } } : { userIds: [], nextCursor: null }),
      () => ({ status: 404 }),
    );
    const run = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'patient', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '2' });
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ status: 'done', failures: 1 });
    expect(listedAt).toHaveLength(2);
    expect(listedAt[1]! - listedAt[0]!).toBeGreaterThanOrEqual(1950);
  }));
});

describe('one satellite registered twice (two ids, one url)', () => {
  // each user it lists got a set from each id, half of them owned by an id the satellite does not know
  it('is named on stderr before anything is made', () => withEngine(async (fx, handWritten) => {
    await handWritten('sat-twice', () => ({ userIds: ['u0'], nextCursor: null }), (tokens) => tokens.length);
    const registry = new SatelliteRegistry(fx.redis, fx.prefix);
    await registry.add({ id: 'sat-twice-b', url: `${(await registry.get('sat-twice'))!.url!.toUpperCase()}/` });
    const run = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'twice', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/note: satellites sat-twice, sat-twice-b have the same url http:\/\/127\.0\.0\.1:\d+: a user it lists gets a set from each/);
  }));
});

describe('a satellite listing user ids that are not valid ids', () => {
  // they were counted as failures and nothing said which or why: 'failures 2', status done, stderr silent
  it('skips them, counts them apart (usersInvalid) and names the first on stderr; the others are served', () => withEngine(async (fx, handWritten) => {
    await handWritten('sat-ids', () => ({ userIds: ['u0', '', 'x'.repeat(200)], nextCursor: null }), (tokens) => tokens.length);
    const run = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'ids', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ usersServed: 1, tokensDelivered: 1, failures: 2, usersInvalid: 2, invalidUser: '"": userId: must be 1..128 bytes, got 0', status: 'done' });
    expect(run.stderr).toContain('satellite sat-ids listed 2 user ids that are not valid ids, skipped (first "": userId: must be 1..128 bytes, got 0)');
  }));
});

describe('a satellite listing ids that are not strings, or the same id twice', () => {
  // one number among the ids failed the whole satellite ("reply has no userIds array of strings"), and a page
  // naming a user twice counted it listed twice
  it('skips a non-string id as an invalid one and counts a repeated id once', () => withEngine(async (fx, handWritten) => {
    // a map whose toString is a string made String() throw, failing the run
    await handWritten('sat-mixed', () => ({ userIds: ['u0', { toString: 'x' }, 5, 'u1', 'u1'], nextCursor: null }), (tokens) => tokens.length);
    const run = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'mixed', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ usersListed: 4, usersServed: 2, tokensDelivered: 2, usersInvalid: 2, invalidUser: '"{\\"toString\\":\\"x\\"}": userId: must be a string', status: 'done' });
  }));

  // read as MessagePack, a JSON body without its Content-Type failed as "no userIds array of strings"
  it('a JSON reply sent without a JSON Content-Type fails naming the Content-Type', async () => {
    const fx = await engineFixture({ label: 'gen' });
    const server = createServer((_req, res) => void res.writeHead(200, { 'content-type': 'text/plain' }).end(JSON.stringify({ userIds: ['u0'], nextCursor: null })));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    await new SatelliteRegistry(fx.redis, fx.prefix).add({ id: 'sat-plain', url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });
    try {
      const run = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'plain', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
      expect(run.code).toBe(1);
      expect(JSON.parse(run.stdout).satellites[0].error).toContain('HTTP 200 body not decodable as MessagePack (Content-Type "text/plain"; a JSON reply needs application/json)');
    } finally {
      server.closeAllConnections();
      server.close();
      await fx.close();
    }
  });
});

describe('a satellite whose listing breaks the contract (a 200 that is not a page)', () => {
  // the checks ran outside the call's retry loop, so the failure was not counted: 'failures 0  failed'
  it('fails the satellite with the reason, counts the failure, and does not retry it', () => withEngine(async (fx, handWritten) => {
    let listings = 0;
    await handWritten('sat-odd', () => (listings++, { users: ['u0'] }), (tokens) => tokens.length);
    const run = await runCli(['generate', '--all', '--per-user', '2', '--campaign', 'odd', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '3' });
    expect(run.code).toBe(1);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ status: 'failed', failures: 1, usersServed: 0, error: 'users-without-tokens: reply has no userIds array' });
    expect(listings).toBe(1);
    expect(await new CampaignStore(fx.redis, fx.prefix).progress('odd', 'sat-odd')).toMatchObject({ failures: 1, status: 'failed' });
  }));
});

describe('a satellite accepting fewer tokens than it was sent', () => {
  // each short reply was retried SATELLITE_ATTEMPTS times at every level of the split: hours to fail a satellite
  it('that stores at most 2 tokens a push: a short reply is retried once, then the batch is split', () => withEngine(async (fx, handWritten) => {
    const held = new Set<string>();
    let pushes = 0;
    await handWritten('sat-two', () => ({ userIds: ['u0', 'u1', 'u2', 'u3'], nextCursor: null }), (tokens) => {
      pushes++;
      for (const t of tokens.slice(0, 2)) held.add(t.token);
      return Math.min(2, tokens.length);
    });
    const run = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'two', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '3' });
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ tokensDelivered: 4, usersRefused: 0, status: 'done' });
    expect(held.size).toBe(4);
    expect(pushes).toBe(4); // the batch of 4 twice, then its two halves
  }));

  // the satellite held the first part of the set, yet every token of it was revoked as if nobody held them
  it('after taking an earlier part of a user\'s set split by --batch-size, the user is refused with the set kept', () => withEngine(async (fx, handWritten) => {
    const pushed: Pushed = [];
    await handWritten('sat-part', () => ({ userIds: ['u0'], nextCursor: null }), (tokens) => {
      if (pushed.length) return 0;
      pushed.push(...tokens);
      return tokens.length;
    });
    const run = await runCli(['generate', '--all', '--per-user', '4', '--batch-size', '2', '--campaign', 'part', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ usersRefused: 1, usersRefusedKept: 1, status: 'done' });
    expect(pushed).toHaveLength(2);
    for (const { token } of pushed) expect((await fx.engine.lookup(token))?.state).toBe('unredeemed');
  }));

  it('is not recorded as delivered: the run fails, and --resume sends the batch again', () => withEngine(async (fx, handWritten) => {
    const held = new Map<string, Set<string>>();
    let short = true;
    // users u0..u3; while `short`, a delivery stores all but its last token and says so in `accepted`
    await handWritten(
      'sat-s',
      () => ({ userIds: ['u0', 'u1', 'u2', 'u3'].filter((u) => !held.has(u)), nextCursor: null }),
      (tokens) => {
        const kept = short ? tokens.slice(0, -1) : tokens;
        for (const t of kept) held.set(t.userId, (held.get(t.userId) ?? new Set()).add(t.token));
        return kept.length;
      },
    );
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
    const run = await runCli(['generate', '--all', '--per-user', '2', '--campaign', 'short', '--json'], env);
    expect(run.code, run.stdout).toBe(1);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ tokensMade: 8, tokensDelivered: 0, status: 'failed' });
    expect(run.stderr).toContain('accepted 7 of 8');
    expect(await delivered(fx, 'short', 'sat-s', ['u0', 'u1', 'u2', 'u3'])).toEqual([0, 0, 0, 0]);
    // it accepted none of the 4 users alone either: the satellite is at fault, not its users, so none is refused or revoked
    expect(JSON.parse(run.stdout).satellites[0].usersRefused).toBe(0);
    expect((await fx.engine.stats()).satellites['sat-s']).toMatchObject({ unredeemed: 8, revoked: 0 });

    short = false;
    const resumed = await runCli(['generate', '--resume', 'short', '--json'], env);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect([...held.values()].map((s) => s.size)).toEqual([2, 2, 2, 2]);
  }));
  it('that drops a few users silently: the others are delivered in the same run, the dropped ones refused and revoked', () => withEngine(async (fx, handWritten) => {
    const held = new Map<string, string[]>();
    const users = ['u0', 'u1', 'u2', 'u3', 'u4'];
    // u1 and u3 are gone: their tokens are left out of what it stores and of `accepted`
    await handWritten(
      'sat-q',
      () => ({ userIds: users.filter((u) => !held.has(u)), nextCursor: null }),
      (tokens) => {
        const kept = tokens.filter((t) => t.userId !== 'u1' && t.userId !== 'u3');
        for (const t of kept) held.set(t.userId, [...(held.get(t.userId) ?? []), t.token]);
        return kept.length;
      },
    );
    const run = await runCli(['generate', '--all', '--per-user', '2', '--campaign', 'quiet', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ tokensMade: 10, tokensDelivered: 6, usersRefused: 2, status: 'done' });
    expect([...held.keys()].sort()).toEqual(['u0', 'u2', 'u4']);
    expect((await fx.engine.stats()).satellites['sat-q']).toMatchObject({ unredeemed: 6, revoked: 4 });

    // a later campaign finds only the two gone users listed: the satellite accepts no part of the batch,
    // but takes an empty push (its route works), so they are refused user by user, not a failed run
    const later = await runCli(['generate', '--all', '--per-user', '2', '--campaign', 'quiet-2', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(later.code, later.stderr).toBe(0);
    expect(JSON.parse(later.stdout).satellites[0]).toMatchObject({ usersServed: 2, tokensDelivered: 0, usersRefused: 2, status: 'done' });
    expect(later.stderr).not.toContain('the other users were served');
  }));

  // an empty list refused as invalid tells nothing about the route: its gone users are refused, not a failed run
  it('that refuses an empty push with 400 and every listed user with 410 (all gone): they are refused, the run is done', () => withEngine(async (fx, handWritten) => {
    await handWritten('sat-strict', () => ({ userIds: ['x1', 'x2'], nextCursor: null }), (tokens) => ({ status: tokens.length === 0 ? 400 : 410 }));
    const run = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'strict', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ usersRefused: 2, tokensDelivered: 0, status: 'done' });
  }));

  // a daily run with a few new users refused them all (below 4 a batch) and revoked their tokens: done, exit 0
  it('whose token route is broken (404 for every push): a run of 3 users fails, revokes nothing, and says so', () => withEngine(async (fx, handWritten) => {
    let pushes = 0;
    await handWritten('sat-404', () => ({ userIds: ['u0', 'u1', 'u2'], nextCursor: null }), () => (pushes++, { status: 404 }));
    const run = await runCli(['generate', '--all', '--per-user', '2', '--campaign', 'daily', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code).toBe(1);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ usersServed: 3, tokensDelivered: 0, usersRefused: 0, status: 'failed', error: expect.stringContaining('HTTP 404') });
    expect(run.stderr).not.toContain('the other users were served');
    expect(run.stderr).toContain('--resume daily');
    expect(pushes).toBeGreaterThan(1); // split down to single users first: one gone user must not fail a run
    expect(JSON.parse(run.stdout).satellites[0].error).toContain('an empty push too: POST /referrals/v1/tokens: HTTP 404');
    expect((await fx.engine.stats()).satellites['sat-404']).toMatchObject({ unredeemed: 6, revoked: 0 });
  }));

  it('answering 410 Gone or 404 for a user: the same as a short reply; a 404 for every user of 4 or more fails it', () => withEngine(async (fx, handWritten) => {
    const held = new Map<string, string[]>();
    let gone = new Map<string, number>([['u1', 410], ['u2', 404]]);
    await handWritten(
      'sat-g',
      () => ({ userIds: ['u0', 'u1', 'u2', 'u3', 'u4', 'u5'].filter((u) => !held.has(u)), nextCursor: null }),
      (tokens) => {
        const refused = tokens.map((t) => gone.get(t.userId)).find((s) => s !== undefined);
        if (refused) return { status: refused };
        for (const t of tokens) held.set(t.userId, [...(held.get(t.userId) ?? []), t.token]);
        return tokens.length;
      },
    );
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
    const run = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'gone', '--json'], env);
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ tokensDelivered: 4, usersRefused: 2, status: 'done' });
    expect([...held.keys()].sort()).toEqual(['u0', 'u3', 'u4', 'u5']);

    // a satellite answering 404 to every push (no such route): 4 users, none accepted alone, fail the run
    held.clear();
    gone = new Map(['u0', 'u1', 'u2', 'u3', 'u4', 'u5'].map((u) => [u, 404]));
    const lost = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'no-route', '--json'], env);
    expect(lost.code).toBe(1);
    expect(JSON.parse(lost.stdout).satellites[0]).toMatchObject({ tokensDelivered: 0, usersRefused: 0, status: 'failed' });
  }));

  it('a user refused in the first part of a set larger than a push gets no later part pushed', () => withEngine(async (fx, handWritten) => {
    const pushed: Pushed[] = [];
    await handWritten('sat-part', () => ({ userIds: ['u0', 'u1', 'u2'], nextCursor: null }), (tokens) => {
      pushed.push(tokens);
      return tokens.some((t) => t.userId === 'u1') ? { status: 410 } : tokens.length;
    });
    const run = await runCli(['generate', '--all', '--per-user', '4', '--batch-size', '2', '--campaign', 'parts', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ tokensDelivered: 8, usersRefused: 1, status: 'done' });
    // its tokens are revoked: a later part the satellite took would hand the user tokens that cannot be redeemed
    expect(pushed.filter((p) => p.some((t) => t.userId === 'u1')).map((p) => p.length)).toEqual([2]);
    expect((await fx.engine.stats()).satellites['sat-part']).toMatchObject({ unredeemed: 8, revoked: 4 });
  }));

  // the edge of ALL_REFUSED_FAILS, from both sides, with a token route that works (an empty push is taken)
  it('3 listed users refused alone are refused; 4 fail the run, refusing nobody', () => withEngine(async (fx, handWritten) => {
    let listed = ['a0', 'a1', 'a2'];
    await handWritten('sat-edge', () => ({ userIds: listed, nextCursor: null }), (tokens) => (tokens.length ? { status: 422 } : 0));
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
    const three = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'three', '--json'], env);
    expect(three.code, three.stderr).toBe(0);
    expect(JSON.parse(three.stdout).satellites[0]).toMatchObject({ usersRefused: 3, status: 'done' });

    listed = ['b0', 'b1', 'b2', 'b3'];
    const four = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'four', '--json'], env);
    expect(four.code).toBe(1);
    expect(JSON.parse(four.stdout).satellites[0]).toMatchObject({ usersServed: 4, tokensDelivered: 0, usersRefused: 0, status: 'failed', error: expect.stringContaining('HTTP 422') });
    expect((await fx.engine.stats()).satellites['sat-edge']).toMatchObject({ unredeemed: 4, revoked: 3 });
  }));

  // the 4 users the satellite refused alone were taken for a satellite refusing every push only when it accepted
  // no part of the batch: one user it took is enough to tell the users, not the satellite, are at fault
  it('4 listed users refused alone beside one it accepts are refused, and the run is done', () => withEngine(async (fx, handWritten) => {
    const held: string[] = [];
    await handWritten('sat-mixed', () => ({ userIds: ['u0', 'u1', 'u2', 'u3', 'u4'], nextCursor: null }), (tokens) => {
      if (tokens.some((t) => t.userId !== 'u0')) return { status: 422 };
      held.push(...tokens.map((t) => t.userId));
      return tokens.length;
    });
    const run = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'mixed', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ tokensDelivered: 1, usersRefused: 4, status: 'done' });
    expect(held).toEqual(['u0']);
  }));

  // a resume pushed a left-over set again though another campaign had served the user meanwhile; the admin
  // API makes tokens of a campaign no run records, and that campaign counts as served as much as a run's
  it('a resume pushes no left-over set of a user the admin API has served since, and revokes none of it', () => withEngine(async (fx, handWritten) => {
    let up = false;
    const held: string[] = [];
    await handWritten('sat-adm', () => ({ userIds: up ? [] : ['u0', 'u1'], nextCursor: null }), (tokens) => {
      if (!up) return { status: 503 };
      held.push(...tokens.map((t) => t.userId));
      return tokens.length;
    });
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
    expect((await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'first'], env)).code).toBe(1);
    await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-adm', ownerUserId: 'u0' }], perUser: 1, campaignId: 'admin-grant' });
    up = true;
    const resumed = await runCli(['generate', '--resume', 'first', '--json'], env);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(held).toEqual(['u1']);
    expect(JSON.parse(resumed.stdout).satellites[0]).toMatchObject({ tokensDelivered: 1, usersRefused: 1, usersRefusedKept: 1, refusal: expect.stringContaining('served by campaign "admin-grant"') });
    expect((await fx.engine.stats()).satellites['sat-adm']).toMatchObject({ unredeemed: 3, revoked: 0 });
  }));

  // a refusal that is no 413 says nothing of the satellite's body limit, and the empty push asking whether its
  // token route works is asked once a run: more requests did no harm the run could see, only the satellite
  it('a satellite refusing some users gets pushes of the full --batch-size after, and the first refusal is the one named', () => withEngine(async (fx, handWritten) => {
    const pushes: string[][] = [];
    const users = Array.from({ length: 8 }, (_, i) => `u${i}`);
    await handWritten('sat-few', () => ({ userIds: users, nextCursor: null }), (tokens) => {
      pushes.push(tokens.map((t) => t.userId));
      if (tokens.some((t) => t.userId === 'u0')) return { status: 410 };
      if (tokens.some((t) => t.userId === 'u4')) return { status: 422 };
      return tokens.length;
    });
    const run = await runCli(['generate', '--all', '--per-user', '1', '--batch-size', '4', '--campaign', 'few', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ tokensDelivered: 6, usersRefused: 2, status: 'done', refusal: expect.stringMatching(/^user "u0": .*HTTP 410/) });
    // each batch of 4 split in halves down to its refused user
    expect(pushes.map((p) => p.join(' '))).toEqual(['u0 u1 u2 u3', 'u0 u1', 'u0', 'u1', 'u2 u3', 'u4 u5 u6 u7', 'u4 u5', 'u4', 'u5', 'u6 u7']);
  }));

  it('batches the satellite refuses whole, one after another, get one empty push a run', () => withEngine(async (fx, handWritten) => {
    const pushes: string[] = [];
    await handWritten('sat-none', () => ({ userIds: ['u0', 'u1', 'u2'], nextCursor: null }), (tokens) => {
      pushes.push(tokens.map((t) => t.userId).join(' '));
      return tokens.length ? { status: 410 } : 0;
    });
    const run = await runCli(['generate', '--all', '--per-user', '1', '--batch-size', '1', '--campaign', 'none', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ tokensDelivered: 0, usersRefused: 3, status: 'done' });
    expect(pushes).toEqual(['u0', '', 'u1', 'u2']);
  }));

  // a failure that is no refusal (a 5xx after every attempt) fails the run: a batch of one user split as
  // a refused one recorded that user refused and revoked its set, exit 0, when the empty push went through
  it('a push failing with 503 while an empty push passes fails the run and refuses nobody', () => withEngine(async (fx, handWritten) => {
    await handWritten('sat-busy', () => ({ userIds: ['u0'], nextCursor: null }), (tokens) => (tokens.length ? { status: 503 } : 0));
    const run = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'busy', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code).toBe(1);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ tokensDelivered: 0, usersRefused: 0, status: 'failed', error: expect.stringContaining('HTTP 503') });
    expect((await fx.engine.stats()).satellites['sat-busy']).toMatchObject({ unredeemed: 1, revoked: 0 });
  }));

  // a resume pushes the sets its failed run left unsettled, also of users the satellite no longer lists (their
  // push reached it, its answer did not), and none it had delivered
  it('a resume pushes the left-over sets, listed or not, and no set delivered before', () => withEngine(async (fx, handWritten) => {
    const users = ['u0', 'u1', 'u2', 'u3'];
    const held = new Set<string>();
    const pushes: string[] = [];
    let up = false;
    await handWritten('sat-lost', () => ({ userIds: users.filter((u) => !held.has(u)), nextCursor: null }), (tokens) => {
      pushes.push(tokens.map((t) => t.userId).join(' '));
      for (const t of tokens) held.add(t.userId);
      // u2's push is stored, and its answer lost
      return !up && tokens.some((t) => t.userId === 'u2') ? { status: 503 } : tokens.length;
    });
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
    expect((await runCli(['generate', '--all', '--per-user', '1', '--batch-size', '1', '--campaign', 'lost'], env)).code).toBe(1);
    expect(pushes).toEqual(['u0', 'u1', 'u2']);
    up = true;
    pushes.length = 0;
    const resumed = await runCli(['generate', '--resume', 'lost', '--json'], env);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(pushes).toEqual(['u2 u3']);
    expect(JSON.parse(resumed.stdout).satellites[0]).toMatchObject({ tokensDelivered: 2, status: 'done' });
  }));

  // a 500 is the satellite's, retried like any 5xx; a 200 without a numeric accepted says nothing was
  // stored, and was once counted delivered
  it('a push answered 500 once is retried and delivered; one answered 200 without a whole-number accepted is not recorded delivered', () => withEngine(async (fx, handWritten) => {
    const replies: (number | Refused)[] = [{ status: 500 }];
    await handWritten('sat-odd', () => ({ userIds: ['u0'], nextCursor: null }), (tokens) => replies.shift() ?? tokens.length);
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '2' };
    const retried = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'odd', '--json'], env);
    expect(retried.code, retried.stderr).toBe(0);
    expect(JSON.parse(retried.stdout).satellites[0]).toMatchObject({ tokensDelivered: 1, failures: 1, status: 'done' });

    replies.push({ status: 200 });
    await fx.redis.srem(new CampaignKeys(fx.prefix).delivered('odd', 'sat-odd'), 'u0');
    await fx.redis.hset(new CampaignKeys(fx.prefix).progress('odd', 'sat-odd'), 'tokensDelivered', 0);
    const silent = await runCli(['generate', '--resume', 'odd', '--json'], env);
    expect(silent.code).toBe(1);
    expect(JSON.parse(silent.stdout).satellites[0]).toMatchObject({ tokensDelivered: 0, status: 'failed', error: expect.stringContaining('reply has no numeric accepted') });

    // no count either (a MessagePack NaN was taken as all of them)
    replies.push(0.5);
    const half = await runCli(['generate', '--resume', 'odd', '--json'], env);
    expect(half.code).toBe(1);
    expect(JSON.parse(half.stdout).satellites[0]).toMatchObject({ tokensDelivered: 0, status: 'failed', error: expect.stringContaining('a whole number of tokens') });
  }));

  // a user refused with its tokens kept (the satellite holds part of the set) is settled: a later run of the
  // campaign that meets it in the listing again pushes nothing to it
  it('a user refused with its set kept gets nothing pushed by a later run of the campaign', () => withEngine(async (fx, handWritten) => {
    const pushes: string[] = [];
    await handWritten('sat-kept', () => ({ userIds: ['u0', 'u1'], nextCursor: null }), (tokens) => {
      pushes.push(tokens.map((t) => t.userId).join(' '));
      return tokens.some((t) => t.userId === 'u0') ? tokens.length - 1 : tokens.length;
    });
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
    const args = ['generate', '--all', '--per-user', '2', '--campaign', 'kept', '--json'];
    const first = await runCli(args, env);
    expect(first.code, first.stderr).toBe(0);
    expect(JSON.parse(first.stdout).satellites[0]).toMatchObject({ usersRefused: 1, usersRefusedKept: 1, tokensDelivered: 2 });
    pushes.length = 0;
    const again = await runCli(args, env);
    expect(again.code, again.stderr).toBe(0);
    expect(pushes).toEqual([]);
  }));

  // 4 or more refused users in a batch failed the run for left-over sets too: a resume whose users had all
  // closed their accounts since failed every time, and the campaign could never be finished
  it('a resume whose left-over users have all gone since refuses them and finishes', () => withEngine(async (fx, handWritten) => {
    const users = ['u0', 'u1', 'u2', 'u3', 'u4', 'u5'];
    let phase: 'down' | 'gone' = 'down';
    await handWritten(
      'sat-left',
      () => ({ userIds: phase === 'down' ? users : [], nextCursor: null }),
      (tokens) => (phase === 'down' ? { status: 503 } : tokens.length ? { status: 410 } : 0),
    );
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
    expect((await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'left', '--json'], env)).code).toBe(1);
    phase = 'gone';
    const resumed = await runCli(['generate', '--resume', 'left', '--json'], env);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(JSON.parse(resumed.stdout).satellites[0]).toMatchObject({ tokensDelivered: 0, usersRefused: 6, status: 'done' });
  }));

  // the rule above let a satellite that refuses every push (a 422 for a token format it rejects) have a resume
  // refuse all its users and revoke their tokens, exit 0, though it listed them again in the same run; then no
  // later run served them
  it('a resume whose left-over users the satellite lists again but refuses as a whole fails, refusing nobody; fixed, it delivers', () => withEngine(async (fx, handWritten) => {
    const users = ['u0', 'u1', 'u2', 'u3', 'u4', 'u5'];
    const held = new Map<string, string[]>();
    let broken = true;
    await handWritten(
      'sat-422',
      () => ({ userIds: users.filter((u) => !held.has(u)), nextCursor: null }),
      (tokens) => {
        if (tokens.length === 0) return 0;
        if (broken) return { status: 422 };
        for (const t of tokens) held.set(t.userId, [...(held.get(t.userId) ?? []), t.token]);
        return tokens.length;
      },
    );
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
    expect((await runCli(['generate', '--all', '--per-user', '2', '--campaign', 'fmt', '--json'], env)).code).toBe(1);
    const again = await runCli(['generate', '--resume', 'fmt', '--json'], env);
    expect(again.code).toBe(1);
    expect(JSON.parse(again.stdout).satellites[0]).toMatchObject({ usersRefused: 0, status: 'failed' });
    expect((await fx.engine.stats()).satellites['sat-422']).toMatchObject({ unredeemed: 12, revoked: 0 });
    broken = false;
    const fixed = await runCli(['generate', '--resume', 'fmt', '--json'], env);
    expect(fixed.code, fixed.stderr).toBe(0);
    expect(JSON.parse(fixed.stdout).satellites[0]).toMatchObject({ tokensDelivered: 12, usersRefused: 0, status: 'done' });
    expect([...held.values()].map((t) => t.length)).toEqual([2, 2, 2, 2, 2, 2]);
  }));

  // a left-over batch refused whole waits for the listing: the users it lists again are delivered there, and
  // refusing them afterwards with the rest revoked tokens the satellite had just accepted; exactly
  // ALL_REFUSED_FAILS (4) left-over users were refused (and revoked) before the listing too
  it.each([
    { n: 6, gone: ['u3', 'u4', 'u5'], campaign: 'back' },
    { n: 4, gone: ['u2', 'u3'], campaign: 'four-back' },
  ])('a resume whose $n left-over users are refused whole refuses, after the listing, only those it did not deliver', ({ n, gone: goneIds, campaign }) => withEngine(async (fx, handWritten) => {
    const users = Array.from({ length: n }, (_, i) => `u${i}`);
    const gone = new Set(goneIds);
    const kept = users.filter((u) => !gone.has(u));
    const held = new Map<string, string>();
    let phase: 'down' | 'resumed' | 'listed' = 'down';
    await handWritten(
      'sat-back',
      () => {
        if (phase === 'down') return { userIds: users, nextCursor: null };
        phase = 'listed';
        return { userIds: users.filter((u) => !gone.has(u) && !held.has(u)), nextCursor: null };
      },
      (tokens) => {
        if (phase === 'down') return { status: 503 };
        if (tokens.length === 0) return 0;
        // before the listing every push is refused, so the left-over batch is refused whole, down to single users
        if (phase === 'resumed' || tokens.some((t) => gone.has(t.userId))) return { status: 410 };
        for (const t of tokens) held.set(t.userId, t.token);
        return tokens.length;
      },
    );
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
    expect((await runCli(['generate', '--all', '--per-user', '1', '--campaign', campaign, '--json'], env)).code).toBe(1);
    phase = 'resumed';
    const resumed = await runCli(['generate', '--resume', campaign, '--json'], env);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(JSON.parse(resumed.stdout).satellites[0]).toMatchObject({ tokensDelivered: kept.length, usersRefused: gone.size, status: 'done' });
    expect([...held.keys()].sort()).toEqual(kept);
    for (const token of held.values()) expect((await fx.engine.lookup(token))?.state, token).toBe('unredeemed');
    expect((await fx.engine.stats()).satellites['sat-back']).toMatchObject({ unredeemed: kept.length, revoked: gone.size });
    expect((await runCli(['campaigns', 'refused', campaign], env)).stdout).toBe(goneIds.map((u) => `sat-back\t${u}\n`).join(''));
  }));

  // a satellite answering {accepted: n} short said it holds part of the set: revoking the set put revoked
  // tokens in its users' hands
  it('a user whose set the satellite accepts only part of is refused without revoking what it holds', () => withEngine(async (fx, handWritten) => {
    const held = new Map<string, string[]>();
    await handWritten(
      'sat-half',
      () => ({ userIds: ['u0', 'u1'].filter((u) => !held.has(u)), nextCursor: null }),
      (tokens) => {
        // u1: keeps the first of its tokens, says so
        if (tokens.some((t) => t.userId === 'u1')) {
          held.set('u1', [tokens.find((t) => t.userId === 'u1')!.token]);
          return tokens.length - 1;
        }
        for (const t of tokens) held.set(t.userId, [...(held.get(t.userId) ?? []), t.token]);
        return tokens.length;
      },
    );
    const run = await runCli(['generate', '--all', '--per-user', '2', '--campaign', 'half', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ tokensDelivered: 2, usersRefused: 1, usersRefusedKept: 1, status: 'done' });
    expect((await fx.engine.lookup(held.get('u1')![0]!))?.state).toBe('unredeemed');
    // it said "those tokens are revoked" of tokens it kept
    expect(run.stderr).toContain('1 user not given this campaign\'s tokens (first user "u1": tokens: the satellite accepted 1 of 2); their tokens are kept');
  }));

  // a run longer than the campaign's life failed at the engine's refusal ("expiresAt: must be a future time"),
  // blaming the satellite, hinted a --resume that could only refuse, and pushed tokens already expired
  it('a campaign that expires during the run stops as expired: nothing pushed after, no resume hinted', () => withEngine(async (fx, handWritten) => {
    const users = Array.from({ length: 8 }, (_, i) => `u${i}`);
    const pushedAt: number[] = [];
    const held = new Set<string>();
    await handWritten(
      'sat-slow',
      () => ({ userIds: users.filter((u) => !held.has(u)), nextCursor: null }),
      async (tokens) => {
        pushedAt.push(Date.now());
        await new Promise((r) => setTimeout(r, 800));
        for (const t of tokens) held.add(t.userId);
        return tokens.length;
      },
    );
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
    const run = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'brief', '--expires', '2s', '--batch-size', '1', '--json'], env);
    expect(run.code).toBe(1);
    const report = JSON.parse(run.stdout).satellites[0];
    expect(report).toMatchObject({ status: 'expired', error: expect.stringMatching(/campaign "brief" expired at .*no more are made or pushed/) });
    expect(report.tokensDelivered).toBeLessThan(8);
    expect(run.stderr).toContain('satellite sat-slow stopped: campaign "brief" expired');
    expect(run.stderr).not.toContain('--resume');
    const expiresAt = (await new CampaignStore(fx.redis, fx.prefix).get('brief'))!.expiresAt!;
    expect(pushedAt.every((t) => t < expiresAt)).toBe(true);
    expect((await new CampaignStore(fx.redis, fx.prefix).get('brief'))!.progress['sat-slow']!.status).toBe('expired');
    expect((await runCli(['campaigns', 'list'], env)).stdout).toMatch(/brief .*expired/);
  }));

  // a killed run's satellite claim outliving its campaign claim by a few ms made the resume name its own
  // campaign as the one to wait for
  // and then it failed, to be run again once the claim lapsed: now it waits for that
  it('a resume meeting its own campaign\'s stale satellite claim (a killed run\'s) waits for it to lapse and serves the satellite', () => withEngine(async (fx, handWritten) => {
    let accept = false;
    await handWritten('sat-stale', () => ({ userIds: ['u0'], nextCursor: null }), (tokens) => (accept ? tokens.length : { status: 503 }));
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
    expect((await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'stale', '--json'], env)).code).toBe(1);
    // a killed run's claim, 2 s from lapsing, nobody renewing it
    await fx.redis.set(new CampaignKeys(fx.prefix).satelliteRun('sat-stale'), `stale ${randomUUID()}`, 'PX', 2000);
    accept = true;
    const t0 = Date.now();
    const resumed = await runCli(['generate', '--resume', 'stale', '--json'], env);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(JSON.parse(resumed.stdout).satellites[0]).toMatchObject({ status: 'done', tokensDelivered: 1 });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1500);
    // not silent for up to half a minute
    expect(resumed.stderr).toContain('satellite sat-stale: a killed run of this campaign still claims it; waiting up to 30 s for that claim to lapse');
  }));

  // the wait for a killed run's claim is bounded: one that does not lapse (a run of the same campaign still
  // alive elsewhere, renewing it) must end the resume with the reason, not hang it or let it push beside
  // that run; the bound is CLAIM_TTL_MS, a constant, so this test takes its 31 s
  it('a resume whose own campaign\'s satellite claim does not lapse gives up after 30 s: the satellite fails with the reason, exit 1, nothing pushed', () => withEngine(async (fx, handWritten) => {
    let pushes = 0;
    await handWritten('sat-held', () => ({ userIds: ['u0'], nextCursor: null }), () => (pushes++, { status: 503 }));
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
    // a first run makes u0's set and fails to push it: the resume has a set to push, were it let
    expect((await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'held', '--json'], env)).code).toBe(1);
    pushes = 0;
    // a claim in this campaign's name outliving the resume's whole wait
    await fx.redis.set(new CampaignKeys(fx.prefix).satelliteRun('sat-held'), `held ${randomUUID()}`, 'PX', 50_000);
    const t0 = Date.now();
    const resumed = await runCli(['generate', '--resume', 'held', '--json'], env);
    expect(resumed.code, resumed.stderr).toBe(1);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(30_000);
    expect(JSON.parse(resumed.stdout).satellites[0]).toMatchObject({
      status: 'failed',
      tokensDelivered: 0,
      error: 'satellite "sat-held" is still claimed by another run of this campaign after 30 s',
    });
    expect(pushes).toBe(0);
    expect(resumed.stderr).toContain('waiting up to 30 s for that claim to lapse');
    expect((await new CampaignStore(fx.redis, fx.prefix).get('held'))!.progress['sat-held']!.status).toBe('failed');
  }));

  // the claim refused at SET NX and gone at the read of its holder (it lapsed in between) names nobody; a
  // claim naming no owner reads the same, and lets this be held long enough to be seen: tried again, not
  // reported as a campaign "" serving the satellite
  it('a run meeting a satellite claim that names no holder waits for it to lapse and serves the satellite', () => withEngine(async (fx, handWritten) => {
    await handWritten('sat-nobody', () => ({ userIds: ['u0'], nextCursor: null }), (tokens) => tokens.length);
    await fx.redis.set(new CampaignKeys(fx.prefix).satelliteRun('sat-nobody'), ` ${randomUUID()}`, 'PX', 1500);
    const t0 = Date.now();
    const run = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'after-nobody', '--json'], { KEY_PREFIX: fx.prefix });
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ status: 'done', tokensDelivered: 1 });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
  }));

  // a satellite another campaign's killed run still claimed: told to wait for that run to end (it never would)
  // and to fix the satellite (nothing was wrong with it)
  it('a run meeting another campaign\'s claim on its satellite names it, says a killed run\'s lapses, and blames no satellite', () => withEngine(async (fx, handWritten) => {
    await handWritten('sat-busy', () => ({ userIds: ['u0'], nextCursor: null }), (tokens) => tokens.length);
    await fx.redis.set(new CampaignKeys(fx.prefix).satelliteRun('sat-busy'), `killed ${randomUUID()}`, 'PX', 60_000);
    const run = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'later', '--json'], { KEY_PREFIX: fx.prefix });
    expect(run.code, run.stderr).toBe(1);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({
      status: 'failed',
      tokensMade: 0,
      error: 'satellite "sat-busy" is being served by campaign "killed"; run this one again with --resume when that one ends (a killed run of it holds the satellite up to 30 s: then resume that one first)',
    });
    expect(run.stderr).toContain('campaign later is incomplete; once what failed above is fixed or over, run: referral-manager generate --resume later');
  }));

  it('answering 413 to pushes over its body limit: every token is delivered, and later pushes are made small enough', () => withEngine(async (fx, handWritten) => {
    const users = Array.from({ length: 80 }, (_, i) => `u${String(i).padStart(2, '0')}`);
    const held = new Map<string, string[]>();
    const sizes: number[] = [];
    // it takes at most 4 tokens a request
    await handWritten(
      'sat-l',
      () => ({ userIds: users.filter((u) => !held.has(u)), nextCursor: null }),
      (tokens) => {
        sizes.push(tokens.length);
        if (tokens.length > 4) return { status: 413 };
        for (const t of tokens) held.set(t.userId, [...(held.get(t.userId) ?? []), t.token]);
        return tokens.length;
      },
    );
    const run = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'small', '--batch-size', '64', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ tokensDelivered: 80, usersRefused: 0, status: 'done' });
    expect(held.size).toBe(80);
    // one push refused for its size at each halving (64 -> 32 -> 16 -> 8 -> 4); after that the rest of that batch
    // and the next are cut to the size learned (halves of every refused half made 15 refused pushes)
    expect(sizes.filter((n) => n > 4)).toEqual([64, 32, 16, 8]);
  }));

  it('with a body limit below one user\'s set: each set is pushed in parts, nobody is refused', () => withEngine(async (fx, handWritten) => {
    const users = ['u0', 'u1', 'u2', 'u3', 'u4'];
    const held = new Map<string, string[]>();
    const accepted: number[] = [];
    await handWritten(
      'sat-s',
      () => ({ userIds: users.filter((u) => !held.has(u)), nextCursor: null }),
      (tokens) => {
        if (tokens.length > 4) return { status: 413 };
        accepted.push(tokens.length);
        for (const t of tokens) held.set(t.userId, [...(held.get(t.userId) ?? []), t.token]);
        return tokens.length;
      },
    );
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
    const run = await runCli(['generate', '--all', '--per-user', '5', '--campaign', 'sets', '--batch-size', '10', '--json'], env);
    expect(run.code, run.stderr).toBe(0);
    // 10 refused (413) -> at most 5 a push, 5 refused -> at most 2: the two users of that batch in 2, 2, 1 each,
    // then a set larger than a push fills the one under way (each user's remainder of 1 went alone: 15 pushes)
    expect(accepted).toEqual([2, 2, 1, 2, 2, 1, 2, 2, 2, 2, 2, 2, 2, 1]);
    expect(JSON.parse(run.stdout).satellites[0]).toMatchObject({ usersServed: 5, tokensDelivered: 25, usersRefused: 0, status: 'done' });
    expect([...held.values()].map((t) => new Set(t).size)).toEqual([5, 5, 5, 5, 5]);
    for (const [u, tokens] of held) for (const t of tokens) expect((await fx.engine.lookup(t))).toMatchObject({ ownerUserId: u, state: 'unredeemed' });
    // every user recorded delivered: a rerun pushes nothing
    const again = await runCli(['generate', '--resume', 'sets', '--json'], env);
    expect(JSON.parse(again.stdout).satellites[0]).toMatchObject({ tokensDelivered: 0, usersRefused: 0, failures: 0, status: 'done' });
  }));
});

describe('--expires', () => {
  it('every token of the campaign expires when it says, also the ones a --resume makes', async () => {
    const fx = await engineFixture({ label: 'gen' });
    // refuses deliveries after 10 tokens: the first run stops part-way, --resume makes the rest
    const sim = await startSatelliteSim({ id: 'sat-x', users: 20, failAfter: 10 });
    try {
      await new SatelliteRegistry(fx.redis, fx.prefix).add({ id: 'sat-x', url: sim.url });
      const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
      const before = Date.now();
      const first = await runCli(['generate', '--all', '--per-user', '2', '--expires', '30d', '--campaign', 'exp', '--batch-size', '4'], env);
      const after = Date.now();
      expect(first.code, first.stderr).toBe(1);
      sim.satellite.setFailAfter(null);
      const resumed = await runCli(['generate', '--resume', 'exp', '--json'], env);
      expect(resumed.code, resumed.stderr).toBe(0);

      const tokens = Object.values(sim.satellite.holdings()).flat();
      expect(tokens).toHaveLength(40);
      const expiries = new Set((await Promise.all(tokens.map((t) => fx.engine.lookup(t)))).map((t) => t?.expiresAt));
      // one expiry for the whole campaign, 30 days after the first run started
      expect(expiries.size).toBe(1);
      const [expiresAt] = [...expiries] as [number];
      expect(expiresAt).toBeGreaterThanOrEqual(before + 30 * 86_400_000);
      expect(expiresAt).toBeLessThanOrEqual(after + 30 * 86_400_000);
      expect(await new CampaignStore(fx.redis, fx.prefix).meta('exp')).toMatchObject({ expiresAt });
    } finally {
      await sim.close();
      await fx.close();
    }
  });

  it('--resume of a campaign past its expiry exits 1 and pushes none of its expired tokens', async () => {
    const fx = await engineFixture({ label: 'gen' });
    const sim = await startSatelliteSim({ id: 'sat-y', users: 3 });
    try {
      await new SatelliteRegistry(fx.redis, fx.prefix).add({ id: 'sat-y', url: sim.url });
      // what a run that failed before delivering leaves: a user's tokens made and recorded, not delivered
      const expiresAt = Date.now() + 1500;
      const store = new CampaignStore(fx.redis, fx.prefix);
      await store.open({ id: 'short-lived', perUser: 2, expiresAt, satellites: ['sat-y'], createdAt: Date.now() });
      const made = await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-y', ownerUserId: 'sat-y-u0000001' }], perUser: 2, campaignId: 'short-lived', expiresAt });
      await store.recordMade('short-lived', 'sat-y', new Map([['sat-y-u0000001', made.tokens.map((t) => t.token)]]));
      await new Promise((resolve) => setTimeout(resolve, expiresAt - Date.now() + 50));

      // a dry run says what the real run would do (it said it would make tokens the real run refuses to)
      for (const dry of [['--dry-run'], []]) {
        const resumed = await runCli(['generate', '--resume', 'short-lived', ...dry], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' });
        expect(resumed.code).toBe(1);
        expect(resumed.stderr).toContain(`campaign "short-lived" expired at ${new Date(expiresAt).toISOString()}`);
      }
      expect(Object.values(sim.satellite.holdings()).flat()).toEqual([]);
    } finally {
      await sim.close();
      await fx.close();
    }
  });

  // a revoke since is also what a refusal killed between its revoke and its record leaves: before, such a
  // user was never served nor recorded by any later run, and the campaign's counts did not add up
  it('--resume pushes no token revoked since the failed run made it, and records that user refused', async () => {
    const { fx, sim, env, waiting, close } = await stoppedPartWay('sat-v', 'rv');
    try {
      const user = waiting[0]!;
      const revoked = await runCli(['tokens', 'revoke', '--satellite', 'sat-v', '--user', user], env);
      expect(revoked.code, revoked.stderr).toBe(0);

      sim.satellite.setFailAfter(null);
      const resumed = await runCli(['generate', '--resume', 'rv', '--json'], env);
      expect(resumed.code, resumed.stderr).toBe(0);
      const now = sim.satellite.holdings();
      expect(now[user]).toEqual([]);
      expect(Object.entries(now).filter(([u, t]) => u !== user && t.length !== 2)).toEqual([]);
      const refused = await runCli(['campaigns', 'refused', 'rv'], env);
      expect(refused.stdout.trim().split('\n')).toEqual([`sat-v\t${user}`]);
      expect(JSON.parse(resumed.stdout).satellites[0]).toMatchObject({ usersRefused: 1, refusal: `user "${user}": its tokens were revoked or lost before delivery` });
      expect(await new CampaignStore(fx.redis, fx.prefix).progress('rv', 'sat-v')).toMatchObject({ usersServed: 20, usersRefused: 1, tokensDelivered: 38, status: 'done' });
    } finally {
      await close();
    }
  });
});

describe('a campaign stopped part-way, another campaign run meanwhile, then --resume of the first', () => {
  // the satellite listed the first campaign's undelivered users to the second, which served them; the
  // resume then pushed the first campaign's sets too: those users held 4 tokens instead of 2
  it('gives nobody a second set, and revokes no set the satellite may hold (its push unrecorded, its tokens handed out)', async () => {
    const { fx, sim, env, waiting, close } = await stoppedPartWay('sat-w', 'first');
    try {
      const before = sim.satellite.holdings();
      // the delivered users hand their tokens out (so the satellite lists them again), and their delivery
      // goes unrecorded: what a restore of an unfinished satellite, or a kill before the record, leaves
      const handedOut = Object.keys(before).filter((u) => before[u]!.length === 2);
      expect(handedOut.length).toBeGreaterThan(0);
      while (sim.satellite.takeToken()) {}
      await fx.redis.srem(new CampaignKeys(fx.prefix).delivered('first', 'sat-w'), ...handedOut);
      sim.satellite.setFailAfter(null);
      const second = await runCli(['generate', '--all', '--per-user', '2', '--campaign', 'second'], env);
      expect(second.code, second.stderr).toBe(0);

      const resumed = await runCli(['generate', '--resume', 'first', '--json'], env);
      expect(resumed.code, resumed.stderr).toBe(0);
      const now = sim.satellite.holdings();
      for (const u of waiting) expect(now[u], u).toHaveLength(2);
      for (const u of handedOut) expect(now[u]!.filter((t) => !before[u]!.includes(t)), u).toHaveLength(2);
      expect(JSON.parse(resumed.stdout).satellites[0]).toMatchObject({ usersRefused: 20, tokensDelivered: 0, refusal: expect.stringMatching(/served by campaign "second"/) });
      // the handed-out tokens still work; nothing was revoked
      for (const u of handedOut) for (const t of before[u]!) expect((await fx.engine.lookup(t))?.state, t).toBe('unredeemed');
      expect((await fx.engine.stats()).satellites['sat-w']).toMatchObject({ generated: 80, revoked: 0 });
    } finally {
      await close();
    }
  });
});

describe('a run that stalled past its claims (a laptop asleep) while another campaign served its satellite', () => {
  // it woke up and pushed the sets it had made before the stall, exit 0: the other campaign had listed
  // those users (they held nothing yet) and served them, so each held a set of both
  it('pushes no more of its sets once it wakes: it stops, and nobody holds two sets but the one whose push was in flight', () => withEngine(async (fx, handWritten) => {
    const users = ['u0', 'u1', 'u2', 'u3'];
    const held = new Map<string, string[]>();
    let stalled!: () => void;
    const stalling = new Promise<void>((r) => (stalled = r));
    let wake!: () => void;
    const woken = new Promise<void>((r) => (wake = r));
    let first = true;
    await handWritten('sat-nap', () => ({ userIds: users.filter((u) => !held.has(u)), nextCursor: null }), async (tokens) => {
      if (first) {
        first = false;
        stalled();
        await woken;
      }
      for (const t of tokens) held.set(t.userId, [...(held.get(t.userId) ?? []), t.token]);
      return tokens.length;
    });
    try {
      const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
      const napping = runCli(['generate', '--all', '--per-user', '1', '--campaign', 'napping', '--batch-size', '1', '--json'], env);
      await stalling;
      // its claims lapse while it sleeps in its first push
      const keys = new CampaignKeys(fx.prefix);
      await fx.redis.del(keys.run('napping'), keys.satelliteRun('sat-nap'));
      const other = await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'awake', '--json'], env);
      expect(other.code, other.stderr).toBe(0);
      expect(JSON.parse(other.stdout).satellites[0]).toMatchObject({ status: 'done', tokensDelivered: 4 });
      wake();
      const woke = await napping;
      expect(woke.code, woke.stdout).toBe(1);
      expect(JSON.parse(woke.stdout).satellites[0]).toMatchObject({ status: 'failed', error: expect.stringMatching(/may be run by another generate now: this run stalled past its 30 s claim, which lapsed/) });
      expect(users.filter((u) => held.get(u)!.length > 1)).toEqual(['u0']);

      // its resume gives the users served meanwhile nothing more
      const resumed = await runCli(['generate', '--resume', 'napping', '--json'], env);
      expect(resumed.code, resumed.stderr).toBe(0);
      expect(users.map((u) => held.get(u)!.length)).toEqual([2, 1, 1, 1]);
    } finally {
      wake();
    }
  }));
});

describe('progress on a terminal', () => {
  /** generate with stdout and stderr on a pseudo-terminal (util-linux `script`): its exit code and all it wrote there */
  /** `whenStarted`: called with the pid of generate itself (script's child), to signal it */
  function onTerminal(args: string[], env: Record<string, string>, whenStarted?: (pid: number) => void): Promise<{ code: number | null; out: string }> {
    // `exec`: script runs the command with $SHELL -c, and dash (/bin/sh, or SHELL unset) forks for it where bash
    // execs, so script's child was sh and the SIGINT stopped sh, not generate. SHELL is /bin/sh here: a CI
    // account's may be /usr/sbin/nologin, which ran nothing ("This account is currently not available")
    const command = `exec ${[process.execPath, MAIN, ...args].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(' ')}`;
    return new Promise((resolve, reject) => {
      const proc = spawn('script', ['-qec', command, '/dev/null'], { env: { ...process.env, SHELL: '/bin/sh', ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      proc.stdout.setEncoding('utf8').on('data', (d: string) => {
        if (!out && whenStarted) whenStarted(Number(readFileSync(`/proc/${proc.pid}/task/${proc.pid}/children`, 'utf8').trim()));
        out += d;
      });
      // a generate that does not end: its terminal closes with `script`, and the hang-up ends it
      const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
      proc.once('error', reject);
      proc.once('exit', (code) => (clearTimeout(timer), resolve({ code, out })));
    });
  }

  /** The lines a terminal shows once `out` is written: the cursor moves, erasures and redraws of the bars applied. */
  function screen(out: string): string[] {
    const lines: string[][] = [[]];
    let row = 0;
    let col = 0;
    for (let i = 0; i < out.length; i++) {
      const esc = /^\x1b\[(\??)(\d*)([A-Za-z])/.exec(out.slice(i, i + 12));
      if (esc) {
        i += esc[0].length - 1;
        if (esc[1]) continue; // a mode: cursor shown or hidden, line wrap
        if (esc[3] === 'A') row = Math.max(0, row - Number(esc[2] || 1));
        else if (esc[3] === 'G') col = Number(esc[2] || 1) - 1;
        else if (esc[3] === 'K') lines[row]!.length = Math.min(lines[row]!.length, col);
        continue;
      }
      const line = lines[row]!;
      if (out[i] === '\r') col = 0;
      else if (out[i] === '\n') lines[++row] ??= [];
      else {
        while (line.length < col) line.push(' ');
        line[col++] = out[i]!;
      }
    }
    return lines.map((l) => l.join('').trimEnd());
  }

  it('shows the users fetched as a count and bars of the tokens made and delivered, leaves them whole above the table, and shows the cursor again', async () => {
    const fx = await engineFixture({ label: 'gen' });
    const sim = await startSatelliteSim({ id: 'sat-tty', users: 30 });
    try {
      await new SatelliteRegistry(fx.redis, fx.prefix).add({ id: 'sat-tty', url: sim.url });
      const run = await onTerminal(['generate', '--all', '--per-user', '2', '--campaign', 'tty', '--page-size', '10', '--batch-size', '8'], { KEY_PREFIX: fx.prefix });
      expect(run.code, run.out).toBe(0);
      const full = '\u2588'.repeat(40);
      expect(screen(run.out)).toEqual([
        ' users fetched    30',
        ` tokens made      |${full}| 60/60`,
        ` tokens delivered |${full}| 60/60`,
        'campaign tty',
        'satellite  users  tokens made  delivered  refused  failures  status',
        'sat-tty       30           60         60        0         0  done',
        '',
      ]);
      // the bars hide the cursor while they draw; a generate that ended with it hidden left the shell without one
      expect(run.out.lastIndexOf('\x1b[?25h')).toBeGreaterThan(run.out.lastIndexOf('\x1b[?25l'));
    } finally {
      await sim.close();
      await fx.close();
    }
  });

  // a line written plainly was drawn over by the next redraw of the bars
  it('Ctrl-C mid-run: what it says shows above the bars, which stay whole, then the table and the resume hint', () => withEngine(async (fx, handWritten) => {
    let pushed!: () => void;
    const pushing = new Promise<void>((r) => (pushed = r));
    // the push never answers: generate waits on it, its bars drawn, when the signal comes
    await handWritten('sat-said', () => ({ userIds: ['u0', 'u1'], nextCursor: null }), () => (pushed(), new Promise<never>(() => {})));
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_TIMEOUT_MS: '60000', SATELLITE_ATTEMPTS: '1' };
    const run = await onTerminal(['generate', '--all', '--per-user', '1', '--campaign', 'said'], env, (pid) => void pushing.then(() => setTimeout(() => process.kill(pid, 'SIGINT'), 300)));
    expect(run.code, run.out).toBe(130);
    expect(screen(run.out).slice(0, 7)).toEqual([
      'SIGINT: stopping at the next step, cutting calls to satellites in flight (SIGINT again exits at once)',
      ' users fetched    2',
      ` tokens made      |${'\u2588'.repeat(40)}| 2/2`,
      ` tokens delivered |${'\u2591'.repeat(40)}| 0/2`,
      'campaign said',
      'satellite  users  tokens made  delivered  refused  failures  status',
      'sat-said       2            2          0        0         0  failed',
    ]);
    expect(run.out).toContain('campaign said is incomplete; to go on, run: referral-manager generate --resume said');
  }));

  // bars where stderr is no terminal (a cron's log) wrote their unformatted templates (' {label} |...|') at the
  // end, and the lines said went to their log
  it('without a terminal no bars: no escape codes, and what the run says reaches stderr', () => withEngine(async (fx, handWritten) => {
    let accept = false;
    await handWritten('sat-piped', () => ({ userIds: ['u0'], nextCursor: null }), (tokens) => (accept ? tokens.length : { status: 503 }));
    const env = { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' };
    expect((await runCli(['generate', '--all', '--per-user', '1', '--campaign', 'piped'], env)).code).toBe(1);
    // a killed run's claim, lapsing once the resume has said it waits for it (a claim lapsing at a set time, 2.5 s,
    // had lapsed before a resume slow to start under load looked at it, which then said nothing)
    const claim = new CampaignKeys(fx.prefix).satelliteRun('sat-piped');
    await fx.redis.set(claim, `piped ${randomUUID()}`, 'PX', 60_000);
    accept = true;
    const lapseWhenWaiting = (proc: ChildProcess) => proc.stderr!.on('data', (d: Buffer) => void (String(d).includes('still claims it') && fx.redis.del(claim)));
    const resumed = await runCli(['generate', '--resume', 'piped'], env, { whenStarted: lapseWhenWaiting });
    expect(resumed.code, resumed.stderr).toBe(0);
    // that line alone: no bars, drawn or not
    expect(resumed.stderr).toBe('satellite sat-piped: a killed run of this campaign still claims it; waiting up to 30 s for that claim to lapse\n');
    expect(resumed.stdout).toMatch(/^sat-piped\s+0\s+0\s+1\s+0\s+0\s+done$/m); // the set the failed run made, delivered
    expect(resumed.stderr + resumed.stdout).not.toContain('\x1b');
  }));
});
