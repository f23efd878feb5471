import { STATUS_CODES } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { Pool } from 'undici';
import { msgpackRequest, retryAfterMs } from '../msgpack.js';
import { printable } from '../tokens/validate.js';

/** The satellite's side of the generation flow (README "Satellite contract"). */
export interface UsersPage {
  /** as listed: one that is not a valid id (not even a string) is the flow's to skip and report */
  userIds: unknown[];
  nextCursor: string | null;
}

export interface SatelliteApiOptions {
  url: string;
  /** the satellite's outbound key; sent as `Authorization: Bearer` */
  key?: string;
  timeoutMs: number;
  /** attempts per call, counting the first */
  attempts: number;
  /** first backoff; doubles with each retry, with jitter */
  backoffMs?: number;
  /** told about every failed attempt, so the CLI can count failures, and how long it waits before the next (0: none follows) */
  onRetry?: (err: SatelliteCallError, attempt: number, waitMs: number) => void;
  /** aborts the call in flight and its retries (generate's SIGINT/SIGTERM); the call then throws the reason */
  signal?: AbortSignal;
}

/**
 * To a push, a user the satellite does not have (a refusal); to an empty push, which the contract answers
 * {accepted: 0}, a token route the satellite does not have (src/campaigns/delivery.ts, brokenRoute).
 */
export const NOT_FOUND = 404;
/** The push exceeded the satellite's body limit: a push of fewer tokens may pass. */
export const BODY_TOO_LARGE = 413;

/**
 * HTTP answers that refuse what was sent (a user the satellite no longer has, a body too large) rather than
 * fail the satellite. NOT_FOUND is one too (user not found); a satellite without the route answers it for every
 * user, which fails the run anyway (src/campaigns/delivery.ts, pushOrSplit).
 */
const REFUSALS = new Set([400, NOT_FOUND, 409, 410, BODY_TOO_LARGE, 422]);

export class SatelliteCallError extends Error {
  /**
   * `refused`: the satellite answered and refused what was sent (REFUSALS, or fewer tokens accepted than
   * sent), so the same request fails the same way however often it is retried, and a smaller one may not.
   * `accepted`: of a push answered short, how many tokens the satellite said it took (it holds some of them).
   */
  constructor(message: string, readonly status: number, readonly retryable: boolean, readonly refused = false, readonly retryAfterMs = 0, readonly accepted = 0) {
    super(message);
    this.name = 'SatelliteCallError';
  }
}

/** Most a satellite's Retry-After (429, 503) holds a retry back: one call must not stall a run for hours. */
const RETRY_AFTER_MAX_MS = 60_000;

/**
 * What the manager calls on a satellite: page through users with no tokens left, push tokens.
 * Network errors, timeouts, 408, 429 and 5xx are retried with exponential backoff, waiting at least the
 * satellite's Retry-After (up to a minute); other 4xx are not (retrying a refused request cannot help).
 */
export class SatelliteApi {
  private readonly pool: Pool;
  private readonly base: URL;

  constructor(private readonly opts: SatelliteApiOptions) {
    this.base = new URL(opts.url.endsWith('/') ? opts.url : `${opts.url}/`);
    this.pool = new Pool(this.base.origin, { connections: 4, headersTimeout: opts.timeoutMs, bodyTimeout: opts.timeoutMs });
  }

  async usersWithoutTokens(cursor: string | null, limit: number): Promise<UsersPage> {
    const q = new URLSearchParams({ cursor: cursor ?? '', limit: String(limit) });
    const page = await this.call<UsersPage>('GET', `referrals/v1/users-without-tokens?${q}`, undefined, (p) => {
      // one id that is not a string failed the whole satellite; it is skipped and reported like any invalid id
      if (!p || !Array.isArray(p.userIds)) throw new SatelliteCallError(`users-without-tokens: reply has no userIds array${this.said(p)}`, 200, false);
      if (p.nextCursor !== null && p.nextCursor !== undefined && typeof p.nextCursor !== 'string') {
        throw new SatelliteCallError('users-without-tokens: nextCursor must be a string or null', 200, false);
      }
    });
    const next = page.nextCursor;
    // '' ends the listing too: it is what a Go satellite's zero-value string sends, and as a request
    // cursor it means the first page, so taking it as a cursor would list everything again
    return { userIds: page.userIds, nextCursor: next === undefined || next === '' ? null : next };
  }

  /**
   * `accepted` is the satellite's acknowledgement: fewer than sent means some tokens were not stored, and
   * recording the batch delivered would lose them. Such a reply is retried like a 5xx (a batch is
   * idempotent), then thrown as a refusal (the flow splits the batch to find the users it refuses).
   */
  async pushTokens(tokens: { userId: string; token: string }[]): Promise<number> {
    const reply = await this.call<{ accepted?: unknown }>('POST', 'referrals/v1/tokens', { tokens }, (r) => {
      const accepted = r?.accepted;
      // a count: NaN (MessagePack carries it) passed every comparison as a full accept, 0.5 as a set partly kept,
      // and -1 (an error sentinel) as a refusal of every user of a small batch, whose tokens were revoked, exit 0
      if (typeof accepted !== 'number' || !Number.isInteger(accepted) || accepted < 0) throw new SatelliteCallError(`tokens: reply has no numeric accepted (a whole number of tokens, 0 or more)${this.said(r)}`, 200, false);
      if (accepted < tokens.length) throw new SatelliteCallError(`tokens: the satellite accepted ${accepted} of ${tokens.length}`, 200, true, true, 0, Math.max(0, accepted));
    });
    return reply.accepted as number;
  }

  close(): Promise<void> {
    return this.pool.close();
  }

  /** `check` refuses a 2xx reply that breaks the contract (throwing a SatelliteCallError), counted like any failure and retried when its error is retryable (a short accept). */
  private async call<T>(method: 'GET' | 'POST', path: string, body?: unknown, check?: (reply: T) => void): Promise<T> {
    const backoff = this.opts.backoffMs ?? 200;
    for (let attempt = 1; ; attempt++) {
      try {
        const reply = await this.once<T>(method, path, body);
        check?.(reply);
        return reply;
      } catch (err) {
        this.opts.signal?.throwIfAborted();
        const e = err instanceof SatelliteCallError ? err : new SatelliteCallError((err as Error).message, 0, true);
        // a short accept is retried once: the batch is then split, and each part retried as often would take
        // hours to fail a satellite that stores only part of every push (a review helper measured 3 h)
        const attempts = e.retryable && e.refused ? Math.min(2, this.opts.attempts) : this.opts.attempts;
        const last = !e.retryable || attempt >= attempts;
        const wait = last ? 0 : Math.max(backoff * 2 ** (attempt - 1) * (0.5 + Math.random()), e.retryAfterMs);
        this.opts.onRetry?.(e, attempt, wait);
        if (last) throw e;
        await sleep(wait, undefined, this.opts.signal ? { signal: this.opts.signal } : undefined).catch(() => undefined);
        this.opts.signal?.throwIfAborted();
      }
    }
  }

  private async once<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
    const url = new URL(path, this.base);
    // without Accept-Encoding any coding is acceptable (RFC 9110), and a gateway gzipping replies made the page
    // "not decodable": undici decodes none
    const headers: Record<string, string> = { 'accept-encoding': 'identity', ...(this.opts.key ? { authorization: `Bearer ${this.opts.key}` } : {}) };
    let res;
    try {
      res = await msgpackRequest(this.pool, { method, path: url.pathname + url.search, headers, body, timeoutMs: this.opts.timeoutMs, signal: this.opts.signal });
    } catch (err) {
      // undici's words ("The operation was aborted due to timeout") name neither the time nor the setting
      const timedOut = (err as Error).name === 'TimeoutError' || /^UND_ERR_(HEADERS|BODY)_TIMEOUT$/.test((err as { code?: string }).code ?? '');
      throw new SatelliteCallError(`${method} ${url.pathname}: ${timedOut ? `no answer within ${this.opts.timeoutMs} ms (SATELLITE_TIMEOUT_MS)` : (err as Error).message}`, 0, true);
    }
    // a JSON body sent without a json Content-Type is read as MessagePack: say so, not "no userIds array"
    if (res.status >= 200 && res.status < 300 && res.undecodable) {
      const coding = String(res.headers['content-encoding'] ?? 'identity');
      const encoded = coding === 'identity' ? '' : ` (Content-Encoding "${this.quote(coding)}" where identity was asked)`;
      throw new SatelliteCallError(`${method} ${url.pathname}: HTTP ${res.status} body not decodable as ${res.contentType.includes('json') ? 'JSON' : `MessagePack (Content-Type "${printable(res.contentType)}"; a JSON reply needs application/json)`}${encoded}`, res.status, false);
    }
    if (res.status >= 200 && res.status < 300) return res.data as T;
    // 408: a proxy in front of the satellite timed the request out (nginx's client_body_timeout); RFC 9110 lets it be sent again
    const retryable = res.status === 408 || res.status === 429 || res.status >= 500;
    // the reason phrase of an empty reply: "HTTP 431 " left the operator to look the number up (a cursor too long for the satellite)
    const said = errorWords(res.data) || res.raw.toString('utf8').trim() || (STATUS_CODES[res.status] ?? '');
    // undici follows no redirect, and following one would hand the outbound key to whichever host it names
    const location = res.status >= 300 && res.status < 400 ? res.headers.location : undefined;
    const why = typeof location === 'string' ? `redirects to ${location} (redirects are not followed: point the satellite's url there, satellites update <id> --url)` : said;
    throw new SatelliteCallError(`${method} ${url.pathname}: HTTP ${res.status} ${this.quote(why)}`, res.status, retryable, REFUSALS.has(res.status), retryAfterMs(res.headers['retry-after'], RETRY_AFTER_MAX_MS) ?? 0);
  }

  /** A 2xx reply's error and message, which a satellite answering failures 200 sends in place of the contract's fields. */
  private said(reply: unknown): string {
    const words = errorWords(reply);
    return words ? `; it said "${this.quote(words)}"` : '';
  }

  /**
   * The satellite's words as they go into the run's error, which is printed, kept in the campaign's record and
   * copied to Postgres: cut short (a 5 MB message was all three), and without the outbound key, which a
   * satellite refusing it may echo, and which is sealed at rest (OUTBOUND_KEY_SECRET) precisely to keep it out of those.
   */
  private quote(text: string): string {
    const { key } = this.opts;
    // also as a JSON body (quoted raw) or a URL (a Location) carries it: a key with / (base64) echoed by a PHP
    // satellite read outbound\/key, and one in a redirect's query %2F
    const forms = key ? [key, JSON.stringify(key).slice(1, -1), JSON.stringify(key).slice(1, -1).replaceAll('/', '\\/'), encodeURIComponent(key)] : [];
    const bare = forms.reduce((t, form) => t.replaceAll(form, '<outbound key>'), text);
    return printable(bare, QUOTED_MAX);
  }
}

/** A satellite's `error` and `message`, those that are text, as `error: message` ('' for neither). */
function errorWords(reply: unknown): string {
  const { error, message } = (reply ?? {}) as { error?: unknown; message?: unknown };
  return [error, message].filter((v) => typeof v === 'string' && v !== '').join(': ');
}

/** Most characters of a satellite's error message quoted in a run's error. */
const QUOTED_MAX = 200;
