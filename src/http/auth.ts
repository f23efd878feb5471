import { hashKey, sameKey } from '../digest.js';
import type { SatelliteRegistry } from '../satellites/registry.js';

const MAX_CACHED = 10_000;

/**
 * Bearer keys -> caller. Satellite keys are cached per process as sha256(key) -> satellite id for
 * `ttlMs` (default 5 s), so the hot path costs no Redis round-trip. A remove or rotation anywhere reaches
 * forget() at once (server.ts subscribes to the registry's notices); one missed while the worker's
 * subscription was down (Redis away) leaves a removed satellite or a key retired without grace working for
 * at most `ttlMs` more on a worker that cached it. A key in its rotation grace is cached no longer than the
 * grace. Unknown keys are not cached (a satellite added a moment ago works at once).
 */
export class Authenticator {
  private readonly cache = new Map<string, { id: string; until: number }>();
  /** bumped by forget(): a check that began before it must not cache what it read */
  private forgets = 0;

  constructor(
    private readonly registry: SatelliteRegistry,
    private readonly adminKey: string,
    private readonly ttlMs: number,
  ) {}

  static bearer(header: string): string | undefined {
    // a tab as the separator too (RFC 9110 allows none, some clients send it): it was answered "missing Authorization"
    const m = /^Bearer[ \t]+(\S+)\s*$/i.exec(header);
    return m?.[1];
  }

  /** False when the server was started without ADMIN_KEY: then no key opens the admin routes. */
  get adminEnabled(): boolean {
    return this.adminKey !== '';
  }

  isAdmin(key: string): boolean {
    return this.adminKey !== '' && sameKey(key, this.adminKey);
  }

  async satellite(key: string): Promise<string | undefined> {
    const h = hashKey(key);
    const now = Date.now();
    const hit = this.cache.get(h);
    if (hit && hit.until > now) return hit.id;
    const asked = this.forgets;
    const holder = await this.registry.keyHolder(key);
    if (holder === undefined) {
      this.cache.delete(h);
      return undefined;
    }
    const { id } = holder;
    // read before a remove or rotation this worker served: it answers this request, but cached it would
    // outlive the forget() meant to end it at once
    if (asked !== this.forgets) return id;
    if (this.cache.size >= MAX_CACHED) this.cache.clear();
    // a rotated key's grace ends when it ends, not up to ttlMs later on every worker that cached it then
    this.cache.set(h, { id, until: Math.min(now + this.ttlMs, holder.until ?? Infinity) });
    return id;
  }

  /** Drops this process's cached keys of a satellite: after a remove or rotation, served here or told of by Redis. */
  forget(satelliteId: string): void {
    this.forgets++;
    for (const [h, e] of this.cache) if (e.id === satelliteId) this.cache.delete(h);
  }
}
