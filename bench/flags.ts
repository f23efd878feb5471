/**
 * A positive whole number from a flag or the environment: a typo stops the run before minutes of work, not as
 * NaN in the middle. Exits 2 naming the setting.
 */
export function wholeNumber(name: string, raw: string): number {
  if (!/^\d+$/.test(raw.trim()) || Number(raw) < 1) {
    console.error(`${name}: expected a whole number >= 1, got "${raw}"`);
    process.exit(2);
  }
  return Number(raw);
}

/** `--name N[,N...]` of this process' command line, each a whole number >= 1; undefined when not given. */
export function numbersFlag(name: string): number[] | undefined {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return undefined;
  return (process.argv[i + 1] ?? '').split(',').map((n, k, all) => wholeNumber(`--${name}${all.length > 1 ? ` item ${k + 1}` : ''}`, n));
}

/** `--name N` of this process' command line; undefined when not given. */
export const numberFlag = (name: string): number | undefined => numbersFlag(name)?.[0];
