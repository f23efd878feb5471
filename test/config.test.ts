import { describe, expect, it, vi } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConfigError, loadConfig, loadSetting, parseSeed, settings } from '../src/config.js';
import { hasOpenssl } from './helpers/tls.js';

/** The one config module's validation: what an operator reads when a setting is refused. */
describe('loadConfig', () => {
  const problems = (env: Record<string, string>): string[] => {
    try {
      loadConfig({}, env);
    } catch (err) {
      if (err instanceof ConfigError) return err.problems;
      throw err;
    }
    return [];
  };

  it('defaults WORKERS to one per core, but never past the most it accepts', async () => {
    // the default is read once, when the module loads: load it afresh on hosts of 1 and of 300 cores
    const load = async (cores: number): Promise<number> => {
      const spy = vi.spyOn(os, 'availableParallelism').mockReturnValue(cores);
      try {
        vi.resetModules();
        const fresh = await import('../src/config.js');
        return fresh.loadConfig({}, {}).workers;
      } finally {
        spy.mockRestore();
        vi.resetModules();
      }
    };
    expect(await load(1)).toBe(1);
    expect(await load(300)).toBe(256);
    expect(problems({ WORKERS: '257' })).toEqual(['WORKERS: expected 1..256, got 257']);
  });

  it('names an open-ended integer range by its lower bound, not by Number.MAX_SAFE_INTEGER', () => {
    expect(problems({ RATE_LIMIT_FAILURES: '0', RATE_LIMIT_WINDOW_MS: '5', SNAPSHOT_TEST_CRASH_AFTER_COMMIT: '-1' })).toEqual([
      'RATE_LIMIT_FAILURES: expected an integer >= 1, got 0',
      'RATE_LIMIT_WINDOW_MS: expected an integer >= 100, got 5',
      'SNAPSHOT_TEST_CRASH_AFTER_COMMIT: expected an integer >= 0, got -1',
    ]);
    // a password in a URL that does not parse is not echoed into the log
    expect(problems({ DATABASE_URL: 'postgres://u:s3cr3t@[bad/db' })).toEqual(['DATABASE_URL: not a URL: "postgres://<credentials>@[bad/db"']);
    // a password holding a / # or ? (unencoded, as a generated one may) ended the URL's authority early: it was
    // echoed whole
    expect(problems({ REDIS_URL: 'redis://:pa#s3cr3t@127.0.0.1:6379', DATABASE_URL: 'postgres://u:ab/s3cr3t@host/db' })).toEqual([
      'REDIS_URL: not a URL: "redis://<credentials>@127.0.0.1:6379"',
      'DATABASE_URL: not a URL: "postgres://<credentials>@host/db"',
    ]);
    expect(problems({ RATE_LIMIT_FAILURES: '99999999999999999999' })).toEqual(['RATE_LIMIT_FAILURES: expected an integer >= 1, got 99999999999999999999']);
  });

  it('takes OUTBOUND_KEY_SECRET as 64 hex digits, a list while rotating, and never echoes a refused one', () => {
    const [a, b] = ['AB'.repeat(32), 'cd'.repeat(32)];
    expect(loadConfig({}, { OUTBOUND_KEY_SECRET: ` ${a}, ${b} ` }).outboundKeySecrets).toEqual([a.toLowerCase(), b]);
    expect(loadConfig({}, {}).outboundKeySecrets).toEqual([]);
    expect(problems({ OUTBOUND_KEY_SECRET: `${a},not-hex-s3cret` })).toEqual([
      'OUTBOUND_KEY_SECRET: secret 2 of 2: expected 64 hex digits (32 bytes: openssl rand -hex 32), got 14 characters',
    ]);
  });

  it('takes LOG_FORMAT and LOG_LEVEL in any case, and names what it takes when refusing one', () => {
    expect(loadConfig({}, {})).toMatchObject({ logFormat: 'text', logLevel: 'info' });
    expect(loadConfig({}, { LOG_FORMAT: ' JSON ', LOG_LEVEL: 'Warn' })).toMatchObject({ logFormat: 'json', logLevel: 'warn' });
    expect(loadConfig({ logLevel: 'debug' }, { LOG_LEVEL: 'error' }).logLevel).toBe('debug');
    expect(problems({ LOG_FORMAT: 'logfmt', LOG_LEVEL: 'trace' })).toEqual([
      'LOG_FORMAT: expected text or json, got "logfmt"',
      'LOG_LEVEL: expected debug, info, warn or error, got "trace"',
    ]);
  });

  it('refuses a default lease longer than the longest, and a HOST that is neither an address nor a host name', () => {
    expect(problems({ DEFAULT_LEASE_MS: '7200000', MAX_LEASE_MS: '60000', HOST: 'no such host!' })).toEqual([
      'HOST: expected an IP address or a host name, got "no such host!"',
      'DEFAULT_LEASE_MS: 7200000 is longer than MAX_LEASE_MS (60000): a reserve without leaseMs would be held past the longest lease',
    ]);
    for (const host of ['0.0.0.0', '::', 'fd00::5', 'localhost', 'rm-1.internal.example.net']) expect(loadConfig({}, { HOST: host }).host).toBe(host);
    expect(loadConfig({}, { DEFAULT_LEASE_MS: '60000', MAX_LEASE_MS: '60000' }).defaultLeaseMs).toBe(60000);
  });

  // HOST=[::] passed the check, then serve failed to start: "cannot listen on [::] ... getaddrinfo ENOTFOUND [::]"
  it('takes an IPv6 HOST in brackets as the address it encloses, which is what a listen takes', () => {
    expect(loadConfig({}, { HOST: '[::]' }).host).toBe('::');
    expect(loadConfig({ host: '[fd00::5]' }, {}).host).toBe('fd00::5');
  });

  // a change can wait three REDIS_WAIT_MS (queued behind one WAIT, then the one in flight, then the next, which
  // it shares): past the request deadline it was answered "Redis unavailable"
  it('refuses a REDIS_WAIT_MS of a third of the request deadline or more while the replica wait is on', () => {
    expect(problems({ REDIS_WAIT_REPLICAS: '1', REDIS_WAIT_MS: '2000' })).toEqual([
      'REDIS_WAIT_MS: 2000 is a third of REQUEST_TIMEOUT_MS (5000) or more: a change can wait three REDIS_WAIT_MS, and the request deadline would answer it as "Redis unavailable"',
    ]);
    expect(loadConfig({}, { REDIS_WAIT_REPLICAS: '1', REDIS_WAIT_MS: '1600' }).redisWaitMs).toBe(1600);
    expect(loadConfig({}, { REDIS_WAIT_REPLICAS: '1', REDIS_WAIT_MS: '2000', REQUEST_TIMEOUT_MS: '6001' }).redisWaitMs).toBe(2000);
    expect(loadConfig({}, { REDIS_WAIT_MS: '3000' }).redisWaitMs).toBe(3000);
  });

  it('keeps closed ranges as min..max', () => {
    expect(problems({ PORT: '99999', WORKERS: '0' })).toEqual(['PORT: expected 0..65535, got 99999', 'WORKERS: expected 1..256, got 0']);
  });

  // a key read from a secret file kept its trailing newline: accepted, it matched no Authorization header
  // (a header value cannot end in one), so every admin call was 401 "unknown API key" with nothing refused
  it('takes ADMIN_KEY and METRICS_KEY without the blanks around them, and refuses one with a blank inside', () => {
    const key = 'k'.repeat(40);
    expect(loadConfig({}, { ADMIN_KEY: `${key}\n`, METRICS_KEY: ` ${key}\t` })).toMatchObject({ adminKey: key, metricsKey: key });
    expect(problems({ ADMIN_KEY: `${key} ${key}`, METRICS_KEY: '\n' })).toEqual([
      'ADMIN_KEY: must not contain whitespace (a Bearer header cannot carry it)',
      'METRICS_KEY: must be at least 32 characters (or empty to leave /metrics open)',
    ]);
  });

  // SNAPSHOT=" " turned the writer off (blank read as false) while SNAPSHOT="" keeps the default, on
  it('refuses a blank SNAPSHOT rather than reading it as false', () => {
    expect(problems({ SNAPSHOT: ' ' })).toEqual(['SNAPSHOT: expected true/false, got " "']);
    expect(loadConfig({}, { SNAPSHOT: ' off ' }).snapshot).toBe(false);
  });

  // URL accepts the blanks around a URL, the Redis and Postgres clients did not: REDIS_URL=" redis://..."
  // passed the check and every command then failed with a bare "Invalid URL"
  it('takes REDIS_URL and DATABASE_URL without the blanks around them', () => {
    const c = loadConfig({}, { REDIS_URL: ' redis://127.0.0.1:6379/0\n', DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/x ' });
    expect(c).toMatchObject({ redisUrl: 'redis://127.0.0.1:6379/0', databaseUrl: 'postgres://postgres@127.0.0.1:5432/x' });
  });

  // TLS to Redis with a private CA: the CA file is read at start, and refused where no TLS connection would use it
  it('takes REDIS_TLS_CA_FILE as a readable PEM file, only for a Redis reached by rediss://', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'rm-config-ca-'));
    try {
      const ca = path.join(dir, 'ca.pem');
      writeFileSync(ca, '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
      writeFileSync(path.join(dir, 'key.pem'), '-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n');
      expect(loadConfig({}, { REDIS_URL: 'rediss://redis.example:6380', REDIS_TLS_CA_FILE: ` ${ca}\n` }).redisTlsCaFile).toBe(ca);
      expect(loadConfig({}, { REDIS_CLUSTER_NODES: 'rediss://a.example:6379, rediss://b.example:6379', REDIS_TLS_CA_FILE: ca }).redisClusterNodes).toEqual(['rediss://a.example:6379', 'rediss://b.example:6379']);
      expect(problems({ REDIS_URL: 'rediss://redis.example:6380', REDIS_TLS_CA_FILE: path.join(dir, 'key.pem') })).toEqual([`REDIS_TLS_CA_FILE: "${path.join(dir, 'key.pem')}" holds no PEM certificate (-----BEGIN CERTIFICATE-----)`]);
      expect(problems({ REDIS_TLS_CA_FILE: ca })).toEqual(['REDIS_TLS_CA_FILE: set, but Redis is reached without TLS: use rediss:// in REDIS_URL']);
      // REDIS_URL is not used with a Cluster: its rediss:// does not count
      expect(problems({ REDIS_URL: 'rediss://redis.example:6380', REDIS_CLUSTER_NODES: 'a.example:6379', REDIS_TLS_CA_FILE: ca })).toEqual(['REDIS_TLS_CA_FILE: set, but Redis is reached without TLS: use rediss:// in REDIS_CLUSTER_NODES']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses REDIS_CLUSTER_NODES with TLS on some seeds only', () => {
    expect(problems({ REDIS_CLUSTER_NODES: 'rediss://a.example:6379,b.example:6379' })).toEqual(['REDIS_CLUSTER_NODES: expected every seed with rediss:// or none: TLS is one setting of the whole cluster']);
    expect(loadConfig({}, { REDIS_CLUSTER_NODES: 'a.example:6379,b.example:6379' }).redisClusterNodes).toEqual(['a.example:6379', 'b.example:6379']);
  });

  // a managed cluster's password or ACL user, written as REDIS_URL writes it, and one for the whole cluster
  it('takes a user and password in REDIS_CLUSTER_NODES, the same on every seed, and never echoes them', () => {
    const seeds = ['rediss://:s3cr%40t@a.example:6379', 'rediss://:s3cr%40t@b.example:6379'];
    expect(loadConfig({}, { REDIS_CLUSTER_NODES: seeds.join(', ') }).redisClusterNodes).toEqual(seeds);
    expect(parseSeed(seeds[0]!)).toEqual({ host: 'a.example', port: 6379, tls: true, username: '', password: 's3cr@t' });
    expect(parseSeed('redis://app:pw@10.0.0.1:7000')).toEqual({ host: '10.0.0.1', port: 7000, tls: false, username: 'app', password: 'pw' });
    expect(parseSeed('10.0.0.1:7000')).toEqual({ host: '10.0.0.1', port: 7000, tls: false, username: '', password: '' });
    const refused = {
      'redis://:s3cret-a@a.example:6379,redis://:s3cret-b@b.example:6379': 'expected the same user and password on every seed, or on none: every node of the cluster is reached with one (the nodes the slot map names too)',
      'redis://:s3cret@a.example:6379,b.example:6379': 'expected the same user and password on every seed, or on none: every node of the cluster is reached with one (the nodes the slot map names too)',
      'redis://app@a.example:6379': 'expected [redis[s]://[[user:]password@]]host:port (a user without a password), got "redis://<credentials>@a.example:6379"',
      'redis://:s3cret@a.example:6379/0': 'expected [redis[s]://[[user:]password@]]host:port, got "redis://<credentials>@a.example:6379/0"',
      'redis://:s3c%zzret@a.example:6379': 'expected [redis[s]://[[user:]password@]]host:port (the user and password percent-encoded), got "redis://<credentials>@a.example:6379"',
      // unencoded, a / # or ? ends the password early, and a comma cuts the seed in two: neither piece is shown
      'redis://:s3/cret@a.example:6379': 'expected [redis[s]://[[user:]password@]]host:port, got "redis://<credentials>@a.example:6379"',
      'redis://:s3,cret@a.example:6379': 'expected [redis[s]://[[user:]password@]]host:port, got a seed of a value with credentials (not shown; a comma in a password is written %2C)',
      'http://a.example:6379': 'expected [redis[s]://[[user:]password@]]host:port, got "http://a.example:6379"',
      // without a port the seed was taken as port 0, and the cluster failed only at its first connect
      'redis://:s3cret@a.example': 'expected [redis[s]://[[user:]password@]]host:port, got "redis://<credentials>@a.example"',
    };
    for (const [value, problem] of Object.entries(refused)) expect(problems({ REDIS_CLUSTER_NODES: value })).toEqual([`REDIS_CLUSTER_NODES: ${problem}`]);
  });

  // [::1]:6379 was refused ("expected ...host:port"), and redis://[::1]:6379 too: no IPv6 seed could be written
  it('takes an IPv6 address in brackets in REDIS_CLUSTER_NODES and REDIS_SENTINELS seeds, as the address alone', () => {
    expect(parseSeed('[::1]:7000')).toEqual({ host: '::1', port: 7000, tls: false, username: '', password: '' });
    expect(parseSeed('rediss://app:pw@[fd00::5]:6380')).toEqual({ host: 'fd00::5', port: 6380, tls: true, username: 'app', password: 'pw' });
    expect(loadConfig({}, { REDIS_CLUSTER_NODES: '[::1]:7000, redis://[::1]:7001' }).redisClusterNodes).toEqual(['[::1]:7000', 'redis://[::1]:7001']);
    expect(loadConfig({}, { REDIS_SENTINELS: '[::1]:26379', REDIS_SENTINEL_NAME: 'm' }).redisSentinels).toEqual(['[::1]:26379']);
    expect(problems({ REDIS_CLUSTER_NODES: '::1:7000' })).toEqual(['REDIS_CLUSTER_NODES: expected [redis[s]://[[user:]password@]]host:port (an IPv6 address in brackets: [::1]:7000), got "::1:7000"']);
    // brackets hold an IPv6 address only, and a port follows them
    for (const seed of ['[redis.example]:7000', '[127.0.0.1]:7000', '[::1]', 'redis://[::1]']) expect(problems({ REDIS_CLUSTER_NODES: seed })).toEqual([`REDIS_CLUSTER_NODES: expected [redis[s]://[[user:]password@]]host:port, got "${seed}"`]);
  });

  // Sentinel: the seeds are the sentinels (their own TLS and password), the master group name goes with them
  it('takes REDIS_SENTINELS with REDIS_SENTINEL_NAME, and refuses either alone, or with REDIS_CLUSTER_NODES', () => {
    const seeds = ['rediss://:s3nt%40@s1.example:26379', 'rediss://:s3nt%40@s2.example:26379'];
    expect(loadConfig({}, { REDIS_SENTINELS: seeds.join(', '), REDIS_SENTINEL_NAME: ' mymaster ' })).toMatchObject({ redisSentinels: seeds, redisSentinelName: 'mymaster' });
    expect(problems({ REDIS_SENTINELS: 's1.example:26379' })).toEqual(['REDIS_SENTINEL_NAME: not set, but REDIS_SENTINELS is: set it to the master name the sentinels monitor (`sentinel monitor <name> ...`)']);
    expect(problems({ REDIS_SENTINEL_NAME: 'mymaster' })).toEqual(['REDIS_SENTINEL_NAME: set, but REDIS_SENTINELS is not: set it to the sentinels\' host:port, or clear REDIS_SENTINEL_NAME']);
    expect(problems({ REDIS_SENTINELS: 's1.example:26379', REDIS_SENTINEL_NAME: 'mymaster', REDIS_CLUSTER_NODES: 'a.example:6379' })).toEqual(['REDIS_SENTINELS: set together with REDIS_CLUSTER_NODES: Redis is reached through Sentinel or as a Cluster, not both; clear one']);
    expect(problems({ REDIS_SENTINELS: 's1.example:26379', REDIS_SENTINEL_NAME: 'my master' })).toEqual(['REDIS_SENTINEL_NAME: expected the master name of the Sentinel configuration (`sentinel monitor <name> ...`, printable, no blanks), got "my master"']);
    expect(problems({ REDIS_SENTINELS: 'rediss://s1.example:26379,s2.example:26379', REDIS_SENTINEL_NAME: 'm' })).toEqual(['REDIS_SENTINELS: expected every seed with rediss:// or none: TLS is one setting of all the sentinels']);
    expect(problems({ REDIS_SENTINELS: 'redis://:a@s1.example:26379,s2.example:26379', REDIS_SENTINEL_NAME: 'm' })).toEqual(['REDIS_SENTINELS: expected the same user and password on every seed, or on none: every sentinel is reached with one (the ones the sentinels name too)']);
    expect(problems({ REDIS_SENTINELS: 'redis://:s3/cret@s1.example:26379', REDIS_SENTINEL_NAME: 'm' })).toEqual(['REDIS_SENTINELS: expected [redis[s]://[[user:]password@]]host:port, got "redis://<credentials>@s1.example:26379"']);
  });

  // with Sentinel, TLS may be the master's (REDIS_URL) or the sentinels' (their seeds): a CA serves either
  it('takes REDIS_TLS_CA_FILE with Sentinel when the master or the sentinels are reached by rediss://', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'rm-config-ca-'));
    try {
      const ca = path.join(dir, 'ca.pem');
      writeFileSync(ca, '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
      const sentinel = { REDIS_SENTINEL_NAME: 'm', REDIS_TLS_CA_FILE: ca };
      expect(problems({ ...sentinel, REDIS_SENTINELS: 'rediss://s1.example:26379' })).toEqual([]);
      expect(problems({ ...sentinel, REDIS_SENTINELS: 's1.example:26379', REDIS_URL: 'rediss://:pw@ignored.example:6380' })).toEqual([]);
      expect(problems({ ...sentinel, REDIS_SENTINELS: 's1.example:26379' })).toEqual(['REDIS_TLS_CA_FILE: set, but Redis is reached without TLS: use rediss:// in REDIS_URL (the master) or REDIS_SENTINELS']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  // a key as `openssl ec` or `openssl genrsa -traditional` writes it: its own BEGIN line, and when encrypted, the
  // encryption in headers below it (a PKCS#8 key says ENCRYPTED in its BEGIN line; test/redis-tls.test.ts)
  it.skipIf(!hasOpenssl)('takes REDIS_TLS_KEY_FILE in SEC1 form, and refuses one encrypted in the traditional form', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'rm-config-key-'));
    try {
      const openssl = (...args: string[]) => expect(spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' }).status).toBe(0);
      openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'pkcs8.key', '-out', 'client.crt', '-days', '1', '-subj', '/CN=client');
      openssl('ec', '-in', 'pkcs8.key', '-out', 'sec1.key');
      openssl('ec', '-in', 'pkcs8.key', '-aes256', '-passout', 'pass:s3cret', '-out', 'encrypted.key');
      const [sec1, encrypted] = [path.join(dir, 'sec1.key'), path.join(dir, 'encrypted.key')];
      expect(readFileSync(sec1, 'utf8')).toMatch(/^-----BEGIN EC PRIVATE KEY-----\n/);
      expect(readFileSync(encrypted, 'utf8')).toMatch(/^-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n/);
      const env = { REDIS_URL: 'rediss://localhost:6380', REDIS_TLS_CERT_FILE: path.join(dir, 'client.crt') };
      expect(problems({ ...env, REDIS_TLS_KEY_FILE: sec1 })).toEqual([]);
      expect(problems({ ...env, REDIS_TLS_KEY_FILE: encrypted })).toEqual([`REDIS_TLS_KEY_FILE: "${encrypted}" holds an encrypted private key: give it unencrypted (\`openssl pkey -in ${encrypted} -out <new file>\` asks for its passphrase)`]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  // what the README promises a script that passes "$PORT" with PORT unset
  it('takes a variable set to the empty string as not set: its default applies', () => {
    const defaults = loadConfig({}, {});
    const empty = loadConfig({}, { REDIS_URL: '', DATABASE_URL: '', KEY_GRACE_MS: '', ADMIN_KEY: '', PORT: '', KEY_PREFIX: '' });
    expect(empty).toEqual(defaults);
    expect(empty.adminKey).toBe('');
  });

  // `--key-prefix "$PREFIX"` with PREFIX unset under KEY_PREFIX=staging took the default prefix "rm": another deployment's keys
  it('takes a flag set to the empty string as not given: the env applies, else the default', () => {
    const c = loadConfig({ port: '', workers: '', keyPrefix: '', host: '' }, { PORT: '9', KEY_PREFIX: 'staging', HOST: '127.0.0.1' });
    expect(c).toMatchObject({ port: 9, keyPrefix: 'staging', host: '127.0.0.1', workers: loadConfig({}, {}).workers });
    expect(loadSetting('port', '', { PORT: '9' })).toBe(9);
    expect(() => loadConfig({ port: '' }, { PORT: 'x' }, { port: '--port' })).toThrow(/PORT: expected an integer/);
  });
});

// config.ts says the README's table is this list; two rows had drifted apart (rate limit, attempts)
describe('the README configuration table', () => {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  const section = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('## HTTP API'));
  /** its rows by env name: the default column and the meaning */
  const rows = new Map(section.split('\n').filter((l) => /^\| `[A-Z][A-Z0-9_]*` \|/.test(l)).map((l) => {
    const [env, def, ...meaning] = l.slice(2).replace(/ \|$/, '').split(' | ');
    return [env!.replace(/`/g, ''), { def: def!, meaning: meaning.join(' | ') }] as const;
  }));

  it('has one row per setting whose meaning is the setting\'s doc string', () => {
    for (const s of Object.values(settings)) {
      const row = rows.get(s.env);
      expect(row, s.env).toBeDefined();
      expect(row!.meaning, s.env).toBe(s.doc);
    }
  });

  // the default column is what an operator leaves unset on the strength of: a default changed in
  // config.ts alone, or a row left behind for a setting gone, misleads without failing anything
  it('gives each setting\'s default, and has no row for an env no setting reads', () => {
    const shown = (name: string, v: unknown): string =>
      // the one default taken from the machine (os.availableParallelism())
      name === 'workers' ? 'one per core' : v === '' || (Array.isArray(v) && v.length === 0) ? '(empty)' : `\`${String(v)}\``;
    expect(Object.fromEntries([...rows].map(([env, row]) => [env, row.def]))).toEqual(Object.fromEntries(Object.entries(settings).map(([name, s]) => [s.env, shown(name, s.default)])));
  });
});
