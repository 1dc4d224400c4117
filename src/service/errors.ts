import { Code, ConnectError } from "@connectrpc/connect";
import { RuntimeError, type RuntimeErrorCode } from "../runtime/errors.js";
import type { Logger } from "../telemetry/logger.js";
import { retryLater } from "./retry.js";

const CODES: Record<RuntimeErrorCode, Code> = {
  not_found: Code.NotFound,
  invalid_argument: Code.InvalidArgument,
  failed_precondition: Code.FailedPrecondition,
  unavailable: Code.Unavailable,
  resource_exhausted: Code.ResourceExhausted,
  deadline_exceeded: Code.DeadlineExceeded,
  cancelled: Code.Canceled,
  internal: Code.Internal,
};

/**
 * Turns anything a handler threw into the error the client gets: refusals
 * keep their code and message; anything unexpected becomes a plain
 * INTERNAL, with its cause logged and not sent.
 */
export function toConnectError(error: unknown, log: Logger): ConnectError {
  if (error instanceof ConnectError) return error;
  if (error instanceof RuntimeError) {
    if (error.retryAfterMs !== undefined) {
      return retryLater(error.message, error.retryAfterMs, {
        code: CODES[error.code],
      });
    }
    return new ConnectError(error.message, CODES[error.code]);
  }
  log.error({ err: error }, "unexpected error in a handler");
  return new ConnectError("internal error", Code.Internal, undefined, undefined, error);
}
