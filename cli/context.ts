import type { Command } from 'commander';
import { quote } from 'shell-quote';
import { ConfigError, isGiven, loadConfig, type Config } from '../src/config.js';
import { Cluster, type Command as RedisCommand, type Redis } from 'ioredis';
import { createRedis, whenReady, whyNotConnected, type RedisClient } from '../src/store/redis.js';
import type pg from 'pg';
import { openPostgres, postgresAt, sampleLag, type Lag } from '../src/snapshot/index.js';
import { counted } from '../src/plural.js';

/** How long a command waits for Redis before it gives up with one error line. */
const CONNECT_WAIT_MS = 10_000;

/** Seeds as a suggested command shows them: each one's password hidden (hideSeedPasswords). */
const seedsShown = (list: string) => hideSeedPasswords(list.split(',')).join(',');

/**
 * The global flags shared by every command, each overriding the setting `key` names (commander's name for its
 * value too); `shown`: the value as a command the CLI suggests prints it, a password hidden.
 */
const GLOBAL_OPTIONS: { flag: string; key: keyof Config; help: string; shown?: (value: string) => string }[] = [
  { flag: '--redis-url <url>', key: 'redisUrl', help: 'Redis URL (env REDIS_URL)', shown: hidePassword },
  { flag: '--redis-cluster-nodes <list>', key: 'redisClusterNodes', help: 'Redis Cluster seeds host:port,... (env REDIS_CLUSTER_NODES)', shown: seedsShown },
  { flag: '--redis-sentinels <list>', key: 'redisSentinels', help: 'Redis Sentinels host:port,... (env REDIS_SENTINELS)', shown: seedsShown },
  { flag: '--redis-sentinel-name <name>', key: 'redisSentinelName', help: 'master name the sentinels monitor (env REDIS_SENTINEL_NAME)' },
  // the TLS files go with the Redis named: another Redis given by flag has its own CA and client certificate
  { flag: '--redis-tls-ca-file <file>', key: 'redisTlsCaFile', help: 'PEM CA certificate(s) Redis\'s TLS certificate is checked against (env REDIS_TLS_CA_FILE)' },
  { flag: '--redis-tls-cert-file <file>', key: 'redisTlsCertFile', help: 'PEM client certificate sent to Redis over TLS (env REDIS_TLS_CERT_FILE)' },
  { flag: '--redis-tls-key-file <file>', key: 'redisTlsKeyFile', help: 'PEM private key of that certificate (env REDIS_TLS_KEY_FILE)' },
  { flag: '--key-prefix <prefix>', key: 'keyPrefix', help: 'Redis key prefix (env KEY_PREFIX)' },
  { flag: '--database-url <url>', key: 'databaseUrl', help: 'Postgres URL (env DATABASE_URL)', shown: hidePassword },
];

/** Global flags shared by every command; each overrides its env setting. */
export function addGlobalOptions(program: Command): Command {
  for (const o of GLOBAL_OPTIONS) program.option(o.flag, o.help);
  return program;
}

/**
 * The global flags given, as shell words to put in a command the CLI suggests (`generate --resume ...`):
 * run as printed, it must reach the same Redis and prefix, not the default deployment's. A password in
 * a URL is shown as `<password>`: the hint lands in cron logs.
 */
export function globalFlags(cmd: Command): string {
  const g = cmd.optsWithGlobals() as Record<string, string | undefined>;
  // an empty flag is not given (flagOverrides): the hint leaves it out
  return GLOBAL_OPTIONS.filter((o) => isGiven(g[o.key]))
    .map((o) => ` ${o.flag.split(' ')[0]} ${quote([o.shown ? o.shown(g[o.key]!) : g[o.key]!])}`)
    .join('');
}

/**
 * The URL with its password shown as `shown`: the user-info one, also without a user (redis://:secret@host,
 * Redis's usual form), and a `password` query parameter, which ioredis reads as well.
 */
export function hidePassword(url: string, shown = '<password>'): string {
  try {
    const u = new URL(url);
    if (!u.password && !u.searchParams.has('password')) return url;
    // placeholders: URL would percent-encode the < and > of the default
    if (u.password) u.password = 'PASSWORD';
    if (u.searchParams.has('password')) u.searchParams.set('password', 'PASSWORD');
    return u.toString().replace(':PASSWORD@', `:${shown}@`).replace('password=PASSWORD', `password=${shown}`);
  } catch {
    return url;
  }
}

/** REDIS_CLUSTER_NODES' or REDIS_SENTINELS' seeds, each one's password shown as `shown` (hidePassword): every seed carries it. */
export const hideSeedPasswords = (nodes: string[], shown?: string): string[] => nodes.map((n) => hidePassword(n.trim(), shown));

/** The settings given as flags: the global ones, then any command flags given in `extra` (undefined or empty: not given). */
export function flagOverrides(cmd: Command, extra: Partial<Record<keyof Config, unknown>> = {}): Partial<Record<keyof Config, unknown>> {
  const g = cmd.optsWithGlobals() as Record<string, string | undefined>;
  const overrides: Partial<Record<keyof Config, unknown>> = { ...extra };
  for (const { key } of GLOBAL_OPTIONS) if (g[key] !== undefined) overrides[key] = g[key];
  for (const k of Object.keys(overrides) as (keyof Config)[]) if (!isGiven(overrides[k])) delete overrides[k];
  return overrides;
}

/**
 * The validated config: env first, then the flags (flagOverrides). A refused flag is named as typed:
 * `--<kebab-case setting>` unless `flagNames` says otherwise (snapshot's `--metrics-port`).
 */
export function configFrom(cmd: Command, extra: Partial<Record<keyof Config, unknown>> = {}, flagNames: Partial<Record<keyof Config, string>> = {}): Config {
  const overrides = flagOverrides(cmd, extra);
  const given: Partial<Record<keyof Config, string>> = {};
  for (const k of Object.keys(overrides) as (keyof Config)[]) given[k] = flagNames[k] ?? `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
  try {
    return loadConfig(overrides, process.env, given);
  } catch (err) {
    // a refused flag value (serve --port abc) is a usage error: exit 2 with the usage line, like commander's
    // own, said as one when only flags were refused (not as the environment's configuration); a bad env
    // value alone stays a configuration error (main.ts: the message, exit 2)
    if (err instanceof ConfigError && err.failed.some((k) => k in overrides)) {
      cmd.error(err.failed.every((k) => k in overrides) ? `error: ${err.problems.join('; ')}` : err.message);
    }
    throw err;
  }
}

/**
 * The command's Redis connection, once it answers. Without this, Redis down printed ioredis's
 * "Unhandled error event" stack trace on every reconnect, and a Cluster client queued the command
 * forever (it reconnects without limit): now one `error: cannot reach Redis` line within 10 s.
 */
export async function connectRedis(config: Config, waitMs = CONNECT_WAIT_MS): Promise<RedisClient> {
  const redis = createRedis(config);
  const where = redisWhere(config);
  // reconnects by itself (its errors kept by createRedis); a failure mid-command surfaces as that command's error
  try {
    await whenReady(redis, waitMs);
  } catch {
    const why = whyNotConnected(redis) ?? 'no answer';
    redis.disconnect();
    throw new Error(`cannot reach Redis (${where}) within ${waitMs / 1000} s: ${why}`);
  }
  giveUpWhenStuck(redis, where);
  return redis;
}

/** The Redis the config reaches, as an error line names it: passwords shown as `<password>`. */
function redisWhere(config: Config): string {
  if (config.redisClusterNodes.length > 0) return `cluster ${hideSeedPasswords(config.redisClusterNodes).join(',')}`;
  // REDIS_URL's host is not used then; its credentials are the master's
  if (config.redisSentinels.length > 0) return `master "${config.redisSentinelName}" of sentinels ${hideSeedPasswords(config.redisSentinels).join(',')}`;
  return hidePassword(config.redisUrl);
}

/** Runs `fn` on the command's Redis (connectRedis), and always disconnects so the process can exit. */
export async function withRedis<T>(config: Config, fn: (redis: RedisClient) => Promise<T>): Promise<T> {
  const redis = await connectRedis(config);
  try {
    return await fn(redis);
  } finally {
    redis.disconnect();
  }
}

/**
 * Once Redis has been lost for 10 s (a restart takes less), or left a command unanswered for 10 s (a
 * hung server, SIGSTOP: the connection stays open), a command gives up: one error line, what waits
 * fails within its own 10 s and what follows fails at once. Before, a failed generate's clean-up (undo,
 * status, releasing its claims) retried each command for tens of seconds, and on a hung Redis, or a
 * Cluster with every master gone (its commands wait in the client's offline queue), it never ended.
 * The wait is armed on each command where the client takes it, so it counts wherever the command
 * waits: offline queue, a node's queue, or a socket no one reads.
 */
function giveUpWhenStuck(redis: RedisClient, where: string): void {
  let gaveUp: Error | undefined;
  // whichever comes first, the lost timer or a command's wait: a hung server stays 'ready'
  const giveUp = () => {
    if (gaveUp) return;
    const why = redis.status === 'ready' ? `Redis (${where}) did not answer within ${CONNECT_WAIT_MS / 1000} s` : `lost Redis (${where}) for ${CONNECT_WAIT_MS / 1000} s: ${whyNotConnected(redis) ?? 'no answer'}`;
    gaveUp = new Error(`${why}; gave up`);
    console.error(`error: ${why}; giving up`);
  };
  const arm = (client: RedisClient) => {
    const send = client.sendCommand.bind(client) as (command: RedisCommand, ...rest: unknown[]) => unknown;
    client.sendCommand = (command: RedisCommand, ...rest: unknown[]) => {
      if (gaveUp) {
        command.reject(gaveUp);
        return command.promise;
      }
      // a command the Cluster passes on to a node arrives here twice: the timer is set once
      command.setTimeout(CONNECT_WAIT_MS);
      command.promise.catch((err: Error) => {
        if (err.message === 'Command timed out') giveUp();
      });
      return send(command, ...rest);
    };
  };
  arm(redis);
  // what goes to one master's own connection (SCAN of export and restore, SCRIPT of generate, CLUSTER NODES)
  // passes no Cluster: on a hung master it waited for ever. ioredis reads the slot map on connections of its own.
  if (redis instanceof Cluster) {
    for (const node of redis.nodes('all')) arm(node);
    redis.on('+node', (node: Redis) => arm(node));
  }
  let lost: NodeJS.Timeout | undefined;
  // 'reconnecting', not 'close': the command's own disconnect at its end closes too
  redis.on('reconnecting', () => {
    lost ??= setTimeout(giveUp, CONNECT_WAIT_MS).unref();
  });
  redis.on('ready', () => {
    clearTimeout(lost);
    lost = undefined;
  });
}

/**
 * The snapshot as the commands that read it open it (restore, verify, campaigns results): an existing
 * database only. Made on the spot from a mistyped DATABASE_URL, it would restore 0 tokens (after --force
 * removed every one) or list every token. What its migrations do goes to stderr: a command waiting behind
 * another process' long migration says so rather than hanging without a word. A failure, opening it or
 * reading it later, names Postgres and where (host:port/database, postgresAt), the driver's reason after:
 * "connect ECONNREFUSED 127.0.0.1:5433" or "Connection terminated unexpectedly" alone could as well be
 * Redis's, and a missing sslrootcert read as any missing file.
 */
export async function openSnapshot(url: string, connections = 2): Promise<pg.Pool> {
  const where = postgresAt(url);
  const pool = await openPostgres(url, connections, SNAPSHOT_QUERY_TIMEOUT_MS, false, (msg) => console.error(`note: ${msg}`)).catch((err: unknown) => {
    throw saying(err, `cannot open the Postgres snapshot (${where})`);
  });
  // a query failing later (Postgres restarted or lost mid-verify); the snapshot's readers use the promise form only
  const query = pool.query.bind(pool) as (...args: unknown[]) => Promise<unknown>;
  pool.query = ((...args: unknown[]) =>
    query(...args).catch((err: unknown) => {
      throw saying(err, `reading the Postgres snapshot (${where}) failed`);
    })) as typeof pool.query;
  return pool;
}

/**
 * How long a command reading the snapshot waits for one query's answer. Without it a Postgres that stopped
 * answering without closing the connection (a partition, a stopped postmaster, a silent proxy) held verify
 * for ever: TCP keepalive waits the system's 2 h, and does not see a stopped process at all. Measured on
 * 3,996,000 tokens (5.6M events, tokens 520 MB): the longest single query of restore, verify, campaigns
 * results and tokens history took 0.7 s (the results of a campaign with a third of the tokens; a page of a
 * shard 0.4 s with four lanes reading; reading the whole table 0.6 s, cached). 60 s leaves room for that table
 * read from a cold, slow disk (520 MB at 30 MB/s: 17 s) three times over; Postgres cancels the query itself at
 * 48 s (openPostgres' statement timeout), saying so.
 */
const SNAPSHOT_QUERY_TIMEOUT_MS = 60_000;

/** errors `saying` prefixed already: one error can fail several queries (those queued on a connection that ended) */
const said = new WeakSet<Error>();
/** `err` with `what` before its message, the error itself kept (its SQLSTATE, which callers may read). */
function saying(err: unknown, what: string): unknown {
  if (err instanceof Error && !said.has(err)) {
    // pg's words for its query timeout, which alone do not say how long nor that Postgres went silent
    const reason = err.message === 'Query read timeout' ? `no answer within ${SNAPSHOT_QUERY_TIMEOUT_MS / 1000} s (query timeout): Postgres stopped answering, or the network to it did` : err.message;
    err.message = `${what}: ${reason}`;
    said.add(err);
  }
  return err;
}

/** How long a command answering from the snapshot waits for Redis, which only tells it how far behind the snapshot is. */
const LAG_WAIT_MS = 3_000;

/**
 * For a command answering from the snapshot (campaigns results, tokens history): `fn` gets the pool and how
 * far the snapshot is behind Redis, which the command says so its numbers are read right; undefined, with a
 * note on stderr, when Redis is out of reach: the snapshot answers without it (a Redis outage is when it is
 * asked). Closes both.
 */
export async function fromSnapshot<T>(config: Config, fn: (pool: pg.Pool, lag: Lag | undefined) => Promise<T>): Promise<T> {
  const pool = await openSnapshot(config.databaseUrl, 1);
  try {
    return await fn(pool, await snapshotLag(config));
  } finally {
    await pool.end();
  }
}

async function snapshotLag(config: Config): Promise<Lag | undefined> {
  let redis: RedisClient | undefined;
  try {
    redis = await connectRedis(config, LAG_WAIT_MS);
    return await sampleLag(redis, config.keyPrefix);
  } catch (err) {
    console.error(`note: ${(err as Error).message}; answering from the Postgres snapshot alone: how far the snapshot is behind Redis is unknown`);
    return undefined;
  } finally {
    redis?.disconnect();
  }
}

/** How far the snapshot is behind Redis, as the commands answering from it say it. */
export const lagText = (lag: Lag | undefined): string =>
  lag === undefined ? 'Redis out of reach: how far it is behind Redis is unknown' : `${counted(lag.events, 'change')}, ${lag.seconds.toFixed(1)} s behind Redis`;
