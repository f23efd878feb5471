import { readFileSync } from 'node:fs';
import { isIP, type Socket } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import { Redis, Cluster } from 'ioredis';
import { parseSeed, usesTls, type Config } from '../config.js';
import type { LogFields } from '../log.js';

export type RedisClient = Redis | Cluster;

export interface RedisOptions {
  /** Fail fast while Redis is down (the HTTP layer answers 503) instead of queueing without bound. */
  failFast?: boolean;
  connectionName?: string;
  /** a command unanswered by then fails: for background loops, so a Redis that hangs cannot hang their stop */
  commandTimeoutMs?: number;
}

/** What createRedis reads of the config: every Redis connection (serve, its workers, the writer, the CLI) takes them alike. */
export type RedisConfig = Pick<Config, 'redisUrl' | 'redisClusterNodes'> & Partial<Pick<Config, 'redisTlsCaFile' | 'redisTlsCertFile' | 'redisTlsKeyFile' | 'redisSentinels' | 'redisSentinelName'>>;

/**
 * TLS options when `on`, with the private CA's certificates in place of the system's and the client certificate
 * a Redis with `tls-auth-clients yes` asks for; read as the client is made, its reconnects reuse them. ioredis
 * turns TLS on for a rediss:// URL by itself, but with the system's CAs only, and a Cluster takes no URL at all.
 */
function tlsOf(config: RedisConfig, on: boolean): ConnectionOptions | undefined {
  if (!on) return undefined;
  return {
    ...(config.redisTlsCaFile ? { ca: readFileSync(config.redisTlsCaFile, 'utf8') } : {}),
    // both or neither (config.ts)
    ...(config.redisTlsCertFile && config.redisTlsKeyFile ? { cert: readFileSync(config.redisTlsCertFile, 'utf8'), key: readFileSync(config.redisTlsKeyFile, 'utf8') } : {}),
  };
}

/**
 * How long a sentinel may take to name the master. ioredis sets no timeout on that question by default: a hung
 * sentinel (SIGSTOP, its connection accepted by the kernel) would hold the connect, the next sentinel never asked.
 */
const SENTINEL_ANSWER_MS = 2000;

/** One factory for standalone, Sentinel and cluster connections, from the shared config. */
export function createRedis(config: RedisConfig, opts: RedisOptions = {}): RedisClient {
  const sentinels = config.redisSentinels ?? [];
  // with Sentinel, REDIS_URL's rediss:// is the master's TLS, the seeds' the sentinels' (config.ts)
  const tls = tlsOf(config, sentinels.length > 0 ? /^rediss:/i.test(config.redisUrl) : usesTls(config));
  const common = {
    tls,
    connectionName: opts.connectionName ?? 'referral-manager',
    enableOfflineQueue: !opts.failFast,
    maxRetriesPerRequest: opts.failFast ? 1 : 20,
    // reconnect forever with capped backoff: a Redis restart must heal without restarting us
    retryStrategy: (times: number) => Math.min(50 * times, 2000),
    commandTimeout: opts.commandTimeoutMs,
  };
  if (config.redisClusterNodes.length > 0) {
    const seeds = config.redisClusterNodes.map(parseSeed);
    // every seed carries the same ones (config): given to every node, those the slot map names too
    const { username, password } = seeds[0]!;
    const cluster = new Cluster(
      seeds.map(({ host, port }) => ({ host, port })),
      {
        redisOptions: { ...common, ...(password ? { username: username || undefined, password } : {}) },
        // ioredis connects to a seed by the address it resolves its name to, and TLS checks the certificate
        // against that address: a certificate naming the host (a managed Redis's) was refused. Kept as named, the
        // certificate is checked against the name; the nodes the slot map lists are named as Redis announces them
        ...(tls ? { dnsLookup: (address: string, callback: (err: null, address: string) => void) => callback(null, address) } : {}),
        enableOfflineQueue: common.enableOfflineQueue,
        clusterRetryStrategy: common.retryStrategy,
        scaleReads: 'master',
        // ioredis re-reads the slot map only on a MOVED or a lost connection. A master that hangs gives
        // neither, so its replica's takeover went unseen (503 for its slots until it woke), and a master
        // removed from the cluster (del-node) stayed named for the slots nobody asked for
        slotsRefreshInterval: SLOTS_REFRESH_MS,
        // a command for a lost master is retried as a redirection: ioredis' 16 x 100 ms gave a CLI run 1.6 s,
        // less than any failover; ~10 s rides out what the CLI promises (the HTTP layer answers 503 first)
        ...(opts.failFast ? {} : { maxRedirections: 100, retryDelayOnFailover: 100, retryDelayOnClusterDown: 100, retryDelayOnTryAgain: 100 }),
      },
    );
    cluster.on('+node', (node: Redis) => catchAsking(coalesceWrites(reportSlotMapErrors(cluster, markResets(node)))));
    return rememberFailure(boundReadyCheck(cluster));
  }
  if (sentinels.length > 0) {
    const seeds = sentinels.map(parseSeed);
    // every seed carries the same ones (config): the sentinels' own, not the master's (REDIS_URL's)
    const { username, password } = seeds[0]!;
    // ioredis asks a sentinel for the master at each (re)connect and checks the role it finds there (a master
    // demoted meanwhile is left for the next sentinel's answer). A master that dies drops its clients; one a
    // manual failover (SENTINEL FAILOVER) replaces stays up, a master still, until Sentinel demotes it some
    // seconds later (REPLICAOF, dropping its clients): a connection left to it meanwhile had its changes
    // acknowledged there and then lost. failoverDetector subscribes to each sentinel's +switch-master and
    // reconnects as soon as one announces the new master; a command a demoted master refuses (READONLY: a
    // REPLICAOF by hand, a sentinel's message missed) reconnects too (sentinelReadOnly)
    const sentinel = {
      sentinels: seeds.map(({ host, port }) => ({ host, port })),
      name: config.redisSentinelName,
      ...(password ? { sentinelUsername: username || undefined, sentinelPassword: password } : {}),
      sentinelTLS: tlsOf(config, seeds[0]!.tls),
      enableTLSForSentinelMode: tls !== undefined,
      sentinelCommandTimeout: SENTINEL_ANSWER_MS,
      failoverDetector: true,
      reconnectOnError: sentinelReadOnly,
      // connected below, once reportSentinelErrors hooks the first sentinel asked too
      lazyConnect: true,
    };
    const client = rememberFailure(coalesceWrites(reportSentinelErrors(markResets(new Redis(config.redisUrl, { ...common, ...sentinel })))));
    client.connect().catch(() => undefined);
    return client;
  }
  return rememberFailure(coalesceWrites(markResets(new Redis(config.redisUrl, common))));
}

/**
 * Errors of TLS connections Redis reset after the handshake, before it answered anything. A Redis with
 * `tls-auth-clients yes` checks the client certificate (missing, or not of its CA) only once the TLS 1.3
 * handshake is over, and its alert saying why was lost about half the time in the reset of a connection the
 * client was already writing to: "write ECONNRESET", said with a hint of its own (certificateHint).
 */
const resetAfterHandshake = new WeakSet<Error>();
const RESETS = new Set(['ECONNRESET', 'EPIPE']);

/**
 * Marks `connection`'s resets after the TLS handshake, before Redis answered anything (resetAfterHandshake),
 * ahead of any other listener. Not by its status: the connections ioredis makes without a ready check (a
 * Cluster's, the sentinels') are 'ready' at once.
 */
function markResets<T extends Redis>(connection: T): T {
  if (!connection.options.tls) return connection;
  let connected = false;
  let answered = false;
  connection.on('connect', () => {
    connected = true;
    answered = false;
    connection.stream?.once('data', () => (answered = true));
  });
  connection.on('close', () => (connected = false));
  connection.prependListener('error', (err: Error) => {
    if (connected && !answered && RESETS.has((err as NodeJS.ErrnoException).code ?? '')) resetAfterHandshake.add(err);
  });
  return connection;
}

/** `err`, marked as `cause` is (resetAfterHandshake): for an error that says what `cause` did. */
function resetAlike(cause: Error | undefined, err: Error): Error {
  if (cause && resetAfterHandshake.has(cause)) resetAfterHandshake.add(err);
  return err;
}

/**
 * ioredis' reconnectOnError for a Sentinel client: a master demoted to a replica refuses writes (READONLY) on the
 * connections left to it, until something drops them; reconnecting asks the sentinels for the master anew. A
 * script it refused wrote nothing (a replica refuses every write of a script), so it is sent again once connected
 * (2); any other command is failed (1, answered 503): one queued in a MULTI, sent again alone, would run outside it.
 */
function sentinelReadOnly(err: Error): 1 | 2 | false {
  if (!/^READONLY /.test(err.message)) return false;
  const name = (err as { command?: { name?: string } }).command?.name;
  return name === 'evalsha' || name === 'eval' ? 2 : 1;
}

/** each client's last failure to connect, until it is ready again (whyNotConnected) */
const failures = new WeakMap<RedisClient, Error>();
/** a Cluster client's last node error that says more than "Connection is closed.", until it is ready again */
const nodeFailures = new WeakMap<RedisClient, Error>();
const CLOSED = 'Connection is closed.';
/**
 * What ioredis says of a connection lost, which says nothing of why: its ready check fails with "Stream isn't
 * writeable" once Redis closed a connection it had taken (a TLS client certificate refused after the handshake)
 */
const saysOnlyLost = (err: Error): boolean => err.message === CLOSED || /^Stream isn't writeable/.test(err.message);

/**
 * Keeps why the client last failed to connect (whyNotConnected): a command refused meanwhile says only that
 * there is no connection ("Stream isn't writeable ..."), not why (a certificate refused, a wrong password).
 */
function rememberFailure<T extends RedisClient>(client: T): T {
  client.on('node error', (err: Error) => {
    if (!saysOnlyLost(err)) nodeFailures.set(client, err);
  });
  client.on('sentinelError', (err: Error) => {
    const said = sentinelFailures.get(client) ?? new Map<string, Error>();
    sentinelFailures.set(client, said.set(...sentinelSaid(err.message, client)));
  });
  client.on('error', (err: Error) => {
    // the reason said before stays (the reset that made the ready check fail)
    if (!saysOnlyLost(err) || !failures.has(client)) failures.set(client, failureOf(client, err));
  });
  client.on('ready', () => {
    failures.delete(client);
    nodeFailures.delete(client);
    sentinelFailures.delete(client);
  });
  return client;
}

/** a Sentinel client's last failure to get the master from each sentinel, by its address, until it is ready again */
const sentinelFailures = new WeakMap<RedisClient, Map<string, Error>>();
/** the last error of a Sentinel client's connection to each sentinel, by its address (reportSentinelErrors) */
const sentinelCauses = new WeakMap<RedisClient, Map<string, Error>>();
/** ioredis' 'error' once no sentinel named the master: "All sentinels are unreachable. Retrying ...", also when every one answered */
const ALL_SENTINELS = /^All sentinels are unreachable/;

/**
 * One sentinel's failure to name the master, by its address, as an operator reads it. A sentinel that knows no
 * master of that name refuses it (Redis 7: "ERR No such master with that name"; ioredis says "failed to connect
 * ... because" of it) or, before 7, answers nil (ioredis: "connected ... successfully, but got an invalid reply").
 * A connection lost says why (reportSentinelErrors), its code kept for certificateHint.
 */
function sentinelSaid(message: string, client: RedisClient): [string, Error] {
  const [, address, why] = /^(?:failed to connect to|connected to) sentinel (\S+) (?:because |successfully, but got an invalid reply)(.*)$/s.exec(message) ?? [];
  if (!address) return [message, new Error(message)];
  const shown = addressOfKey(address);
  if (!/^failed/.test(message) || /^ERR No such master/.test(why!)) return [address, new Error(`sentinel ${shown} knows no master named "${(client as Redis).options.name}" (REDIS_SENTINEL_NAME)`)];
  const cause = why === CLOSED ? sentinelCauses.get(client)?.get(address) : undefined;
  return [address, resetAlike(cause, Object.assign(new Error(`sentinel ${shown}: ${cause ? tlsReadable(cause).message : why}`), { code: (cause as NodeJS.ErrnoException | undefined)?.code }))];
}

/**
 * ioredis asks each sentinel for the master on a connection of its own and drops that connection's errors: a
 * sentinel down, its password refused or its certificate came out as "Connection is closed." only. Each is kept
 * by the sentinel's address, for sentinelSaid.
 */
function reportSentinelErrors(client: Redis): Redis {
  type Endpoint = { host?: string; port?: number };
  const connector = (client as unknown as { connector: { connectToSentinel(endpoint: Endpoint, options?: object): Redis } }).connector;
  const connect = connector.connectToSentinel.bind(connector);
  const causes = new Map<string, Error>();
  sentinelCauses.set(client, causes);
  client.on('ready', () => causes.clear());
  connector.connectToSentinel = (endpoint, options) => {
    const sentinel = markResets(connect(endpoint, options));
    sentinel.on('error', (err: Error) => causes.set(`${endpoint.host}:${endpoint.port}`, err));
    return sentinel;
  };
  return client;
}

/**
 * An OpenSSL error as its reason alone: a TLS alert from Redis came as
 * `80ACB3633C7F0000:error:0A00045C:SSL routines:ssl3_read_bytes:tlsv13 alert certificate required:../deps/openssl/...:SSL alert number 116`,
 * read here as `tlsv13 alert certificate required`. Its code is kept (certificateHint).
 */
function tlsReadable(err: Error): Error {
  const reason = (err as { reason?: unknown }).reason;
  if (typeof reason !== 'string' || !/^[0-9A-F]+:error:/.test(err.message)) return err;
  return Object.assign(new Error(reason), { code: (err as NodeJS.ErrnoException).code });
}

/**
 * The error that says why the client failed, for an 'error' it emitted. A Cluster none of whose nodes gave the
 * slot map says only "Failed to refresh slots cache.": the last node's error says why (NOAUTH, WRONGPASS), or,
 * where that is only "Connection is closed.", the node error before it (a certificate refused, ECONNREFUSED).
 */
export function failureOf(client: RedisClient, err: Error): Error {
  // "All sentinels are unreachable" said also of sentinels that answered, but knew no such master: each one's answer instead
  const sentinels = ALL_SENTINELS.test(err.message) && sentinelFailures.get(client);
  if (sentinels) {
    const said = [...sentinels.values()];
    // a certificate refused by any of them (Redis's or ours) is what certificateHint speaks of
    const failure = Object.assign(new Error(`no sentinel named the master: ${said.map((e) => e.message).join('; ')}`), { code: said.map((e) => (e as NodeJS.ErrnoException).code).find((c) => c && CERTIFICATE_HINTS.has(c)) });
    return failure.code ? failure : resetAlike(said.find((e) => resetAfterHandshake.has(e)), failure);
  }
  const node = (err as { lastNodeError?: Error | null }).lastNodeError;
  if (!node) return tlsReadable(err);
  return tlsReadable((saysOnlyLost(node) && nodeFailures.get(client)) || node);
}

/**
 * ioredis reads the slot map on a connection of its own to a node, and drops that connection's errors: a
 * certificate refused came out as "Connection is closed." only. The client gets them as a 'node error' (as
 * those of its other connections to a node), just before that one.
 */
function reportSlotMapErrors(cluster: Cluster, node: Redis): Redis {
  const duplicate = node.duplicate.bind(node);
  node.duplicate = ((...args: Parameters<Redis['duplicate']>) => {
    const copy = markResets(duplicate(...args));
    copy.on('error', (err: Error) => cluster.emit('node error', err, nodeAddress(node)));
    return copy;
  }) as Redis['duplicate'];
  return node;
}

/**
 * Commands sent during one turn of the event loop leave in one write: the first command of a turn corks
 * the socket and the check phase (setImmediate, after every I/O callback of the turn) uncorks it. A
 * loopback `write` costs the HTTP worker about as much as the rest of a redeem, and 100 connections'
 * requests arrive in the same turn. Unlike ioredis auto-pipelining (measured: no gain, more GC) nothing
 * per command is allocated. Commands still go out in the turn that made them.
 */
function coalesceWrites(redis: Redis): Redis {
  const send = redis.sendCommand.bind(redis);
  let corked: Socket | undefined;
  const uncork = () => {
    corked?.uncork();
    corked = undefined;
  };
  redis.sendCommand = (command, stream) => {
    if (!corked && !stream && redis.status === 'ready' && redis.stream) {
      corked = redis.stream;
      corked.cork();
      setImmediate(uncork);
    }
    return send(command, stream);
  };
  return redis;
}

/**
 * A connection of its own for SUBSCRIBE (a subscribed connection takes no other command), with the client's
 * address and reconnects. Its SUBSCRIBE waits for the first connect however long Redis is away: the client
 * may fail fast, but a subscription refused at start would never be made. ioredis subscribes again after
 * each reconnect (a Cluster's subscriber moves to another node when its node goes); what is published
 * while it is away is lost.
 */
export function subscriberOf(client: RedisClient): RedisClient {
  if (client instanceof Cluster) return client.duplicate([], { enableOfflineQueue: true });
  const sub = client.duplicate({ enableOfflineQueue: true, maxRetriesPerRequest: null, connectionName: `${client.options.connectionName}-sub` });
  // a copy of a Sentinel client (lazyConnect too: it connects at SUBSCRIBE) is hooked as the original was: its
  // sentinels' failures said each (whyNotConnected), and its connections to them listened to, without which ioredis
  // printed each error of its failoverDetector's ones (a sentinel down) as "[ioredis] Unhandled error event"
  return isSentinel(client) ? rememberFailure(reportSentinelErrors(sub)) : sub;
}

/**
 * Most values one call to Redis is given (HMGET fields, a script's ARGV): Lua's unpack() takes at most ~8,000,
 * a JS spread of ~125,000 overflows the stack, and one call holds Redis for its whole length. Longer lists go
 * in `slices` of this many.
 */
export const ARGS_PER_CALL = 5000;

/** how long a Cluster client's ready check (CLUSTER INFO) may take before it counts as failed */
const READY_CHECK_MS = 2000;

/**
 * ioredis takes a Cluster as ready once one CLUSTER INFO, sent to a master picked at random, says the cluster is
 * ok, and waits for that answer without end: with one master hanging, its connection up (SIGSTOP, a stalled
 * host), a client that picked it stayed not ready while it hung. A serve started then answered 503 for every
 * token, not only that master's, and a CLI command said it could not reach Redis. A check unanswered within
 * READY_CHECK_MS fails as one refused does: ioredis reconnects and checks again, likely on another master.
 */
function boundReadyCheck(cluster: Cluster): Cluster {
  type Check = (callback: (err?: Error | null, fail?: string) => void) => void;
  const internal = cluster as unknown as { readyCheck: Check };
  const check = internal.readyCheck.bind(cluster);
  internal.readyCheck = (callback) => {
    let settled = false;
    const timer = setTimeout(() => {
      settled = true;
      callback(new Error(`no answer to CLUSTER INFO within ${READY_CHECK_MS} ms`));
    }, READY_CHECK_MS);
    check((err, fail) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      callback(err, fail);
    });
  };
  return cluster;
}

/**
 * ioredis sends ASKING before a command an ASK redirect (a slot being migrated) sends to the importing
 * master, and drops that call's promise (ioredis #883): with that master unreachable it rejected with nobody
 * to catch it, and Node ended the process, every serve worker at once and again after each restart. The
 * command after it fails on its own, and is answered as any Redis failure.
 */
function catchAsking(node: Redis): Redis {
  const asking = node.asking.bind(node);
  node.asking = ((...args: Parameters<Redis['asking']>) => {
    const reply = asking(...args);
    reply.catch(() => undefined);
    return reply;
  }) as Redis['asking'];
  return node;
}

/** The masters to talk to for node-wide commands (SCAN, SCRIPT LOAD, INFO). */
export function masters(client: RedisClient): Redis[] {
  return client instanceof Cluster ? client.nodes('master') : [client];
}

/** how often a Cluster client re-reads the slot map (one CLUSTER SLOTS) whatever happens */
const SLOTS_REFRESH_MS = 5000;

const NO_CONNECTION = 'no connection to Redis (reconnecting)';
/** ioredis' wording for a connection it lost, and what it means to whoever reads /readyz or the snapshot writer's log */
const PLAIN: [RegExp, string][] = [
  [/^Stream isn't writeable/, NO_CONNECTION],
  [/^Connection is closed/, 'the connection to Redis closed (reconnecting)'],
  [/^Reached the max retries per request limit/, 'Redis did not answer (the connection kept failing)'],
  [/^Command timed out/, 'Redis did not answer in time (down, unreachable or hung)'],
];

/**
 * A Redis failure as an on-call engineer should read it: what ioredis' own words mean, then them. Given the
 * client, a command refused for want of a connection is said with why the client cannot connect instead.
 */
export function redisErrorText(err: unknown, client?: RedisClient): string {
  const message = err instanceof Error ? err.message : String(err);
  const plain = PLAIN.find(([re]) => re.test(message))?.[1];
  const why = client && whyNotConnected(client);
  if (plain && why) return `${plain}: ${why}`;
  return plain ? `${plain}: ${message}` : message;
}

/**
 * For a client that is not connected, what serve's /readyz says of a command refused then (redisErrorText): no
 * connection, and why. For a client that queues its commands meanwhile (the snapshot writer's), whose command
 * would wait instead of being refused.
 */
export function notConnectedText(client: RedisClient): string {
  const why = whyNotConnected(client);
  return why ? `${NO_CONNECTION}: ${why}` : NO_CONNECTION;
}

/**
 * Why the client cannot connect, while it cannot, as said to an operator: the error of its last attempt
 * (failureOf), and what to do about a certificate refused; else undefined.
 */
export function whyNotConnected(client: RedisClient): string | undefined {
  const failure = client.status === 'ready' ? undefined : failures.get(client);
  return failure && `${failure.message}${certificateHint(failure)}`;
}

const UNTRUSTED_HINT = 'Redis\'s TLS certificate is not signed by a CA trusted here: set REDIS_TLS_CA_FILE to the CA that signed it';
// a handshake failure (TLS 1.2's alert for a missing client certificate) may have other causes (no common cipher): said as a likely one
const REQUIRED_HINT = 'Redis asks for a client certificate (tls-auth-clients): set REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE to one its tls-ca-cert-file CA signed';
const REFUSED_HINT = 'Redis refused the client certificate of REDIS_TLS_CERT_FILE: it must be signed by a CA of Redis\'s tls-ca-cert-file, and valid';
const RESET_HINT = 'Redis closed the connection right after the TLS handshake, as one with tls-auth-clients does to a client without a certificate its tls-ca-cert-file CA signed: check REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE';

/**
 * What to do about a TLS connection refused for a certificate, by Node's code of the failure: Redis's certificate
 * signed by no CA trusted here; no client certificate sent to a Redis with `tls-auth-clients yes` (the alert it
 * ends the handshake with: TLS 1.3's "certificate required", TLS 1.2's "handshake failure"); or the one sent
 * refused (another CA's, expired).
 */
const CERTIFICATE_HINTS = new Map<string, string>([
  ...['SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'CERT_UNTRUSTED'].map((c) => [c, UNTRUSTED_HINT] as const),
  ...['ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED', 'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE'].map((c) => [c, REQUIRED_HINT] as const),
  // a CA of the same name as Redis's, but another key (made anew): "decrypt error"
  ...['ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', 'ERR_SSL_TLSV1_ALERT_DECRYPT_ERROR', 'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE', 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED', 'ERR_SSL_TLSV1_ALERT_ACCESS_DENIED'].map((c) => [c, REFUSED_HINT] as const),
]);

/** For a connection refused for Redis's certificate or the client's, what to do, after a "; "; else ''. */
export function certificateHint(err: Error): string {
  const hint = CERTIFICATE_HINTS.get((err as NodeJS.ErrnoException).code ?? '') ?? (resetAfterHandshake.has(err) ? RESET_HINT : undefined);
  return hint ? `; ${hint}` : '';
}

/** `reply`, or a rejection "no answer within `ms` ms" once that has passed: a hung node must not hold a probe. */
export function answerWithin<T>(reply: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms)));
  return Promise.race([reply, late]).finally(() => clearTimeout(timer));
}

/** Whether the client reaches the master the sentinels of REDIS_SENTINELS name. */
export const isSentinel = (client: RedisClient): boolean => !(client instanceof Cluster) && !!client.options.sentinels;

/** `host:port` as an operator reads it, and types it back: an IPv6 address in brackets (`[::1]:6379`), as a URL and a seed write it. */
export const hostPort = (host: string, port: number | string): string => (isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`);

/**
 * A node as ioredis keys it (its slot map, its 'node error' events, its sentinel errors): `host:port`, an IPv6
 * host without brackets (`::1:6379`, unreadable), as hostPort writes it. One written so already is left as is.
 */
export function addressOfKey(key: string): string {
  const colon = key.lastIndexOf(':');
  return colon < 0 ? key : hostPort(key.slice(0, colon), key.slice(colon + 1));
}

/** `host:port` (hostPort) of a Cluster node, as the slot map names it; of the master a Sentinel client is connected to. */
export function nodeAddress(node: Redis): string {
  // a Sentinel client's options name no host (REDIS_URL's is not used): the master the sentinels sent it to
  if (isSentinel(node)) return node.stream?.remoteAddress ? hostPort(node.stream.remoteAddress, node.stream.remotePort!) : `the master "${node.options.name}"`;
  return hostPort(node.options.host!, node.options.port!);
}

/** What an outage means to a client's users, said after "retrying": for the whole Redis, and for one Cluster master. */
export interface OutageEffect {
  all: string;
  node: string;
}

/** serve's workers: their callers get 503s */
export const REQUESTS_ANSWER_503: OutageEffect = {
  all: 'requests meanwhile answer 503',
  node: 'requests for its keys answer 503 until it or a replica answers',
};

/**
 * One line when the client loses Redis and one when it has it back, however many reconnect attempts fail
 * in between (ioredis emits an error for each): an outage shows in the log, not only as 503s or a lag.
 * `lost` runs at each such loss, for a metric that counts outages.
 */
export function logOutages(redis: RedisClient, log: (level: 'warn' | 'info', line: string, fields?: LogFields) => void, effect: OutageEffect, lost?: () => void): void {
  let down = false;
  const lose = (why: string, hint = '', code?: string) => {
    if (down) return;
    down = true;
    lost?.();
    log('warn', `Redis unreachable (${why}); retrying, ${effect.all}${hint}`, { code });
  };
  redis.on('error', (err: Error) => {
    const failure = failureOf(redis, err);
    lose(failure.message, certificateHint(failure), (failure as NodeJS.ErrnoException).code);
  });
  // a restart quicker than the first retry raises no error, yet the connection was lost (serve answered 503 meanwhile)
  redis.on('reconnecting', () => lose('connection lost'));
  // a Cluster reports one master's failure only as 'node error' (the client stays ready): once a minute a node
  const nodeSaid = new Map<string, number>();
  redis.on('node error', (err: Error, key: string) => {
    const node = addressOfKey(key);
    const now = Date.now();
    if ((nodeSaid.get(node) ?? 0) > now - 60_000) return;
    nodeSaid.set(node, now);
    log('warn', `Redis node ${node} unreachable (${tlsReadable(err).message}); ${effect.node}${certificateHint(err)}`, { node, code: (err as NodeJS.ErrnoException).code });
  });
  redis.on('ready', () => {
    if (!down) return;
    down = false;
    log('info', 'Redis reachable again');
  });
}

/** Resolves once the client is connected (ready), rejects after `ms` without that. */
export function whenReady(redis: RedisClient, ms: number): Promise<void> {
  if (redis.status === 'ready') return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (redis.off('ready', onReady), reject(new Error(`no connection within ${ms} ms`))), ms);
    const onReady = () => (clearTimeout(timer), resolve());
    redis.once('ready', onReady);
  });
}

/** `masters`, once a Cluster client has read the slot map (before that it knows none). */
export async function readyMasters(client: RedisClient): Promise<Redis[]> {
  if (client instanceof Cluster && client.status !== 'ready') await clusterReady(client);
  return masters(client);
}

// one wait per connecting client, shared by every caller: a listener pair per caller passed Node's
// 10-listener warning when a server's workers all asked at once
const readyWaits = new WeakMap<Cluster, Promise<void>>();

function clusterReady(client: Cluster): Promise<void> {
  let wait = readyWaits.get(client);
  if (wait) return wait;
  wait = new Promise<void>((resolve, reject) => {
    // whichever comes first removes the other, so a wait leaves nothing behind on the client
    const onReady = () => {
      client.off('end', onEnd);
      resolve();
    };
    const onEnd = () => {
      client.off('ready', onReady);
      reject(new Error('Redis Cluster connection ended before it was ready'));
    };
    client.once('ready', onReady);
    client.once('end', onEnd);
  });
  readyWaits.set(client, wait);
  const forget = () => readyWaits.delete(client);
  wait.then(forget, forget);
  return wait;
}

