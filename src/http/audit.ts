import { URL_CREDENTIALS } from '../config.js';
import { logTo, type LogKind } from '../log.js';

/**
 * The audit trail of the admin routes: one JSON line on stdout per admin call that may change something
 * (every method but GET), refused ones included (a wrong key, a bad body), so an on-call engineer can
 * tell who revoked a campaign or rotated a key, from where and when. Keys are never written: a field
 * named like one shows whether it was set, and a URL's user and password are hidden; lists show their length
 * (a revoke may name 10,000 tokens).
 */
export interface AuditEntry {
  method: string;
  path: string;
  ip: string;
  status: number;
  /** the wire error code of a refused call */
  error?: string;
  ms: number;
  body?: unknown;
  result?: unknown;
}

/**
 * On stdout, a line for every call whatever LOG_LEVEL says (its level: info). A text line is the entry alone,
 * as it always was; a JSON line has the log's time, level, component, pid and msg before it.
 */
const AUDIT_LOG: LogKind = { component: 'audit', stdout: true, always: true, text: (_, __, fields) => JSON.stringify(fields) };

const SECRET = /key/i;
/** a URL's query, which may carry a token (its user:password is URL_CREDENTIALS: a url is refused with either now, but a satellite registered before may hold one, which an update's result shows) */
const QUERY = /^(\s*[a-z][a-z0-9+.-]*:\/\/[^?#\s]*\?)[^#]*/i;
const LONGEST = 200;
/** a path names at most a 128-byte id, percent-encoded; anyone may send a 16 KiB one, key or no key */
const LONGEST_PATH = 512;
/**
 * What of a path is not visible ASCII. uWS hands raw bytes over as UTF-8 and JSON escapes only C0 controls, so a
 * path sent unencoded, key or no key, put a bidi override (U+202E: the line read reordered in a terminal or a log
 * viewer) or a C1 control (U+009B, an escape some terminals act on) into the audit trail. Percent-encoded, as a client sends it.
 */
const UNENCODED = /[^\x21-\x7e]/gu;

function summarize(v: unknown, depth = 0): unknown {
  if (Array.isArray(v)) return `[${v.length} items]`;
  if (typeof v === 'string') {
    const shown = v.replace(URL_CREDENTIALS, '//<redacted>@').replace(QUERY, '$1<redacted>');
    return shown.length > LONGEST ? `${shown.slice(0, LONGEST)}…` : shown;
  }
  if (v === null || typeof v !== 'object') return v;
  if (depth >= 3) return '{…}';
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    out[k] = SECRET.test(k) && typeof x === 'string' ? '<redacted>' : summarize(x, depth + 1);
  }
  return out;
}

/** `write`: a test's, instead of stdout */
export function audit(e: AuditEntry, write?: (line: string) => void): void {
  const encoded = (e.path.length > LONGEST_PATH ? e.path.slice(0, LONGEST_PATH) : e.path).replace(UNENCODED, (c) => encodeURIComponent(c.toWellFormed()));
  const path = e.path.length > LONGEST_PATH ? `${encoded}…` : encoded;
  const line: Record<string, unknown> = { audit: 'admin', at: new Date().toISOString(), method: e.method, path, ip: e.ip, status: e.status };
  if (e.error !== undefined) line.error = e.error;
  line.ms = Math.round(e.ms);
  try {
    if (e.body !== undefined) line.body = summarize(e.body);
    if (e.result !== undefined) line.result = summarize(e.result);
    JSON.stringify(line);
  } catch (err) {
    // the call was answered already: a body that cannot be written (a BigInt) must not turn it into a 500
    delete line.body;
    delete line.result;
    line.unwritable = (err as Error).message;
  }
  logTo(AUDIT_LOG, write)('info', `${e.method} ${path} ${e.status}`, line);
}
