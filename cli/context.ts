import type { Command } from 'commander';
import { loadConfig, type Config } from '../src/config.js';

/** Global flags shared by every command; each overrides its env setting. */
export function addGlobalOptions(program: Command): Command {
  return program
    .option('--redis-url <url>', 'Redis URL (env REDIS_URL)')
    .option('--redis-cluster-nodes <list>', 'Redis Cluster seeds host:port,... (env REDIS_CLUSTER_NODES)')
    .option('--key-prefix <prefix>', 'Redis key prefix (env KEY_PREFIX)')
    .option('--database-url <url>', 'Postgres URL (env DATABASE_URL)');
}

/** The validated config: env first, then the global flags and any command flags given in `extra`. */
export function configFrom(cmd: Command, extra: Partial<Record<keyof Config, unknown>> = {}): Config {
  const g = cmd.optsWithGlobals() as Record<string, string | undefined>;
  const overrides: Partial<Record<keyof Config, unknown>> = { ...extra };
  if (g.redisUrl !== undefined) overrides.redisUrl = g.redisUrl;
  if (g.redisClusterNodes !== undefined) overrides.redisClusterNodes = g.redisClusterNodes;
  if (g.keyPrefix !== undefined) overrides.keyPrefix = g.keyPrefix;
  if (g.databaseUrl !== undefined) overrides.databaseUrl = g.databaseUrl;
  for (const k of Object.keys(overrides) as (keyof Config)[]) if (overrides[k] === undefined) delete overrides[k];
  return loadConfig(overrides);
}
