import type { RedisClient } from '../store/redis.js';

const MAX_BLOCKED = 100_000;

/**
 * Limits failed redeem/reserve/complete/release/lookup answers (404/410) per satellite and per client IP, across all
 * worker processes: each failure INCRs a Redis counter per fixed window (`<prefix>:rl:<kind>:<who>:<window>`),
 * so at most `limit` failures per window get a real answer cluster-wide; the one that crosses the limit is
 * answered 429 instead. A worker that sees the limit crossed remembers the block in process until the window
 * ends, so successful requests never pay a Redis call for the limiter; another worker learns of the block at
 * its next failure for that caller.
 */
export class FailureLimiter {
  private readonly blocked = new Map<string, number>();

  constructor(
    private readonly redis: RedisClient,
    private readonly prefix: string,
    private readonly limit: number,
    private readonly windowMs: number,
  ) {}

  /** Seconds to wait if the satellite or the IP is blocked in this process, else undefined. */
  check(satelliteId: string, ip: string, now = Date.now()): number | undefined {
    return this.blockedFor(`s:${satelliteId}`, now) ?? this.blockedFor(`i:${ip}`, now);
  }

  /** Counts one failure; returns seconds to wait if this failure crossed a limit. */
  async fail(satelliteId: string, ip: string): Promise<number | undefined> {
    const now = Date.now();
    const window = Math.floor(now / this.windowMs);
    const end = (window + 1) * this.windowMs;
    const whos = [`s:${satelliteId}`, `i:${ip}`];
    const counts = await Promise.all(whos.map((w) => this.count(`${this.prefix}:rl:${w}:${window}`)));
    let retry: number | undefined;
    counts.forEach((n, i) => {
      if (n > this.limit) {
        if (this.blocked.size >= MAX_BLOCKED) this.prune(now);
        this.blocked.set(whos[i]!, end);
        retry = Math.max(1, Math.ceil((end - now) / 1000));
      }
    });
    return retry;
  }

  private async count(key: string): Promise<number> {
    const r = await this.redis.multi().incr(key).pexpire(key, this.windowMs * 2).exec();
    const [err, n] = r?.[0] ?? [new Error('rate limit counter: empty reply'), 0];
    if (err) throw err;
    return Number(n);
  }

  private blockedFor(who: string, now: number): number | undefined {
    const until = this.blocked.get(who);
    if (until === undefined) return undefined;
    if (until <= now) {
      this.blocked.delete(who);
      return undefined;
    }
    return Math.max(1, Math.ceil((until - now) / 1000));
  }

  private prune(now: number): void {
    for (const [k, until] of this.blocked) if (until <= now) this.blocked.delete(k);
    if (this.blocked.size >= MAX_BLOCKED) this.blocked.clear();
  }
}
