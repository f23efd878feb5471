import type { HttpResponse } from 'uWebSockets.js';
import { DomainError, errorCatalogue, type ErrorCode } from '../errors.js';
import { int64s, NotPlain, packr, unpackPlain } from '../msgpack.js';

export type Format = 'msgpack' | 'json';

/**
 * Media type of a Content-Type or Accept value, or undefined if it is none we speak. Of several, the one with
 * the highest `q` (1 when not given; the first listed on a tie); `q=0` says "not this one", so a value
 * refusing one of the two and naming no other is the other (it was answered in the refused one when the
 * request's body came in it).
 */
export function formatOf(header: string): Format | undefined {
  let best: Format | undefined;
  let bestQ = 0;
  // booleans, not a Set: this runs twice on every request
  let refusedJson = false;
  let refusedMsgpack = false;
  for (const part of header.split(',')) {
    const [type = '', ...params] = part.split(';');
    const given = params.map((p) => /^\s*q\s*=\s*([\d.]+)\s*$/i.exec(p)?.[1]).find((q) => q !== undefined);
    const q = given === undefined || Number.isNaN(Number(given)) ? 1 : Number(given);
    const t = type.trim().toLowerCase();
    const format = t === 'application/msgpack' || t === 'application/x-msgpack' ? 'msgpack' : t === 'application/json' ? 'json' : undefined;
    if (format && q > bestQ) [best, bestQ] = [format, q];
    if (format === 'json' && q === 0) refusedJson = true;
    if (format === 'msgpack' && q === 0) refusedMsgpack = true;
  }
  if (!best && refusedJson !== refusedMsgpack) return refusedJson ? 'msgpack' : 'json';
  return best;
}

/** Body bytes -> value; any decoder failure is a 400 naming the reason. */
export function decode(format: Format, body: Buffer): unknown {
  if (body.length === 0) throw new DomainError('invalid_request', 'body: empty');
  // JSON.parse of text decoded loosely would turn invalid UTF-8 into U+FFFD, so two different byte strings
  // would be one id (unpackPlain refuses that in MessagePack)
  let text: string | undefined;
  if (format === 'json') {
    try {
      text = strictUtf8.decode(body);
    } catch {
      throw new DomainError('invalid_request', 'body: not valid UTF-8');
    }
  }
  try {
    return text !== undefined ? JSON.parse(text) : unpackPlain(body);
  } catch (err) {
    if (err instanceof NotPlain) throw new DomainError('invalid_request', `body: ${err.message}`);
    throw new DomainError('invalid_request', `body: not valid ${format === 'json' ? 'JSON' : 'MessagePack'} (${String((err as Error)?.message ?? err).slice(0, 100)})`);
  }
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

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
  /** until then (Date.now()) replies say Connection: close too, so keep-alive clients connect anew (rebalance) */
  closeUntil?: number;
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
    if (ex.traffic.draining || (ex.traffic.closeUntil !== undefined && Date.now() < ex.traffic.closeUntil)) res.writeHeader('connection', 'close');
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
