import type { Config } from '../config.js';
import { DomainError, resultErrors } from '../errors.js';
import { apiMetrics } from '../metrics.js';
import type { SatelliteRegistry } from '../satellites/registry.js';
import type { Result, Token } from '../store/model.js';
import type { TokenEngine } from '../tokens/engine.js';
import { adminRoutes } from './admin-routes.js';
import type { Authenticator } from './auth.js';
import { defined, id, obj, token } from './fields.js';
import type { Block, FailureLimiter } from './rate-limit.js';
import { opsRoutes, type OpsDeps } from './ops.js';
import { HttpError, ok, okList, type Call, type Route } from './router.js';

export interface RouteDeps {
  config: Config;
  engine: TokenEngine;
  registry: SatelliteRegistry;
  auth: Authenticator;
  limiter: FailureLimiter;
  ready: OpsDeps['ready'];
  metrics: OpsDeps['metrics'];
}

export function routes(d: RouteDeps): Route[] {
  return [...satelliteRoutes(d), ...adminRoutes(d), ...opsRoutes(d)];
}

/** The routes a satellite calls with its own key: the satellite is the key's, never a body field. */
function satelliteRoutes(d: RouteDeps): Route[] {
  const { rateLimited, tokenResults } = apiMetrics();
  const tooMany = (by: 'check' | 'crossed', block: Block): never => {
    rateLimited.labels(by, block.limit).inc();
    throw new HttpError('rate_limited', undefined, [['retry-after', String(block.seconds)]]);
  };
  /** an address over its limit is refused before the engine */
  const limited = (c: Call<unknown>) => {
    const block = d.limiter.check(c.satelliteId, c.ip, c.ipNamed);
    if (block) tooMany('check', block);
  };
  /**
   * token_not_found / token_revoked / token_expired (guesses) count towards the failure limits; one over a
   * limit is answered 429, and while the satellite is over its limit so is any other refusal (a 409 would
   * tell an existing token from a missing one)
   */
  const refuse = async (c: Call<unknown>, code: keyof typeof resultErrors): Promise<never> => {
    const wire = resultErrors[code];
    if (wire === 'token_not_found' || wire === 'token_revoked' || wire === 'token_expired') {
      const block = await d.limiter.fail(c.satelliteId, c.ip, c.ipNamed);
      if (block) tooMany('crossed', block);
    } else {
      const block = d.limiter.satelliteBlock(c.satelliteId);
      if (block) tooMany('check', block);
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
      schema: obj(['token'], { token, leaseMs: { type: 'integer', minimum: 1, maximum: d.config.maxLeaseMs }, reservationId: id }),
      async handler(c: Call<{ token: string; leaseMs?: number; reservationId?: string }>) {
        limited(c);
        const r = await d.engine.reserve(c.body.token, c.satelliteId, c.body.leaseMs ?? d.config.defaultLeaseMs, c.body.reservationId, c.signal);
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
        return okList('tokens', tokens, (t) => defined({ ...t }));
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
        return okList('redemptions', redeemed, ({ redeemerUserId, ...r }) => (r.redeemerSatelliteId === c.satelliteId ? { ...r, redeemerUserId } : r));
      },
    },
  ];
}
