import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SCRIPT_NAMES, ensureScripts, readScript } from '../src/store/scripts.js';
import { masters } from '../src/store/redis.js';
import { TokenStore } from '../src/store/token-store.js';
import { TokenEngine } from '../src/tokens/engine.js';
import { privateRedisClient } from './helpers/redis.js';
import { NO_REPLICA_WAIT } from '../src/store/replicas.js';

// A private redis-server: SCRIPT FLUSH and restarts would disturb anyone else's scripts on a shared one.
describe('Lua scripts are reloaded when Redis has lost them (NOSCRIPT)', () => {
  let p: Awaited<ReturnType<typeof privateRedisClient>>;
  let engine: TokenEngine;

  beforeAll(async () => {
    p = await privateRedisClient();
    engine = new TokenEngine(new TokenStore(p.redis, 'scripts', NO_REPLICA_WAIT));
    await engine.store.preload();
  });
  afterAll(async () => {
    await p?.close();
  });

  const owners = (user: string) => [{ ownerSatelliteId: 'sat', ownerUserId: user }];
  const shas = SCRIPT_NAMES.map((name) => createHash('sha1').update(readScript(name)).digest('hex'));
  const loaded = async () => (await p.redis.call('SCRIPT', 'EXISTS', ...shas)) as number[];

  it('after SCRIPT FLUSH every operation still works and loads its script again', async () => {
    const { tokens } = await engine.generate({ owners: owners('a'), perUser: 3 });
    expect((await loaded()).every((x) => x === 1)).toBe(true);
    await p.redis.call('SCRIPT', 'FLUSH');
    expect((await loaded()).some((x) => x === 1)).toBe(false);
    expect((await engine.redeem(tokens[0]!.token, 'other', 'new-user')).code).toBe('ok');
    expect((await engine.reserve(tokens[1]!.token, 'other', 60_000)).code).toBe('ok');
    expect((await engine.listUnredeemed('sat', 'a')).map((t) => t.token)).toEqual([tokens[2]!.token]);
    expect((await engine.generate({ owners: owners('b'), perUser: 2 })).tokens).toHaveLength(2);
    expect((await engine.lookup(tokens[0]!.token))?.state).toBe('redeemed');
  });

  it('after a Redis restart (data kept by AOF, scripts gone) the same client goes on', async () => {
    const { tokens } = await engine.generate({ owners: owners('c'), perUser: 2 });
    await p.server.stop();
    await p.server.start();
    expect((await engine.redeem(tokens[0]!.token, 'other', 'after-restart')).code).toBe('ok');
    expect((await engine.lookup(tokens[1]!.token))?.state).toBe('unredeemed');
  });

  // the readiness probe's check: a Redis that has some of the scripts (one EVAL since a flush) lacks the rest
  it('ensureScripts loads every script on a Redis that has only one of them', async () => {
    await p.redis.call('SCRIPT', 'FLUSH');
    await p.redis.call('SCRIPT', 'LOAD', readScript(SCRIPT_NAMES[0]));
    expect(await ensureScripts(masters(p.redis))).toBe('reloaded');
    expect(await loaded()).toEqual(shas.map(() => 1));
    expect(await ensureScripts(masters(p.redis))).toBe('loaded');
  });
});
