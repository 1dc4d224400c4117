import type { StreamRequest, UnaryRequest } from "@connectrpc/connect";

/** The wire protocol of a call, as logs and metrics name it. */
export type RpcProtocol = "grpc" | "grpc_web" | "connect";

/**
 * Tells the protocol by the request's content type: gRPC and gRPC-web
 * announce themselves; everything else the handler accepted is Connect
 * (including GET requests, which carry none).
 */
export function protocolOf(header: Headers): RpcProtocol {
  const type = header.get("content-type")?.toLowerCase() ?? "";
  if (type.startsWith("application/grpc-web")) return "grpc_web";
  if (type.startsWith("application/grpc")) return "grpc";
  return "connect";
}

/** `agent.v1.AgentService/Invoke`: the span name and metric label. */
export function procedureOf(req: UnaryRequest | StreamRequest): string {
  return `${req.service.typeName}/${req.method.name}`;
}
