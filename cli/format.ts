import type { Command } from 'commander';
import { DomainError } from '../src/errors.js';

const graphemes = new Intl.Segmenter();
// East Asian Wide and Fullwidth blocks, and emoji shown as pictures: two columns on a terminal
const WIDE = /^[\p{Emoji_Presentation}\u1100-\u115f\u2e80-\u303e\u3041-\u33ff\u3400-\u4dbf\u4e00-\u9fff\ua000-\ua4cf\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff60\uffe0-\uffe6\u{20000}-\u{3fffd}]/u;

/**
 * Columns a terminal gives the text: ids are any UTF-8, and their UTF-16 length is not their width (a CJK
 * character takes two columns in one code unit, an accent written as a combining mark none in one).
 */
export function displayWidth(text: string): number {
  if (/^[\x20-\x7e]*$/.test(text)) return text.length;
  let width = 0;
  // U+FE0F asks for the emoji picture of a symbol otherwise shown as text (☃ + FE0F)
  for (const { segment } of graphemes.segment(text)) width += WIDE.test(segment) || segment.includes('\ufe0f') ? 2 : 1;
  return width;
}

/** Columns padded to their widest cell; numbers right-aligned so digits line up. */
export function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const numeric = header.map((_, c) => rows.length > 0 && rows.every((r) => typeof r[c] === 'number'));
  // a loop, not Math.max(...column): past ~125,000 rows (one owner's tokens) the spread overflows the stack
  const widths = header.map((_, c) => cells.reduce((w, r) => Math.max(w, displayWidth(r[c] ?? '')), 0));
  return cells
    .map((r) =>
      r
        .map((cell, c) => {
          const pad = ' '.repeat(widths[c]! - displayWidth(cell));
          return numeric[c] ? pad + cell : cell + pad;
        })
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** "30d", "12h", "90m" -> milliseconds */
export function parseDuration(raw: string): number | undefined {
  const m = /^(\d+)(ms|s|m|h|d|w)$/.exec(raw.trim());
  return m ? Number(m[1]) * UNITS[m[2]!]! : undefined;
}

/** Epoch ms as "ms (ISO time)" for people; '-' when absent. */
export function when(ms: number | undefined): string {
  return ms === undefined ? '-' : `${ms} (${new Date(ms).toISOString()})`;
}

/** Runs `fn`; input the domain refuses as invalid (a bad id, a malformed token) is a usage error: exit 2. */
export async function invalidIsUsage<T>(cmd: Command, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof DomainError && err.code === 'invalid_request') cmd.error(`error: ${err.message}`);
    throw err;
  }
}
