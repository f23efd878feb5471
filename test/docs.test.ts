import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { Command } from 'commander';
import client from 'prom-client';
import { describe, expect, it } from 'vitest';
import { addGlobalOptions } from '../cli/context.js';
import { errorCatalogue } from '../src/errors.js';
// every module that registers a metric of ours, at import or when its metrics are first asked for
import { apiMetrics, redisErrors } from '../src/metrics.js';
import { snapshotMetrics } from '../src/snapshot/metrics.js';
import { clusterWatchMetrics } from '../src/store/cluster-watch.js';
import { tokenCountMetrics } from '../src/tokens/metrics.js';
import { lapseMetrics } from '../src/tokens/lapse.js';

for (const made of [apiMetrics, redisErrors, snapshotMetrics, clusterWatchMetrics, tokenCountMetrics, lapseMetrics]) made();

/** `rm_name{label,...}` -> its labels, from the README's metrics table (the rows before the alerts). */
function documented(): Map<string, string[]> {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  const section = readme.slice(readme.indexOf('## Metrics'), readme.indexOf('Alerts worth having'));
  const out = new Map<string, string[]>();
  for (const row of section.split('\n').filter((l) => l.startsWith('| `rm_'))) {
    const names = row.split(' | ')[0]!;
    for (const m of names.matchAll(/`(rm_\w+)(?:\{([\w,]+)\})?`/g)) out.set(m[1]!, m[2] ? m[2].split(',') : []);
  }
  return out;
}

// an operator builds dashboards and alerts from the README's table: a metric missing there, or named
// there and gone from the code, is a dashboard that silently shows nothing
describe('the README metrics table', () => {
  it('names every rm_ metric the code registers, with its labels, and none it does not', async () => {
    const registered = new Map(
      (await client.register.getMetricsAsJSON())
        .filter((m) => m.name.startsWith('rm_'))
        .map((m) => [m.name, ((client.register.getSingleMetric(m.name) as unknown as { labelNames?: string[] }).labelNames ?? []).slice().sort()]),
    );
    const docs = new Map([...documented()].map(([name, labels]) => [name, labels.slice().sort()]));
    expect(registered.size).toBeGreaterThan(10);
    expect(Object.fromEntries(docs)).toEqual(Object.fromEntries(registered));
  });
});

/** Codes only the CLI meets (it reads campaigns in Redis itself): no route answers them. */
const CLI_ONLY = new Set(['campaign_not_found']);

// satellites code against docs/http.md's table: a code answered on the wire and missing there is a surprise
describe('the docs/http.md error table', () => {
  it('lists every wire error code with the status the catalogue gives it', () => {
    const http = readFileSync(new URL('../docs/http.md', import.meta.url), 'utf8');
    const table = http.slice(http.indexOf('## Errors'), http.indexOf('## Faults and abuse'));
    const listed = new Map<string, number>();
    for (const row of table.split('\n').filter((l) => /^\| \d{3} \|/.test(l))) {
      const [, status, codes] = row.split('|').map((c) => c.trim());
      for (const m of codes!.matchAll(/`(\w+)`/g)) listed.set(m[1]!, Number(status));
    }
    const wire = Object.entries(errorCatalogue).filter(([code]) => !CLI_ONLY.has(code));
    expect(Object.fromEntries(listed)).toEqual(Object.fromEntries(wire.map(([code, e]) => [code, e.status])));
  });
});

/** Flags the docs give to other programs (redis-server, redis-cli, docker, curl, node, promtool, the benches), not to referral-manager. */
const NOT_OURS = new Set(['appendonly', 'save', 'cluster', 'init', 'rm', 'data-binary', 'cpu-prof', 'cpu-prof-dir', 'tokens', 'concurrency', 'masters', 'user-bytes', 'listpack-value', 'only', 'events', 'redeems', 'syntax-only']);

// the other direction of cli-help's check: a flag the docs tell an operator to type and no command has (renamed,
// or never there) fails only when it is typed, with "unknown option"
describe('the --flags README.md and docs/ name', () => {
  it('are each an option of referral-manager or of one of its commands', async () => {
    const program = addGlobalOptions(new Command('referral-manager'));
    const dir = new URL('../cli/commands/', import.meta.url);
    for (const file of readdirSync(dir).filter((f) => f.endsWith('.ts'))) ((await import(new URL(file, dir).href)) as { register: (p: Command) => void }).register(program);
    const ours = new Set<string>();
    (function walk(cmd: Command): void {
      for (const o of cmd.options) if (o.long) ours.add(o.long.slice(2));
      cmd.commands.forEach(walk);
    })(program);
    expect(ours.has('per-user') && ours.has('repair-redis')).toBe(true);
    const named = new Set<string>();
    for (const doc of ['../README.md', '../docs/engine.md', '../docs/http.md', '../docs/snapshot.md']) {
      for (const m of readFileSync(new URL(doc, import.meta.url), 'utf8').matchAll(/(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?![\w-])/g)) named.add(m[1]!);
    }
    expect([...named].filter((f) => !ours.has(f) && !NOT_OURS.has(f) && f !== 'version' && f !== 'help')).toEqual([]);
  });
});

/** Paths the text names that are not in the tree by design: made by a run (gitignored), or an example of a name. */
const MADE_OR_EXAMPLE = new Set(['bench/results.json', 'lua/includes/x.lua']);

// a file moved or renamed leaves the docs and the comments that name it pointing at nothing, and nothing fails
describe('the repository paths the docs and the code name', () => {
  it('each exist (a built .js or .d.ts by its .ts source)', () => {
    const root = new URL('../', import.meta.url);
    const texts = ['README.md', 'packages/client/README.md'];
    for (const dir of ['docs', 'src', 'cli', 'bench', 'lua', 'test', 'deploy']) {
      for (const f of readdirSync(new URL(dir, root), { recursive: true, withFileTypes: true })) {
        if (f.isFile() && /\.(ts|lua|md|ya?ml|json)$/.test(f.name)) texts.push(`${f.parentPath.slice(root.pathname.length)}/${f.name}`);
      }
    }
    expect(texts).toContain('lua/includes/codec.lua');
    const missing: string[] = [];
    for (const file of texts) {
      for (const m of readFileSync(new URL(file, root), 'utf8').matchAll(/\b(?:src|cli|bench|lua|test|docs|deploy|packages)\/[\w./-]*\.(?:ts|js|lua|md|ya?ml|json)\b/g)) {
        const named = m[0].replace(/(\.d)?\.ts$|\.js$/, '.ts');
        if (!MADE_OR_EXAMPLE.has(named) && !existsSync(new URL(named, root)) && !existsSync(new URL(m[0], root))) missing.push(`${file}: ${m[0]}`);
      }
    }
    expect(missing).toEqual([]);
  });
});
