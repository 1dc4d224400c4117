import { Code, type Interceptor } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { trace } from "@opentelemetry/api";
import { INVOCATION_ID_HEADER } from "../../service/agent-service.js";
import { tenantKey } from "../../service/tenant.js";
import { traceContextKey } from "../../service/trace-context.js";
import type { Logger } from "../../telemetry/logger.js";
import type { GatewayMetrics } from "../../telemetry/metrics.js";
import { HEALTH_SERVICE_NAME } from "../health.js";
import { procedureOf, protocolOf } from "./call-info.js";
import { observeCall } from "./observe-call.js";

export interface RpcLogOptions {
  logger: Logger;
  metrics: GatewayMetrics;
}

/**
 * Writes one info line per finished RPC (procedure, protocol, code,
 * duration, tenant, invocation id, trace id; health checks at debug), times it into
 * `agent_gateway_rpc_duration_seconds` and counts open progress streams.
 * It sits outside authentication and rate limiting, so that their
 * refusals are logged and counted too. Never logs headers or messages:
 * they carry keys and user data.
 */
export function createRpcLogInterceptor(options: RpcLogOptions): Interceptor {
  const { logger, metrics } = options;
  return (next) =>
    async function logRpc(req) {
      const started = performance.now();
      const procedure = procedureOf(req);
      const protocol = protocolOf(req.header);
      // The id a request names (Get, Watch, Cancel, ProvideInput); a start
      // names its new one in the response header instead.
      let named: string | undefined;
      if (req.stream) {
        req = { ...req, message: tap(req.message, (m) => (named ??= invocationIdIn(m))) };
      } else {
        named = invocationIdIn(req.message);
      }
      const streaming = req.stream;
      if (streaming) metrics.streamsOpen.inc({ procedure });

      return observeCall(next, req, (error, header) => {
        if (streaming) metrics.streamsOpen.dec({ procedure });
        const code = error ? codeToString(error.code) : "ok";
        const seconds = (performance.now() - started) / 1000;
        metrics.rpcDuration.observe({ procedure, protocol, code }, seconds);
        const traceContext = req.contextValues.get(traceContextKey);
        const spanContext = traceContext && trace.getSpanContext(traceContext);
        // Probes call health every few seconds: their lines would bury the rest.
        const level = req.service.typeName === HEALTH_SERVICE_NAME ? "debug" : "info";
        logger[level](
          {
            procedure,
            protocol,
            code,
            durationMs: Math.round(seconds * 1e6) / 1e3,
            tenant: CALLER_UNKNOWN.has(error?.code) ? undefined : req.contextValues.get(tenantKey),
            invocationId: named || header?.get(INVOCATION_ID_HEADER) || undefined,
            traceId: spanContext?.traceId,
            error: error?.rawMessage,
          },
          "rpc finished",
        );
      });
    };
}

/**
 * Authentication sets the tenant only once it has let the caller in; after
 * these refusals the context holds the default, which would mislead.
 */
const CALLER_UNKNOWN: ReadonlySet<Code | undefined> = new Set([
  Code.Unauthenticated,
  Code.PermissionDenied,
]);

function invocationIdIn(message: unknown): string | undefined {
  const id = (message as { invocationId?: unknown }).invocationId;
  return typeof id === "string" && id !== "" ? id : undefined;
}

async function* tap<T>(messages: AsyncIterable<T>, seen: (message: T) => void): AsyncGenerator<T> {
  for await (const message of messages) {
    seen(message);
    yield message;
  }
}
