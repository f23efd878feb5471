import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Leadership } from '../src/snapshot/leadership.js';
import { CampaignStore } from '../src/store/campaign-store.js';
import { Lease } from '../src/store/lease.js';
import { engineFixtureFor } from './helpers/redis.js';

describe('leases (snapshot writer, campaign runs) on real Redis', () => {
  const f = engineFixtureFor('lease');

  it('a holder whose lease lapsed can neither renew nor release the next holder\'s', async () => {
    const key = `${f.prefix}:lease-a`;
    // 1 s: the second holder's first try has to come within it, also on a busy machine
    const first = new Lease(f.redis, key, 1000);
    const second = new Lease(f.redis, key, 60_000);
    expect(await first.acquire()).toBe(true);
    expect(await second.acquire()).toBe(false);
    // the first holder never renews: its lease lapses and the second gets it
    let got = false;
    for (const end = Date.now() + 30_000; !got && Date.now() < end; ) {
      await sleep(100);
      got = await second.acquire();
    }
    expect(got).toBe(true);
    expect(await first.renew()).toBe(false);
    await first.release();
    expect(await f.redis.get(key)).toBe(second.id);
    expect(await f.redis.pttl(key)).toBeGreaterThan(50_000);
    expect(await second.renew()).toBe(true);
    await second.release();
    expect(await f.redis.exists(key)).toBe(0);
  });

  it('names its holder, spaces and all, tells a holder its own lease, and how long until it lapses', async () => {
    const key = `${f.prefix}:lease-b`;
    const mine = new Lease(f.redis, key, 60_000, 'host pid 42');
    const other = new Lease(f.redis, key, 60_000, 'other');
    expect([await other.holder(), await other.remainingMs()]).toEqual([undefined, 0]);
    expect(await mine.acquire()).toBe(true);
    expect(await mine.state()).toEqual({ owner: 'host pid 42', mine: true });
    expect(await other.state()).toEqual({ owner: 'host pid 42', mine: false });
    expect(await other.remainingMs()).toBeGreaterThan(50_000);
    // a key without expiry (no Lease sets one) counts as a whole lease, not as lapsed
    await f.redis.set(key, 'someone else');
    expect(await other.remainingMs()).toBe(60_000);
    await f.redis.del(key);
  });

  it('a lease an older release took (a bare UUID, or no owner before its UUID) is held by an unnamed holder', async () => {
    const key = `${f.prefix}:lease-old`;
    const lease = new Lease(f.redis, key, 60_000, 'host pid 42');
    for (const old of ['0b7e5a1c-6f7d-4d1e-9c2a-3f4b5c6d7e8f', ' 0b7e5a1c-6f7d-4d1e-9c2a-3f4b5c6d7e8f']) {
      await f.redis.set(key, old, 'PX', 60_000);
      expect(await lease.state()).toEqual({ owner: '', mine: false });
      expect(await lease.acquire()).toBe(false);
    }
    await f.redis.del(key);
  });

  it('hold keeps the lease past its length by renewing it within it', async () => {
    const key = `${f.prefix}:lease-c`;
    // 900 ms, renewed every 300 ms: held while it renews, also through a 500 ms stall of a busy CI machine
    const held = await new Lease(f.redis, key, 900).hold();
    await sleep(2500);
    expect(await held!.confirm()).toBe(true);
    await held!.release();
    expect(await f.redis.exists(key)).toBe(0);
  });

  it('a campaign run claimed after an earlier run\'s claim lapsed is not released by the earlier run', async () => {
    const campaigns = new CampaignStore(f.redis, f.prefix);
    // 300 ms, renewed every 100 ms: held while it renews, also on a busy machine
    const stalled = await campaigns.claim('autumn', 300);
    expect(stalled).toBeDefined();
    expect(await campaigns.claim('autumn')).toBeUndefined();
    // the first run's claim lapses (a run stalled past its lease; its renew timer keeps firing) ...
    await f.redis.del(`${f.prefix}:{camp:autumn}:run`);
    const next = await campaigns.claim('autumn');
    expect(next).toBeDefined();
    await sleep(250); // two of the stalled run's renew ticks (sent before the PTTL below, on the same connection)
    expect(await f.redis.pttl(`${f.prefix}:{camp:autumn}:run`)).toBeGreaterThan(10_000); // not cut to the stalled run's 300 ms
    // ... and when it comes back, its release leaves the second run's claim alone
    await stalled!.release();
    expect(await campaigns.claim('autumn')).toBeUndefined();
    await next!.release();
    const again = await campaigns.claim('autumn');
    expect(again).toBeDefined();
    await again!.release();
  });

  // during a rolling upgrade a writer of the older release takes the lease as a bare UUID: the loss was said
  // as "to the writer of ; it writes to Postgres now"
  it('a snapshot writer losing its lease to an older release\'s writer says so, not an empty name', async () => {
    const key = `${f.prefix}:lease-old`;
    const said: string[] = [];
    const leadership = new Leadership(new Lease(f.redis, key, 60_000, 'host pid 1'), (_, msg) => said.push(msg));
    expect((await leadership.confirm()).holds).toBe(true);
    await f.redis.set(key, randomUUID(), 'PX', 60_000);
    expect((await leadership.confirm()).holds).toBe(false);
    expect(said).toEqual(['lost the snapshot lease to the writer of an older release (its lease names no host); it writes to Postgres now']);
    await f.redis.del(key);
  });
});
