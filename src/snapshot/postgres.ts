import net from 'node:net';
import pg from 'pg';
import { migrate, requireSnapshot, SCHEMA_VERSION, type MigrationNote } from './schema.js';

/**
 * Which Postgres `url` names, as host:port/database, for a message: only those three, so neither the user's
 * password nor the query string (a `password`, `sslpassword`) reaches a log. Read with URL, not node-postgres,
 * whose parse reads the sslrootcert file and fails, as the connection did, when it is missing.
 */
export function postgresAt(url: string): string {
  const u = new URL(url);
  // a `host` in the query string, or percent-encoded as the host (a Unix socket's directory), as node-postgres
  // reads it; a `port` there too, which node-postgres takes over the URL's
  return `${u.searchParams.get('host') || decoded(u.hostname) || 'localhost'}:${u.searchParams.get('port') || u.port || 5432}/${databaseOf(url)}`;
}

/** The database `url` names, for a message or CREATE DATABASE: `decoded`, so a stray % does not throw there instead. */
const databaseOf = (url: string): string => decoded(new URL(url).pathname.slice(1));

/** Percent-decoded, or as written where that fails (a `%` not followed by two hex digits, which node-postgres takes as itself): a message must not fail in place of the error it tells, nor a CREATE DATABASE of the name node-postgres then connects to. */
function decoded(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** Creates the database named in `url` when it does not exist (via the `postgres` database). */
export async function ensureDatabase(url: string): Promise<void> {
  const probe = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3000 });
  try {
    await probe.connect();
    return;
  } catch (err) {
    if ((err as { code?: string }).code !== '3D000') throw err;
  } finally {
    await probe.end().catch(() => {});
  }
  const u = new URL(url);
  const name = databaseOf(url);
  u.pathname = '/postgres';
  const admin = new pg.Client({ connectionString: u.toString(), connectionTimeoutMillis: 3000 });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`);
  } catch (err) {
    // created meanwhile by another process: 42P04 when it had committed, 23505 (the catalog's unique
    // index on the name) when both CREATE DATABASE ran at once
    const code = (err as { code?: string }).code;
    if (code !== '42P04' && code !== '23505') throw err;
  } finally {
    await admin.end();
  }
}

/** pools on a database a newer version migrated past SCHEMA_VERSION: its newest version */
const newerOf = new WeakMap<pg.Pool, number>();
/** pools whose database this open migrated from nothing: a snapshot made anew */
const freshOf = new WeakSet<pg.Pool>();
/** Whether opening the pool made the snapshot's tables (the database new, dropped and made anew, or emptied). */
export function madeAnew(pool: pg.Pool): boolean {
  return freshOf.has(pool);
}
/** The schema version of the pool's database when a newer referral-manager migrated it past SCHEMA_VERSION. */
export function newerSchema(pool: pg.Pool): number | undefined {
  return newerOf.get(pool);
}

const socketsOf = new WeakMap<pg.Pool, Set<net.Socket>>();
const LOWER_STATEMENT_TIMEOUT = `SELECT set_config('statement_timeout', $1::text, false)
  WHERE current_setting('statement_timeout')::interval = interval '0' OR current_setting('statement_timeout')::interval > ($1::text || ' ms')::interval`;

/**
 * Ends the socket under every connection of a pool openPostgres made, so the queries on them fail at once:
 * pg has no way to cut a query short, and one waiting on a hung Postgres would hold a writer's stop() for
 * its query timeout.
 */
export function cutConnections(pool: pg.Pool): void {
  for (const s of socketsOf.get(pool) ?? []) s.destroy();
}

/**
 * A pool on `url` with the database created and migrated; pool errors on idle clients are not fatal.
 * TCP keepalive finds a dead peer on idle connections; `queryTimeoutMs` bounds a query on a connection
 * that went half-open mid-query (no reply, no reset), which would otherwise wait forever, and sets Postgres'
 * statement timeout under it. The migrations run before, on a connection of their own without either
 * (`migrate`): only its quick queries, around them, wait at most `queryTimeoutMs`; `note` hears what they do
 * (MigrationNote). With `create` false a missing database is an error: what only reads the
 * snapshot (restore, verify) must not make an empty one from a mistyped URL and take it for the snapshot;
 * nor take one that holds no snapshot (no migration table: no writer ever opened it) for an empty one.
 */
export async function openPostgres(url: string, max = 2, queryTimeoutMs?: number, create = true, note: MigrationNote = () => {}): Promise<pg.Pool> {
  if (create) await ensureDatabase(url);
  const sockets = new Set<net.Socket>();
  // the socket pg would make itself (TLS, when asked for, wraps it), made here so cutConnections can reach it
  const stream = () => {
    const s = new net.Socket();
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
    return s;
  };
  // no query timeout for the migrations (migrate: its quick queries have one): a half-open connection is
  // found by TCP keepalive: probed after 10 s of silence, given up once the system's probes fail (Node 20 sets
  // only the idle time: 9 × 75 s more on Linux's defaults)
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3000, keepAlive: true, keepAliveInitialDelayMillis: 10_000, stream });
  client.on('error', ignore);
  const { applied, newest } = await (async () => {
    try {
      await client.connect().catch((err: unknown) => {
        if (err instanceof Object) notConnected.add(err);
        throw err;
      });
      if (!create) await requireSnapshot(client, databaseOf(url), queryTimeoutMs);
      return await migrate(client, note, queryTimeoutMs);
    } finally {
      await client.end().catch(() => {});
    }
  })();
  // an older version (a rollback) reading a newer snapshot: a restore would leave out what the newer
  // migrations added, without a word. The writer goes on (it warns): refusing, it held the lease unable to write
  if (newest > SCHEMA_VERSION && !create) throw new Error(`database "${databaseOf(url)}" holds a snapshot of schema version ${newest}, newer than this referral-manager knows (${SCHEMA_VERSION}): a newer version migrated it; run that version`);
  // pg's query timeout only stops waiting: Postgres ran on a query given up on, so behind a long lock each
  // retry left one more backend waiting. A statement timeout a little under it has Postgres cancel the query
  // first (57014); a lower one the database sets for itself stays. Set before the pool lends the connection
  // (a query sent meanwhile would queue behind it, which pg warns is deprecated).
  const onConnect = queryTimeoutMs === undefined ? undefined : async (c: pg.ClientBase) => void (await c.query(LOWER_STATEMENT_TIMEOUT, [Math.max(1, Math.floor(queryTimeoutMs * 0.8))]));
  // made once the schema is in place: a failed open (a writer retries it with backoff) leaves no pool behind
  const pool = new pg.Pool({ connectionString: url, max, connectionTimeoutMillis: 3000, keepAlive: true, query_timeout: queryTimeoutMs, stream, onConnect });
  socketsOf.set(pool, sockets);
  pool.on('error', () => {});
  if (applied.includes(1)) freshOf.add(pool);
  if (newest > SCHEMA_VERSION) newerOf.set(pool, newest);
  return pool;
}

const guarded = new WeakSet<pg.PoolClient>();
/** errors checkout met opening a connection */
const notConnected = new WeakSet<object>();
/** Whether `err` is checkout's failure to open a connection: Postgres out of reach, whatever SQLSTATE it carries. */
export function failedToConnect(err: unknown): boolean {
  return err instanceof Object && notConnected.has(err);
}

/** A round trip on a connection of the pool, opened through checkout so a failure to connect is known as one. */
export async function ping(pool: pg.Pool): Promise<void> {
  await withClient(pool, (c) => c.query('SELECT 1'));
}

/**
 * `use` on a client of the pool (checkout's). A client whose work failed is dropped, not given back: after a
 * timeout the connection may be dead, and Postgres rolls back a transaction left open when it closes.
 */
export async function withClient<T>(pool: pg.Pool, use: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await checkout(pool);
  try {
    const result = await use(client);
    client.release();
    return result;
  } catch (err) {
    client.release(err as Error);
    throw err;
  }
}
const ignore = () => {};
/**
 * A client of the pool for several queries (a transaction). pg-pool takes its own 'error' listener off a
 * client it lends out, so a connection dropped between two queries (a reset, a Postgres host lost) emitted
 * an 'error' no one handled, which ended the process: `serve` and its API with the writer. Each client
 * gets a listener of its own once; the query in flight, or the next one, fails instead, and the caller
 * releases the client with that error.
 */
async function checkout(pool: pg.Pool): Promise<pg.PoolClient> {
  const client = await pool.connect().catch((err: unknown) => {
    if (err instanceof Object) notConnected.add(err);
    throw err;
  });
  if (!guarded.has(client)) {
    client.on('error', ignore);
    guarded.add(client);
  }
  return client;
}
