import Fastify from 'fastify';
import { Redis } from 'ioredis';

/**
 * The comparison for bench/http.ts: the same redeem written plainly, as a typical service would —
 * Fastify + JSON + ioredis, bearer keys in a Map, one hash per token (<prefix>:t:<token>) read with
 * HMGET and updated with HSET (no Lua, no shards, no event stream).
 * `node dist/bench/baseline-fastify.js <port> <redisUrl> <prefix> <satelliteKey>`.
 */
async function listen(port: number, redisUrl: string, prefix: string, keys: Map<string, string>): Promise<void> {
  const redis = new Redis(redisUrl);
  const app = Fastify({ logger: false });
  app.post<{ Body: { token?: unknown; userId?: unknown } }>('/v1/tokens/redeem', async (req, reply) => {
    const sat = keys.get(String(req.headers.authorization ?? '').replace(/^Bearer /, ''));
    if (!sat) return reply.code(401).send({ error: 'unauthorized', message: 'missing or unknown API key' });
    const { token, userId } = req.body ?? {};
    if (typeof token !== 'string' || typeof userId !== 'string') return reply.code(400).send({ error: 'invalid_request', message: 'token, userId: strings' });
    const key = `${prefix}:t:${token}`;
    const [state, owner, ownerUser] = await redis.hmget(key, 'state', 'owner', 'ownerUser');
    if (!state) return reply.code(404).send({ error: 'token_not_found', message: 'no such token' });
    if (state !== 'unredeemed') return reply.code(409).send({ error: 'token_already_redeemed', message: 'the token was already redeemed' });
    await redis.hset(key, { state: 'redeemed', redeemer: sat, redeemerUser: userId, redeemedAt: Date.now() });
    return { token, state: 'redeemed', ownerSatelliteId: owner, ownerUserId: ownerUser };
  });
  await app.listen({ host: '127.0.0.1', port });
}

const [port, redisUrl, prefix, key] = process.argv.slice(2);
await listen(Number(port), redisUrl!, prefix!, new Map([[key!, 'bench-sat']]));
console.log('listening');
