import calculateSlot from 'cluster-key-slot';
import { describe, expect, it } from 'vitest';
import { AdminClient } from '../src/client/admin.js';
import { SatelliteClient } from '../src/client/index.js';
import { hexOf } from '../src/store/codec.js';
import { Keys, placeOfOwner, placeOfToken, type Place } from '../src/store/keys.js';
import { createRedis } from '../src/store/redis.js';
import { ADMIN_KEY, failure, privateRedis, serve, testCluster } from './helpers/http.js';
import { until } from './helpers/snapshot.js';

// long enough for a replica on a machine busy with the rest of the suite (a loaded CI run missed 300 ms)
const WAIT = { REDIS_WAIT_REPLICAS: '1', REDIS_WAIT_MS: '2000', REQUEST_TIMEOUT_MS: '8000' };

/** Waits until the redis-server at `url` reports a replica linked and in sync. */
async function replicaLinked(url: string): Promise<void> {
  const r = createRedis({ redisUrl: url, redisClusterNodes: [] });
  try {
    await until(() => r.info('replication'), (i) => /slave0:.*state=online/.test(i), `a replica in sync with ${url}`, 20_000);
  } finally {
    r.disconnect();
  }
}

/** A private redis-server, a replica of it, and serve on the master with REDIS_WAIT_REPLICAS 1; `close` ends all three. */
async function replicated(prefix: string) {
  const master = await privateRedis();
  await master.start();
  const replica = await privateRedis(['--replicaof', '127.0.0.1', String(master.port)]);
  await replica.start();
  const served = await serve({ REDIS_URL: master.url, KEY_PREFIX: prefix, ...WAIT });
  return {
    master, replica, served,
    async close() {
      await served.stop();
      await replica.dispose();
      await master.dispose();
    },
  };
}

/** A satellite and its tokens, made through the admin API of `url`. */
async function world(url: string, users: number) {
  const admin = new AdminClient({ url, apiKey: ADMIN_KEY });
  const { apiKey } = await admin.addSatellite({ id: 'sat-w' });
  const tokens = (await admin.generate({ satelliteId: 'sat-w', userIds: Array.from({ length: users }, (_, i) => `u${i}`), perUser: 2 })).tokens.map((t) => t.token);
  return { admin, apiKey, sat: new SatelliteClient({ url, apiKey, timeoutMs: 3000 }), tokens };
}

describe('REDIS_WAIT_REPLICAS: a change is answered once a replica has it', () => {
  it('one redis-server and its replica: 503 while the replica hangs (the change stands, its retry is answered ok), reads unaffected', async () => {
    const { master, replica, served, close } = await replicated('wait');
    try {
      await replicaLinked(master.url);
      const { admin, sat, tokens } = await world(served.url, 10);
      expect((await sat.redeem(tokens[0]!, 'new-0')).state).toBe('redeemed');

      replica.signal('SIGSTOP');
      const t0 = Date.now();
      const lost = await failure(sat.redeem(tokens[1]!, 'new-1'));
      expect([lost?.code, lost?.status]).toEqual(['store_unavailable', 503]);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(1990);
      // counted apart from a Redis that is down, for the alert that tells the two apart
      expect(await (await fetch(`${served.url}/metrics`)).text()).toMatch(/^rm_redis_errors_total\{kind="replicas"\} 1$/m);
      // the master took it: what the 503 says ("may have been carried out")
      expect((await sat.lookup(tokens[1]!)).state).toBe('redeemed');
      // a read waits for nothing; a refusal changed nothing, so it is not held either
      expect((await sat.listTokens('u5')).length).toBe(2);
      expect((await failure(sat.redeem(tokens[0]!, 'someone-else')))?.code).toBe('token_already_redeemed');
      // a reserve too, and it is undone: the satellite never learned the reservation id, so a held token would refuse its retry for the whole lease
      expect((await failure(sat.reserve(tokens[2]!)))?.code).toBe('store_unavailable');
      expect((await sat.lookup(tokens[2]!)).state).toBe('unredeemed');
      // generation too: its tokens are undone (revoked) and the call fails
      expect((await failure(admin.generate({ satelliteId: 'sat-w', userIds: ['late'], perUser: 1 })))?.code).toBe('store_unavailable');

      // with the satellite's own reservation id it is kept: the retry with that id is answered ok, and undoing it
      // could undo such a retry answered 200 meanwhile (a repeat of a reservation answered before, its reply lost)
      expect((await failure(sat.reserve(tokens[3]!, 60_000, { reservationId: 'signup-3' })))?.code).toBe('store_unavailable');
      expect((await failure(sat.reserve(tokens[3]!, 60_000, { reservationId: 'signup-3' })))?.code).toBe('store_unavailable');
      expect((await sat.lookup(tokens[3]!)).state).toBe('reserved');

      replica.signal('SIGCONT');
      await replicaLinked(master.url);
      expect((await sat.complete(tokens[3]!, 'signup-3', 'new-3')).state).toBe('redeemed');
      expect((await sat.redeem(tokens[1]!, 'new-1')).state).toBe('redeemed');
      expect((await sat.reserve(tokens[2]!)).state).toBe('reserved');
    } finally {
      replica.signal('SIGCONT');
      await close();
    }
  });

  // one WAIT per change, each blocking the master's connection for the whole timeout: with the replica gone, 20
  // changes at once took 20 timeouts in a row, a lookup queued behind them, and the request deadline answered
  // most of them as "Redis unavailable" (the wrong alert)
  it('changes made at once while the replica is gone share their WAITs: each answered 503 within three timeouts, reads not held behind them', async () => {
    const { master, replica, served, close } = await replicated('waitburst');
    try {
      await replicaLinked(master.url);
      const { apiKey, tokens } = await world(served.url, 20);
      // clients that wait past two timeouts; the burst's calls fill one's connections, so the read has its own
      const sat = new SatelliteClient({ url: served.url, apiKey, timeoutMs: 10_000, connections: 32 });
      const reader = new SatelliteClient({ url: served.url, apiKey, timeoutMs: 10_000 });
      await replica.stop('SIGKILL');
      const t0 = Date.now();
      const burst = tokens.slice(0, 20).map((t, i) => failure(sat.redeem(t, `burst-${i}`)));
      await new Promise((r) => setTimeout(r, 100));
      expect((await reader.lookup(tokens[30]!)).state).toBe('unredeemed');
      expect(Date.now() - t0).toBeLessThan(4500);
      const failed = await Promise.all(burst);
      // at most three WAITs: one a script was queued behind, the one in flight at its answer, and the next
      expect(Date.now() - t0).toBeLessThan(3 * 2000 + 1000);
      expect(failed.map((f) => f?.code)).toEqual(Array(20).fill('store_unavailable'));
      const metrics = await (await fetch(`${served.url}/metrics`)).text();
      expect(metrics.split('\n').filter((l) => l.startsWith('rm_redis_errors_total') && !l.endsWith(' 0'))).toEqual(['rm_redis_errors_total{kind="replicas"} 20']);
    } finally {
      await close();
    }
  });

  // every change was answered 503 (WAIT could not be met) while /readyz said ready: a load balancer kept
  // sending sign-ups to instances that could redeem nothing
  it('/readyz is 503 while the master has fewer replicas online than REDIS_WAIT_REPLICAS, naming it, and ready once one links', async () => {
    // a replica waits this long for its first sync (state=wait_bgsave), linked but without the data
    const master = await privateRedis(['--repl-diskless-sync', 'yes', '--repl-diskless-sync-delay', '5']);
    await master.start();
    const served = await serve({ REDIS_URL: master.url, KEY_PREFIX: 'waitready', ...WAIT });
    const direct = createRedis({ redisUrl: master.url, redisClusterNodes: [] });
    let replica: Awaited<ReturnType<typeof privateRedis>> | undefined;
    try {
      const short = await fetch(`${served.url}/readyz`);
      expect(short.status).toBe(503);
      expect(short.headers.get('retry-after')).toBe('1');
      expect(await short.json()).toMatchObject({ ready: false, redis: 'up', replicas: 'short', error: `127.0.0.1:${master.port} has 0 of the 1 replicas REDIS_WAIT_REPLICAS asks for online: every state change on its slots is answered 503` });
      replica = await privateRedis(['--replicaof', '127.0.0.1', String(master.port)]);
      await replica.start();
      await until(() => direct.info('replication'), (i) => /slave0:.*state=wait_bgsave/.test(i), 'a replica waiting for its sync', 5000);
      expect((await fetch(`${served.url}/readyz`)).status).toBe(503);
      await replicaLinked(master.url);
      const ready = await fetch(`${served.url}/readyz`);
      expect([ready.status, ((await ready.json()) as { ready: boolean }).ready]).toEqual([200, true]);
    } finally {
      direct.disconnect();
      await served.stop();
      await replica?.dispose();
      await master.dispose();
    }
  });

  it('a master refusing writes for want of replicas (min-replicas-to-write) answers 503, not 500', async () => {
    const master = await privateRedis();
    await master.start();
    const served = await serve({ REDIS_URL: master.url, KEY_PREFIX: 'minrep' });
    const direct = createRedis({ redisUrl: master.url, redisClusterNodes: [] });
    try {
      const { sat, tokens } = await world(served.url, 2);
      await direct.config('SET', 'min-replicas-to-write', '1');
      const refused = await failure(sat.redeem(tokens[0]!, 'n-0'));
      expect([refused?.code, refused?.status, refused?.retryAfter]).toEqual(['store_unavailable', 503, 1]);
      await direct.config('SET', 'min-replicas-to-write', '0');
      expect((await sat.redeem(tokens[0]!, 'n-0')).state).toBe('redeemed');
    } finally {
      direct.disconnect();
      await served.stop();
      await master.dispose();
    }
  });

  it('a Cluster: the WAIT goes to the master of the token\'s slot, so only its replica hanging fails the change, and /readyz stays 200 (degraded) when one is lost', async () => {
    const cluster = await testCluster(3, [], 1);
    const served = await serve({ REDIS_CLUSTER_NODES: cluster.nodes.join(','), KEY_PREFIX: 'waitc', ...WAIT });
    const probe = createRedis({ redisUrl: '', redisClusterNodes: cluster.nodes });
    try {
      const { admin, sat, tokens } = await world(served.url, 60);
      // which server replicates which master, and which master holds each token's slot
      // as soon as this node's view names a replica for every master (it learns the roles by gossip)
      const lines = await until(
        async () => String(await probe.cluster('NODES')).trim().split('\n').map((l) => l.split(' ')),
        (ls) => {
          const ids = ls.filter((l) => l[2]!.includes('master') && l.length > 8).map((l) => l[0]);
          return ids.length === 3 && ids.every((id) => ls.some((l) => l[2]!.includes('slave') && l[3] === id));
        },
        'a replica known for every master',
        20_000,
      );
      const address = (l: string[]) => l[1]!.split('@')[0]!;
      const masters = lines.filter((l) => l[2]!.includes('master') && l.length > 8);
      const masterOfPlace = (place: Place) => {
        const slot = calculateSlot(new Keys('waitc').tokenKeys(place)[0]!);
        return masters.find((m) => m.slice(8).some((r) => { const [a, b = a] = r.split('-').map(Number); return slot >= a! && slot <= b!; }))!;
      };
      const masterOf = (token: string) => masterOfPlace(placeOfToken(hexOf(token)));
      const victim = masters[0]!;
      const replicaOf = lines.find((l) => l[2]!.includes('slave') && l[3] === victim[0])!;
      const onVictim = tokens.filter((t) => masterOf(t) === victim);
      const elsewhere = tokens.filter((t) => masterOf(t) !== victim);
      expect(onVictim.length).toBeGreaterThan(0);
      expect(elsewhere.length).toBeGreaterThan(0);

      await cluster.signal(cluster.nodes.indexOf(address(replicaOf)), 'SIGSTOP');
      expect((await failure(sat.redeem(onVictim[0]!, 'n-victim')))?.code).toBe('store_unavailable');
      expect((await sat.redeem(elsewhere[0]!, 'n-elsewhere')).state).toBe('redeemed');
      // a generate spread over masters waits on each: the one whose replica hangs fails it, listed first or not
      const userOn = (victims: boolean) => Array.from({ length: 200 }, (_, i) => `g${i}`).find((u) => (masterOfPlace(placeOfOwner('sat-w', u)) === victim) === victims)!;
      expect((await failure(admin.generate({ satelliteId: 'sat-w', userIds: [userOn(false), userOn(true)], perUser: 1 })))?.code).toBe('store_unavailable');
      await cluster.signal(cluster.nodes.indexOf(address(replicaOf)), 'SIGCONT');
      await until(() => failure(sat.redeem(onVictim[0]!, 'n-victim')), (e) => e === undefined, 'the retry confirmed once the replica is back', 20_000);
      // the replica lost: only its master's changes fail, so the instance stays in rotation, degraded, naming it
      await cluster.signal(cluster.nodes.indexOf(address(replicaOf)), 'SIGKILL');
      const readyz = await until(
        async () => { const r = await fetch(`${served.url}/readyz`); return { status: r.status, body: (await r.json()) as Record<string, unknown> }; },
        (r) => r.body.redis !== 'up',
        '/readyz once the master lost its replica',
        20_000,
      );
      expect(readyz).toMatchObject({ status: 200, body: { ready: true, redis: 'degraded', degraded: `${address(victim)} has 0 of the 1 replicas REDIS_WAIT_REPLICAS asks for online: every state change on its slots is answered 503` } });
    } finally {
      probe.disconnect();
      await served.stop();
      await cluster.stop();
    }
  });
});
