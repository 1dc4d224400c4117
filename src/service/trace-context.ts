import { createContextKey, type HandlerContext } from "@connectrpc/connect";
import type { Context } from "@opentelemetry/api";

/**
 * The OpenTelemetry context of a request, holding its RPC span. The
 * server's tracing interceptor sets it; the service hands it to the
 * runtime, so that an invocation's span is a child of the RPC that
 * started it.
 */
export const traceContextKey = createContextKey<Context | undefined>(undefined, {
  description: "the OpenTelemetry context of the request",
});

export function traceContextOf(ctx: HandlerContext): Context | undefined {
  return ctx.values.get(traceContextKey);
}
