import { settings } from '../../src/config.js';

/**
 * Runs before every test file (vitest setupFiles). The tests' loadConfig calls read process.env for what they
 * do not set, and every child they start (serve, the CLI, snapshot, demo) inherits process.env: a REDIS_URL,
 * KEY_PREFIX, ADMIN_KEY, PORT, DATABASE_URL, METRICS_KEY... of the shell or CI job that runs the tests went
 * into them and changed what they did (an ADMIN_KEY shorter than 32 characters failed every CLI run). So no
 * setting of the config module comes from outside; TEST_REDIS_URL (test/helpers/services.ts) still points the
 * tests, and so the CLI children and writers, at another Redis.
 */
for (const s of Object.values(settings)) delete process.env[s.env];
// nor libpq's PG* variables, which node-postgres reads for what a URL leaves out: PGSSLMODE=require (the server
// here has no SSL) or PGOPTIONS failed every Postgres test in its beforeAll. The tests need trust auth on
// TEST_PG_URL (.ci/run checks), and a test server that needs more takes it in that URL (?sslmode=...)
for (const name of Object.keys(process.env)) if (name.startsWith('PG')) delete process.env[name];
if (process.env.TEST_REDIS_URL) process.env.REDIS_URL = process.env.TEST_REDIS_URL;
