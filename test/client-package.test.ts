import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Pool } from 'undici';
import { afterAll, describe, expect, it } from 'vitest';
import { ADMIN_KEY, call, serve } from './helpers/http.js';
import { dropSharedPrefixes, testPrefix } from './helpers/redis.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const SERVER_ONLY = ['ioredis', 'pg', 'uWebSockets.js', 'prom-client', 'commander', 'ajv'];
const prefix = testPrefix('clientpkg');
const dir = mkdtempSync(path.join(tmpdir(), 'rv-client-pkg-'));

afterAll(async () => {
  rmSync(dir, { recursive: true, force: true });
  await dropSharedPrefixes(prefix);
});

// a satellite installing the client got the whole server: uWS's native binaries, ioredis, pg, prom-client
describe('the satellite client package (packages/client)', () => {
  it('packs and installs alone, without the server\'s dependencies, and redeems against a running manager', async () => {
    const npm = (args: string[], cwd: string) => execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const tarball = npm(['pack', '--silent', '--pack-destination', dir], path.join(ROOT, 'packages/client')).trim().split('\n').pop()!;
    const app = path.join(dir, 'satellite');
    mkdirSync(app);
    writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'satellite', private: true, type: 'module' }));
    npm(['install', path.join(dir, tarball), '--prefer-offline', '--no-audit', '--no-fund', '--ignore-scripts'], app);
    const installed = readdirSync(path.join(app, 'node_modules'));
    expect(installed).toContain('referral-manager-client');
    for (const dep of SERVER_ONLY) expect(installed, dep).not.toContain(dep);
    expect(existsSync(path.join(app, 'node_modules/referral-manager-client/dist/client/index.d.ts'))).toBe(true);

    const server = await serve({ KEY_PREFIX: prefix });
    const pool = new Pool(server.url, { connections: 2 });
    try {
      const sat = await call(pool, 'POST', '/v1/admin/satellites', { key: ADMIN_KEY, body: { id: 'sat' } });
      const gen = await call(pool, 'POST', '/v1/admin/tokens/generate', { key: ADMIN_KEY, body: { satelliteId: 'sat', userIds: ['owner'], perUser: 2 } });
      const [a, b] = gen.body.tokens.map((t: { token: string }) => t.token) as string[];
      writeFileSync(
        path.join(app, 'signup.js'),
        `import { SatelliteClient, ReferralError } from 'referral-manager-client';
const c = new SatelliteClient({ url: process.argv[2], apiKey: process.argv[3] });
const ok = await c.redeem(process.argv[4], 'new-user');
let again;
try { await c.redeem(process.argv[4], 'someone-else'); } catch (err) { again = err instanceof ReferralError ? err.code : String(err); }
const listed = await c.listTokens('owner');
await c.close();
console.log(JSON.stringify({ ok, again, listed: listed.map((t) => t.token) }));`,
      );
      const out = JSON.parse(execFileSync(process.execPath, ['signup.js', server.url, sat.body.apiKey, a!], { cwd: app, encoding: 'utf8' }));
      expect(out).toEqual({ ok: { token: a, state: 'redeemed', ownerSatelliteId: 'sat', ownerUserId: 'owner' }, again: 'token_already_redeemed', listed: [b] });
    } finally {
      await pool.close();
      await server.stop();
    }
  }, 120_000);
});
