import type { Command } from 'commander';
import { DomainError } from '../src/errors.js';

/** Columns padded to their widest cell; numbers right-aligned so digits line up. */
export function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const numeric = header.map((_, c) => rows.length > 0 && rows.every((r) => typeof r[c] === 'number'));
  const widths = header.map((_, c) => Math.max(...cells.map((r) => (r[c] ?? '').length)));
  return cells
    .map((r) => r.map((cell, c) => (numeric[c] ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!))).join('  ').trimEnd())
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
