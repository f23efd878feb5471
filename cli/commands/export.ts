import { Option, type Command } from 'commander';
import { CampaignStore } from '../../src/store/campaign-store.js';
import { EXPORT_FIELDS, scanTokens, type ExportRow } from '../../src/store/export.js';
import { TOKEN_STATES } from '../../src/store/model.js';
import type { TokenState } from '../../src/store/model.js';
import { configFrom, withRedis } from '../context.js';
import { setImmediate } from 'node:timers/promises';

const NUMERIC = new Set<string>(['createdAt', 'expiresAt', 'leaseExpiresAt', 'redeemedAt']);

/** RFC 4180: a field with a comma, quote or line break is quoted, its quotes doubled. */
const csvField = (v: string): string => (/[",\r\n]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v);
/**
 * A spreadsheet runs a cell that starts with = + - @ as a formula (OWASP "CSV injection"), and user and
 * campaign ids come from satellites: a leading ' makes it text and is not shown. Tokens and times never
 * start so.
 */
const inert = (v: string): string => (/^[=+\-@]/.test(v) ? `'${v}` : v);
const csvLine = (row: string[]): string => `${row.map((v) => csvField(inert(v))).join(',')}\n`;
const rawCsvLine = (row: string[]): string => `${row.map(csvField).join(',')}\n`;

/** Every field on every line, so consumers see one shape: times as numbers, absent values as null. */
function jsonLine(row: ExportRow): string {
  const o: Record<string, string | number | null> = {};
  EXPORT_FIELDS.forEach((f, i) => {
    const v = row[i]!;
    o[f] = v === '' ? null : NUMERIC.has(f) ? Number(v) : v;
  });
  return `${JSON.stringify(o)}\n`;
}

/**
 * Writes to stdout honouring backpressure; resolves false once stdout is gone (EPIPE: the reader,
 * e.g. `head`, has closed), so the export stops instead of failing.
 */
function stdoutWriter(): (chunk: string) => Promise<boolean> {
  const out = process.stdout;
  let failure: NodeJS.ErrnoException | undefined;
  out.on('error', (err: NodeJS.ErrnoException) => (failure = err));
  const gone = (): boolean => {
    if (failure && failure.code !== 'EPIPE') throw failure;
    return failure !== undefined;
  };
  return async (chunk) => {
    if (gone()) return false;
    if (!out.write(chunk)) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          out.off('drain', done).off('error', done).off('close', done);
          resolve();
        };
        out.on('drain', done).on('error', done).on('close', done);
      });
    }
    // a write can fail after returning true; the error event comes a tick later
    await setImmediate();
    return !gone();
  };
}

/** `export`: every token to stdout as CSV or JSON lines, streamed from Redis. */
export function register(program: Command): void {
  const cmd = program
    .command('export')
    .description('stream every token to stdout as CSV or JSON lines, in constant memory (SCAN, one bucket page at a time)')
    .addOption(new Option('--format <format>', 'output format').choices(['csv', 'jsonl']).makeOptionMandatory())
    .option('--campaign <id>', 'only tokens of this campaign')
    .addOption(new Option('--state <state>', 'only tokens in this stored state (a lapsed reservation is "reserved" until serve gives it back)').choices(TOKEN_STATES))
    .option('--raw', "CSV: values exactly as stored, without the ' put before one starting with = + - @")
    .addHelpText(
      'after',
      `\nFields, in order: ${EXPORT_FIELDS.join(', ')}.\n` +
        "CSV: a header line, RFC 4180 quoting, empty cells for absent values, and a ' before a value starting with\n" +
        '= + - @ so a spreadsheet does not run it as a formula (--raw: none). JSON lines: every field on every line,\n' +
        'times as epoch-ms numbers, absent values null. Rows come in storage order, not sorted.\n' +
        '\nExamples:\n  referral-manager export --format csv > tokens.csv\n' +
        '  referral-manager export --format jsonl --campaign spring-2026 --state redeemed | jq .redeemerSatelliteId\n' +
        '  referral-manager export --format csv --key-prefix staging | head',
    );
  cmd.action(async function (this: Command, opts: { format: 'csv' | 'jsonl'; campaign?: string; state?: TokenState; raw?: boolean }) {
    const config = configFrom(this);
    const write = stdoutWriter();
    const line = opts.format === 'jsonl' ? jsonLine : opts.raw ? rawCsvLine : csvLine;
    await withRedis(config, async (redis) => {
      if (opts.format === 'csv' && !(await write(rawCsvLine([...EXPORT_FIELDS])))) return;
      let n = 0;
      for await (const rows of scanTokens(redis, config.keyPrefix, { campaignId: opts.campaign, state: opts.state })) {
        let chunk = '';
        for (const row of rows) chunk += line(row);
        n += rows.length;
        if (!(await write(chunk))) return;
      }
      // a mistyped id exports nothing, as an empty campaign does (with --state, a campaign of the admin route,
      // which has no record, may just have none in that state)
      if (n === 0 && opts.campaign !== undefined && opts.state === undefined) {
        const campaigns = new CampaignStore(redis, config.keyPrefix);
        if (!(await campaigns.meta(opts.campaign)) && (await campaigns.revokedAt(opts.campaign)) === undefined) {
          console.error(`note: no campaign "${opts.campaign}" was run by generate or revoked (referral-manager campaigns list)`);
        }
      }
    });
  });
}
