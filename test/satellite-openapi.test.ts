import { randomUUID } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SatelliteApi, SatelliteCallError } from '../src/campaigns/satellite-api.js';
import { decodeBody } from '../src/msgpack.js';
import { SatelliteRegistry } from '../src/satellites/registry.js';
import { createSimServer, SimSatellite } from '../src/sim/index.js';
import { isToken } from '../src/tokens/validate.js';
import { runCli } from './helpers/cli.js';
import { call, type Reply } from './helpers/http.js';
import { escape, METHODS, openApi, refsOf, untypedEnums, validatedBySchema, type Json } from './helpers/openapi.js';
import { engineFixture, type EngineFixture } from './helpers/redis.js';

// a satellite team generates its server from docs/satellite-openapi.yaml: a route, parameter or field it
// gets wrong is a satellite the manager cannot list or deliver to, so the spec is held to the requests a real
// `generate` sends and to the replies of the reference satellite

const { spec, target, followed, validatorAt } = openApi('satellite-openapi.yaml');

/** Every operation the spec describes, as `METHOD /path`. */
const described = Object.entries(spec.paths as Json).flatMap(([path, item]) => METHODS.filter((m) => item[m]).map((m) => `${m.toUpperCase()} ${path}`));

/** A request a satellite received, and the reply it gave. */
interface Exchange {
  method: string;
  path: string;
  query: URLSearchParams;
  headers: IncomingHttpHeaders;
  body: Buffer;
  reply: Reply;
}

const bodyOf = (raw: Buffer, contentType: string | undefined): unknown => decodeBody(raw, String(contentType ?? ''));

const listen = (server: Server) => new Promise<string>((resolve) => server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`)));

/**
 * The reference satellite (src/sim) behind a front that records each request and the reply, forwarding both
 * unchanged; `before` runs on each request before it is forwarded (to change the satellite meanwhile).
 */
async function recordedSim(satellite: SimSatellite, outboundKey?: string, before?: (ex: Omit<Exchange, 'reply'>) => void) {
  const sim = createSimServer({ satellite, outboundKey });
  const pool = new Pool(await listen(sim), { connections: 2 });
  const exchanges: Exchange[] = [];
  const front = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', async () => {
      const url = new URL(req.url!, 'http://satellite');
      const request = { method: req.method!, path: url.pathname, query: url.searchParams, headers: req.headers, body: Buffer.concat(chunks) };
      try {
        before?.(request);
        // undici sets these itself, and refuses some of them as request headers
        const { host: _h, connection: _c, 'content-length': _l, 'transfer-encoding': _t, 'keep-alive': _k, ...headers } = req.headers;
        const r = await pool.request({ method: req.method as 'GET', path: req.url!, headers: headers as Record<string, string>, body: request.body.length ? request.body : undefined });
        const raw = Buffer.from(await r.body.arrayBuffer());
        exchanges.push({ ...request, reply: { status: r.statusCode, headers: r.headers, body: raw } });
        res.writeHead(r.statusCode, { 'content-type': String(r.headers['content-type']) }).end(raw);
      } catch (err) {
        // recorded as no reply, which no response of the spec matches
        exchanges.push({ ...request, reply: { status: 0, headers: {}, body: Buffer.from(String(err)) } });
        res.destroy();
      }
    });
  });
  return {
    url: await listen(front),
    exchanges,
    async close() {
      await pool.close();
      for (const s of [front, sim]) {
        s.closeAllConnections();
        await new Promise((resolve) => s.close(resolve));
      }
    },
  };
}

/** The operation a request calls; undefined when the spec describes none. */
const operationOf = (method: string, path: string): Json | undefined => spec.paths[path]?.[method.toLowerCase()];

/** Fields of `value` that `schema` does not name: it admits them (satellites ignore unknown fields), but a field the manager sends is described. */
function undeclared(value: unknown, schema: Json, at = ''): string[] {
  const s = schema.$ref ? target(schema.$ref) : schema;
  if (Array.isArray(value) && s.items) return value.flatMap((v, i) => undeclared(v, s.items, `${at}[${i}]`));
  if (!value || typeof value !== 'object' || !s.properties) return [];
  return Object.entries(value).flatMap(([k, v]) => (k in s.properties ? undeclared(v, s.properties[k], `${at}.${k}`) : [`${at}.${k}`]));
}

/** What is wrong with a request the manager sent, by the spec ([]: nothing); `key`: the outbound key it should carry. */
function requestProblems(ex: Omit<Exchange, 'reply'>, key: string | undefined): string[] {
  const name = `${ex.method} ${ex.path}`;
  const op = operationOf(ex.method, ex.path);
  if (!op) return [`${name}: no operation in docs/satellite-openapi.yaml`];
  const problems: string[] = [];
  const at = `/paths/${escape(ex.path)}/${ex.method.toLowerCase()}`;
  const params = (op.parameters ?? []).map((p: Json, i: number) => followed(p, `${at}/parameters/${i}`));
  const check = (pointer: string, value: unknown, what: string) => {
    const validate = validatorAt(pointer);
    if (!validate(value)) problems.push(`${name} ${what} ${JSON.stringify(value)}: ${JSON.stringify(validate.errors)}`);
  };
  const query = params.filter(({ node }: { node: Json }) => node.in === 'query');
  for (const k of new Set(ex.query.keys())) if (!query.some(({ node }: { node: Json }) => node.name === k)) problems.push(`${name}: query parameter ${k} not described`);
  for (const { node: p, pointer } of query) {
    const value = ex.query.get(p.name);
    if (value === null) {
      if (p.required) problems.push(`${name}: required query parameter ${p.name} not sent`);
      continue;
    }
    if (value === '' && !p.allowEmptyValue) problems.push(`${name}: query parameter ${p.name} sent empty`);
    // a query value is text: an integer parameter is checked as the number it spells
    check(`${pointer}/schema`, p.schema.type === 'integer' && /^-?\d+$/.test(value) ? Number(value) : value, `query ${p.name}`);
  }
  // the manager sends every header the spec names, and as its example says
  for (const { node: p, pointer } of params.filter(({ node }: { node: Json }) => node.in === 'header')) {
    const value = ex.headers[p.name.toLowerCase()];
    if (value !== p.example) problems.push(`${name}: header ${p.name} is ${JSON.stringify(value)}, the spec's example ${JSON.stringify(p.example)}`);
    check(`${pointer}/schema`, value, `header ${p.name}`);
  }
  // OpenAPI describes Accept, Content-Type and Authorization not as parameters but by the replies' media types,
  // the request body's and the security schemes
  const replyTypes = Object.keys(followed(op.responses['200'], '').node.content);
  if (!replyTypes.includes(String(ex.headers.accept))) problems.push(`${name}: Accept ${ex.headers.accept} is none of the 200 reply's types ${replyTypes}`);
  const sent = ex.headers.authorization;
  if (key === undefined ? sent !== undefined : sent !== `Bearer ${key}`) problems.push(`${name}: Authorization ${sent} where the outbound key is ${key}`);
  const security: Json[] = op.security ?? spec.security;
  if (sent === undefined && !security.some((s) => Object.keys(s).length === 0)) problems.push(`${name}: no Authorization, which the spec requires`);
  if (!op.requestBody) {
    if (ex.body.length) problems.push(`${name}: a body where the spec describes none`);
    return problems;
  }
  const type = String(ex.headers['content-type']);
  if (!(type in op.requestBody.content)) return [...problems, `${name}: Content-Type ${type} is none of ${Object.keys(op.requestBody.content)}`];
  const body = bodyOf(ex.body, type);
  check(`${at}/requestBody/content/${escape(type)}/schema`, body, 'body');
  for (const field of undeclared(body, op.requestBody.content[type].schema)) problems.push(`${name}: body field ${field} not described`);
  return problems;
}

/**
 * What is wrong with a satellite's reply to `METHOD path` by the spec ([]: nothing), and the response key it
 * answers to: its status, else its range (5XX), else default.
 */
function replyProblems(method: string, path: string, r: Reply): { key: string; problems: string[] } {
  const name = `${method} ${path} ${r.status}`;
  const responses: Json = operationOf(method, path)?.responses ?? {};
  const key = [String(r.status), `${String(r.status)[0]}XX`, 'default'].find((k) => k in responses);
  if (!key) return { key: 'none', problems: [`${name}: undeclared reply`] };
  const { node: response, pointer } = followed(responses[key], `/paths/${escape(path)}/${method.toLowerCase()}/responses/${key}`);
  const type = String(r.headers['content-type']).split(';')[0]!;
  if (!(type in (response.content ?? {}))) return { key, problems: [`${name}: content type ${type} is none of ${Object.keys(response.content ?? {})}`] };
  const problems: string[] = [];
  const validate = validatorAt(`${pointer}/content/${escape(type)}/schema`);
  const body = Buffer.isBuffer(r.body) ? bodyOf(r.body, type) : r.body;
  if (!validate(body)) problems.push(`${name} ${JSON.stringify(body)}: ${JSON.stringify(validate.errors)}`);
  for (const [header, h] of Object.entries((response.headers ?? {}) as Json)) {
    const { node, pointer: hp } = followed(h, `${pointer}/headers/${header}`);
    const value = r.headers[header.toLowerCase()];
    if (value === undefined ? node.required : !validatorAt(`${hp}/schema`)(value)) problems.push(`${name}: header ${header} ${String(value)}`);
  }
  if (r.headers['retry-after'] !== undefined && !response.headers?.['Retry-After']) problems.push(`${name}: Retry-After the spec does not declare`);
  return { key, problems };
}

describe('docs/satellite-openapi.yaml as a document', () => {
  it('is an OpenAPI 3.1 document whose every $ref resolves and whose schemas compile strictly', () => {
    expect(spec.openapi).toMatch(/^3\.1\.\d+$/);
    const refs = refsOf(spec);
    expect(refs.length).toBeGreaterThan(20);
    for (const ref of new Set(refs)) expect(() => target(ref), ref).not.toThrow();
    for (const name of Object.keys(spec.components.schemas)) expect(() => validatorAt(`/components/schemas/${name}`), name).not.toThrow();
  });

  it('is valid by the OpenAPI 3.1 schema', async () => {
    await expect(validatedBySchema(spec)).resolves.toMatchObject({ openapi: spec.openapi });
  });

  it('gives every enum and const its type', () => {
    expect(untypedEnums(spec)).toEqual([]);
  });

  it('describes the outbound key as a bearer token that a satellite registered without one does not get', () => {
    expect(spec.security).toEqual([{ outboundKey: [] }, {}]);
    expect(spec.components.securitySchemes).toEqual({ outboundKey: { type: 'http', scheme: 'bearer', description: expect.any(String) } });
    expect(Object.values(spec.paths as Json).flatMap((item) => METHODS.filter((m) => item[m]?.security))).toEqual([]);
  });

  it("takes the tokens and only the tokens the manager's own check takes", () => {
    const token = validatorAt('/components/schemas/Token');
    for (const t of [randomUUID(), randomUUID().toUpperCase(), '00000000-0000-1000-8000-000000000000', `${randomUUID()}x`, '']) expect(token(t), t).toBe(isToken(t));
  });

  it('says Retry-After in both forms the manager reads', () => {
    const header = validatorAt('/components/headers/RetryAfter/schema');
    for (const ok of ['0', '30', new Date(Date.now() + 30_000).toUTCString()]) expect(header(ok), ok).toBe(true);
    for (const bad of ['5,5', '1.5', 'soon']) expect(header(bad), bad).toBe(false);
  });
});

describe("the requests a real generate sends, and the reference satellite's replies", () => {
  let fx: EngineFixture;
  const KEY = `outbound-${randomUUID()}`;
  let keyed: Awaited<ReturnType<typeof recordedSim>>;
  let keyless: Awaited<ReturnType<typeof recordedSim>>;
  const sat1 = new SimSatellite('s1', 11);
  let leaveAtFirstPush = false;

  beforeAll(async () => {
    fx = await engineFixture({ label: 'satspec' });
    // the first push's users close their accounts just before it arrives: that push is refused, split down
    // to each user, refused again, and an empty push asks whether the route works
    keyed = await recordedSim(sat1, KEY, (ex) => {
      if (!leaveAtFirstPush || ex.method !== 'POST') return;
      const body = bodyOf(ex.body, ex.headers['content-type']) as { tokens: { userId: string }[] };
      if (!body.tokens.length) return;
      leaveAtFirstPush = false;
      sat1.leave(body.tokens.map((t) => t.userId));
    });
    keyless = await recordedSim(new SimSatellite('s2', 3));
    const registry = new SatelliteRegistry(fx.redis, fx.prefix);
    await registry.add({ id: 's1', url: keyed.url, outboundKey: KEY });
    await registry.add({ id: 's2', url: keyless.url });
  });
  afterAll(async () => {
    await keyed?.close();
    await keyless?.close();
    await fx?.close();
  });

  it('generate --all: every request is one the spec describes, every reply one it declares, and it calls every operation', async () => {
    leaveAtFirstPush = true;
    const run = await runCli(['generate', '--all', '--per-user', '2', '--campaign', 'spec', '--page-size', '4', '--batch-size', '4', '--json'], { KEY_PREFIX: fx.prefix, SATELLITE_ATTEMPTS: '1' }).finally(() => (leaveAtFirstPush = false));
    const problems: string[] = [];
    const answered = new Set<string>();
    for (const [sim, key] of [[keyed, KEY], [keyless, undefined]] as const) {
      for (const ex of sim.exchanges) {
        problems.push(...requestProblems(ex, key));
        const reply = replyProblems(ex.method, ex.path, ex.reply);
        problems.push(...reply.problems);
        answered.add(`${ex.method} ${ex.path} ${reply.key}`);
      }
    }
    expect(problems).toEqual([]);
    const called = new Set([...keyed.exchanges, ...keyless.exchanges].map((ex) => `${ex.method} ${ex.path}`));
    expect([...called].sort()).toEqual([...described].sort());
    expect(run.code, run.stderr).toBe(0);
    const reports = Object.fromEntries((JSON.parse(run.stdout).satellites as Json[]).map((r) => [r.satelliteId, r]));
    // all 11 users of s1 listed across 3 pages, the 2 who left refused, the others served
    expect(reports.s1).toMatchObject({ status: 'done', usersListed: 11, usersRefused: 2, tokensDelivered: 18 });
    expect(reports.s2).toMatchObject({ status: 'done', usersListed: 3, usersRefused: 0, tokensDelivered: 6 });
    // the run met the contract's corners: later pages by cursor, a refusal, the empty push answered 0
    const s1 = keyed.exchanges;
    expect(s1.filter((ex) => ex.method === 'GET').map((ex) => ex.query.get('cursor'))).toEqual(['', 's1-u0000004', 's1-u0000008']);
    expect(answered).toContain('POST /referrals/v1/tokens 400');
    const empty = s1.filter((ex) => ex.method === 'POST' && (bodyOf(ex.body, ex.headers['content-type']) as Json).tokens.length === 0);
    expect(empty.map((ex) => bodyOf(ex.reply.body, String(ex.reply.headers['content-type'])))).toEqual([{ accepted: 0 }]);
  });

  /**
   * Each call SatelliteApi makes, made once. Typed by its public methods: one added to it fails the type check
   * (npm run lint) until it is listed here, and the test then fails until the spec describes what it calls.
   */
  const everyCall: Record<Exclude<keyof SatelliteApi, 'close'>, (api: SatelliteApi) => Promise<unknown>> = {
    usersWithoutTokens: (api) => api.usersWithoutTokens(null, 10),
    pushTokens: (api) => api.pushTokens([{ userId: 's1-u0000010', token: randomUUID() }]),
  };

  it('every call SatelliteApi can make is an operation of the spec, and every operation one of its calls', async () => {
    const api = new SatelliteApi({ url: keyed.url, key: KEY, timeoutMs: 5000, attempts: 1 });
    const before = keyed.exchanges.length;
    try {
      for (const make of Object.values(everyCall)) await make(api);
    } finally {
      await api.close();
    }
    const made = keyed.exchanges.slice(before);
    expect(made.flatMap((ex) => requestProblems(ex, KEY))).toEqual([]);
    expect([...new Set(made.map((ex) => `${ex.method} ${ex.path}`))].sort()).toEqual([...described].sort());
  });

  it("the reference satellite's answers, failures too, are the replies the spec declares", async () => {
    const pool = new Pool(keyed.url, { connections: 1 });
    const list = '/referrals/v1/users-without-tokens';
    const push = '/referrals/v1/tokens';
    const tokens = (userId: string, n = 1) => ({ tokens: Array.from({ length: n }, () => ({ userId, token: randomUUID() })) });
    try {
      const cases: [string, string, Promise<Reply>, string][] = [
        ['GET', list, call(pool, 'GET', `${list}?cursor=&limit=5`, { key: KEY, format: 'msgpack' }), '200'],
        ['GET', list, call(pool, 'GET', `${list}?cursor=s1-u0000003&limit=5`, { key: KEY, format: 'json' }), '200'],
        ['GET', list, call(pool, 'GET', `${list}?cursor=&limit=5`, { format: 'msgpack' }), '401'],
        ['GET', list, call(pool, 'GET', `${list}?cursor=&limit=0`, { key: KEY, format: 'msgpack' }), 'default'],
        ['POST', push, call(pool, 'POST', push, { key: KEY, body: tokens('s1-u0000005', 2), format: 'msgpack' }), '200'],
        ['POST', push, call(pool, 'POST', push, { key: KEY, body: { tokens: [] }, format: 'json' }), '200'],
        ['POST', push, call(pool, 'POST', push, { key: KEY, body: tokens('nobody'), format: 'msgpack' }), '400'],
        ['POST', push, call(pool, 'POST', push, { body: tokens('s1-u0000005'), format: 'msgpack' }), '401'],
        ['POST', push, call(pool, 'POST', push, { key: KEY, raw: Buffer.alloc(8 * 1024 * 1024 + 1, 0x20), contentType: 'application/msgpack', accept: 'application/msgpack' }), '413'],
        ['POST', push, call(pool, 'POST', push, { key: KEY, raw: 'tokens', contentType: 'text/plain', accept: 'application/msgpack' }), 'default'],
      ];
      const seen: string[] = [];
      const problems: string[] = [];
      for (const [method, path, reply] of cases) {
        const r = replyProblems(method, path, await reply);
        seen.push(r.key);
        problems.push(...r.problems);
      }
      // failing on purpose (--fail-after): 503, the satellite being unavailable
      sat1.setFailAfter(0);
      const failing = replyProblems('POST', push, await call(pool, 'POST', push, { key: KEY, body: tokens('s1-u0000005'), format: 'msgpack' }));
      sat1.setFailAfter(null);
      expect([...problems, ...failing.problems]).toEqual([]);
      expect([...seen, failing.key]).toEqual([...cases.map((c) => c[3]), '5XX']);
    } finally {
      await pool.close();
    }
  });
});

describe('the statuses the spec declares are the ones the manager tells apart', () => {
  let server: Server;
  let url: string;
  /** What the satellite at `${url}/<status>/` answers: that status, an Error body, and Retry-After if `/<status>/<retry-after>/` */
  beforeAll(async () => {
    server = createServer((req, res) => {
      const [, status, retryAfter] = req.url!.split('/');
      req.resume().on('end', () => {
        res.writeHead(Number(status), { 'content-type': 'application/json', ...(retryAfter !== 'referrals' ? { 'retry-after': decodeURIComponent(retryAfter!) } : {}) });
        res.end(JSON.stringify({ error: 'refused', message: `HTTP ${status}` }));
      });
    });
    url = await listen(server);
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  const statuses = [...Array.from({ length: 52 }, (_, i) => 400 + i), ...Array.from({ length: 12 }, (_, i) => 500 + i)];
  const failure = async (status: number, make: (api: SatelliteApi) => Promise<unknown>) => {
    const api = new SatelliteApi({ url: `${url}/${status}/`, timeoutMs: 5000, attempts: 1 });
    try {
      return (await make(api).then(() => undefined, (err: unknown) => err)) as SatelliteCallError;
    } finally {
      await api.close();
    }
  };
  const pushOne = (api: SatelliteApi) => api.pushTokens([{ userId: 'u', token: randomUUID() }]);
  const responses = (path: string): Json => (spec.paths[path].get ?? spec.paths[path].post).responses;
  /** The statuses an operation declares one by one (not 5XX, not default). */
  const explicit = (path: string) => Object.keys(responses(path)).filter((k) => /^\d{3}$/.test(k)).map(Number);

  it('a push refused (the batch split, its users refused) on exactly the 4xx the spec declares, but 401, 403, 408 and 429', async () => {
    const refused: number[] = [];
    for (const status of statuses) {
      const err = await failure(status, pushOne);
      expect(err, String(status)).toBeInstanceOf(SatelliteCallError);
      if (err.refused) refused.push(status);
    }
    expect(refused).toEqual(explicit('/referrals/v1/tokens').filter((s) => s >= 400 && s < 500 && ![401, 403, 408, 429].includes(s)));
  });

  it('both calls retried on exactly 408, 429 and 5xx, which the spec declares, 429 and 5xx with Retry-After; no other reply has it', async () => {
    for (const [path, make] of [['/referrals/v1/users-without-tokens', (api: SatelliteApi) => api.usersWithoutTokens(null, 10)], ['/referrals/v1/tokens', pushOne]] as const) {
      const retried: number[] = [];
      for (const status of statuses) if ((await failure(status, make)).retryable) retried.push(status);
      expect(retried, path).toEqual(statuses.filter((s) => s === 408 || s === 429 || s >= 500));
      expect(explicit(path), path).toContain(408);
      const withRetryAfter = Object.entries(responses(path)).filter(([, r]) => followed(r as Json, '').node.headers?.['Retry-After']).map(([k]) => k);
      expect(withRetryAfter.sort(), path).toEqual(['429', '5XX']);
    }
  });

  it("a retry waits the Retry-After the satellite sent, in either form the spec's header takes", async () => {
    const header = validatorAt('/components/headers/RetryAfter/schema');
    for (const retryAfter of ['30', new Date(Date.now() + 31_000).toUTCString()]) {
      expect(header(retryAfter), retryAfter).toBe(true);
      const waits: number[] = [];
      // stopped at its first retry's wait, which onRetry reports: nothing is waited here
      const stop = new AbortController();
      const api = new SatelliteApi({ url: `${url}/503/${encodeURIComponent(retryAfter)}/`, timeoutMs: 5000, attempts: 2, onRetry: (_e, _a, wait) => (waits.push(wait), stop.abort(new Error('stopped'))), signal: stop.signal });
      await expect(api.usersWithoutTokens(null, 10)).rejects.toThrow('stopped');
      await api.close();
      expect(waits[0], retryAfter).toBeGreaterThanOrEqual(29_000);
    }
  });
});
