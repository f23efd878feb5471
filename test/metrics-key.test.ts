import { readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { startOpsServer } from '../src/http/ops.js';
import { serve } from './helpers/http.js';
import { testPrefix } from './helpers/redis.js';

const METRICS_KEY = 'metrics-key-0123456789abcdefghijklmnopqrstuv';

/** status of GET `path` with `key` as bearer (none: no Authorization), and the error code of a refusal */
async function get(url: string, path: string, key?: string): Promise<[number, string | undefined]> {
  const r = await fetch(`${url}${path}`, { headers: key === undefined ? {} : { authorization: `Bearer ${key}` } });
  const text = await r.text();
  return [r.status, r.status === 200 ? undefined : (JSON.parse(text) as { error: string }).error];
}

// the metrics carry every satellite's token counts and the owner -> redeemer matrix (the admin stats), and
// satellites reach the port they are served on
describe('METRICS_KEY', () => {
  it('serve: /metrics asks for it; /healthz and /readyz stay open; without it /metrics is open', async () => {
    const guarded = await serve({ KEY_PREFIX: testPrefix('metrics-key'), METRICS_KEY });
    const open = await serve({ KEY_PREFIX: testPrefix('metrics-key') });
    try {
      expect(await get(guarded.url, '/metrics')).toEqual([401, 'unauthorized']);
      expect(await get(guarded.url, '/metrics', 'not-the-key')).toEqual([401, 'unauthorized']);
      expect(await get(guarded.url, '/metrics', METRICS_KEY)).toEqual([200, undefined]);
      expect((await get(guarded.url, '/healthz'))[0]).toBe(200);
      expect((await get(guarded.url, '/readyz'))[0]).toBe(200);
      expect(await get(open.url, '/metrics')).toEqual([200, undefined]);
      // the series alerts take increase() of are there before the first count
      const scraped = await (await fetch(`${open.url}/metrics`)).text();
      expect(scraped).toMatch(/^rm_token_results_total\{op="complete",code="ok"\} 0$/m);
      expect(scraped).toMatch(/^rm_redis_errors_total\{kind="unavailable"\} 0$/m);
      expect(scraped).toMatch(/^rm_rate_limited_total\{by="crossed",limit="ip"\} 0$/m);
      // nothing in flight but the scrape, which is not counted
      expect(scraped).toMatch(/^rm_http_requests_in_flight 0$/m);
    } finally {
      await guarded.stop();
      await open.stop();
    }
  });

  it('the standalone snapshot writer\'s ops server asks for it too', async () => {
    const ops = await startOpsServer('127.0.0.1', 0, async () => ({ ready: true, details: {} }), METRICS_KEY);
    try {
      const url = `http://127.0.0.1:${ops.port}`;
      expect(await get(url, '/metrics')).toEqual([401, 'unauthorized']);
      expect(await get(url, '/metrics', METRICS_KEY)).toEqual([200, undefined]);
      expect((await get(url, '/healthz'))[0]).toBe(200);
    } finally {
      ops.close();
    }
  });

  it('is refused at start when shorter than 32 characters', async () => {
    await expect(serve({ KEY_PREFIX: testPrefix('metrics-key'), METRICS_KEY: 'short' })).rejects.toThrow(/METRICS_KEY: must be at least 32 characters/);
  });
});

describe('what a process exports', () => {
  it('the CLI\'s modules, which every process imports (a serve worker too), register none of the snapshot writer\'s series: a worker exported them at 0 or NaN beside the writer\'s', async () => {
    const { registry } = await import('../src/metrics.js');
    for (const file of readdirSync(new URL('../cli/commands/', import.meta.url))) await import(`../cli/commands/${file}`);
    const names = (await registry.getMetricsAsJSON()).map((m) => m.name);
    expect(names).toContain('rm_http_requests_in_flight');
    expect(names.filter((n) => n.startsWith('rm_snapshot_'))).toEqual([]);
  });
});
