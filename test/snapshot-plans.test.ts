import { beforeAll, describe, expect, it } from 'vitest';
import { findLostShards } from '../src/snapshot/lost.js';
import { pgShardRows } from '../src/snapshot/pg-rows.js';
import { shardRange } from '../src/snapshot/rows.js';
import { Keys, SHARDS } from '../src/store/keys.js';
import { planNodes, recordingPlans } from './helpers/pg.js';
import { snapshotFixture } from './helpers/snapshot.js';

/**
 * How the snapshot's reads of `tokens` go once the table is large enough for the planner to weigh its choices:
 * 60,000 rows across every shard and 20,000 more in shard 2, whose rows are all purged. The plans are asserted,
 * not the time: at 4M rows each of these read the whole shard or the whole table for what a key range holds.
 */
describe("the snapshot's reads of tokens follow its key (real Postgres, planner's choice)", () => {
  const snap = snapshotFixture('plans');
  const SHARD = 2;

  beforeAll(async () => {
    const [lo] = shardRange(SHARD);
    await snap.pool.query(`INSERT INTO tokens (token, state, owner_satellite_id, owner_user_id, campaign_id, created_at, ev_shard, ev_ms, ev_seq, purged_at)
      SELECT md5(i::text)::uuid, 'unredeemed', 'sat-' || (i % 7), 'u' || i, 'c', 1, 0, i, 0, NULL FROM generate_series(1, 60000) i
      UNION ALL
      SELECT overlay(md5('s' || i) placing $1 from 1 for 2)::uuid, 'revoked', 'sat-a', 'v' || i, 'c', 1, $2, i, 0, 5 FROM generate_series(1, 20000) i
      ON CONFLICT DO NOTHING`, [lo.slice(0, 2), SHARD]);
    // the shard's own rows above: its first two hex digits, then 30 random ones; the ~900 of the others in its range are purged too
    await snap.pool.query('UPDATE tokens SET purged_at = 5 WHERE token BETWEEN $1 AND $2', shardRange(SHARD));
    await snap.pool.query('ANALYZE tokens');
  });

  // ORDER BY token named the output column, token::text: each page sorted the rest of the shard it had read whole
  it("restore's and verify's pages of a shard are read along the primary key, with no sort", async () => {
    const { pool, plans } = recordingPlans(snap.pool);
    let rows = 0;
    for await (const page of pgShardRows(pool, SHARD)) rows += page.length;
    expect(rows).toBeGreaterThan(20_000);
    expect(plans.length).toBeGreaterThan(1);
    // a page of a range holding more than a page is read in key order and stops at the page's end
    const first = planNodes(plans[0]!.plan);
    expect(first.map((n) => n['Node Type'])).not.toContain('Sort');
    expect(first.some((n) => n['Node Type'] === 'Index Scan' && n['Index Name'] === 'tokens_pkey')).toBe(true);
    // the last, short page may be sorted: by the uuid, never by its text
    for (const { plan } of plans) expect(planNodes(plan).flatMap((n) => n['Sort Key'] ?? []).filter((k) => k.includes('::text'))).toEqual([]);
  });

  // under EXISTS the planner expected a row not purged soon and took a Seq Scan: a shard whose every row is
  // purged read the whole table, 1.2 s at 4M rows, for each unmarked shard the writer checked
  it('the lost-shard check looks for a row not purged in the shard\'s key range, not across the whole table', async () => {
    const keys = new Keys(snap.fx.prefix);
    await snap.pool.query('INSERT INTO shard_marks (prefix, since) VALUES ($1, 1)', [snap.fx.prefix]);
    await Promise.all(Array.from({ length: SHARDS }, (_, s) => (s === SHARD ? undefined : snap.fx.redis.set(keys.intact(s), '1'))));
    const { pool, plans } = recordingPlans(snap.pool);
    expect(await findLostShards(snap.fx.redis, pool, snap.fx.prefix, (step) => step())).toEqual([]);
    const check = plans.filter((p) => /FROM tokens/.test(p.text));
    expect(check).toHaveLength(1);
    const nodes = planNodes(check[0]!.plan);
    expect(nodes.map((n) => n['Node Type'])).not.toContain('Seq Scan');
    expect(nodes.some((n) => n['Node Type'] === 'Index Scan' && n['Index Name'] === 'tokens_pkey')).toBe(true);
    expect(await snap.fx.redis.exists(keys.intact(SHARD))).toBe(1);
  });
});
