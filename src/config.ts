import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { createSecureContext } from 'node:tls';
import os from 'node:os';
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from './log.js';

/**
 * The one configuration module. Every setting has an env name, a default and a parser; command-line
 * flags override env (pass them as `overrides`, keyed by setting name). `loadConfig` validates all
 * settings at once and throws a single ConfigError listing every problem.
 * The README's configuration table is this list: keep the `doc` strings operator-facing.
 */

export class ConfigError extends Error {
  /** `failed`: the settings whose values were refused (the CLI tells a bad flag from a bad env value) */
  constructor(readonly problems: string[], readonly failed: string[] = []) {
    super(`invalid configuration:\n  - ${problems.join('\n  - ')}`);
    this.name = 'ConfigError';
  }
}

type Parser<T> = (raw: string) => T;

interface Setting<T> {
  env: string;
  default: T;
  parse: Parser<T>;
  doc: string;
}

const int = (min: number, max = Number.MAX_SAFE_INTEGER): Parser<number> => (raw) => {
  if (!/^-?\d+$/.test(raw.trim())) throw new Error(`expected an integer, got "${raw}"`);
  const n = Number(raw);
  // no bound an operator would type: "expected 1..9007199254740991" read like a bug
  const range = max === Number.MAX_SAFE_INTEGER ? `an integer >= ${min}` : `${min}..${max}`;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new Error(`expected ${range}, got ${raw.trim()}`);
  return n;
};

const bool: Parser<boolean> = (raw) => {
  const v = raw.trim().toLowerCase();
  if (['1', 'true', 'yes', 'on'].includes(v)) return true;
  // a blank value is no answer: read as false, SNAPSHOT=" " turned the writer off while SNAPSHOT="" keeps it on
  if (['0', 'false', 'no', 'off'].includes(v)) return false;
  throw new Error(`expected true/false, got "${raw}"`);
};

/** One of `values`, in any case: LOG_LEVEL=WARN is meant as warn. */
const oneOf = <T extends string>(values: readonly T[]): Parser<T> => (raw) => {
  const v = raw.trim().toLowerCase();
  if (!values.includes(v as T)) throw new Error(`expected ${values.slice(0, -1).join(', ')} or ${values.at(-1)}, got "${raw}"`);
  return v as T;
};

/**
 * user:password in a URL, up to its last @ (a password may hold one, or a / # ? left unencoded, which ends no
 * password), wherever the URL starts in the text (a value quoted by mistake, after blanks new URL trims): what
 * a log line must not show (the admin audit line). Replace it with `//<mark>@`.
 */
export const URL_CREDENTIALS = /\/\/\S*@/;

/**
 * A value meant as one URL, as an error may show it: everything up to its last @ hidden, also without a // or
 * across a blank (a password may hold what ends a URL's authority early, as URL_CREDENTIALS reads it).
 */
const credentialsHidden = (raw: string): string => raw.replace(/^([a-z][a-z\d+.-]*:\/\/)?[\s\S]*@/i, '$1<credentials>@');

const url = (...protocols: string[]): Parser<string> => (raw) => {
  // URL ignores blanks around the value, ioredis and pg do not: " redis://..." passed here, then failed as "Invalid URL"
  raw = raw.trim();
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    // the value may carry a password (postgres://user:secret@...): not echoed into a log
    throw new Error(`not a URL: "${credentialsHidden(raw)}"`);
  }
  if (!protocols.includes(u.protocol)) throw new Error(`expected ${protocols.join(' or ')} URL, got "${u.protocol}"`);
  return raw;
};

/**
 * An IP address or a host name: a typo surfaced only when serve failed to listen, after the config was taken.
 * An IPv6 address in brackets (as in a URL) is taken without them: a listen looked `[::]` up as a host name.
 */
const hostName: Parser<string> = (raw) => {
  const bare = raw.replace(/^\[(.*)\]$/, '$1');
  if (isIP(bare) === 6) return bare;
  if (isIP(raw) === 0 && !/^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/.test(raw)) {
    throw new Error(`expected an IP address or a host name, got "${raw}"`);
  }
  return raw;
};

/** One REDIS_CLUSTER_NODES seed: where it is, whether over TLS, and the credentials it carries ('' for none). */
export interface ClusterSeed {
  host: string;
  port: number;
  tls: boolean;
  username: string;
  password: string;
}

const SEED_FORM = '[redis[s]://[[user:]password@]]host:port';

/** A seed's host as written, an IPv6 address in brackets (as in a URL), as ioredis takes it (the address alone); '' for no host. */
function seedHost(written: string): string {
  const bracketed = /^\[(.*)\]$/.exec(written);
  if (bracketed) return isIP(bracketed[1]!) === 6 ? bracketed[1]! : '';
  return /^[^:\s/@[\]]+$/.test(written) ? written : '';
}

/**
 * A seed as `host:port`, or as REDIS_URL writes a Redis: `redis[s]://[[user:]password@]host:port`, the user and
 * password percent-decoded as ioredis decodes REDIS_URL's; an IPv6 address in brackets either way (`[::1]:6379`),
 * the host then the address without them. Throws without the seed's text (it may hold a password).
 */
export function parseSeed(seed: string): ClusterSeed {
  const bare = /^([^\s/@]+):(\d+)$/.exec(seed);
  const bareHost = bare && seedHost(bare[1]!);
  if (bareHost) return { host: bareHost, port: Number(bare[2]), tls: false, username: '', password: '' };
  // an IPv6 address without brackets: which colon starts the port cannot be told
  if (bare && isIP(bare[1]!) === 6) throw new Error(`expected ${SEED_FORM} (an IPv6 address in brackets: [${bare[1]}]:${bare[2]})`);
  let u: URL;
  try {
    u = new URL(seed);
  } catch {
    throw new Error(`expected ${SEED_FORM}`);
  }
  const host = seedHost(u.hostname);
  if (!/^rediss?:$/.test(u.protocol) || !host || !u.port || u.pathname || u.search || u.hash) throw new Error(`expected ${SEED_FORM}`);
  let username: string;
  let password: string;
  try {
    [username, password] = [decodeURIComponent(u.username), decodeURIComponent(u.password)];
  } catch {
    throw new Error(`expected ${SEED_FORM} (the user and password percent-encoded)`);
  }
  // ioredis sends no AUTH without a password: the user would be dropped, and the node's default user used
  if (username && !password) throw new Error(`expected ${SEED_FORM} (a user without a password)`);
  return { host, port: Number(u.port), tls: u.protocol === 'rediss:', username, password };
}

/**
 * A refused seed as a config error may show it: its credentials hidden. A seed without an @ in a value that has
 * one may be a piece of a password cut at a comma: not shown at all.
 */
function shownSeed(seed: string, raw: string): string {
  if (seed.includes('@')) return `"${credentialsHidden(seed)}"`;
  return raw.includes('@') ? 'a seed of a value with credentials (not shown; a comma in a password is written %2C)' : `"${seed}"`;
}

/**
 * host:port seeds, each as written (createRedis reads them with parseSeed). TLS and the credentials are each one
 * setting of the whole cluster, as in REDIS_URL: the client takes one set of connection options for every node,
 * the ones it finds in the slot map too. So every seed carries them alike, or none does.
 */
const hostList: Parser<string[]> = seedList({
  tls: 'TLS is one setting of the whole cluster',
  credentials: 'every node of the cluster is reached with one (the nodes the slot map names too)',
});

/** REDIS_SENTINELS: seeds as REDIS_CLUSTER_NODES writes them; ioredis reaches every sentinel with one set of options, those it learns of too. */
const sentinelList: Parser<string[]> = seedList({
  tls: 'TLS is one setting of all the sentinels',
  credentials: 'every sentinel is reached with one (the ones the sentinels name too)',
});

/** Seeds read by parseSeed, each kept as written; `why`: why TLS and the credentials must be alike on every one. */
function seedList(why: { tls: string; credentials: string }): Parser<string[]> {
  return (raw) => {
    const nodes = raw.split(',').map((s) => s.trim()).filter(Boolean);
    const seeds = nodes.map((n) => {
      try {
        return parseSeed(n);
      } catch (err) {
        throw new Error(`${(err as Error).message}, got ${shownSeed(n, raw)}`);
      }
    });
    if (new Set(seeds.map((s) => s.tls)).size > 1) throw new Error(`expected every seed with rediss:// or none: ${why.tls}`);
    if (new Set(seeds.map((s) => JSON.stringify([s.username, s.password]))).size > 1) {
      throw new Error(`expected the same user and password on every seed, or on none: ${why.credentials}`);
    }
    return nodes;
  };
}

/** A Sentinel master group name: Sentinel takes one without blanks (a word of `sentinel monitor <name> ...`). */
const sentinelName: Parser<string> = (raw) => {
  const name = raw.trim();
  if (!/^[\x21-\x7e]{1,128}$/.test(name)) throw new Error(`expected the master name of the Sentinel configuration (\`sentinel monitor <name> ...\`, printable, no blanks), got "${raw}"`);
  return name;
};

/** The text of a file, or an error naming it: "ENOENT: no such file or directory", without the path again. */
function readPem(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read "${file}": ${(err as Error).message.split(',')[0]}`);
  }
}

/** A PEM file of certificates readable now, as its path: a typo or a missing mount refused at start, not found at the first connect. */
const pemFile: Parser<string> = (raw) => {
  const file = raw.trim();
  if (!readPem(file).includes('-----BEGIN CERTIFICATE-----')) throw new Error(`"${file}" holds no PEM certificate (-----BEGIN CERTIFICATE-----)`);
  return file;
};

/** A PEM file of a private key readable now, as its path (whether it goes with its certificate: loadConfig). */
const pemKeyFile: Parser<string> = (raw) => {
  const file = raw.trim();
  const text = readPem(file);
  // PKCS#8 (BEGIN PRIVATE KEY), PKCS#1 (BEGIN RSA PRIVATE KEY), SEC1 (BEGIN EC PRIVATE KEY)
  if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text)) throw new Error(`"${file}" holds no PEM private key (-----BEGIN PRIVATE KEY-----)`);
  // no setting gives a passphrase: Node's TLS said only "bad decrypt"
  if (/-----BEGIN ENCRYPTED PRIVATE KEY-----|^Proc-Type: 4,ENCRYPTED/m.test(text)) throw new Error(`"${file}" holds an encrypted private key: give it unencrypted (\`openssl pkey -in ${file} -out <new file>\` asks for its passphrase)`);
  return file;
};

/** Why a client certificate and its key cannot be used together, as Node's TLS says it (a key of another certificate: "key values mismatch"), or undefined. */
function clientCertificateRefused(certFile: string, keyFile: string): string | undefined {
  try {
    createSecureContext({ cert: readPem(certFile), key: readPem(keyFile) });
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

const keyPrefix: Parser<string> = (raw) => {
  if (!/^[A-Za-z0-9_.-]{1,32}$/.test(raw)) throw new Error(`expected 1..32 of [A-Za-z0-9_.-] (no braces: the prefix sits outside the hash tag), got "${raw}"`);
  return raw;
};

/**
 * A bearer key of at least 32 characters, or '' for `empty`. The blanks around it are dropped: a key read from a
 * secret file kept its newline and matched no Authorization header (whose value cannot carry one, nor a blank
 * inside a key), so every call was 401 with nothing refused.
 */
const bearerKey = (empty: string): Parser<string> => (raw) => {
  const key = raw.trim();
  if (key.length < 32) throw new Error(`must be at least 32 characters (or empty ${empty})`);
  if (/\s/.test(key)) throw new Error('must not contain whitespace (a Bearer header cannot carry it)');
  return key;
};

/** 32-byte AES keys as 64 hex digits, comma-separated: the first seals, all open (src/satellites/seal.ts). */
const secretList: Parser<string[]> = (raw) => {
  const secrets = raw.split(',').map((x) => x.trim()).filter(Boolean);
  // the value itself is a secret: never echoed into the error
  secrets.forEach((x, i) => {
    if (!/^[0-9a-fA-F]{64}$/.test(x)) throw new Error(`secret ${i + 1} of ${secrets.length}: expected 64 hex digits (32 bytes: openssl rand -hex 32), got ${x.length} characters`);
  });
  return secrets.map((x) => x.toLowerCase());
};

const MAX_WORKERS = 256;
/** One per core, but never past what WORKERS itself accepts: a host with more cores got more workers than the setting allows. */
function defaultWorkers(): number {
  return Math.min(MAX_WORKERS, Math.max(1, os.availableParallelism()));
}

/** Ten years: a longer grace is a typo, and past ~285,000 years the old key's end is no date at all. */
export const MAX_KEY_GRACE_MS = 10 * 365 * 24 * 3600_000;

export const settings = {
  redisUrl: { env: 'REDIS_URL', default: 'redis://127.0.0.1:6379', parse: url('redis:', 'rediss:'), doc: 'Redis to keep tokens in (standalone); `rediss://` connects over TLS (see "TLS" below).' },
  redisClusterNodes: { env: 'REDIS_CLUSTER_NODES', default: [] as string[], parse: hostList, doc: 'Comma-separated host:port seeds (an IPv6 address in brackets: `[fd00::5]:6379`); when set, Redis Cluster is used instead of REDIS_URL. Written `rediss://host:port` (every seed), every node is reached over TLS. A password (requirepass) or an ACL user is written as in REDIS_URL, `redis[s]://[user]:password@host:port` (percent-encoded), the same on every seed: every node is reached with it, those found in the slot map too (see "TLS" below).' },
  redisSentinels: { env: 'REDIS_SENTINELS', default: [] as string[], parse: sentinelList, doc: 'Comma-separated host:port of Redis Sentinels; when set (with REDIS_SENTINEL_NAME), the master those sentinels name is used, followed through failovers, instead of REDIS_URL\'s host:port (not with REDIS_CLUSTER_NODES). Written as REDIS_CLUSTER_NODES\' seeds: `rediss://` (every seed) reaches the sentinels over TLS, and a user and password there, the same on every seed, are the sentinels\' own (`requirepass` of sentinel.conf). The master and its replicas are reached with REDIS_URL\'s user, password, database and TLS (`rediss://`) (see "Redis Sentinel" in "What a 200 promises" below).' },
  redisSentinelName: { env: 'REDIS_SENTINEL_NAME', default: '', parse: sentinelName, doc: 'The master group name the sentinels monitor (`sentinel monitor <name> ...`); required with REDIS_SENTINELS, refused without it.' },
  redisTlsCaFile: { env: 'REDIS_TLS_CA_FILE', default: '', parse: pemFile, doc: 'PEM file of the CA certificate(s) Redis\'s TLS certificate is checked against instead of the system\'s (a private CA, as a cloud Redis with in-transit encryption often has); only with rediss:// in REDIS_URL, REDIS_CLUSTER_NODES or REDIS_SENTINELS (refused otherwise). Read at start. Empty: the system CAs.' },
  redisTlsCertFile: { env: 'REDIS_TLS_CERT_FILE', default: '', parse: pemFile, doc: 'PEM file of the client certificate sent to Redis over TLS, for a Redis that asks for one (`tls-auth-clients yes`, mutual TLS); with REDIS_TLS_KEY_FILE (both or neither), only with rediss:// as REDIS_TLS_CA_FILE. Sent on every TLS connection: to each Cluster node, the master and the sentinels alike. Read at start. Empty: no client certificate.' },
  redisTlsKeyFile: { env: 'REDIS_TLS_KEY_FILE', default: '', parse: pemKeyFile, doc: 'PEM file of the private key of REDIS_TLS_CERT_FILE (unencrypted); refused at start when it is not that certificate\'s key.' },
  redisWaitReplicas: { env: 'REDIS_WAIT_REPLICAS', default: 0, parse: int(0, 16), doc: 'Answer a state change (generate, redeem, reserve, complete, release, revoke) only once this many replicas of its Redis master have it (WAIT), so a failover cannot lose a change a caller was told about; one that does not arrive within REDIS_WAIT_MS is answered 503 (it may stand: a retry is answered as a retry), and /readyz is 503 while every master has fewer replicas online (200 `degraded`, naming it, while only some do). 0: off (Redis replicates asynchronously).' },
  redisWaitMs: { env: 'REDIS_WAIT_MS', default: 500, parse: int(1, 60_000), doc: 'How long a WAIT for REDIS_WAIT_REPLICAS replicas lasts; a change made while one is in flight shares the next, so it may wait three: keep it under a third of REQUEST_TIMEOUT_MS (with REDIS_WAIT_REPLICAS above 0, refused otherwise).' },
  keyPrefix: { env: 'KEY_PREFIX', default: 'rm', parse: keyPrefix, doc: 'Prefix of every Redis key, so several deployments (or test runs) can share one Redis.' },
  databaseUrl: { env: 'DATABASE_URL', default: 'postgres://postgres@127.0.0.1:5432/referral_manager', parse: url('postgres:', 'postgresql:'), doc: 'Postgres for the durable snapshot (the writer creates the database if missing; restore and verify need it to exist).' },
  host: { env: 'HOST', default: '0.0.0.0', parse: hostName, doc: 'Address the HTTP API listens on (an IP address or a host name).' },
  port: { env: 'PORT', default: 7480, parse: int(0, 65535), doc: 'Port the HTTP API listens on.' },
  workers: { env: 'WORKERS', default: defaultWorkers(), parse: int(1, MAX_WORKERS), doc: `HTTP worker processes sharing the port (default: one per core, at most ${MAX_WORKERS}).` },
  adminKey: { env: 'ADMIN_KEY', default: '', parse: bearerKey('to disable admin routes'), doc: 'Bearer key of the admin routes (>= 32 chars). Empty: admin routes answer 401.' },
  metricsKey: { env: 'METRICS_KEY', default: '', parse: bearerKey('to leave /metrics open'), doc: 'Bearer key /metrics asks for (>= 32 chars; Prometheus: `authorization: {credentials: ...}` in the scrape config), on serve and on the standalone snapshot writer: the metrics carry every satellite\'s token counts and who redeems whose, which satellites, sharing the port, should not read. Empty: /metrics is open.' },
  outboundKeySecrets: { env: 'OUTBOUND_KEY_SECRET', default: [] as string[], parse: secretList, doc: 'Seals satellites\' outbound keys at rest (AES-256-GCM): 64 hex digits (`openssl rand -hex 32`); a comma-separated list while rotating, the first sealing and all opening. Set it alike wherever serve and the CLI run. Empty: outbound keys are stored as given. `satellites seal-keys` seals the ones stored before.' },
  defaultLeaseMs: { env: 'DEFAULT_LEASE_MS', default: 10 * 60_000, parse: int(1, 24 * 3600_000), doc: 'Reservation lease when a reserve call gives no leaseMs (at most MAX_LEASE_MS).' },
  maxLeaseMs: { env: 'MAX_LEASE_MS', default: 60 * 60_000, parse: int(1, 7 * 24 * 3600_000), doc: 'Longest reservation lease a satellite may ask for.' },
  keyGraceMs: { env: 'KEY_GRACE_MS', default: 24 * 3600_000, parse: int(0, MAX_KEY_GRACE_MS), doc: 'How long a rotated satellite key keeps working.' },
  authCacheMs: { env: 'AUTH_CACHE_MS', default: 5000, parse: int(0, 600_000), doc: 'How long an HTTP worker trusts a satellite key it has checked. A satellite removed or a key retired without grace (over HTTP or by the CLI) stops at once on every serve worker whose Redis connection is up; a worker that was cut off from Redis then misses it, and the key stops there within this time (the grace of a rotation ends on time). 0: check Redis on every request.' },
  requestTimeoutMs: { env: 'REQUEST_TIMEOUT_MS', default: 5000, parse: int(50, 600_000), doc: 'An HTTP request whose store call has not finished by then is answered 503 store_unavailable (Redis hanging); a retried redeem by the same satellite and user is answered ok. The admin revoke of a campaign or a whole satellite, and the admin purge, which read every bucket, have 10 minutes.' },
  rateLimitFailures: { env: 'RATE_LIMIT_FAILURES', default: 100, parse: int(1), doc: 'Failed redeem/reserve/complete/release/lookup answers (404 token_not_found, 410 token_revoked / token_expired; not 410 reservation_expired) allowed per IP (IPv6: per /64) in one window before every request of it is refused 429: the end user\'s IP when the satellite sends X-End-User-IP (counted for that satellite only), else the satellite\'s own.' },
  rateLimitSatelliteFailures: { env: 'RATE_LIMIT_SATELLITE_FAILURES', default: 1000, parse: int(1), doc: 'The same failures allowed per satellite (all its end users together) in one window; past it every refusal of that satellite is answered 429, while a real token is still served. A failure of an address already over RATE_LIMIT_FAILURES is not counted here, so one person cannot use up the satellite\'s limit.' },
  rateLimitWindowMs: { env: 'RATE_LIMIT_WINDOW_MS', default: 60_000, parse: int(100), doc: 'Window of the failure rate limit.' },
  satelliteTimeoutMs: { env: 'SATELLITE_TIMEOUT_MS', default: 10_000, parse: int(50, 600_000), doc: 'generate: deadline of one call to a satellite (users-without-tokens, tokens).' },
  satelliteAttempts: { env: 'SATELLITE_ATTEMPTS', default: 5, parse: int(1, 100), doc: 'generate: attempts per call to a satellite (network errors, 408, 429 and 5xx retried with exponential backoff from 200 ms, waiting at least the satellite\'s Retry-After, up to a minute); then the satellite is reported failed and the others go on. Other 4xx are not retried; a push refused with 400/404/409/410/413/422, or accepted short (retried once), is split to find the users the satellite refuses (see "The generation flow").' },
  tokenCountsMs: { env: 'TOKEN_COUNTS_MS', default: 15_000, parse: int(0, 3_600_000), doc: 'How often serve reads the token counters (per satellite and state, and the owner -> redeemer matrix) from Redis for the rm_tokens, rm_tokens_generated_total and rm_redemptions_total metrics: one small read per shard. 0: off (those metrics and rm_token_counts_read_seconds are then not exported, so the "Redis unreadable" alert cannot fire).' },
  leaseSweepMs: { env: 'LEASE_SWEEP_MS', default: 10_000, parse: int(0, 3_600_000), doc: 'How often serve gives back reservations whose lease ended LEASE_SWEEP_GRACE_MS ago with neither complete nor release (an abandoned sign-up): each turns unredeemed with a `lapsed` event, so the counters, the metrics and Postgres stop showing it reserved, and its records are freed. One read of a small index per shard. The API treats a lapsed lease as unredeemed either way. 0: off (its metrics are then not exported).' },
  leaseSweepGraceMs: { env: 'LEASE_SWEEP_GRACE_MS', default: 3_600_000, parse: int(0, 7 * 24 * 3600_000), doc: 'How long after its lease ended a reservation stays as it was: a late complete still answers 410 reservation_expired, a late release 200. Given back, the token holds no reservation and both answer 409 reservation_mismatch, as after a release.' },
  snapshot: { env: 'SNAPSHOT', default: true, parse: bool, doc: 'Run the Postgres snapshot writer inside serve. With `false`, run `referral-manager snapshot` elsewhere: until one runs, events wait in Redis (serve warns at start).' },
  snapshotBatch: { env: 'SNAPSHOT_BATCH', default: 5000, parse: int(1, 100_000), doc: 'Most events the snapshot writer applies in one transaction.' },
  snapshotFlushMs: { env: 'SNAPSHOT_FLUSH_MS', default: 50, parse: int(1, 60_000), doc: 'Pause of the snapshot writer between polls while the streams are quiet (its last round read under SNAPSHOT_BATCH/8 events): about the longest a new event waits before the writer reads it. Each further round that reads nothing doubles the pause, up to 500 ms (or this, if longer), so an idle writer polls twice a second; the first event after a quiet spell may wait that long.' },
  snapshotMetricsPort: { env: 'SNAPSHOT_METRICS_PORT', default: 7481, parse: int(0, 65535), doc: '`referral-manager snapshot` serves /healthz, /readyz and /metrics on HOST at this port (0: any free port, printed at start).' },
  logFormat: { env: 'LOG_FORMAT', default: 'text' as LogFormat, parse: oneOf(LOG_FORMATS), doc: 'How serve (primary and workers) and `referral-manager snapshot` write their log: `text`, the lines as they always were, or `json`, one object a line with time, level, component, pid and msg (see "Logs" below). The CLI\'s other commands print as always.' },
  logLevel: { env: 'LOG_LEVEL', default: 'info' as LogLevel, parse: oneOf(LOG_LEVELS), doc: 'The least level of a log line written, in either LOG_FORMAT: `debug`, `info`, `warn` or `error`. The audit trail of the admin routes is written at every level.' },
  snapshotTestCrashAfterCommit: { env: 'SNAPSHOT_TEST_CRASH_AFTER_COMMIT', default: 0, parse: int(0), doc: 'Test hook for fault tests: the snapshot writer SIGKILLs itself right after its Nth COMMIT, before XACK. 0 (default): off.' },
} satisfies Record<string, Setting<unknown>>;

type Settings = typeof settings;
export type Config = { [K in keyof Settings]: Settings[K]['default'] };

/**
 * Reads every setting from `env`, then applies `overrides` (already-typed values or raw strings from flags).
 * A refused override is reported under its name in `given` (the flag, e.g. `--port`), else the env name.
 */
export function loadConfig(
  overrides: Partial<Record<keyof Config, unknown>> = {},
  env: NodeJS.ProcessEnv = process.env,
  given: Partial<Record<keyof Config, string>> = {},
): Config {
  const problems: string[] = [];
  const failed: string[] = [];
  const refuse = (name: keyof Config, why: string) => {
    problems.push(`${(isGiven(overrides[name]) && given[name]) || settings[name].env}: ${why}`);
    failed.push(name);
  };
  const out: Record<string, unknown> = {};
  for (const name of Object.keys(settings) as (keyof Config)[]) {
    try {
      out[name] = loadSetting(name, overrides[name], env);
    } catch (err) {
      refuse(name, (err as Error).message);
    }
  }
  // settings that are each valid but contradict each other (only when both were read)
  const c = out as Partial<Config>;
  if (c.defaultLeaseMs !== undefined && c.maxLeaseMs !== undefined && c.defaultLeaseMs > c.maxLeaseMs) {
    refuse('defaultLeaseMs', `${c.defaultLeaseMs} is longer than MAX_LEASE_MS (${c.maxLeaseMs}): a reserve without leaseMs would be held past the longest lease`);
  }
  // a change can wait three WAITs (src/store/replicas.ts): the one its script was queued behind, the one in
  // flight when it was answered, and the next, which it shares
  if (c.redisWaitReplicas && c.redisWaitMs !== undefined && c.requestTimeoutMs !== undefined && 3 * c.redisWaitMs >= c.requestTimeoutMs) {
    refuse('redisWaitMs', `${c.redisWaitMs} is a third of REQUEST_TIMEOUT_MS (${c.requestTimeoutMs}) or more: a change can wait three REDIS_WAIT_MS, and the request deadline would answer it as "Redis unavailable"`);
  }
  // one Redis, one way to reach it: a Sentinel's master and a Cluster's slot map cannot both be followed
  if (c.redisSentinels?.length && c.redisClusterNodes?.length) {
    refuse('redisSentinels', 'set together with REDIS_CLUSTER_NODES: Redis is reached through Sentinel or as a Cluster, not both; clear one');
  } else if (c.redisSentinels?.length && c.redisSentinelName === '') {
    refuse('redisSentinelName', 'not set, but REDIS_SENTINELS is: set it to the master name the sentinels monitor (`sentinel monitor <name> ...`)');
  } else if (c.redisSentinels?.length === 0 && c.redisSentinelName) {
    refuse('redisSentinelName', 'set, but REDIS_SENTINELS is not: set it to the sentinels\' host:port, or clear REDIS_SENTINEL_NAME');
  }
  // a CA given for a Redis reached in plain text means TLS was meant: without it, the traffic and a password would go in clear
  if (c.redisTlsCaFile && c.redisClusterNodes !== undefined && c.redisUrl !== undefined && c.redisSentinels !== undefined && !usesTls(c as Config)) {
    refuse('redisTlsCaFile', `set, but Redis is reached without TLS: ${useRediss(c as Config)}`);
  }
  // a client certificate without its key (or a key alone) cannot be sent: refused here, not at each connect
  if (c.redisTlsCertFile !== undefined && c.redisTlsKeyFile !== undefined && !c.redisTlsCertFile !== !c.redisTlsKeyFile) {
    if (c.redisTlsCertFile) refuse('redisTlsKeyFile', 'not set, but REDIS_TLS_CERT_FILE is: a client certificate is sent with its private key; set both, or neither');
    else refuse('redisTlsCertFile', 'not set, but REDIS_TLS_KEY_FILE is: a private key is sent as the key of a client certificate; set both, or neither');
  } else if (c.redisTlsCertFile && c.redisTlsKeyFile) {
    const refused = clientCertificateRefused(c.redisTlsCertFile, c.redisTlsKeyFile);
    if (refused) refuse('redisTlsKeyFile', `cannot be used with REDIS_TLS_CERT_FILE: ${refused}`);
  }
  if (c.redisTlsCertFile && c.redisClusterNodes !== undefined && c.redisUrl !== undefined && c.redisSentinels !== undefined && !usesTls(c as Config)) {
    refuse('redisTlsCertFile', `set, but Redis is reached without TLS: ${useRediss(c as Config)}`);
  }
  if (problems.length) throw new ConfigError(problems, failed);
  return out as Config;
}

/** Where a TLS setting given for a Redis reached in plain text wants rediss://. */
const useRediss = (c: Pick<Config, 'redisClusterNodes' | 'redisSentinels'>): string =>
  `use rediss:// in ${c.redisClusterNodes.length ? 'REDIS_CLUSTER_NODES' : c.redisSentinels.length ? 'REDIS_URL (the master) or REDIS_SENTINELS' : 'REDIS_URL'}`;

/**
 * Whether Redis is reached over TLS: a rediss:// REDIS_URL, or rediss:// seeds when REDIS_CLUSTER_NODES is set
 * (which REDIS_URL is not used with); with Sentinel, the master (REDIS_URL) or the sentinels.
 */
export function usesTls(config: Pick<Config, 'redisUrl' | 'redisClusterNodes'> & Partial<Pick<Config, 'redisSentinels'>>): boolean {
  if (config.redisClusterNodes.length > 0) return parseSeed(config.redisClusterNodes[0]!).tls;
  return /^rediss:/i.test(config.redisUrl) || sentinelsUseTls(config);
}

/** Whether the sentinels of REDIS_SENTINELS are reached over TLS (their seeds' rediss://). */
export const sentinelsUseTls = (config: Partial<Pick<Config, 'redisSentinels'>>): boolean => !!config.redisSentinels?.length && parseSeed(config.redisSentinels[0]!).tls;

/** An override counts when it has a value: an empty flag (`--port "$PORT"` with PORT unset) leaves the env in charge. */
export const isGiven = (override: unknown): boolean => override !== undefined && override !== '';

/**
 * One setting, by the rules loadConfig reads each by (the override, else the env; an empty value is not
 * set, so an empty flag falls back to the env and an empty env to the default), without reading the
 * others: for a reader of a few settings of another process (the healthcheck), which must not fail on
 * one that process took from a flag. Throws the parser's error.
 */
export function loadSetting<K extends keyof Config>(name: K, override: unknown, env: NodeJS.ProcessEnv = process.env): Config[K] {
  const s = settings[name] as Setting<unknown>;
  const raw = isGiven(override) ? override : env[s.env];
  if (raw === undefined || raw === '') return s.default as Config[K];
  return (typeof raw === 'string' ? s.parse(raw) : raw) as Config[K];
}
