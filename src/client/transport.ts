import { Pool } from 'undici';
import { ReferralError, type ClientErrorCode } from './error.js';
import { msgpackRequest, ReplyTooLarge, retryAfterMs } from '../msgpack.js';
import { errorCatalogue, type ErrorCode } from '../errors.js';

export interface TransportOptions {
  /** base URL of the manager, e.g. http://127.0.0.1:7480, or https://gw.example/referrals behind a gateway that routes by path */
  url: string;
  apiKey: string;
  /** per-request deadline (headers and body), default 6000 ms: longer than the server's own (REQUEST_TIMEOUT_MS, 5 s), so its 503 with Retry-After arrives first */
  timeoutMs?: number;
  /** keep-alive connections in the pool, default 16 */
  connections?: number;
}

/**
 * The longest id in a path, or header value, sent: far above any the manager takes (an id of 128 bytes is
 * at most 384 characters encoded), far below the request head uWebSockets.js reads (~128 KiB). Past that it
 * dropped the connection unanswered: a 200 KB token from a sign-up form ended as `unavailable`, which
 * callers retry, not as the server's 400.
 */
const HEAD_FIELD_MAX = 8192;

/**
 * An id as one path segment. An id that is not well-formed text (a lone surrogate) cannot be sent:
 * refused here as the server would refuse it, as a rejected call rather than a URIError thrown at once.
 */
export function segment(what: string, id: string): string {
  let encoded;
  try {
    encoded = encodeURIComponent(id);
  } catch {
    throw new ReferralError('invalid_request', 0, `${what}: not well-formed text (a lone surrogate), cannot be sent`);
  }
  if (encoded.length > HEAD_FIELD_MAX) throw new ReferralError('invalid_request', 0, `${what}: ${Buffer.byteLength(id)} bytes, far past any the manager takes, cannot be sent`);
  return encoded;
}

/**
 * Where in a body a string is not well-formed text (a lone surrogate): "userId", "userIds[3]". MessagePack
 * writes one as U+FFFD, which the manager takes as such, so "u\ud800" and "u\udc00" would be one user,
 * and a second sign-up's redeem would answer 200 as if it were the first's retried.
 */
function illFormed(v: unknown, at: string): string | undefined {
  if (typeof v === 'string') return v.isWellFormed() ? undefined : at;
  if (v === null || typeof v !== 'object') return undefined;
  const entries = Array.isArray(v) ? v.map((x, i) => [`${at}[${i}]`, x] as const) : Object.entries(v).map(([k, x]) => [at ? `${at}.${k}` : k, x] as const);
  for (const [where, x] of entries) {
    const found = illFormed(x, where);
    if (found !== undefined) return found;
  }
  return undefined;
}

/** The longest Retry-After taken as given: the manager's own never exceeds its rate-limit window (60 s by default). */
const RETRY_AFTER_MAX_MS = 3_600_000;

/** Undici's timeouts, and AbortSignal.timeout's */
const TIMEOUTS = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT']);

/**
 * What a call that got no reply becomes. A request undici refuses to send (a header value with a line break,
 * from `endUserIp`) is the caller's mistake: `unavailable`, which callers retry, retried it for ever. A
 * timeout says that it may have been carried out: the deadline counts the wait for a free connection, so
 * calls queued behind a hung Redis end here rather than as the server's 503.
 */
function transportError(err: Error & { code?: string }, timeoutMs: number): ReferralError {
  // the network's error stays as the cause: err.cause.code tells a refused connection from a name not found
  const [code, message] = transportFailure(err, timeoutMs);
  return new ReferralError(code, 0, message, undefined, { cause: err });
}

function transportFailure(err: Error & { code?: string }, timeoutMs: number): [ClientErrorCode, string] {
  if (err.code === 'UND_ERR_INVALID_ARG') return ['invalid_request', `cannot be sent: ${err.message}`];
  // close() was called: no call on this client can ever be sent, so a retry would loop for ever
  if (err.code === 'UND_ERR_CLOSED' || err.code === 'UND_ERR_DESTROYED') return ['internal', 'the client is closed: no call on it can be sent'];
  // no reply of the manager is that large: something in front of it is streaming, and a retry would not help
  if (err instanceof ReplyTooLarge) return ['internal', err.message];
  if (err.name === 'TimeoutError' || TIMEOUTS.has(err.code ?? '')) {
    return ['unavailable', `no reply within ${timeoutMs} ms (waiting for a free connection counts): the call may have been carried out; retry it as after a 503`];
  }
  return ['unavailable', `request failed: ${err.message}`];
}

export interface CallOptions {
  /** this call's deadline, instead of the client's */
  timeoutMs?: number;
  /** added to the request's */
  headers?: Record<string, string>;
  /** a repeat is answered as the first was (default: a GET): sent again once when its connection is dropped */
  repeatable?: boolean;
  /** the caller's: aborted, the call rejects at once with its reason */
  signal?: AbortSignal;
}

/** A connection closed or reset under a request before its reply: undici's "other side closed", and the system's. */
const DROPPED = new Set(['UND_ERR_SOCKET', 'ECONNRESET', 'EPIPE']);

/** The longest timer Node keeps: a longer one fires after 1 ms. */
const TIMER_MAX_MS = 2 ** 31 - 1;

/**
 * `opts` checked, with their defaults; throws on options no call could go out with (undici checks
 * `connections`). Read from an unset environment variable (NaN, undefined, "2000") or computed (1500.5),
 * each was taken, and then every call failed as `unavailable`, which callers retry for ever; past 2^31 ms
 * every call ended after 1 ms; an apiKey left out sent "Bearer undefined" on every sign-up, and one read
 * from a file with its newline failed every call. Trimmed as serve trims ADMIN_KEY: no key holds whitespace.
 */
function options(opts: TransportOptions): { timeoutMs: number; apiKey: string } {
  const apiKey = typeof opts.apiKey === 'string' ? opts.apiKey.trim() : opts.apiKey;
  if (typeof apiKey !== 'string' || apiKey === '') throw new TypeError(`apiKey: a non-empty string, got ${apiKey === '' ? 'an empty one' : typeof apiKey}`);
  if (/\s/.test(apiKey)) throw new TypeError('apiKey: holds whitespace, which no key of the manager does');
  const { timeoutMs = 6000 } = opts;
  if (typeof timeoutMs !== 'number' || !(timeoutMs >= 1 && timeoutMs <= TIMER_MAX_MS)) throw new RangeError(`timeoutMs: a number of ms from 1 to ${TIMER_MAX_MS}, got ${typeof timeoutMs === 'string' ? `"${timeoutMs}"` : String(timeoutMs)}`);
  return { timeoutMs: Math.ceil(timeoutMs), apiKey };
}

/** One keep-alive pool speaking MessagePack; non-2xx replies become ReferralError. */
export class Transport {
  private readonly pool: Pool;
  private readonly auth: string;
  private readonly timeoutMs: number;
  private closing?: Promise<void>;
  /** the base URL's path, put before every route (a pool only takes an origin) */
  private readonly base: string;

  constructor(opts: TransportOptions) {
    const { timeoutMs, apiKey } = options(opts);
    const url = new URL(opts.url);
    if (url.search || url.hash || url.username || url.password) throw new TypeError(`url: a query, fragment or credentials would not be sent; give only the origin and path (${url.origin}${url.pathname})`);
    // idle connections are let go before the server's 10 s idle timeout closes them, so a request is
    // never sent on a connection the server is closing at that moment; a connect that hangs frees its
    // slot at the deadline, not at undici's 10 s, for the calls queued behind it
    this.base = url.pathname.replace(/\/+$/, '');
    this.pool = new Pool(url.origin, { connections: opts.connections ?? 16, connectTimeout: timeoutMs, headersTimeout: timeoutMs, bodyTimeout: timeoutMs, keepAliveTimeout: 5000 });
    this.auth = `Bearer ${apiKey}`;
    this.timeoutMs = timeoutMs;
  }

  async call<T>(method: 'GET' | 'POST' | 'PATCH' | 'DELETE', path: string, body?: unknown, opts: CallOptions = {}): Promise<T> {
    const { timeoutMs = this.timeoutMs, headers = {}, repeatable = method === 'GET', signal } = opts;
    signal?.throwIfAborted();
    // uWebSockets.js cuts a header value at its first byte past ASCII: the manager would read another value, or none
    const wide = Object.keys(headers).find((h) => /[^\x00-\x7f]/.test(headers[h]!));
    if (wide !== undefined) throw new ReferralError('invalid_request', 0, `cannot be sent: ${wide} holds a character past ASCII`);
    const long = Object.keys(headers).find((h) => headers[h]!.length > HEAD_FIELD_MAX);
    if (long !== undefined) throw new ReferralError('invalid_request', 0, `cannot be sent: ${long} holds ${headers[long]!.length} characters, far past any the manager takes`);
    const lone = illFormed(body, '');
    if (lone !== undefined) throw new ReferralError('invalid_request', 0, `${lone}: not well-formed text (a lone surrogate), cannot be sent`);
    const deadline = Date.now() + timeoutMs;
    let res;
    for (let sent = 1; ; sent++) {
      try {
        res = await msgpackRequest(this.pool, { method, path: this.base + path, headers: { ...headers, authorization: this.auth }, body, timeoutMs: Math.max(1, deadline - Date.now()), signal });
        break;
      } catch (err) {
        // the caller's own abort is theirs to tell apart, as fetch() tells it: not a failure of the manager
        signal?.throwIfAborted();
        const e = err as Error & { code?: string };
        // a kept-alive connection that a load balancer's idle timeout (shorter than the pool's 5 s) closed
        // as this call went out on it failed 1 call in 25 sent at that moment: sent once more on a new one,
        // within the same deadline, when the manager answers a repeat as it answered the first
        if (!(repeatable && sent === 1 && DROPPED.has(e.code ?? '') && Date.now() < deadline)) throw transportError(e, timeoutMs);
      }
    }
    const ok = res.status >= 200 && res.status < 300;
    // every reply of the manager is a map in msgpack or JSON: anything else came from something in front of it
    const managers = /msgpack|json/.test(res.contentType) && typeof res.data === 'object' && res.data !== null && !Array.isArray(res.data);
    if (ok && managers) return res.data as T;
    // a proxy's date far ahead (2099) must not tell a satellite to stop for decades
    const retryMs = retryAfterMs(res.headers['retry-after'], RETRY_AFTER_MAX_MS);
    const retry = retryMs === undefined ? undefined : Math.ceil(retryMs / 1000);
    const e = res.data as { error?: unknown; message?: unknown } | undefined;
    // only the manager's own codes: a gateway's JSON error ({error: "Bad Gateway"}) is mapped by its status below
    if (!ok && !res.undecodable && typeof e?.error === 'string' && Object.hasOwn(errorCatalogue, e.error)) {
      throw new ReferralError(e.error as ErrorCode, res.status, typeof e.message === 'string' ? e.message : `HTTP ${res.status}`, retry);
    }
    // not a reply of the manager: e.g. a proxy's error page in front of it; a gateway error is worth a retry,
    // and a gateway's own throttling (429) is a rate limit like the manager's
    const code = res.status === 429 ? 'rate_limited' : res.status === 502 || res.status === 503 || res.status === 504 ? 'unavailable' : 'internal';
    throw new ReferralError(code, res.status, `${res.undecodable ? 'undecodable' : 'unexpected'} ${res.contentType || 'untyped'} reply (status ${res.status})`, retry);
  }

  /** Answers the calls in flight, then closes; a second close() (two shutdown hooks) waits for the same, where undici's threw "The client is destroyed". */
  close(): Promise<void> {
    return (this.closing ??= this.pool.close());
  }
}
