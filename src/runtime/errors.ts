/**
 * The reasons the runtime refuses a request. They are named like the Connect
 * codes (in snake case) so the service maps them one to one, but the runtime
 * itself knows nothing of any protocol.
 */
export type RuntimeErrorCode =
  | "not_found"
  | "invalid_argument"
  | "failed_precondition"
  | "unavailable"
  | "resource_exhausted"
  | "deadline_exceeded"
  | "cancelled"
  | "internal";

/** A refusal with a code a client can act on and a message it can read. */
export class RuntimeError extends Error {
  override readonly name = "RuntimeError";
  /** For a refusal that passes (resource_exhausted): when to try again. */
  readonly retryAfterMs: number | undefined;

  constructor(
    readonly code: RuntimeErrorCode,
    message: string,
    options: { retryAfterMs?: number } = {},
  ) {
    super(message);
    this.retryAfterMs = options.retryAfterMs;
  }
}

/** The message of anything thrown, for logs and events. */
export function messageOf(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
