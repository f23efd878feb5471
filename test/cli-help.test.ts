import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { runCli } from './helpers/cli.js';

/** The lines of a `--help` block (`Commands:`, `Options:`) up to the blank line after it. */
const block = (help: string, heading: string) => (help.split(`${heading}:\n`)[1] ?? '').split('\n\n')[0]!;
/** The (sub)commands a `--help` lists. */
const subs = (help: string) => [...block(help, 'Commands').matchAll(/^ {2}([a-z][\w-]*)/gm)].map((m) => m[1]!).filter((s) => s !== 'help');

/** Every command, including ones added later: read from the top-level help, then each command's own. */
describe('referral-manager --help', () => {
  it('lists every command, and every command (and subcommand) has help with examples, exit 0', async () => {
    const top = await runCli(['--help']);
    expect(top.code).toBe(0);
    // the top-level help too: it is the first a newcomer reads (issue 4: `--help` on every command with examples)
    expect(top.stdout, 'referral-manager').toMatch(/Examples:/);
    const commands = subs(top.stdout);
    expect(commands).toEqual(expect.arrayContaining(['serve', 'generate', 'campaigns', 'satellites', 'tokens', 'stats', 'export', 'satellite-sim', 'snapshot', 'restore', 'verify', 'demo']));
    for (const c of commands) {
      const help = await runCli([c, '--help']);
      expect(help.code, c).toBe(0);
      expect(help.stdout, c).toMatch(/Examples:/);
      for (const s of subs(help.stdout)) {
        const sub = await runCli([c, s, '--help']);
        expect(sub.code, `${c} ${s}`).toBe(0);
        expect(sub.stdout, `${c} ${s}`).toMatch(/Examples:/);
      }
    }
  }, 120_000);
});

// the README's CLI table is where a marketer or operator looks first: a command or flag added without a
// row there exists only for those who read --help
describe('the README CLI table', () => {
  it('names every command, subcommand and command flag of --help', async () => {
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    const cells = readme.slice(readme.indexOf('## CLI'), readme.indexOf('### The generation flow')).split('\n').filter((l) => l.startsWith('| `')).map((l) => l.split(' | ')[0]!);
    const help = async (args: string[]) => (await runCli([...args, '--help'])).stdout;
    const flags = (text: string) => [...new Set([...block(text, 'Options').matchAll(/^ {2}(?:-\w, )?--([a-z][\w-]*)/gm)].map((m) => m[1]!))].filter((o) => o !== 'help');
    const top = await help([]);
    const global = flags(top);
    const missing: string[] = [];
    for (const c of subs(top)) {
      const own = cells.filter((cell) => cell.startsWith(`| \`${c}`) || cell.includes(` \`${c} `)).join(' ');
      if (!own) missing.push(c);
      const text = await help([c]);
      const leaves = subs(text).length ? await Promise.all(subs(text).map(async (s) => [`${c} ${s}`, s, await help([c, s])] as const)) : [[c, '', text] as const];
      for (const [name, sub, leaf] of leaves) {
        if (sub && !new RegExp(`\\b${sub}\\b`).test(own)) missing.push(name);
        for (const f of flags(leaf)) if (!global.includes(f) && !own.includes(`--${f}`)) missing.push(`${name} --${f}`);
      }
    }
    expect(missing).toEqual([]);
  }, 120_000);
});

// commander's own usage errors begin "error:"; restore's did not, so it read like a line of output
describe('usage errors', () => {
  it.each([
    [['restore'], 'error: restore needs --from-postgres', 'restore'],
    [['verify', '--max', 'x'], 'error: --max must be a whole number, got "x"', 'verify'],
    [['tokens', 'purge', '--older-than', 'old'], 'error: --older-than must look like', 'tokens purge'],
    [['generate', '--all', '--per-user', '1', '--expires', 'soon'], 'error: --expires must look like 2w, 30d, 12h, 90m, 45s', 'generate'],
  ])('%j: exit 2, the first line starts "error:", then the usage line', async (args, first, command) => {
    const r = await runCli(args as string[], { REDIS_URL: 'redis://127.0.0.1:1' });
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr.split('\n')[0]!.startsWith(first as string), r.stderr).toBe(true);
    expect(r.stderr).toContain(`Usage: referral-manager ${command as string} [options]`);
  });
});
