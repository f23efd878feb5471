import { describe, expect, it } from 'vitest';
import { runCli } from './helpers/cli.js';

describe('referral-manager demo (npm run demo)', () => {
  it('runs the whole product: service, two satellites, a campaign, cross-satellite sign-ups, stats; then cleans up', async () => {
    const run = await runCli(['demo', '--users', '200', '--signups', '20'], {}, { timeoutMs: 120_000 });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/us1\s+200\s+600\s+600\s+0\s+done/);
    expect(run.stdout).toMatch(/eu1\s+200\s+600\s+600\s+0\s+done/);
    expect(run.stdout).toMatch(/"redeemed":20/);
    expect(run.stdout).toMatch(/total\s+1200\s+\d+\s+0\s+40\s+0/);
    expect(run.stdout).toMatch(/owner \\ redeemer/);
  });
});
