import { Pool } from 'undici';
import { afterAll, beforeAll, expect } from 'vitest';
import { ADMIN_KEY, call, serve, type Served } from './http.js';
import { dropSharedPrefixes, SHARED_REDIS_URL, testPrefix } from './redis.js';

export interface ServedFixture<Id extends string = never> {
  server: Served;
  pool: Pool;
  /** serve's KEY_PREFIX in the shared Redis, dropped afterwards */
  prefix: string;
  /** the API key of each satellite registered before the tests, by id */
  keys: Record<Id, string>;
}

export interface ServedOptions<Id extends string> {
  /** added to serve's environment (KEY_PREFIX and REDIS_URL are the fixture's) */
  env?: Record<string, string>;
  /** the pool's connections; 4 unless given */
  connections?: number;
  /** the bodies of POST /v1/admin/satellites, registered in order */
  satellites?: { id: Id; [field: string]: unknown }[];
}

/**
 * A serve test file's `referral-manager serve` (one worker, from dist/) on the shared Redis under a key prefix
 * of its own (`label`), a pool of connections to it and the satellites it needs, made before its tests; after
 * them the pool is closed, serve must exit 0 on SIGTERM and the prefix is dropped. Call it at the top of the
 * file or inside the describe it serves. The fields are set once beforeAll ran.
 */
export function servedFor<const Id extends string = never>(label: string, opts: ServedOptions<Id> = {}): ServedFixture<Id> {
  const s = { prefix: testPrefix(label), keys: {} } as ServedFixture<Id>;
  beforeAll(async () => {
    s.server = await serve({ ...opts.env, KEY_PREFIX: s.prefix, REDIS_URL: SHARED_REDIS_URL });
    s.pool = new Pool(s.server.url, { connections: opts.connections ?? 4 });
    for (const body of opts.satellites ?? []) {
      const r = await call(s.pool, 'POST', '/v1/admin/satellites', { key: ADMIN_KEY, body });
      if (r.status !== 201) throw new Error(`registering satellite ${body.id}: ${r.status} ${JSON.stringify(r.body)}`);
      s.keys[body.id] = r.body.apiKey as string;
    }
  });
  afterAll(async () => {
    await s.pool?.close();
    const code = await s.server?.stop();
    // dropped first: a serve that exited badly still leaves nothing behind
    await dropSharedPrefixes(s.prefix);
    if (s.server) expect(code, 'serve exits 0 on SIGTERM').toBe(0);
  });
  return s;
}
