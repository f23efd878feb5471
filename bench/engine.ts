import { randomUUID } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { Redis } from 'ioredis';
import { SHARDS } from '../src/store/keys.js';
import { createRedis, masters, readyMasters, type RedisClient } from '../src/store/redis.js';
import { TokenStore } from '../src/store/token-store.js';
import { TokenEngine, type GenerateRequest } from '../src/tokens/engine.js';
import { info, redisCpuSeconds, startCluster, startRedis } from './redis-server.js';
import { numberFlag, numbersFlag } from './flags.js';
import { NO_REPLICA_WAIT } from '../src/store/replicas.js';

/**
 * Token engine: generation throughput and Redis memory per token (issue 2: >= 300k tokens/s over 1M
 * tokens, <= 80 B per unredeemed token), on a private redis-server, or a private Redis Cluster of N
 * masters, so memory and CPU are ours alone. The client is the product's (createRedis).
 * Per deployment, scenario (tokens per user) and concurrency: FLUSHALL, TokenEngine.generate in calls of
 * at most 10,000 tokens with `concurrency` calls in flight, then INFO memory before/after (summed over the
 * masters), once with the event streams (the snapshot writer trims them in production) and once after
 * deleting them (the state cost). Where the time goes: Node CPU, Redis CPU (all masters), EVALSHA
 * usec_per_call, and the synchronous part of each generate call (UUIDs, validation, grouping by shard,
 * RESP encoding).
 *   node dist/bench/engine.js [--tokens N] [--per-user 3,10] [--concurrency 1,2,4,8] [--masters 1,3] [--user-bytes N] [--listpack-value N]
 */
export interface EngineBenchOptions {
  tokens?: number;
  perUser?: number[];
  /** calls in flight; with several values each is a full run and the fastest is reported */
  concurrency?: number[];
  /** user ids padded to this many bytes (default: a bare UUID, 36), to see what long ids cost */
  userIdBytes?: number;
  /** the private redis-server's hash-max-listpack-value (Redis' default: 64) */
  listpackValue?: number;
  /** deployments: 1 = one redis-server, N >= 3 = a Redis Cluster of N masters (default: 1) */
  masters?: number[];
}

export interface EngineRun {
  concurrency: number;
  tokens: number;
  seconds: number;
  tokensPerSec: number;
  /** used_memory (after - before) / tokens, event streams included */
  bytesPerToken: number;
  /** the same after deleting the event streams: what the state itself costs */
  bytesPerTokenNoStreams: number;
  datasetBytesPerToken: number;
  datasetBytesPerTokenNoStreams: number;
  /** bucket hashes that left the listpack encoding (each costs several times more) */
  hashtableBuckets: number;
  buckets: number;
  nodeCpuSeconds: number;
  /** time inside the generate calls before they first wait on Redis */
  nodeSyncSeconds: number;
  redisCpuSeconds: number;
  evalshaCalls: number;
  evalshaUsecPerCall: number;
  /** Lua time summed over the EVALSHA calls */
  evalshaSeconds: number;
}

export interface EngineScenario {
  /** 1: one redis-server; more: Redis Cluster masters, all on this machine */
  masters: number;
  perUser: number;
  best: EngineRun;
  runs: EngineRun[];
}

export interface EngineBenchResult {
  redisVersion: string;
  uuidsPerSec: number;
  scenarios: EngineScenario[];
}

export const TARGET_TOKENS_PER_SEC = 300_000;
export const TARGET_BYTES_PER_TOKEN = 80;
const PER_CALL = 10_000;

// Storj-shaped ids: satellites are node ids, users are UUIDs; each call is for one satellite's users
const SATELLITES = ['12EayRS2V1kEsWESU9QMRseFhdxYxKicsiFmxrsLZHeLUtdps3S', '12L9ZFwhzVpuEKMUNUqkaTLGzwY9G24tbiigLiXpmZWKwmcNDDs', '121RTSDpyNZVcEU84Ticf2L1ntiuUimbWgfATz21tuvgk3vzoA6'];

function requests(tokens: number, perUser: number, userIdBytes = 36): GenerateRequest[] {
  const pad = userIdBytes > 36 ? `-${'x'.repeat(userIdBytes - 37)}` : '';
  const users = Math.ceil(tokens / perUser);
  const perCall = Math.floor(PER_CALL / perUser);
  const out: GenerateRequest[] = [];
  for (let u = 0, n = 0; u < users; u += perCall, n++) {
    const sat = SATELLITES[n % SATELLITES.length]!;
    const owners = Array.from({ length: Math.min(perCall, users - u) }, () => ({ ownerSatelliteId: sat, ownerUserId: randomUUID() + pad }));
    out.push({ owners, perUser, campaignId: 'bench-campaign-2025' });
  }
  return out;
}

const sum = async (nodes: Redis[], f: (node: Redis) => Promise<number>) => (await Promise.all(nodes.map(f))).reduce((a, b) => a + b, 0);

async function memory(nodes: Redis[]): Promise<{ used: number; dataset: number }> {
  const ms = await Promise.all(nodes.map((n) => info(n, 'memory')));
  return { used: ms.reduce((a, m) => a + Number(m.used_memory), 0), dataset: ms.reduce((a, m) => a + Number(m.used_memory_dataset), 0) };
}

async function encodings(node: Redis): Promise<{ buckets: number; hashtable: number }> {
  let cursor = '0';
  let buckets = 0;
  let hashtable = 0;
  do {
    const [next, keys] = await node.scan(cursor, 'MATCH', '*:b:*', 'COUNT', 5000);
    cursor = next;
    const p = node.pipeline();
    for (const k of keys) p.object('ENCODING', k);
    for (const [, enc] of (await p.exec()) ?? []) if (enc !== 'listpack') hashtable++;
    buckets += keys.length;
  } while (cursor !== '0');
  return { buckets, hashtable };
}

async function once(client: RedisClient, engine: TokenEngine, reqs: GenerateRequest[], concurrency: number): Promise<EngineRun> {
  const nodes = masters(client);
  await Promise.all(nodes.map((n) => n.flushall('SYNC')));
  await engine.store.preload();
  await Promise.all(nodes.map((n) => n.config('RESETSTAT')));
  const before = await memory(nodes);
  const cpu0 = await sum(nodes, redisCpuSeconds);
  const node0 = process.cpuUsage();
  let tokens = 0;
  let sync = 0;
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < reqs.length) {
        const s = performance.now();
        const call = engine.generate(reqs[next++]!);
        sync += performance.now() - s;
        const made = (await call).tokens.length;
        tokens += made;
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  const node = process.cpuUsage(node0);
  const redisCpu = (await sum(nodes, redisCpuSeconds)) - cpu0;
  let calls = 0;
  let usec = 0;
  for (const n of nodes) {
    const m = /calls=(\d+),usec=(\d+)/.exec((await info(n, 'commandstats')).cmdstat_evalsha ?? '');
    calls += Number(m?.[1] ?? 0);
    usec += Number(m?.[2] ?? 0);
  }
  const withStreams = await memory(nodes);
  const enc = (await Promise.all(nodes.map(encodings))).reduce((a, e) => ({ buckets: a.buckets + e.buckets, hashtable: a.hashtable + e.hashtable }));
  // one DEL per stream: on a Cluster they sit in different slots
  await Promise.all(Array.from({ length: SHARDS }, (_, s) => client.del(engine.store.keys.events(s))));
  const noStreams = await memory(nodes);
  const per = (after: number, base: number) => +((after - base) / tokens).toFixed(1);
  return {
    concurrency,
    tokens,
    seconds: +seconds.toFixed(3),
    tokensPerSec: Math.round(tokens / seconds),
    bytesPerToken: per(withStreams.used, before.used),
    bytesPerTokenNoStreams: per(noStreams.used, before.used),
    datasetBytesPerToken: per(withStreams.dataset, before.dataset),
    datasetBytesPerTokenNoStreams: per(noStreams.dataset, before.dataset),
    hashtableBuckets: enc.hashtable,
    buckets: enc.buckets,
    nodeCpuSeconds: +((node.user + node.system) / 1e6).toFixed(3),
    nodeSyncSeconds: +(sync / 1000).toFixed(3),
    redisCpuSeconds: +redisCpu.toFixed(3),
    evalshaCalls: calls,
    evalshaUsecPerCall: calls ? +(usec / calls).toFixed(2) : 0,
    evalshaSeconds: +(usec / 1e6).toFixed(3),
  };
}

/** The floor of the Node side: crypto.randomUUID alone, the CSPRNG source of every token. */
function uuidRate(n = 1_000_000): number {
  const t0 = performance.now();
  let x = 0;
  for (let i = 0; i < n; i++) x += randomUUID().length;
  if (x !== n * 36) throw new Error('unreachable');
  return Math.round(n / ((performance.now() - t0) / 1000));
}

/** a deployment's name in the output */
export const where = (masters: number) => (masters === 1 ? 'one redis-server' : `Redis Cluster, ${masters} masters`);

export function printEngine(r: EngineBenchResult, log: (line: string) => void = console.log): void {
  const mark = (ok: boolean) => (ok ? 'met' : 'NOT met');
  log(`\ncrypto.randomUUID alone: ${r.uuidsPerSec.toLocaleString('en')} /s; redis-server ${r.redisVersion}, private, no persistence`);
  log('deployment                        per user  in flight     tokens   seconds   tokens/s   B/token +streams  B/token state  dataset +streams/state   node cpu s (in calls)  redis cpu s  evalsha calls  usec/call  lua s');
  for (const s of r.scenarios) {
    for (const x of s.runs) {
      const best = x === s.best ? '*' : ' ';
      log(
        `${where(s.masters).padEnd(32)} ${String(s.perUser).padStart(8)} ${best}${String(x.concurrency).padStart(8)} ${String(x.tokens).padStart(10)} ${x.seconds.toFixed(2).padStart(9)} ${String(x.tokensPerSec).padStart(10)}` +
          ` ${x.bytesPerToken.toFixed(1).padStart(17)} ${x.bytesPerTokenNoStreams.toFixed(1).padStart(14)} ${`${x.datasetBytesPerToken.toFixed(1)} / ${x.datasetBytesPerTokenNoStreams.toFixed(1)}`.padStart(23)}` +
          ` ${`${x.nodeCpuSeconds.toFixed(2)} (${x.nodeSyncSeconds.toFixed(2)})`.padStart(22)} ${x.redisCpuSeconds.toFixed(2).padStart(12)} ${String(x.evalshaCalls).padStart(14)} ${x.evalshaUsecPerCall.toFixed(0).padStart(10)} ${x.evalshaSeconds.toFixed(2).padStart(6)}`,
      );
    }
  }
  for (const s of r.scenarios) {
    const b = s.best;
    const name = `${where(s.masters)}, ${s.perUser}/user`;
    if (b.hashtableBuckets) log(`${name}: ${b.hashtableBuckets} of ${b.buckets} buckets left listpack encoding`);
    const us = (seconds: number) => ((seconds / b.tokens) * 1e6).toFixed(1);
    const pct = (seconds: number) => `${Math.round((seconds / b.seconds) * 100)}%`;
    log(
      `${name}, where the time goes, per token: wall ${us(b.seconds)} us, Redis CPU ${us(b.redisCpuSeconds)} us, all masters (Lua in EVALSHA ${us(b.evalshaSeconds)} us), ` +
        `Node CPU ${us(b.nodeCpuSeconds)} us (${us(b.nodeSyncSeconds)} us inside the generate calls); busy: Redis ${pct(b.redisCpuSeconds)} (summed over masters), Node ${pct(b.nodeCpuSeconds)} of the wall time`,
    );
    log(
      `${name}, targets: ${b.tokensPerSec.toLocaleString('en')} tokens/s (>= ${TARGET_TOKENS_PER_SEC.toLocaleString('en')}: ${mark(b.tokensPerSec >= TARGET_TOKENS_PER_SEC)}), ` +
        `${b.bytesPerTokenNoStreams} B/token state (<= ${TARGET_BYTES_PER_TOKEN}: ${mark(b.bytesPerTokenNoStreams <= TARGET_BYTES_PER_TOKEN)}), ${b.bytesPerToken} B/token with untrimmed streams`,
    );
  }
}

/** A private redis-server (masters = 1) or Redis Cluster, and the product's client for it. */
async function deploy(masterCount: number, extraArgs: string[]): Promise<{ client: RedisClient; stop(): Promise<void> }> {
  if (masterCount === 1) {
    const server = await startRedis(extraArgs);
    const client = createRedis({ redisUrl: server.url, redisClusterNodes: [] });
    return { client, stop: async () => (client.disconnect(), await server.stop()) };
  }
  const cluster = await startCluster(masterCount, extraArgs);
  const client = createRedis({ redisUrl: '', redisClusterNodes: cluster.nodes });
  await readyMasters(client);
  return { client, stop: async () => (client.disconnect(), await cluster.stop()) };
}

export async function runEngineBench(opts: EngineBenchOptions = {}): Promise<EngineBenchResult> {
  const log = console.log;
  const total = opts.tokens ?? 1_000_000;
  const extraArgs = opts.listpackValue ? ['--hash-max-listpack-value', String(opts.listpackValue)] : [];
  const uuidsPerSec = uuidRate();
  const scenarios: EngineScenario[] = [];
  let redisVersion = '?';
  for (const m of opts.masters ?? [1]) {
    const target = await deploy(m, extraArgs);
    try {
      const engine = new TokenEngine(new TokenStore(target.client, 'bench-engine', NO_REPLICA_WAIT));
      redisVersion = (await info(masters(target.client)[0]!, 'server')).redis_version ?? '?';
      for (const perUser of opts.perUser ?? [3, 10]) {
        const reqs = requests(total, perUser, opts.userIdBytes);
        const runs: EngineRun[] = [];
        for (const c of opts.concurrency ?? [4]) {
          const r = await once(target.client, engine, reqs, c);
          log(`${where(m)}, ${perUser}/user, ${c} in flight: ${r.tokensPerSec} tokens/s, ${r.bytesPerTokenNoStreams} B/token state, ${r.bytesPerToken} B/token with streams`);
          runs.push(r);
        }
        const best = runs.reduce((a, b) => (b.tokensPerSec > a.tokensPerSec ? b : a));
        scenarios.push({ masters: m, perUser, best, runs });
      }
    } finally {
      await target.stop();
    }
  }
  return { redisVersion, uuidsPerSec, scenarios };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const result = await runEngineBench({
    tokens: numberFlag('tokens'),
    perUser: numbersFlag('per-user'),
    concurrency: numbersFlag('concurrency'),
    userIdBytes: numberFlag('user-bytes'),
    listpackValue: numberFlag('listpack-value'),
    masters: numbersFlag('masters'),
  });
  printEngine(result);
}
