import { Code, ConnectError } from "@connectrpc/connect";
import { RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";

/**
 * The HTTP field that tells a refused client when to try again, in whole
 * seconds (RFC 9110, section 10.2.3).
 */
export const RETRY_AFTER_HEADER = "retry-after";

export interface RetryLaterOptions {
  /** @default Code.ResourceExhausted (HTTP 429 for Connect) */
  code?: Code;
  /** More fields sent with the error (as headers for Connect unary). */
  metadata?: ConstructorParameters<typeof Headers>[0];
}

/**
 * A refusal that says when to try again, twice: as a `google.rpc.RetryInfo`
 * detail (exact, for gRPC and Connect clients) and as a `Retry-After` field
 * (whole seconds, rounded up, for HTTP tooling; Connect unary sends it as
 * an HTTP header with the 429, gRPC as metadata).
 */
export function retryLater(
  message: string,
  retryAfterMs: number,
  options: RetryLaterOptions = {},
): ConnectError {
  const ms = Math.max(1, Math.ceil(retryAfterMs));
  const header = new Headers(options.metadata);
  header.set(RETRY_AFTER_HEADER, String(Math.ceil(ms / 1000)));
  const code = options.code ?? Code.ResourceExhausted;
  return new ConnectError(message, code, header, [
    {
      desc: RetryInfoSchema,
      value: {
        retryDelay: {
          seconds: BigInt(Math.floor(ms / 1000)),
          nanos: (ms % 1000) * 1_000_000,
        },
      },
    },
  ]);
}
