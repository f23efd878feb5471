import { randomUUID } from 'node:crypto';
import type { RedisClient } from './redis.js';

const RENEW = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0`;
const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`;

/**
 * A lease on one key: SET NX PX, renewed and released only by its holder (check-and-extend,
 * check-and-delete in one script each), so a holder that stalled past its lease can neither extend
 * nor delete the next holder's. Used by the snapshot writer (one writer at a time) and by generate
 * (one run of a campaign at a time); both renew every third of the lease.
 */
export class Lease {
  readonly id = randomUUID();
  constructor(private readonly redis: RedisClient, readonly key: string, readonly ms = 10_000) {}

  async acquire(): Promise<boolean> {
    return (await this.redis.set(this.key, this.id, 'PX', this.ms, 'NX')) === 'OK';
  }
  async renew(): Promise<boolean> {
    return Number(await this.redis.eval(RENEW, 1, this.key, this.id, this.ms)) === 1;
  }
  async release(): Promise<void> {
    await this.redis.eval(RELEASE, 1, this.key, this.id);
  }
}
