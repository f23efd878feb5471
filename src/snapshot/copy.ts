import type pg from 'pg';

/**
 * JSON for a jsonb parameter. Postgres refuses a NUL in jsonb, and one such value (a satellite name stored
 * before names were checked) failed the whole copy and so every round of the writer, token events
 * included: it is written as U+FFFD instead, and verify names the field that differs.
 */
export const jsonb = (v: unknown): string => JSON.stringify(v, (_k, x: unknown) => (typeof x === 'string' && x.includes('\0') ? x.replaceAll('\0', '\ufffd') : x));

/** How often a copy writes even when nothing seems changed: mends a copy an overlapping ex-holder of the lease wrote late. */
const REWRITE_EVERY_MS = 60_000;

/**
 * A few Redis records the snapshot writer copies to Postgres beside the token events (satellites,
 * campaigns): read at most every `readEveryMs`, written when they changed. `read` returns what to write
 * (undefined: nothing); `store` writes it and remembers what Postgres now holds.
 */
export abstract class PeriodicCopy<P> {
  private readAt = 0;
  /** when everything was last written */
  protected writtenAt = 0;
  private pending: P | undefined;

  constructor(private readonly readEveryMs: number) {}

  /** Reads (at most every readEveryMs): true when something is to be written. */
  async due(): Promise<boolean> {
    const now = Date.now();
    if (now < this.readAt) return false;
    this.readAt = now + this.readEveryMs;
    this.pending = await this.read(now >= this.writtenAt + REWRITE_EVERY_MS);
    return this.pending !== undefined;
  }

  /** Writes what `due` read; after a failure the next `due` reads again. */
  async write(pool: pg.Pool): Promise<void> {
    const p = this.pending;
    this.pending = undefined;
    if (p === undefined) return;
    try {
      await this.store(pool, p);
    } catch (err) {
      this.readAt = 0;
      throw err;
    }
  }

  /** `rewrite`: the minute is up, return everything even if unchanged */
  protected abstract read(rewrite: boolean): Promise<P | undefined>;
  protected abstract store(pool: pg.Pool, p: P): Promise<void>;
}
