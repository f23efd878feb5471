#!/usr/bin/env node
import { readdirSync, writeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError } from 'commander';
import { ConfigError } from '../src/config.js';
import { DomainError } from '../src/errors.js';
import { logTo } from '../src/log.js';
import { addGlobalOptions } from './context.js';

/**
 * referral-manager: one binary for the server, the marketing flow and ops.
 * Exit codes: 0 success, 1 failure, 2 usage error.
 */
// A log reader that goes away (a closed pipe: tee, a log shipper restarting) must not end the process: the
// EPIPE it raises on stdout or stderr, with no listener, was thrown, and one refused admin call's audit line
// took serve, primary and workers, down. What is written after that is lost; the work goes on.
// But a report that could not be written (a full disk: ENOSPC) is a failure: `stats --json > counts.json`
// exited 0 and left an empty file. A reader that went away (EPIPE: `| head`) took what it wanted. The
// long-running commands, whose stdout is a log, keep their exit codes.
const LOGGING = new Set(['serve', 'snapshot', 'satellite-sim']);
let lostOutput: Error | undefined;
/** the long-running command under way, if one is: its failure is a line of its log (LOG_FORMAT) */
let logging: string | undefined;
process.stderr.on('error', () => undefined);
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code !== 'EPIPE') lostOutput ??= err;
});
process.on('exit', (code) => {
  if (code !== 0 || !lostOutput || logging) return;
  try {
    writeSync(2, `error: could not write the output (${lostOutput.message})\n`);
  } catch {
    // stderr is gone too: the exit code says it
  }
  process.exitCode = 1;
});

const program = addGlobalOptions(new Command('referral-manager'))
  .description('Cross-satellite referral tokens for Storj satellites')
  .version('0.1.0')
  .exitOverride()
  .addHelpText(
    'after',
    '\nExamples:\n' +
      '  referral-manager satellites add --id us1 --url https://us1.example.net --outbound-key-file /run/secrets/us1_key\n' +
      '  referral-manager generate --all --per-user 3 --expires 30d --campaign spring-2026\n' +
      '  referral-manager generate --resume spring-2026      # deliver what a failed run did not\n' +
      '  referral-manager campaigns show spring-2026\n' +
      '  referral-manager stats\n' +
      '  referral-manager serve --port 7480\n' +
      '  referral-manager <command> --help                   # each command\'s flags and examples',
  );

// Commands are discovered, so adding one is adding a file: cli/commands/<name>.ts exporting register(program).
const commandsDir = fileURLToPath(new URL('./commands/', import.meta.url));
for (const file of readdirSync(commandsDir).filter((f) => f.endsWith('.js')).sort()) {
  const mod = (await import(new URL(`./commands/${file}`, import.meta.url).href)) as { register?: (p: Command) => void };
  mod.register?.(program);
}

program.hook('preAction', (_, action) => {
  let top = action;
  while (top.parent && top.parent !== program) top = top.parent;
  logging = LOGGING.has(top.name()) ? top.name() : undefined;
});

// A usage error prints the command's usage line, then where the examples are.
(function usageAfterError(cmd: Command, path: string): void {
  cmd.showHelpAfterError(`Usage: ${path} ${cmd.usage()}\n(add --help for usage and examples)`);
  for (const sub of cmd.commands) usageAfterError(sub, `${path} ${sub.name()}`);
})(program, program.name());

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    // help and version exit 0; every other commander error is a usage error
    process.exit(err.exitCode === 0 ? 0 : 2);
  }
  if (err instanceof ConfigError) {
    console.error(err.message);
    process.exit(2);
  }
  const said = err instanceof DomainError ? `${err.code}: ${err.message}` : (err as Error).message;
  if (logging) logTo({ component: logging, text: (_, msg) => `error: ${msg}` })('error', said);
  else console.error(`error: ${said}`);
  process.exit(1);
}
