import { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { addGlobalOptions, globalFlags } from '../cli/context.js';

describe('the global flags a suggested command repeats', () => {
  const given = (...args: string[]) => {
    const program = addGlobalOptions(new Command('referral-manager')).exitOverride();
    let flags = '';
    program.command('generate').action(function (this: Command) {
      flags = globalFlags(this);
    });
    program.parse(['node', 'referral-manager', ...args, 'generate']);
    return flags;
  };

  it('are repeated as shell words, a URL password hidden (the hint lands in cron logs)', () => {
    expect(given()).toBe('');
    // (shell-quote escapes with backslashes: the words a shell reads back are the values given)
    expect(given('--key-prefix', 'p q', '--redis-url', 'redis://app:s3cret@redis:6379/0')).toBe(` --redis-url redis\\://app:\\<password\\>\\@redis\\:6379/0 --key-prefix 'p q'`);
    expect(given('--database-url', 'postgres://postgres@db:5432/rm')).toBe(' --database-url postgres\\://postgres\\@db\\:5432/rm');
    expect(given('--database-url', 'postgres://app:s3cret@db:5432/rm')).toBe(' --database-url postgres\\://app:\\<password\\>\\@db\\:5432/rm');
    // ioredis takes a password from the query too
    expect(given('--redis-url', 'redis://redis:6379/0?password=s3cret')).not.toContain('s3cret');
    // a Cluster's, in every seed
    expect(given('--redis-cluster-nodes', 'rediss://app:s3cret@a:6379,rediss://app:s3cret@b:6379')).toBe(' --redis-cluster-nodes rediss\\://app:\\<password\\>\\@a\\:6379\\,rediss\\://app:\\<password\\>\\@b\\:6379');
    // the sentinels' own password, in every seed; the master's name as given
    expect(given('--redis-sentinels', 'redis://:s3cret@a:26379,redis://:s3cret@b:26379', '--redis-sentinel-name', 'mymaster')).toBe(' --redis-sentinels redis\\://\\:\\<password\\>\\@a\\:26379\\,redis\\://\\:\\<password\\>\\@b\\:26379 --redis-sentinel-name mymaster');
    // an empty flag is not given: the hint leaves it out
    expect(given('--key-prefix', '', '--redis-url', '')).toBe('');
  });
});
