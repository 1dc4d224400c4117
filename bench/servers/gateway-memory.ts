import { loadAgentModules } from "../../src/agents/load-modules.js";
import { loadConfig } from "../../src/config.js";
import { createGateway } from "../../src/server/gateway.js";
import { createSqliteStore } from "../../src/store/sqlite/sqlite-store.js";
import { createLogger } from "../../src/telemetry/logger.js";

/**
 * The gateway as src/main.ts builds it (same configuration from the
 * environment, same logger), except that its store is a private in-memory
 * SQLite database: the durability scenario's "nothing on disk" point.
 * Benchmark only; never a way to run the service.
 */

const { config } = loadConfig([], process.env);
const log = createLogger(config.logLevel);
const gateway = createGateway({
  config,
  logger: log,
  agents: await loadAgentModules(config.agents),
  store: createSqliteStore({ path: ":memory:" }),
});
await gateway.start();

const stop = () => {
  void gateway.close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
