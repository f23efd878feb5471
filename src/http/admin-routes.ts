import { MAX_KEY_GRACE_MS } from '../config.js';
import { DomainError } from '../errors.js';
import type { Satellite, SatelliteFields } from '../satellites/model.js';
import { SATELLITE_FIELD_MAX as MAX } from '../satellites/registry.js';
import { MAX_TOKENS_PER_CALL } from '../tokens/engine.js';
import { checkToken } from '../tokens/validate.js';
import { closed, defined, id, nullable, obj, text, token } from './fields.js';
import { ok, type Call, type Route } from './router.js';
import type { RouteDeps } from './routes.js';

/**
 * A campaign's or a satellite's revoke, and a purge, read every bucket and change ~54k tokens a second
 * (bench/sweep.ts): at scale that takes longer than REQUEST_TIMEOUT_MS, and a 503 mid-sweep would say "retry"
 * about work that goes on.
 */
const SWEEP_TIMEOUT_MS = 10 * 60_000;

/** outboundKey is a secret the manager presents: a listed satellite says only whether one is set. */
const listed = ({ outboundKey, ...s }: Satellite) => ({ ...s, hasOutboundKey: outboundKey !== undefined });

/** The routes of ADMIN_KEY: the satellite registry and bulk token work (the CLI's and ops'). */
export function adminRoutes(d: RouteDeps): Route[] {
  return [
    {
      method: 'post', pattern: '/v1/admin/satellites', auth: 'admin',
      schema: closed(obj(['id'], { id, name: text(MAX.name), url: text(MAX.url), outboundKey: text(MAX.outboundKey) })),
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
      schema: closed(obj([], { name: nullable(MAX.name), url: nullable(MAX.url), outboundKey: nullable(MAX.outboundKey) })),
      async handler(c: Call<SatelliteFields>) {
        const { name, url, outboundKey } = c.body;
        return ok(listed(await d.registry.update(c.params[0]!, defined({ name, url, outboundKey }))));
      },
    },
    {
      method: 'delete', pattern: '/v1/admin/satellites/:id', auth: 'admin',
      async handler(c) {
        await d.registry.remove(c.params[0]!);
        // the registry's notice reaches this worker too, but maybe after the reply: forgotten here before it
        d.auth.forget(c.params[0]!);
        return ok({ id: c.params[0], removed: true });
      },
    },
    {
      method: 'post', pattern: '/v1/admin/satellites/:id/rotate-key', auth: 'admin', optionalBody: true,
      schema: closed(obj([], { graceMs: { type: 'integer', minimum: 0, maximum: MAX_KEY_GRACE_MS } })),
      async handler(c: Call<{ graceMs?: number }>) {
        const r = await d.registry.rotateKey(c.params[0]!, c.body.graceMs ?? d.config.keyGraceMs);
        d.auth.forget(c.params[0]!); // before the reply, as for a remove
        return ok(r);
      },
    },
    {
      method: 'post', pattern: '/v1/admin/tokens/generate', auth: 'admin',
      schema: closed(obj(['satelliteId', 'userIds', 'perUser'], {
        satelliteId: id,
        userIds: { type: 'array', minItems: 1, maxItems: MAX_TOKENS_PER_CALL, items: id },
        perUser: { type: 'integer', minimum: 1, maximum: MAX_TOKENS_PER_CALL },
        expiresAt: { type: 'integer' },
        campaignId: id,
      })),
      async handler(c: Call<{ satelliteId: string; userIds: string[]; perUser: number; expiresAt?: number; campaignId?: string }>) {
        const b = c.body;
        await d.registry.require(b.satelliteId);
        const out = await d.engine.generate(defined({
          owners: b.userIds.map((u) => ({ ownerSatelliteId: b.satelliteId, ownerUserId: u })),
          perUser: b.perUser,
          expiresAt: b.expiresAt,
          campaignId: b.campaignId,
          signal: c.signal,
          // a bad id named as this body names it
          ownerField: (i, field) => (field === 'ownerUserId' ? `userIds[${i}]` : 'satelliteId'),
        }));
        return ok({ campaignId: out.campaignId, tokens: out.tokens.map((t) => ({ userId: t.ownerUserId, token: t.token })) });
      },
    },
    {
      method: 'post', pattern: '/v1/admin/tokens/revoke', auth: 'admin', timeoutMs: SWEEP_TIMEOUT_MS,
      schema: closed({
        type: 'object',
        properties: { tokens: { type: 'array', minItems: 1, maxItems: MAX_TOKENS_PER_CALL, items: token }, satelliteId: id, userId: id, allUsers: { type: 'boolean', const: true }, campaignId: id },
      }),
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
      schema: closed(obj(['madeBefore'], { madeBefore: { type: 'integer', minimum: 0 }, campaignId: id, dryRun: { type: 'boolean' } })),
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
  ];
}
