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

/** Epoch ms as "ms (ISO time)" for people; '-' when absent. */
export function when(ms: number | undefined): string {
  return ms === undefined ? '-' : `${ms} (${new Date(ms).toISOString()})`;
}

/** Runs `fn`; input the domain refuses as invalid (a bad id, a malformed token) is a usage error: exit 2. */
export async function invalidIsUsage<T>(cmd: Command, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof DomainError && err.code === 'invalid_request') cmd.error(`error: ${err.message}`, { exitCode: 2 });
    throw err;
  }
}
