// The shared Redis and Postgres the tests run against, in a module without vitest's API so that the run's
// global setup (test/helpers/leaks.ts, outside the test workers) reads the same addresses.
export const SHARED_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
export const PG_BASE_URL = process.env.TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
