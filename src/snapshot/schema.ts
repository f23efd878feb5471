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

/** The newest migration this code knows. */
export const SCHEMA_VERSION = Math.max(...MIGRATIONS.map((m) => m.version));

const LOCK_ID = 74_820_501;

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
export async function migrate(client: pg.ClientBase, note: MigrationNote, queryTimeoutMs?: number): Promise<{ applied: number[]; newest: number }> {
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

/** Refuses a database `name` that holds no snapshot: what only reads it must not take an empty one for it. */
export async function requireSnapshot(client: pg.ClientBase, name: string, queryTimeoutMs?: number): Promise<void> {
  const found = (await quickly<{ t: string | null }>(client, queryTimeoutMs, "SELECT to_regclass('schema_migrations') AS t")).rows[0]!.t;
  if (found === null) {
    throw new Error(`database "${name}" holds no snapshot (no schema_migrations table: no snapshot writer ever opened it); check DATABASE_URL`);
  }
}
