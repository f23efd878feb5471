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
