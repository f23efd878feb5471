import { randomUUID } from 'node:crypto';
import type { RedisClient } from './redis.js';
import { defineScripts, type ScriptFn } from './scripts.js';

/**
 * A lease on one key: SET NX PX, renewed and released only by its holder (check-and-extend and
 * check-and-delete scripts, lua/lease_renew.lua and lua/lease_release.lua), so a holder that stalled
 * past its lease can neither extend nor delete the next holder's. Used by the snapshot writer (one writer at a time) and by generate
 * (one run of a campaign at a time); both renew every third of the lease.
 */
export class Lease {
  readonly id = randomUUID();
  private readonly s: Record<string, ScriptFn>;
  constructor(private readonly redis: RedisClient, readonly key: string, readonly ms = 10_000) {
    this.s = defineScripts(redis, ['lease_renew', 'lease_release']);
  }

  async acquire(): Promise<boolean> {
    return (await this.redis.set(this.key, this.id, 'PX', this.ms, 'NX')) === 'OK';
  }
  async renew(): Promise<boolean> {
    return Number(await this.s.lease_renew!([this.key], [this.id, this.ms])) === 1;
  }
  async release(): Promise<void> {
    await this.s.lease_release!([this.key], [this.id]);
  }
}
