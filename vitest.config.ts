import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Servers on real ports and child processes: give them room on a
    // shared 2-core machine, but never assert on time.
    testTimeout: 30_000,
    hookTimeout: 30_000,
    pool: "forks",
  },
});
