import { describe, expect, it } from 'vitest';
import { createRedis } from '../src/store/redis.js';
import { CampaignStore, type Claim } from '../src/store/campaign-store.js';
import { CampaignCopy } from '../src/snapshot/campaigns.js';
import { runCli } from './helpers/cli.js';
import { privateRedis } from './helpers/http.js';
import { engineFixtureFor } from './helpers/redis.js';

describe('campaign records (real Redis)', () => {
  const fx = engineFixtureFor('camp');

  it('runs opening one campaign at once: one creates it, every one gets the whole record', async () => {
    // separate connections, as separate generate processes have
    const clients = Array.from({ length: 8 }, () => fx.redis.duplicate());
    try {
      for (let round = 0; round < 20; round++) {
        const id = `spring-${round}`;
        const opened = await Promise.all(
          clients.map((c, i) => new CampaignStore(c, fx.prefix).open({ id, perUser: 3 + i, satellites: ['s1'], createdAt: 1000 + i, expiresAt: 9e12 })),
        );
        expect(opened.filter((o) => o.created)).toHaveLength(1);
        const winner = opened.find((o) => o.created)!.campaign;
        for (const o of opened) expect(o.campaign).toEqual(winner);
      }
      expect((await new CampaignStore(fx.redis, fx.prefix).list()).filter((c) => c.id.startsWith('spring-'))).toHaveLength(20);
    } finally {
      for (const c of clients) c.disconnect();
    }
  });

  // a script's arguments go in slices, two per user: a slice ending between a user and its tokens recorded
  // the tokens under the next slice's first argument. A run makes up to 10,000 users' sets at once
  it('records and counts the sets of more users than fit one slice of script arguments, each under its own user', async () => {
    const store = new CampaignStore(fx.redis, fx.prefix);
    const sets = new Map(Array.from({ length: 6001 }, (_, i) => [`u${i}`, [`t${i}a`, `t${i}b`]]));
    expect(await store.recordMade('sliced', 's1', sets)).toEqual({ users: 6001, tokens: 12002 });
    const users = [...sets.keys()];
    expect(await store.made('sliced', 's1', users)).toEqual([...sets.values()]);
    expect(await store.recordDelivered('sliced', 's1', new Map(users.map((u) => [u, 2])))).toBe(12002);
    expect((await store.settled('sliced', 's1', users)).every(Boolean)).toBe(true);
  });

  it('a satellite left running by a run that no longer holds the campaign (killed) shows as interrupted', async () => {
    const store = new CampaignStore(fx.redis, fx.prefix);
    await store.open({ id: 'killed', perUser: 1, satellites: ['s1'], createdAt: 1 });
    const claim = (await store.claim('killed'))!;
    await store.setStatus('killed', 's1', 'running');
    expect((await store.get('killed'))!.progress.s1!.status).toBe('running');
    // what a kill -9 leaves once the claim's TTL has passed
    await claim.release();
    expect((await store.get('killed'))!.progress.s1!.status).toBe('interrupted');
  });

  // a campaign listing more satellites than a killed run reached: the rest are still to be served by --resume
  it('a satellite no run has started shows as pending, every counter 0', async () => {
    const store = new CampaignStore(fx.redis, fx.prefix);
    await store.open({ id: 'unstarted', perUser: 1, satellites: ['s1', 's2'], createdAt: 1 });
    await store.setStatus('unstarted', 's1', 'done');
    expect((await store.get('unstarted'))!.progress.s2).toEqual({ usersListed: 0, usersServed: 0, tokensMade: 0, tokensDelivered: 0, usersRefused: 0, failures: 0, status: 'pending' });
  });

  // satellite ids are opaque: progress["__proto__"] = p set the record's prototype instead of a field
  it('shows the progress of a satellite named __proto__ or constructor like any other', async () => {
    const store = new CampaignStore(fx.redis, fx.prefix);
    const sats = ['__proto__', 'constructor', 's1'];
    await store.open({ id: 'odd-sats', perUser: 1, satellites: sats, createdAt: 1 });
    for (const sat of sats) await store.count('odd-sats', sat, 'usersListed', 5);
    await store.setStatus('odd-sats', '__proto__', 'done');
    const c = (await store.get('odd-sats'))!;
    expect(Object.keys(c.progress)).toEqual(sats);
    for (const sat of sats) expect(Object.getOwnPropertyDescriptor(c.progress, sat)?.value, sat).toMatchObject({ usersListed: 5 });
    expect(JSON.parse(JSON.stringify(c)).progress.__proto__).toMatchObject({ usersListed: 5, status: 'done' });
  });

  // the snapshot copies a refusal set only when this counter moves: a count apart from its record, lost
  // to a crash between the two, left the refusal out of Postgres for good
  it('records refused users and counts the new ones in the same step, in slices past Lua unpack limit', async () => {
    const store = new CampaignStore(fx.redis, fx.prefix);
    await store.open({ id: 'refusing', perUser: 1, satellites: ['s1'], createdAt: 1 });
    expect(await store.recordRefused('refusing', 's1', ['u1', 'u2'])).toBe(2);
    expect((await store.progress('refusing', 's1')).usersRefused).toBe(2);
    expect(await store.recordRefused('refusing', 's1', ['u2', 'u3'])).toBe(1);
    // a resume skips refused users as it skips delivered ones: their tokens are revoked
    expect(await store.settled('refusing', 's1', ['u1', 'u3', 'nobody'])).toEqual([true, true, false]);
    const many = Array.from({ length: 12_000 }, (_, i) => `m${i}`);
    expect(await store.recordRefused('refusing', 's1', many)).toBe(12_000);
    expect((await store.progress('refusing', 's1')).usersRefused).toBe(12_003);
    let listed = 0;
    for await (const page of store.refusedUsers('refusing', 's1')) listed += page.length;
    expect(listed).toBe(12_003);
  });

  // a count apart from its record, lost to a kill -9 between the two, left usersServed, tokensMade and
  // tokensDelivered short for good (a reviewer's random kills: 19,000 of 20,000 users counted served)
  it('records made tokens and delivered sets and counts the new ones in the same step, once per user, in slices', async () => {
    const store = new CampaignStore(fx.redis, fx.prefix);
    await store.open({ id: 'counting', perUser: 2, satellites: ['s1'], createdAt: 1 });
    const many = new Map(Array.from({ length: 6000 }, (_, i): [string, string[]] => [`m${i}`, [`t${i}a`, `t${i}b`]]));
    expect(await store.recordMade('counting', 's1', many)).toEqual({ users: 6000, tokens: 12_000 });
    // a resume that adopts some of them again, with one user new
    expect(await store.recordMade('counting', 's1', new Map([['m1', ['t1a', 't1b']], ['n1', ['x', 'y', 'z']]]))).toEqual({ users: 1, tokens: 3 });
    expect(await store.made('counting', 's1', ['m5999', 'n1', 'nobody'])).toEqual([['t5999a', 't5999b'], ['x', 'y', 'z'], undefined]);
    const sets = new Map([...many.keys()].map((u) => [u, 2]));
    expect(await store.recordDelivered('counting', 's1', sets)).toBe(12_000);
    // a set pushed again by a resume, beside a user new to it
    expect(await store.recordDelivered('counting', 's1', new Map([['m0', 2], ['n1', 3]]))).toBe(3);
    expect(await store.settled('counting', 's1', ['m0', 'n1', 'nobody'])).toEqual([true, true, false]);
    expect(await store.progress('counting', 's1')).toMatchObject({ usersServed: 6001, tokensMade: 12_003, tokensDelivered: 12_003 });
  });

  // a re-run opens the campaign again with its own clock: the listing keeps the first run's createdAt
  it('opening an existing campaign keeps its place and createdAt in the listing', async () => {
    const store = new CampaignStore(fx.redis, fx.prefix);
    await store.open({ id: 'first', perUser: 1, satellites: ['s1'], createdAt: 5000 });
    await store.open({ id: 'second', perUser: 1, satellites: ['s1'], createdAt: 6000 });
    expect((await store.open({ id: 'first', perUser: 1, satellites: ['s1'], createdAt: 7000 })).campaign.createdAt).toBe(5000);
    expect((await store.list()).map((c) => c.id).filter((id) => id === 'first' || id === 'second')).toEqual(['first', 'second']);
  });

  it('lists revoked campaigns oldest first', async () => {
    const store = new CampaignStore(fx.redis, fx.prefix);
    await fx.engine.revokeCampaign('zz-older');
    await new Promise((r) => setTimeout(r, 5));
    await fx.engine.revokeCampaign('aa-newer');
    expect((await store.revoked()).map((r) => r.id)).toEqual(['zz-older', 'aa-newer']);
  });

  // generate names the campaign serving the satellite, and waits only on its own campaign's stale claim
  it('a satellite claimed by one campaign is refused to another, naming the holder', async () => {
    const store = new CampaignStore(fx.redis, fx.prefix);
    const first = (await store.claimSatellite('s-shared', 'camp-one')) as Claim;
    expect(await store.claimSatellite('s-shared', 'camp-two')).toEqual({ heldBy: 'camp-one' });
    await first.release();
    const second = (await store.claimSatellite('s-shared', 'camp-two')) as Claim;
    expect(second.confirm).toBeTypeOf('function');
    await second.release();
  });

  // a satellite ignoring the page limit listed 130,000 ids: one HMGET / SMISMEMBER spread over them all threw
  // "Maximum call stack size exceeded", on every resume too
  it('made and settled take a page of 200,000 users', async () => {
    const store = new CampaignStore(fx.redis, fx.prefix);
    await store.open({ id: 'huge-page', perUser: 1, satellites: ['s1'], createdAt: 1 });
    const users = Array.from({ length: 200_000 }, (_, i) => `u${i}`);
    await store.recordMade('huge-page', 's1', new Map([['u7', ['t7']], ['u199999', ['t9']]]));
    await store.recordDelivered('huge-page', 's1', new Map([['u7', 1]]));
    const made = await store.made('huge-page', 's1', users);
    expect([made.length, made[7], made[199_999], made.filter(Boolean).length]).toEqual([200_000, ['t7'], ['t9'], 2]);
    const settled = await store.settled('huge-page', 's1', users);
    expect([settled.length, settled[7], settled.filter(Boolean).length]).toEqual([200_000, true, 1]);
  });

  // a script reading one satellite's refusals must not get another's
  it('campaigns refused --satellite: that satellite\'s users only, in text and --json', async () => {
    const store = new CampaignStore(fx.redis, fx.prefix);
    await store.open({ id: 'refused-two', perUser: 1, satellites: ['s1', 's2'], createdAt: 1 });
    await store.recordRefused('refused-two', 's1', ['u1']);
    await store.recordRefused('refused-two', 's2', ['u3', 'u2']);
    const env = { KEY_PREFIX: fx.prefix };
    const text = await runCli(['campaigns', 'refused', 'refused-two', '--satellite', 's2'], env);
    expect([text.code, text.stdout]).toEqual([0, 's2\tu2\ns2\tu3\n']);
    const json = await runCli(['campaigns', 'refused', 'refused-two', '--satellite', 's2', '--json'], env);
    expect(JSON.parse(json.stdout)).toEqual({ s2: ['u2', 'u3'] });
    expect(JSON.parse((await runCli(['campaigns', 'refused', 'refused-two', '--json'], env)).stdout)).toEqual({ s1: ['u1'], s2: ['u2', 'u3'] });
  });

  // an id only the admin route (POST /v1/admin/tokens/generate with campaignId) used: show and refused said it
  // "does not exist", though campaigns results finds its tokens
  it('campaigns show and refused of an id only the admin route made tokens under: say so and point to campaigns results (exit 1)', async () => {
    await fx.engine.generate({ owners: [{ ownerSatelliteId: 's1', ownerUserId: 'u1' }], perUser: 2, campaignId: 'adm made' });
    const env = { KEY_PREFIX: fx.prefix };
    for (const [cmd, lacks] of [['show', 'run record'], ['refused', 'record of users refused']] as const) {
      const r = await runCli(['campaigns', cmd, 'adm made'], env);
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toContain(`campaign "adm made" was never run by generate, so it has no ${lacks}`);
      expect(r.stderr).toContain("made by the admin route (POST /v1/admin/tokens/generate). What became of them: referral-manager campaigns results 'adm made'");
      expect(r.stderr).not.toMatch(/does not exist|revoked at/);
    }
    await fx.engine.revokeCampaign('adm made');
    expect((await runCli(['campaigns', 'show', 'adm made'], env)).stderr).toMatch(/campaigns results 'adm made'; revoked at \d{4}-/);
    // an id nothing knows still does not exist
    const none = await runCli(['campaigns', 'refused', 'never-made'], env);
    expect([none.code, none.stderr]).toEqual([1, 'error: campaign_not_found: campaign "never-made" does not exist\n']);
  });

  // README: exit 2 is a usage error, as tokens list answers a malformed id; these exited 1 "does not exist"
  // (a control character printed to the terminal as given)
  it('a malformed campaign id is a usage error (exit 2) for show, results and refused', async () => {
    const env = { KEY_PREFIX: fx.prefix };
    for (const cmd of ['show', 'results', 'refused']) {
      for (const [id, why] of [['bad\u0007id', 'must not contain control characters'], ['', 'must be 1..128 bytes, got 0'], ['x'.repeat(129), 'must be 1..128 bytes, got 129']]) {
        const r = await runCli(['campaigns', cmd, id!], env);
        expect([r.code, r.stderr.split('\n').slice(0, 2)], `${cmd} ${JSON.stringify(id)}`).toEqual([2, [`error: campaign id: ${why}`, `Usage: referral-manager campaigns ${cmd} [options] <id>`]]);
      }
    }
  });

  // failed outranked running: a campaign read "failed" while another of its satellites was still being served
  it('campaigns list: running while one satellite still runs, whatever another ended as', async () => {
    const store = new CampaignStore(fx.redis, fx.prefix);
    await store.open({ id: 'mixed-run', perUser: 1, satellites: ['s1', 's2'], createdAt: 1 });
    const claim = (await store.claim('mixed-run'))!;
    try {
      await store.setStatus('mixed-run', 's1', 'failed', 'boom');
      await store.setStatus('mixed-run', 's2', 'running');
      const listed = JSON.parse((await runCli(['campaigns', 'list', '--json'], { KEY_PREFIX: fx.prefix })).stdout) as { id: string; status: string }[];
      expect(listed.find((c) => c.id === 'mixed-run')?.status).toBe('running');
    } finally {
      await claim.release();
    }
  });

  // a run that failed (or was killed, or never reached a satellite) before the expiry read "failed" /
  // "interrupted" / "pending" once the expiry had passed, which says to --resume it: the resume refuses
  it('campaigns list and show: a campaign past its expiry with satellites left unserved is expired, a finished one stays done', async () => {
    const store = new CampaignStore(fx.redis, fx.prefix);
    const past = Date.now() - 60_000;
    await store.open({ id: 'lapsed-failed', perUser: 1, satellites: ['s1', 's2'], createdAt: 1, expiresAt: past });
    await store.setStatus('lapsed-failed', 's1', 'done');
    await store.setStatus('lapsed-failed', 's2', 'failed', 'HTTP 503');
    await store.open({ id: 'lapsed-killed', perUser: 1, satellites: ['s1'], createdAt: 2, expiresAt: past });
    await store.setStatus('lapsed-killed', 's1', 'running');
    await store.open({ id: 'lapsed-pending', perUser: 1, satellites: ['s1'], createdAt: 3, expiresAt: past });
    await store.open({ id: 'lapsed-done', perUser: 1, satellites: ['s1', 's2'], createdAt: 4, expiresAt: past });
    await store.setStatus('lapsed-done', 's1', 'done');
    await store.setStatus('lapsed-done', 's2', 'removed');
    await store.open({ id: 'live-failed', perUser: 1, satellites: ['s1'], createdAt: 5, expiresAt: Date.now() + 3_600_000 });
    await store.setStatus('live-failed', 's1', 'failed', 'HTTP 503');
    const env = { KEY_PREFIX: fx.prefix };
    const listed = JSON.parse((await runCli(['campaigns', 'list', '--json'], env)).stdout) as { id: string; status: string }[];
    const statusOf = Object.fromEntries(listed.filter((c) => /^(lapsed|live)-/.test(c.id)).map((c) => [c.id, c.status]));
    expect(statusOf).toEqual({ 'lapsed-failed': 'expired', 'lapsed-killed': 'expired', 'lapsed-pending': 'expired', 'lapsed-done': 'done', 'live-failed': 'failed' });
    const table = (await runCli(['campaigns', 'list'], env)).stdout.split('\n').find((l) => l.startsWith('lapsed-failed '));
    expect(table).toMatch(/ expired$/);
    const shown = await runCli(['campaigns', 'show', 'lapsed-failed'], env);
    expect(shown.stdout.split('\n')[0]).toMatch(/, expired$/);
    // the satellite keeps what its run ended as, with the error
    expect(shown.stdout).toMatch(/\ns2 .* failed +HTTP 503\n/);
    expect(JSON.parse((await runCli(['campaigns', 'show', 'lapsed-killed', '--json'], env)).stdout)).toMatchObject({ status: 'expired', progress: { s1: { status: 'interrupted' } } });
  });
});

// SSCAN answers a set kept as an intset (numeric ids, up to set-max-intset-entries, which an operator may raise
// to save memory) in one page whatever COUNT says: its 130,000 users spread into one push overflowed the stack
describe('refusals of a satellite with 130,000 numeric user ids, the set kept compact (a private redis-server)', () => {
  it('campaigns refused lists them all, and the snapshot copy reads them', async () => {
    const server = await privateRedis(['--set-max-intset-entries', '200000']);
    await server.start();
    const redis = createRedis({ redisUrl: server.url, redisClusterNodes: [] });
    try {
      const store = new CampaignStore(redis, 'intset');
      await store.open({ id: 'many', perUser: 1, satellites: ['s1'], createdAt: 1 });
      const users = Array.from({ length: 130_000 }, (_, i) => String(i + 1));
      expect(await store.recordRefused('many', 's1', users)).toBe(130_000);
      expect(await redis.object('ENCODING', 'intset:{camp:many}:rej:s1')).toBe('intset');

      const listed = await runCli(['campaigns', 'refused', 'many', '--json'], { KEY_PREFIX: 'intset', REDIS_URL: server.url });
      expect(listed.code, listed.stderr).toBe(0);
      expect((JSON.parse(listed.stdout) as Record<string, string[]>).s1!.length).toBe(130_000);

      const copy = new CampaignCopy(redis, 'intset') as unknown as { read(all: boolean): Promise<{ refusals: { users: string[] }[] }> };
      expect((await copy.read(true)).refusals.map((r) => r.users.length)).toEqual([130_000]);
    } finally {
      redis.disconnect();
      await server.dispose();
    }
  }, 120_000);
});
