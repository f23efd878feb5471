import { describe, expect, it } from 'vitest';
import { placeOfBucket, placeOfOwner, placeOfToken } from '../src/store/keys.js';

describe('places of owners, tokens and buckets', () => {
  // Tokens carry their owner's place in their first 16 bits, in Redis and in the snapshot a restore reads back:
  // a release that hashed owners otherwise would look for an owner's existing tokens in the wrong bucket.
  it("keeps an owner's place, and where its record starts probing, from release to release", () => {
    expect(placeOfOwner('12EayRS2V1kEsWESU9QMRseFhdxYxKicsiFmxrsLZHeLUtdps3S', 'alice@example.com')).toEqual({ shard: 50, bucket: 4, prefix: 'c804', value: 51204, refHint: 3607 });
  });

  // the snapshot copies a shard bucket by bucket, reading each bucket's tokens back with its prefix
  it('names a bucket by its shard and number, as a token in it reads', () => {
    expect(placeOfBucket(5, 777)).toEqual({ shard: 5, bucket: 777, prefix: '1709', value: 5897 });
    expect(placeOfToken(`${placeOfBucket(42, 973).prefix}${'0'.repeat(28)}`)).toEqual(placeOfBucket(42, 973));
  });
});
