import client from 'prom-client';
import { every } from '../every.js';
import type { TokenEngine } from './engine.js';

const lapsed = new client.Counter({
  name: 'rm_reservations_lapsed_total',
  help: 'Reservations given back because their lease lapsed with neither complete nor release (abandoned sign-ups)',
});
const failures = new client.Counter({ name: 'rm_lease_sweep_errors_total', help: 'Failed sweeps of lapsed reservations (retried at the next one)' });

/**
 * Gives back every `ms` the reservations whose lease ended over `graceMs` ago (TokenEngine.lapse). Every serve primary runs it: two sweeping at
 * once give back each token once, as the script decides from the token's state inside Redis.
 */
export function sweepLapsed(engine: TokenEngine, ms: number, graceMs: number): { stop(): Promise<void> } {
  return every(ms, async () => {
    try {
      lapsed.inc(await engine.lapse(graceMs));
    } catch {
      failures.inc();
    }
  });
}
