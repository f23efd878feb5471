import type { Command } from 'commander';
import stringWidth from 'string-width';
import { DomainError } from '../src/errors.js';

/**
 * Columns padded to their widest cell; numbers right-aligned so digits line up. Widths are terminal columns
 * (string-width): ids are any UTF-8, and a CJK character takes two columns in one UTF-16 unit, a combining
 * accent none.
 */
export function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const numeric = header.map((_, c) => rows.length > 0 && rows.every((r) => typeof r[c] === 'number'));
  // a loop, not Math.max(...column): past ~125,000 rows (one owner's tokens) the spread overflows the stack
  const widths = header.map((_, c) => cells.reduce((w, r) => Math.max(w, stringWidth(r[c] ?? '')), 0));
  return cells
    .map((r) =>
      r
        .map((cell, c) => {
          const pad = ' '.repeat(widths[c]! - stringWidth(cell));
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
