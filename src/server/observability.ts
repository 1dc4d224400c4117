import type { Interceptor } from "@connectrpc/connect";
import type { Config } from "../config.js";
import { combineObservers, type RuntimeObserver } from "../runtime/observer.js";
import type { Store } from "../store/store.js";
import { meterInvocations } from "../telemetry/invocation-metrics.js";
import { traceInvocations } from "../telemetry/invocation-tracing.js";
import type { Logger } from "../telemetry/logger.js";
import { createMetrics, type GatewayMetrics } from "../telemetry/metrics.js";
import { timeStore } from "../telemetry/timed-store.js";
import { createTracing, type Tracing } from "../telemetry/tracing.js";
import type { PlainRoute } from "./http-routes.js";
import { createRpcLogInterceptor } from "./interceptors/rpc-log.js";
import { createTracingInterceptor } from "./interceptors/tracing.js";
import { metricsRoute } from "./metrics-route.js";

/** Logs, traces and metrics of one gateway, ready to be wired in. */
export interface Observability {
  readonly metrics: GatewayMetrics;
  readonly tracing: Tracing;
  /** For the runtime: invocation spans and invocation metrics. */
  readonly runtimeObserver: RuntimeObserver;
  /**
   * The tracing span, then the RPC log line and metrics: the outermost
   * interceptors, before authentication and rate limiting.
   */
  readonly interceptors: Interceptor[];
  /** `/metrics`, for withPlainRoutes. */
  readonly routes: Record<string, PlainRoute>;
  /** The store with its operations timed. */
  timed(store: Store): Store;
  /** Exports buffered spans. Every call returns the same promise. */
  shutdown(): Promise<void>;
}

export interface ObservabilityOptions {
  config: Pick<Config, "otlpEndpoint">;
  logger: Logger;
  /** Where the OTEL_* variables are read. @default process.env */
  env?: NodeJS.ProcessEnv;
  /**
   * The hosted agents, for the description on invocation spans.
   * @default none: spans carry no `gen_ai.agent.description`
   */
  agents?: { get(name: string): { description: string } | undefined };
}

/** Builds the telemetry of one gateway; nothing global but OTel's diag. */
export function createObservability(options: ObservabilityOptions): Observability {
  const { logger } = options;
  const metrics = createMetrics();
  const tracing = createTracing({
    endpoint: options.config.otlpEndpoint,
    env: options.env,
    logger,
  });
  if (tracing.exportUrl) {
    logger.info(
      { url: withoutCredentials(tracing.exportUrl), protocol: tracing.exportProtocol },
      "exporting traces",
    );
  }
  return {
    metrics,
    tracing,
    runtimeObserver: combineObservers(
      traceInvocations(tracing, {
        describeAgent: (name) => options.agents?.get(name)?.description,
      }),
      meterInvocations(metrics),
    ),
    interceptors: [
      createTracingInterceptor(tracing.tracer),
      createRpcLogInterceptor({ logger, metrics }),
    ],
    routes: { "/metrics": metricsRoute(metrics.registry) },
    timed: (store) => timeStore(store, metrics),
    shutdown: () => tracing.shutdown(),
  };
}

/**
 * The URL without what may carry a credential (user and password, query),
 * so that it can be logged.
 */
function withoutCredentials(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.protocol}//${parsed.host}${parsed.pathname}`;
  } catch {
    return "(not a URL)";
  }
}
