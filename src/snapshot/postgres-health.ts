import { refusedBy } from './lane.js';
import { snapshotMetrics } from './metrics.js';
import type { LogFields } from '../log.js';

/**
 * Postgres as the writer sees it: up, down or migrating (the status' state, rm_snapshot_postgres_up) and its
 * failures, each counted, and said once per outage or, for a write it refused, once per reason.
 */
export class PostgresHealth {
  private pgState: 'up' | 'down' = 'down';
  private warned = false;
  /** what the open's migration does while it lasts (MigrationNote's `doing`) */
  private doing: string | undefined;
  /** Postgres refused before it was first reached (the gauge went 0): kept 0 through the next attempts' migrations */
  private refusedUnreached = false;
  /** the refusals said since Postgres last took every lane's writes: each said once, also when lanes alternate */
  private readonly refusals = new Set<string>();
  // the failures run counted already: any other failure of a round is Redis' (or a bug), counted once by the loop
  private readonly failures = new WeakSet<object>();
  private readonly m = snapshotMetrics();

  constructor(
    private readonly log: (level: 'info' | 'warn', msg: string, fields?: LogFields) => void,
    /** which Postgres (postgresAt): a writer's log that said only "unreachable" did not say which to look at */
    private readonly where: string,
    /** whether this process holds the lease: only its holder reports Postgres' state */
    private readonly leading: () => boolean,
  ) {}

  /** migrating: Postgres answers; a migration (this writer's, or another process' it waits for) holds the writes */
  get state(): 'up' | 'down' | 'migrating' {
    return this.doing === undefined ? this.pgState : 'migrating';
  }

  /** while migrating, what the migration does */
  get migration(): string | undefined {
    return this.doing;
  }

  /**
   * The open's migration started a step (MigrationNote): Postgres answered. Read as down, a migration longer than
   * the alert's 2 minutes (or a wait for another process') paged for a Postgres that was fine.
   */
  migrates(doing: string): void {
    this.doing = doing;
    // a migration refused each time (a read-only database, a lock it cannot get) flapped the gauge 0/1 with each
    // attempt, and an alert holding for a while never fired
    if (!this.refusedUnreached && this.leading()) this.m.postgresUp.set(1);
  }

  /** Runs a Postgres step; its failure marks Postgres down (metrics, one warning) before it propagates. */
  readonly run = async <T>(step: () => Promise<T>): Promise<T> => {
    try {
      return await step();
    } catch (err) {
      this.setDown(err);
      if (err instanceof Object) this.failures.add(err);
      throw err;
    }
  };

  /** Whether `run` counted this failure already. */
  counted(err: unknown): boolean {
    return err instanceof Object && this.failures.has(err);
  }

  /** Postgres answered the reachability check. */
  reached(): void {
    if (this.warned) this.log('info', 'Postgres reachable again; catching up');
    this.pgState = 'up';
    this.doing = undefined;
    this.refusedUnreached = false;
    this.warned = false;
    this.m.postgresUp.set(1);
  }

  /** Every lane's writes went through: a refusal said before is said again should it come back. */
  tookWrites(): void {
    if (!this.refusals.size) return;
    this.log('info', 'Postgres takes the writes again; catching up');
    this.refusals.clear();
  }

  private setDown(err: unknown): void {
    this.m.errors.inc({ where: 'postgres' });
    // a failed open: its migration is over
    this.doing = undefined;
    if (refusedBy(err)) {
      // Postgres answered and refused (a column missing, a statement timeout, a full disk, a row it rejects):
      // logged as "unreachable", with rm_snapshot_postgres_up flapping 0/1 as each probe succeeded, an alert
      // holding for a while never fired. Said once per reason; the lag tells the rest.
      const why = `SQLSTATE ${(err as { code: string }).code}: ${(err as Error).message}`;
      if (!this.refusals.has(why)) this.log('warn', `Postgres refused a write (${why}) at ${this.where}; retrying with backoff, events wait in Redis`, { postgres: this.where, code: (err as { code?: string }).code });
      this.refusals.add(why);
      // a refusal before Postgres was ever reached (the migration of a read-only database) leaves it down, as
      // /readyz says: the gauge stayed NaN, and the alert on it silent
      if (this.pgState === 'down' && this.leading()) {
        this.m.postgresUp.set(0);
        this.refusedUnreached = true;
      }
    } else {
      this.pgState = 'down';
      // a batch failing after the renew timer dropped the lease: no longer this process' to report
      if (this.leading()) this.m.postgresUp.set(0);
      if (!this.warned) this.log('warn', `Postgres unreachable at ${this.where} (${(err as Error).message}); retrying with backoff, events wait in Redis`, { postgres: this.where, code: (err as { code?: string }).code });
      this.warned = true;
    }
  }
}
