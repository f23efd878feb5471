import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { Client } from 'undici';
import { packr } from '../src/msgpack.js';
import { numberFlag } from './flags.js';
import { latencies, type Latencies } from './latency.js';
import { freePort, startRedis } from './redis-server.js';
import { serveArgs, startServer, stopServer } from './servers.js';

/**
 * One user's long token list (`GET /v1/users/:userId/tokens`, MessagePack) from `serve` with one worker, on a
 * private redis-server, while another connection sends lookups (`GET /v1/tokens/:token`) back to back to the
 * same worker: how long the list takes, and what the lookups wait meanwhile against a phase with no list
 * running. A list sorted or encoded in one go holds the worker's event loop, and every sign-up sent to it.
 *   node dist/bench/list.js [--tokens N]
 */
export interface ListBenchResult {
  tokens: number;
  lists: number;
  replyBytes: number;
  listMedianMs: number;
  listMaxMs: number;
  /** lookups with no list running */
  baseline: Latencies;
  /** lookups sent while a list call was in flight */
  duringLists: Latencies;
  /** the slowest lookup of each list call, median over the calls: the stall a list typically causes, one slow turn of a shared machine aside */
  worstPerListMedianMs: number;
}

const LISTS = 5;
const BASELINE_MS = 3000;
const PER_CALL = 10_000;

const median = (xs: number[]) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export async function run(opts: { tokens?: number } = {}): Promise<ListBenchResult> {
  const tokens = opts.tokens ?? 100_000;
  const log = console.log;
  const redis = await startRedis();
  const adminKey = randomBytes(24).toString('hex');
  const port = await freePort();
  let serve: Awaited<ReturnType<typeof startServer>> | undefined;
  const clients: Client[] = [];
  try {
    serve = await startServer(serveArgs(1).map((a) => (a === 'PORT' ? String(port) : a)), { REDIS_URL: redis.url, KEY_PREFIX: 'bench-list', SNAPSHOT: 'false', ADMIN_KEY: adminKey });
    const connect = () => {
      const c = new Client(`http://127.0.0.1:${port}`);
      clients.push(c);
      return c;
    };
    const [admin, lister, prober] = [connect(), connect(), connect()];
    const send = async (c: Client, method: 'GET' | 'POST', path: string, key: string, body?: unknown) => {
      const res = await c.request({ method, path, headers: { authorization: `Bearer ${key}`, accept: 'application/msgpack', 'content-type': 'application/msgpack' }, body: body === undefined ? undefined : packr.pack(body) });
      const raw = Buffer.from(await res.body.arrayBuffer());
      if (res.statusCode !== 200 && res.statusCode !== 201) throw new Error(`${method} ${path}: ${res.statusCode} ${raw.toString()}`);
      return raw;
    };
    const { apiKey } = packr.unpack(await send(admin, 'POST', '/v1/admin/satellites', adminKey, { id: 'bench-sat' })) as { apiKey: string };
    log(`generating ${tokens} tokens for one user, ${PER_CALL} per call ...`);
    let probe = '';
    for (let made = 0; made < tokens; made += PER_CALL) {
      const body = { satelliteId: 'bench-sat', userIds: ['whale'], perUser: Math.min(PER_CALL, tokens - made) };
      const r = packr.unpack(await send(admin, 'POST', '/v1/admin/tokens/generate', adminKey, body)) as { tokens: { token: string }[] };
      probe ||= r.tokens[0]!.token;
    }
    const list = async () => {
      const t0 = performance.now();
      const bytes = (await send(lister, 'GET', '/v1/users/whale/tokens', apiKey)).length;
      return { ms: performance.now() - t0, bytes };
    };
    /** lookups one after another until `until` settles; the latency of each */
    const lookupsDuring = async (until: Promise<unknown>) => {
      let done = false;
      void until.finally(() => (done = true));
      const ms: number[] = [];
      while (!done) {
        const t = performance.now();
        await send(prober, 'GET', `/v1/tokens/${probe}`, apiKey);
        ms.push(performance.now() - t);
      }
      return ms;
    };
    // warm-up: JIT, connections, the key known to the worker
    await lookupsDuring(list());
    log(`lookups alone for ${BASELINE_MS / 1000} s ...`);
    const baseline = latencies(await lookupsDuring(new Promise((r) => setTimeout(r, BASELINE_MS))));
    log(`${LISTS} lists of ${tokens} tokens, lookups meanwhile ...`);
    const during: number[] = [];
    const worst: number[] = [];
    const lists: { ms: number; bytes: number }[] = [];
    for (let i = 0; i < LISTS; i++) {
      const call = list();
      const ms = await lookupsDuring(call);
      during.push(...ms);
      worst.push(Math.max(...ms));
      lists.push(await call);
    }
    const times = lists.map((l) => l.ms);
    const result: ListBenchResult = {
      tokens,
      lists: LISTS,
      replyBytes: lists[0]!.bytes,
      listMedianMs: Math.round(median(times)),
      listMaxMs: Math.round(Math.max(...times)),
      baseline,
      duringLists: latencies(during),
      worstPerListMedianMs: +median(worst).toFixed(2),
    };
    log(`\nlist of ${tokens} tokens of one user (MessagePack, ${(result.replyBytes / 1e6).toFixed(1)} MB): median ${result.listMedianMs} ms, slowest ${result.listMaxMs} ms of ${LISTS}`);
    log('lookups on another connection     count   p50 ms   p99 ms   max ms');
    for (const [name, l] of [['no list running', baseline], ['while a list runs', result.duringLists]] as const) {
      log(`${name.padEnd(30)} ${String(l.count).padStart(8)} ${String(l.p50Ms).padStart(8)} ${String(l.p99Ms).padStart(8)} ${String(l.maxMs).padStart(8)}`);
    }
    log(`slowest lookup of each list call, median of ${LISTS}: ${result.worstPerListMedianMs} ms`);
    return result;
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    if (serve) await stopServer(serve);
    await redis.stop();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const result = await run({ tokens: numberFlag('tokens') });
  console.log(JSON.stringify(result, null, 2));
}
