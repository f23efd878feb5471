import { spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, hasRedisServer, kill } from '../bench/redis-server.js';
import { runCli } from './helpers/cli.js';
import { serve } from './helpers/http.js';
import { testPrefix } from './helpers/redis.js';
import { hasOpenssl, makeCertificates, redeemOne, startTlsRedis } from './helpers/tls.js';

/** initdb of the Postgres installed (pg_config names its binaries), else undefined */
function postgresBin(): string | undefined {
  const r = spawnSync('pg_config', ['--bindir'], { encoding: 'utf8' });
  const dirs = [r.status === 0 ? r.stdout.trim() : '', '/usr/lib/postgresql/15/bin'];
  return dirs.find((d) => d && existsSync(path.join(d, 'initdb')));
}
const PG_BIN = postgresBin();
// initdb refuses to run as root: then the server runs as the postgres user
const asRoot = process.getuid?.() === 0;
const pgUser = asRoot ? spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' }) : undefined;
const canRunPostgres = PG_BIN !== undefined && (!asRoot || pgUser!.status === 0);
if (!canRunPostgres) console.warn('skipping the Postgres TLS test: no initdb found (pg_config --bindir, /usr/lib/postgresql/15/bin), or running as root without a postgres user');

describe.skipIf(!canRunPostgres || !hasRedisServer() || !hasOpenssl)('Postgres that takes TLS only (sslmode=verify-full, sslrootcert)', () => {
  let dir: string;
  let pgPort: number;
  let redis: { port: number; proc: ChildProcess } | undefined;
  let started = false;
  const run = (cmd: string, args: string[]) => {
    const [file, argv] = asRoot ? ['runuser', ['-u', 'postgres', '--', path.join(PG_BIN!, cmd), ...args]] : [path.join(PG_BIN!, cmd), args];
    const r = spawnSync(file, argv, { encoding: 'utf8', timeout: 60_000 });
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stdout}${r.stderr}`);
  };

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'rm-tls-pg-'));
    makeCertificates(dir);
    redis = await startTlsRedis(dir);
    if (asRoot) {
      const uid = Number(pgUser!.stdout.trim());
      for (const f of ['', 'server.crt', 'server.key']) chownSync(path.join(dir, f), uid, -1);
    }
    chmodSync(path.join(dir, 'server.key'), 0o600);
    run('initdb', ['-D', path.join(dir, 'data'), '-A', 'trust', '-U', 'postgres']);
    // connections over TCP without TLS are refused: whatever reaches the database came over TLS
    writeFileSync(path.join(dir, 'data', 'pg_hba.conf'), 'local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n');
    pgPort = await freePort();
    const opts = `-p ${pgPort} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file=${path.join(dir, 'server.crt')} -c ssl_key_file=${path.join(dir, 'server.key')} -k ${dir}`;
    started = true;
    run('pg_ctl', ['-D', path.join(dir, 'data'), '-l', path.join(dir, 'postgres.log'), '-w', '-o', opts, 'start']);
  });
  afterAll(async () => {
    try {
      if (started) run('pg_ctl', ['-D', path.join(dir, 'data'), '-m', 'immediate', '-w', 'stop']);
    } finally {
      if (redis) await kill(redis.proc, 'SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('serve\'s snapshot writer writes a redeem through TLS to both, and verify reads both', async () => {
    const ca = path.join(dir, 'ca.crt');
    const dbUrl = `postgres://postgres:pg-secret-42@localhost:${pgPort}/rm_tls?sslmode=verify-full&sslrootcert=${encodeURIComponent(ca)}`;
    // the same URL without TLS is refused: the rows below came over TLS
    const plain = new pg.Client({ connectionString: `postgres://postgres@localhost:${pgPort}/postgres?sslmode=disable` });
    await expect(plain.connect()).rejects.toThrow(/no encryption/);
    await plain.end().catch(() => {});

    const env = { REDIS_URL: `rediss://localhost:${redis!.port}`, REDIS_TLS_CA_FILE: ca, KEY_PREFIX: testPrefix('tls-pg'), DATABASE_URL: dbUrl, SNAPSHOT: 'true' };
    const server = await serve(env);
    let token: string;
    try {
      const r = await redeemOne(server);
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      token = r.token;
      // the writer makes the database and its tables once it holds the lease: until then the read fails
      const stateNow = async () => {
        const db = new pg.Client({ connectionString: dbUrl });
        try {
          await db.connect();
          const ssl = (await db.query<{ ssl: boolean }>('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')).rows[0]!.ssl;
          expect(ssl).toBe(true);
          return (await db.query<{ state: string }>('SELECT state FROM tokens WHERE token = $1', [token])).rows[0]?.state;
        } catch (err) {
          return (err as Error).message;
        } finally {
          await db.end().catch(() => {});
        }
      };
      let state = await stateNow();
      for (const end = Date.now() + 30_000; state !== 'redeemed' && Date.now() < end; state = await stateNow()) await new Promise((s) => setTimeout(s, 200));
      expect(state, server.output()).toBe('redeemed');
    } finally {
      await server.stop();
    }
    expect(server.output()).not.toContain('pg-secret-42');
    const verify = await runCli(['verify'], env);
    expect(verify.stderr).toBe('');
    expect(verify.code).toBe(0);

    // without the CA, node-postgres checks the certificate against the system's CAs: refused, with the password kept out
    const noCa = await runCli(['verify'], { ...env, DATABASE_URL: `postgres://postgres:pg-secret-42@localhost:${pgPort}/rm_tls?sslmode=verify-full` });
    expect(noCa.code).toBe(1);
    // one line naming Postgres and which one, then the driver's reason: "unable to verify the first certificate" alone named neither
    expect(noCa.stderr).toMatch(new RegExp(`^error: cannot open the Postgres snapshot \\(localhost:${pgPort}/rm_tls\\): .*certificate.*\n$`));
    expect(noCa.stderr).not.toContain('pg-secret-42');
  });
});
