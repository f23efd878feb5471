import client from 'prom-client';
import { every } from '../every.js';
import { onFirstUse } from '../on-first-use.js';
import { SATELLITE_COUNTERS } from '../store/model.js';
import type { TokenEngine } from './engine.js';

/**
 * Made by reportTokenCounts: read from Redis by the serve primary only; the workers' registries hold none of
 * these, so 'max' (not the aggregator's default sum) keeps one reading even if a worker ever reported one too.
 */
export const tokenCountMetrics = onFirstUse(() => {
  const tokens = new client.Gauge({
    name: 'rm_tokens',
    help: "Tokens of each owner satellite's users by state, from the engine's counters (purged: deleted from Redis by tokens purge)",
    labelNames: ['satellite', 'state'] as const,
    aggregator: 'max',
  });
  // counters kept by the scripts, copied here whole: reset, then one inc by the value read
  const generated = new client.Counter({
    name: 'rm_tokens_generated_total',
    help: "Tokens ever made for each owner satellite's users",
    labelNames: ['satellite'] as const,
    aggregator: 'max',
  });
  const redemptions = new client.Counter({
    name: 'rm_redemptions_total',
    help: 'Redeemed tokens by owner satellite and redeemer satellite: the cross-satellite matrix',
    labelNames: ['owner', 'redeemer'] as const,
    aggregator: 'max',
  });
  const readAt = new client.Gauge({
    name: 'rm_token_counts_read_seconds',
    help: 'Unix time of the last successful reading of the token counters (stale while Redis is unreachable)',
    aggregator: 'max',
  });
  const failures = new client.Counter({ name: 'rm_token_counts_errors_total', help: 'Failed readings of the token counters', aggregator: 'max' });
  return { tokens, generated, redemptions, readAt, failures };
});

const STATES = SATELLITE_COUNTERS.filter((c) => c !== 'generated');

/**
 * Keeps the rm_tokens* metrics current, read every `ms` with `engine.stats()` (one small hash per shard).
 * The first reading is tried at once and then every second until one succeeds (the client has no offline
 * queue, so the first tries fail until it connects): a scrape after a restart showed no token series for a
 * whole interval. Those early tries are counted as failures only once `ms` has passed, as before.
 * A failed reading keeps the last values, which rm_token_counts_read_seconds then shows as old.
 */
export function reportTokenCounts(engine: TokenEngine, ms: number): { stop(): Promise<void> } {
  const { tokens, generated, redemptions, readAt, failures } = tokenCountMetrics();
  const start = Date.now();
  let read = false;
  return every(ms, async () => {
    try {
      const s = await engine.stats();
      // reset first: a satellite whose counters were removed (restore --force) leaves no stale series
      tokens.reset();
      generated.reset();
      redemptions.reset();
      for (const [sat, c] of Object.entries(s.satellites)) {
        for (const state of STATES) tokens.set({ satellite: sat, state }, c[state]);
        generated.inc({ satellite: sat }, c.generated);
      }
      for (const r of s.redemptions) redemptions.inc({ owner: r.ownerSatelliteId, redeemer: r.redeemerSatelliteId }, r.count);
      readAt.set(Date.now() / 1000);
      read = true;
    } catch {
      const early = !read && Date.now() - start < ms;
      if (!early) failures.inc();
      if (!read) return Math.min(ms, 1000);
    }
  }, 0);
}
