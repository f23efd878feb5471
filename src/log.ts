/**
 * The log of the long-running processes (serve's primary and workers, the snapshot writer): each part writes
 * through a `Log` made here, never console.*, so LOG_FORMAT and LOG_LEVEL (setLogging) hold for every line.
 * `text`, the default, writes each line as it always was (tests and operators grep them); `json` writes one
 * object a line, {time, level, component, pid, msg, ...fields}, for a log shipper (Loki, ELK, Cloud Logging).
 * At the bottom of the layers, like config.ts: every part may import it.
 */

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export const LOG_FORMATS = ['text', 'json'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/** What a JSON line carries beside its words (a shard, an error code); a text line shows only the words. */
export type LogFields = Record<string, unknown>;
export type Log = (level: LogLevel, msg: string, fields?: LogFields) => void;

/** One part's lines: what a JSON line names it, and how its text line has always read. */
export interface LogKind {
  component: string;
  /** the text line (default: msg alone) */
  text?: (level: LogLevel, msg: string, fields: LogFields) => string;
  /** written on stdout, as serve's primary and the audit trail always were (default: stderr) */
  stdout?: boolean;
  /** fields of every line */
  fields?: LogFields;
  /** written whatever LOG_LEVEL says: the audit trail promises a line for every admin call */
  always?: boolean;
}

let format: LogFormat = 'text';
let least = LOG_LEVELS.indexOf('info');

/** Takes LOG_FORMAT and LOG_LEVEL for every line this process writes from now on (serve's workers call it too). */
export function setLogging(config: { logFormat: LogFormat; logLevel: LogLevel }): void {
  format = config.logFormat;
  least = LOG_LEVELS.indexOf(config.logLevel);
  // Node prints its own warnings (a deprecation, node-postgres' notice on sslmode=require) through a listener of
  // its own, as text: in json, they are lines of the log too. None is there when they are silenced (--no-warnings)
  if (format === 'json' && process.listenerCount('warning') > 0) {
    process.removeAllListeners('warning');
    const node = logTo({ component: 'node' });
    process.on('warning', (w: Error & { code?: string }) => node('warn', `${w.name}: ${w.message}`, { code: w.code }));
  }
}

/** The Log of `kind`; `write` takes its lines instead of stdout or stderr (a test's). */
export function logTo(kind: LogKind, write?: (line: string) => void): Log {
  const out = write ?? ((line: string) => void (kind.stdout ? process.stdout : process.stderr).write(`${line}\n`));
  return (level, msg, fields = {}) => {
    if (!kind.always && LOG_LEVELS.indexOf(level) < least) return;
    const all = { ...kind.fields, ...fields };
    if (format === 'text') return out(kind.text ? kind.text(level, msg, all) : msg);
    const head = { time: new Date().toISOString(), level, component: kind.component, pid: process.pid, msg };
    // a field cannot take the place of one of the head's
    out(JSON.stringify({ ...head, ...all, ...head }));
  };
}
