import { describe, expect, it } from 'vitest';
import { findLostShards } from '../src/snapshot/lost.js';
import { shardRange } from '../src/snapshot/rows.js';
import { Keys } from '../src/store/keys.js';
import { snapshotFixture } from './helpers/snapshot.js';

describe('findLostShards (real Redis, real Postgres)', () => {
  const snap = snapshotFixture('lostsh');

  // a shard whose every token was purged is empty in Redis as it should be: taken for lost, /readyz stayed 503
  // naming it until a restore that had nothing to bring back
  it('an unmarked shard whose rows in Postgres are all purged is marked, not lost; one with a row not purged is lost', async () => {
    await snap.pool.query('INSERT INTO shard_marks (prefix, since) VALUES ($1, 1)', [snap.fx.prefix]);
    const row = (token: string, purged: number | null) => snap.pool.query(`INSERT INTO tokens (token, state, owner_satellite_id, owner_user_id, campaign_id, created_at, ev_shard, ev_ms, ev_seq, purged_at)
      VALUES ($1, 'revoked', 'sat-a', 'u', 'c', 1, 0, 1, 0, $2)`, [token, purged]);
    await row(shardRange(2)[0].replace(/0000-0000-0000-0000-000000000000$/, '0000-0000-4000-8000-000000000001'), 5);
    await row(shardRange(3)[0].replace(/0000-0000-0000-0000-000000000000$/, '0000-0000-4000-8000-000000000001'), null);
    expect(await findLostShards(snap.fx.redis, snap.pool, snap.fx.prefix, (step) => step())).toEqual([3]);
    expect(await snap.fx.redis.exists(new Keys(snap.fx.prefix).intact(2))).toBe(1);
  });
});
