import { setMaxListeners } from "node:events";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import { Code, ConnectError } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { AgentService } from "../../gen/agent/v1/agent_pb.js";
import { Health } from "../../gen/health/v1/health_pb.js";
import { builtinAgents } from "../agents/index.js";
import type { Config } from "../config.js";
import type { Agent } from "../runtime/index.js";
import { AgentRegistry } from "../runtime/registry.js";
import { Runtime } from "../runtime/runtime.js";
import { createAgentService } from "../service/agent-service.js";
import type { Store } from "../store/store.js";
import { createSqliteStore } from "../store/sqlite/sqlite-store.js";
import { silentLogger, type Logger } from "../telemetry/logger.js";
import { createAuthInterceptor, createKeyRing } from "./auth.js";
import { createHealthService, healthRoutes } from "./health.js";
import { withCors, withPlainRoutes } from "./http-routes.js";
import { Lifecycle, type LifecycleState } from "./lifecycle.js";
import { createListener } from "./listener.js";
import { createObservability } from "./observability.js";
import { createRateLimitInterceptor } from "./rate-limit.js";
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
  /** Where the gateway is in its life; only `serving` is ready. */
  readonly state: LifecycleState;
  /** Resumes unfinished invocations, then binds the port. */
  start(): Promise<AddressInfo>;
  /**
   * Shuts down gracefully: not ready at once (health NOT_SERVING, /readyz
   * 503), new invocations refused with UNAVAILABLE, running ones given
   * config.shutdownGraceMs to finish and then stopped without an end (they
   * resume at the next start), open streams ended, HTTP/2 sessions sent
   * GOAWAY, the store closed. Every call returns the same promise.
   */
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
  // Before anything is opened: no keys on a public address stops here.
  const keys = createKeyRing(config, log);
  const agents = new AgentRegistry([...builtinAgents, ...(options.agents ?? [])]);
  const telemetry = createObservability({ config, logger: log, agents });
  const store = telemetry.timed(
    options.store ??
      createSqliteStore({
        path: join(config.dataDir, DATABASE_FILE),
        synchronous: config.sqliteSynchronous,
      }),
  );
  const runtime = new Runtime({
    store,
    agents,
    logger: log,
    heartbeatMs: config.heartbeatMs,
    watchBufferSize: options.watchBufferSize,
    observer: telemetry.runtimeObserver,
    admission: {
      maxRunning: config.maxRunningInvocations,
      maxRunningPerTenant: config.maxRunningPerTenant,
      onRefuse: (limit, tenant) => telemetry.metrics.countRejection(limit, tenant),
    },
  });
  const lifecycle = new Lifecycle();
  const shutdown = new AbortController();
  // Connect links every call's signal to this one: one listener per call
  // in flight, so Node's default cap of 10 would warn under any real load.
  setMaxListeners(0, shutdown.signal);
  const connectHandler = connectNodeAdapter({
    routes(router) {
      router.service(
        AgentService,
        createAgentService({ runtime, agents, logger: log }),
      );
      router.service(
        Health,
        createHealthService({ lifecycle, store, services: [AgentService.typeName] }),
      );
      registerReflection(router, [AgentService, Health]);
    },
    // Outermost first. Authentication sets the tenant the rate limit and
    // the service use.
    interceptors: [
      // The tracing span, then the RPC log line and metrics: outside
      // authentication, so that its refusals are traced, logged and counted.
      ...telemetry.interceptors,
      createAuthInterceptor({ keys, logger: log }),
      createRateLimitInterceptor({
        defaults: { ratePerSecond: config.ratePerSecond, burst: config.rateBurst },
        logger: log,
        onReject: (tenant) => telemetry.metrics.countRejection("rate", tenant),
      }),
    ],
    readMaxBytes: config.maxMessageBytes,
    // Our 0 means no cap; connect-es would read it as a cap of 0 ms and
    // refuse every deadline. It spells "no cap" undefined
    // (protocol/universal-handler.ts).
    maxTimeoutMs: config.maxTimeoutMs === 0 ? undefined : config.maxTimeoutMs,
    shutdownSignal: shutdown.signal,
  });
  const handler = withPlainRoutes(
    { ...healthRoutes(lifecycle, store, log), ...telemetry.routes },
    withCors(config.corsOrigins, connectHandler),
    log,
  );
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
    get state() {
      return lifecycle.state;
    },
    async start() {
      if (lifecycle.state !== "starting") throw new Error(`the gateway is ${lifecycle.state}`);
      await runtime.resume();
      // close() may have begun meanwhile: do not bind a closing gateway.
      if (lifecycle.state !== "starting") throw new Error(`the gateway is ${lifecycle.state}`);
      const address = await listener.listen();
      lifecycle.advance("serving");
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
        // Not ready from now on: /readyz answers 503 and health Watch
        // streams hear NOT_SERVING, so balancers stop sending work here.
        // The port stays open meanwhile: reads, cancels, input and open
        // streams go on; only new invocations are refused.
        lifecycle.advance("draining");
        log.info({ graceMs: config.shutdownGraceMs, running: runtime.active }, "draining");
        const busy = await runtime.drain(config.shutdownGraceMs);
        const stopped = runtime.active;
        // The runtime stops before the streams end, so that streams ending
        // below cannot cancel their invocations (on_disconnect CANCEL): a
        // restart resumes them instead.
        await runtime.close();
        // Ends every open RPC: health Watch streams end OK; progress
        // streams and waiting Invoke calls end UNAVAILABLE (their
        // invocation has not ended: watch again after a restart).
        shutdown.abort(new ConnectError("the gateway is shutting down", Code.Unavailable));
        // GOAWAY to HTTP/2 sessions; waits for the last responses.
        await listener.close();
        await store.close();
        // After everything above, so that its spans are exported too.
        await telemetry.shutdown();
        lifecycle.advance("stopped");
        // `stopped` invocations resume at the next start; `busy` of them
        // were still working when the grace ran out, the rest waited for
        // input.
        log.info({ stopped, busy }, "stopped");
      })();
      return closing;
    },
  };
}
