import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { Pool } from 'undici';
import { expect } from 'vitest';
import { freePort, reaped, waitForOutput } from '../../bench/redis-server.js';
import { runCli } from './cli.js';
import { ADMIN_KEY, call, serve, type Served } from './http.js';

/**
 * A managed Redis or Postgres that asks for TLS with a certificate of a private CA (cloud Redis with in-transit
 * encryption, Postgres with sslmode=verify-full), played by private servers that take TLS connections only,
 * with a throw-away CA. The certificate names `localhost` only (no IP address), as a managed service's names
 * its host: what checks it by the address the name resolves to is refused.
 */

export const hasOpenssl = spawnSync('openssl', ['version']).status === 0;

function openssl(args: string[], cwd: string): void {
  const r = spawnSync('openssl', args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
}

/** ca.crt, and server.crt / server.key for localhost signed by it, in `dir` */
export function makeCertificates(dir: string): void {
  openssl(['req', '-x509', '-new', '-nodes', '-newkey', 'rsa:2048', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=test private CA'], dir);
  openssl(['req', '-new', '-nodes', '-newkey', 'rsa:2048', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost'], dir);
  writeFileSync(path.join(dir, 'san.cnf'), 'subjectAltName=DNS:localhost\n');
  openssl(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.crt', '-days', '2', '-extfile', 'san.cnf'], dir);
}

/**
 * client.crt / client.key in `dir`, a client certificate signed by the CA of `caDir` (makeCertificates): what a
 * Redis with `--tls-auth-clients yes` asks for.
 */
export function makeClientCertificate(dir: string, caDir = dir): void {
  const ca = (name: string) => path.join(caDir, name);
  openssl(['req', '-new', '-nodes', '-newkey', 'rsa:2048', '-keyout', 'client.key', '-out', 'client.csr', '-subj', '/CN=referral-manager'], dir);
  openssl(['x509', '-req', '-in', 'client.csr', '-CA', ca('ca.crt'), '-CAkey', ca('ca.key'), '-CAcreateserial', '-out', 'client.crt', '-days', '2'], dir);
}

/** redis-server taking TLS connections only (`--port 0`), clients without certificates (`extra` may say otherwise: the last of an option wins) */
function tlsArgs(dir: string): string[] {
  const f = (name: string) => path.join(dir, name);
  return ['--port', '0', '--bind', '127.0.0.1', '--tls-cert-file', f('server.crt'), '--tls-key-file', f('server.key'), '--tls-ca-cert-file', f('ca.crt'), '--tls-auth-clients', 'no', '--save', '', '--appendonly', 'no'];
}

export async function startTlsRedis(dir: string, extra: string[] = []): Promise<{ port: number; proc: ChildProcess }> {
  const port = await freePort();
  const proc = reaped(spawn('redis-server', [...tlsArgs(dir), '--tls-port', String(port), '--dir', dir, ...extra], { stdio: ['ignore', 'pipe', 'pipe'] }));
  await waitForOutput(proc, /Ready to accept connections/, `redis-server --tls-port ${port}`);
  return { port, proc };
}

/** Two satellites (the owner, the redeemer), a token of the owner's, and its redeem by the other: the reply. */
export async function redeemOne(server: Served): Promise<{ status: number; body: any; token: string }> {
  const pool = new Pool(server.url, { connections: 2 });
  try {
    const owner = await call(pool, 'POST', '/v1/admin/satellites', { key: ADMIN_KEY, body: { id: 'sat-a' } });
    expect(owner.status, JSON.stringify(owner.body)).toBe(201);
    const other = await call(pool, 'POST', '/v1/admin/satellites', { key: ADMIN_KEY, body: { id: 'sat-b' } });
    const gen = await call(pool, 'POST', '/v1/admin/tokens/generate', { key: ADMIN_KEY, body: { satelliteId: 'sat-a', userIds: ['alice'], perUser: 1 } });
    expect(gen.status).toBe(200);
    const token = gen.body.tokens[0].token as string;
    const r = await call(pool, 'POST', '/v1/tokens/redeem', { key: other.body.apiKey, body: { token, userId: 'bob' } });
    return { ...r, token };
  } finally {
    await pool.close();
  }
}

/**
 * A way of reaching Redis (TLS, client certificates, credentials, ACLs, Sentinel, IPv6) working end to end: serve
 * started with `env` redeems a token (redeemOne) and is ready, nothing like `quiet` in its log; the CLI, given
 * `env` (or `cli`'s flags and environment), counts that redemption. /readyz's body and serve's log, for the
 * caller's own checks.
 */
export async function reachesRedis(
  env: Record<string, string>,
  opts: { quiet?: RegExp; cli?: { args: string[]; env: Record<string, string> } } = {},
): Promise<{ ready: any; output: string }> {
  const server = await serve(env);
  let ready;
  try {
    const r = await redeemOne(server);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body).toMatchObject({ token: r.token, state: 'redeemed', ownerSatelliteId: 'sat-a' });
    const pool = new Pool(server.url, { connections: 1 });
    ready = await call(pool, 'GET', '/readyz');
    await pool.close();
    expect(ready.status, JSON.stringify(ready.body)).toBe(200);
  } finally {
    await server.stop();
  }
  // every connection of serve got through: the primary's and the subscriptions' too
  expect(server.output()).not.toMatch(opts.quiet ?? /unreachable|certificate/);
  const stats = await runCli([...(opts.cli?.args ?? []), 'stats', '--json'], opts.cli?.env ?? env);
  expect(stats.stderr).toBe('');
  expect(stats.code).toBe(0);
  expect(JSON.parse(stats.stdout).satellites['sat-a'].redeemed).toBe(1);
  return { ready: ready.body, output: server.output() };
}
