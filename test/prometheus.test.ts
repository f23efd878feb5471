import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { serve } from './helpers/http.js';
import { HAS_PROMETHEUS, METRICS_KEY, promtool, RULES, scrapedDeployment } from './helpers/prometheus.js';
import { dropSharedPrefixes, testPrefix } from './helpers/redis.js';
import { until } from './helpers/snapshot.js';

interface Rule {
  alert: string;
  expr: string;
  for?: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}
const rules: Rule[] = (parse(readFileSync(RULES, 'utf8')) as { groups: { rules: Rule[] }[] }).groups.flatMap((g) => g.rules);

const tmp = mkdtempSync(path.join(os.tmpdir(), 'rm-prometheus-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/**
 * One story for an alert, in promtool's unit-test terms: series sampled every `interval` of the alert's stories
 * (15s unless given; values in promtool's expanding notation: `0+5x40` is 0, 5, ... 41 samples; `_` no sample), the
 * times at which it must not be firing (pending or inactive), and the time at which it must fire, with the labels it
 * keeps from the series. The rules are evaluated at the same interval.
 */
interface Story {
  story: string;
  series: Record<string, string>;
  quiet: string[];
  fires?: { at: string; labels?: Record<string, string> };
}

const STORIES: Record<string, { interval?: string; stories: Story[] }> = {
  ReferralManagerDown: { stories: [
    {
      story: 'a serve down for 2m',
      series: { 'up{job="referral-manager",instance="a:7480"}': '1x3 0x20', 'up{job="referral-manager",instance="b:7480"}': '1x23', 'up{job="node",instance="a:9100"}': '0x23' },
      quiet: ['2m45s'],
      fires: { at: '3m', labels: { job: 'referral-manager', instance: 'a:7480' } },
    },
    { story: 'a restart within the 2m, and a target of another job down', series: { 'up{job="referral-manager-snapshot",instance="a:7481"}': '1x3 0x3 1x20', 'up{job="node",instance="a:9100"}': '0x23' }, quiet: ['2m', '5m'] },
  ] },
  ReferralManagerSnapshotBehind: { stories: [
    { story: 'one writer 90 s behind from 1m fires after the 5m', series: { 'rm_snapshot_lag_seconds{instance="a"}': '0x40', 'rm_snapshot_lag_seconds{instance="b"}': '0x3 90x40' }, quiet: ['5m'], fires: { at: '6m' } },
    // the writer copies nothing while it migrates the schema: the lag grows from its start, and is caught up after
    { story: 'a 5m schema migration', series: { 'rm_snapshot_lag_seconds{instance="a"}': '0+15x20 0x20' }, quiet: ['5m', '10m'] },
    { story: '59 s behind, or unknown (NaN), is quiet', series: { 'rm_snapshot_lag_seconds{instance="a"}': '59x40', 'rm_snapshot_lag_seconds{instance="b"}': `0${' NaN'.repeat(40)}` }, quiet: ['10m'] },
  ] },
  ReferralManagerNoSnapshotWriter: { stories: [
    { story: 'the lease holder stops and nobody takes over', series: { 'rm_snapshot_leader{instance="a"}': '1x3 0x40', 'rm_snapshot_leader{instance="b"}': '0x43' }, quiet: ['2m45s'], fires: { at: '3m' } },
    { story: 'a standby takes the lease within the 2m', series: { 'rm_snapshot_leader{instance="a"}': '1x3 0x40', 'rm_snapshot_leader{instance="b"}': '0x7 1x40' }, quiet: ['3m', '10m'] },
  ] },
  ReferralManagerPostgresDown: { stories: [
    { story: 'the lease holder retries for 2m', series: { 'rm_snapshot_postgres_up{instance="a"}': '1x3 0x20', 'rm_snapshot_postgres_up{instance="b"}': `NaN${' NaN'.repeat(23)}` }, quiet: ['2m45s'], fires: { at: '3m' } },
    { story: 'a 30 s outage', series: { 'rm_snapshot_postgres_up{instance="a"}': '1x3 0x1 1x20' }, quiet: ['1m15s', '5m'] },
    // Postgres answers the migration (src/snapshot/postgres-health.ts migrates): read as down, it paged after 2m
    { story: 'Postgres back after 1m, then a 10m schema migration', series: { 'rm_snapshot_postgres_up{instance="a"}': '0x4 1x40' }, quiet: ['1m45s', '10m'] },
  ] },
  ReferralManagerSnapshotLostEvents: { interval: '1m', stories: [
    { story: 'a running writer counts lost events: it fires for the hour after', series: { 'rm_snapshot_errors_total{instance="a",where="lost"}': '0x4 3x120' }, quiet: ['4m', '66m'], fires: { at: '64m', labels: { instance: 'a', where: 'lost' } } },
    { story: 'a writer that counts them as it starts, before a first scrape', series: { 'rm_snapshot_errors_total{instance="a",where="lost"}': '_x60 5x70' }, quiet: ['122m'], fires: { at: '61m', labels: { instance: 'a', where: 'lost' } } },
    { story: 'errors of another kind', series: { 'rm_snapshot_errors_total{instance="a",where="postgres"}': '0+1x70' }, quiet: ['5m', '65m'] },
  ] },
  ReferralManagerSatellitesRefused: { stories: [
    { story: 'a satellite refused for 10m', series: { 'rm_http_requests_total{route="/v1/tokens/redeem",method="POST",status="401"}': '0+2x60' }, quiet: ['9m'], fires: { at: '11m' } },
    { story: 'one stray 401', series: { 'rm_http_requests_total{route="/v1/tokens/redeem",method="POST",status="401"}': '0 1x60' }, quiet: ['3m', '11m'] },
    {
      story: 'refusals on admin routes and /metrics are no satellite',
      series: { 'rm_http_requests_total{route="/v1/admin/stats",method="GET",status="401"}': '0+2x60', 'rm_http_requests_total{route="/metrics",method="GET",status="401"}': '0+2x60' },
      quiet: ['11m'],
    },
  ] },
  ReferralManagerRedisUnavailable: { stories: [
    { story: '503s for 3m', series: { 'rm_redis_errors_total{kind="unavailable"}': '0+5x40' }, quiet: ['2m'], fires: { at: '4m' } },
    { story: 'a single 503', series: { 'rm_redis_errors_total{kind="unavailable"}': '0 1x40' }, quiet: ['1m', '4m'] },
  ] },
  ReferralManagerRedisUnreadable: { stories: [
    { story: 'the counters last read at 2m', series: { 'rm_token_counts_read_seconds{instance="a"}': '0+15x8 120x40' }, quiet: ['5m'], fires: { at: '7m' } },
    { story: 'one serve still reads them', series: { 'rm_token_counts_read_seconds{instance="a"}': '0+15x40', 'rm_token_counts_read_seconds{instance="b"}': '0x40' }, quiet: ['10m'] },
  ] },
  ReferralManagerReplicasBehind: { stories: [
    { story: 'changes refused for 3m', series: { 'rm_redis_errors_total{kind="replicas"}': '0+5x40' }, quiet: ['2m'], fires: { at: '4m' } },
    { story: 'Redis unavailable is another alert', series: { 'rm_redis_errors_total{kind="unavailable"}': '0+5x40' }, quiet: ['4m'] },
  ] },
  ReferralManagerRedisClusterMasterLost: { stories: [
    { story: 'a master down from 1m', series: { 'rm_redis_cluster_master_up{node="10.0.0.1:6379"}': '1x3 0x20', 'rm_redis_cluster_master_up{node="10.0.0.2:6379"}': '1x24' }, quiet: ['1m45s'], fires: { at: '2m' } },
    { story: 'a replica takes over within the minute', series: { 'rm_redis_cluster_master_up{node="10.0.0.1:6379"}': '1x3 0x2 1x20' }, quiet: ['1m30s', '3m'] },
  ] },
  ReferralManagerReshardUnfinished: { interval: '1m', stories: [
    { story: 'a slot migrating for 15m', series: { 'rm_redis_cluster_slots_migrating': '0 1x30' }, quiet: ['15m'], fires: { at: '16m' } },
    { story: 'a 5m reshard', series: { 'rm_redis_cluster_slots_migrating': '0 1x5 0x30' }, quiet: ['5m', '20m'] },
  ] },
  ReferralManagerServerErrors: { stories: [
    {
      story: '2 % of API requests answered 503',
      series: { 'rm_http_requests_total{route="/v1/tokens/redeem",method="POST",status="200"}': '0+100x40', 'rm_http_requests_total{route="/v1/tokens/redeem",method="POST",status="503"}': '0+2x40' },
      quiet: ['5m'],
      fires: { at: '6m' },
    },
    {
      story: 'half a percent',
      series: { 'rm_http_requests_total{route="/v1/tokens/redeem",method="POST",status="200"}': '0+200x40', 'rm_http_requests_total{route="/v1/tokens/redeem",method="POST",status="503"}': '0+1x40' },
      quiet: ['8m'],
    },
    {
      story: 'a /readyz answering its probes 503',
      series: { 'rm_http_requests_total{route="/v1/tokens/redeem",method="POST",status="200"}': '0+100x40', 'rm_http_requests_total{route="/readyz",method="GET",status="503"}': '0+100x40' },
      quiet: ['8m'],
    },
  ] },
  ReferralManagerSlowSignups: { stories: [
    {
      story: 'half the redeems take 0.25–1 s for 10m',
      series: {
        'rm_http_request_duration_seconds_bucket{route="/v1/tokens/redeem",status="200",le="0.01"}': '0+50x60',
        'rm_http_request_duration_seconds_bucket{route="/v1/tokens/redeem",status="200",le="0.25"}': '0+50x60',
        'rm_http_request_duration_seconds_bucket{route="/v1/tokens/redeem",status="200",le="1"}': '0+100x60',
        'rm_http_request_duration_seconds_bucket{route="/v1/tokens/redeem",status="200",le="+Inf"}': '0+100x60',
      },
      quiet: ['9m'],
      fires: { at: '11m' },
    },
    {
      story: 'fast sign-ups, and a slow admin route',
      series: {
        'rm_http_request_duration_seconds_bucket{route="/v1/tokens/reserve",status="200",le="0.01"}': '0+100x60',
        'rm_http_request_duration_seconds_bucket{route="/v1/tokens/reserve",status="200",le="+Inf"}': '0+100x60',
        'rm_http_request_duration_seconds_bucket{route="/v1/admin/tokens/generate",status="200",le="1"}': '0x60',
        'rm_http_request_duration_seconds_bucket{route="/v1/admin/tokens/generate",status="200",le="+Inf"}': '0+100x60',
      },
      quiet: ['11m'],
    },
    { story: 'no sign-up at all', series: { 'rm_http_request_duration_seconds_bucket{route="/v1/tokens/redeem",status="200",le="+Inf"}': '0x60' }, quiet: ['11m'] },
  ] },
  ReferralManagerReferralsStopped: { interval: '1h', stories: [
    {
      story: 'tokens out and no redemption for a day',
      series: { 'rm_token_results_total{op="redeem",code="ok"}': '0x30', 'rm_token_results_total{op="complete",code="ok"}': '0x30', 'rm_tokens{satellite="us1",state="unredeemed"}': '100x30' },
      quiet: ['1h', '23h'],
      fires: { at: '25h' },
    },
    {
      story: 'a redemption at 10h keeps it quiet for a day',
      series: { 'rm_token_results_total{op="redeem",code="ok"}': '0x9 1x40', 'rm_tokens{satellite="us1",state="unredeemed"}': '100x50' },
      quiet: ['25h', '33h'],
      fires: { at: '35h' },
    },
    { story: 'no token out', series: { 'rm_token_results_total{op="redeem",code="ok"}': '0x30', 'rm_tokens{satellite="us1",state="unredeemed"}': '0x30' }, quiet: ['25h'] },
  ] },
  ReferralManagerRedisLostData: { stories: [
    { story: 'two shards lost', series: { rm_snapshot_redis_lost_shards: '0x3 2x10' }, quiet: ['45s'], fires: { at: '1m' } },
    { story: 'none lost', series: { rm_snapshot_redis_lost_shards: '0x10' }, quiet: ['2m'] },
  ] },
  ReferralManagerRedisWentBack: { interval: '1m', stories: [
    { story: 'a running writer finds it: it fires for the hour after', series: { 'rm_snapshot_redis_went_back_total{instance="a"}': '0x4 1x120' }, quiet: ['4m', '66m'], fires: { at: '64m', labels: { instance: 'a' } } },
    { story: 'a writer started after the loss finds it before a first scrape', series: { 'rm_snapshot_redis_went_back_total{instance="a"}': '_x60 2x70' }, quiet: ['122m'], fires: { at: '61m', labels: { instance: 'a' } } },
  ] },
  ReferralManagerAbandonedReservationsKept: { interval: '1m', stories: [
    { story: 'sweeps failing for 30m', series: { rm_lease_sweep_errors_total: '0+1x50' }, quiet: ['30m'], fires: { at: '32m' } },
    { story: 'one failed sweep', series: { rm_lease_sweep_errors_total: '0 1x50' }, quiet: ['5m', '40m'] },
  ] },
  ReferralManagerGuessing: { stories: [
    // rate() divides by the whole 5m window: 2/s from the start reads over 1/s from 2m45s on
    { story: 'two refused guesses a second for 10m', series: { 'rm_rate_limited_total{by="crossed",limit="ip"}': '0+30x80' }, quiet: ['12m'], fires: { at: '13m' } },
    { story: 'under one a second', series: { 'rm_rate_limited_total{by="crossed",limit="ip"}': '0+10x80' }, quiet: ['19m'] },
  ] },
};

/** The promtool unit-test file of one alert's stories (JSON is YAML). */
function unitTests(rule: Rule, { interval = '15s', stories }: { interval?: string; stories: Story[] }): string {
  return JSON.stringify({
    rule_files: [RULES],
    evaluation_interval: interval,
    tests: stories.map((s) => ({
      name: `${rule.alert}: ${s.story}`,
      interval,
      input_series: Object.entries(s.series).map(([series, values]) => ({ series, values })),
      alert_rule_test: [
        ...s.quiet.map((at) => ({ eval_time: at, alertname: rule.alert, exp_alerts: [] })),
        ...(s.fires ? [{ eval_time: s.fires.at, alertname: rule.alert, exp_alerts: [{ exp_labels: { ...rule.labels, ...s.fires.labels }, exp_annotations: rule.annotations }] }] : []),
      ],
    })),
  });
}

describe.skipIf(!HAS_PROMETHEUS)('deploy/prometheus/alerts.yml', () => {
  it('passes promtool check rules', async () => {
    const r = await promtool(['check', 'rules', RULES]);
    expect(r.output).toContain(`SUCCESS: ${rules.length} rules found`);
    expect(r.code).toBe(0);
  });

  it('has stories for every alert, each with one in which it fires', () => {
    expect(rules.map((r) => r.alert).sort()).toEqual(Object.keys(STORIES).sort());
    for (const { stories } of Object.values(STORIES)) expect(stories.some((s) => s.fires)).toBe(true);
  });

  it.each(rules.map((r) => [r.alert, r] as const))('%s fires on its stories, and only then', async (_, rule) => {
    const file = path.join(tmp, `${rule.alert}.test.yml`);
    writeFileSync(file, unitTests(rule, STORIES[rule.alert] ?? { stories: [] }));
    const r = await promtool(['test', 'rules', file]);
    expect(r.output).toContain('SUCCESS');
    expect(r.code).toBe(0);
  });
});

/**
 * The README's alert rows: name -> the expression and the `for` written after it. Cells split where GitHub
 * splits them, at every `|` not escaped, code spans included, so an expression's `|` must be written `\|`.
 */
function readmeAlerts(): Map<string, { expr: string; for?: string }> {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  const out = new Map<string, { expr: string; for?: string }>();
  for (const row of readme.split('\n').filter((l) => l.startsWith('| `ReferralManager'))) {
    const [, name, cell] = row.split(/(?<!\\)\|/).map((c) => c.trim().replaceAll('\\|', '|'));
    const m = /^`([^`]+)`(?: for (\w+))?/.exec(cell!);
    expect(m, `${name}: its expression cell is ${cell}`).not.toBeNull();
    out.set(name!.replaceAll('`', ''), m![2] ? { expr: m![1]!, for: m![2] } : { expr: m![1]! });
  }
  return out;
}

// operators read the README's table and load the file: the two must be the same alerts
describe('the README alerts table', () => {
  it('gives every rule of alerts.yml, with its expression and for, and no other', () => {
    const fromFile = Object.fromEntries(rules.map((r) => [r.alert, r.for ? { expr: r.expr, for: r.for } : { expr: r.expr }]));
    expect(rules.length).toBeGreaterThan(10);
    expect(Object.fromEntries(readmeAlerts())).toEqual(fromFile);
  });
});

describe.skipIf(!HAS_PROMETHEUS)('a real Prometheus with deploy/prometheus/prometheus.yml', () => {
  it('scrapes a serve and a standalone writer with METRICS_KEY and evaluates every rule without error', async () => {
    const { served, prom, stop } = await scrapedDeployment();
    let refusing: NodeJS.Timeout | undefined;
    try {
      // a satellite with an unknown key, refused again and again: ReferralManagerSatellitesRefused goes pending
      const refuse = () => void fetch(`${served.url}/v1/tokens/00000000-0000-4000-8000-000000000000`, { headers: { authorization: 'Bearer not-a-key' } }).then((r) => r.body?.cancel(), () => undefined);
      refusing = setInterval(refuse, 200);
      // scraped with the key: both ran, one of them holds the writer's lease
      const leaders = await until(() => prom.query('sum(rm_snapshot_leader)'), (r) => r[0]?.value[1] === '1', 'one lease holder scraped');
      expect(leaders).toHaveLength(1);
      const evaluated = await until(() => prom.rules(), (rs) => rs.length === rules.length && rs.every((r) => r.health !== 'unknown') && rs.some((r) => r.name === 'ReferralManagerSatellitesRefused' && r.state === 'pending'), 'every rule evaluated, the refusals pending', 60_000);
      expect(evaluated.filter((r) => r.health !== 'ok')).toEqual([]);
      expect(Object.fromEntries(evaluated.map((r) => [r.name, r.state]))).toMatchObject({ ReferralManagerSatellitesRefused: 'pending', ReferralManagerDown: 'inactive', ReferralManagerNoSnapshotWriter: 'inactive', ReferralManagerRedisUnreadable: 'inactive' });
    } finally {
      clearInterval(refusing);
      await stop();
    }
  }, 120_000);

  it('finds nothing to say of our metric names (promtool check metrics)', async () => {
    const prefix = testPrefix('prom');
    const served = await serve({ KEY_PREFIX: prefix, METRICS_KEY });
    try {
      const text = await (await fetch(`${served.url}/metrics`, { headers: { authorization: `Bearer ${METRICS_KEY}` } })).text();
      expect(text).toContain('rm_http_requests_total');
      const { output } = await promtool(['check', 'metrics'], text);
      // prom-client's own nodejs_active_*_total gauges are named against the conventions; ours are not
      const ours = output.split('\n').filter((l) => l.trim() && !/^nodejs_active_\w+_total /.test(l));
      expect(ours).toEqual([]);
    } finally {
      await served.stop();
      await dropSharedPrefixes(prefix);
    }
  }, 60_000);
});
