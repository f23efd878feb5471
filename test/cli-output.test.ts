import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { CampaignStore } from '../src/store/campaign-store.js';
import { MAIN } from './helpers/cli.js';
import { engineFixtureFor, SHARED_REDIS_URL } from './helpers/redis.js';

/** Runs the CLI with its stdout on `fd` (a file), or on a pipe whose reader is gone before anything is written. */
function run(args: string[], env: Record<string, string>, fd?: number): Promise<{ code: number | null; stderr: string }> {
  const proc = spawn(process.execPath, [MAIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', fd ?? 'pipe', 'pipe'] });
  // the command connects to Redis before it prints: the reader is gone by then
  if (fd === undefined) proc.stdout!.destroy();
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    proc.once('error', reject);
    proc.once('close', (code) => resolve({ code, stderr }));
  });
}

const hasDevFull = existsSync('/dev/full');
if (!hasDevFull) console.warn('test/cli-output.test.ts: no /dev/full here, so the full-disk case is skipped');

describe('a report that could not be written (child process, real Redis)', () => {
  const fx = engineFixtureFor('cliout');
  const env = () => ({ KEY_PREFIX: fx.prefix, REDIS_URL: SHARED_REDIS_URL });
  const commands = [
    ['stats'],
    ['stats', '--json'],
    ['campaigns', 'list', '--json'],
    ['campaigns', 'show', 'out-camp'],
    ['campaigns', 'revoked'],
    ['tokens', 'list', '--satellite', 'sat-o', '--user', 'u1'],
    ['tokens', 'redeemed', '--satellite', 'sat-o', '--user', 'u1', '--json'],
  ];
  beforeAll(async () => {
    await new SatelliteRegistry(fx.redis, fx.prefix).add({ id: 'sat-o' });
    await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-o', ownerUserId: 'u1' }], perUser: 3, campaignId: 'out-camp' });
    await new CampaignStore(fx.redis, fx.prefix).open({ id: 'out-camp', perUser: 3, satellites: ['sat-o'], createdAt: Date.now() });
    await fx.engine.revokeCampaign('out-camp');
    const [t] = (await fx.engine.generate({ owners: [{ ownerSatelliteId: 'sat-o', ownerUserId: 'u1' }], perUser: 2, campaignId: 'out-live' })).tokens;
    expect((await fx.engine.redeem(t!.token, 'sat-o', 'u2')).code).toBe('ok');
  });

  // stdout's errors were all ignored (so a log reader going away could not end serve): a report lost to a
  // full disk exited 0, and `referral-manager stats --json > counts.json` left an empty file that read as success
  it.skipIf(!hasDevFull)('a full disk (ENOSPC) fails the command: exit 1 and one error line', async () => {
    for (const args of commands) {
      const fd = openSync('/dev/full', 'w');
      try {
        const r = await run(args, env(), fd);
        expect([args.join(' '), r.code, r.stderr]).toEqual([args.join(' '), 1, expect.stringMatching(/^error: could not write the output \(ENOSPC: no space left on device.*\)\n$/)]);
      } finally {
        closeSync(fd);
      }
    }
    // export says its own error (it stops writing at once), once
    const fd = openSync('/dev/full', 'w');
    try {
      const r = await run(['export', '--format', 'csv'], env(), fd);
      expect([r.code, r.stderr.trim().split('\n')]).toEqual([1, [expect.stringMatching(/^error: ENOSPC/)]]);
    } finally {
      closeSync(fd);
    }
  }, 120_000);

  it('a reader gone (EPIPE, as with `| head`) is not a failure: exit 0, nothing on stderr', async () => {
    for (const args of [...commands, ['export', '--format', 'csv']]) {
      const r = await run(args, env());
      expect([args.join(' '), r.code, r.stderr]).toEqual([args.join(' '), 0, '']);
    }
  }, 120_000);
});
