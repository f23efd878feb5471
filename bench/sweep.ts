import { pathToFileURL } from 'node:url';
import { createRedis } from '../src/store/redis.js';
import { TokenStore } from '../src/store/token-store.js';
import { TokenEngine } from '../src/tokens/engine.js';
import { startRedis } from './redis-server.js';
import { numberFlag } from './flags.js';
import { latencies } from './latency.js';
import { NO_REPLICA_WAIT } from '../src/store/replicas.js';

/**
 * Revoke sweeps (lua/revoke_sweep.lua) on a private redis-server holding `tokens` tokens of one satellite:
 * a campaign revoke that finds little (the cost of reading every bucket) and a revoke of every token of the
 * satellite's users. A sweep runs while satellites keep redeeming, so beside its time it reports the longest
 * single script (SLOWLOG) and the latency of redeems sent one after another during it, from another
 * connection: what a satellite notices.
 *   node dist/bench/sweep.js [--tokens N]
 */
export interface SweepRun {
  revoked: number;
  seconds: number;
  /** the longest single revoke_sweep call, from SLOWLOG */
  longestScriptMs: number;
  redeems: number;
  redeemP99Ms: number;
  redeemMaxMs: number;
}

export interface SweepBenchResult {
  tokens: number;
  campaign: SweepRun;
  satellite: SweepRun;
}

const PER_USER = 5;
const PROBES = 100_000;

export async function run(opts: { tokens?: number } = {}): Promise<SweepBenchResult> {
  const tokens = opts.tokens ?? 1_000_000;
  const log = console.log;
  const server = await startRedis();
  const redis = createRedis({ redisUrl: server.url, redisClusterNodes: [] });
  const probe = createRedis({ redisUrl: server.url, redisClusterNodes: [] });
  try {
    const engine = new TokenEngine(new TokenStore(redis, 'sweep', NO_REPLICA_WAIT));
    const prober = new TokenEngine(new TokenStore(probe, 'sweep', NO_REPLICA_WAIT));
    for (let made = 0; made < tokens; made += 10_000) {
      const owners = Array.from({ length: 10_000 / PER_USER }, (_, i) => ({ ownerSatelliteId: 'sat-big', ownerUserId: `u${made + i}` }));
      await engine.generate({ owners, perUser: PER_USER, campaignId: 'big' });
    }
    // a small campaign with tokens on every shard, and tokens of another satellite for the redeems
    const small = Array.from({ length: 2_000 }, (_, i) => ({ ownerSatelliteId: 'sat-small', ownerUserId: `s${i}` }));
    await engine.generate({ owners: small, perUser: 1, campaignId: 'small' });
    const probes: string[] = [];
    while (probes.length < PROBES) {
      const owners = Array.from({ length: 10_000 }, (_, i) => ({ ownerSatelliteId: 'sat-other', ownerUserId: `p${probes.length + i}` }));
      probes.push(...(await engine.generate({ owners, perUser: 1, campaignId: 'probes' })).tokens.map((t) => t.token));
    }
    await redis.config('SET', 'slowlog-log-slower-than', '0');
    await redis.config('SET', 'slowlog-max-len', '100000');
    let next = 0;
    const measure = async (sweep: () => Promise<number>): Promise<SweepRun> => {
      await redis.slowlog('RESET');
      let done = false;
      const times: number[] = [];
      const probing = (async () => {
        while (!done && next < probes.length) {
          const t = performance.now();
          await prober.redeem(probes[next++]!, 'sat-probe', 'u');
          times.push(performance.now() - t);
        }
      })();
      const t0 = performance.now();
      const revoked = await sweep();
      const seconds = (performance.now() - t0) / 1000;
      done = true;
      await probing;
      const log = (await redis.slowlog('GET', 100_000)) as [number, number, number, string[]][];
      const longest = Math.max(0, ...log.filter((e) => e[3][0]?.toLowerCase() === 'evalsha').map((e) => e[2]));
      const redeems = latencies(times);
      return { revoked, seconds, longestScriptMs: longest / 1000, redeems: redeems.count, redeemP99Ms: redeems.p99Ms, redeemMaxMs: redeems.maxMs };
    };
    const show = (what: string, r: SweepRun) =>
      log(`${what}: ${r.revoked} revoked in ${r.seconds.toFixed(2)} s; longest script ${r.longestScriptMs.toFixed(1)} ms; ` +
        `${r.redeems} redeems meanwhile, p99 ${r.redeemP99Ms} ms, max ${r.redeemMaxMs} ms`);
    const campaign = await measure(() => engine.revokeCampaign('small'));
    show(`campaign revoke over ${tokens} tokens`, campaign);
    const satellite = await measure(() => engine.revokeSatellite('sat-big'));
    show(`satellite revoke of ${tokens} tokens`, satellite);
    return { tokens, campaign, satellite };
  } finally {
    redis.disconnect();
    probe.disconnect();
    await server.stop();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const result = await run({ tokens: numberFlag('tokens') });
  console.log(JSON.stringify(result, null, 2));
}
