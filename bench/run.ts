import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import pg from 'pg';
import { printEngine, runEngineBench, TARGET_BYTES_PER_TOKEN, TARGET_TOKENS_PER_SEC, where } from './engine.js';
import { wholeNumber } from './flags.js';
import * as http from './http.js';
import * as list from './list.js';
import * as snapshot from './snapshot.js';
import * as sweep from './sweep.js';

/**
 * `npm run bench`: every benchmark in one run, one after another so they do not share the CPU,
 * then a summary against the targets, also written to bench/results.json.
 * Sizes: BENCH_ENGINE_TOKENS (default 1,000,000 per tokens-per-user case), BENCH_ENGINE_CONCURRENCY (generate
 * calls in flight, 4), BENCH_ENGINE_MASTERS (deployments: 1 = one redis-server, N = a Cluster of N masters; "1,3"), BENCH_HTTP_TOKENS (300,000 redeems per target), BENCH_WORKERS (workers of ours, 1), BENCH_SNAPSHOT_EVENTS (500,000),
 * BENCH_SWEEP_TOKENS (1,000,000), BENCH_LIST_TOKENS (100,000 tokens of the one user whose list is read); BENCH_DATABASE_URL the Postgres server the bench makes its databases on.
 */
const env = (name: string, dflt: number): number => {
  const raw = process.env[name];
  return raw === undefined || raw === '' ? dflt : wholeNumber(name, raw);
};
// read before anything runs
const sizes = {
  engineTokens: env('BENCH_ENGINE_TOKENS', 1_000_000),
  engineConcurrency: env('BENCH_ENGINE_CONCURRENCY', 4),
  sweepTokens: env('BENCH_SWEEP_TOKENS', 1_000_000),
  httpTokens: env('BENCH_HTTP_TOKENS', 300_000),
  workers: env('BENCH_WORKERS', 1),
  snapshotEvents: env('BENCH_SNAPSHOT_EVENTS', 500_000),
  listTokens: env('BENCH_LIST_TOKENS', 100_000),
  engineMasters: (process.env.BENCH_ENGINE_MASTERS || '1,3').split(',').map((n, i) => wholeNumber(`BENCH_ENGINE_MASTERS item ${i + 1}`, n)),
};
const server = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

async function withDatabase<T>(fn: (url: string) => Promise<T>): Promise<T> {
  const name = `bench_rm_${randomBytes(3).toString('hex')}`;
  const url = new URL(server);
  url.pathname = `/${name}`;
  try {
    return await fn(url.toString());
  } finally {
    const admin = new pg.Client({ connectionString: server });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await admin.end();
  }
}

const started = new Date().toISOString();
console.log(`# referral-manager benchmarks, ${started}, ${os.cpus().length} cores, node ${process.version}\n`);

console.log('## Token engine: generation and memory per token (private redis-server, then a private 3-master Redis Cluster)');
const engineResult = await runEngineBench({
  tokens: sizes.engineTokens,
  concurrency: [sizes.engineConcurrency],
  masters: sizes.engineMasters,
});
printEngine(engineResult);

console.log('\n## Revoke sweeps while a satellite redeems (private redis-server)');
const sweepResult = await sweep.run({ tokens: sizes.sweepTokens });

console.log('\n## HTTP redeem (autocannon from code, 100 connections, MessagePack bodies)');
const httpResult = await withDatabase((url) =>
  http.run({ tokens: sizes.httpTokens, workers: sizes.workers, snapshotDatabaseUrl: url }),
);

console.log('\n## A long token list while lookups go on (serve, 1 worker, private redis-server)');
const listResult = await list.run({ tokens: sizes.listTokens });

console.log('\n## Snapshot writer catch-up into Postgres');
const snapResult = await snapshot.run({ events: sizes.snapshotEvents, databaseUrl: server });

const summary = {
  started,
  cores: os.cpus().length,
  engine: engineResult,
  http: httpResult,
  snapshot: snapResult,
  sweep: sweepResult,
  list: listResult,
};
writeFileSync(new URL('../../bench/results.json', import.meta.url), `${JSON.stringify(summary, null, 2)}\n`);

const mark = (ok: boolean) => (ok ? 'met' : 'NOT met');
const o = httpResult;
console.log('\n## Targets');
for (const { masters, perUser, best: e } of engineResult.scenarios) {
  console.log(`${`generate, ${perUser}/user, ${where(masters)}`.padEnd(48)}${e.tokensPerSec} tokens/s (>= ${TARGET_TOKENS_PER_SEC / 1000}k: ${mark(e.tokensPerSec >= TARGET_TOKENS_PER_SEC)})`);
  console.log(`${`memory, ${perUser}/user, ${where(masters)}`.padEnd(48)}${e.bytesPerTokenNoStreams} B/token, streams trimmed (<= ${TARGET_BYTES_PER_TOKEN}: ${mark(e.bytesPerTokenNoStreams <= TARGET_BYTES_PER_TOKEN)}); ${e.bytesPerToken} with untrimmed streams`);
}
console.log(`redeem vs uWS ceiling   ${o.oursOverCeiling} (>= 0.7: ${mark((o.oursOverCeiling ?? 0) >= 0.7)})`);
console.log(`redeem vs Fastify       ${o.oursOverFastify} (>= 2.0: ${mark((o.oursOverFastify ?? 0) >= 2)})`);
console.log(`redeem p99              ${o.ours?.p99} ms (<= 10: ${mark((o.ours?.p99 ?? 99) <= 10)})`);
const cpu = (m?: { serverCpuUs?: number; redisCpuUs?: number }) => (m ? `${m.serverCpuUs} + ${m.redisCpuUs} µs` : '-');
if (o.oursAllCores) {
  const c = o.oursAllCores;
  const of = (m?: { reqPerSec: number }) => (m ? (c.reqPerSec / m.reqPerSec).toFixed(2) : '-');
  console.log(`ours with ${c.workers} workers (npm start's default, one per core): ${c.reqPerSec} req/s, p99 ${c.p99} ms = ${of(o.ceiling)} of the ceiling, ${of(o.fastify)} x Fastify (the targets above use 1 worker, like the baselines)`);
}
console.log(`CPU per redeem (server + Redis): ours ${cpu(o.ours)}, Fastify ${cpu(o.fastify)}, uWS ceiling ${cpu(o.ceiling)}`);
console.log(`snapshot catch-up       ${Math.round(snapResult.eventsPerSec)} events/s (>= 100k: ${mark(snapResult.eventsPerSec >= 100_000)})`);
const { restore, verify } = snapResult;
console.log(`restore from Postgres   ${restore.tokensPerSec} tokens/s (${restore.tokens} in ${restore.seconds.toFixed(1)} s); verify ${verify.tokensPerSec} tokens/s, ${verify.differences} differences (no targets)`);
for (const [what, r] of [['campaign revoke', sweepResult.campaign], ['satellite revoke', sweepResult.satellite]] as const) {
  console.log(`${what.padEnd(24)}${r.revoked} revoked in ${r.seconds.toFixed(1)} s; longest script ${r.longestScriptMs} ms; redeems meanwhile p99 ${r.redeemP99Ms} ms (no targets)`);
}
const l = listResult;
console.log(`list of ${l.tokens} tokens of one user  ${l.listMedianMs} ms (${(l.replyBytes / 1e6).toFixed(1)} MB); lookups meanwhile max ${l.duringLists.maxMs} ms (worst per list ${l.worstPerListMedianMs}), p99 ${l.duringLists.p99Ms} ms, against ${l.baseline.maxMs} / ${l.baseline.p99Ms} ms with no list (no targets)`);
console.log(`snapshot lag under HTTP redeem load  ${o.snapshot?.maxLagSeconds.toFixed(3)} s (< 1 s: ${mark((o.snapshot?.maxLagSeconds ?? 9) < 1)})`);
