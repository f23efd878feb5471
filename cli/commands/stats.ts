import type { Command } from 'commander';
import { SATELLITE_COUNTERS, type Stats } from '../../src/store/model.js';
import { Keys } from '../../src/store/keys.js';
import { Lease } from '../../src/store/lease.js';
import type { RedisClient } from '../../src/store/redis.js';
import { TokenStore } from '../../src/store/token-store.js';
import { lostShardsMessage, readLostShards, readSnapshotStatus, sampleLag } from '../../src/snapshot/index.js';
import { TokenEngine } from '../../src/tokens/engine.js';
import { configFrom, withRedis } from '../context.js';
import { table } from '../format.js';
import { NO_REPLICA_WAIT } from '../../src/store/replicas.js';
import { counted } from '../../src/plural.js';

/** Per owner satellite: its counters by state, and a total row when there is more than one. */
function satelliteTable(stats: Stats): string {
  const ids = Object.keys(stats.satellites).sort();
  const rows: (string | number)[][] = ids.map((id) => [id, ...SATELLITE_COUNTERS.map((s) => stats.satellites[id]![s])]);
  if (ids.length > 1) rows.push(['total', ...SATELLITE_COUNTERS.map((s) => ids.reduce((sum, id) => sum + stats.satellites[id]![s], 0))]);
  return table(['satellite', ...SATELLITE_COUNTERS], rows);
}

/** Redemptions with owner satellites as rows and redeemer satellites as columns. */
function matrixTable(stats: Stats): string {
  const owners = [...new Set(stats.redemptions.map((r) => r.ownerSatelliteId))].sort();
  const redeemers = [...new Set(stats.redemptions.map((r) => r.redeemerSatelliteId))].sort();
  const count = new Map(stats.redemptions.map((r) => [`${r.ownerSatelliteId}\t${r.redeemerSatelliteId}`, r.count]));
  const rows = owners.map((o) => [o, ...redeemers.map((r) => count.get(`${o}\t${r}`) ?? 0)]);
  return table(['owner \\ redeemer', ...redeemers], rows);
}

/** The snapshot writer as Redis sees it, for on-call: its state, who holds the lease, the lag. */
async function snapshotLine(redis: RedisClient, prefix: string): Promise<string> {
  const [status, holder, lag] = await Promise.all([
    readSnapshotStatus(redis, prefix),
    new Lease(redis, new Keys(prefix).snapshotLease()).holder(),
    sampleLag(redis, prefix),
  ]);
  // an older release's writer (a rolling upgrade) names no host in its lease
  const writer = holder === undefined ? 'no writer holds the lease' : `writer: ${holder || 'unnamed (an older release)'}`;
  const migration = status.migration === undefined ? '' : ` (${status.migration})`;
  return `snapshot: Postgres ${status.state}${migration}, ${writer}; ${counted(lag.events, 'event')} not yet in Postgres (oldest ${lag.seconds.toFixed(1)} s)`;
}

/** `stats`: the counters the scripts keep, per satellite and owner -> redeemer. */
export function register(program: Command): void {
  const stats = program
    .command('stats')
    .description('tokens per owner satellite by state, and redemptions owner satellite -> redeemer satellite')
    .option('--json', 'print the engine Stats object: {satellites: {<id>: {generated, ...}}, redemptions: [{ownerSatelliteId, redeemerSatelliteId, count}]}')
    .addHelpText(
      'after',
      '\nCounters follow the stored state: a reservation whose lease lapsed counts as reserved until serve gives the token back (LEASE_SWEEP_GRACE_MS after the lease ended) or it is touched again,\n' +
        'and a token past its expiresAt counts as unredeemed until `tokens purge` deletes it (`campaigns results` counts those apart, as expired).\n' +
        '\nExamples:\n  referral-manager stats\n  referral-manager stats --json --key-prefix staging',
    );
  stats.action(async function (this: Command, opts: { json?: boolean }) {
    const config = configFrom(this);
    const [s, snapshot, lost] = await withRedis(config, (redis) =>
      Promise.all([new TokenEngine(new TokenStore(redis, config.keyPrefix, NO_REPLICA_WAIT)).stats(), snapshotLine(redis, config.keyPrefix), readLostShards(redis, config.keyPrefix)]),
    );
    // the counts leave out what Redis lost: said on stderr, so that --json stays the Stats object
    if (lost.length) console.error(`warning: ${lostShardsMessage(lost)}; the counts leave their tokens out`);
    if (opts.json) {
      console.log(JSON.stringify(s, null, 2));
      return;
    }
    if (Object.keys(s.satellites).length === 0) console.log('no tokens yet');
    else {
      console.log(`tokens by owner satellite\n\n${satelliteTable(s)}\n`);
      console.log(s.redemptions.length === 0 ? 'no redemptions yet' : `redemptions (rows: owner satellite, columns: redeemer satellite)\n\n${matrixTable(s)}`);
    }
    console.log(`\n${snapshot}`);
  });
}
