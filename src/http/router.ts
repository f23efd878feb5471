import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { format } from 'node:util';
import uws, { type HttpRequest, type HttpResponse, type TemplatedApp } from 'uWebSockets.js';
import { DomainError, errorCatalogue, type ErrorCode } from '../errors.js';
import { logTo } from '../log.js';
import { httpInFlight, observeRequest, redisErrors } from '../metrics.js';
import { audit } from './audit.js';
import { sameKey } from '../digest.js';
import { Authenticator } from './auth.js';
import { endUserIp } from './rate-limit.js';
import { bodyFormatOf, decode, formatOf, reply, replyError, replyList, replyValue, type Exchange, type Format, type ListValue, type Traffic } from './wire.js';

/** `metrics`: METRICS_KEY when one is set (RouterDeps.metricsKey), else open */
export type AuthKind = 'satellite' | 'admin' | 'metrics' | 'none';

/** A refusal with extra reply headers (Retry-After). */
export class HttpError extends DomainError {
  constructor(code: ErrorCode, message: string | undefined, readonly headers: [string, string][]) {
    super(code, message);
  }
}

export interface Call<B> {
  body: B;
  /** decoded path parameters, in pattern order */
  params: string[];
  /** the calling satellite (satellite routes) */
  satelliteId: string;
  ip: string;
  /** the IP is one the satellite named (X-End-User-IP), not the TCP peer */
  ipNamed: boolean;
  /** aborted when the request was answered 503 on its deadline while the handler still runs */
  signal: AbortSignal;
}

/** `headers`: extra reply headers (Retry-After) */
export type Outcome = ({ value: unknown } | { raw: Buffer | string; contentType: string } | { list: ListValue }) & { status?: number; headers?: [string, string][] };

/** A value to encode in the format the client asked for (200 unless `status`). */
export const ok = (value: unknown, status?: number): Outcome => ({ status, value });

/** `{[key]: items.map(each)}` in the format the client asked for, however long the list (wire.ts replyList). */
export const okList = <T>(key: string, items: readonly T[], each: (item: T) => unknown): Outcome => ({ list: { key, items, each } });

export interface Route<B = any> {
  method: 'get' | 'post' | 'patch' | 'delete';
  /** uWS pattern; `:name` segments become `params` */
  pattern: string;
  auth: AuthKind;
  /** JSON Schema of the body; routes without one take no body */
  schema?: object;
  /** a missing body is `{}` instead of a 400 */
  optionalBody?: boolean;
  /** read the client IP (rate-limited routes) */
  needsIp?: boolean;
  /** its deadline, when longer than REQUEST_TIMEOUT_MS: bulk work that grows with the data (a sweep of every shard), /metrics' wait for serve's primary */
  timeoutMs?: number;
  handler(call: Call<B>): Promise<Outcome>;
}

const SATELLITE_BODY_LIMIT = 16 * 1024;
const ADMIN_BODY_LIMIT = 8 * 1024 * 1024;

// One Ajv, schemas compiled once at startup. No coercion and no defaults: the body is taken as sent.
// Unknown properties are allowed and ignored on the satellite routes, so satellites can be newer than the
// server; an admin body refuses them (fields.ts, closed).
const ajv = new Ajv({ allErrors: false, strict: true, strictTypes: true, coerceTypes: false, useDefaults: false });

/**
 * Ajv's validator for a body `schema`, taking null for an optional field that cannot be null as its absence:
 * a Go satellite's nil pointer field without `omitempty` sends it, and `{"leaseMs": null}` was refused 400.
 * Where null means something (`nullable`: PATCH's "clear this field"), it is left as sent.
 */
function compile(schema: object): ValidateFunction {
  const validate = ajv.compile(schema);
  const s = schema as { required?: string[]; properties?: Record<string, { nullable?: boolean }> };
  const optional = Object.entries(s.properties ?? {}).filter(([k, p]) => !s.required?.includes(k) && !p.nullable).map(([k]) => k);
  if (!optional.length) return validate;
  const check = ((body: unknown) => {
    if (body && typeof body === 'object' && !Array.isArray(body)) {
      const fields = body as Record<string, unknown>;
      for (const k of optional) if (fields[k] === null) delete fields[k];
    }
    const ok = validate(body);
    check.errors = validate.errors;
    return ok;
  }) as ValidateFunction;
  return check;
}

/** A JSON pointer as the messages name fields: `/userIds/0` -> `userIds[0]`, as the engine's own checks do. */
const fieldOf = (pointer: string): string => pointer.slice(1).split('/').reduce((out, part) => (/^\d+$/.test(part) ? `${out}[${part}]` : out ? `${out}.${part}` : part), '');

function describe(err: ErrorObject | undefined): string {
  if (!err) return 'body: invalid';
  if (err.keyword === 'required') {
    const base = fieldOf(err.instancePath);
    return `${base ? `${base}.` : ''}${(err.params as { missingProperty: string }).missingProperty}: is required`;
  }
  if (err.keyword === 'additionalProperties') {
    const base = fieldOf(err.instancePath);
    return `${base ? `${base}.` : ''}${(err.params as { additionalProperty: string }).additionalProperty}: is not a field of this route`;
  }
  return `${fieldOf(err.instancePath) || 'body'}: ${err.message ?? 'invalid'}`;
}

export interface RouterDeps {
  /** absent on a server with only keyless routes (the snapshot writer's ops server) */
  auth?: Authenticator;
  /** true when an error means the store is unreachable (answered 503) */
  storeDown(err: unknown): boolean;
  /** requests in flight, for draining on shutdown */
  traffic: Traffic;
  /** answer 503 when a handler has not finished by then (a hanging Redis must not hang connections) */
  timeoutMs: number;
  /** METRICS_KEY, asked of 'metrics' routes; '' or absent: they are open */
  metricsKey?: string;
}

class StoreTimeout extends Error {}

/**
 * Mounts routes on a uWS app. Per request, everything needed from `req` is read synchronously (uWS
 * invalidates it on return), onAborted is armed at once, the body is read with a size cap, and every
 * failure, thrown or rejected, becomes an {error, message} reply: nothing escapes into uWS.
 */
export function mount(app: TemplatedApp, routes: Route[], deps: RouterDeps): void {
  const byPattern = new Map<string, Map<string, { route: Route; validate?: ValidateFunction }>>();
  for (const r of routes) {
    const m = byPattern.get(r.pattern) ?? new Map();
    m.set(r.method, { route: r, validate: r.schema ? compile(r.schema) : undefined });
    byPattern.set(r.pattern, m);
  }
  for (const [pattern, methods] of byPattern) {
    const nParams = pattern.split('/').filter((s) => s.startsWith(':')).length;
    const allow = [...methods.keys(), ...(methods.has('get') ? ['head'] : [])].map((m) => m.toUpperCase()).join(', ');
    app.any(pattern, (res, req) => {
      const method = req.getMethod();
      // HEAD is GET without the body (load balancers probe /healthz with it)
      const entry = methods.get(method) ?? (method === 'head' ? methods.get('get') : undefined);
      const ex = start(res, req, deps, pattern, method);
      const length = req.getHeader('content-length');
      const unframed = ambiguousLength(req, method, length);
      if (unframed) {
        const audited = entry?.route.auth === 'admin' && entry.route.method !== 'get';
        return refuseAmbiguous(ex, unframed, audited ? { method: method.toUpperCase(), path: req.getUrl(), ip: Buffer.from(res.getRemoteAddressAsText()).toString() } : undefined);
      }
      if (!entry) return replyError(ex, 'method_not_allowed', `${method.toUpperCase()} not allowed; use ${allow}`, [['allow', allow]]);
      const params: string[] = [];
      for (let i = 0; i < nParams; i++) params.push(req.getParameter(i) ?? '');
      const audited = entry.route.auth === 'admin' && entry.route.method !== 'get';
      const ip = entry.route.needsIp || audited ? Buffer.from(res.getRemoteAddressAsText()).toString() : '';
      const endUser = entry.route.needsIp && entry.route.auth === 'satellite' ? endUserHeader(req) : '';
      const key = Authenticator.bearer(req.getHeader('authorization'));
      const contentType = req.getHeader('content-type');
      const path = audited ? req.getUrl() : undefined;
      handle(ex, entry.route, entry.validate, deps, { params, ip, endUser, key, contentType, length, path });
    });
  }
  // uWS matches no route with an empty path parameter (/v1/users//tokens): a 404 "no route" read as a wrong url
  const emptyParam = [...byPattern.keys()].filter((p) => p.includes('/:')).map((p) => ({
    re: new RegExp(`^${p.replace(/:\w+/g, '([^/]*)')}$`),
    names: p.split('/').filter((seg) => seg.startsWith(':')).map((seg) => seg.slice(1)),
  }));
  app.any('/*', (res, req) => {
    const ex = start(res, req, deps, 'unmatched', req.getMethod());
    const unframed = ambiguousLength(req, req.getMethod(), req.getHeader('content-length'));
    if (unframed) return refuseAmbiguous(ex, unframed);
    const url = req.getUrl();
    for (const { re, names } of emptyParam) {
      const m = re.exec(url);
      const i = m ? m.slice(1).indexOf('') : -1;
      if (i >= 0) return replyError(ex, 'invalid_request', `${names[i]}: must not be empty`);
    }
    replyError(ex, 'not_found', `no route ${req.getMethod().toUpperCase()} ${url}`);
  });
}

/**
 * X-End-User-IP as sent. uWS's getHeader gives the first of several lines, so a proxy adding its own behind one
 * the person signing up had set left the person's (a new one for every guess) to be counted: two lines are a
 * list, as one line holding a comma is, and refused alike. Only a request naming an address pays for the walk.
 */
function endUserHeader(req: HttpRequest): string {
  const first = req.getHeader('x-end-user-ip');
  if (!first) return first;
  const lines: string[] = [];
  req.forEach((name, value) => {
    if (name === 'x-end-user-ip') lines.push(value);
  });
  return lines.length > 1 ? lines.join(', ') : first;
}

/**
 * Why a request's Content-Length lines leave where its body ends in doubt, if they do. uWS frames the body by
 * the first line and takes an empty value as 0, so the rest of the body (a second request a client, or a front
 * end that reads the framing otherwise, put there) was parsed as the connection's next request and answered.
 * Lines repeating one value are one (RFC 9110 allows it). Walked only when a Content-Length line is there, or
 * on a method that may carry a body (an empty line reads as none): GETs without a body skip it.
 */
function ambiguousLength(req: HttpRequest, method: string, length: string): string | undefined {
  if (!length && (method === 'get' || method === 'head')) return undefined;
  let first: string | undefined;
  let why: string | undefined;
  req.forEach((name, value) => {
    if (name !== 'content-length' || why) return;
    if (value.trim() === '') why = 'Content-Length: empty';
    else if (first === undefined) first = value.trim();
    else if (value.trim() !== first) why = 'Content-Length: sent twice, with different values';
  });
  return why;
}

/**
 * A 400 for ambiguous framing, and the connection closed after it: whatever follows on it may be body bytes.
 * Answered on the next turn, so uWS still counts the request as unanswered while it parses the rest of what
 * came in the same read: a second request there closes the connection unanswered instead of being served.
 */
function refuseAmbiguous(ex: Exchange, message: string, audited?: { method: string; path: string; ip: string }): void {
  ex.close = true;
  setImmediate(() => {
    replyError(ex, 'invalid_request', message);
    if (audited) audit({ ...audited, status: ex.aborted ? 0 : 400, error: 'invalid_request', ms: 0 });
  });
}

/** Listens on host:port; the listen socket (to close) and the port it got (port 0: a free one). */
export async function listen(app: TemplatedApp, host: string, port: number): Promise<{ socket: uws.us_listen_socket; port: number }> {
  const socket = await new Promise<uws.us_listen_socket>((resolve, reject) => {
    app.listen(host, port, (s) => (s ? resolve(s) : reject(new Error(`cannot listen on ${host}:${port}`))));
  });
  return { socket, port: uws.us_socket_local_port(socket as unknown as uws.us_socket) };
}

function start(res: HttpResponse, req: HttpRequest, deps: RouterDeps, pattern: string, method: string): Exchange {
  const t0 = process.hrtime.bigint();
  const accept = formatOf(req.getHeader('accept'));
  const format: Format = accept ?? bodyFormatOf(req.getHeader('content-type')) ?? 'json';
  deps.traffic.n++;
  if (deps.traffic.draining) deps.traffic.lastAt = Date.now();
  // the scrape reading the gauge is no request of the API's: counted, an idle server read 1
  const inFlight = pattern === '/metrics' ? 0 : 1;
  httpInFlight.inc(inFlight);
  let ended = false;
  const end = (status: number) => {
    if (ended) return;
    ended = true;
    deps.traffic.n--;
    httpInFlight.dec(inFlight);
    if (status > 0) observeRequest(pattern, method, status, Number(process.hrtime.bigint() - t0) / 1e9);
  };
  const ex: Exchange = { res, traffic: deps.traffic, aborted: false, done: false, format, head: method === 'head', finish: end, gone: new AbortController() };
  res.onAborted(() => {
    ex.aborted = true;
    // a caller that hung up (its own timeout) may send the same generate again: what this one makes is revoked
    ex.gone.abort();
    end(0);
  });
  return ex;
}

interface Head {
  params: string[];
  ip: string;
  /** X-End-User-IP as sent (satellite routes that read the IP): the client IP the limits count instead */
  endUser: string;
  key: string | undefined;
  contentType: string;
  length: string;
  /** the URL path, read for the audit trail only (admin routes that change something) */
  path: string | undefined;
}

function handle(ex: Exchange, route: Route, validate: ValidateFunction | undefined, deps: RouterDeps, head: Head): void {
  const caller = authorize(route.auth, head.key, deps);
  // an auth rejection must not go unobserved while the body is still arriving
  caller.catch(() => undefined);
  if (!route.schema) {
    void run(ex, route, deps, head, caller, undefined);
    return;
  }
  const limit = route.auth === 'admin' ? ADMIN_BODY_LIMIT : SATELLITE_BODY_LIMIT;
  const format = head.contentType ? bodyFormatOf(head.contentType) : undefined;
  if (head.contentType && !format) return refuse(ex, route, head, 'unsupported_media_type', `content-type "${head.contentType.slice(0, 100)}" not supported; use application/msgpack or application/json`);
  // a body of known length and no type is refused as early as a wrong type: before auth, like it
  if (!head.contentType && Number(head.length) > 0) return refuse(ex, route, head, 'unsupported_media_type', 'content-type missing; use application/msgpack or application/json');
  if (Number(head.length) > limit) return refuse(ex, route, head, 'body_too_large', `body over ${limit} bytes`);
  // anyone but the admin is refused (401/403) without first receiving up to 8 MiB of admin body
  if (route.auth === 'admin' && !(head.key !== undefined && deps.auth?.isAdmin(head.key))) {
    void run(ex, route, deps, head, caller, undefined);
    return;
  }
  const chunks: Buffer[] = [];
  let size = 0;
  ex.res.onData((chunk, isLast) => {
    try {
      if (ex.done || ex.aborted) return;
      size += chunk.byteLength;
      if (size > limit) return refuse(ex, route, head, 'body_too_large', `body over ${limit} bytes`);
      chunks.push(Buffer.from(chunk.slice(0)));
      if (!isLast) return;
      const raw = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size);
      let body: unknown;
      // answered once the caller is authorized: a bad body from an unknown key is a 401, not a 400
      let refusal: DomainError | undefined;
      if (raw.length === 0) {
        if (!route.optionalBody) refusal = new DomainError('invalid_request', 'body: empty');
        else body = {};
      } else if (!format) {
        refusal = new DomainError('unsupported_media_type', 'content-type missing; use application/msgpack or application/json');
      } else {
        try {
          body = decode(format, raw);
          if (validate && !validate(body)) refusal = new DomainError('invalid_request', describe(validate.errors?.[0]));
        } catch (err) {
          refusal = err instanceof DomainError ? err : new DomainError('invalid_request', 'body: undecodable');
        }
      }
      void run(ex, route, deps, head, caller, body, refusal);
    } catch (err) {
      fail(ex, err, deps);
    }
  });
}

/** A refusal answered before the body is read (its type or size): audited like any other refused admin change. */
function refuse(ex: Exchange, route: Route, head: Head, code: ErrorCode, message: string): void {
  replyError(ex, code, message);
  if (head.path !== undefined) audit({ method: route.method.toUpperCase(), path: head.path, ip: head.ip, status: errorCatalogue[code].status, error: code, ms: 0 });
}

async function run(ex: Exchange, route: Route, deps: RouterDeps, head: Head, caller: Promise<string>, body: unknown, refusal?: DomainError): Promise<void> {
  const t0 = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const { gone } = ex;
  try {
    const ms = Math.max(deps.timeoutMs, route.timeoutMs ?? 0);
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        gone.abort();
        reject(new StoreTimeout(`no answer from the store within ${ms} ms`));
      }, ms);
    });
    const out = await Promise.race([call(route, head, caller, body, refusal, gone.signal), deadline]);
    if ('raw' in out) {
      reply(ex, out.status ?? 200, Buffer.isBuffer(out.raw) ? out.raw : Buffer.from(out.raw), out.contentType, out.headers);
    } else if ('list' in out) {
      await replyList(ex, out.status ?? 200, out.list, out.headers);
    } else {
      replyValue(ex, out.status ?? 200, out.value, out.headers);
      if (head.path !== undefined) audit({ method: route.method.toUpperCase(), path: head.path, ip: head.ip, status: out.status ?? 200, ms: performance.now() - t0, body, result: out.value });
    }
  } catch (err) {
    // the caller went away: no reply to write, and its abort is no server fault (a generate revoked what it made)
    if (ex.aborted) {
      if (head.path !== undefined) audit({ method: route.method.toUpperCase(), path: head.path, ip: head.ip, status: 0, ms: performance.now() - t0 });
      return;
    }
    const code = fail(ex, err, deps);
    if (head.path !== undefined) {
      // a refused body is not written: it is whatever the caller sent, and may be the reason it was refused
      audit({ method: route.method.toUpperCase(), path: head.path, ip: head.ip, status: errorCatalogue[code].status, error: code, ms: performance.now() - t0 });
    }
  } finally {
    clearTimeout(timer);
  }
}

async function call(route: Route, head: Head, caller: Promise<string>, body: unknown, refusal: DomainError | undefined, signal: AbortSignal): Promise<Outcome> {
  const satelliteId = await caller;
  if (refusal) throw refusal;
  const params = head.params.map((p, i) => {
    try {
      return decodeURIComponent(p);
    } catch {
      const name = route.pattern.split('/').filter((s) => s.startsWith(':'))[i]!.slice(1);
      throw new DomainError('invalid_request', `${name}: bad percent-encoding`);
    }
  });
  let ip = head.ip;
  if (head.endUser) {
    ip = endUserIp(head.endUser) ?? '';
    if (!ip) throw new DomainError('invalid_request', 'X-End-User-IP: not an IP address');
  }
  return route.handler({ body, params, satelliteId, ip, ipNamed: head.endUser !== '', signal });
}

async function authorize(kind: AuthKind, key: string | undefined, { auth, metricsKey }: RouterDeps): Promise<string> {
  if (kind === 'none') return '';
  if (kind === 'metrics') {
    if (!metricsKey || (key !== undefined && sameKey(key, metricsKey))) return '';
    throw new DomainError('unauthorized', key === undefined ? 'missing Authorization: Bearer <METRICS_KEY>' : 'wrong key: /metrics takes METRICS_KEY');
  }
  // an operator whose admin call fails must learn the server has no admin key, not hunt for a typo in theirs
  const disabled = kind === 'admin' && auth !== undefined && !auth.adminEnabled;
  const noAdmin = 'admin routes are disabled: this server was started without ADMIN_KEY';
  if (key === undefined || !auth) throw new DomainError('unauthorized', disabled ? noAdmin : 'missing Authorization: Bearer <key>');
  if (auth.isAdmin(key)) {
    if (kind === 'admin') return '';
    throw new DomainError('forbidden', 'the admin key may not call satellite routes');
  }
  // disabled, the route fails whoever calls: a Redis that cannot tell who must not turn that into a 503
  const id = await auth.satellite(key).catch((err: unknown) => {
    if (disabled) return undefined;
    throw err;
  });
  if (id === undefined) throw new DomainError('unauthorized', disabled ? noAdmin : 'unknown API key');
  if (kind === 'admin') throw new DomainError('forbidden', 'a satellite key may not call admin routes');
  return id;
}

/** the router's own failures, the stack after the words as console.error wrote it */
const httpLog = logTo({ component: 'http' });

/** Answers `err` as its wire error; returns the code it answered with. */
function fail(ex: Exchange, err: unknown, deps: RouterDeps): ErrorCode {
  let code: ErrorCode = 'internal';
  try {
    if (err instanceof DomainError) {
      code = err.code;
      replyError(ex, code, err.message, err instanceof HttpError ? err.headers : undefined);
    } else if (err instanceof StoreTimeout || deps.storeDown(err)) {
      // short of replicas (REDIS_WAIT_REPLICAS, or a master's min-replicas-to-write): Redis answers, its copies lag
      redisErrors().labels(/^NOREPLICAS /.test((err as Error)?.message ?? '') ? 'replicas' : 'unavailable').inc();
      code = 'store_unavailable';
      replyError(ex, code, undefined, [['retry-after', '1']]);
    } else {
      if ((err as Error)?.name === 'ReplyError') redisErrors().labels('error').inc();
      // the stack, not the whole object: an ioredis ReplyError carries the command's arguments (a satellite's outbound key)
      httpLog('error', format('internal error:', err instanceof Error ? err.stack : err), { error: code });
      replyError(ex, code);
    }
  } catch (again) {
    httpLog('error', format('could not reply:', again));
  }
  return code;
}
