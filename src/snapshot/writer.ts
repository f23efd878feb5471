import { hostname } from 'node:os';
import { setTimeout as sleepFor } from 'node:timers/promises';
import type pg from 'pg';
import type { Config } from '../config.js';
import { answerWithin, createRedis, logOutages, notConnectedText, redisErrorText, type OutageEffect, type RedisClient } from '../store/redis.js';
import { clusterMasters } from '../store/cluster-probe.js';
import { Keys, SHARDS } from '../store/keys.js';
import { Backoff } from './backoff.js';
import { Commits } from './commit.js';
import { Lane } from './lane.js';
import { Leadership } from './leadership.js';
import { reportLag } from './lag.js';
import { Lease } from '../store/lease.js';
import { snapshotMetrics } from './metrics.js';
import { CampaignCopy } from './campaigns.js';
import { RevocationCopy } from './revoked.js';
import { SatelliteCopy } from './satellites.js';
import { cutConnections, madeAnew, newerSchema, openPostgres, ping, postgresAt } from './postgres.js';
import { SCHEMA_VERSION } from './schema.js';
import { writeSnapshotStatus, type SnapshotStatus } from './status.js';
import { ShardStreams } from './streams.js';
import { newestCommitted } from './positions.js';
import { WentBackReport } from './went-back.js';
import { findLostShards } from './lost.js';
import { copiedElsewhere } from './gone-from-postgres.js';
import { PostgresHealth } from './postgres-health.js';
import { logTo, type Log, type LogKind } from '../log.js';

export type WriterConfig = Pick<Config, 'redisUrl' | 'redisClusterNodes' | 'redisSentinels' | 'redisSentinelName' | 'redisTlsCaFile' | 'keyPrefix' | 'databaseUrl' | 'snapshotBatch' | 'snapshotFlushMs' | 'snapshotTestCrashAfterCommit'>;

/** The writer's lines, and those serve and `referral-manager snapshot` say of it. */
export const SNAPSHOT_LOG: LogKind = { component: 'snapshot', text: (level, msg) => `[snapshot] ${level}: ${msg}` };

export interface WriterOptions {
  /** where its lines go instead of the log (a test's) */
  log?: Log;
  /** lease length; the holder renews every third of it */
  leaseMs?: number;
  /** a statement Postgres has not answered by then fails, and its connection is dropped (default 30 s) */
  queryTimeoutMs?: number;
}

export interface SnapshotWriter {
  stop(): Promise<void>;
  /** redis: whether the writer's own connection is up (it reconnects by itself) */
  status(): SnapshotStatus & { leader: boolean; redis: 'up' | 'down' };
  /** on a Redis Cluster, each master's state (`clusterMasters`): a lost one holds event streams the writer cannot read */
  clusterMasters(): ReturnType<typeof clusterMasters>;
  /**
   * undefined when the writer's Redis answers a PING within `ms`, else why not: a hung Redis keeps its connection
   * up; one not connected, at once (notConnectedText)
   */
  redisProbe(ms?: number): Promise<string | undefined>;
}

/**
 * Most stop() waits for the batches in hand before it drops their connections: a hung Postgres would hold
 * it for the query timeout (30 s), past a container's stop grace (10 s), and a SIGKILL then leaves the
 * lease to lapse. Postgres rolls a dropped transaction back; its entries stay pending for the next writer.
 */
const STOP_WAIT_MS = 5000;
/** All of stop(), whatever hangs: under a container's 10 s stop grace, with room for the rest of a shutdown. */
const STOP_GRACE_MS = 8000;
/** Each of the lease release and the `off` status: a Redis that answered the round answers these at once. */
const FAREWELL_MS = 500;
const LANES = 4;
/** How often a writer that is up checks Postgres when no batch did: how soon /readyz shows an idle writer's loss. */
const PG_PROBE_MS = 5000;
/**
 * The longest pause between polls of streams that stay quiet: each empty round doubles SNAPSHOT_FLUSH_MS up
 * to it. An idle writer polled every shard (a script each, 64) 20 times a second, ~15 ms/s of Redis CPU.
 */
const QUIET_POLL_MS = 500;
/** what a Redis outage means to the writer, said as it loses Redis */
const COPY_WAITS: OutageEffect = {
  all: 'nothing is copied to Postgres meanwhile',
  node: 'the event streams of its shards are not copied to Postgres until it or a replica answers',
};

/**
 * The asynchronous Postgres writer. Reads every shard stream with the `snapshot` consumer group,
 * applies each batch in one transaction, commits, then XACKs and trims below what is committed.
 * At-least-once delivery + order-safe idempotent upserts = each change lands exactly once.
 * Only the holder of the Redis lease writes; the others wait to take over.
 */
export async function startSnapshotWriter(config: WriterConfig, opts: WriterOptions = {}): Promise<SnapshotWriter> {
  const m = snapshotMetrics();
  const log = opts.log ?? logTo(SNAPSHOT_LOG);
  // the consumer's name in the group: one fixed name, so a restarted writer re-reads its own pending entries
  const consumer = 'writer';
  // commands time out (the longest is one XREADGROUP of a few thousand entries): a hung Redis must not hang stop()
  const redis: RedisClient = createRedis(config, { connectionName: 'referral-manager-snapshot', commandTimeoutMs: 10_000 });
  // said and counted once per outage: through a short one (a restart) the commands wait in ioredis' queue and
  // none fails, so it went unseen in the log and the metrics (an on-call drill)
  logOutages(redis, opts.log ?? logTo({ ...SNAPSHOT_LOG, component: 'redis', fields: { client: 'snapshot' } }), COPY_WAITS, () => m.errors.inc({ where: 'redis' }));
  const keys = new Keys(config.keyPrefix);
  // named by host and pid, so a writer that lost the lease can say to whom
  const lease = new Lease(redis, keys.snapshotLease(), opts.leaseMs ?? 10_000, `${hostname()} pid ${process.pid}`);
  const wentBack = new WentBackReport(log);
  const streams = new ShardStreams(redis, keys, consumer, Math.max(1, Math.ceil(config.snapshotBatch / 8)), {
    wentBack: (w) => wentBack.found(w),
    removedUnread(shard, n, group) {
      m.errors.inc({ where: 'lost' }, n);
      log('error', `shard ${shard}: ${n} event(s) after ${group} were removed from its stream before the writer read them (trimmed or deleted by hand: XTRIM, XDEL); those changes never reached Postgres. \`referral-manager verify\` lists their tokens, \`verify --repair-tokens\` copies them from Redis`, { shard, events: n });
    },
  });
  const satellites = new SatelliteCopy(redis, config.keyPrefix);
  const campaigns = new CampaignCopy(redis, config.keyPrefix);
  const revoked = new RevocationCopy(redis, config.keyPrefix);

  let running = true;
  // stop() cuts a backoff or standby wait short, so SIGTERM never waits seconds for it
  const stopping = new AbortController();
  const sleep = (ms: number) => sleepFor(ms, undefined, { signal: stopping.signal }).catch(() => undefined);
  const leadership = new Leadership(lease, log);
  const health = new PostgresHealth(log, postgresAt(config.databaseUrl), () => leadership.holds);
  const commits = new Commits(config.snapshotTestCrashAfterCommit);
  let pool: pg.Pool | undefined;
  /** the loop waits on openPostgres (connecting, or migrating behind another process' lock): nothing in hand */
  let opening = false;
  /** shards whose data Redis may have lost are looked for (findLostShards): on taking the lease (anew or again), and after a NOGROUP */
  let lookForLoss = true;
  /** the lost shards last said, so a loss is logged once, not at every lease taken */
  let saidLost = 0;
  /** the pool just opened made the snapshot's tables anew: the streams are looked at for changes copied elsewhere (copiedElsewhere) */
  let fresh = false;

  /** Pending ids whose entries are gone (trimmed by something else): acked, but never silently. */
  async function ackLost(empty: Map<number, string[]>): Promise<void> {
    const { acked, error } = await streams.ackLost(empty);
    if (acked > 0) {
      m.errors.inc({ where: 'lost' }, acked);
      log('error', `${acked} pending stream entries were trimmed before they reached Postgres; run \`referral-manager verify\``, { entries: acked });
    }
    if (error !== undefined) throw error;
  }

  const lanes = Array.from({ length: LANES }, (_, l) => new Lane(Array.from({ length: SHARDS / LANES }, (_, i) => i * LANES + l), {
    streams,
    keys,
    batchMax: config.snapshotBatch,
    commit: (batch) => health.run(() => commits.commit(pool!, batch)),
    ackLost,
    writing: () => running && leadership.holds,
    log,
  }));

  /** Drops what the lanes prefetched (it stays pending in Redis) and re-reads every shard's pending entries. */
  async function rereadPending(): Promise<void> {
    await Promise.all(lanes.map((l) => l.dropPrefetch()));
    streams.rereadAll();
  }

  const loop = (async () => {
    const backoff = new Backoff();
    // the pause after a round under SNAPSHOT_BATCH/8 events: doubled by each round that reads nothing
    let pause = config.snapshotFlushMs;
    let sweepAt = 0; // the next re-read of every pending entry
    let probeAt = 0; // the next reachability check of Postgres
    while (running) {
      try {
        // confirmed before every round, not only by the timer: a process paused past its lease must not
        // read new entries (they would sit in the group's pending list, unseen by the new holder)
        const { was, holds, anew } = await leadership.confirm();
        // also a lease that lapsed and was taken again: its key went with whatever else Redis lost
        if (anew) lookForLoss = true;
        if (!holds) {
          await sleep(await leadership.standbyMs());
          continue;
        }
        if (!was) {
          log('info', 'holding the snapshot lease; writing to Postgres');
          probeAt = 0;
        }
        // every pending entry is re-read on taking the lease and once a lease period after: the safety net
        // for a read that slipped through anyway (a pause between the renew and the read), whose entries
        // ackAndTrim never trims
        if (!was || Date.now() >= sweepAt) {
          await rereadPending();
          sweepAt = Date.now() + lease.ms;
        }
        if (!pool) {
          opening = true;
          try {
            // what the migrations do is said (one may run for long, or wait for another process'), and shown as
            // the state while it lasts; not once stopped
            const note = (msg: string, doing: string) => {
              if (!running) return;
              log('info', msg);
              health.migrates(doing);
            };
            pool = await health.run(() => openPostgres(config.databaseUrl, LANES, opts.queryTimeoutMs ?? 30_000, true, note));
          } finally {
            opening = false;
          }
          // stop() may have given up on this wait and released the lease: write nothing under it
          if (!running) break;
          fresh = madeAnew(pool);
          const newer = newerSchema(pool);
          if (newer !== undefined) log('warn', `the snapshot database is at schema version ${newer}, newer than this writer knows (${SCHEMA_VERSION}): a newer referral-manager migrated it. This writer copies what its version knows; run the newer version (restore and verify of this version refuse the database)`);
        }
        const db = pool;
        // also every PG_PROBE_MS while up: a writer with nothing to write would report a lost Postgres as up
        if (health.state !== 'up' || Date.now() >= probeAt) {
          await health.run(() => ping(db));
          probeAt = Date.now() + PG_PROBE_MS;
          health.reached();
        }
        void wentBack.count(db);
        await streams.ensureGroups();
        if (lookForLoss) {
          // before any new entry is read in this term: a Redis that went back before this process started is found too
          const newest = await health.run(() => newestCommitted(db, Array.from({ length: SHARDS }, (_, s) => s)));
          streams.knowCommitted(newest);
          const elsewhere = fresh ? await copiedElsewhere(redis, keys) : [];
          fresh = false;
          if (elsewhere.length) {
            // changes, as every other count of lost is: the entries removed after they were copied
            const changes = elsewhere.reduce((n, e) => n + e.removed, 0);
            m.errors.inc({ where: 'lost' }, changes);
            log('error', `Postgres lacks changes this writer copied before: ${changes} change(s) of ${elsewhere.length} shard(s) (${elsewhere.map((e) => e.shard).join(',')}) had stream entries removed after they were committed, and this database was made anew as this writer started (dropped, or DATABASE_URL names another one): it holds none of them (shard ${elsewhere[0]!.shard}: nothing before ${elsewhere[0]!.from}). Those changes are in no snapshot: \`referral-manager verify\` lists their tokens, \`verify --repair-tokens\` copies the tokens Redis still has; a restore --from-postgres before that would lose them`, { shards: elsewhere.map((e) => e.shard), changes });
          }
          const lost = await findLostShards(redis, db, config.keyPrefix, health.run);
          m.lostShards.set(lost.length);
          if (lost.length > saidLost) log('error', `Redis lost the tokens of ${lost.length} shard(s) that Postgres holds (${lost.join(',')}): they answer 404, and /readyz answers 503 until they are restored (runbook "Redis lost its data": referral-manager restore --from-postgres --force)`, { shards: lost });
          saidLost = lost.length;
          lookForLoss = false;
        }
        if (await satellites.due()) await health.run(() => satellites.write(db));
        if (await revoked.due()) await health.run(() => revoked.write(db));
        if (await campaigns.due()) await health.run(() => campaigns.write(db));
        const due = lanes.filter((l) => l.retryAt <= Date.now());
        const rounds = await Promise.allSettled(due.map((lane) => lane.round()));
        let n = 0;
        for (const [i, r] of rounds.entries()) {
          // anything but a refusal (Postgres or Redis out of reach) is every lane's: the loop backs off
          if (!due[i]!.settle(r)) throw (r as PromiseRejectedResult).reason;
          if (r.status === 'fulfilled') n += r.value;
        }
        if (leadership.holds && lanes.every((l) => l.backoff.ms === 0)) health.tookWrites();
        backoff.reset();
        if (n > 0) pause = config.snapshotFlushMs;
        if (n < streams.perShard) await sleep(pause);
        if (n === 0) pause = Math.min(pause * 2, Math.max(QUIET_POLL_MS, config.snapshotFlushMs));
      } catch (err) {
        // counted whatever Postgres' state: while it was down (or not yet reached) a Redis failure went unseen
        if (!health.counted(err)) {
          m.errors.inc({ where: 'redis' });
          log('warn', `redis: ${redisErrorText(err)}`, { code: (err as { code?: string }).code });
        }
        if (/NOGROUP/.test((err as Error).message)) {
          // the group was made at start: a stream deleted or evicted, or Redis lost its data. What it held
          // unread is gone without a trace in Postgres; counted as lost, so the alert on losses fires
          m.errors.inc({ where: 'lost' });
          log('error', `an event stream or its consumer group is gone (${(err as Error).message}); recreating them. Changes it held that had not reached Postgres, if any, are lost: run \`referral-manager verify\`; \`verify --repair-tokens\` copies the tokens Redis still has (if Redis lost its data, tokens answer 404 and satellites 401: follow the runbook "Redis lost its data")`);
          streams.lostGroups();
          lookForLoss = true;
        }
        await sleep(backoff.next());
      }
    }
    // here, not in stop(): a pool that opened after stop() gave up on the loop is ended too
    await pool?.end().catch(() => {});
  })();

  leadership.startRenewing();

  // the lag left out while unknown (before the first reading, Redis down or hung): a 0 kept from before read
  // as "all copied" on the standalone writer's /readyz through a whole Redis outage
  const status = (): SnapshotStatus => {
    const lag = lagReport.current();
    return { state: health.state, migration: health.migration, lagEvents: lag?.events, lagSeconds: lag?.seconds, at: Date.now() };
  };
  // every writer reports the lag (a standby too: it is the streams'); only the leader publishes the status
  const lagReport = reportLag(redis, config.keyPrefix, 1000, () => {
    if (leadership.holds) return writeSnapshotStatus(redis, config.keyPrefix, status()).catch(() => m.errors.inc({ where: 'status' }));
  });

  return {
    status: () => ({ ...status(), leader: leadership.holds, redis: redis.status === 'ready' ? 'up' : 'down' }),
    clusterMasters: () => clusterMasters(redis),
    // not connected, its PING would wait in the offline queue for the whole `ms` and say only that
    redisProbe: async (ms = 1000) => (redis.status === 'ready' ? answerWithin(redis.ping(), ms).then(() => undefined, (err: unknown) => redisErrorText(err)) : notConnectedText(redis)),
    async stop() {
      const until = Date.now() + STOP_GRACE_MS;
      /** Whether `p` settled within `ms` (at most what is left of the grace); the timer never holds the process. */
      const within = async (p: Promise<unknown>, ms = until - Date.now()): Promise<boolean> => {
        const timer = new AbortController();
        const settled = await Promise.race([p.then(() => true, () => true), sleepFor(Math.max(0, Math.min(ms, until - Date.now())), false, { signal: timer.signal }).catch(() => false)]);
        timer.abort();
        return settled;
      };
      running = false;
      stopping.abort();
      leadership.stopRenewing();
      // a round may start a prefetch until the loop ends: read the lanes then. A loop still opening Postgres
      // writes nothing more (it checks `running` once open) and has no prefetch
      const done = loop.then(() => Promise.all(lanes.map((l) => l.prefetch?.catch(() => {}))));
      const reading = lagReport.stop();
      // disconnect() ends the socket gracefully: to a hung Redis it stays open, and the status `ready`
      let cut = false;
      if (!opening && !(await within(loop, STOP_WAIT_MS))) {
        log('warn', `stopping: the round in hand still runs after ${STOP_WAIT_MS} ms; dropping its connections (what it was reading or writing stays pending)`);
        // a batch, a copy or the reachability check
        if (pool) cutConnections(pool);
        // still running and Redis silent: a Redis command waits on a Redis that is down or hung (up to its
        // 10 s timeout). A Redis that answers is left connected for the farewell below
        if (!(await within(loop, 1000))) {
          let pong = false;
          await within(redis.ping().then(() => (pong = true)), FAREWELL_MS);
          if (!pong) {
            redis.disconnect();
            cut = true;
          }
        }
      }
      // a hung Redis (SIGSTOP) still reads `ready` and answers nothing: a reading or a round waiting on it is
      // left to its command timeout, and the lease, unreleased, lapses by itself
      if (!cut && (await within(Promise.all([opening || done, reading]))) && redis.status === 'ready') {
        if (leadership.holds) await within(lease.release(), FAREWELL_MS);
        await within(writeSnapshotStatus(redis, config.keyPrefix, { state: 'off', at: Date.now() }), FAREWELL_MS);
      }
      // the loop ends the pool: wait for that while the grace lasts, not for a Postgres that is still opening
      await within(opening ? Promise.resolve() : loop);
      redis.disconnect();
    },
  };
}
