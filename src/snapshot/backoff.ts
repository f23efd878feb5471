/** the longest wait between tries, of a lane and of the whole loop */
const BACKOFF_MAX_MS = 5000;
const FIRST_MS = 100;

/**
 * The wait before each retry after a failure: 100 ms, then twice the last, at most BACKOFF_MAX_MS; from
 * 100 ms again once a try went through. One for the writer's loop and one for each lane.
 */
export class Backoff {
  private last = 0;

  /** the last wait given, 0 since a success (or none yet) */
  get ms(): number {
    return this.last;
  }

  next(): number {
    this.last = this.last === 0 ? FIRST_MS : Math.min(this.last * 2, BACKOFF_MAX_MS);
    return this.last;
  }

  reset(): void {
    this.last = 0;
  }
}
