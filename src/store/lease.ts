import { randomUUID } from 'node:crypto';
import type { RedisClient } from './redis.js';
import { defineScripts, type ScriptFn } from './scripts.js';

/**
 * A lease on one key: SET NX PX, renewed and released only by its holder (check-and-extend and
 * check-and-delete scripts, lua/lease_renew.lua and lua/lease_release.lua), so a holder that stalled
 * past its lease can neither extend nor delete the next holder's. Used by the snapshot writer (one writer at a time) and by generate
 * (one run of a campaign at a time, one campaign on a satellite at a time); all renew every third of the lease.
 */
export class Lease {
  /** `<owner> <uuid>`: the owner names the holder to whoever finds the lease taken (holder()) */
  readonly id: string;
  private readonly s: Record<'lease_renew' | 'lease_release', ScriptFn>;
  constructor(private readonly redis: RedisClient, readonly key: string, readonly ms = 10_000, owner = '') {
    this.id = `${owner} ${randomUUID()}`;
    this.s = defineScripts(redis, ['lease_renew', 'lease_release']);
  }

  /** The owner named by whoever holds the lease now, undefined when nobody does. */
  async holder(): Promise<string | undefined> {
    return (await this.state())?.owner;
  }

  /** Who holds the lease now, in one read: nobody (undefined), or an owner and whether it is this very lease. */
  async state(): Promise<{ owner: string; mine: boolean } | undefined> {
    const v = await this.redis.get(this.key);
    if (v === null) return undefined;
    // a lease an older release took is a bare UUID: held, by a holder it does not name (not the UUID cut short)
    const space = v.lastIndexOf(' ');
    return { owner: space < 0 ? '' : v.slice(0, space), mine: v === this.id };
  }

  /** How long until the lease held now lapses (0: nobody holds it), so a standby can try again just then. */
  async remainingMs(): Promise<number> {
    const ms = Number(await this.redis.pttl(this.key));
    // -2: gone, so now; -1: a key without expiry, which no Lease sets: as a full lease
    return ms === -1 ? this.ms : Math.max(0, ms);
  }

  async acquire(): Promise<boolean> {
    return (await this.redis.set(this.key, this.id, 'PX', this.ms, 'NX')) === 'OK';
  }
  async renew(): Promise<boolean> {
    return Number(await this.s.lease_renew([this.key], [this.id, this.ms])) === 1;
  }
  async release(): Promise<void> {
    await this.s.lease_release([this.key], [this.id]);
  }

  /**
   * Takes the lease and keeps it, renewed every third of it, until `release`; undefined when another holds it.
   * `confirm` renews it now: false once it was lost at any point (a renewal only extends this very lease).
   */
  async hold(): Promise<{ confirm(): Promise<boolean>; release(): Promise<void> } | undefined> {
    if (!(await this.acquire())) return undefined;
    const timer = setInterval(() => void this.renew().catch(() => false), this.ms / 3);
    timer.unref();
    return {
      confirm: () => this.renew(),
      release: async () => {
        clearInterval(timer);
        await this.release();
      },
    };
  }
}
