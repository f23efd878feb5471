import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { DomainError, errorCatalogue, type ErrorCode } from '../errors.js';
import { bodyFormatOf, CONTENT_TYPE, decode, encode, formatOf, type Format } from '../http/wire.js';
import { sameKey } from '../digest.js';
import { isToken } from '../tokens/validate.js';
import type { SimSatellite } from './satellite.js';
import type { SignupSummary } from './signups.js';

/** the manager's codes, plus the one a satellite that is down answers */
type SimCode = ErrorCode | 'unavailable';

const BODY_LIMIT = 8 * 1024 * 1024;
const DEFAULT_PAGE = 1000;
const MAX_PAGE = 10_000;

class SimError extends Error {
  readonly status: number;
  constructor(readonly code: SimCode, message?: string) {
    super(message ?? (code === 'unavailable' ? 'the satellite is unavailable' : errorCatalogue[code].message));
    this.status = code === 'unavailable' ? 503 : errorCatalogue[code].status;
  }
}

export interface SimServerOptions {
  satellite: SimSatellite;
  /** when set, the /referrals routes require `Authorization: Bearer <outboundKey>` */
  outboundKey?: string;
  /** runs sign-ups for POST /sim/signups; absent when the sim has no manager to sign up with */
  signups?: (count: number, crossShare?: number) => Promise<SignupSummary>;
}

interface Request {
  method: string;
  path: string;
  query: URLSearchParams;
  headers: IncomingMessage['headers'];
  /** decoded body; undefined for a request without one */
  body: unknown;
}

type Handler = (r: Request) => unknown | Promise<unknown>;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function tokensBody(body: unknown): { userId: string; token: string }[] {
  if (!isObject(body) || !Array.isArray(body.tokens)) throw new SimError('invalid_request', 'body: want {tokens: [{userId, token}]}');
  return body.tokens.map((t, i) => {
    if (!isObject(t) || typeof t.userId !== 'string' || !isToken(t.token)) {
      throw new SimError('invalid_request', `tokens[${i}]: want {userId: string, token: lowercase UUIDv4}`);
    }
    return { userId: t.userId, token: t.token };
  });
}

function integer(value: unknown, field: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new SimError('invalid_request', `${field}: must be an integer ${min}..${max}`);
  }
  return value;
}

/**
 * The reference satellite's HTTP side on node:http (simplicity over speed): the two routes of the
 * satellite contract under /referrals/v1, and unauthenticated control routes under /sim for tests and the demo.
 */
export function createSimServer(opts: SimServerOptions): Server {
  const sat = opts.satellite;

  const authorize = (r: Request) => {
    if (opts.outboundKey === undefined) return;
    const m = /^Bearer (.+)$/i.exec(r.headers.authorization ?? '');
    if (!m || !sameKey(m[1]!, opts.outboundKey)) throw new SimError('unauthorized', 'missing or wrong outbound key');
  };

  const routes: Record<string, Record<string, Handler>> = {
    '/referrals/v1/users-without-tokens': {
      GET(r) {
        authorize(r);
        const rawLimit = r.query.get('limit');
        const limit = rawLimit === null || rawLimit === '' ? DEFAULT_PAGE : Number(rawLimit);
        integer(limit, 'limit', 1, MAX_PAGE);
        return sat.usersWithoutTokens(r.query.get('cursor') ?? '', limit);
      },
    },
    '/referrals/v1/tokens': {
      POST(r) {
        authorize(r);
        const out = sat.deliver(tokensBody(r.body));
        if (out.ok) return { accepted: out.accepted };
        if (out.reason === 'unknown_user') throw new SimError('invalid_request', `unknown userId "${out.userId}"; nothing stored`);
        throw new SimError('unavailable', `failing on purpose: ${out.total} tokens stored, fail-after ${out.after}`);
      },
    },
    '/sim/users': { GET: () => ({ users: sat.holdings() }) },
    '/sim/take-token': {
      GET() {
        const taken = sat.takeToken();
        if (!taken) throw new SimError('token_not_found', 'no user of this satellite has a token left to share');
        return taken;
      },
    },
    '/sim/fail': {
      POST(r) {
        if (!isObject(r.body) || !('after' in r.body)) throw new SimError('invalid_request', 'body: want {after: n|null}');
        sat.setFailAfter(r.body.after === null ? null : integer(r.body.after, 'after', 0, Number.MAX_SAFE_INTEGER));
        return { after: sat.failAfter, stored: sat.tokensStored };
      },
    },
    '/sim/leave': {
      POST(r) {
        if (!isObject(r.body) || !Array.isArray(r.body.userIds) || !r.body.userIds.every((u) => typeof u === 'string')) {
          throw new SimError('invalid_request', 'body: want {userIds: [string]}');
        }
        return { left: sat.leave(r.body.userIds as string[]) };
      },
    },
    '/sim/signups': {
      async POST(r) {
        if (!isObject(r.body)) throw new SimError('invalid_request', 'body: want {count, crossShare?}');
        const n = integer(r.body.count, 'count', 0, 1_000_000);
        const share = r.body.crossShare;
        if (share !== undefined && (typeof share !== 'number' || !(share >= 0 && share <= 1))) {
          throw new SimError('invalid_request', 'crossShare: must be a number 0..1');
        }
        if (!opts.signups) throw new SimError('invalid_request', 'this sim was started without --manager and --key');
        return opts.signups(n, share);
      },
    },
  };

  const send = (res: ServerResponse, status: number, format: Format, value: unknown) => {
    if (res.headersSent || res.destroyed) return;
    const body = encode(format, value);
    res.writeHead(status, { 'content-type': CONTENT_TYPE[format], 'content-length': body.length });
    res.end(body);
  };

  const handle = async (req: IncomingMessage, raw: Buffer, res: ServerResponse, format: Format) => {
    const url = new URL(req.url ?? '/', 'http://sim');
    const route = routes[url.pathname];
    if (!route) throw new SimError('not_found');
    const handler = route[req.method ?? ''];
    if (!handler) throw new SimError('method_not_allowed', `use ${Object.keys(route).join(', ')}`);
    let body: unknown;
    if (req.method === 'POST') {
      const type = bodyFormatOf(req.headers['content-type'] ?? '');
      if (!type) throw new SimError('unsupported_media_type');
      body = decode(type, raw);
    }
    send(res, 200, format, await handler({ method: req.method!, path: url.pathname, query: url.searchParams, headers: req.headers, body }));
  };

  return createServer((req, res) => {
    // reply in what the client accepts, else in what it sent, else JSON
    const format = formatOf(req.headers.accept ?? '') ?? bodyFormatOf(req.headers['content-type'] ?? '') ?? 'json';
    const fail = (err: unknown) => {
      // DomainError: the manager's own body decoder refused it (400 invalid_request)
      const e = err instanceof SimError || err instanceof DomainError ? err : new SimError('internal', (err as Error)?.message);
      send(res, e.status, format, { error: e.code, message: e.message });
    };
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      // keep reading to the end (so the client sees the 413 rather than a reset) but stop storing
      if (size <= BODY_LIMIT) chunks.push(c);
    });
    req.on('error', () => res.destroy());
    req.on('end', () => {
      if (size > BODY_LIMIT) return fail(new SimError('body_too_large', `body: over ${BODY_LIMIT} bytes`));
      handle(req, Buffer.concat(chunks), res, format).catch(fail);
    });
  });
}
