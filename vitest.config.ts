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
    // clears every env setting of the config module the tests' shell or CI job may have set, so neither the
    // tests nor the processes they start read them; it sets REDIS_URL from TEST_REDIS_URL
    setupFiles: ['test/helpers/clean-env.ts'],
    // fails the run if a test left keys in the shared Redis or a database in Postgres
    globalSetup: ['test/helpers/leaks.ts'],
  },
});
