import { Packr, Unpackr } from 'msgpackr';
import type { Dispatcher } from 'undici';

const MSGPACK = 'application/msgpack';

/** Plain maps and arrays on the wire (no msgpackr records: an extension other peers need not speak). */
export const packr = new Packr({ useRecords: false });
/**
 * The one reader of MessagePack, for the API's requests, satellites' replies and the client's: maps as
 * objects, a 64-bit integer as a number (msgpackr's default is a BigInt). structuredClone false: its
 * extensions build cyclic values ({x: a = [a]}), on which a walk of the value never ended (16 bytes, no key
 * needed, kept a worker at 100 % CPU for good); a second, looser reader read satellites' replies with them.
 */
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number', structuredClone: false });

/** A MessagePack body that decodes, but not to plain data; the message says why. */
export class NotPlain extends Error {}

/**
 * MessagePack bytes as plain data: throws msgpackr's error when they do not decode, NotPlain when they hold
 * an extension type or a string that is not valid UTF-8. msgpackr would turn invalid UTF-8 into U+FFFD, so
 * two different byte strings would be one id: a body whose strings (map keys too) hold a U+FFFD has each
 * string's own bytes checked.
 */
export function unpackPlain(body: Buffer): unknown {
  let value: unknown;
  try {
    value = unpackr.unpack(body);
  } catch (err) {
    // valid MessagePack all the same (tinylib/msgp writes a Go time.Time as its own type 5): "not valid MessagePack" misled
    const type = /^Unknown extension (?:type )?(\d+)$/.exec((err as Error)?.message ?? '')?.[1];
    throw type === undefined ? err : notPlain(`type ${type}`);
  }
  if (plainData(value) && !stringsAreUtf8(body)) throw new NotPlain('a string is not valid UTF-8');
  return value;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * The items with more than their first byte: [bytes of the length that follows it (str, bin, ext), bytes after
 * that, the payload when no length is given (numbers, fixext, the counts of array and map 16/32) or an ext's type
 * byte]. Their items follow an array or map, so a walk needs no nesting; msgpackr's own extensions (records,
 * bundled strings) keep their strings as str items further on.
 */
const SIZED: Record<number, [number, number]> = {
  0xc4: [1, 0], 0xc5: [2, 0], 0xc6: [4, 0], 0xc7: [1, 1], 0xc8: [2, 1], 0xc9: [4, 1], 0xd9: [1, 0], 0xda: [2, 0], 0xdb: [4, 0],
  0xca: [0, 4], 0xcb: [0, 8], 0xcc: [0, 1], 0xcd: [0, 2], 0xce: [0, 4], 0xcf: [0, 8], 0xd0: [0, 1], 0xd1: [0, 2], 0xd2: [0, 4], 0xd3: [0, 8],
  0xd4: [0, 2], 0xd5: [0, 3], 0xd6: [0, 5], 0xd7: [0, 9], 0xd8: [0, 17], 0xdc: [0, 2], 0xdd: [0, 4], 0xde: [0, 2], 0xdf: [0, 4],
};
const isStr = (b: number) => (b >= 0xa0 && b <= 0xbf) || b === 0xd9 || b === 0xda || b === 0xdb;

/**
 * Whether every string of `body` (which msgpackr decoded whole) is valid UTF-8, each on its own bytes: a count of
 * U+FFFD in the body against those decoded let one through beside a real U+FFFD in a field the route ignores, or
 * one whose replacement's bytes stood across its end and the next item's header (EF BF | BD, a 29-byte string's).
 */
function stringsAreUtf8(body: Buffer): boolean {
  let i = 0;
  while (i < body.length) {
    const b = body[i++]!;
    const [lengthBytes, extra] = SIZED[b] ?? [0, b >= 0xa0 && b <= 0xbf ? b & 0x1f : 0];
    if (i + lengthBytes > body.length) return false;
    const start = i + lengthBytes;
    const end = start + (lengthBytes ? body.readUIntBE(i, lengthBytes) : 0) + extra;
    if (end > body.length) return false;
    if (isStr(b)) {
      try {
        strictUtf8.decode(body.subarray(start, end));
      } catch {
        return false;
      }
    }
    i = end;
  }
  return true;
}

/**
 * msgpackr turns its extension types into live objects (an Error whose name and message the sender chose,
 * a Set, a RegExp, a Date): the schemas take any object for a map, so only maps, arrays, strings, numbers,
 * booleans, nil and bin go further, and a Date (the spec's own timestamp) within the body: Go writes every
 * time.Time as one, so a newer satellite's time field must be an unknown field ignored, while a known field
 * refuses it as its wrong type. A loop, not recursion: nesting can be thousands deep. Returns whether a
 * string, a map's keys among them, holds a U+FFFD.
 */
function plainData(value: unknown): boolean {
  if (value instanceof Date) throw notPlain('Date');
  const stack = [value];
  let replaced = false;
  while (stack.length) {
    const v = stack.pop();
    if (v instanceof Date) continue;
    if (typeof v === 'string') {
      replaced ||= v.includes('\ufffd');
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
    for (const [k, x] of Object.entries(v)) {
      replaced ||= k.includes('\ufffd');
      stack.push(x);
    }
  }
  return replaced;
}

const notPlain = (type: string) => new NotPlain(`MessagePack extension type not accepted (${type}); send plain maps and arrays`);

const INT32_MIN = -0x80000000;
const UINT32_MAX = 0xffffffff;

/**
 * `v` with every integer beyond 32 bits as a BigInt, which msgpackr writes as an int64 where it would
 * write a number as a float64: Go's MessagePack decoders (Storj satellites) refuse a float64 for an
 * integer field, and every time on the wire (expiresAt, leaseExpiresAt, redeemedAt) is one. Copies only
 * what it changes.
 */
export function int64s(v: unknown): unknown {
  if (typeof v === 'number') return Number.isSafeInteger(v) && (v > UINT32_MAX || v < INT32_MIN) ? BigInt(v) : v;
  if (v === null || typeof v !== 'object' || v instanceof Uint8Array) return v;
  if (Array.isArray(v)) {
    let out: unknown[] | undefined;
    for (let i = 0; i < v.length; i++) {
      const x = int64s(v[i]);
      if (x !== v[i]) (out ??= v.slice())[i] = x;
    }
    return out ?? v;
  }
  let out: Record<string, unknown> | undefined;
  const o = v as Record<string, unknown>;
  // for-in, not Object.entries: this runs on every MessagePack reply, and the values are plain objects
  for (const k in o) {
    const y = int64s(o[k]);
    if (y !== o[k]) (out ??= { ...o })[k] = y;
  }
  return out ?? v;
}

/** An HTTP body by its content type: JSON when it says json, else MessagePack; empty is undefined. Throws when undecodable. */
export function decodeBody(raw: Buffer, contentType: string): unknown {
  if (raw.length === 0) return undefined;
  // not unpackPlain: a satellite's extension value (Go writes a time.Time as a timestamp) or one id with invalid
  // UTF-8 is the flow's to skip as an invalid field, not a reason to refuse the whole reply and fail the run
  return contentType.includes('json') ? JSON.parse(raw.toString('utf8')) : unpackr.unpack(raw);
}

export interface MsgpackReply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  raw: Buffer;
  contentType: string;
  /** the decoded body; undefined when empty or undecodable */
  data: unknown;
  undecodable: boolean;
}

/**
 * The largest reply body read: far above any the manager or a satellite sends (100,000 tokens of one user
 * listed are ~10 MB), while a broken gateway streaming without end grew a client by 679 MB in 2 s.
 */
const REPLY_LIMIT_BYTES = 128 * 1024 * 1024;

/** A reply body past REPLY_LIMIT_BYTES: the reading stopped there. */
export class ReplyTooLarge extends Error {
  constructor() {
    super(`reply larger than ${REPLY_LIMIT_BYTES} bytes: not read`);
    this.name = 'ReplyTooLarge';
  }
}

/**
 * One request with an optional MessagePack body and `accept: MessagePack`, over a keep-alive undici
 * dispatcher, with a deadline. Network failures throw as they are (a body past REPLY_LIMIT_BYTES as
 * ReplyTooLarge); any status comes back as a reply.
 */
export async function msgpackRequest(
  dispatcher: Dispatcher,
  req: { method: 'GET' | 'POST' | 'PATCH' | 'DELETE'; path: string; headers: Record<string, string>; body?: unknown; timeoutMs: number; signal?: AbortSignal },
): Promise<MsgpackReply> {
  const headers: Record<string, string> = { accept: MSGPACK, ...req.headers };
  if (req.body !== undefined) headers['content-type'] = MSGPACK;
  // not AbortSignal.any: Node 20 keeps a reference to each signal made from a long-lived one (a server's
  // shutdown signal passed to every call) for as long as that one lives, ~100 bytes a call, never freed
  const deadline = new AbortController();
  const signal = deadline.signal;
  const timer = setTimeout(() => deadline.abort(new DOMException('The operation was aborted due to timeout', 'TimeoutError')), req.timeoutMs);
  const stop = () => deadline.abort(req.signal!.reason);
  if (req.signal?.aborted) stop();
  else req.signal?.addEventListener('abort', stop, { once: true });
  try {
    return await reply(dispatcher, req, headers, signal);
  } finally {
    clearTimeout(timer);
    req.signal?.removeEventListener('abort', stop);
  }
}

async function reply(
  dispatcher: Dispatcher,
  req: { method: 'GET' | 'POST' | 'PATCH' | 'DELETE'; path: string; body?: unknown; timeoutMs: number },
  headers: Record<string, string>,
  signal: AbortSignal,
): Promise<MsgpackReply> {
  const sent = dispatcher.request({
    method: req.method,
    path: req.path,
    headers,
    body: req.body === undefined ? undefined : packr.pack(int64s(req.body)),
    // also the undici timeouts: a pool's own (set for its usual calls) would cut a longer call short
    headersTimeout: req.timeoutMs,
    bodyTimeout: req.timeoutMs,
    signal,
  });
  const res = await untilAborted(sent, signal);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res.body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > REPLY_LIMIT_BYTES) {
      res.body.destroy();
      throw new ReplyTooLarge();
    }
    chunks.push(chunk);
  }
  const raw = Buffer.concat(chunks, size);
  const contentType = String(res.headers['content-type'] ?? '');
  let data: unknown;
  let undecodable = false;
  try {
    data = decodeBody(raw, contentType);
  } catch {
    undecodable = true;
  }
  return { status: res.statusCode, headers: res.headers, raw, contentType, data, undecodable };
}

/**
 * `sent`, or the signal's reason as soon as it aborts. Undici heeds a signal only once the request has a
 * connection: a connect that hangs (a blackholed address, a full accept queue) held a call until undici's
 * own connect timeout (10 s by default) whatever its deadline. The request is not sent later: undici
 * aborts it when it gets a connection.
 */
function untilAborted(sent: Promise<Dispatcher.ResponseData>, signal: AbortSignal): Promise<Dispatcher.ResponseData> {
  return new Promise((resolve, reject) => {
    const abort = () => reject(signal.reason);
    signal.addEventListener('abort', abort, { once: true });
    sent.then(
      (res) => {
        signal.removeEventListener('abort', abort);
        // the deadline passed just as the reply came: nobody reads it
        if (signal.aborted) res.body.destroy();
        resolve(res);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', abort);
        reject(err);
      },
    );
  });
}

const HTTP_DATE = /^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$/;

/**
 * A Retry-After header in ms, from seconds or an HTTP date, at most `capMs`; undefined when absent or
 * unreadable (a date in the past is 0).
 */
export function retryAfterMs(header: string | string[] | undefined, capMs = Infinity): number | undefined {
  const v = String(header ?? '').trim();
  if (v === '') return undefined;
  // an HTTP date only (Sun, 06 Nov 1994 08:49:37 GMT): V8's loose Date.parse reads "5,5" as a date long past
  const ms = /^\d+$/.test(v) ? Number(v) * 1000 : HTTP_DATE.test(v) ? Date.parse(v) - Date.now() : NaN;
  return Number.isFinite(ms) ? Math.min(Math.max(ms, 0), capMs) : undefined;
}
