import { defineConfig } from 'vitest/config';

// Test files share one Redis and one Postgres but each uses its own key prefix / database,
// so files may run in parallel; the machine has 2 cores, so keep the pool small.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    reporters: ['default'],
    // TEST_REDIS_URL points the tests at another Redis (test/helpers/redis.ts): the CLI children and the
    // writers the tests start read REDIS_URL, so it goes there too
    env: process.env.TEST_REDIS_URL ? { REDIS_URL: process.env.TEST_REDIS_URL } : {},
  },
});
