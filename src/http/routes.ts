import { MAX_KEY_GRACE_MS, type Config } from '../config.js';
import { DomainError, resultErrors } from '../errors.js';
import { rateLimited, tokenResults } from '../metrics.js';
import { SATELLITE_FIELD_MAX as MAX, type Satellite, type SatelliteFields, type SatelliteRegistry } from '../satellites/registry.js';
import type { Result, Token } from '../store/model.js';
import { MAX_TOKENS_PER_CALL, type TokenEngine } from '../tokens/engine.js';
import { checkToken } from '../tokens/validate.js';
import type { Authenticator } from './auth.js';
import type { FailureLimiter } from './rate-limit.js';
import { opsRoutes, type OpsDeps } from './ops.js';
import { HttpError, ok, type Call, type Route } from './router.js';

export interface RouteDeps {
  config: Config;
  engine: TokenEngine;
  registry: SatelliteRegistry;
  auth: Authenticator;
  limiter: FailureLimiter;
  ready: OpsDeps['ready'];
  metrics: OpsDeps['metrics'];
}

const id = { type: 'string', minLength: 1, maxLength: 128 };
const token = { type: 'string', minLength: 36, maxLength: 36 };
const nullable = (maxLength: number) => ({ type: 'string', nullable: true, minLength: 1, maxLength });
const obj = (required: string[], properties: Record<string, object>) => ({ type: 'object', required, properties });

/**
 * A campaign's or a satellite's revoke, and a purge, read every bucket and change ~54k tokens a second
 * (bench/sweep.ts): at scale that takes longer than REQUEST_TIMEOUT_MS, and a 503 mid-sweep would say "retry"
 * about work that goes on.
 */
export const SWEEP_TIMEOUT_MS = 10 * 60_000;

/** outboundKey is a secret the manager presents: a listed satellite says only whether one is set. */
const listed = ({ outboundKey, ...s }: Satellite) => ({ ...s, hasOutboundKey: outboundKey !== undefined });

/** Drops undefined fields, which MessagePack would otherwise carry as nil. */
function defined<T extends object>(o: T): T {
  for (const k of Object.keys(o) as (keyof T)[]) if (o[k] === undefined) delete o[k];
  return o;
}

export function routes(d: RouteDeps): Route[] {
  const limited = (c: Call<unknown>) => {
    const block = d.limiter.check(c.satelliteId, c.ip);
    if (block) {
      rateLimited.labels('check', block.limit).inc();
      throw new HttpError('rate_limited', undefined, [['retry-after', String(block.seconds)]]);
    }
  };
  /** token_not_found / token_revoked / token_expired (guesses) count towards the failure limit; the one crossing it is answered 429 */
  const refuse = async (c: Call<unknown>, code: keyof typeof resultErrors): Promise<never> => {
    const wire = resultErrors[code];
    if (wire === 'token_not_found' || wire === 'token_revoked' || wire === 'token_expired') {
      const block = await d.limiter.fail(c.satelliteId, c.ip);
      if (block) {
        rateLimited.labels('crossed', block.limit).inc();
        throw new HttpError('rate_limited', undefined, [['retry-after', String(block.seconds)]]);
      }
    }
    throw new DomainError(wire);
  };
  const owner = (t: Token | undefined) => ({ ownerSatelliteId: t!.ownerSatelliteId, ownerUserId: t!.ownerUserId });
  const count = (op: string, r: Result<string>) => tokenResults.labels(op, r.code).inc();

  return [
    {
      method: 'post', pattern: '/v1/tokens/redeem', auth: 'satellite', needsIp: true,
      schema: obj(['token', 'userId'], { token, userId: id }),
      async handler(c: Call<{ token: string; userId: string }>) {
        limited(c);
        const r = await d.engine.redeem(c.body.token, c.satelliteId, c.body.userId);
        count('redeem', r);
        if (r.code !== 'ok') return refuse(c, r.code);
        return ok({ token: c.body.token, state: 'redeemed', ...owner(r.token) });
      },
    },
    {
      method: 'post', pattern: '/v1/tokens/reserve', auth: 'satellite', needsIp: true,
      schema: obj(['token'], { token, leaseMs: { type: 'integer', minimum: 1, maximum: d.config.maxLeaseMs } }),
      async handler(c: Call<{ token: string; leaseMs?: number }>) {
        limited(c);
        const r = await d.engine.reserve(c.body.token, c.satelliteId, c.body.leaseMs ?? d.config.defaultLeaseMs);
        count('reserve', r);
        if (r.code !== 'ok') return refuse(c, r.code);
        const t = r.token!;
        return ok({ token: c.body.token, state: 'reserved', reservationId: t.reservationId, leaseExpiresAt: t.leaseExpiresAt, ...owner(t) });
      },
    },
    {
      // limited like redeem: a miss (404) against a mismatch (409) would tell a guessed token apart
      method: 'post', pattern: '/v1/tokens/complete', auth: 'satellite', needsIp: true,
      schema: obj(['token', 'reservationId', 'userId'], { token, reservationId: id, userId: id }),
      async handler(c: Call<{ token: string; reservationId: string; userId: string }>) {
        limited(c);
        const r = await d.engine.complete(c.body.token, c.body.reservationId, c.body.userId, c.satelliteId);
        count('complete', r);
        if (r.code !== 'ok') return refuse(c, r.code);
        return ok({ token: c.body.token, state: 'redeemed', ...owner(r.token) });
      },
    },
    {
      method: 'post', pattern: '/v1/tokens/release', auth: 'satellite', needsIp: true,
      schema: obj(['token', 'reservationId'], { token, reservationId: id }),
      async handler(c: Call<{ token: string; reservationId: string }>) {
        limited(c);
        const r = await d.engine.release(c.body.token, c.body.reservationId, c.satelliteId);
        count('release', r);
        if (r.code !== 'ok') return refuse(c, r.code);
        return ok({ token: c.body.token, state: 'unredeemed' });
      },
    },
    {
      method: 'get', pattern: '/v1/tokens/:token', auth: 'satellite', needsIp: true,
      async handler(c) {
        limited(c);
        const t = await d.engine.lookup(c.params[0]!);
        if (!t) return refuse(c, 'not_found');
        // expiresAt is a field of this reply (issue 3), so it is always there: null when the token never expires
        return ok({ token: t.token, state: t.state, ownerSatelliteId: t.ownerSatelliteId, expiresAt: t.expiresAt ?? null });
      },
    },
    {
      method: 'get', pattern: '/v1/users/:userId/tokens', auth: 'satellite',
      async handler(c) {
        const tokens = await d.engine.listUnredeemed(c.satelliteId, c.params[0]!);
        return ok({ tokens: tokens.map((t) => defined({ ...t })) });
      },
    },
    {
      // a user who closed the account: the invitations they hold must stop working
      method: 'delete', pattern: '/v1/users/:userId/tokens', auth: 'satellite',
      async handler(c) {
        return ok({ revoked: await d.engine.revokeOwner(c.satelliteId, c.params[0]!) });
      },
    },
    {
      method: 'get', pattern: '/v1/users/:userId/redemptions', auth: 'satellite',
      async handler(c) {
        const redeemed = await d.engine.listRedeemed(c.satelliteId, c.params[0]!);
        // a redeemer's user id is another satellite's business: only the caller's own users are named
        const redemptions = redeemed.map(({ redeemerUserId, ...r }) => (r.redeemerSatelliteId === c.satelliteId ? { ...r, redeemerUserId } : r));
        return ok({ redemptions });
      },
    },

    {
      method: 'post', pattern: '/v1/admin/satellites', auth: 'admin',
      schema: obj(['id'], { id, name: { type: 'string', maxLength: MAX.name }, url: { type: 'string', maxLength: MAX.url }, outboundKey: { type: 'string', maxLength: MAX.outboundKey } }),
      async handler(c: Call<{ id: string; name?: string; url?: string; outboundKey?: string }>) {
        const { id: sid, name, url, outboundKey } = c.body;
        return ok(await d.registry.add(defined({ id: sid, name, url, outboundKey })), 201);
      },
    },
    {
      method: 'get', pattern: '/v1/admin/satellites', auth: 'admin',
      async handler() {
        return ok({ satellites: (await d.registry.list()).map(listed) });
      },
    },
    {
      method: 'patch', pattern: '/v1/admin/satellites/:id', auth: 'admin',
      schema: obj([], { name: nullable(MAX.name), url: nullable(MAX.url), outboundKey: nullable(MAX.outboundKey) }),
      async handler(c: Call<SatelliteFields>) {
        const { name, url, outboundKey } = c.body;
        return ok(listed(await d.registry.update(c.params[0]!, defined({ name, url, outboundKey }))));
      },
    },
    {
      method: 'delete', pattern: '/v1/admin/satellites/:id', auth: 'admin',
      async handler(c) {
        await d.registry.remove(c.params[0]!);
        d.auth.forget(c.params[0]!);
        return ok({ id: c.params[0], removed: true });
      },
    },
    {
      method: 'post', pattern: '/v1/admin/satellites/:id/rotate-key', auth: 'admin', optionalBody: true,
      schema: obj([], { graceMs: { type: 'integer', minimum: 0, maximum: MAX_KEY_GRACE_MS } }),
      async handler(c: Call<{ graceMs?: number }>) {
        const r = await d.registry.rotateKey(c.params[0]!, c.body.graceMs ?? d.config.keyGraceMs);
        d.auth.forget(c.params[0]!);
        return ok(r);
      },
    },
    {
      method: 'post', pattern: '/v1/admin/tokens/generate', auth: 'admin',
      schema: obj(['satelliteId', 'userIds', 'perUser'], {
        satelliteId: id,
        userIds: { type: 'array', minItems: 1, maxItems: MAX_TOKENS_PER_CALL, items: id },
        perUser: { type: 'integer', minimum: 1, maximum: MAX_TOKENS_PER_CALL },
        expiresAt: { type: 'integer' },
        campaignId: id,
      }),
      async handler(c: Call<{ satelliteId: string; userIds: string[]; perUser: number; expiresAt?: number; campaignId?: string }>) {
        const b = c.body;
        await d.registry.require(b.satelliteId);
        const out = await d.engine.generate(defined({
          owners: b.userIds.map((u) => ({ ownerSatelliteId: b.satelliteId, ownerUserId: u })),
          perUser: b.perUser,
          expiresAt: b.expiresAt,
          campaignId: b.campaignId,
          signal: c.signal,
        }));
        return ok({ campaignId: out.campaignId, tokens: out.tokens.map((t) => ({ userId: t.ownerUserId, token: t.token })) });
      },
    },
    {
      method: 'post', pattern: '/v1/admin/tokens/revoke', auth: 'admin', timeoutMs: SWEEP_TIMEOUT_MS,
      schema: {
        type: 'object',
        properties: { tokens: { type: 'array', minItems: 1, maxItems: MAX_TOKENS_PER_CALL, items: token }, satelliteId: id, userId: id, allUsers: { const: true }, campaignId: id },
      },
      async handler(c: Call<{ tokens?: string[]; satelliteId?: string; userId?: string; allUsers?: true; campaignId?: string }>) {
        const b = c.body;
        // exactly one form: a revoke cannot be undone, so a body naming two (or half of the owner form, next
        // to a campaign) is refused rather than served by whichever form is checked first; a whole satellite
        // takes allUsers: true, so a userId left out by mistake is refused, not widened to every user
        const owners = b.satelliteId ?? b.userId ?? b.allUsers;
        const ownersValid = owners !== undefined && b.satelliteId !== undefined && (b.userId === undefined) === (b.allUsers === true);
        const forms = [b.tokens, owners, b.campaignId].filter((f) => f !== undefined).length;
        if (forms !== 1 || (owners !== undefined && !ownersValid)) {
          throw new DomainError('invalid_request', 'body: give exactly one of: tokens, or satelliteId and userId, or satelliteId and allUsers: true, or campaignId');
        }
        if (b.tokens) {
          // every token checked before any is revoked: a 400 must leave nothing half done
          b.tokens.forEach((t, i) => checkToken(t, `tokens[${i}]`));
          const rs = await Promise.all(b.tokens.map((t) => d.engine.revokeToken(t)));
          return ok({ revoked: rs.filter((r) => r.code === 'ok').length });
        }
        if (b.allUsers) return ok({ revoked: await d.engine.revokeSatellite(b.satelliteId!) });
        if (b.userId !== undefined) return ok({ revoked: await d.engine.revokeOwner(b.satelliteId!, b.userId) });
        return ok({ revoked: await d.engine.revokeCampaign(b.campaignId!) });
      },
    },
    {
      // tokens purge of the CLI: revoked tokens and expired unredeemed ones made before madeBefore leave Redis
      method: 'post', pattern: '/v1/admin/tokens/purge', auth: 'admin', timeoutMs: SWEEP_TIMEOUT_MS,
      schema: obj(['madeBefore'], { madeBefore: { type: 'integer', minimum: 0 }, campaignId: id, dryRun: { type: 'boolean' } }),
      async handler(c: Call<{ madeBefore: number; campaignId?: string; dryRun?: boolean }>) {
        const n = await d.engine.purge(c.body.madeBefore, c.body.campaignId, c.body.dryRun === true);
        return ok(c.body.dryRun === true ? { wouldPurge: n } : { purged: n });
      },
    },
    {
      method: 'get', pattern: '/v1/admin/stats', auth: 'admin',
      async handler() {
        return ok(await d.engine.stats());
      },
    },

    ...opsRoutes(d),
  ];
}
