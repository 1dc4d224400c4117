import { Code, type Interceptor } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import {
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type TextMapGetter,
  type Tracer,
} from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { INVOCATION_ID_HEADER } from "../../service/agent-service.js";
import { traceContextKey } from "../../service/trace-context.js";
import {
  ERROR_TYPE,
  INVOCATION_ID,
  RPC_CONNECT_RPC_ERROR_CODE,
  RPC_GRPC_STATUS_CODE,
  RPC_METHOD,
  RPC_SERVICE,
  RPC_SYSTEM,
} from "../../telemetry/attributes.js";
import { procedureOf, protocolOf } from "./call-info.js";
import { observeCall } from "./observe-call.js";

const propagator = new W3CTraceContextPropagator();

/** gRPC metadata arrives as HTTP/2 headers, so one getter reads both. */
const headers: TextMapGetter<Headers> = {
  get: (carrier, key) => carrier.get(key) ?? undefined,
  keys: (carrier) => [...carrier.keys()],
};

/**
 * Codes that are the server's fault: a SERVER span ends in error for
 * these only, as the RPC semantic conventions say; NOT_FOUND and the like
 * are the client's business.
 */
const SERVER_FAULTS: ReadonlySet<Code> = new Set([
  Code.Unknown,
  Code.DeadlineExceeded,
  Code.Unimplemented,
  Code.Internal,
  Code.Unavailable,
  Code.DataLoss,
]);

/**
 * Makes a SERVER span per RPC (OTel RPC semantic conventions), continuing
 * the W3C `traceparent` of the request, and puts its context where the
 * service and the inner interceptors find it (traceContextKey). It must be
 * the outermost interceptor, so that the span covers refusals too.
 */
export function createTracingInterceptor(tracer: Tracer): Interceptor {
  return (next) =>
    async function traceRpc(req) {
      const parent = propagator.extract(ROOT_CONTEXT, req.header, headers);
      const system = protocolOf(req.header) === "connect" ? "connect_rpc" : "grpc";
      const span = tracer.startSpan(
        procedureOf(req),
        {
          kind: SpanKind.SERVER,
          attributes: {
            [RPC_SYSTEM]: system,
            [RPC_SERVICE]: req.service.typeName,
            [RPC_METHOD]: req.method.name,
          },
        },
        parent,
      );
      req.contextValues.set(traceContextKey, trace.setSpan(parent, span));
      return observeCall(next, req, (error, header) => {
        // A start names its invocation, so the RPC can be found by it.
        const started = header?.get(INVOCATION_ID_HEADER);
        if (started) span.setAttribute(INVOCATION_ID, started);
        if (system === "grpc") {
          span.setAttribute(RPC_GRPC_STATUS_CODE, error?.code ?? 0);
        } else if (error) {
          span.setAttribute(RPC_CONNECT_RPC_ERROR_CODE, codeToString(error.code));
        }
        if (error) {
          span.setAttribute(ERROR_TYPE, codeToString(error.code));
          if (SERVER_FAULTS.has(error.code)) {
            span.setStatus({ code: SpanStatusCode.ERROR, message: error.rawMessage });
          }
        }
        span.end();
      });
    };
}
