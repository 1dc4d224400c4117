import { loadAgentModules } from "./agents/load-modules.js";
import { ConfigError, describeOptions, loadConfig } from "./config.js";
import { createGateway } from "./server/gateway.js";
import { createLogger } from "./telemetry/logger.js";

/** Starts agent-gateway from the command line; exits non-zero on failure. */
async function main(): Promise<void> {
  let loaded;
  try {
    loaded = loadConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`agent-gateway: ${error.message}\n(see --help)\n`);
      process.exit(2);
    }
    throw error;
  }
  if (loaded.help) {
    process.stdout.write(`${describeOptions()}\n`);
    return;
  }
  const { config } = loaded;
  const log = createLogger(config.logLevel);
  const gateway = createGateway({
    config,
    logger: log,
    agents: await loadAgentModules(config.agents),
  });

  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, "second signal; exiting now");
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, "stopping");
    gateway.close().then(
      () => process.exit(0),
      (error: unknown) => {
        log.error({ err: error }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);

  await gateway.start();
}

main().catch((error: unknown) => {
  process.stderr.write(`agent-gateway: ${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
