import { isIP } from 'node:net';
import { Keys } from '../store/keys.js';
import type { RedisClient } from '../store/redis.js';

const MAX_BLOCKED = 100_000;
const MAPPED_V4 = '0000:0000:0000:0000:0000:ffff:';

/** an address with a port, as Go's http.Request.RemoteAddr gives it ("1.2.3.4:5678", "[2001:db8::1]:5678"), or IPv6 in brackets */
const WITH_PORT = /^\[([\da-f:.]+(?:%[^\]]*)?)\](?::(\d{1,5}))?$|^([\d.]+):(\d{1,5})$/;

/**
 * An IP address a satellite names in X-End-User-IP, in the form uWS gives a peer's (IPv4 dotted, IPv6 as
 * eight 4-digit groups), so addressBlock counts it the same way; undefined when it is no IP address. A port
 * is dropped: a satellite passing on its peer's address as its HTTP server gives it had every sign-up refused 400.
 */
export function endUserIp(text: string): string | undefined {
  const raw = text.trim().toLowerCase();
  const hostPort = WITH_PORT.exec(raw);
  if (hostPort && Number(hostPort[2] ?? hostPort[4] ?? 0) > 65535) return undefined;
  // brackets hold IPv6 only, a bare address and a port IPv4 only
  if (hostPort?.[1] !== undefined && isIP(hostPort[1].replace(/%.*$/, '')) !== 6) return undefined;
  const given = hostPort ? (hostPort[1] ?? hostPort[3]!) : raw;
  if (isIP(given) === 4) return given;
  const a = given.replace(/%.*$/, ''); // an IPv6 zone (fe80::1%eth0) names no other host
  if (isIP(a) !== 6) return undefined;
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(a);
  const hex = dotted ? `${a.slice(0, dotted.index)}${((+dotted[1]! << 8) | +dotted[2]!).toString(16)}:${((+dotted[3]! << 8) | +dotted[4]!).toString(16)}` : a;
  const [head, tail] = hex.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const full = groups.map((g) => g.padStart(4, '0')).join(':');
  // IPv4 inside IPv6 (mapped, or NAT64's 64:ff9b::/96) is that IPv4 host, not one /64 shared by all of them
  if (full.startsWith(MAPPED_V4) || full.startsWith(NAT64)) {
    const n = parseInt(full.slice(30).replace(':', ''), 16);
    return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
  }
  return full;
}

const NAT64 = '0064:ff9b:0000:0000:0000:0000:';

/**
 * The address block one client controls: an IPv6 host usually gets a whole /64, and picking a new address
 * in it for every guess would otherwise escape the per-IP limit. uWS writes IPv6 as eight 4-digit groups
 * (IPv4 on an IPv6 socket as ::ffff:a.b.c.d in that form) and IPv4 on an IPv4 socket dotted.
 */
export function addressBlock(ip: string): string {
  if (ip.length !== 39 || ip.startsWith(MAPPED_V4)) return ip;
  return `${ip.slice(0, 19)}::/64`;
}

/** A refusal: the seconds to wait (Retry-After) and which limit the caller is over, for the metric. */
export interface Block {
  seconds: number;
  limit: 'satellite' | 'ip';
}

/**
 * Limits failed redeem/reserve/complete/release/lookup answers (404 token_not_found, 410 token_revoked /
 * token_expired: the answers a guess gets) per client address and per satellite, across all worker
 * processes: each failure INCRs a Redis counter per fixed window (Keys.failures), so at most `limit`
 * failures per window get a real answer cluster-wide; the failures past it are answered 429. A failure past
 * the address's limit is not counted toward the satellite's.
 * - An address over its limit is refused before the engine until the window ends (`check`): that person, or
 *   a satellite that names no end users (its own server is then the address). The end user's address, when
 *   the satellite names it in X-End-User-IP, is counted for that satellite only.
 * - A satellite over its limit has its refusals answered 429 (`satelliteBlock`), but a real token is still
 *   served: a few addresses guessing through its sign-up form must not stop every sign-up it has.
 * A worker that sees a limit crossed remembers it in process until the window ends, so successful requests
 * never pay a Redis call for the limiter; another worker learns of it at its next failure for that caller.
 * IPv6 callers are counted per /64 (addressBlock).
 */
export class FailureLimiter {
  private readonly blocked = new Map<string, number>();
  private readonly keys: Keys;

  /** `limits`: failures per window allowed per IP (address block) and per satellite */
  constructor(
    private readonly redis: RedisClient,
    prefix: string,
    private readonly limits: { ip: number; satellite: number },
    private readonly windowMs: number,
  ) {
    this.keys = new Keys(prefix);
  }

  /** The wait if the caller's address is blocked in this process (refused before the engine), else undefined. */
  check(satelliteId: string, ip: string, named: boolean): Block | undefined {
    return this.blockedFor('ip', this.address(satelliteId, ip, named), Date.now());
  }

  /** The wait if the satellite is over its limit in this process: its refusals are answered 429, its successes not. */
  satelliteBlock(satelliteId: string): Block | undefined {
    return this.blockedFor('satellite', `s:${satelliteId}`, Date.now());
  }

  /**
   * Counts one failure; the wait if the address or the satellite is over its limit now. The address is counted
   * first, and a failure over its limit is not counted toward the satellite: one person's burst of guesses (all
   * in flight before the first answer blocks the address) used up its satellite's limit, and every other
   * person's refusals there were answered 429.
   */
  async fail(satelliteId: string, ip: string, named: boolean): Promise<Block | undefined> {
    const now = Date.now();
    const window = Math.floor(now / this.windowMs);
    const seconds = Math.max(1, Math.ceil(((window + 1) * this.windowMs - now) / 1000));
    const address = this.address(satelliteId, ip, named);
    if ((await this.count(this.keys.failures(address, window))) > this.limits.ip) {
      this.block(address, window, now);
      return { seconds, limit: 'ip' };
    }
    const satellite = `s:${satelliteId}`;
    if ((await this.count(this.keys.failures(satellite, window))) > this.limits.satellite) {
      this.block(satellite, window, now);
      return { seconds, limit: 'satellite' };
    }
    return undefined;
  }

  private block(who: string, window: number, now: number): void {
    if (this.blocked.size >= MAX_BLOCKED) this.prune(now);
    this.blocked.set(who, (window + 1) * this.windowMs);
  }

  /**
   * The counter of an address: the TCP peer's is shared by every satellite calling from it, an address a
   * satellite names (X-End-User-IP) is that satellite's own, so no satellite can use up another's addresses.
   */
  private address(satelliteId: string, ip: string, named: boolean): string {
    // the block never holds an '@', so the last one ends the satellite's id (which may); a tab did too, and
    // made the key one that `redis-cli --scan | xargs redis-cli del` split in two and missed
    return named ? `n:${satelliteId}@${addressBlock(ip)}` : `i:${addressBlock(ip)}`;
  }

  private async count(key: string): Promise<number> {
    const r = await this.redis.multi().incr(key).pexpire(key, this.windowMs * 2).exec();
    const [err, n] = r?.[0] ?? [new Error('rate limit counter: empty reply'), 0];
    if (err) throw err;
    return Number(n);
  }

  private blockedFor(limit: Block['limit'], who: string, now: number): Block | undefined {
    const until = this.blocked.get(who);
    if (until === undefined) return undefined;
    if (until <= now) {
      this.blocked.delete(who);
      return undefined;
    }
    return { seconds: Math.max(1, Math.ceil((until - now) / 1000)), limit };
  }

  private prune(now: number): void {
    for (const [k, until] of this.blocked) if (until <= now) this.blocked.delete(k);
    if (this.blocked.size >= MAX_BLOCKED) this.blocked.clear();
  }
}
