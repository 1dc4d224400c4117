import {
  Counter,
  Gauge,
  Histogram,
  Registry,
  collectDefaultMetrics,
} from "prom-client";

/**
 * Seconds. Unary calls take milliseconds; Invoke and the streams last as
 * long as an agent runs, so the buckets reach five minutes.
 */
const RPC_BUCKETS = [
  0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
];
const NODE_BUCKETS = [0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300];
/** A SQLite commit takes tens of microseconds to a few milliseconds. */
const STORE_BUCKETS = [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1];

/** The limit that refused a request, for `agent_gateway_rejected_total`. */
export type RejectionLimit =
  /** The caller's token bucket was empty. */
  | "rate"
  /** The tenant has as many invocations running as it may. */
  | "tenant_running"
  /** The gateway has as many invocations running as it may. */
  | "total_running";

/**
 * Every metric of one gateway, in a registry of its own (not prom-client's
 * global one), so that one process can hold several gateways.
 */
export interface GatewayMetrics {
  readonly registry: Registry;
  readonly rpcDuration: Histogram<"procedure" | "protocol" | "code">;
  readonly streamsOpen: Gauge<"procedure">;
  readonly invocationsStarted: Counter<"agent">;
  readonly invocationsResumed: Counter<"agent">;
  readonly invocationsFinished: Counter<"agent" | "state">;
  readonly invocationsRunning: Gauge<"agent">;
  readonly invocationsWaiting: Gauge<"agent">;
  readonly nodeDuration: Histogram<"agent" | "node" | "outcome">;
  readonly storeDuration: Histogram<"operation" | "outcome">;
  readonly rejected: Counter<"limit" | "tenant">;
  /**
   * Counts a request refused by a rate limit or a concurrency cap; the
   * rate limiter calls it.
   */
  countRejection(limit: RejectionLimit, tenant: string): void;
}

export interface MetricsOptions {
  /**
   * Also collect prom-client's process metrics: memory, CPU, event loop
   * delay, garbage collection, handles. @default true
   */
  processMetrics?: boolean;
}

/** Creates the metrics of one gateway. Names start with `agent_gateway_`. */
export function createMetrics(options: MetricsOptions = {}): GatewayMetrics {
  const registry = new Registry();
  const registers = [registry];
  if (options.processMetrics ?? true) collectDefaultMetrics({ register: registry });

  const rejected = new Counter({
    name: "agent_gateway_rejected_total",
    help: "Requests refused by a rate limit (limit=rate) or a cap on running invocations (tenant_running, total_running).",
    labelNames: ["limit", "tenant"] as const,
    registers,
  });
  return {
    registry,
    rpcDuration: new Histogram({
      name: "agent_gateway_rpc_duration_seconds",
      help: "RPCs from the first byte to the last message, by procedure, protocol (grpc, grpc_web, connect) and code (ok or the Connect code).",
      labelNames: ["procedure", "protocol", "code"] as const,
      buckets: RPC_BUCKETS,
      registers,
    }),
    streamsOpen: new Gauge({
      name: "agent_gateway_streams_open",
      help: "Server streams open now, by procedure: InvokeStream and WatchInvocation are the progress streams.",
      labelNames: ["procedure"] as const,
      registers,
    }),
    invocationsStarted: new Counter({
      name: "agent_gateway_invocations_started_total",
      help: "Invocations created (a repeated idempotency key creates none).",
      labelNames: ["agent"] as const,
      registers,
    }),
    invocationsResumed: new Counter({
      name: "agent_gateway_invocations_resumed_total",
      help: "Unfinished invocations this process took up again at start-up.",
      labelNames: ["agent"] as const,
      registers,
    }),
    invocationsFinished: new Counter({
      name: "agent_gateway_invocations_finished_total",
      help: "Invocations that ended, by final state (succeeded, failed, cancelled).",
      labelNames: ["agent", "state"] as const,
      registers,
    }),
    invocationsRunning: new Gauge({
      name: "agent_gateway_invocations_running",
      help: "Invocations this process runs now that do not wait for input.",
      labelNames: ["agent"] as const,
      registers,
    }),
    invocationsWaiting: new Gauge({
      name: "agent_gateway_invocations_waiting_for_input",
      help: "Invocations this process runs now that wait for a human's input.",
      labelNames: ["agent"] as const,
      registers,
    }),
    nodeDuration: new Histogram({
      name: "agent_gateway_node_duration_seconds",
      help: "Node attempts, by agent, node and outcome (ok, error, cancelled).",
      labelNames: ["agent", "node", "outcome"] as const,
      buckets: NODE_BUCKETS,
      registers,
    }),
    storeDuration: new Histogram({
      name: "agent_gateway_store_operation_duration_seconds",
      help: "Store operations, by operation (the Store method) and outcome (ok, error).",
      labelNames: ["operation", "outcome"] as const,
      buckets: STORE_BUCKETS,
      registers,
    }),
    rejected,
    countRejection(limit, tenant) {
      rejected.inc({ limit, tenant });
    },
  };
}
