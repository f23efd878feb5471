import { randomUUID } from 'node:crypto';
import type { RedisClient } from '../store/redis.js';

const RENEW = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0`;
const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`;

/**
 * The single-writer lease: SET NX PX, renewed by check-and-extend. Whoever holds the key writes;
 * a holder that fails to renew in time stops writing before another can take over (the renew
 * interval is a third of the lease).
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
