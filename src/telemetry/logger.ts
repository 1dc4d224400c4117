import { pino, type Logger } from "pino";

export type { Logger };

/**
 * Levels, as this service uses them:
 * - error: a request or invocation failed because of a fault of ours;
 * - warn: something is off but the service copes (a retry, a bad config
 *   value that was ignored, a client that sent garbage);
 * - info: lifecycle (bound, draining, stopped) and one line per invocation
 *   outcome;
 * - debug: every node attempt, every stream opened and closed.
 */
export type LogLevel = "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";

/** Creates the root logger: JSON lines on stdout. */
export function createLogger(level: LogLevel = "info"): Logger {
  return pino({ level, base: { service: "agent-gateway" } });
}

/** A logger that writes nothing, for tests and embedding. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
