import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import type { Config } from '../../src/config.js';
import type { Satellite, SatelliteFields } from '../../src/satellites/model.js';
import { SatelliteRegistry } from '../../src/satellites/registry.js';
import { configFrom, withRedis } from '../context.js';
import { invalidIsUsage, table } from '../format.js';

interface UpdateOptions {
  url?: string;
  name?: string;
  outboundKey?: string;
  outboundKeyFile?: string;
  clearUrl?: boolean;
  clearName?: boolean;
  clearOutboundKey?: boolean;
  json?: boolean;
}

/** A satellite in `list --json` and `update --json`: hasOutboundKey as the HTTP API names it, outboundKeySet kept for scripts written against it. */
function jsonView(s: Satellite) {
  const set = s.outboundKey !== undefined;
  return { id: s.id, name: s.name ?? null, url: s.url ?? null, hasOutboundKey: set, outboundKeySet: set, createdAt: s.createdAt };
}

const KEY_FILE_HELP = 'read the outbound key from this file (- : stdin), so it shows in no process list or shell history; one trailing newline is dropped';

/**
 * The outbound key of --outbound-key or --outbound-key-file (which keeps it out of `ps` and the shell
 * history); both given, or an unreadable file, is a usage error.
 */
function outboundKeyOf(cmd: Command, opts: { outboundKey?: string; outboundKeyFile?: string }): string | undefined {
  if (opts.outboundKeyFile === undefined) return opts.outboundKey;
  if (opts.outboundKey !== undefined) cmd.error('error: give the outbound key once: --outbound-key or --outbound-key-file');
  try {
    return readFileSync(opts.outboundKeyFile === '-' ? 0 : opts.outboundKeyFile, 'utf8').replace(/\r?\n$/, '');
  } catch (err) {
    return cmd.error(`error: --outbound-key-file: ${(err as Error).message}`);
  }
}

/** Opens the registry, runs `fn`, and always disconnects so the process can exit. */
function withRegistry<T>(config: Config, fn: (r: SatelliteRegistry) => Promise<T>): Promise<T> {
  return withRedis(config, (redis) => fn(new SatelliteRegistry(redis, config.keyPrefix, config.outboundKeySecrets)));
}

/** `satellites add|list|update|remove|rotate-key|seal-keys`: the satellites allowed to call the API, and their keys. */
export function register(program: Command): void {
  const sats = program
    .command('satellites')
    .description('register satellites and manage their API keys')
    .addHelpText(
      'after',
      '\nExamples:\n  referral-manager satellites add --id us1 --url https://us1.example.net --outbound-key-file /run/secrets/us1_key\n  referral-manager satellites list --json\n  referral-manager satellites update us1 --url https://us1.example.net\n  referral-manager satellites rotate-key us1 --grace 3600000',
    );

  const add = sats
    .command('add')
    .description('register a satellite and print its new API key (shown once: only its hash is stored)')
    .requiredOption('--id <id>', 'satellite id (1..128 bytes)')
    .option('--url <url>', "base URL of the satellite's referral endpoints (needed by generate)")
    .option('--name <name>', 'display name')
    .option('--outbound-key <key>', 'key the manager presents to the satellite (Authorization: Bearer)')
    .option('--outbound-key-file <path>', KEY_FILE_HELP)
    .option('--json', 'print {"id", "apiKey"}')
    .addHelpText(
      'after',
      '\nExamples:\n  referral-manager satellites add --id us1 --url https://us1.example.net --name "US1" --outbound-key-file /run/secrets/us1_key\n  referral-manager satellites add --id eu1 --json | jq -r .apiKey',
    );
  add.action(async function (this: Command, opts: { id: string; url?: string; name?: string; outboundKey?: string; outboundKeyFile?: string; json?: boolean }) {
    const outboundKey = outboundKeyOf(this, opts);
    const { id, apiKey } = await invalidIsUsage(this, () => withRegistry(configFrom(this), (r) => r.add({ id: opts.id, url: opts.url, name: opts.name, outboundKey })));
    if (opts.json) console.log(JSON.stringify({ id, apiKey }));
    else {
      console.log(`satellite "${id}" registered`);
      console.log('API key (shown only this once; store it now):');
      console.log(apiKey);
    }
  });

  const list = sats
    .command('list')
    .description('list registered satellites (keys are never printed; shows whether an outbound key is set)')
    .option('--json', 'machine-readable output')
    .addHelpText('after', '\nExamples:\n  referral-manager satellites list\n  referral-manager satellites list --json');
  list.action(async function (this: Command, opts: { json?: boolean }) {
    const all = await withRegistry(configFrom(this), (r) => r.list());
    if (opts.json) console.log(JSON.stringify(all.map(jsonView), null, 2));
    else if (all.length === 0) console.log('no satellites registered');
    else {
      const rows = all.map((s) => [s.id, s.name ?? '-', s.url ?? '-', s.outboundKey !== undefined ? 'set' : 'not set', new Date(s.createdAt).toISOString()]);
      console.log(table(['id', 'name', 'url', 'outbound key', 'registered'], rows));
    }
  });

  const update = sats
    .command('update')
    .description("change a satellite's url, name or outbound key; its API key stays")
    .argument('<id>', 'satellite id')
    .option('--url <url>', "base URL of the satellite's referral endpoints (needed by generate)")
    .option('--name <name>', 'display name')
    .option('--outbound-key <key>', 'key the manager presents to the satellite (Authorization: Bearer)')
    .option('--outbound-key-file <path>', KEY_FILE_HELP)
    .option('--clear-url', 'remove the url (generate then skips the satellite)')
    .option('--clear-name', 'remove the display name')
    .option('--clear-outbound-key', 'remove the outbound key')
    .option('--json', 'print the satellite as `list --json` does')
    .addHelpText(
      'after',
      '\nExamples:\n  referral-manager satellites update us1 --url https://us1.example.net\n  referral-manager satellites update us1 --outbound-key-file /run/secrets/us1_key --clear-name',
    );
  update.action(async function (this: Command, id: string, opts: UpdateOptions) {
    opts.outboundKey = outboundKeyOf(this, opts);
    const change: SatelliteFields = {};
    const fields = [['url', 'url', opts.clearUrl], ['name', 'name', opts.clearName], ['outboundKey', 'outbound-key', opts.clearOutboundKey]] as const;
    for (const [field, flag, clear] of fields) {
      if (opts[field] !== undefined && clear) this.error(`error: --${flag} and --clear-${flag} contradict each other`);
      if (opts[field] !== undefined) change[field] = opts[field];
      else if (clear) change[field] = null;
    }
    if (Object.keys(change).length === 0) this.error('error: nothing to change: give --url, --name, --outbound-key or a --clear-* option');
    const s = await invalidIsUsage(this, () => withRegistry(configFrom(this), (r) => r.update(id, change)));
    if (opts.json) console.log(JSON.stringify(jsonView(s)));
    else console.log(`satellite "${id}" updated: url ${s.url ?? '-'}, name ${s.name ?? '-'}, outbound key ${s.outboundKey !== undefined ? 'set' : 'not set'}`);
  });

  const remove = sats
    .command('remove')
    .description('unregister a satellite; its API keys stop working (its tokens stay: tokens revoke --satellite <id> --all-users revokes them)')
    .argument('<id>', 'satellite id')
    .addHelpText('after', '\nExamples:\n  referral-manager satellites remove us1');
  remove.action(async function (this: Command, id: string) {
    await withRegistry(configFrom(this), (r) => r.remove(id));
    console.log(`satellite "${id}" removed`);
  });

  const rotate = sats
    .command('rotate-key')
    .description('give a satellite a new API key; the old one keeps working for the grace period')
    .argument('<id>', 'satellite id')
    .option('--grace <ms>', 'how long the old key keeps working, in ms (default KEY_GRACE_MS; 0: stops now)')
    .option('--json', 'print {"apiKey"}')
    .addHelpText(
      'after',
      '\nExamples:\n  referral-manager satellites rotate-key us1\n  referral-manager satellites rotate-key us1 --grace 0 --json',
    );
  rotate.action(async function (this: Command, id: string, opts: { grace?: string; json?: boolean }) {
    // checked (as KEY_GRACE_MS is) before rotating: a grace past any date rotated the key, then failed printing its end
    const config = configFrom(this, { keyGraceMs: opts.grace }, { keyGraceMs: '--grace' });
    const graceMs = config.keyGraceMs;
    const { apiKey } = await withRegistry(config, (r) => r.rotateKey(id, graceMs));
    if (opts.json) console.log(JSON.stringify({ apiKey }));
    else {
      console.log(`new API key for satellite "${id}" (shown only this once; store it now):`);
      console.log(apiKey);
      console.log(graceMs > 0 ? `the old key works until ${new Date(Date.now() + graceMs).toISOString()}` : 'the old key no longer works');
    }
  });

  const seal = sats
    .command('seal-keys')
    .description('seal every outbound key not yet sealed with the first OUTBOUND_KEY_SECRET: stored before it was set, or under a secret being rotated out')
    .option('--json', 'print {"sealed": [ids], "current": n, "unreadable": [ids]}')
    .addHelpText(
      'after',
      '\nExit 1 when a key cannot be opened with any secret given (it is left as it is).\n\nExamples:\n  OUTBOUND_KEY_SECRET=$(cat /run/secrets/rm_seal) referral-manager satellites seal-keys\n  OUTBOUND_KEY_SECRET=<new>,<old> referral-manager satellites seal-keys --json',
    );
  seal.action(async function (this: Command, opts: { json?: boolean }) {
    const r = await withRegistry(configFrom(this), (reg) => reg.sealKeys());
    if (opts.json) console.log(JSON.stringify(r));
    else {
      console.log(`sealed ${r.sealed.length} outbound key(s)${r.sealed.length ? `: ${r.sealed.join(', ')}` : ''}; ${r.current} already sealed with the first secret`);
      if (r.unreadable.length) console.error(`error: no secret in OUTBOUND_KEY_SECRET opens the outbound key of: ${r.unreadable.join(', ')} (left as they are; set them again with satellites update <id> --outbound-key-file)`);
    }
    if (r.unreadable.length) process.exitCode = 1;
  });
}
