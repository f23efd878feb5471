import { Packr, Unpackr } from 'msgpackr';
import type { HttpResponse } from 'uWebSockets.js';
import { DomainError, errorCatalogue, type ErrorCode } from '../errors.js';
import { int64s } from '../msgpack.js';

export type Format = 'msgpack' | 'json';

// Plain maps in and out: records/structures are a msgpackr extension satellites need not speak.
// structuredClone false: its extensions build cyclic values ({x: a = [a]}), on which plainData's walk
// never ended: 16 bytes, no key needed, kept a worker at 100% CPU for good
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number', structuredClone: false });
const packr = new Packr({ useRecords: false });

/**
 * Media type of a Content-Type or Accept value, or undefined if it is none we speak. Of several, the one with
 * the highest `q` (1 when not given; the first listed on a tie); `q=0` says "not this one".
 */
export function formatOf(header: string): Format | undefined {
  let best: Format | undefined;
  let bestQ = 0;
  for (const part of header.split(',')) {
    const [type = '', ...params] = part.split(';');
    const given = params.map((p) => /^\s*q\s*=\s*([\d.]+)\s*$/i.exec(p)?.[1]).find((q) => q !== undefined);
    const q = given === undefined || Number.isNaN(Number(given)) ? 1 : Number(given);
    const t = type.trim().toLowerCase();
    const format = t === 'application/msgpack' || t === 'application/x-msgpack' ? 'msgpack' : t === 'application/json' ? 'json' : undefined;
    if (format && q > bestQ) [best, bestQ] = [format, q];
  }
  return best;
}

/** Body bytes -> value; any decoder failure is a 400 naming the reason. */
export function decode(format: Format, body: Buffer): unknown {
  if (body.length === 0) throw new DomainError('invalid_request', 'body: empty');
  // Both decoders would turn invalid UTF-8 into U+FFFD, so two different byte strings would be one id:
  // JSON text is decoded strictly, and in MessagePack every U+FFFD of a string must be in the body as such.
  let text: string | undefined;
  if (format === 'json') {
    try {
      text = strictUtf8.decode(body);
    } catch {
      throw new DomainError('invalid_request', 'body: not valid UTF-8');
    }
  }
  let value: unknown;
  try {
    value = text !== undefined ? JSON.parse(text) : unpackr.unpack(body);
  } catch (err) {
    throw new DomainError('invalid_request', `body: not valid ${format === 'json' ? 'JSON' : 'MessagePack'} (${String((err as Error)?.message ?? err).slice(0, 100)})`);
  }
  if (format === 'msgpack') {
    const replaced = plainData(value);
    if (replaced > 0 && replaced > count(body, REPLACEMENT)) throw new DomainError('invalid_request', 'body: a string is not valid UTF-8');
  }
  return value;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** U+FFFD as UTF-8: a decoded string holds one for each of these in the body, and one per invalid sequence. */
const REPLACEMENT = Buffer.from('\ufffd');

function count(haystack: Buffer, needle: Buffer): number {
  let n = 0;
  for (let i = haystack.indexOf(needle); i >= 0; i = haystack.indexOf(needle, i + needle.length)) n++;
  return n;
}

/**
 * msgpackr turns its extension types into live objects (an Error whose name and message the sender chose,
 * a Set, a RegExp, a Date): the schemas take any object for a map, so only maps, arrays, strings, numbers,
 * booleans, nil and bin go further. A loop, not recursion: nesting can be thousands deep. Returns how many
 * U+FFFD the string values hold (decode compares it with the body).
 */
function plainData(value: unknown): number {
  const stack = [value];
  let replaced = 0;
  while (stack.length) {
    const v = stack.pop();
    if (typeof v === 'string') {
      for (let i = v.indexOf('\ufffd'); i >= 0; i = v.indexOf('\ufffd', i + 1)) replaced++;
      continue;
    }
    // a bigint (msgpackr's BigInt extension) passed the schemas in an unknown field, then broke the audit line's JSON
    if (typeof v === 'bigint') throw notPlain('BigInt');
    if (v === null || typeof v !== 'object' || v instanceof Uint8Array) continue;
    if (Array.isArray(v)) {
      for (const x of v) stack.push(x);
      continue;
    }
    const proto = Object.getPrototypeOf(v);
    if (proto !== Object.prototype && proto !== null) {
      throw notPlain(String(proto?.constructor?.name ?? 'unknown').slice(0, 40));
    }
    for (const x of Object.values(v)) stack.push(x);
  }
  return replaced;
}

const notPlain = (type: string) => new DomainError('invalid_request', `body: MessagePack extension type not accepted (${type}); send plain maps and arrays`);

export function encode(format: Format, value: unknown): Buffer {
  return format === 'json' ? Buffer.from(JSON.stringify(value)) : packr.pack(int64s(value));
}

export const CONTENT_TYPE: Record<Format, string> = { msgpack: 'application/msgpack', json: 'application/json' };
const REASONS: Record<number, string> = {
  200: 'OK', 201: 'Created', 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found',
  405: 'Method Not Allowed', 409: 'Conflict', 410: 'Gone', 413: 'Payload Too Large', 415: 'Unsupported Media Type',
  429: 'Too Many Requests', 500: 'Internal Server Error', 503: 'Service Unavailable',
};

/** A server's requests in flight, and whether it is draining for shutdown. */
export interface Traffic {
  n: number;
  /** replies then say Connection: close, so keep-alive clients move to another server */
  draining: boolean;
  /** while draining: when the last request arrived (Date.now()); the drain closes the connections once quiet */
  lastAt?: number;
}

/** One in-flight request: what was read from uWS synchronously, and whether the reply may still be written. */
export interface Exchange {
  res: HttpResponse;
  traffic: Traffic;
  aborted: boolean;
  done: boolean;
  format: Format;
  /** a HEAD request: the reply carries the headers (Content-Length too) and no body */
  head: boolean;
  /** set by the router: called once the reply is fully written or the client went away */
  finish(status: number): void;
  /** the store call's signal, aborted at its deadline or when the client goes away (a generate then revokes what it made) */
  gone: AbortController;
}

function errorBody(code: ErrorCode, message?: string): { error: ErrorCode; message: string } {
  return { error: code, message: message ?? errorCatalogue[code].message };
}

/**
 * Writes a whole reply, corked, honouring backpressure: if the socket buffer is full the rest is sent
 * from onWritable. Never touches `res` after an abort or a previous reply.
 */
export function reply(ex: Exchange, status: number, body: Buffer, contentType: string, headers: [string, string][] = []): void {
  if (ex.aborted || ex.done) return;
  ex.done = true;
  const { res } = ex;
  res.cork(() => {
    res.writeStatus(`${status} ${REASONS[status] ?? ''}`);
    res.writeHeader('content-type', contentType);
    for (const [k, v] of headers) res.writeHeader(k, v);
    if (ex.traffic.draining) res.writeHeader('connection', 'close');
    if (ex.head) {
      res.endWithoutBody(body.length);
      return ex.finish(status);
    }
    const start = res.getWriteOffset();
    const [ok, responded] = res.tryEnd(body, body.length);
    if (responded) return ex.finish(status);
    if (!ok) {
      res.onWritable((offset) => {
        if (ex.aborted) return true;
        const [ok2, responded2] = res.tryEnd(body.subarray(offset - start), body.length);
        if (responded2) ex.finish(status);
        return ok2;
      });
    }
  });
}

export function replyValue(ex: Exchange, status: number, value: unknown, headers?: [string, string][]): void {
  if (ex.aborted || ex.done) return;
  reply(ex, status, encode(ex.format, value), CONTENT_TYPE[ex.format], headers);
}

export function replyError(ex: Exchange, code: ErrorCode, message?: string, headers?: [string, string][]): void {
  if (ex.aborted || ex.done) return;
  reply(ex, errorCatalogue[code].status, encode(ex.format, errorBody(code, message)), CONTENT_TYPE[ex.format], headers);
}
