import { spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { ConnectionOptions } from 'node:tls';
import { Redis } from 'ioredis';
import { Pool } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, hasRedisServer, kill } from '../bench/redis-server.js';
import { runCli } from './helpers/cli.js';
import { ADMIN_KEY, call, serve } from './helpers/http.js';
import { testPrefix } from './helpers/redis.js';
import { loadConfig } from '../src/config.js';
import { certificateHint, createRedis, failureOf } from '../src/store/redis.js';
import { hasOpenssl, makeCertificates, makeClientCertificate, reachesRedis, startTlsRedis } from './helpers/tls.js';

/**
 * A TLS Redis (REDIS_URL) refusing serve's and the CLI's connections for `reason` (a pattern: what TLS says, and
 * the hint after it): serve answers 503 and says it in /readyz, not only ioredis' "Stream isn't writeable and
 * enableOfflineQueue options is false", and in its log line (`logged`); the CLI gives up saying it.
 */
async function refusedTls(env: Record<string, string>, reason: string, logged: RegExp): Promise<void> {
  const server = await serve(env);
  try {
    const pool = new Pool(server.url, { connections: 1 });
    const r = await call(pool, 'POST', '/v1/admin/satellites', { key: ADMIN_KEY, body: { id: 'sat-a' } });
    const ready = await call(pool, 'GET', '/readyz');
    await pool.close();
    expect(r.status).toBe(503);
    expect([ready.status, ready.body.error]).toEqual([503, expect.stringMatching(new RegExp(`^no connection to Redis \\(reconnecting\\): ${reason}$`))]);
    expect(server.output()).toMatch(logged);
  } finally {
    await server.stop();
  }
  const stats = await runCli(['stats'], env);
  expect(stats.code).toBe(1);
  expect(stats.stderr.trim()).toMatch(new RegExp(`^error: cannot reach Redis \\(${env.REDIS_URL}\\) within 10 s: ${reason}$`));
}

describe.skipIf(!hasRedisServer() || !hasOpenssl)('Redis that takes TLS only, with a certificate of a private CA', () => {
  let dir: string;
  let redis: { port: number; proc: ChildProcess } | undefined;
  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'rm-tls-redis-'));
    makeCertificates(dir);
    redis = await startTlsRedis(dir);
  });
  afterAll(async () => {
    if (redis) await kill(redis.proc, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('serve answers a redeem given REDIS_TLS_CA_FILE, and the CLI reads the same Redis', async () => {
    await reachesRedis({ REDIS_URL: `rediss://localhost:${redis!.port}`, REDIS_TLS_CA_FILE: path.join(dir, 'ca.crt'), KEY_PREFIX: testPrefix('tls') });
  });

  it('without the CA, serve answers 503, its log and /readyz name the certificate and REDIS_TLS_CA_FILE; the CLI gives up saying so', async () => {
    const env = { REDIS_URL: `rediss://localhost:${redis!.port}`, KEY_PREFIX: testPrefix('tls-noca') };
    await refusedTls(env, UNTRUSTED, /Redis unreachable \(self[- ]signed certificate in certificate chain\); retrying, requests meanwhile answer 503; .*REDIS_TLS_CA_FILE/);
  });

  it('refuses at start a REDIS_TLS_CA_FILE that is missing, in one line', async () => {
    const missing = path.join(dir, 'no-such-ca.pem');
    const run = await runCli(['stats'], { REDIS_URL: `rediss://localhost:${redis!.port}`, REDIS_TLS_CA_FILE: missing });
    expect(run.code).toBe(2);
    expect(run.stderr).toContain(`REDIS_TLS_CA_FILE: cannot read "${missing}": ENOENT: no such file or directory\n`);
  });

  it('reaches a Redis Cluster over TLS with a password through rediss:// seeds, the nodes it discovers too', async () => {
    const servers: ChildProcess[] = [];
    // a managed cluster with in-transit encryption asks for a password (an AUTH token) too
    const password = 'tls-clust3r-s3cret';
    try {
      const ports = await startTlsCluster(dir, password, servers);
      const env = { REDIS_CLUSTER_NODES: ports.map((p) => `rediss://:${password}@localhost:${p}`).join(','), REDIS_TLS_CA_FILE: path.join(dir, 'ca.crt'), KEY_PREFIX: testPrefix('tls-cluster') };
      await reachesRedis(env);

      // without the CA: the certificate, not what ioredis says of a Cluster none of whose seeds gave the slot map
      // ("Failed to refresh slots cache.", each seed's connection "Connection is closed."), nor "slots without a master"
      const noCa = { ...env, REDIS_TLS_CA_FILE: '' };
      const refused = await runCli(['stats'], noCa);
      expect(refused.stderr.trim()).toMatch(new RegExp(`^error: cannot reach Redis \\(cluster rediss://:<password>@localhost:\\d+,[^)]*\\) within 10 s: ${UNTRUSTED}$`));
      const unready = await serve(noCa);
      try {
        const pool = new Pool(unready.url, { connections: 1 });
        const ready = await call(pool, 'GET', '/readyz');
        await pool.close();
        expect([ready.status, ready.body.error]).toEqual([503, expect.stringMatching(new RegExp(`; not connected: ${UNTRUSTED}$`))]);
        expect(unready.output()).toMatch(/Redis unreachable \(self[- ]signed certificate in certificate chain\)/);
        // each node's line too: a node moved to another CA alone is said only that way
        expect(unready.output()).toMatch(/Redis node \S+ unreachable \(self[- ]signed certificate in certificate chain\); .*REDIS_TLS_CA_FILE/);
      } finally {
        await unready.stop();
      }
      expect(refused.stderr + unready.output()).not.toContain(password);
    } finally {
      await Promise.all(servers.map((p) => kill(p, 'SIGKILL')));
    }
  });
});

// a managed Redis with mutual TLS (`tls-auth-clients yes`) takes only clients with a certificate its CA signed
describe.skipIf(!hasRedisServer() || !hasOpenssl)('Redis that asks for a client certificate (tls-auth-clients yes)', () => {
  let dir: string;
  /** a CA Redis does not trust, and a client certificate it signed */
  let otherDir: string;
  let redis: { port: number; proc: ChildProcess } | undefined;
  let tls: Record<string, string>;
  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'rm-mtls-redis-'));
    otherDir = mkdtempSync(path.join(tmpdir(), 'rm-mtls-other-'));
    makeCertificates(dir);
    makeClientCertificate(dir);
    makeCertificates(otherDir);
    makeClientCertificate(otherDir);
    redis = await startTlsRedis(dir, ['--tls-auth-clients', 'yes']);
    tls = { REDIS_URL: `rediss://localhost:${redis.port}`, REDIS_TLS_CA_FILE: path.join(dir, 'ca.crt') };
  });
  afterAll(async () => {
    if (redis) await kill(redis.proc, 'SIGKILL');
    for (const d of [dir, otherDir]) rmSync(d, { recursive: true, force: true });
  });

  it('serve answers a redeem given REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE, and the CLI reads the same Redis given them as flags', async () => {
    const env = { ...tls, REDIS_TLS_CERT_FILE: path.join(dir, 'client.crt'), REDIS_TLS_KEY_FILE: path.join(dir, 'client.key'), KEY_PREFIX: testPrefix('mtls') };
    const flags = ['--redis-url', tls.REDIS_URL!, '--redis-tls-ca-file', tls.REDIS_TLS_CA_FILE!, '--redis-tls-cert-file', env.REDIS_TLS_CERT_FILE, '--redis-tls-key-file', env.REDIS_TLS_KEY_FILE, '--key-prefix', env.KEY_PREFIX];
    await reachesRedis(env, { cli: { args: flags, env: { REDIS_URL: 'redis://127.0.0.1:1' } } });
  });

  it('without a client certificate, serve answers 503, its log and /readyz say Redis asked for one and name REDIS_TLS_CERT_FILE; the CLI gives up saying so', async () => {
    await refusedTls({ ...tls, KEY_PREFIX: testPrefix('mtls-none') }, NO_CERTIFICATE, new RegExp(`Redis unreachable \\((${ALERT_OR_RESET})\\); retrying, requests meanwhile answer 503; .*REDIS_TLS_CERT_FILE`));
  });

  it('with a client certificate of a CA Redis does not trust, the CLI says Redis refused it', async () => {
    const stats = await runCli(['stats'], { ...tls, REDIS_TLS_CERT_FILE: path.join(otherDir, 'client.crt'), REDIS_TLS_KEY_FILE: path.join(otherDir, 'client.key') });
    expect(stats.code).toBe(1);
    // its CA has the name of Redis's, another key (made anew): "decrypt error"
    expect(stats.stderr.trim()).toMatch(new RegExp(`^error: cannot reach Redis \\(rediss://localhost:${redis!.port}\\) within 10 s: (tlsv1 alert decrypt error; Redis refused the client certificate of REDIS_TLS_CERT_FILE: it must be signed by a CA of Redis's tls-ca-cert-file, and valid|${RESET})$`));
  });

  it('reaches a Redis Cluster from one seed with the client certificate, the nodes the slot map names too; without it says so', async () => {
    const servers: ChildProcess[] = [];
    const password = 'mtls-clust3r-s3cret';
    try {
      const ports = await startTlsCluster(dir, password, servers, true);
      // one seed: the two other masters are reached as the slot map names them, with the same certificate
      const env = { REDIS_CLUSTER_NODES: `rediss://:${password}@localhost:${ports[0]}`, REDIS_TLS_CA_FILE: tls.REDIS_TLS_CA_FILE!, REDIS_TLS_CERT_FILE: path.join(dir, 'client.crt'), REDIS_TLS_KEY_FILE: path.join(dir, 'client.key'), KEY_PREFIX: testPrefix('mtls-cluster') };
      const { ready } = await reachesRedis(env);
      expect(ready.masters).toEqual(Object.fromEntries(ports.map((p) => [`localhost:${p}`, 'ok'])));
      const refused = await runCli(['stats'], { ...env, REDIS_TLS_CERT_FILE: '', REDIS_TLS_KEY_FILE: '' });
      expect(refused.code).toBe(1);
      expect(refused.stderr.trim()).toMatch(new RegExp(`^error: cannot reach Redis \\(cluster rediss://:<password>@localhost:\\d+\\) within 10 s: ${NO_CERTIFICATE}$`));
    } finally {
      await Promise.all(servers.map((p) => kill(p, 'SIGKILL')));
    }
  });

  it('refuses at start, in one line each, a certificate without its key, a key of another certificate or encrypted, a missing key file, and either without rediss://', async () => {
    const [cert, key, otherKey] = [path.join(dir, 'client.crt'), path.join(dir, 'client.key'), path.join(otherDir, 'client.key')];
    const missing = path.join(dir, 'no-such-client.key');
    const refused = async (env: Record<string, string>) => {
      const run = await runCli(['stats'], { ...tls, ...env });
      expect(run.code, run.stderr).toBe(2);
      return run.stderr;
    };
    expect(await refused({ REDIS_TLS_CERT_FILE: cert })).toContain('REDIS_TLS_KEY_FILE: not set, but REDIS_TLS_CERT_FILE is: a client certificate is sent with its private key; set both, or neither\n');
    expect(await refused({ REDIS_TLS_KEY_FILE: key })).toContain('REDIS_TLS_CERT_FILE: not set, but REDIS_TLS_KEY_FILE is: a private key is sent as the key of a client certificate; set both, or neither\n');
    // Node's TLS says why: "error:05800074:x509 certificate routines::key values mismatch"
    expect(await refused({ REDIS_TLS_CERT_FILE: cert, REDIS_TLS_KEY_FILE: otherKey })).toMatch(/REDIS_TLS_KEY_FILE: cannot be used with REDIS_TLS_CERT_FILE: .*key values mismatch\n/);
    expect(await refused({ REDIS_TLS_CERT_FILE: cert, REDIS_TLS_KEY_FILE: missing })).toContain(`REDIS_TLS_KEY_FILE: cannot read "${missing}": ENOENT: no such file or directory\n`);
    // no setting gives a passphrase (Node's TLS said "bad decrypt")
    const encrypted = path.join(dir, 'client-encrypted.key');
    expect(spawnSync('openssl', ['pkey', '-in', key, '-aes256', '-passout', 'pass:s3cret', '-out', encrypted]).status).toBe(0);
    expect(await refused({ REDIS_TLS_CERT_FILE: cert, REDIS_TLS_KEY_FILE: encrypted })).toContain(`REDIS_TLS_KEY_FILE: "${encrypted}" holds an encrypted private key: give it unencrypted`);
    // the key given as the certificate, the certificate as the key
    expect(await refused({ REDIS_TLS_CERT_FILE: key, REDIS_TLS_KEY_FILE: cert })).toContain(`REDIS_TLS_CERT_FILE: "${key}" holds no PEM certificate (-----BEGIN CERTIFICATE-----)\n  - REDIS_TLS_KEY_FILE: "${cert}" holds no PEM private key (-----BEGIN PRIVATE KEY-----)\n`);
    const plain = { REDIS_URL: `redis://localhost:${redis!.port}`, REDIS_TLS_CA_FILE: '', REDIS_TLS_CERT_FILE: cert, REDIS_TLS_KEY_FILE: key };
    expect(await refused(plain)).toContain('REDIS_TLS_CERT_FILE: set, but Redis is reached without TLS: use rediss:// in REDIS_URL\n');
    // a Cluster and Sentinel alike: the whole cluster's seeds, the master's or the sentinels'
    expect(() => loadConfig({}, { ...plain, REDIS_CLUSTER_NODES: 'localhost:1' })).toThrow('REDIS_TLS_CERT_FILE: set, but Redis is reached without TLS: use rediss:// in REDIS_CLUSTER_NODES');
    expect(loadConfig({}, { ...plain, REDIS_CLUSTER_NODES: 'rediss://localhost:1' }).redisTlsCertFile).toBe(cert);
    expect(loadConfig({}, { ...plain, REDIS_SENTINELS: 'rediss://localhost:1', REDIS_SENTINEL_NAME: 'm' }).redisTlsKeyFile).toBe(key);
  });
});

// by Node's code of the failure, for the alerts the servers above do not send: a Redis on TLS 1.2 (tls-protocols)
// ends the handshake with "handshake failure" where TLS 1.3's says "certificate required"; a client certificate
// of a CA unknown by name, expired, or refused otherwise
describe('the hint after a TLS connection refused for a certificate', () => {
  const hint = (code: string) => certificateHint(Object.assign(new Error(code), { code }));
  it('names the setting to change, by the alert', () => {
    const required = '; Redis asks for a client certificate (tls-auth-clients): set REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE to one its tls-ca-cert-file CA signed';
    for (const code of ['ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED', 'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE']) expect(hint(code), code).toBe(required);
    const refused = "; Redis refused the client certificate of REDIS_TLS_CERT_FILE: it must be signed by a CA of Redis's tls-ca-cert-file, and valid";
    for (const code of ['ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', 'ERR_SSL_TLSV1_ALERT_DECRYPT_ERROR', 'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE', 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED', 'ERR_SSL_TLSV1_ALERT_ACCESS_DENIED']) expect(hint(code), code).toBe(refused);
    for (const code of ['SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE']) expect(hint(code), code).toMatch(/^; Redis's TLS certificate is not signed by a CA trusted here: set REDIS_TLS_CA_FILE/);
    // a reset not marked as one right after the handshake (a Redis gone) is no certificate's doing
    for (const code of ['ECONNRESET', 'ECONNREFUSED', 'ERR_SSL_WRONG_VERSION_NUMBER']) expect(hint(code), code).toBe('');
  });

  // a Cluster node that refused the client certificate after the handshake: ioredis's ready check of its next
  // connection fails with "Stream isn't writeable", which says nothing; the node's reason said before stays
  it('keeps a node\'s reason over a later "Stream isn\'t writeable" of the same node, and says an OpenSSL error by its reason', () => {
    // never reached (port 1): only its events are used, emitted before it tries
    const cluster = createRedis({ redisUrl: '', redisClusterNodes: ['127.0.0.1:1'] }, { failFast: true });
    try {
      const refused = Object.assign(new Error('tlsv13 alert certificate required'), { code: 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED' });
      const lost = new Error("Stream isn't writeable and enableOfflineQueue options is false");
      cluster.emit('node error', refused, '127.0.0.1:1');
      cluster.emit('node error', lost, '127.0.0.1:1');
      expect(failureOf(cluster, Object.assign(new Error('Failed to refresh slots cache.'), { lastNodeError: lost }))).toBe(refused);
      // an OpenSSL error as its reason alone, its code kept for the hint
      const openssl = Object.assign(new Error('80ACB3633C7F0000:error:0A00045C:SSL routines:ssl3_read_bytes:tlsv13 alert certificate required:../deps/openssl/openssl/ssl/record/rec_layer_s3.c:1605:SSL alert number 116\n'), { reason: 'tlsv13 alert certificate required', code: refused.code });
      expect(failureOf(cluster, openssl)).toMatchObject({ message: 'tlsv13 alert certificate required', code: refused.code });
    } finally {
      cluster.disconnect();
    }
  });
});

/**
 * What a Redis with tls-auth-clients yes gets said of a client it refuses after the TLS 1.3 handshake, with the
 * hint that follows: its alert, or, as often, the reset of the connection the client was writing to, which the
 * alert was lost in
 */
const RESET = "(?:(?:read|write) ECONNRESET|write EPIPE); Redis closed the connection right after the TLS handshake, as one with tls-auth-clients does to a client without a certificate its tls-ca-cert-file CA signed: check REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE";
const ALERT_OR_RESET = 'tlsv13 alert certificate required|(?:read|write) ECONNRESET|write EPIPE';
const NO_CERTIFICATE = `(tlsv13 alert certificate required; Redis asks for a client certificate \\(tls-auth-clients\\): set REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE to one its tls-ca-cert-file CA signed|${RESET})`;

/** what Node says of a certificate no trusted CA signed, and the hint that follows it */
const UNTRUSTED = "self[- ]signed certificate in certificate chain; Redis's TLS certificate is not signed by a CA trusted here: set REDIS_TLS_CA_FILE to the CA that signed it";

/**
 * Three TLS Cluster masters with `password` (their processes put in `servers`), the slot map naming each
 * `localhost`, as a managed cluster names its nodes by host name for TLS; `clientAuth`: they take only clients
 * with a certificate of their CA (client.crt of makeClientCertificate), each other too (their server.crt).
 */
async function startTlsCluster(dir: string, password: string, servers: ChildProcess[], clientAuth = false): Promise<number[]> {
  const ports: number[] = [];
  for (let i = 0; i < 3; i++) {
    const bus = await freePort();
    const node = await startTlsRedis(dir, ['--tls-cluster', 'yes', '--cluster-enabled', 'yes', '--cluster-config-file', path.join(dir, `nodes-${bus}.conf`), '--cluster-port', String(bus), '--cluster-announce-hostname', 'localhost', '--cluster-preferred-endpoint-type', 'hostname', '--requirepass', password, '--masterauth', password, ...(clientAuth ? ['--tls-auth-clients', 'yes'] : [])]);
    servers.push(node.proc);
    ports.push(node.port);
  }
  const f = (name: string) => path.join(dir, name);
  const cert = clientAuth ? ['--cert', f('client.crt'), '--key', f('client.key')] : [];
  const create = spawnSync('redis-cli', ['--tls', '--cacert', f('ca.crt'), ...cert, '--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-yes'], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, REDISCLI_AUTH: password } });
  expect(create.status, create.stdout + create.stderr).toBe(0);
  const tls = { ca: readFileSync(f('ca.crt'), 'utf8'), ...(clientAuth ? { cert: readFileSync(f('client.crt'), 'utf8'), key: readFileSync(f('client.key'), 'utf8') } : {}) };
  await untilClusterOk(ports, tls, password);
  return ports;
}

async function untilClusterOk(ports: number[], tls: ConnectionOptions, password: string): Promise<void> {
  const clients = ports.map((port) => new Redis({ host: 'localhost', port, password, tls, lazyConnect: true, maxRetriesPerRequest: 1 }));
  try {
    for (const end = Date.now() + 30_000; ; ) {
      const infos = await Promise.all(clients.map((c) => c.cluster('INFO') as Promise<string>));
      if (infos.every((i) => /cluster_state:ok/.test(i) && /cluster_known_nodes:3\b/.test(i))) return;
      if (Date.now() > end) throw new Error(`Redis Cluster not ok within 30 s:\n${infos.join('\n---\n')}`);
      await new Promise((s) => setTimeout(s, 100));
    }
  } finally {
    for (const c of clients) c.disconnect();
  }
}
