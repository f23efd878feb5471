import { describe, expect, it } from 'vitest';
import { compareIds, parseEntry, type StreamEvent } from '../src/snapshot/events.js';
import { applyEvents } from '../src/snapshot/apply.js';
import { openPostgres } from '../src/snapshot/index.js';
import { committedBetween, newestCommitted } from '../src/snapshot/positions.js';
import { ROW_COLUMNS } from '../src/snapshot/rows.js';
import { unusedDatabase } from './helpers/pg.js';

describe('stream entries', () => {
  it('compares stream ids as numbers, not as text', () => {
    const sorted = ['0-0', '0-1', '9-0', '9-10', '10-0', '10-2', '10-10', '1732540000000-0', '1732540000000-99', '1732540000001-0', '99999999999999-0'];
    for (let i = 0; i < sorted.length; i++) {
      for (let j = 0; j < sorted.length; j++) expect(Math.sign(compareIds(sorted[i]!, sorted[j]!))).toBe(Math.sign(i - j));
    }
    expect([...sorted].reverse().sort(compareIds)).toEqual(sorted);
  });

  it('parses an entry into its id parts, type, time and packed row, in any field order; a trimmed entry is undefined', () => {
    const row = 'tok\tredeemed\ts\tu\tc\t1\t\t\t\t\trs\tru\t1732540000123';
    const want = { shard: 7, id: '1732540000000-3', ms: '1732540000000', seq: '3', type: 'redeemed', at: '1732540000123', row };
    expect(parseEntry(7, '1732540000000-3', ['type', 'redeemed', 'at', '1732540000123', 'row', row])).toEqual(want);
    expect(parseEntry(7, '1732540000000-3', ['row', row, 'type', 'redeemed', 'at', '1732540000123'])).toEqual(want);
    expect(parseEntry(7, '1-1', null)).toBeUndefined();
  });

  // one written by hand with too few fields was acked as "trimmed before it reached Postgres" and dropped:
  // an entry that is there is an event, which Postgres refuses (no token) and the writer names
  it('an entry with too few fields is an event with what it has, not a trimmed one', () => {
    expect(parseEntry(3, '5-0', ['type', 'generated'])).toEqual({ shard: 3, id: '5-0', ms: '5', seq: '0', type: 'generated', at: '0', row: '' });
    expect(parseEntry(3, '5-1', [])).toMatchObject({ type: '', row: '' });
  });
});

describe('applying events to Postgres (real Postgres)', () => {
  const token = '00000000-0000-4000-8000-0000000000aa';
  const ev = (ms: number, type: string, state: string, redeemer = ''): StreamEvent => ({
    shard: 0, id: `${ms}-0`, ms: String(ms), seq: '0', type, at: String(ms),
    row: [token, state, 'sat', 'owner', 'camp', '1', '', '', '', '', redeemer, redeemer && 'new-user', redeemer && String(ms)].join('\t'),
  });

  // the writer's lanes, a replayed batch after a kill, a prefetch: an older event may arrive after a newer one
  it('an event older than the one a row holds never moves it back, in a later batch or in the same one', async () => {
    const db = unusedDatabase();
    const pool = await openPostgres(db.url);
    const client = await pool.connect();
    try {
      const row = async () => (await client.query('SELECT state, redeemer_satellite_id, ev_ms FROM tokens WHERE token = $1', [token])).rows[0];
      await applyEvents(client, [ev(1000, 'generated', 'unredeemed')]);
      await applyEvents(client, [ev(3000, 'redeemed', 'redeemed', 'sat-b')]);
      await applyEvents(client, [ev(2000, 'released', 'unredeemed')]);
      expect(await row()).toEqual({ state: 'redeemed', redeemer_satellite_id: 'sat-b', ev_ms: '3000' });
      // the same batch again (a replay): nothing changes, no history row twice
      await applyEvents(client, [ev(3000, 'redeemed', 'redeemed', 'sat-b'), ev(1000, 'generated', 'unredeemed')]);
      expect(await row()).toEqual({ state: 'redeemed', redeemer_satellite_id: 'sat-b', ev_ms: '3000' });
      // newest of one batch wins whatever its place in it
      await applyEvents(client, [ev(5000, 'revoked', 'revoked'), ev(4000, 'released', 'unredeemed')]);
      expect(await row()).toMatchObject({ state: 'revoked', ev_ms: '5000' });
      expect((await client.query('SELECT ev_ms, type FROM token_events WHERE token = $1 ORDER BY ev_ms', [token])).rows.map((r) => `${r.ev_ms} ${r.type}`))
        .toEqual(['1000 generated', '2000 released', '3000 redeemed', '4000 released', '5000 revoked']);
    } finally {
      client.release();
      await pool.end();
      await db.drop();
    }
  });
});

describe('stream positions within one millisecond (real Postgres)', () => {
  const token = '00000000-0000-4000-8000-0000000000bb';
  const ev = (ms: number, seq: number, type: string, state: string): StreamEvent => ({
    shard: 0, id: `${ms}-${seq}`, ms: String(ms), seq: String(seq), type, at: String(ms),
    row: [token, state, 'sat', 'owner', 'camp', '1', '', '', '', '', '', '', ''].join('\t'),
  });

  // Redis numbers the entries of one millisecond by their sequence part: a busy shard writes many an ms, and
  // a token's generate and redeem (or reserve and release) often share one
  it('the sequence part orders events of one millisecond: in the upsert, within a batch, and in the newest position per shard', async () => {
    const db = unusedDatabase();
    const pool = await openPostgres(db.url);
    const client = await pool.connect();
    try {
      const row = async () => (await client.query('SELECT state, ev_ms, ev_seq FROM tokens WHERE token = $1', [token])).rows[0];
      await applyEvents(client, [ev(1000, 0, 'generated', 'unredeemed')]);
      await applyEvents(client, [ev(1000, 2, 'redeemed', 'redeemed')]);
      expect(await row()).toEqual({ state: 'redeemed', ev_ms: '1000', ev_seq: '2' });
      // an older entry of the same millisecond, replayed later, leaves the row alone
      await applyEvents(client, [ev(1000, 1, 'released', 'unredeemed')]);
      expect(await row()).toEqual({ state: 'redeemed', ev_ms: '1000', ev_seq: '2' });
      // within one batch, the higher sequence wins whatever its place (and 10 sorts after 9)
      await applyEvents(client, [ev(2000, 10, 'revoked', 'revoked'), ev(2000, 9, 'released', 'unredeemed')]);
      expect(await row()).toEqual({ state: 'revoked', ev_ms: '2000', ev_seq: '10' });
      // restore sets each stream's last id here: an id below it would let new events sort under committed ones
      expect(await newestCommitted(pool, [0, 1])).toEqual(new Map([[0, '2000-10']]));
      // the events after one position up to another, as the went-back report counts them
      expect(await committedBetween(pool, 0, '1000-1', '2000-9')).toEqual({ events: 2, tokens: 1 });
    } finally {
      client.release();
      await pool.end();
      await db.drop();
    }
  });
});

describe('the upsert of a token row (real Postgres)', () => {
  const token = '00000000-0000-4000-8000-0000000000dd';
  const ev = (ms: number, fields: string[]): StreamEvent => ({ shard: 0, id: `${ms}-0`, ms: String(ms), seq: '0', type: 'x', at: String(ms), row: [token, ...fields].join('\t') });

  // a column left out of ON CONFLICT DO UPDATE keeps its first value for good: the copy drifts from Redis
  it('a newer event sets every column of the row, and clears those it leaves empty', async () => {
    const db = unusedDatabase();
    const pool = await openPostgres(db.url);
    try {
      const row = async () => (await pool.query({ text: `SELECT ${ROW_COLUMNS} FROM tokens WHERE token = $1`, values: [token], rowMode: 'array' })).rows[0];
      const client = await pool.connect();
      try {
        await applyEvents(client, [ev(1000, ['unredeemed', 'sat', 'owner', 'camp', '1', '', '', '', '', '', '', ''])]);
        const full = ['redeemed', 'sat2', 'owner2', 'camp2', '2', '9000', 'res-1', 'sat-r', '8000', 'sat-x', 'user-x', '7000'];
        await applyEvents(client, [ev(2000, full)]);
        expect(await row()).toEqual([token, ...full]);
        const cleared = ['unredeemed', 'sat3', 'owner3', 'camp3', '3', '', '', '', '', '', '', ''];
        await applyEvents(client, [ev(3000, cleared)]);
        expect(await row()).toEqual([token, ...cleared]);
      } finally {
        client.release();
      }
    } finally {
      await pool.end();
      await db.drop();
    }
  });
});
