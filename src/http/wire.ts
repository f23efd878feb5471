import type { HttpResponse } from 'uWebSockets.js';
import { DomainError, errorCatalogue, type ErrorCode } from '../errors.js';
import { int64s, NotPlain, packr, unpackPlain } from '../msgpack.js';
import { setImmediate } from 'node:timers/promises';

export type Format = 'msgpack' | 'json';

/** vnd.msgpack is the one registered at IANA (2024): clients that take their type from the registry send it */
const MSGPACK_TYPES = new Set(['application/msgpack', 'application/x-msgpack', 'application/vnd.msgpack']);

/**
 * Media type of a Content-Type or Accept value, or undefined if it is none we speak. Of the two, the one with
 * the higher `q` (1 when not given); one not named takes the `q` of `application/*`, else of `*\/*`, so
 * `application/json;q=0.5, *\/*;q=0.9` prefers MessagePack (it was answered in JSON). On a tie the one named
 * (both named: the first listed); wildcards alone name neither. `q=0` says "not this one", so a value refusing
 * one of the two and naming no other is the other (it was answered in the refused one when the request's body
 * came in it).
 */
export function formatOf(header: string): Format | undefined {
  // numbers, not a Map: this runs twice on every request. -1: not named
  let json = -1;
  let msgpack = -1;
  let anyApplication = -1;
  let any = -1;
  let first: Format | undefined;
  for (const part of header.split(',')) {
    const [type = '', ...params] = part.split(';');
    const given = params.map((p) => /^\s*q\s*=\s*([\d.]+)\s*$/i.exec(p)?.[1]).find((q) => q !== undefined);
    const q = given === undefined || Number.isNaN(Number(given)) ? 1 : Number(given);
    const t = type.trim().toLowerCase();
    if (MSGPACK_TYPES.has(t)) [msgpack, first] = [Math.max(msgpack, q), first ?? 'msgpack'];
    else if (t === 'application/json') [json, first] = [Math.max(json, q), first ?? 'json'];
    else if (t === 'application/*') anyApplication = Math.max(anyApplication, q);
    else if (t === '*/*') any = Math.max(any, q);
  }
  const wildcard = anyApplication >= 0 ? anyApplication : any;
  const qJson = json >= 0 ? json : wildcard;
  const qMsgpack = msgpack >= 0 ? msgpack : wildcard;
  if (qJson <= 0 && qMsgpack <= 0) return json === 0 && msgpack < 0 ? 'msgpack' : msgpack === 0 && json < 0 ? 'json' : undefined;
  if (qJson !== qMsgpack) return qJson > qMsgpack ? 'json' : 'msgpack';
  return json >= 0 && msgpack >= 0 ? first : json >= 0 ? 'json' : msgpack >= 0 ? 'msgpack' : undefined;
}

/**
 * Format of a Content-Type value: its media type, whatever its parameters. `charset` changes nothing, and `q`
 * means nothing there: read as Accept's, `application/json;q=0` made a JSON body one read as MessagePack.
 */
export const bodyFormatOf = (contentType: string): Format | undefined => formatOf(contentType.replace(/;[^,]*/g, ''));

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
  /** the connection closes after the reply: its request's framing was ambiguous, so what follows on it cannot be trusted */
  close?: boolean;
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
      // not endWithoutBody(body.length) (any argument given is taken as that length): this uWS build then waits
      // for those bytes forever, the reply never counts as done, and the connection's next request (a load
      // balancer's next HEAD /healthz) is met by a close. A connection closing after the reply has no next one.
      if (ex.close) res.endWithoutBody(body.length, true);
      else {
        res.writeHeader('content-length', String(body.length));
        res.endWithoutBody();
      }
      return ex.finish(status);
    }
    if (ex.close) {
      res.end(body, true);
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

/** `{[key]: items.map(each)}` as a reply value (replyList). */
export interface ListValue<T = any> {
  key: string;
  items: readonly T[];
  each(item: T): unknown;
}

/** Items encoded per turn of the event loop in a long list reply: a few ms of work. */
const LIST_SLICE = 2000;

/**
 * Replies `{[key]: items.map(each)}` with the bytes replyValue would write. A long list (a user given 100,000
 * tokens: ~10 MB, 250-400 ms to build and encode in one go) is encoded LIST_SLICE items at a time with the
 * event loop free in between, so the worker's other requests (sign-ups) are not held until it is done.
 */
export async function replyList(ex: Exchange, status: number, list: ListValue, headers?: [string, string][]): Promise<void> {
  const body = await encodeList(ex.format, list, () => ex.aborted);
  if (body) reply(ex, status, body, CONTENT_TYPE[ex.format], headers);
}

/** encode(format, {[key]: items.map(each)}), LIST_SLICE items per turn of the event loop; undefined once `gone()`. */
export async function encodeList(format: Format, list: ListValue, gone: () => boolean = () => false): Promise<Buffer | undefined> {
  const { key, items, each } = list;
  if (items.length <= LIST_SLICE) return encode(format, { [key]: items.map(each) });
  const parts = [listHead(format, key, items.length)];
  for (let i = 0; i < items.length; i += LIST_SLICE) {
    if (i > 0) await setImmediate();
    if (gone()) return undefined;
    parts.push(listItems(format, items.slice(i, i + LIST_SLICE).map(each), i === 0));
  }
  if (format === 'json') parts.push(Buffer.from(']}'));
  return Buffer.concat(parts);
}

/** encode(format, {[key]: <array of n>}) up to the array's first item. */
function listHead(format: Format, key: string, n: number): Buffer {
  const empty = encode(format, { [key]: [] });
  return format === 'json' ? empty.subarray(0, -2) : Buffer.concat([empty.subarray(0, -1), arrayHeader(n)]);
}

/** The encoded items of a slice of a list, as they stand in the whole array. */
function listItems(format: Format, slice: unknown[], first: boolean): Buffer {
  if (format === 'json') return Buffer.from(`${first ? '' : ','}${JSON.stringify(slice).slice(1, -1)}`);
  return encode('msgpack', slice).subarray(arrayHeader(slice.length).length);
}

/** A MessagePack array's header as msgpackr writes it: in the fewest bytes (fixarray, array 16, array 32). */
const arrayHeader = (n: number): Buffer => Buffer.from(n < 16 ? [0x90 | n] : n < 0x10000 ? [0xdc, n >> 8, n & 0xff] : [0xdd, n >>> 24, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff]);

export function replyError(ex: Exchange, code: ErrorCode, message?: string, headers?: [string, string][]): void {
  if (ex.aborted || ex.done) return;
  reply(ex, errorCatalogue[code].status, encode(ex.format, errorBody(code, message)), CONTENT_TYPE[ex.format], headers);
}
