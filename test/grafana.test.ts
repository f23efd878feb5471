import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Pool } from 'undici';
import { describe, expect, it } from 'vitest';
import { ADMIN_KEY, call } from './helpers/http.js';
import { DEPLOY, HAS_PROMETHEUS, scrapedDeployment, type Prometheus } from './helpers/prometheus.js';
import { until } from './helpers/snapshot.js';

interface Target { refId: string; expr: string; datasource?: { uid: string } }
interface Panel { id: number; type: string; title: string; gridPos: { h: number; w: number; x: number; y: number }; datasource?: { uid: string }; targets?: Target[] }
interface Variable { name: string; type: string; query: string; datasource?: { uid: string } }

const dashboard = JSON.parse(readFileSync(path.join(DEPLOY, 'grafana/referral-manager.json'), 'utf8')) as { panels: Panel[]; templating: { list: Variable[] } };
const panels = dashboard.panels.filter((p) => p.type !== 'row');
const variables = dashboard.templating.list;
const USES_DATASOURCE = '${datasource}';

/** What Grafana puts in for its variables, as a query at one instant can take them ($job and $instance: All). */
const SUBSTITUTES: Record<string, string> = { __rate_interval: '1m', __range: '1h', job: '.*', instance: '.*' };
function substituted(expr: string): string {
  return expr.replace(/\$(\w+)/g, (_, name: string) => {
    if (!(name in SUBSTITUTES)) throw new Error(`${expr}: no substitute for $${name}`);
    return SUBSTITUTES[name]!;
  });
}

/** Prometheus' error for `expr` at this instant, or how many series it gives. */
async function evaluate(prom: Prometheus, expr: string): Promise<{ error: string } | { series: number }> {
  try {
    return { series: (await prom.query(substituted(expr))).length };
  } catch (err) {
    return { error: (err as Error).message };
  }
}

describe('deploy/grafana/referral-manager.json', () => {
  it('has the on-call rows in order, each panel with a unique id, a place of its own and queries', () => {
    const ids = dashboard.panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(dashboard.panels.filter((p) => p.type === 'row').map((p) => p.title)).toEqual(['API', 'Redis', 'Snapshot', 'Tokens', 'Process']);
    const cells = new Map<string, number>();
    for (const p of dashboard.panels) {
      // Grafana's built-in panels only: a plugin panel is a blank box where it is not installed
      expect(['row', 'timeseries', 'stat', 'table']).toContain(p.type);
      const { h, w, x, y } = p.gridPos;
      expect([h, w, x, y].every((n) => Number.isInteger(n) && n >= 0) && h > 0 && w > 0 && x + w <= 24, `panel ${p.id} gridPos`).toBe(true);
      for (let i = x; i < x + w; i++) for (let j = y; j < y + h; j++) {
        expect(cells.get(`${i},${j}`), `panel ${p.id} overlaps another`).toBeUndefined();
        cells.set(`${i},${j}`, p.id);
      }
    }
    // listed top to bottom, so the file reads in the order the dashboard shows
    const ys = dashboard.panels.map((p) => p.gridPos.y);
    expect(ys).toEqual([...ys].sort((a, b) => a - b));
    for (const p of panels) {
      expect(p.targets?.length, `panel ${p.id} has targets`).toBeGreaterThan(0);
      for (const t of p.targets!) expect(t.expr, `panel ${p.id} ${t.refId}`).toMatch(/\S/);
      expect(new Set(p.targets!.map((t) => t.refId)).size).toBe(p.targets!.length);
    }
  });

  it('queries the data source the datasource variable picks, in every panel, target and variable', () => {
    expect(variables.find((v) => v.name === 'datasource')).toMatchObject({ type: 'datasource', query: 'prometheus' });
    const users = [...panels, ...panels.flatMap((p) => p.targets!), ...variables.filter((v) => v.type === 'query')];
    expect(users.filter((u) => u.datasource?.uid !== USES_DATASOURCE)).toEqual([]);
  });

  it('narrows every series a panel reads to the job and instance variables', () => {
    const unfiltered = panels.flatMap((p) => p.targets!.flatMap((t) => t.expr.match(/\b(?:rm|process|nodejs)_\w+\b(?!\{job=~"\$job",instance=~"\$instance")/g) ?? []));
    expect(unfiltered).toEqual([]);
  });
});

/**
 * Series a serve and a writer export after the traffic below; every other target must find some too. A
 * Redis Cluster's masters exist only on a Cluster (the serve here runs on the shared single Redis).
 */
const MAY_BE_EMPTY = new Set(['Cluster masters up']);

describe.skipIf(!HAS_PROMETHEUS)('the dashboard against a real Prometheus scraping a serve and a writer', () => {
  it('runs every panel query without error, and each finds series once tokens were made and redeemed', async () => {
    // counters read every second, so the token panels have series within the test's time
    const { served, prom, stop } = await scrapedDeployment({ TOKEN_COUNTS_MS: '1000', LEASE_SWEEP_MS: '1000' });
    const pool = new Pool(served.url, { connections: 2 });
    try {
      const keys: Record<string, string> = {};
      for (const id of ['sat-a', 'sat-b']) keys[id] = (await call(pool, 'POST', '/v1/admin/satellites', { key: ADMIN_KEY, body: { id } })).body.apiKey;
      const gen = await call(pool, 'POST', '/v1/admin/tokens/generate', { key: ADMIN_KEY, body: { satelliteId: 'sat-a', userIds: ['alice'], perUser: 4 } });
      const [t1, t2, t3] = gen.body.tokens.map((t: { token: string }) => t.token) as string[];
      // redeemed across satellites (the matrix), redeemed again (409), reserved (a sign-up under way), unknown (404)
      expect((await call(pool, 'POST', '/v1/tokens/redeem', { key: keys['sat-b'], body: { token: t1, userId: 'bob' } })).status).toBe(200);
      expect((await call(pool, 'POST', '/v1/tokens/redeem', { key: keys['sat-a'], body: { token: t2, userId: 'carol' } })).status).toBe(200);
      expect((await call(pool, 'POST', '/v1/tokens/redeem', { key: keys['sat-b'], body: { token: t1, userId: 'dave' } })).status).toBe(409);
      expect((await call(pool, 'POST', '/v1/tokens/reserve', { key: keys['sat-b'], body: { token: t3 } })).status).toBe(200);
      expect((await call(pool, 'GET', '/v1/tokens/ffff0000-0000-4000-8000-000000000000', { key: keys['sat-a'] })).status).toBe(404);

      const targets = panels.flatMap((p) => p.targets!.map((t) => ({ panel: `${p.id} ${p.title}`, refId: t.refId, expr: t.expr, mayBeEmpty: MAY_BE_EMPTY.has(p.title) })));
      const results = async () => Promise.all(targets.map(async (t) => ({ ...t, ...(await evaluate(prom, t.expr)) })));
      // the counters, their rates and the redemption matrix take a few scrapes to show
      const last = await until(results, (rs) => rs.every((r) => 'error' in r || r.mayBeEmpty || r.series > 0), 'every panel finds series', 60_000).catch(results);
      expect(last.filter((r) => 'error' in r).map((r) => `${r.panel} ${r.refId}: ${'error' in r && r.error}`)).toEqual([]);
      expect(last.filter((r) => !r.mayBeEmpty && 'series' in r && r.series === 0).map((r) => `${r.panel} ${r.refId}: ${r.expr}`)).toEqual([]);

      // the check above catches what a broken expression does: fail to parse, or fail as it runs
      expect(await evaluate(prom, 'sum(rat(rm_http_requests_total[$__rate_interval]))')).toEqual({ error: expect.stringMatching(/unknown function with name "rat"/) });
      expect(await evaluate(prom, 'rm_tokens * on (satellite) rm_tokens')).toEqual({ error: expect.stringMatching(/many-to-many matching not allowed/) });

      // the job and instance variables list both processes
      for (const v of variables.filter((x) => x.type === 'query')) {
        const [, selector, label] = /^label_values\((.+), *(\w+)\)$/.exec(v.query)!;
        const values = await prom.api(`label/${label}/values?match[]=${encodeURIComponent(substituted(selector!))}`);
        expect(values, v.name).toHaveLength(2);
      }
    } finally {
      await pool.close();
      await stop();
    }
  }, 120_000);
});
