import { Pool } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../bench/redis-server.js';
import { loadConfig } from '../src/config.js';
import { errorCatalogue } from '../src/errors.js';
import type { Route } from '../src/http/router.js';
import { routes } from '../src/http/routes.js';
import { sleepUntil } from './helpers/engine-suite.js';
import { ADMIN_KEY, call, privateRedis, serve, type Format, type Reply, type Served } from './helpers/http.js';
import { escape, METHODS, openApi, refsOf, untypedEnums, validatedBySchema, type Json } from './helpers/openapi.js';
import { dropSharedPrefixes, testPrefix } from './helpers/redis.js';
import { holdingProxy } from './helpers/redis-proxy.js';

// satellite teams generate their clients from docs/openapi.yaml: a route, field or limit it gets wrong is a
// client that fails against the real server, so the spec is held to the route table and to real replies

const { spec, target, followed, validatorAt } = openApi('openapi.yaml');

/** `/v1/users/:userId/tokens` as OpenAPI writes it: `/v1/users/{userId}/tokens` */
const templated = (pattern: string) => pattern.replace(/:(\w+)/g, '{$1}');

/**
 * A request schema of the spec as the route declares it: refs replaced by what they point at, annotations
 * (description, format) dropped, and OpenAPI 3.1's `type: [string, 'null']` written as the `nullable: true`
 * the server's Ajv (draft-07 with its nullable keyword) takes. Siblings of a `$ref` are merged into its target.
 */
function normalised(schema: unknown): unknown {
  if (Array.isArray(schema)) return schema.map(normalised);
  if (!schema || typeof schema !== 'object') return schema;
  const { $ref, description: _d, format: _f, ...rest } = schema as Json;
  if ($ref) return normalised({ ...target($ref), ...rest });
  const out: Json = Object.fromEntries(Object.entries(rest).map(([k, v]) => [k, k === 'properties' ? Object.fromEntries(Object.entries(v).map(([p, s]) => [p, normalised(s)])) : normalised(v)]));
  if (Array.isArray(out.type) && out.type.length === 2 && out.type.includes('null')) {
    out.type = out.type.find((t: string) => t !== 'null');
    out.nullable = true;
  }
  return out;
}

/**
 * The server's own route table: routes() with deps that do nothing. Building the routes only reads the
 * config (MAX_LEASE_MS's default into reserve's schema) and makes the API's metric counters in this process;
 * the deps are used by handlers, which never run here. So the list and the body schemas are the ones
 * mount() serves and compiles, not a copy parsed out of the source text.
 */
function serverRoutes(): Route[] {
  const inert = {} as never;
  return routes({ config: loadConfig({}, {}), engine: inert, registry: inert, auth: inert, limiter: inert, ready: inert, metrics: inert });
}

function operation(route: Pick<Route, 'method' | 'pattern'>): Json {
  return spec.paths[templated(route.pattern)]?.[route.method];
}

describe('docs/openapi.yaml against the route table', () => {
  const table = serverRoutes();

  it('is an OpenAPI 3.1 document whose every $ref resolves', () => {
    expect(spec.openapi).toMatch(/^3\.1\.\d+$/);
    expect(spec.info.title).toBeTruthy();
    expect(Object.keys(spec.components.schemas).length).toBeGreaterThan(10);
    const refs = refsOf(spec);
    expect(refs.length).toBeGreaterThan(100);
    for (const ref of new Set(refs)) expect(() => target(ref), ref).not.toThrow();
    // strict: a misspelt keyword (maxLenght) would check nothing, and a reply schema with one would pass anything
    for (const name of Object.keys(spec.components.schemas)) expect(() => validatorAt(`/components/schemas/${name}`), name).not.toThrow();
  });

  it('is valid by the OpenAPI 3.1 schema', async () => {
    await expect(validatedBySchema(spec)).resolves.toMatchObject({ openapi: spec.openapi });
  });

  it('has exactly the routes the server has, each with its path parameters and the security of its auth kind', () => {
    const documented = Object.entries(spec.paths as Json).flatMap(([p, item]) => METHODS.filter((m) => item[m]).map((m) => `${m.toUpperCase()} ${p}`));
    expect(documented.sort()).toEqual(table.map((r) => `${r.method.toUpperCase()} ${templated(r.pattern)}`).sort());
    const security: Record<Route['auth'], unknown> = { satellite: spec.security, admin: [{ adminKey: [] }], none: [], metrics: [{}, { metricsKey: [] }] };
    expect(spec.security).toEqual([{ satelliteKey: [] }]);
    for (const r of table) {
      const path = templated(r.pattern);
      const params = [...(spec.paths[path].parameters ?? []), ...(operation(r).parameters ?? [])].map((p: Json) => followed(p, '').node);
      const named = params.filter((p) => p.in === 'path').map((p) => [p.name, p.required]);
      expect(named, path).toEqual([...r.pattern.matchAll(/:(\w+)/g)].map((m) => [m[1], true]));
      // the router reads X-End-User-IP on these routes only: elsewhere a satellite sending it limits nothing
      const headers = params.filter((p) => p.in === 'header').map((p) => p.name);
      expect(headers, `${r.method} ${path}`).toEqual(r.needsIp && r.auth === 'satellite' ? ['X-End-User-IP'] : []);
      expect(operation(r).security ?? spec.security, `${r.method} ${path}`).toEqual(security[r.auth]);
    }
  });

  it('gives each route the body schema the server validates, for JSON and MessagePack alike', () => {
    for (const r of table) {
      const body = operation(r)?.requestBody;
      const name = `${r.method} ${r.pattern}`;
      if (!r.schema) {
        expect(body, name).toBeUndefined();
        continue;
      }
      expect(body, name).toBeDefined();
      expect(Object.keys(body.content).sort(), name).toEqual(['application/json', 'application/msgpack']);
      expect(body.required, name).toBe(!r.optionalBody);
      for (const media of Object.values(body.content as Json)) expect(normalised(media.schema), name).toEqual(r.schema);
    }
  });

  it('gives every enum and const its type', () => {
    expect(untypedEnums(spec)).toEqual([]);
  });

  it("lists the catalogue's wire codes as the Error schema's enum", () => {
    expect([...spec.components.schemas.Error.properties.error.enum].sort()).toEqual(Object.keys(errorCatalogue).sort());
  });
});

/** Every reply seen: `METHOD pattern status`. */
const seen = new Set<string>();

/** Fails unless the spec declares this status for the route, with this reply's content type, headers and body. */
function conforms(method: string, pattern: string, r: Reply): void {
  const path = templated(pattern);
  const name = `${method} ${path} ${r.status} ${JSON.stringify(r.body)}`;
  const declared = spec.paths[path]?.[method.toLowerCase()]?.responses?.[String(r.status)];
  expect(declared, `undeclared reply: ${name}`).toBeDefined();
  const { node: response, pointer } = followed(declared, `/paths/${escape(path)}/${method.toLowerCase()}/responses/${r.status}`);
  const type = String(r.headers['content-type']).split(';')[0]!;
  expect(Object.keys(response.content ?? {}), `content type ${type} of ${name}`).toContain(type);
  const validate = validatorAt(`${pointer}/content/${escape(type)}/schema`);
  expect(validate(r.body) ? [] : validate.errors, name).toEqual([]);
  // a client reads only the headers the spec names: a Retry-After it does not is a wait it never makes
  if (r.headers['retry-after'] !== undefined) expect(Object.keys(response.headers ?? {}), `Retry-After of ${name}`).toContain('Retry-After');
  for (const [header, h] of Object.entries((response.headers ?? {}) as Json)) {
    const { node, pointer: at } = followed(h, `${pointer}/headers/${header}`);
    const value = r.headers[header.toLowerCase()];
    if (node.required) expect(value, `${header} of ${name}`).toBeDefined();
    if (value !== undefined) expect(validatorAt(`${at}/schema`)(value), `${header}: ${String(value)} of ${name}`).toBe(true);
  }
  seen.add(`${method} ${pattern} ${r.status}`);
}

const prefix = testPrefix('openapi');
let server: Served;
let pool: Pool;

/** A request to a route (`params` fill its `:name` segments, percent-encoded), its reply checked against the spec. */
async function send(method: string, pattern: string, opts: Parameters<typeof call>[3] & { params?: string[] } = {}): Promise<Reply> {
  const params = [...(opts.params ?? [])];
  const url = pattern.replace(/:\w+/g, () => encodeURIComponent(params.shift()!));
  const r = await call(pool, method, url, opts);
  conforms(method, pattern, r);
  return r;
}

describe('a real serve answers only what docs/openapi.yaml describes', () => {
  const admin = { key: ADMIN_KEY };
  const unknownToken = (i: number) => `ffff0000-0000-4000-8000-${String(i).padStart(12, '0')}`;

  /** A body each route with one takes (its schema passes), so what refuses the request is something else. */
  const bodies: Record<string, object> = {
    'post /v1/tokens/redeem': { token: unknownToken(30), userId: 'u' },
    'post /v1/tokens/reserve': { token: unknownToken(30) },
    'post /v1/tokens/complete': { token: unknownToken(30), reservationId: 'r', userId: 'u' },
    'post /v1/tokens/release': { token: unknownToken(30), reservationId: 'r' },
    'post /v1/admin/satellites': { id: 'sweep-new' },
    'patch /v1/admin/satellites/:id': { name: 'n' },
    'post /v1/admin/satellites/:id/rotate-key': { graceMs: 0 },
    'post /v1/admin/tokens/generate': { satelliteId: 'sweeper', userIds: ['u'], perUser: 1 },
    'post /v1/admin/tokens/revoke': { tokens: [unknownToken(30)] },
    'post /v1/admin/tokens/purge': { madeBefore: 0, dryRun: true },
  };
  /** The routes that take a key, each as a request it would answer 200 with the right key and Redis up. */
  const guarded = () => serverRoutes().filter((r) => r.auth === 'satellite' || r.auth === 'admin');
  const request = (r: Route) => ({
    method: r.method.toUpperCase(),
    params: (r.pattern.match(/:\w+/g) ?? []).map((p) => (p === ':token' ? unknownToken(30) : 'sweeper')),
    body: r.schema ? bodies[`${r.method} ${r.pattern}`]! : undefined,
  });

  beforeAll(async () => {
    server = await serve({ KEY_PREFIX: prefix, METRICS_KEY: 'openapi-metrics-key-0123456789abcdef', RATE_LIMIT_SATELLITE_FAILURES: '3', RATE_LIMIT_WINDOW_MS: '3600000' });
    pool = new Pool(server.url, { connections: 2 });
  });
  afterAll(async () => {
    await pool?.close();
    await server?.stop();
    await dropSharedPrefixes(prefix);
  });

  it('the admin routes, in JSON and MessagePack, and their refusals', async () => {
    const us1 = await send('POST', '/v1/admin/satellites', { ...admin, body: { id: 'us1', name: 'US1' } });
    expect(us1.status).toBe(201);
    expect((await send('POST', '/v1/admin/satellites', { ...admin, body: { id: 'eu1', url: 'https://eu1.example', outboundKey: 'k' }, format: 'msgpack' })).status).toBe(201);
    expect((await send('POST', '/v1/admin/satellites', { ...admin, body: { id: 'us1' } })).body.error).toBe('satellite_exists');
    expect((await send('POST', '/v1/admin/satellites', { ...admin, body: { name: 'no id' } })).body.error).toBe('invalid_request');
    expect((await send('POST', '/v1/admin/satellites', { key: us1.body.apiKey, body: { id: 'x' } })).body.error).toBe('forbidden');
    expect((await send('POST', '/v1/admin/satellites', { body: { id: 'x' }, format: 'msgpack' })).body.error).toBe('unauthorized');
    expect((await send('POST', '/v1/admin/satellites', { ...admin, raw: 'id=x', contentType: 'text/plain' })).body.error).toBe('unsupported_media_type');
    for (const format of ['json', 'msgpack'] as Format[]) expect((await send('GET', '/v1/admin/satellites', { ...admin, format })).body.satellites).toHaveLength(2);

    expect((await send('PATCH', '/v1/admin/satellites/:id', { ...admin, params: ['us1'], body: { url: 'https://us1.example', name: null } })).body).not.toHaveProperty('name');
    expect((await send('PATCH', '/v1/admin/satellites/:id', { ...admin, params: ['nope'], body: { name: 'n' }, format: 'msgpack' })).body.error).toBe('satellite_not_found');
    expect((await send('PATCH', '/v1/admin/satellites/:id', { ...admin, params: ['us1'], body: {} })).body.error).toBe('invalid_request');

    expect((await send('POST', '/v1/admin/satellites', { ...admin, body: { id: 'gone' } })).status).toBe(201);
    // without a body (it is optional) and with one
    expect((await send('POST', '/v1/admin/satellites/:id/rotate-key', { ...admin, params: ['gone'] })).status).toBe(200);
    expect((await send('POST', '/v1/admin/satellites/:id/rotate-key', { ...admin, params: ['gone'], body: { graceMs: 0 }, format: 'msgpack' })).status).toBe(200);
    expect((await send('POST', '/v1/admin/satellites/:id/rotate-key', { ...admin, params: ['nope'], body: { graceMs: 0 } })).status).toBe(404);
    expect((await send('POST', '/v1/admin/satellites/:id/rotate-key', { ...admin, params: ['gone'], body: { graceMs: -1 } })).status).toBe(400);
    expect((await send('DELETE', '/v1/admin/satellites/:id', { ...admin, params: ['gone'], format: 'msgpack' })).body).toEqual({ id: 'gone', removed: true });
    expect((await send('DELETE', '/v1/admin/satellites/:id', { ...admin, params: ['gone'] })).body.error).toBe('satellite_not_found');

    const made = await send('POST', '/v1/admin/tokens/generate', { ...admin, body: { satelliteId: 'us1', userIds: ['a', 'b'], perUser: 2, expiresAt: Date.now() + 3_600_000 }, format: 'msgpack' });
    expect(made.body.tokens).toHaveLength(4);
    expect((await send('POST', '/v1/admin/tokens/generate', { ...admin, body: { satelliteId: 'nope', userIds: ['a'], perUser: 1 } })).body.error).toBe('satellite_not_found');
    expect((await send('POST', '/v1/admin/tokens/generate', { ...admin, body: { satelliteId: 'us1', userIds: ['a'], perUser: 1, expiresAt: 1 } })).body.error).toBe('invalid_request');
    expect((await send('POST', '/v1/admin/tokens/generate', { ...admin, body: { satelliteId: 'us1', userIds: ['a'], perUser: 1, campaignId: 'dead' } })).status).toBe(200);
    for (const body of [{ campaignId: 'dead' }, { tokens: [made.body.tokens[0].token] }, { satelliteId: 'us1', userId: 'b' }, { satelliteId: 'eu1', allUsers: true }]) {
      expect((await send('POST', '/v1/admin/tokens/revoke', { ...admin, body })).status).toBe(200);
    }
    expect((await send('POST', '/v1/admin/tokens/revoke', { ...admin, body: { satelliteId: 'us1' }, format: 'msgpack' })).body.error).toBe('invalid_request');
    expect((await send('POST', '/v1/admin/tokens/generate', { ...admin, body: { satelliteId: 'us1', userIds: ['a'], perUser: 1, campaignId: 'dead' } })).body.error).toBe('campaign_revoked');

    expect((await send('POST', '/v1/admin/tokens/purge', { ...admin, body: { madeBefore: Date.now(), dryRun: true } })).body).toHaveProperty('wouldPurge');
    expect((await send('POST', '/v1/admin/tokens/purge', { ...admin, body: { madeBefore: Date.now() }, format: 'msgpack' })).body).toHaveProperty('purged');
    expect((await send('POST', '/v1/admin/tokens/purge', { ...admin, body: { madeBefore: 'now' } })).status).toBe(400);
    for (const format of ['json', 'msgpack'] as Format[]) expect(Object.keys((await send('GET', '/v1/admin/stats', { ...admin, format })).body.satellites)).toContain('us1');
    expect((await send('GET', '/v1/admin/stats', { key: 'rmk_unknown' })).status).toBe(401);
  });

  it('the satellite routes, in JSON and MessagePack, and their refusals', async () => {
    const keyOf = async (id: string) => (await send('POST', '/v1/admin/satellites', { ...admin, body: { id } })).body.apiKey as string;
    const [own, other, guesser] = [await keyOf('own'), await keyOf('other'), await keyOf('guesser')];
    const expiresAt = Date.now() + 3000;
    const gen = async (body: object) => ((await send('POST', '/v1/admin/tokens/generate', { ...admin, body: { satelliteId: 'own', userIds: ['alice'], ...body } })).body.tokens as { token: string }[]).map((t) => t.token);
    const [t1, t2, t3, t4, t5] = await gen({ perUser: 5 });
    const [soon] = await gen({ perUser: 1, expiresAt });
    const [dead] = await gen({ perUser: 1, campaignId: 'dead-2' });
    await send('POST', '/v1/admin/tokens/revoke', { ...admin, body: { tokens: [dead] } });

    const redeem = (key: string, token: string, userId: string, format: Format = 'json') => send('POST', '/v1/tokens/redeem', { key, body: { token, userId }, format });
    expect((await redeem(other, t1!, 'bob')).body.ownerUserId).toBe('alice');
    expect((await redeem(own, t2!, 'carol', 'msgpack')).status).toBe(200);
    expect((await redeem(other, t1!, 'dave', 'msgpack')).body.error).toBe('token_already_redeemed');
    expect((await redeem(other, unknownToken(1), 'bob')).body.error).toBe('token_not_found');
    expect((await redeem(other, dead!, 'bob')).body.error).toBe('token_revoked');
    expect((await redeem(other, 'not-a-token', 'bob')).body.error).toBe('invalid_request');
    expect((await redeem(ADMIN_KEY, t3!, 'bob')).body.error).toBe('forbidden');
    expect((await redeem('rmk_unknown', t3!, 'bob', 'msgpack')).body.error).toBe('unauthorized');
    expect((await send('POST', '/v1/tokens/redeem', { key: other, raw: JSON.stringify({ token: t3, userId: 'x'.repeat(17_000) }), contentType: 'application/json' })).body.error).toBe('body_too_large');
    expect((await send('POST', '/v1/tokens/redeem', { key: other, raw: 'token=x', contentType: 'application/x-www-form-urlencoded' })).body.error).toBe('unsupported_media_type');

    const reserved = await send('POST', '/v1/tokens/reserve', { key: other, body: { token: t3, leaseMs: 60_000, reservationId: 'signup-1' }, format: 'msgpack' });
    expect(reserved.body.reservationId).toBe('signup-1');
    expect((await redeem(other, t3!, 'eve')).body.error).toBe('token_reserved');
    expect((await send('POST', '/v1/tokens/reserve', { key: other, body: { token: t3, leaseMs: 0 } })).status).toBe(400);
    expect((await send('POST', '/v1/tokens/complete', { key: other, body: { token: t3, reservationId: 'signup-2', userId: 'eve' } })).body.error).toBe('reservation_mismatch');
    expect((await send('POST', '/v1/tokens/complete', { key: other, body: { token: t3, reservationId: 'signup-1', userId: 'eve' }, format: 'msgpack' })).status).toBe(200);
    expect((await send('POST', '/v1/tokens/complete', { key: other, body: { token: unknownToken(2), reservationId: 'r', userId: 'eve' } })).body.error).toBe('token_not_found');
    const held = await send('POST', '/v1/tokens/reserve', { key: other, body: { token: t4 } });
    expect((await send('POST', '/v1/tokens/release', { key: other, body: { token: t4, reservationId: held.body.reservationId }, format: 'msgpack' })).body.state).toBe('unredeemed');
    expect((await send('POST', '/v1/tokens/release', { key: other, body: { token: t4, reservationId: held.body.reservationId } })).body.error).toBe('reservation_mismatch');
    expect((await send('POST', '/v1/tokens/release', { key: other, body: { token: t4 } })).status).toBe(400);
    const lapsing = await send('POST', '/v1/tokens/reserve', { key: other, body: { token: t5, leaseMs: 1 } });
    await sleepUntil(lapsing.body.leaseExpiresAt + 30);
    expect((await send('POST', '/v1/tokens/complete', { key: other, body: { token: t5, reservationId: lapsing.body.reservationId, userId: 'fay' } })).body.error).toBe('reservation_expired');

    for (const format of ['json', 'msgpack'] as Format[]) {
      expect((await send('GET', '/v1/tokens/:token', { key: other, params: [t1!], format })).body.expiresAt).toBeNull();
      expect((await send('GET', '/v1/tokens/:token', { key: other, params: [soon!], format })).body.expiresAt).toBe(expiresAt);
      expect((await send('GET', '/v1/users/:userId/tokens', { key: own, params: ['alice'], format })).body.tokens.length).toBeGreaterThan(0);
      const { body } = await send('GET', '/v1/users/:userId/redemptions', { key: own, params: ['alice'], format });
      // redeemerUserId only for the caller's own users
      expect(body.redemptions.map((r: { redeemerUserId?: string }) => r.redeemerUserId ?? null)).toEqual([null, 'carol', null]);
    }
    expect((await send('GET', '/v1/tokens/:token', { key: own, params: [unknownToken(3)] })).body.error).toBe('token_not_found');
    expect((await send('GET', '/v1/tokens/:token', { key: other, params: ['NOT-A-TOKEN'] })).body.error).toBe('invalid_request');
    expect((await send('GET', '/v1/users/:userId/tokens', { key: own, params: [''] })).body.error).toBe('invalid_request');
    expect((await send('GET', '/v1/users/:userId/redemptions', { key: ADMIN_KEY, params: ['alice'] })).body.error).toBe('forbidden');
    await sleepUntil(expiresAt + 30);
    expect((await redeem(own, soon!, 'gus')).body.error).toBe('token_expired');
    expect((await send('DELETE', '/v1/users/:userId/tokens', { key: own, params: ['alice'], format: 'msgpack' })).body.revoked).toBeGreaterThan(0);
    expect((await send('DELETE', '/v1/users/:userId/tokens', { params: ['alice'] })).body.error).toBe('unauthorized');

    // past the satellites' failure limit (3 a window) a guess is 429 with Retry-After; a window that ends
    // between two guesses starts the count again, so it guesses until refused
    let guess: Reply | undefined;
    for (let i = 0; i < 8 && guess?.status !== 429; i++) guess = await redeem(guesser, unknownToken(10 + i), 'g', i % 2 ? 'msgpack' : 'json');
    expect(guess!.body.error).toBe('rate_limited');
    expect((await send('GET', '/v1/tokens/:token', { key: guesser, params: [unknownToken(20)], format: 'msgpack' })).status).toBe(429);
  });

  it("each guarded route's refusals by key, content type and size, in JSON and MessagePack", async () => {
    const own = (await send('POST', '/v1/admin/satellites', { ...admin, body: { id: 'sweeper' } })).body.apiKey as string;
    for (const format of ['json', 'msgpack'] as Format[]) {
      for (const r of guarded()) {
        const { method, params, body } = request(r);
        expect((await send(method, r.pattern, { params, body, format })).body.error, `${method} ${r.pattern}`).toBe('unauthorized');
        const wrongKey = r.auth === 'admin' ? own : ADMIN_KEY;
        expect((await send(method, r.pattern, { key: wrongKey, params, body, format })).body.error, `${method} ${r.pattern}`).toBe('forbidden');
        if (!r.schema) continue;
        const accept = format === 'json' ? 'application/json' : 'application/msgpack';
        const key = r.auth === 'admin' ? ADMIN_KEY : own;
        expect((await send(method, r.pattern, { key, params, raw: 'x=1', contentType: 'text/plain', accept })).body.error, `${method} ${r.pattern}`).toBe('unsupported_media_type');
        const over = Buffer.alloc((r.auth === 'admin' ? 8 * 1024 * 1024 : 16 * 1024) + 1, 0x20);
        expect((await send(method, r.pattern, { key, params, raw: over, contentType: 'application/json', accept })).body.error, `${method} ${r.pattern}`).toBe('body_too_large');
      }
    }
  });

  it('the refusals of one route or another that the sweep does not make, in JSON and MessagePack', async () => {
    for (const format of ['json', 'msgpack'] as Format[]) {
      // a satellite of its own: three guesses are its limit's worth
      const key = (await send('POST', '/v1/admin/satellites', { ...admin, body: { id: `refused-${format}` } })).body.apiKey as string;
      const [taken, dead] = ((await send('POST', '/v1/admin/tokens/generate', { ...admin, body: { satelliteId: `refused-${format}`, userIds: ['ann'], perUser: 2 } })).body.tokens as { token: string }[]).map((t) => t.token);
      await send('POST', '/v1/tokens/redeem', { key, body: { token: taken, userId: 'bo' } });
      await send('POST', '/v1/admin/tokens/revoke', { ...admin, body: { tokens: [dead] } });
      const to = (pattern: string, body: object) => send('POST', pattern, { key, body, format });
      expect((await to('/v1/tokens/reserve', { token: taken })).body.error).toBe('token_already_redeemed');
      expect((await to('/v1/tokens/complete', { token: taken, userId: 'bo' })).body.error).toBe('invalid_request');
      expect((await send('DELETE', '/v1/users/:userId/tokens', { key, params: [''], format })).body.error).toBe('invalid_request');
      expect((await send('GET', '/v1/users/:userId/redemptions', { key, params: [''], format })).body.error).toBe('invalid_request');
      expect((await to('/v1/tokens/reserve', { token: unknownToken(40) })).body.error).toBe('token_not_found');
      expect((await to('/v1/tokens/release', { token: unknownToken(41), reservationId: 'r' })).body.error).toBe('token_not_found');
      expect((await to('/v1/tokens/reserve', { token: dead })).body.error).toBe('token_revoked');
      // the fourth guess crosses the limit; from then on every limited route is refused before the engine
      expect((await to('/v1/tokens/redeem', { token: unknownToken(42), userId: 'g' })).body.error).toBe('rate_limited');
      for (const [pattern, body] of [['/v1/tokens/reserve', { token: taken }], ['/v1/tokens/complete', { token: taken, reservationId: 'r', userId: 'g' }], ['/v1/tokens/release', { token: taken, reservationId: 'r' }]] as const) {
        expect((await to(pattern, body)).body.error, pattern).toBe('rate_limited');
      }
      expect((await send('DELETE', '/v1/admin/satellites/:id', { ...admin, params: [''], format })).body.error).toBe('invalid_request');
    }
  });

  // a client generated from the spec checks a body against its schema: a bound the spec lacks is a body that
  // client sends and the server refuses, a bound the server lacks one it refuses and the server takes. Each
  // body is otherwise valid, so a 400 can only be the field at its bound (the rules only prose can state, a
  // token's form, an id's bytes, revoke's one form, are left out)
  it("refuses a body at a field's bounds exactly when the spec's request schema does", async () => {
    const key = (await send('POST', '/v1/admin/satellites', { ...admin, body: { id: 'edges' } })).body.apiKey as string;
    await send('POST', '/v1/admin/satellites', { ...admin, body: { id: 'edges-rotated' } });
    const tokens = ((await send('POST', '/v1/admin/tokens/generate', { ...admin, body: { satelliteId: 'edges', userIds: ['u'], perUser: 12 } })).body.tokens as { token: string }[]).map((t) => t.token);
    const x = (n: number) => 'x'.repeat(n);
    let n = 0;
    const sat = (fields: object) => ({ id: `edge-${n++}`, ...fields });
    const url = (length: number) => `https://e.x/${x(length - 12)}`;
    const at = (method: string, pattern: string) => (body: object): [string, string, object] => [method, pattern, body];
    const edges = [
      ...[{ id: '' }, { id: x(128) }, { id: x(129) }].map(at('post', '/v1/admin/satellites')),
      ...[{ name: '' }, { name: x(1) }, { name: x(256) }, { name: x(257) }, { url: '' }, { url: url(2048) }, { url: url(2049) }, { outboundKey: '' }, { outboundKey: x(1) }, { outboundKey: x(4096) }, { outboundKey: x(4097) }]
        .flatMap((b) => [at('post', '/v1/admin/satellites')(sat(b)), at('patch', '/v1/admin/satellites/:id')(b)]),
      ...[-1, 0, 315_360_000_000, 315_360_000_001].map((graceMs) => at('post', '/v1/admin/satellites/:id/rotate-key')({ graceMs })),
      ...[{ userIds: [] }, { perUser: 0 }, { userIds: [x(128)] }, { userIds: [x(129)] }, { campaignId: '' }, { campaignId: x(128) }, { campaignId: x(129) }]
        .map((b) => at('post', '/v1/admin/tokens/generate')({ satelliteId: 'edges', userIds: ['u'], perUser: 1, ...b })),
      ...[{ tokens: [] }, { campaignId: '' }, { campaignId: x(129) }].map(at('post', '/v1/admin/tokens/revoke')),
      ...[{ madeBefore: -1 }, { madeBefore: 0, dryRun: true }].map(at('post', '/v1/admin/tokens/purge')),
      ...[{ leaseMs: 0 }, { leaseMs: 1 }, { leaseMs: 3_600_000 }, { leaseMs: 3_600_001 }, { reservationId: '' }, { reservationId: x(128) }, { reservationId: x(129) }]
        .map((b) => at('post', '/v1/tokens/reserve')({ token: tokens.pop(), ...b })),
      ...['', x(128), x(129)].map((userId) => at('post', '/v1/tokens/redeem')({ token: tokens.pop(), userId })),
      at('post', '/v1/tokens/complete')({ token: tokens.pop(), reservationId: '', userId: 'u' }),
      at('post', '/v1/tokens/release')({ token: tokens.pop(), reservationId: '' }),
    ];
    const disagreements: string[] = [];
    for (const [method, pattern, body] of edges) {
      const admitted = validatorAt(`/paths/${escape(templated(pattern))}/${method}/requestBody/content/application~1json/schema`)(body);
      const id = pattern.includes('rotate-key') ? 'edges-rotated' : 'edges';
      const r = await send(method.toUpperCase(), pattern, { key: pattern.startsWith('/v1/admin') ? ADMIN_KEY : key, params: [id], body });
      if (admitted === (r.status === 400)) disagreements.push(`${method} ${pattern} ${JSON.stringify(body).slice(0, 80)}: spec ${admitted ? 'admits' : 'refuses'}, server ${r.status} ${r.body.message ?? ''}`);
    }
    // a path parameter's too; and userId is one segment, percent-encoded, so an id holding a / or % reaches its user
    for (const userId of ['', x(128), x(129)]) {
      const admitted = validatorAt(`/paths/${escape('/v1/users/{userId}/tokens')}/parameters/0/schema`)(userId);
      const r = await send('GET', '/v1/users/:userId/tokens', { key, params: [userId] });
      if (admitted === (r.status === 400)) disagreements.push(`GET /v1/users/${userId}/tokens: spec ${admitted ? 'admits' : 'refuses'}, server ${r.status} ${r.body.message ?? ''}`);
    }
    expect(disagreements).toEqual([]);
    const odd = 'a/b ü%+;';
    await send('POST', '/v1/admin/tokens/generate', { ...admin, body: { satelliteId: 'edges', userIds: [odd], perUser: 1 } });
    expect((await send('GET', '/v1/users/:userId/tokens', { key, params: [odd] })).body.tokens).toHaveLength(1);
  });

  it('the ops routes', async () => {
    for (const format of ['json', 'msgpack'] as Format[]) {
      expect((await send('GET', '/healthz', { format })).body.status).toBe('ok');
      expect((await send('GET', '/readyz', { format })).body.ready).toBe(true);
    }
    expect((await send('GET', '/metrics')).status).toBe(401);
    expect((await send('GET', '/metrics', { key: 'openapi-metrics-key-0123456789abcdef' })).body).toContain('rm_http_requests_total');
  });

  it('with Redis unreachable: 503 with Retry-After, and /readyz 503', async () => {
    // a port nothing listens on: serve starts, answers 503 and reports itself not ready
    const down = await serve({ KEY_PREFIX: prefix, REDIS_URL: `redis://127.0.0.1:${await freePort()}` });
    const saved = pool;
    pool = new Pool(down.url, { connections: 1 });
    try {
      for (const format of ['json', 'msgpack'] as Format[]) {
        for (const r of guarded()) {
          const { method, params, body } = request(r);
          const key = r.auth === 'admin' ? ADMIN_KEY : 'rmk_any';
          expect((await send(method, r.pattern, { key, params, body, format })).body.error, `${method} ${r.pattern}`).toBe('store_unavailable');
        }
      }
      expect((await send('GET', '/readyz')).body).toMatchObject({ ready: false, redis: 'down' });
      expect((await send('GET', '/healthz')).status).toBe(200);
    } finally {
      await pool.close();
      pool = saved;
      await down.stop();
    }
  });

  it('with Redis hanging (connection up, no answers): /readyz 503, why or just unavailable; and /metrics with its primary silent: 503, retry', async () => {
    const redis = await privateRedis();
    await redis.start();
    const proxy = await holdingProxy(redis.url);
    // the probe's PING gives up at half the request deadline, so the reply says why; a hang after the PING
    // answered (its later commands are not bounded) outlasts the deadline, which answers store_unavailable
    const hung = await serve({ KEY_PREFIX: prefix, REDIS_URL: proxy.url, REQUEST_TIMEOUT_MS: '2000' });
    const hungPool = new Pool(hung.url, { connections: 2 });
    const saved = pool;
    pool = hungPool;
    try {
      redis.signal('SIGSTOP');
      const probes = await Promise.all((['json', 'msgpack'] as Format[]).map((format) => send('GET', '/readyz', { format })));
      for (const r of probes) expect(r.body).toMatchObject({ ready: false, redis: 'down', error: expect.stringContaining('no answer') });
      redis.signal('SIGCONT');
      for (const format of ['json', 'msgpack'] as Format[]) {
        // the probe's last bounded command is INFO memory: its reply is the section alone, not the whole INFO's
        proxy.holdAfter(/\$\d+\r\n# Memory\r\n/);
        expect((await send('GET', '/readyz', { format })).body).toEqual({ error: 'store_unavailable', message: expect.any(String) });
        proxy.release();
      }
      expect((await send('GET', '/readyz')).body.ready).toBe(true);

      // serve's primary sums the workers' metrics: stopped, it answers no worker, which gives up after 4 s,
      // also under this serve's REQUEST_TIMEOUT_MS of 2 s (whose deadline answered store_unavailable, blaming
      // Redis). A 503 with Retry-After: the primary is unavailable for a while, not broken (a 500 reads as a bug)
      const scrape = (on: Pool, format: Format) => call(on, 'GET', '/metrics', { key: 'openapi-metrics-key-0123456789abcdef', format });
      for (const p of [server, hung]) p.proc.kill('SIGSTOP');
      const replies = await Promise.all((['json', 'msgpack'] as Format[]).flatMap((format) => [scrape(saved, format), scrape(hungPool, format)]));
      for (const p of [server, hung]) p.proc.kill('SIGCONT');
      for (const r of replies) {
        conforms('GET', '/metrics', r);
        expect([r.status, r.body.error, r.headers['retry-after']]).toEqual([503, 'metrics_unavailable', '1']);
      }
      // the failed scrape is counted only by a later one: the worker's log says it happened
      for (const p of [server, hung]) expect(p.output()).toContain("[metrics] serve's primary did not answer within 4000 ms");
      // going on, the primary answers again
      expect((await scrape(saved, 'json')).status).toBe(200);
    } finally {
      for (const p of [server, hung]) p.proc.kill('SIGCONT');
      redis.signal('SIGCONT');
      proxy.release();
      pool = saved;
      await hungPool.close();
      await hung.stop();
      await proxy.close();
      await redis.dispose();
    }
  });

  // a 500 is a bug: no request can make one on purpose, and none here may
  it('every reply the spec declares was seen, but the 500s of a bug', () => {
    const declared = Object.entries(spec.paths as Json).flatMap(([path, item]) =>
      METHODS.filter((m) => item[m]).flatMap((m) => Object.keys(item[m].responses).map((status) => `${m.toUpperCase()} ${path.replace(/\{(\w+)\}/g, ':$1')} ${status}`)));
    const bugs = declared.filter((d) => d.endsWith(' 500'));
    expect(declared.filter((d) => !seen.has(d) && !bugs.includes(d))).toEqual([]);
    expect(bugs.filter((d) => seen.has(d))).toEqual([]);
  });
});
