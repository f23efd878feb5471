import { readFileSync } from 'node:fs';
import client from 'prom-client';
import { describe, expect, it } from 'vitest';
// every module that registers a metric of ours
import '../src/metrics.js';
import '../src/snapshot/metrics.js';
import '../src/store/cluster-watch.js';
import '../src/tokens/metrics.js';

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
