import client from 'prom-client';
import { every } from '../every.js';
import { logTo, type Log, type LogKind } from '../log.js';
import { onFirstUse } from '../on-first-use.js';
import type { TokenEngine } from './engine.js';

/** made by sweepLapsed */
export const lapseMetrics = onFirstUse(() => ({
  lapsed: new client.Counter({
    name: 'rm_reservations_lapsed_total',
    help: 'Reservations given back because their lease lapsed with neither complete nor release (abandoned sign-ups)',
  }),
  failures: new client.Counter({ name: 'rm_lease_sweep_errors_total', help: 'Shards whose sweep of lapsed reservations failed (retried at the next sweep)' }),
}));

/** The sweep's lines; `[lapse]` before them in a text line. */
export const LAPSE_LOG: LogKind = { component: 'sweeper', text: (level, msg) => `[lapse] ${level === 'info' ? '' : `${level}: `}${msg}` };

/** A failure the log already told stays quiet this long, so a Redis down for hours is not one line a sweep. */
const RETELL_MS = 10 * 60_000;

/**
 * Gives back every `ms` the reservations whose lease ended over `graceMs` ago (TokenEngine.lapse). Every serve
 * primary runs it: two sweeping at once give back each token once, as the script decides from the token's
 * state inside Redis.
 */
export function sweepLapsed(engine: TokenEngine, ms: number, graceMs: number, log: Log = logTo(LAPSE_LOG)): { stop(): Promise<void> } {
  const { lapsed, failures } = lapseMetrics();
  let told: { text: string; at: number } | undefined;
  return every(ms, async () => {
    const { given, failed } = await engine.lapse(graceMs);
    lapsed.inc(given);
    failures.inc(failed.length);
    if (!failed.length) {
      if (told) log('info', 'sweeping lapsed reservations works again');
      told = undefined;
      return;
    }
    const text = `the sweep of lapsed reservations failed on ${failed.length} shard(s) (${failed.map((f) => f.shard).join(',')}): ${(failed[0]!.error as Error)?.message ?? failed[0]!.error}; retried every ${ms} ms`;
    if (told?.text === text && Date.now() - told.at < RETELL_MS) return;
    log('error', text, { shards: failed.map((f) => f.shard) });
    told = { text, at: Date.now() };
  });
}
