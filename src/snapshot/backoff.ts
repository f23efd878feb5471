/** the longest wait between tries, of a lane and of the whole loop */
export const BACKOFF_MAX_MS = 5000;
const FIRST_MS = 100;

/**
 * The wait before each retry after a failure: 100 ms, then twice the last, at most BACKOFF_MAX_MS; from
 * 100 ms again once a try went through. One for the writer's loop and one for each lane.
 */
export class Backoff {
  /** the last wait given, 0 since a success (or none yet) */
  ms = 0;

  next(): number {
    this.ms = this.ms === 0 ? FIRST_MS : Math.min(this.ms * 2, BACKOFF_MAX_MS);
    return this.ms;
  }

  reset(): void {
    this.ms = 0;
  }
}
