import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { pgProxy } from './helpers/pg.js';
import { caughtUp, firstRoundDone, sleep, snapshotFixture, until } from './helpers/snapshot.js';
import { startSnapshotWriter } from '../src/snapshot/index.js';
import { snapshotMetrics } from '../src/snapshot/metrics.js';
import { Keys } from '../src/store/keys.js';
import { loadConfig } from '../src/config.js';

/** the cap of the writer's backoff (src/snapshot/backoff.ts) */
const CAP_MS = 5000;
/** what a loaded 2-core machine may add to a wait: bounds here are never tighter than this */
const SLACK_MS = 2500;

const pgErrors = async () => (await snapshotMetrics().errors.get()).values.find((v) => v.labels.where === 'postgres')?.value ?? 0;
const gapsOf = (at: number[]) => at.slice(1).map((t, i) => t - at[i]!);

/**
 * When the writer's Postgres tries failed: rm_snapshot_errors_total{where="postgres"} polled every 10 ms, one
 * time for each poll it grew at. `count` is every failure, also several seen at one poll.
 */
async function watchFailures() {
  const at: number[] = [];
  let count = 0;
  let last = await pgErrors();
  let reading = false;
  const timer = setInterval(() => {
    if (reading) return;
    reading = true;
    void pgErrors().then((n) => {
      if (n > last) {
        at.push(Date.now());
        count += n - last;
      }
      last = n;
      reading = false;
    });
  }, 10);
  return {
    at,
    get count() {
      return count;
    },
    stop: () => clearInterval(timer),
  };
}

/** Polls `done` every 20 ms until it holds, checking `bound` each time (so a writer hammering Postgres fails at once). */
async function waitFor(what: string, done: () => boolean, ms: number, bound: () => void = () => {}): Promise<void> {
  for (const end = Date.now() + ms; !done(); await sleep(20)) {
    bound();
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
  }
}

// The retry policy (100 ms doubled up to 5 s, from 100 ms again after a success) is unit-tested in Backoff and
// Lane.settle; these run the real writer, so they fail if its loop or a lane retries without waiting, never
// resets the wait, or waits uncapped. Each failed try counts one error, so the count's growth times the tries.
describe('snapshot writer backoff (real Redis and Postgres)', () => {
  const snap = snapshotFixture('snapbackoff');

  it('Postgres out of reach: the loop tries ever further apart, never more than 5 s apart, and from 100 ms again after a write', async () => {
    const proxy = await pgProxy(snap.db.url);
    const writer = await startSnapshotWriter(loadConfig({ keyPrefix: snap.fx.prefix, databaseUrl: proxy.url }), { log: () => {} });
    const failures = await watchFailures();
    try {
      await firstRoundDone(snap.fx.redis, snap.fx.prefix);
      // one event, so one lane fails at once (not only the next probe): each try of the loop is one failure
      const oneEvent = (user: string) => snap.fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-b', ownerUserId: user }], perUser: 1 });

      await proxy.close();
      await oneEvent('first-outage');
      // two waits of 2.5 s or more: 3.2 s, then the capped 5 s (uncapped, 6.4 s). Doubling from 100 ms, that is
      // 8 tries in 11.3 s; a loop that does not wait makes hundreds
      await waitFor('two long waits between failed tries', () => gapsOf(failures.at).filter((g) => g >= 2500).length >= 2, 30_000, () =>
        expect(failures.count, 'failed tries while Postgres is out of reach').toBeLessThan(25),
      );
      const out = gapsOf(failures.at);
      expect(out[0], 'the first wait').toBeLessThan(1500);
      expect(Math.max(...out), `the longest wait (${out.join(', ')} ms)`).toBeLessThan(CAP_MS + SLACK_MS);

      // back right after a failed try: the next one, the first to succeed, comes after the cap (uncapped, 12.8 s)
      proxy.open();
      const lastFailure = failures.at.at(-1)!;
      await waitFor('Postgres seen again', () => writer.status().state === 'up', 30_000);
      expect(Date.now() - lastFailure, 'the wait before the try that found Postgres back').toBeLessThan(CAP_MS + SLACK_MS);
      await caughtUp(snap.fx.redis, snap.fx.prefix, snap.pool, 1);

      // a second outage after writes went through: its tries start 100 ms apart again, not 5 s
      const mark = failures.at.length;
      await proxy.close();
      await oneEvent('second-outage');
      await waitFor('two failed tries in the second outage', () => failures.at.length >= mark + 2, 30_000);
      expect(failures.at[mark + 1]! - failures.at[mark]!, 'the first wait of the second outage').toBeLessThan(SLACK_MS);
      proxy.open();
      await caughtUp(snap.fx.redis, snap.fx.prefix, snap.pool, 2);
    } finally {
      failures.stop();
      await writer.stop();
      await proxy.close();
    }
  }, 60_000);

  it('an entry Postgres refuses: its lane tries it ever further apart, and from 100 ms again once the lane committed', async () => {
    const stream = new Keys(snap.fx.prefix).events(5); // lane 1's
    const poison = () => snap.fx.redis.xadd(stream, '*', 'type', 'redeemed', 'at', '1', 'row', ['not-a-uuid', 'redeemed', 'sat-p', 'x', 'c', '1', '', '', '', '', '', '', ''].join('\t'));
    const writer = await startSnapshotWriter(loadConfig({ keyPrefix: snap.fx.prefix, databaseUrl: snap.db.url }), { log: () => {} });
    const failures = await watchFailures();
    const bad: string[] = [];
    try {
      await firstRoundDone(snap.fx.redis, snap.fx.prefix);
      bad.push((await poison())!);
      // waits of 100, 200, 400, 800 ms, then 1.6 s (each ended at the loop's next poll, up to 500 ms later): 6
      // tries in about 3.5 s; a lane tried at every round of the loop, up to twice a second, makes 10 in 5 s
      await waitFor('a wait of 1.5 s between refusals', () => gapsOf(failures.at).some((g) => g >= 1500), 20_000, () =>
        expect(failures.count, 'refused tries of the entry').toBeLessThan(10),
      );

      await snap.fx.redis.xdel(stream, bad[0]!);
      const good = randomUUID();
      await snap.fx.redis.xadd(stream, '*', 'type', 'generated', 'at', '1', 'row', [good, 'unredeemed', 'sat-p', 'x', 'c', '1', '', '', '', '', '', '', ''].join('\t'));
      const copied = async () => Number((await snap.pool.query('SELECT count(*) AS n FROM tokens WHERE token = $1', [good])).rows[0].n);
      await until(copied, (n) => n === 1, 'the lane committing a sound entry after the refused one went', 20_000);

      const mark = failures.at.length;
      bad.push((await poison())!);
      await waitFor('two refusals of the second entry', () => failures.at.length >= mark + 2, 20_000);
      expect(failures.at[mark + 1]! - failures.at[mark]!, 'the first wait after the lane committed').toBeLessThan(SLACK_MS);
    } finally {
      failures.stop();
      await writer.stop();
      if (bad.length) await snap.fx.redis.xdel(stream, ...bad);
    }
  }, 60_000);
});
