import net from 'node:net';
import pg from 'pg';

/**
 * Versioned migrations, applied in order at start under an advisory lock (several processes may
 * start at once). SQL lives here as strings so the built dist/ needs no extra files.
 */
export const MIGRATIONS: { version: number; name: string; sql: string }[] = [
  {
    version: 1,
    name: 'tokens and token_events',
    sql: `
      CREATE TABLE tokens (
        token uuid PRIMARY KEY,
        state text NOT NULL,
        owner_satellite_id text NOT NULL,
        owner_user_id text NOT NULL,
        campaign_id text NOT NULL,
        created_at bigint NOT NULL,
        expires_at bigint,
        reservation_id text,
        reserved_by text,
        lease_expires_at bigint,
        redeemer_satellite_id text,
        redeemer_user_id text,
        redeemed_at bigint,
        -- stream position of the last applied event (shard, ms, seq): an older event never wins
        ev_shard smallint NOT NULL,
        ev_ms bigint NOT NULL,
        ev_seq bigint NOT NULL
      );
      CREATE INDEX tokens_owner ON tokens (owner_satellite_id, owner_user_id);
      CREATE INDEX tokens_campaign ON tokens (campaign_id);
      CREATE INDEX tokens_state ON tokens (state);
      -- append-only history, one row per stream entry; its key makes a replay a no-op
      CREATE TABLE token_events (
        ev_shard smallint NOT NULL,
        ev_ms bigint NOT NULL,
        ev_seq bigint NOT NULL,
        token uuid NOT NULL,
        type text NOT NULL,
        at bigint NOT NULL,
        PRIMARY KEY (ev_shard, ev_ms, ev_seq)
      );
      CREATE INDEX token_events_token ON token_events (token);
    `,
  },
  {
    version: 2,
    name: 'satellites',
    sql: `
      -- the registry as Redis holds it (src/store/satellites.ts): the satellite's hash and its key index
      -- entries (sha256 of each API key, never a key), so restore can bring back working keys
      CREATE TABLE satellites (
        id text PRIMARY KEY,
        fields jsonb NOT NULL,
        api_keys jsonb NOT NULL
      );
    `,
  },
  {
    version: 3,
    name: 'campaigns',
    sql: `
      -- generate's campaign records (src/store/campaigns.ts) without the per-user made/delivered lists
      -- (millions of users): restore rebuilds those from tokens.campaign_id
      CREATE TABLE campaigns (
        id text PRIMARY KEY,
        meta jsonb NOT NULL,      -- perUser, expiresAt, satellites, createdAt
        progress jsonb NOT NULL   -- per satellite: the counters, status, lastError
      );
    `,
  },
  {
    version: 4,
    name: 'revoked_campaigns',
    sql: `
      -- every revoked campaign id (src/store/keys.ts revokedCampaigns), also one only the admin route used,
      -- which has no campaigns row: restore marks the shards again so generate still refuses it
      CREATE TABLE revoked_campaigns (
        id text PRIMARY KEY,
        revoked_at bigint NOT NULL
      );
    `,
  },
  {
    version: 5,
    name: 'campaign_refusals',
    sql: `
      -- the users a satellite refused in a campaign (src/store/campaigns.ts rej:<sat>; their tokens are revoked):
      -- restore brings them back, so --resume does not push them again and \`campaigns refused\` still lists them
      CREATE TABLE campaign_refusals (
        campaign_id text NOT NULL,
        satellite_id text NOT NULL,
        user_id text NOT NULL,
        PRIMARY KEY (campaign_id, satellite_id, user_id)
      );
    `,
  },
  {
    version: 6,
    name: 'tokens_purged_at',
    sql: `
      -- when a purge deleted the token from Redis (lua/purge.lua); the row keeps its last state. Restore
      -- and verify leave purged rows out of Redis but count them, as the stats counters do
      ALTER TABLE tokens ADD COLUMN purged_at bigint;
    `,
  },
  {
    version: 7,
    name: 'revocations_from_campaign_rows',
    sql: `
      -- a writer from before revoked_campaigns kept a revocation only as revokedAt in the campaign row's meta,
      -- which the first copy of a newer writer overwrites: moved here before any writer runs (a row wins)
      INSERT INTO revoked_campaigns (id, revoked_at)
      SELECT id, (meta->>'revokedAt')::bigint FROM campaigns WHERE meta ? 'revokedAt'
      ON CONFLICT (id) DO NOTHING;
    `,
  },
  {
    version: 8,
    name: 'shard_marks',
    sql: `
      -- the key prefixes whose shards carry their intact marks in Redis (src/snapshot/lost.ts): from then on a
      -- shard without its mark lost its data; before, the first check marks the shards it finds in place
      CREATE TABLE IF NOT EXISTS shard_marks (prefix text PRIMARY KEY, since bigint NOT NULL);
    `,
  },
];

const LOCK_ID = 74_820_501;

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

/** The newest migration this code knows. */
export const SCHEMA_VERSION = Math.max(...MIGRATIONS.map((m) => m.version));
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

/**
 * How long a migration waits for a lock on a table it changes. Unbounded, one waiting behind a long read of the
 * table (verify, a report) queued every statement on it behind itself for as long as that read ran. Given up,
 * the migration fails naming itself: the writer tries again with backoff; restore and verify exit with it.
 */
const MIGRATION_LOCK_TIMEOUT = '5s';
/** How long one turn of the wait for another process' migration lasts (its lock_timeout), before the next. */
const LOCK_TURN_MS = 5_000;

/**
 * What `migrate` says as it starts a step that may take long (the log line), and what it then does while it lasts,
 * without what ages (a status shown for as long as the step runs: the writer's "migrating").
 */
export type MigrationNote = (msg: string, doing: string) => void;

/**
 * Applies every migration not yet recorded in schema_migrations, each in a transaction of its own; returns the
 * versions applied and the newest recorded. Runs on a connection of its own, without the writer's timeouts: a
 * migration takes as long as it takes (an index build on a large table), and so does the wait of the processes
 * starting meanwhile, which queue on the advisory lock and find nothing left to apply.
 */
async function migrate(client: pg.ClientBase, note: MigrationNote, queryTimeoutMs?: number): Promise<{ applied: number[]; newest: number }> {
  const quick = <R extends pg.QueryResultRow>(text: string, values?: unknown[]) => quickly<R>(client, queryTimeoutMs, text, values);
  // the database's (or role's) timeouts are the runtime's; the connection is closed after, so these end with it
  await quick('SET statement_timeout = 0; SET lock_timeout = 0');
  const got = (await quick<{ got: boolean }>('SELECT pg_try_advisory_lock($1) AS got', [LOCK_ID])).rows[0]!.got;
  if (!got) {
    const holder = (
      await quick<{ pid: number; addr: string | null; secs: number | null }>(
        `SELECT l.pid, host(a.client_addr) AS addr, floor(extract(epoch FROM now() - a.backend_start))::int AS secs
           FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = $1 AND l.objsubid = 1
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
        [LOCK_ID],
      )
    ).rows[0];
    // let go of meanwhile: nothing to say, the lock is taken at once
    if (holder) {
      const from = holder.addr ? ` from ${holder.addr}` : '';
      note(`waiting for another process migrating the snapshot's schema (Postgres backend pid ${holder.pid}${from}, connected ${holder.secs ?? '?'} s ago)`, `waiting for Postgres backend pid ${holder.pid}${from} (another process migrating the snapshot's schema)`);
    }
    // waited for in turns of LOCK_TURN_MS, each a query of its own: the wait lasts as long as the other's
    // migration, and a Postgres gone silent meanwhile fails a turn by its query timeout
    await quick(`SET lock_timeout = ${LOCK_TURN_MS}`);
    for (let got = false; !got; ) {
      got = await client.query({ text: 'SELECT pg_advisory_lock($1)', values: [LOCK_ID], query_timeout: queryTimeoutMs && queryTimeoutMs + LOCK_TURN_MS } as pg.QueryConfig).then(
        () => true,
        (err: { code?: string }) => {
          if (err.code === '55P03') return false;
          throw err;
        },
      );
    }
    await quick('SET lock_timeout = 0');
  }
  // no unlock: the session, and the lock with it, ends when the caller closes the connection
  await quick('CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())');
  const done = new Set((await quick<{ version: number }>('SELECT version FROM schema_migrations')).rows.map((r) => r.version));
  const applied: number[] = [];
  for (const m of MIGRATIONS) {
    if (done.has(m.version)) continue;
    note(`applying schema migration ${m.version} (${m.name})`, `applying schema migration ${m.version} (${m.name})`);
    await client.query('BEGIN');
    try {
      await client.query(`SET LOCAL lock_timeout = '${MIGRATION_LOCK_TIMEOUT}'`);
      await client.query(m.sql);
      await client.query('INSERT INTO schema_migrations (version, name) VALUES ($1, $2)', [m.version, m.name]);
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      // the SQLSTATE kept, which says to the writer whether Postgres refused it or went out of reach
      if (err instanceof Error) err.message = `schema migration ${m.version} (${m.name}): ${err.message}`;
      throw err;
    }
    applied.push(m.version);
  }
  return { applied, newest: Math.max(SCHEMA_VERSION, ...done) };
}

/**
 * A query that is quick however big the snapshot (all the opening does but the migrations themselves), waiting
 * at most `queryTimeoutMs`: a Postgres that stops answering without closing the connection fails the open
 * instead of holding it for ever.
 */
function quickly<R extends pg.QueryResultRow>(client: pg.ClientBase, queryTimeoutMs: number | undefined, text: string, values?: unknown[]): Promise<pg.QueryResult<R>> {
  return client.query<R>({ text, values, query_timeout: queryTimeoutMs } as pg.QueryConfig);
}

async function requireSnapshot(client: pg.ClientBase, url: string, queryTimeoutMs?: number): Promise<void> {
  const found = (await quickly<{ t: string | null }>(client, queryTimeoutMs, "SELECT to_regclass('schema_migrations') AS t")).rows[0]!.t;
  if (found === null) {
    const name = databaseOf(url);
    throw new Error(`database "${name}" holds no snapshot (no schema_migrations table: no snapshot writer ever opened it); check DATABASE_URL`);
  }
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
      if (!create) await requireSnapshot(client, url, queryTimeoutMs);
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
