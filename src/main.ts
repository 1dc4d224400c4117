import { loadAgentModules } from "./agents/load-modules.js";
import { ConfigError, describeOptions, loadConfig } from "./config.js";
import { createGateway } from "./server/gateway.js";
import { createLogger } from "./telemetry/logger.js";

/** Starts agent-gateway from the command line; exits non-zero on failure. */
async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig();
  } catch (error) {
    if (error instanceof ConfigError || error instanceof TypeError) {
      process.stderr.write(`agent-gateway: ${error.message}\n\n${describeOptions()}\n`);
      process.exit(2);
    }
    throw error;
  }
  if (config.help) {
    process.stdout.write(`${describeOptions()}\n`);
    return;
  }
  const log = createLogger(config.logLevel);
  const modules = config.agents.split(",").map((p) => p.trim()).filter(Boolean);
  const gateway = createGateway({
    config,
    logger: log,
    agents: await loadAgentModules(modules),
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
