import { describe, expect, it } from 'vitest';
import { compareIds, parseEntry } from '../src/snapshot/events.js';

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
