import type { Command } from 'commander';
import { settings } from '../../src/config.js';
import { configFrom, flagOverrides, hidePassword, hideSeedPasswords } from '../context.js';

/** `referral-manager config`: the effective settings (secrets redacted) and where each comes from. */
export function register(program: Command): void {
  program
    .command('config')
    .description('print the effective configuration (env + flags), secrets redacted')
    .option('--json', 'machine-readable output')
    .addHelpText('after', '\nExamples:\n  referral-manager config\n  KEY_PREFIX=staging referral-manager config --json')
    .action(function (this: Command, opts: { json?: boolean }) {
      const config = configFrom(this) as Record<string, unknown>;
      const flags = flagOverrides(this);
      const rows = Object.entries(settings).map(([name, s]) => {
        let value = config[name];
        if (name === 'adminKey') value = value ? '(set)' : '(empty: admin routes disabled)';
        if (name === 'metricsKey') value = value ? '(set)' : '(empty: /metrics open)';
        if (name === 'outboundKeySecrets') value = (value as string[]).length ? `(${(value as string[]).length} set)` : '(empty: outbound keys stored as given)';
        if (name === 'databaseUrl' || name === 'redisUrl') value = hidePassword(String(value), '***');
        if (name === 'redisClusterNodes' || name === 'redisSentinels') value = hideSeedPasswords(value as string[], '***');
        const fromEnv = process.env[s.env] !== undefined;
        // a global flag overrides the env (configFrom); an empty env value means the default
        const source = name in flags ? 'flag' : fromEnv && process.env[s.env] !== '' ? 'env' : 'default';
        return { env: s.env, value, fromEnv, source, doc: s.doc };
      });
      if (opts.json) {
        console.log(JSON.stringify(rows, null, 2));
        return;
      }
      // the value column starts after the longest env name (SNAPSHOT_TEST_CRASH_AFTER_COMMIT has 32 letters)
      const width = Math.max(...rows.map((r) => r.env.length));
      for (const r of rows) console.log(`${r.env.padEnd(width)} ${JSON.stringify(r.value)}${r.source === 'env' ? '' : `  (${r.source})`}`);
    });
}
