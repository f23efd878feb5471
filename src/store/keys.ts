import { hexDigest } from '../digest.js';

/**
 * Virtual shards and buckets. A token's first 16 bits name its virtual shard (6 bits, 64 shards)
 * and its bucket inside the shard (10 bits, 1024 buckets); both come from a hash of the owner, so a
 * token, its owner's record and its shard's event stream share one hash tag `{shard}` and every
 * script touches one Redis Cluster slot. 106 of the UUID's 122 random bits stay random.
 */
const SHARD_BITS = 6;
const BUCKET_BITS = 10;
export const SHARDS = 1 << SHARD_BITS;
export const BUCKETS_PER_SHARD = 1 << BUCKET_BITS;

export interface Place {
  shard: number;
  bucket: number;
  /** first 4 hex digits of every token in this bucket */
  prefix: string;
  /** the same 16 bits as a number */
  value: number;
}

export interface OwnerPlace extends Place {
  /** where the owner's record starts probing inside its bucket */
  refHint: number;
}

export function placeOfOwner(satelliteId: string, userId: string): OwnerPlace {
  const h = hexDigest('sha1', `${satelliteId}\n${userId}`);
  return { ...placeOf(parseInt(h.slice(0, 4), 16)), refHint: parseInt(h.slice(4, 8), 16) & 0x3fff };
}

/** `hex` is the 32-digit token without dashes */
export function placeOfToken(hex: string): Place {
  return placeOf(parseInt(hex.slice(0, 4), 16));
}

/** A bucket of a shard by its numbers (a key walk, a shard's range). */
export function placeOfBucket(shard: number, bucket: number): Place {
  return placeOf((shard << BUCKET_BITS) | bucket);
}

function placeOf(v: number): Place {
  return { shard: v >>> BUCKET_BITS, bucket: v & (BUCKETS_PER_SHARD - 1), prefix: v.toString(16).padStart(4, '0'), value: v };
}

/** Every key under a prefix but the satellite registry's (SatelliteKeys, store/satellites.ts) and campaigns' (CampaignKeys, store/campaigns.ts). */
export class Keys {
  constructor(readonly prefix: string) {}

  tag(shard: number): string {
    return `${this.prefix}:{${shard}}`;
  }
  bucket(shard: number, bucket: number): string {
    return `${this.tag(shard)}:b:${bucket}`;
  }
  dict(shard: number): string {
    return `${this.tag(shard)}:dict`;
  }
  reservations(shard: number): string {
    return `${this.tag(shard)}:rs`;
  }
  /** reserved tokens by lease end (ZSET, score leaseExpiresAt, member the 32 hex digits): what the lapse sweep reads */
  leases(shard: number): string {
    return `${this.tag(shard)}:leases`;
  }
  redeemed(shard: number): string {
    return `${this.tag(shard)}:rd`;
  }
  stats(shard: number): string {
    return `${this.tag(shard)}:stats`;
  }
  events(shard: number): string {
    return `${this.tag(shard)}:ev`;
  }
  /**
   * Every revoked campaign id -> revokedAt ms (lua/revocation_record.lua): the durable form of the shards'
   * marks, which the snapshot copies to Postgres, as many campaign ids have no campaign record.
   */
  revokedCampaigns(): string {
    return `${this.prefix}:{revoked}:campaigns`;
  }
  /**
   * A failure counter of the HTTP rate limiter (src/http/rate-limit.ts) for one window: `who` is `s:<satellite>`,
   * `i:<address block>` (the caller's own) or `n:<satellite>@<address block>` (one a satellite names). A single-key INCR, so no hash tag; restore --force clears them (failurePattern).
   */
  failures(who: string, window: number): string {
    return `${this.prefix}:rl:${who}:${window}`;
  }
  failurePattern(): string {
    return `${this.prefix}:rl:*`;
  }
  /** The snapshot writer's status (read by every /readyz) and its single-writer lease: single-key commands. */
  snapshotStatus(): string {
    return `${this.prefix}:{snap}:status`;
  }
  snapshotLease(): string {
    return `${this.prefix}:{snap}:lease`;
  }
  /** Shards whose tokens Redis lost while Postgres holds them (src/snapshot/lost.ts): a set, until a restore. */
  lostShards(): string {
    return `${this.prefix}:{snap}:lost`;
  }
  /** A shard's mark that its data is whole, written only by the lost-data check and restore (src/snapshot/lost.ts). */
  intact(shard: number): string {
    return `${this.tag(shard)}:intact`;
  }
  /** The first KEYS of the scripts that sweep a shard (revoke_sweep, purge, lapse), in their header order */
  shardKeys(shard: number): string[] {
    return [this.dict(shard), this.reservations(shard), this.redeemed(shard), this.stats(shard), this.events(shard), this.leases(shard)];
  }
  /** KEYS of the single-token scripts, in their header order */
  tokenKeys(p: Place): string[] {
    const s = p.shard;
    return [this.bucket(s, p.bucket), this.dict(s), this.reservations(s), this.redeemed(s), this.stats(s), this.events(s), this.leases(s)];
  }
}
