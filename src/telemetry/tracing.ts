import { createHash } from "node:crypto";
import { createRequire } from "node:module";
import {
  DiagLogLevel,
  diag,
  type Context,
  type Span,
  type SpanOptions,
  type Tracer,
} from "@opentelemetry/api";
import type { OTLPTraceExporter as GrpcExporter } from "@opentelemetry/exporter-trace-otlp-grpc";
import { OTLPTraceExporter as JsonExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { OTLPTraceExporter as ProtobufExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import {
  defaultResource,
  detectResources,
  envDetector,
  resourceFromAttributes,
} from "@opentelemetry/resources";
import {
  AlwaysOffSampler,
  BasicTracerProvider,
  BatchSpanProcessor,
  RandomIdGenerator,
  type IdGenerator,
  type SpanExporter,
} from "@opentelemetry/sdk-trace-base";
import type { Logger } from "./logger.js";

export interface TracingOptions {
  /**
   * OTLP/HTTP base URL (`config.otlpEndpoint`); spans go to `<it>/v1/traces`.
   * OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, when set, wins, as the OTel
   * specification says. @default "": no export unless the environment says
   */
  endpoint?: string;
  /** Where the standard OTEL_* variables are read. @default process.env */
  env?: NodeJS.ProcessEnv;
  /** Failed exports are logged here at warn. @default nowhere */
  logger?: Logger;
}

/** The tracer of one gateway and what it exports to. */
export interface Tracing {
  readonly tracer: Tracer;
  /** The URL spans are sent to; undefined when not exporting. */
  readonly exportUrl: string | undefined;
  /** How they are sent; undefined when not exporting. */
  readonly exportProtocol: OtlpProtocol | undefined;
  /**
   * Starts a span with the given span id instead of a random one: the span
   * of an invocation's first run gets one derived from the invocation id
   * (see spanIdOf), so that a run resumed after a restart can link to it
   * knowing only the stored trace id.
   */
  startSpanWithId(
    spanId: string,
    name: string,
    options: SpanOptions,
    context: Context,
  ): Span;
  /** Exports what is buffered, then stops. Every call returns the same promise. */
  shutdown(): Promise<void>;
}

/**
 * Sets up tracing for one gateway. Without an endpoint nothing is recorded
 * or exported: spans still carry trace ids (so invocations record one and
 * an incoming traceparent is continued), but the sampler drops them at
 * creation, which costs an id and an object per span and nothing else.
 */
export function createTracing(options: TracingOptions = {}): Tracing {
  const env = options.env ?? process.env;
  const target = exportTargetOf(options.endpoint ?? "", env, options.logger);
  const ids = new ChosenSpanIds();
  const resource = defaultResource()
    .merge(detectResources({ detectors: [envDetector] }))
    .merge(
      resourceFromAttributes({
        "service.name": env.OTEL_SERVICE_NAME || "agent-gateway",
      }),
    );
  let provider: BasicTracerProvider;
  if (target === undefined) {
    provider = new BasicTracerProvider({
      resource,
      idGenerator: ids,
      sampler: new AlwaysOffSampler(),
    });
  } else {
    if (options.logger) routeDiagnostics(options.logger);
    provider = new BasicTracerProvider({
      resource,
      idGenerator: ids,
      // Batched, so an RPC never waits for the collector; the OTEL_BSP_*
      // variables tune it.
      spanProcessors: [new BatchSpanProcessor(exporterOf(target))],
    });
  }
  const tracer = provider.getTracer("agent-gateway");
  let stopping: Promise<void> | undefined;
  return {
    tracer,
    exportUrl: target?.url,
    exportProtocol: target?.protocol,
    startSpanWithId(spanId, name, spanOptions, context) {
      // startSpan asks the generator for exactly one span id, synchronously.
      ids.next = spanId;
      try {
        return tracer.startSpan(name, spanOptions, context);
      } finally {
        ids.next = undefined;
      }
    },
    shutdown() {
      stopping ??= provider.shutdown().catch((error: unknown) => {
        options.logger?.warn({ err: error }, "trace export at shutdown failed");
      });
      return stopping;
    },
  };
}

/**
 * The span id of the span of an invocation's first run: 16 hex digits of
 * SHA-256 of the invocation id.
 */
export function spanIdOf(invocationId: string): string {
  const hex = createHash("sha256").update(invocationId).digest("hex").slice(0, 16);
  // The all-zero id is invalid; 2^-64 odds, but cheap to rule out.
  return hex === "0000000000000000" ? "0000000000000001" : hex;
}

/**
 * The OTLP transports, as OTEL_EXPORTER_OTLP_PROTOCOL names them. The
 * default is http/json: every collector takes it on its HTTP port, and a
 * person can read it.
 */
export const OTLP_PROTOCOLS = ["http/json", "http/protobuf", "grpc"] as const;
export type OtlpProtocol = (typeof OTLP_PROTOCOLS)[number];

interface ExportTarget {
  url: string;
  protocol: OtlpProtocol;
}

/** Where spans go and how, by the OTel rules; undefined: nowhere. */
function exportTargetOf(
  endpoint: string,
  env: NodeJS.ProcessEnv,
  logger: Logger | undefined,
): ExportTarget | undefined {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === "true") return undefined;
  if (env.OTEL_TRACES_EXPORTER?.trim().toLowerCase() === "none") return undefined;
  const protocol = protocolOf(env, logger);
  const traces = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim();
  if (traces) return { url: traces, protocol };
  const base = (endpoint.trim() || env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim())?.replace(/\/+$/, "");
  if (!base) return undefined;
  // gRPC names the service in the call, HTTP in the path.
  return { url: protocol === "grpc" ? base : `${base}/v1/traces`, protocol };
}

function protocolOf(env: NodeJS.ProcessEnv, logger: Logger | undefined): OtlpProtocol {
  const asked = (
    env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL || env.OTEL_EXPORTER_OTLP_PROTOCOL || ""
  ).trim();
  if (asked === "") return "http/json";
  if ((OTLP_PROTOCOLS as readonly string[]).includes(asked)) return asked as OtlpProtocol;
  logger?.warn({ protocol: asked, using: "http/json" }, "unknown OTLP protocol");
  return "http/json";
}

/**
 * Each exporter reads the other OTEL_EXPORTER_OTLP_* variables (headers,
 * timeout, compression, certificates) itself.
 */
function exporterOf({ url, protocol }: ExportTarget): SpanExporter {
  switch (protocol) {
    case "http/json":
      return new JsonExporter({ url });
    case "http/protobuf":
      return new ProtobufExporter({ url });
    case "grpc": {
      // Loaded only when asked for: it brings grpc-js, about 45 ms of start-up.
      const grpc = createRequire(import.meta.url)(
        "@opentelemetry/exporter-trace-otlp-grpc",
      ) as { OTLPTraceExporter: typeof GrpcExporter };
      return new grpc.OTLPTraceExporter({ url });
    }
  }
}

/** Random ids, except for one span id chosen just before a span starts. */
class ChosenSpanIds implements IdGenerator {
  next: string | undefined;
  private readonly random = new RandomIdGenerator();

  generateTraceId(): string {
    return this.random.generateTraceId();
  }

  generateSpanId(): string {
    const chosen = this.next;
    this.next = undefined;
    return chosen ?? this.random.generateSpanId();
  }
}

/**
 * The OTel SDK reports failed exports through its global diagnostic logger;
 * without this they would vanish. Global, so the last gateway built wins.
 */
function routeDiagnostics(logger: Logger): void {
  const log = logger.child({ component: "otel" });
  diag.setLogger(
    {
      error: (message, ...args) => log.warn({ args }, message),
      warn: (message, ...args) => log.warn({ args }, message),
      info: () => {},
      debug: () => {},
      verbose: () => {},
    },
    { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true },
  );
}
