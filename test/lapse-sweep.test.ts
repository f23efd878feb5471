import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { LAPSE_LOG, sweepLapsed } from '../src/tokens/lapse.js';
import { logTo } from '../src/log.js';
import { hexOf } from '../src/store/codec.js';
import { placeOfToken } from '../src/store/keys.js';
import { engineFixtureFor } from './helpers/redis.js';

/** The serve primary's sweep (src/tokens/lapse.ts) as it runs, on real Redis: what it gives back and what it logs. */
describe('the lapse sweep service (real Redis)', () => {
  const f = engineFixtureFor('lapsesvc');

  it('a shard failing every sweep is logged once, not at every sweep, and its recovery once; the other shards are swept meanwhile', async () => {
    const made = await f.engine.generate({ owners: [{ ownerSatelliteId: 'sat', ownerUserId: 'a' }, { ownerSatelliteId: 'sat', ownerUserId: 'b' }], perUser: 1 });
    const [ta, tb] = made.tokens.map((t) => t.token) as [string, string];
    const [sa, sb] = [placeOfToken(hexOf(ta)).shard, placeOfToken(hexOf(tb)).shard];
    expect(sa).not.toBe(sb);
    const broken = f.store.keys.leases(sb);
    await f.redis.set(broken, 'not a sorted set');
    const r = await f.engine.reserve(ta, 'h', 20);
    await sleep(r.token!.leaseExpiresAt! + 30 - Date.now());
    const lines: string[] = [];
    const sweep = sweepLapsed(f.engine, 20, 0, logTo(LAPSE_LOG, (line) => lines.push(line)));
    try {
      // as stored: a lookup reports a lapsed lease as unredeemed already
      const stored = async () => (await f.store.storedStates([ta]))[0];
      for (const end = Date.now() + 10_000; (await stored()) !== 'unredeemed' && Date.now() < end; ) await sleep(20);
      expect(await stored()).toBe('unredeemed');
      await sleep(300); // ~15 more sweeps, each failing on the broken shard
      expect(lines).toEqual([expect.stringMatching(new RegExp(`^\\[lapse\\] error: the sweep of lapsed reservations failed on 1 shard\\(s\\) \\(${sb}\\): WRONGTYPE`))]);
      await f.redis.del(broken);
      for (const end = Date.now() + 10_000; lines.length < 2 && Date.now() < end; ) await sleep(20);
      expect(lines.slice(1)).toEqual(['[lapse] sweeping lapsed reservations works again']);
    } finally {
      await sweep.stop();
      await f.redis.del(broken);
    }
  });
});
