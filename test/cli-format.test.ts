import { describe, expect, it } from 'vitest';
import { table } from '../cli/format.js';

/** Terminal columns of the test's own text: its wide characters are CJK and emoji, its accents combining. */
const cols = (s: string) => [...new Intl.Segmenter().segment(s)].reduce((w, { segment }) => w + (/[\p{Emoji_Presentation}\u3000-\u9fff]/u.test(segment) ? 2 : 1), 0);
/** Where on a terminal each line's field `i` (fields: runs of text between gaps of 2+ spaces) starts, and where it ends. */
const fieldAt = (line: string, i: number) => {
  const m = [...line.matchAll(/\S+(?: \S+)*/g)][i]!;
  return { start: cols(line.slice(0, m.index)), end: cols(line.slice(0, m.index + m[0].length)) };
};
const starts = (text: string, i: number) => text.split('\n').map((line) => fieldAt(line, i).start);

describe('cli tables', () => {
  // ids are opaque UTF-8 from satellites and marketing: padded by UTF-16 length, a row holding a
  // Japanese campaign name pushed its numbers out of their column
  it('line columns up whatever the ids are written in', () => {
    const out = table(
      ['campaign', 'satellite', 'made', 'status'],
      [
        ['spring-26', 'us1', 270, 'done'],
        ['春のキャンペーン', 'ap1', 12, 'done'],
        ['cafe\u0301 ☃', '東京', 5, 'revoked'],
        ['🎉launch', 'eu1', 1000, 'failed'],
      ],
    );
    for (const col of [1, 3]) expect(new Set(starts(out, col)).size, `column ${col + 1}:\n${out}`).toBe(1);
    // numbers still end in one column
    const ends = out.split('\n').map((line) => fieldAt(line, 2).end);
    expect(new Set(ends).size).toBe(1);
  });

  // the widths were taken with Math.max(...column): past ~125,000 rows that is more arguments than the stack
  // holds, and `tokens list` of an owner given 140,000 tokens (fourteen admin generates) failed with
  // "Maximum call stack size exceeded" where --json printed them
  it('takes any number of rows', () => {
    const rows = Array.from({ length: 300_000 }, (_, i) => [`t-${i}`, i]);
    const lines = table(['token', 'n'], rows).split('\n');
    expect(lines).toHaveLength(300_001);
    expect(lines[1]).toBe(`t-0${' '.repeat(5)}  ${'0'.padStart(6)}`);
    expect(lines[300_000]).toBe('t-299999  299999');
  });
});
