import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { AgentService } from "../../gen/agent/v1/agent_pb.js";
import { builtinAgents } from "../agents/index.js";
import type { Config } from "../config.js";
import type { Agent } from "../runtime/index.js";
import { AgentRegistry } from "../runtime/registry.js";
import { Runtime } from "../runtime/runtime.js";
import { createAgentService } from "../service/agent-service.js";
import type { Store } from "../store/store.js";
import { createSqliteStore } from "../store/sqlite/sqlite-store.js";
import { silentLogger, type Logger } from "../telemetry/logger.js";
import { createListener } from "./listener.js";
import { registerReflection } from "./reflection.js";

export interface GatewayOptions {
  config: Config;
  /** @default a logger that writes nothing */
  logger?: Logger;
  /** Hosted besides the built-in agents. */
  agents?: Agent[];
  /** @default SQLite in config.dataDir */
  store?: Store;
  /**
   * Live events buffered per watch stream; a watcher that falls further
   * behind reads from the store instead. @default the runtime's, 256
   */
  watchBufferSize?: number;
}

/** A built, unstarted gateway: `start()` binds the port. */
export interface Gateway {
  readonly runtime: Runtime;
  readonly store: Store;
  /** Resumes unfinished invocations, then binds the port. */
  start(): Promise<AddressInfo>;
  /** Stops taking requests and stops the runtime. Safe to call twice. */
  close(): Promise<void>;
}

/** The file name of the SQLite database inside the data directory. */
export const DATABASE_FILE = "agent-gateway.db";

/**
 * Builds the whole service: store, runtime, AgentService and reflection
 * behind one listener. Tests build the same thing on port 0.
 */
export function createGateway(options: GatewayOptions): Gateway {
  const { config } = options;
  const log = options.logger ?? silentLogger();
  const store =
    options.store ??
    createSqliteStore({
      path: join(config.dataDir, DATABASE_FILE),
      synchronous: config.sqliteSynchronous,
    });
  const agents = new AgentRegistry([...builtinAgents, ...(options.agents ?? [])]);
  const runtime = new Runtime({
    store,
    agents,
    logger: log,
    heartbeatMs: config.heartbeatMs,
    watchBufferSize: options.watchBufferSize,
  });
  const shutdown = new AbortController();
  const handler = connectNodeAdapter({
    routes(router) {
      router.service(
        AgentService,
        createAgentService({ runtime, agents, logger: log }),
      );
      registerReflection(router, [AgentService]);
    },
    readMaxBytes: config.maxMessageBytes,
    maxTimeoutMs: config.maxTimeoutMs,
    shutdownSignal: shutdown.signal,
  });
  const tls =
    config.tlsCert && config.tlsKey
      ? { cert: readFileSync(config.tlsCert), key: readFileSync(config.tlsKey) }
      : undefined;
  const listener = createListener({
    host: config.host,
    port: config.port,
    handler,
    tls,
    maxConcurrentStreams: config.maxConcurrentStreams,
  });

  let closing: Promise<void> | undefined;
  return {
    runtime,
    store,
    async start() {
      await runtime.resume();
      const address = await listener.listen();
      log.info(
        {
          address: address.address,
          port: address.port,
          tls: tls !== undefined,
          agents: agents.list().map((a) => a.name),
        },
        "listening",
      );
      return address;
    },
    close() {
      closing ??= (async () => {
        // The runtime stops first, so that streams ending below cannot
        // cancel their invocations (on_disconnect CANCEL): a restart
        // resumes them instead.
        await runtime.close();
        shutdown.abort();
        await listener.close();
        await store.close();
        log.info("stopped");
      })();
      return closing;
    },
  };
}
