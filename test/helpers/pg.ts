import { randomBytes } from 'node:crypto';
import net from 'node:net';
import pg from 'pg';
import { inject } from 'vitest';
import { freePort } from '../../bench/redis-server.js';

import { PG_BASE_URL } from './services.js';

export { PG_BASE_URL };

/** A database name no run uses (the run's id in it: test/helpers/leaks.ts), not created yet: its URL, and a `drop()` that forces out leftover connections. */
export function unusedDatabase(): { url: string; name: string; drop(): Promise<void> } {
  const name = `test_rm_${inject('testRun')}_${randomBytes(4).toString('hex')}`;
  const u = new URL(PG_BASE_URL);
  u.pathname = `/${name}`;
  return {
    name,
    url: u.toString(),
    async drop() {
      const c = new pg.Client({ connectionString: PG_BASE_URL });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    },
  };
}

/** A fresh database for one test file; `drop()` removes it. */
export async function testDatabase(): Promise<{ url: string; name: string; drop(): Promise<void> }> {
  const db = unusedDatabase();
  const admin = new pg.Client({ connectionString: PG_BASE_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${db.name}`);
  await admin.end();
  return db;
}

/**
 * A TCP proxy in front of the Postgres of `dbUrl`: close() resets every connection and refuses new ones
 * until open(); blackhole(true) keeps connections open but drops every byte (a network that went away
 * without a reset). Bytes dropped leave those connections useless: the client must replace them.
 */
export async function pgProxy(dbUrl: string) {
  const target = new URL(dbUrl);
  const port = await freePort();
  const sockets = new Set<net.Socket>();
  let dropping = false;
  let server: net.Server | undefined;
  const open = () => {
    server = net.createServer((c) => {
      const up = net.connect(Number(target.port || 5432), target.hostname);
      for (const [from, to] of [[c, up], [up, c]] as const) {
        sockets.add(from);
        from.on('error', () => {});
        from.on('close', () => (sockets.delete(from), to.destroy()));
        from.on('data', (d) => dropping || to.write(d));
      }
    }).listen(port, '127.0.0.1');
  };
  open();
  const url = new URL(dbUrl);
  url.port = String(port);
  return {
    url: url.toString(),
    open,
    blackhole(on: boolean) {
      dropping = on;
    },
    async close() {
      // server.close waits for every connection to end: reset them first (a lent-out client never would)
      const closed = new Promise((r) => (server ? server.close(r) : r(undefined)));
      server = undefined;
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}

/** A node of a plan as EXPLAIN (FORMAT JSON) gives it. */
export interface PlanNode {
  'Node Type': string;
  'Index Name'?: string;
  'Relation Name'?: string;
  'Sort Key'?: string[];
  Plans?: PlanNode[];
}

/** Every node of a plan, depth first. */
export const planNodes = (n: PlanNode): PlanNode[] => [n, ...(n.Plans ?? []).flatMap(planNodes)];

/**
 * `pool` as code under test uses it, with the plan Postgres chose for each SELECT it sends (EXPLAIN, not run
 * twice) recorded in `plans` next to its text: the test asserts how a query reads, on real data, not how long.
 */
export function recordingPlans(pool: pg.Pool): { pool: pg.Pool; plans: { text: string; plan: PlanNode }[] } {
  const plans: { text: string; plan: PlanNode }[] = [];
  const query = async (q: string | pg.QueryConfig, values?: unknown[]) => {
    const config = typeof q === 'string' ? { text: q, values } : q;
    if (/^\s*SELECT/i.test(config.text)) {
      const res = await pool.query<{ 'QUERY PLAN': { Plan: PlanNode }[] }>(`EXPLAIN (FORMAT JSON) ${config.text}`, config.values);
      plans.push({ text: config.text, plan: res.rows[0]!['QUERY PLAN'][0]!.Plan });
    }
    return pool.query(config);
  };
  return { pool: new Proxy(pool, { get: (target, key) => (key === 'query' ? query : Reflect.get(target, key)) }), plans };
}
