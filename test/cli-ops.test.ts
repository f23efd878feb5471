import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../src/free-port.js';
import { hashKey } from '../src/digest.js';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { runCli } from './helpers/cli.js';
import { engineFixture, engineFixtureFor, SHARED_REDIS_URL, type EngineFixture } from './helpers/redis.js';
import { Keys } from '../src/store/keys.js';
import { writeSnapshotStatus } from '../src/snapshot/status.js';
import { createRedis, masters } from '../src/store/redis.js';
import { testCluster } from './helpers/http.js';

/** The ops commands, run as the built binary against real Redis under a private prefix. */
describe('referral-manager satellites | tokens | stats (child process, real Redis)', () => {
  let fx: EngineFixture;
  let registry: SatelliteRegistry;
  let env: Record<string, string>;
  const cli = (...args: string[]) => runCli(args, env);

  beforeAll(async () => {
    fx = await engineFixture({ label: 'cliops' });
    registry = new SatelliteRegistry(fx.redis, fx.prefix);
    env = { KEY_PREFIX: fx.prefix, REDIS_URL: SHARED_REDIS_URL };
  });
  afterAll(async () => {
    await fx?.close();
  });

  describe('satellites', () => {
    it('add prints the key once (text and --json); the key authenticates; duplicates fail', async () => {
      const json = await cli('satellites', 'add', '--id', 'sat-a', '--url', 'http://127.0.0.1:9/', '--name', 'A', '--outbound-key', 'out-secret-a', '--json');
      expect(json.code, json.stderr).toBe(0);
      const added = JSON.parse(json.stdout) as { id: string; apiKey: string };
      expect(Object.keys(added).sort()).toEqual(['apiKey', 'id']);
      expect(added.id).toBe('sat-a');
      expect((await registry.keyHolder(added.apiKey))?.id).toBe('sat-a');
      expect(await registry.get('sat-a')).toMatchObject({ url: 'http://127.0.0.1:9/', name: 'A', outboundKey: 'out-secret-a' });

      const text = await cli('satellites', 'add', '--id', 'sat-b');
      expect(text.code, text.stderr).toBe(0);
      expect(text.stdout).toMatch(/shown only this once/);
      const key = /^(rmk_\S+)$/m.exec(text.stdout)?.[1];
      expect((await registry.keyHolder(key!))?.id).toBe('sat-b');

      const dup = await cli('satellites', 'add', '--id', 'sat-a');
      expect(dup.code).toBe(1);
      expect(dup.stderr).toMatch(/satellite "sat-a" is already registered/);
    });

    it('update sets and clears a url, name and outbound key; the API key keeps working; bad use is exit 2', async () => {
      const { apiKey } = await registry.add({ id: 'sat-u', name: 'Old', outboundKey: 'out-u' });
      const set = await cli('satellites', 'update', 'sat-u', '--url', 'https://u.example', '--clear-name', '--json');
      expect(set.code, set.stderr).toBe(0);
      // the same fields as an item of list --json, which scripts may already read
      expect(JSON.parse(set.stdout)).toEqual({ id: 'sat-u', name: null, url: 'https://u.example', hasOutboundKey: true, outboundKeySet: true, createdAt: expect.any(Number) });
      expect(set.stdout).not.toContain('out-u');
      const text = await cli('satellites', 'update', 'sat-u', '--clear-outbound-key', '--name', 'New');
      expect(text.code, text.stderr).toBe(0);
      expect(text.stdout).toMatch(/satellite "sat-u" updated: url https:\/\/u\.example, name New, outbound key not set/);
      expect(await registry.get('sat-u')).toEqual({ id: 'sat-u', name: 'New', url: 'https://u.example', createdAt: expect.any(Number) });
      expect((await registry.keyHolder(apiKey))?.id).toBe('sat-u');

      for (const [args, message] of [
        [[], /nothing to change/],
        [['--url', 'https://x.example', '--clear-url'], /--url and --clear-url contradict/],
        [['--url', 'not a url'], /url: not a URL/],
      ] as const) {
        const bad = await cli('satellites', 'update', 'sat-u', ...args);
        expect(bad.code, bad.stderr).toBe(2);
        expect(bad.stderr).toMatch(message);
      }
      const missing = await cli('satellites', 'update', 'ghost', '--name', 'x');
      expect(missing.code).toBe(1);
      expect(missing.stderr).toMatch(/satellite "ghost" is not registered/);
      await registry.remove('sat-u');
    });

    // --outbound-key shows the key in `ps` and the shell history of whoever registers a satellite
    it('--outbound-key-file reads the key from a file or stdin (one trailing newline dropped); with --outbound-key too, or unreadable, is exit 2', async () => {
      const dir = mkdtempSync(path.join(tmpdir(), 'rm-key-'));
      try {
        const file = path.join(dir, 'key');
        writeFileSync(file, 'file-secret\n');
        const added = await cli('satellites', 'add', '--id', 'sat-kf', '--outbound-key-file', file);
        expect(added.code, added.stderr).toBe(0);
        expect((await registry.get('sat-kf'))?.outboundKey).toBe('file-secret');
        const piped = await runCli(['satellites', 'update', 'sat-kf', '--outbound-key-file', '-'], env, { input: 'stdin-secret\r\n' });
        expect(piped.code, piped.stderr).toBe(0);
        expect((await registry.get('sat-kf'))?.outboundKey).toBe('stdin-secret');
        for (const [args, message] of [
          [['--outbound-key', 'x', '--outbound-key-file', file], /give the outbound key once/],
          [['--outbound-key-file', path.join(dir, 'missing')], /--outbound-key-file: ENOENT/],
          [['--outbound-key-file', file, '--clear-outbound-key'], /--outbound-key and --clear-outbound-key contradict/],
        ] as const) {
          const bad = await cli('satellites', 'update', 'sat-kf', ...args);
          expect(bad.code, bad.stderr).toBe(2);
          expect(bad.stderr).toMatch(message);
        }
        expect((await registry.get('sat-kf'))?.outboundKey).toBe('stdin-secret');
      } finally {
        rmSync(dir, { recursive: true, force: true });
        await registry.remove('sat-kf');
      }
    });

    it('list shows whether an outbound key is set, never a key', async () => {
      const json = await cli('satellites', 'list', '--json');
      expect(json.code, json.stderr).toBe(0);
      expect(JSON.parse(json.stdout)).toEqual([
        { id: 'sat-a', name: 'A', url: 'http://127.0.0.1:9/', hasOutboundKey: true, outboundKeySet: true, createdAt: expect.any(Number) },
        { id: 'sat-b', name: null, url: null, hasOutboundKey: false, outboundKeySet: false, createdAt: expect.any(Number) },
      ]);
      const text = await cli('satellites', 'list');
      expect(text.code, text.stderr).toBe(0);
      expect(text.stdout).toMatch(/^sat-a\s+A\s+http:\/\/127\.0\.0\.1:9\/\s+set\s/m);
      expect(text.stdout).toMatch(/^sat-b\s+-\s+-\s+not set\s/m);
      for (const out of [json.stdout, text.stdout]) {
        expect(out).not.toContain('out-secret-a');
        expect(out).not.toContain('rmk_');
      }
      // none registered: said, not an empty table; --json an empty array
      const none = { ...env, KEY_PREFIX: `${fx.prefix}-none` };
      expect((await runCli(['satellites', 'list'], none)).stdout).toBe('no satellites registered\n');
      expect(JSON.parse((await runCli(['satellites', 'list', '--json'], none)).stdout)).toEqual([]);
    });

    it('rotate-key: the new key authenticates, the old one only within --grace', async () => {
      const { apiKey: k0 } = await registry.rotateKey('sat-a', 0);
      const before = Date.now();
      const graced = await cli('satellites', 'rotate-key', 'sat-a', '--grace', '600000', '--json');
      const after = Date.now();
      expect(graced.code, graced.stderr).toBe(0);
      const { apiKey: k1 } = JSON.parse(graced.stdout) as { apiKey: string };
      expect(Object.keys(JSON.parse(graced.stdout))).toEqual(['apiKey']);
      expect((await registry.keyHolder(k1))?.id).toBe('sat-a');
      expect((await registry.keyHolder(k0))?.id).toBe('sat-a');
      // the old key's entry ends 600 s after the rotation, not later
      const until = Number((await fx.redis.hget(`${fx.prefix}:{sat}:keys`, hashKey(k0)))!.split('\t')[1]);
      expect(until).toBeGreaterThanOrEqual(before + 600_000);
      expect(until).toBeLessThanOrEqual(after + 600_000);

      const now = await cli('satellites', 'rotate-key', 'sat-a', '--grace', '0');
      expect(now.code, now.stderr).toBe(0);
      expect(now.stdout).toMatch(/old key no longer works/);
      const k2 = /^(rmk_\S+)$/m.exec(now.stdout)?.[1];
      expect((await registry.keyHolder(k2!))?.id).toBe('sat-a');
      expect((await registry.keyHolder(k1))?.id).toBeUndefined();
      expect((await registry.keyHolder(k0))?.id).toBeUndefined();
    });

    it('rotate-key without --grace uses KEY_GRACE_MS', async () => {
      const { apiKey: old } = await registry.rotateKey('sat-b', 0);
      const r = await runCli(['satellites', 'rotate-key', 'sat-b', '--json'], { ...env, KEY_GRACE_MS: '0' });
      expect(r.code, r.stderr).toBe(0);
      expect((await registry.keyHolder(old))?.id).toBeUndefined();
      expect((await registry.keyHolder((JSON.parse(r.stdout) as { apiKey: string }).apiKey))?.id).toBe('sat-b');
    });

    it('rotate-key with a grace past any date (--grace or KEY_GRACE_MS) is a usage error and rotates nothing', async () => {
      const { apiKey: current } = await registry.add({ id: 'sat-grace' });
      const runs = [
        await cli('satellites', 'rotate-key', 'sat-grace', '--grace', '999999999999999999999'),
        await runCli(['satellites', 'rotate-key', 'sat-grace'], { ...env, KEY_GRACE_MS: '9007199254740991' }),
      ];
      for (const r of runs) {
        expect(r.code, r.stderr).toBe(2);
        expect(r.stdout).not.toMatch(/rmk_/);
      }
      // a bad flag is said as a usage error, not as the environment's configuration
      expect(runs[0]!.stderr).toMatch(/^error: --grace: expected 0\.\.315360000000, got 999999999999999999999\n/);
      expect(runs[1]!.stderr).toMatch(/^invalid configuration:/);
      expect(runs[1]!.stderr).toMatch(/KEY_GRACE_MS: expected 0\.\./);
      // still the only key, with no end
      expect(await fx.redis.hget(`${fx.prefix}:{sat}:keys`, hashKey(current))).toBe('sat-grace\t');
      expect((await registry.keyHolder(current))?.id).toBe('sat-grace');
      await registry.remove('sat-grace');
    });

    it('remove: the satellite and its key are gone; unknown satellites exit 1 with a clear message', async () => {
      const { apiKey } = await registry.add({ id: 'sat-gone' });
      const r = await cli('satellites', 'remove', 'sat-gone');
      expect(r.code, r.stderr).toBe(0);
      expect(await registry.get('sat-gone')).toBeUndefined();
      expect((await registry.keyHolder(apiKey))?.id).toBeUndefined();
      for (const args of [['remove', 'sat-gone'], ['rotate-key', 'sat-gone']]) {
        const bad = await cli('satellites', ...args);
        expect(bad.code).toBe(1);
        expect(bad.stderr).toMatch(/satellite "sat-gone" is not registered/);
        expect(bad.stdout).toBe('');
      }
    });

    it('rotations at once leave no key behind: after remove, none of them authenticates', async () => {
      const { apiKey: first } = await registry.add({ id: 'sat-race' });
      const rotated = await Promise.all(Array.from({ length: 8 }, () => registry.rotateKey('sat-race', 60_000)));
      const keys = [first, ...rotated.map((r) => r.apiKey)];
      // every one works: the last rotation's key, and each one retired within its grace (a satellite may hold any)
      expect(await Promise.all(keys.map(async (k) => (await registry.keyHolder(k))?.id))).toEqual(Array(9).fill('sat-race'));
      // none is left untracked: the satellite's record names each retired key still in the index
      const record = await fx.redis.hgetall(`${fx.prefix}:{sat}:s:sat-race`);
      expect(new Set([record.keyHash, ...record.prevKeyHash!.split(' ')])).toEqual(new Set(keys.map((k) => hashKey(k))));
      // an entry an older, non-atomic rotation could have left in the index
      await fx.redis.hset(`${fx.prefix}:{sat}:keys`, hashKey('rmk_orphan'), 'sat-race\t');
      await registry.remove('sat-race');
      expect(await Promise.all([...keys, 'rmk_orphan'].map(async (k) => (await registry.keyHolder(k))?.id))).toEqual(Array(10).fill(undefined));
      expect(Object.values(await fx.redis.hgetall(`${fx.prefix}:{sat}:keys`)).filter((v) => v.startsWith('sat-race\t'))).toEqual([]);
    });
  });

  describe('tokens', () => {
    let u1: string[];
    let u2: string[];
    let other: string[];

    beforeAll(async () => {
      const a = await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'u1' }, { ownerSatelliteId: 'sat-a', ownerUserId: 'u2' }], perUser: 3, campaignId: 'camp-ops' });
      u1 = a.tokens.filter((t) => t.ownerUserId === 'u1').map((t) => t.token);
      u2 = a.tokens.filter((t) => t.ownerUserId === 'u2').map((t) => t.token);
      const b = await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-b', ownerUserId: 'u3' }], perUser: 4, campaignId: 'camp-other' });
      other = b.tokens.map((t) => t.token);
      expect((await fx.engine.redeem(u1[0]!, 'sat-b', 'new-user')).code).toBe('ok');
    });

    it('show: every field (text), the token as the engine sees it (--json)', async () => {
      const json = await cli('tokens', 'show', u1[0]!, '--json');
      expect(json.code, json.stderr).toBe(0);
      expect(JSON.parse(json.stdout)).toEqual(await fx.engine.lookup(u1[0]!));
      expect(JSON.parse(json.stdout)).toMatchObject({ state: 'redeemed', redeemerSatelliteId: 'sat-b', redeemerUserId: 'new-user' });
      const text = await cli('tokens', 'show', u1[0]!);
      expect(text.code, text.stderr).toBe(0);
      const fields = ['token', 'state', 'ownerSatelliteId', 'ownerUserId', 'campaignId', 'createdAt', 'expiresAt', 'reservationId', 'reservedBy', 'leaseExpiresAt', 'redeemerSatelliteId', 'redeemerUserId', 'redeemedAt'];
      expect(text.stdout.trim().split('\n').map((l) => l.split(/\s+/)[0])).toEqual(fields);
      expect(text.stdout).toMatch(/^redeemerUserId\s+new-user$/m);
      expect(text.stdout).toMatch(/^campaignId\s+camp-ops$/m);
      expect(text.stdout).not.toMatch(/expired/);
      // an expired token is stored unredeemed until a purge: the text says it cannot be redeemed
      const [soon] = (await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'u-exp' }], perUser: 1, campaignId: 'camp-exp', expiresAt: Date.now() + 300 })).tokens;
      await new Promise((r) => setTimeout(r, 400));
      const expired = await cli('tokens', 'show', soon!.token);
      expect(expired.stdout).toMatch(/^state\s+unredeemed \(expired: redeem and reserve answer 410 token_expired\)$/m);
      // redeemed before its expiry: no longer open, so not said expired
      const [used] = (await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-a', ownerUserId: 'u-exp2' }], perUser: 1, campaignId: 'camp-exp', expiresAt: Date.now() + 300 })).tokens;
      expect((await fx.engine.redeem(used!.token, 'sat-b', 'u-new-exp')).code).toBe('ok');
      await new Promise((r) => setTimeout(r, 400));
      const redeemedLate = await cli('tokens', 'show', used!.token);
      expect(redeemedLate.stdout).toMatch(/^state\s+redeemed$/m);
    });

    it('show: an unknown token exits 1, a malformed one exits 2 with the usage line', async () => {
      const unknown = await cli('tokens', 'show', '0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d');
      expect(unknown.code).toBe(1);
      expect(unknown.stderr).toMatch(/token "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d" not found/);
      const malformed = await cli('tokens', 'show', 'not-a-token');
      expect(malformed.code).toBe(2);
      expect(malformed.stderr).toMatch(/^Usage: referral-manager tokens show \[options\] <token>$/m);
    });

    it("list: the user's unredeemed tokens", async () => {
      const json = await cli('tokens', 'list', '--satellite', 'sat-a', '--user', 'u1', '--json');
      expect(json.code, json.stderr).toBe(0);
      const listed = JSON.parse(json.stdout) as { token: string; campaignId: string }[];
      expect(listed.map((t) => t.token).sort()).toEqual(u1.slice(1).sort());
      expect(listed.every((t) => t.campaignId === 'camp-ops')).toBe(true);
      const text = await cli('tokens', 'list', '--satellite', 'sat-a', '--user', 'u1');
      expect(text.code, text.stderr).toBe(0);
      for (const t of u1.slice(1)) expect(text.stdout).toContain(t);
      expect(text.stdout).not.toContain(u1[0]!);
      expect(text.stderr).toBe('');
      // a mistyped satellite id finds nothing, as a user without tokens does: said on stderr
      const typo = await cli('tokens', 'list', '--satellite', 'sat-typo', '--user', 'u1');
      expect([typo.code, typo.stdout, typo.stderr]).toEqual([0, 'no unredeemed tokens for user "u1" of satellite "sat-typo"\n', 'note: satellite "sat-typo" is not registered (referral-manager satellites list)\n']);
      // tokens found under an id no longer registered (removed since): they are listed, no note
      await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-unlisted', ownerUserId: 'u1' }], perUser: 1, campaignId: 'camp-ops' });
      const unlisted = await cli('tokens', 'list', '--satellite', 'sat-unlisted', '--user', 'u1');
      expect([unlisted.code, unlisted.stderr]).toEqual([0, '']);
    });

    it("redeemed: the user's redeemed tokens, with who redeemed them and when", async () => {
      const json = await cli('tokens', 'redeemed', '--satellite', 'sat-a', '--user', 'u1', '--json');
      expect(json.code, json.stderr).toBe(0);
      const t = (await fx.engine.lookup(u1[0]!))!;
      expect(JSON.parse(json.stdout)).toEqual([{ token: u1[0], campaignId: 'camp-ops', redeemerSatelliteId: 'sat-b', redeemerUserId: 'new-user', redeemedAt: t.redeemedAt }]);
      const text = await cli('tokens', 'redeemed', '--satellite', 'sat-a', '--user', 'u1');
      expect(text.code, text.stderr).toBe(0);
      expect(text.stdout).toMatch(new RegExp(`^${u1[0]} +camp-ops +sat-b +new-user +${new Date(t.redeemedAt!).toISOString()}$`, 'm'));
      const none = await cli('tokens', 'redeemed', '--satellite', 'sat-a', '--user', 'u2');
      expect([none.stdout, none.stderr]).toEqual(['no redeemed tokens for user "u2" of satellite "sat-a"\n', '']);
      // a mistyped satellite id finds no referrals, as a user nobody joined through does: said on stderr, as tokens list says it
      const typo = await cli('tokens', 'redeemed', '--satellite', 'sat-typo', '--user', 'u1');
      expect([typo.code, typo.stdout, typo.stderr]).toEqual([0, 'no redeemed tokens for user "u1" of satellite "sat-typo"\n', 'note: satellite "sat-typo" is not registered (referral-manager satellites list)\n']);
      const typoJson = await cli('tokens', 'redeemed', '--satellite', 'sat-typo', '--user', 'u1', '--json');
      expect([typoJson.code, JSON.parse(typoJson.stdout), typoJson.stderr]).toEqual([0, [], 'note: satellite "sat-typo" is not registered (referral-manager satellites list)\n']);
    });

    it('revoke <token>...: a result code per token, exit 1 when one was not revoked', async () => {
      const unknown = '0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d';
      const r = await cli('tokens', 'revoke', u1[1]!, u1[0]!, unknown);
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(new RegExp(`^${u1[1]}\\s+ok$`, 'm'));
      expect(r.stdout).toMatch(new RegExp(`^${u1[0]}\\s+already_redeemed$`, 'm'));
      expect(r.stdout).toMatch(new RegExp(`^${unknown}\\s+not_found$`, 'm'));
      expect(r.stdout).toMatch(/revoked 1 of 3 tokens/);
      expect((await fx.engine.lookup(u1[1]!))!.state).toBe('revoked');
      expect((await fx.engine.lookup(u1[0]!))!.state).toBe('redeemed');

      const again = await cli('tokens', 'revoke', u1[1]!, '--json');
      expect(again.code, again.stderr).toBe(0);
      expect(JSON.parse(again.stdout)).toEqual({ revoked: 0, results: [{ token: u1[1], code: 'revoked' }] });
      // a redeemed token alone fails too: it stays usable as a referral, the revoke did not happen
      const redeemedOnly = await cli('tokens', 'revoke', u1[0]!, '--json');
      expect([redeemedOnly.code, JSON.parse(redeemedOnly.stdout)]).toEqual([1, { revoked: 0, results: [{ token: u1[0], code: 'already_redeemed' }] }]);
    });

    it('revoke --satellite --user and --campaign revoke every open token of the user / campaign', async () => {
      const owner = await cli('tokens', 'revoke', '--satellite', 'sat-a', '--user', 'u2');
      expect(owner.code, owner.stderr).toBe(0);
      expect(owner.stdout).toMatch(/revoked 3 tokens/);
      for (const t of u2) expect((await fx.engine.lookup(t))!.state).toBe('revoked');

      expect((await fx.engine.redeem(other[0]!, 'sat-a', 'x')).code).toBe('ok');
      const camp = await cli('tokens', 'revoke', '--campaign', 'camp-other', '--json');
      expect(camp.code, camp.stderr).toBe(0);
      expect(JSON.parse(camp.stdout)).toEqual({ revoked: 3 });
      expect((await fx.engine.lookup(other[0]!))!.state).toBe('redeemed');
      for (const t of other.slice(1)) expect((await fx.engine.lookup(t))!.state).toBe('revoked');
      // u1's last open token is untouched by both
      expect((await fx.engine.lookup(u1[2]!))!.state).toBe('unredeemed');
      expect(camp.stderr).toBe('');
      // a mistyped campaign id revokes nothing, and says so
      const typo = await cli('tokens', 'revoke', '--campaign', 'camp-othr', '--json');
      expect([typo.code, JSON.parse(typo.stdout), typo.stderr]).toEqual([0, { revoked: 0 }, expect.stringMatching(/^note: generate has no campaign "camp-othr" and no open token of it was found: check the id/)]);
      // so does a mistyped satellite id; a registered one whose user has nothing open left is no typo
      const typoOwner = await cli('tokens', 'revoke', '--satellite', 'sat-aa', '--user', 'u2', '--json');
      expect([typoOwner.code, JSON.parse(typoOwner.stdout), typoOwner.stderr]).toEqual([0, { revoked: 0 }, 'note: satellite "sat-aa" is not registered (referral-manager satellites list)\n']);
      expect((await cli('satellites', 'add', '--id', 'sat-none-open')).code).toBe(0);
      const none = await cli('tokens', 'revoke', '--satellite', 'sat-none-open', '--user', 'u2', '--json');
      expect([none.code, JSON.parse(none.stdout), none.stderr]).toEqual([0, { revoked: 0 }, '']);
    });

    it('purge --older-than longer than the epoch purges nothing (it was a confusing madeBefore usage error)', async () => {
      const r = await cli('tokens', 'purge', '--older-than', '200000d', '--dry-run', '--json');
      expect([r.code, r.stderr, JSON.parse(r.stdout || 'null')]).toEqual([0, '', { wouldPurge: 0 }]);
    });

    it('purge --campaign counts only that campaign; --older-than in weeks is weeks', async () => {
      // camp-other: 3 tokens revoked above, one redeemed; camp-ops has revoked and expired ones of its own
      const one = await cli('tokens', 'purge', '--older-than', '0s', '--campaign', 'camp-other', '--dry-run', '--json');
      expect([one.code, JSON.parse(one.stdout || 'null')]).toEqual([0, { wouldPurge: 3 }]);
      const all = await cli('tokens', 'purge', '--older-than', '0s', '--dry-run', '--json');
      expect((JSON.parse(all.stdout) as { wouldPurge: number }).wouldPurge).toBeGreaterThan(3);
      const t0 = Date.now();
      const weeks = await cli('tokens', 'purge', '--older-than', '2w', '--dry-run');
      const before = Date.parse(/made before (\S+)/.exec(weeks.stdout)![1]!);
      expect(t0 - before).toBeGreaterThan(13 * 86_400_000);
      expect(t0 - before).toBeLessThanOrEqual(14 * 86_400_000);
    });

    it("revoke --satellite --all-users revokes every open token of every user of that satellite, and only those", async () => {
      const owners = ['r1', 'r2', 'r3'].map((u) => ({ ownerSatelliteId: 'sat-retired', ownerUserId: u }));
      const made = (await fx.engine.generate({ owners, perUser: 2, campaignId: 'camp-retired' })).tokens.map((t) => t.token);
      expect((await fx.engine.redeem(made[0]!, 'sat-a', 'newcomer')).code).toBe('ok');
      const r = await cli('tokens', 'revoke', '--satellite', 'sat-retired', '--all-users');
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toBe('revoked 5 tokens of the users of satellite "sat-retired"\n');
      for (const t of made.slice(1)) expect((await fx.engine.lookup(t))!.state).toBe('revoked');
      expect((await fx.engine.lookup(made[0]!))!.state).toBe('redeemed');
      expect((await fx.engine.lookup(u1[2]!))!.state).toBe('unredeemed');
      const again = await cli('tokens', 'revoke', '--satellite', 'sat-retired', '--all-users', '--json');
      expect(JSON.parse(again.stdout)).toEqual({ revoked: 0 });
      // its tokens were made by the engine alone: the satellite was never registered
      expect(again.stderr).toMatch(/^note: satellite "sat-retired" is not registered/);
    });

    it('revoke needs exactly one form (exit 2, usage line)', async () => {
      const cases = [
        [],
        [u1[2]!, '--campaign', 'camp-ops'],
        ['--satellite', 'sat-a'],
        ['--user', 'u1'],
        ['--satellite', 'sat-a', '--user', 'u1', '--campaign', 'camp-ops'],
        ['--all-users'],
        ['--user', 'u1', '--all-users'],
        ['--satellite', 'sat-a', '--user', 'u1', '--all-users'],
        ['--satellite', 'sat-a', '--all-users', '--campaign', 'camp-ops'],
        ['not-a-token'],
      ];
      const runs = await Promise.all(cases.map((c) => cli('tokens', 'revoke', ...c)));
      for (const r of runs) {
        expect(r.code).toBe(2);
        expect(r.stderr).toMatch(/^Usage: referral-manager tokens revoke \[options\] \[token\.\.\.\]$/m);
      }
      expect((await fx.engine.lookup(u1[2]!))!.state).toBe('unredeemed');
    });
  });

  describe('stats', () => {
    const sfx = engineFixtureFor('clistats');

    it('per-satellite table and owner -> redeemer matrix; --json is the engine Stats', async () => {
      const senv = { KEY_PREFIX: sfx.prefix, REDIS_URL: SHARED_REDIS_URL };
      const empty = await runCli(['stats'], senv);
      expect(empty.code, empty.stderr).toBe(0);
      expect(empty.stdout).toMatch(/no tokens yet/);
      // the snapshot writer as Redis sees it, for on-call (there was no CLI view of it)
      expect(empty.stdout).toMatch(/^snapshot: Postgres off, no writer holds the lease; 0 events not yet in Postgres \(oldest 0\.0 s\)$/m);

      const owners = (sat: string, n: number) => Array.from({ length: n }, (_, i) => ({ ownerSatelliteId: sat, ownerUserId: `${sat}-u${i}` }));
      const a = (await sfx.engine.generate({ owners: owners('sat-a', 10), perUser: 2 })).tokens.map((t) => t.token);
      // one satellite: its row is the total, none added
      const single = await runCli(['stats'], senv);
      expect(single.stdout).toMatch(/^sat-a +20 +20 +0 +0 +0 +0$/m);
      expect(single.stdout).not.toMatch(/^total/m);
      const b = (await sfx.engine.generate({ owners: owners('sat-b', 5), perUser: 1 })).tokens.map((t) => t.token);
      // sat-a tokens: 2 redeemed on sat-b (cross), 1 on sat-a, 1 reserved, 1 revoked; sat-b: 1 redeemed on sat-a
      for (const t of a.slice(0, 2)) expect((await sfx.engine.redeem(t, 'sat-b', 'nb')).code).toBe('ok');
      expect((await sfx.engine.redeem(a[2]!, 'sat-a', 'na')).code).toBe('ok');
      expect((await sfx.engine.reserve(a[3]!, 'sat-b', 60_000)).code).toBe('ok');
      expect((await sfx.engine.revokeToken(a[4]!)).code).toBe('ok');
      expect((await sfx.engine.redeem(b[0]!, 'sat-a', 'na2')).code).toBe('ok');

      const json = await runCli(['stats', '--json'], senv);
      expect(json.code, json.stderr).toBe(0);
      const stats = JSON.parse(json.stdout);
      expect(stats).toEqual(await sfx.engine.stats());
      expect(stats.satellites).toEqual({
        'sat-a': { generated: 20, unredeemed: 15, reserved: 1, redeemed: 3, revoked: 1, purged: 0 },
        'sat-b': { generated: 5, unredeemed: 4, reserved: 0, redeemed: 1, revoked: 0, purged: 0 },
      });

      const text = await runCli(['stats'], senv);
      expect(text.code, text.stderr).toBe(0);
      const lines = text.stdout.split('\n');
      expect(lines).toContain('satellite  generated  unredeemed  reserved  redeemed  revoked  purged');
      expect(lines).toContain('sat-a             20          15         1         3        1       0');
      expect(lines).toContain('sat-b              5           4         0         1        0       0');
      expect(lines).toContain('total             25          19         1         4        1       0');
      // rows: owner, columns: redeemer
      expect(lines).toContain('owner \\ redeemer  sat-a  sat-b');
      expect(lines).toContain('sat-a                 1      2');
      expect(lines).toContain('sat-b                 1      0');
      // 25 generated + 4 redeemed + 1 reserved + 1 revoked, none written yet; a writer elsewhere named by its lease
      expect(text.stdout).toMatch(/^snapshot: Postgres off, no writer holds the lease; 31 events not yet in Postgres/m);
      await sfx.redis.set(new Keys(sfx.prefix).snapshotLease(), 'host-7 pid 42 0b7e', 'PX', 60_000);
      expect((await runCli(['stats'], senv)).stdout).toMatch(/^snapshot: Postgres off, writer: host-7 pid 42; 31 events/m);
      // the writer of an older release, still running in a rolling upgrade, named no host: its lease is a bare UUID
      await sfx.redis.set(new Keys(sfx.prefix).snapshotLease(), '0b7e5a1c-6f7d-4d1e-9c2a-3f4b5c6d7e8f', 'PX', 60_000);
      expect((await runCli(['stats'], senv)).stdout).toMatch(/^snapshot: Postgres off, writer: unnamed \(an older release\); 31 events/m);
      // a writer migrating the schema: which migration, or whose it waits for (what its status carries)
      await writeSnapshotStatus(sfx.redis, sfx.prefix, { state: 'migrating', migration: 'applying schema migration 9 (tokens_x)', at: Date.now() });
      expect((await runCli(['stats'], senv)).stdout).toMatch(/^snapshot: Postgres migrating \(applying schema migration 9 \(tokens_x\)\), writer: unnamed \(an older release\); 31 events/m);

      // shards the writer found lost (src/snapshot/lost.ts) have no counters left: stats said nothing of them
      expect((await runCli(['stats'], senv)).stderr).toBe('');
      await sfx.redis.sadd(new Keys(sfx.prefix).lostShards(), '17', '3');
      const warning = 'warning: Redis lost the tokens of shards 3,17 that the Postgres snapshot holds (they answer 404): restore them (runbook "Redis lost its data"); the counts leave their tokens out\n';
      for (const args of [['stats'], ['stats', '--json']]) {
        const r = await runCli(args, senv);
        expect([r.code, r.stderr]).toEqual([0, warning]);
      }
      expect(JSON.parse((await runCli(['stats', '--json'], senv)).stdout)).toEqual(stats);
    });
  });

  it('bad flags exit 2 with the usage line on stderr', async () => {
    const cases: [string[], string][] = [
      [['satellites', 'add', '--id', 'x', '--bogus'], 'Usage: referral-manager satellites add [options]'],
      [['satellites', 'add'], 'Usage: referral-manager satellites add [options]'],
      [['satellites', 'add', '--id', 'x', '--url', 'ftp://nope'], 'Usage: referral-manager satellites add [options]'],
      [['satellites', 'rotate-key', 'sat-a', '--grace', 'soon'], 'Usage: referral-manager satellites rotate-key [options] <id>'],
      [['satellites', 'remove'], 'Usage: referral-manager satellites remove [options] <id>'],
      [['tokens', 'list', '--satellite', 'sat-a'], 'Usage: referral-manager tokens list [options]'],
      [['stats', '--verbose'], 'Usage: referral-manager stats [options]'],
      [['tokens', 'purge'], 'Usage: referral-manager tokens purge [options]'],
      [['tokens', 'purge', '--older-than', 'soon'], 'Usage: referral-manager tokens purge [options]'],
      [['tokens', 'purge', '--older-than', '1d', '--campaign', ''], 'Usage: referral-manager tokens purge [options]'],
    ];
    const runs = await Promise.all(cases.map(([args]) => cli(...args)));
    runs.forEach((r, i) => {
      expect(r.code, cases[i]![0].join(' ')).toBe(2);
      expect(r.stderr.split('\n')).toContain(cases[i]![1]);
    });
    expect(await registry.get('x')).toBeUndefined();
  });

  it('--help of every command exits 0 and shows examples', async () => {
    const commands = [['satellites'], ['satellites', 'add'], ['satellites', 'list'], ['satellites', 'remove'], ['satellites', 'rotate-key'],
      ['tokens'], ['tokens', 'show'], ['tokens', 'list'], ['tokens', 'redeemed'], ['tokens', 'revoke'], ['tokens', 'purge'], ['stats'], ['export']];
    for (let i = 0; i < commands.length; i += 4) {
      const runs = await Promise.all(commands.slice(i, i + 4).map((c) => cli(...c, '--help')));
      runs.forEach((r, j) => {
        const name = commands[i + j]!.join(' ');
        expect(r.code, name).toBe(0);
        expect(r.stdout, name).toContain(`Usage: referral-manager ${name}`);
        expect(r.stdout, name).toContain('Examples:');
      });
    }
  });
});

// each master holds a share of the 64 shards: a sweep or a count that read one master came out a third short
describe('tokens revoke | purge and stats on a real 3-master Redis Cluster (child process)', () => {
  let cluster: Awaited<ReturnType<typeof testCluster>> | undefined;
  let fx: EngineFixture;
  let env: Record<string, string>;
  const cli = (...args: string[]) => runCli(args, env);

  beforeAll(async () => {
    cluster = await testCluster(3, []);
    fx = await engineFixture({ redis: () => createRedis({ redisUrl: '', redisClusterNodes: cluster!.nodes }), label: 'cliopsc' });
    env = { KEY_PREFIX: fx.prefix, REDIS_CLUSTER_NODES: cluster.nodes.join(',') };
  }, 60_000);
  afterAll(async () => {
    await fx?.close();
    await cluster?.stop();
  });

  it('revoke --campaign and --satellite --all-users sweep every master; purge and stats count every master\'s share', async () => {
    const owners = (sat: string) => Array.from({ length: 200 }, (_, i) => ({ ownerSatelliteId: sat, ownerUserId: `u${i}` }));
    await fx.engine.generate({ owners: owners('sat-c'), perUser: 2, campaignId: 'camp-c' });
    await fx.engine.generate({ owners: owners('sat-d'), perUser: 3, campaignId: 'camp-d' });
    // 200 owners hash to most of the 64 shards, so to every master
    const holding = await Promise.all(masters(fx.redis).map(async (m) => (await m.scan('0', 'MATCH', `${fx.prefix}:{*}:b:*`, 'COUNT', 100_000))[1].length));
    expect(holding.filter((n) => n > 0)).toHaveLength(3);

    const campaign = await cli('tokens', 'revoke', '--campaign', 'camp-c', '--json');
    expect([campaign.code, campaign.stdout.trim()], campaign.stderr).toEqual([0, '{"revoked":400}']);
    const satellite = await cli('tokens', 'revoke', '--satellite', 'sat-d', '--all-users', '--json');
    expect([satellite.code, satellite.stdout.trim()], satellite.stderr).toEqual([0, '{"revoked":600}']);
    const dry = await cli('tokens', 'purge', '--older-than', '0s', '--campaign', 'camp-c', '--dry-run', '--json');
    expect([dry.code, dry.stdout.trim()], dry.stderr).toEqual([0, '{"wouldPurge":400}']);
    const purge = await cli('tokens', 'purge', '--older-than', '0s', '--json');
    expect([purge.code, purge.stdout.trim()], purge.stderr).toEqual([0, '{"purged":1000}']);
    const stats = await cli('stats', '--json');
    expect(stats.code, stats.stderr).toBe(0);
    expect(JSON.parse(stats.stdout)).toEqual({
      satellites: {
        'sat-c': { generated: 400, unredeemed: 0, reserved: 0, redeemed: 0, revoked: 0, purged: 400 },
        'sat-d': { generated: 600, unredeemed: 0, reserved: 0, redeemed: 0, revoked: 0, purged: 600 },
      },
      redemptions: [],
    });
  }, 60_000);
});

describe('referral-manager config', () => {
  it('redacts the password of REDIS_URL and DATABASE_URL, also one without a user name', async () => {
    const cases = [
      { REDIS_URL: 'redis://:s3cret-r@127.0.0.1:6379', DATABASE_URL: 'postgres://:s3cret-p@127.0.0.1:5432/db' },
      { REDIS_URL: 'rediss://default:s3cret-r@127.0.0.1:6379/2', DATABASE_URL: 'postgresql://app:s3cret-p@db.example:5432/rm' },
    ];
    for (const env of cases) {
      for (const json of [false, true]) {
        const run = await runCli(json ? ['config', '--json'] : ['config'], env);
        expect(run.code, run.stderr).toBe(0);
        expect(run.stdout).not.toContain('s3cret');
        expect(run.stdout).toContain(env.REDIS_URL.replace('s3cret-r', '***'));
        expect(run.stdout).toContain(env.DATABASE_URL.replace('s3cret-p', '***'));
      }
    }
  });

  it('shows how many OUTBOUND_KEY_SECRETs are set, never one', async () => {
    const secrets = ['ab'.repeat(32), 'cd'.repeat(32)];
    const run = await runCli(['config'], { OUTBOUND_KEY_SECRET: secrets.join(',') });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/^OUTBOUND_KEY_SECRET +"\(2 set\)"$/m);
    for (const x of secrets) expect(run.stdout).not.toContain(x);
  });

  it('shows whether ADMIN_KEY and METRICS_KEY are set, never them', async () => {
    const keys = { ADMIN_KEY: 'admin-'.repeat(8), METRICS_KEY: 'metrics-'.repeat(6) };
    for (const args of [['config'], ['config', '--json']]) {
      const run = await runCli(args, keys);
      expect(run.code, run.stderr).toBe(0);
      expect(run.stdout).not.toContain('admin-admin');
      expect(run.stdout).not.toContain('metrics-metrics');
    }
    const rows = JSON.parse((await runCli(['config', '--json'], keys)).stdout) as { env: string; value: unknown }[];
    expect(rows.filter((r) => r.env in keys).map((r) => r.value)).toEqual(['(set)', '(set)']);
  });

  it('says where each value comes from: a global flag, the env, or the default', async () => {
    const run = await runCli(['--key-prefix', 'from-flag', 'config'], { KEY_PREFIX: 'from-env', PORT: '7490', REDIS_URL: '' });
    expect(run.code, run.stderr).toBe(0);
    const line = (env: string) => run.stdout.split('\n').find((l) => l.startsWith(`${env} `));
    expect(line('KEY_PREFIX')).toMatch(/"from-flag"  \(flag\)$/);
    expect(line('PORT')).toMatch(/7490$/);
    expect(line('REDIS_URL')).toMatch(/\(default\)$/);
    // one value column, also after the longest name (SNAPSHOT_TEST_CRASH_AFTER_COMMIT ran into its value)
    const lines = run.stdout.trim().split('\n');
    expect(new Set(lines.map((l) => /^\S+ +/.exec(l)![0].length)).size, run.stdout).toBe(1);
    const json = await runCli(['--key-prefix', 'from-flag', 'config', '--json'], { KEY_PREFIX: 'from-env' });
    const rows = JSON.parse(json.stdout) as { env: string; value: unknown; source: string }[];
    expect(rows.find((r) => r.env === 'KEY_PREFIX')).toMatchObject({ value: 'from-flag', source: 'flag', fromEnv: true });
    // fromEnv: whether the env names the setting at all, so a script can tell a default from a value set
    expect(rows.find((r) => r.env === 'PORT')).toMatchObject({ source: 'default', fromEnv: false });
    // every global flag overrides its env value, --database-url too
    const db = await runCli(['--database-url', 'postgres://flag@db.example:5432/rm', 'config', '--json'], { DATABASE_URL: 'postgres://env@db.example:5432/rm' });
    expect((JSON.parse(db.stdout) as { env: string }[]).find((r) => r.env === 'DATABASE_URL')).toMatchObject({ value: 'postgres://flag@db.example:5432/rm', source: 'flag' });
    // the Redis ones too (one table, cli/context.ts, gives each flag the setting it overrides)
    for (const [flags, env] of [
      [['--redis-url', 'redis://flag.example:6379/0'], { REDIS_URL: 'redis://env.example:6379/0' }],
      [['--redis-cluster-nodes', 'flag.example:7000'], { REDIS_CLUSTER_NODES: 'env.example:7000' }],
      [['--redis-sentinels', 'flag.example:26379', '--redis-sentinel-name', 'flagmaster'], { REDIS_SENTINELS: 'env.example:26379', REDIS_SENTINEL_NAME: 'envmaster' }],
    ] as const) {
      const run = await runCli([...flags, 'config', '--json'], env);
      const rows = JSON.parse(run.stdout) as { env: string; source: string }[];
      expect(rows.filter((r) => r.env in env).map((r) => [r.env, r.source]), run.stderr).toEqual(Object.keys(env).map((k) => [k, 'flag']));
    }
    // an empty flag is not given: the env's value, labelled as the env's (it showed "rm" (flag))
    const empty = await runCli(['--key-prefix', '', 'config', '--json'], { KEY_PREFIX: 'from-env' });
    const emptyRows = JSON.parse(empty.stdout) as { env: string; value: unknown; source: string }[];
    expect(emptyRows.find((r) => r.env === 'KEY_PREFIX')).toMatchObject({ value: 'from-env', source: 'env' });
  });
});

describe('a bad value of a flag that overrides a setting', () => {
  it('is a usage error: exit 2, the problem and the command\'s usage line, before anything runs', async () => {
    const cases: [string[], string, string][] = [
      [['serve', '--port', 'abc'], '--port: expected an integer, got "abc"', 'Usage: referral-manager serve [options]'],
      [['serve', '--workers', '0'], '--workers: expected 1..256, got 0', 'Usage: referral-manager serve [options]'],
      [['stats', '--redis-url', 'nope'], '--redis-url: not a URL: "nope"', 'Usage: referral-manager stats [options]'],
      [['snapshot', '--metrics-port', 'x'], '--metrics-port: expected an integer, got "x"', 'Usage: referral-manager snapshot [options]'],
    ];
    const runs = await Promise.all(cases.map(([args]) => runCli(args, {}, { timeoutMs: 20_000 })));
    runs.forEach((r, i) => {
      const [args, problem, usage] = cases[i]!;
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toContain(problem);
      expect(r.stderr.split('\n'), args.join(' ')).toContain(usage);
      // only flags refused: said as a usage error, not as the environment's configuration
      expect(r.stderr, args.join(' ')).not.toContain('invalid configuration');
    });
  });

  it('names a bad flag as typed and a bad env value by its env name in the same report', async () => {
    const r = await runCli(['serve', '--port', 'abc'], { WORKERS: '0' }, { timeoutMs: 20_000 });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--port: expected an integer, got "abc"');
    expect(r.stderr).toContain('WORKERS: expected 1..256, got 0');
    expect(r.stderr).not.toContain('PORT: expected');
    // an env value refused too: the configuration's report, as a bad env value alone gets
    expect(r.stderr).toContain('invalid configuration');
  });

  it('a bad env value stays a configuration error (exit 2) without a usage line: no flag was wrong', async () => {
    const r = await runCli(['stats'], { REDIS_URL: 'nope' });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('REDIS_URL: not a URL: "nope"');
    expect(r.stderr).not.toContain('Usage:');
  });
});

describe('Redis unreachable', () => {
  it('a command exits 1 with one error line, no stack trace, also with Cluster seeds (which waited forever)', async () => {
    const port = await freePort();
    const envs: Record<string, string>[] = [{ REDIS_URL: `redis://127.0.0.1:${port}` }, { REDIS_CLUSTER_NODES: `127.0.0.1:${port}` }];
    const runs = await Promise.all(envs.flatMap((env) => [['stats'], ['campaigns', 'list']].map((args) => runCli(args, env, { timeoutMs: 30_000 }))));
    for (const r of runs) {
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr.trim().split('\n'), r.stderr).toEqual([expect.stringMatching(/^error: cannot reach Redis .*within 10 s/)]);
    }
  }, 40_000);

  it('names the Redis it tried, also one given as --redis-url, its password hidden (it said REDIS_URL)', async () => {
    const port = await freePort();
    const r = await runCli(['--redis-url', `redis://:s3cret@127.0.0.1:${port}`, 'stats'], { REDIS_URL: 'redis://127.0.0.1:6379' }, { timeoutMs: 30_000 });
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain(`cannot reach Redis (redis://:<password>@127.0.0.1:${port})`);
    expect(r.stderr).not.toContain('s3cret');
  }, 40_000);
});
