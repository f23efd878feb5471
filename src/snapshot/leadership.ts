import type { Lease } from '../store/lease.js';
import { snapshotMetrics } from './metrics.js';

const LAPSED = 'the snapshot lease lapsed with no other writer (this process or Redis stalled past it, or Redis lost it); taking it again';

/**
 * The writer's hold on the snapshot lease: only its holder writes. The loop confirms or takes it before each
 * round, a timer renews it between rounds, and its loss is said once a term, naming the writer that took it.
 */
export class Leadership {
  private leader = false;
  /** bumped each time the loop takes the lease anew (not a renewal) */
  private term = 0;
  /** the term whose loss sayLost said */
  private saidLostIn = -1;
  private renewTimer: NodeJS.Timeout | undefined;
  private readonly m = snapshotMetrics();

  constructor(private readonly lease: Lease, private readonly log: (level: 'warn', msg: string) => void) {}

  get holds(): boolean {
    return this.leader;
  }

  /**
   * Renews the lease, or takes it when nobody holds it, and says a lapse or a loss. `was`: held before;
   * `holds`: held now, as this round found it (the renew timer may drop it before the caller reads `holds`);
   * `anew`: taken now, not renewed (a new term).
   */
  async confirm(): Promise<{ was: boolean; holds: boolean; anew: boolean }> {
    const was = this.leader;
    const renewed = await this.lease.renew();
    this.lead(renewed || (await this.lease.acquire()));
    const anew = this.leader && !renewed;
    if (anew) this.term++;
    if (was && anew) this.log('warn', LAPSED);
    const holds = this.leader;
    if (was && !holds) await this.sayLost();
    return { was, holds, anew };
  }

  /** How long a process not holding the lease waits before it tries again. */
  async standbyMs(): Promise<number> {
    // tried again as the holder's lease lapses: a third of the lease apart, a standby took over up to
    // 13 s after the holder was killed, past the lease time the docs promise
    return Math.min(this.lease.ms / 3, (await this.lease.remainingMs()) + 20);
  }

  /** Renews the lease every third of it while held; a renewal refused or unanswered stops the writing. */
  startRenewing(): void {
    this.renewTimer = setInterval(() => {
      if (!this.leader) return;
      // only the loop grants the lease; a renewal refused for a term the loop has since taken again says nothing
      const asked = this.term;
      const drop = () => {
        if (asked !== this.term) return false;
        this.lead(false);
        return true;
      };
      this.lease.renew().then(
        (ok) => {
          if (!ok && drop()) void this.sayLost();
        },
        // cannot confirm the lease: stop writing until it is confirmed again
        () => drop(),
      );
    }, this.lease.ms / 3);
  }

  stopRenewing(): void {
    clearInterval(this.renewTimer);
  }

  // a process not holding the lease does not check Postgres: its postgres_up is unknown (NaN), not 0, which
  // read as "Postgres down" on every standby and every serve with SNAPSHOT=false; so are the lost shards
  private lead(v: boolean): void {
    this.leader = v;
    this.m.leader.set(v ? 1 : 0);
    if (!v) {
      this.m.postgresUp.set(NaN);
      this.m.lostShards.set(NaN);
    }
  }

  /**
   * Says why the lease is gone: a lease that lapsed with no other writer (this process or Redis stalled past
   * it, or Redis lost its data) is taken again at the next round; one another writer holds is that writer's.
   */
  private async sayLost(): Promise<void> {
    // the loop and the renew timer may both find the same loss (twice on every SIGCONT): said once a term
    if (this.saidLostIn === this.term) return;
    this.saidLostIn = this.term;
    const now = await this.lease.state().catch(() => null);
    // the loop took it again meanwhile (and said LAPSED): naming this process as the taker would be false
    if (now?.mine) return;
    if (now === undefined) this.log('warn', LAPSED);
    else this.log('warn', now === null ? 'lost the snapshot lease; not writing until it is taken again' : `lost the snapshot lease to the writer of ${now.owner || 'an older release (its lease names no host)'}; it writes to Postgres now`);
  }
}
