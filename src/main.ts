import { constants } from "node:os";
import { loadAgentModules } from "./agents/load-modules.js";
import { ConfigError, describeOptions, loadConfig } from "./config.js";
import { runKeysCommand } from "./keys-command.js";
import { createGateway } from "./server/gateway.js";
import { createLogger } from "./telemetry/logger.js";

/** Starts agent-gateway from the command line; exits non-zero on failure. */
async function main(): Promise<void> {
  // `agent-gateway keys ...` makes API keys; it needs no server config.
  if (process.argv[2] === "keys") {
    process.exitCode = runKeysCommand(process.argv.slice(3), process.stdout, process.stderr);
    return;
  }
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

  // The first SIGTERM or SIGINT drains and stops gracefully (see
  // Gateway.close) and exits 0; a second one exits at once, with the
  // conventional 128 + signal number, for an operator who will not wait.
  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, "second signal; exiting now");
      process.exit(128 + (constants.signals[signal] ?? 0));
    }
    stopping = true;
    log.info({ signal }, "signal received; shutting down");
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

  try {
    await gateway.start();
  } catch (error) {
    // A signal during start-up: the shutdown above ends the process.
    if (stopping) return;
    throw error;
  }
}

main().catch((error: unknown) => {
  // A setting that cannot work together with another (such as no API keys
  // on a public address) is found while building the gateway.
  if (error instanceof ConfigError) {
    process.stderr.write(`agent-gateway: ${error.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`agent-gateway: ${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
