import { pino, type DestinationStream, type Logger } from "pino";
import PinoPretty from "pino-pretty";

export type { Logger };

/**
 * Levels, as this service uses them:
 * - error: a request or invocation failed because of a fault of ours;
 * - warn: something is off but the service copes (a retry, a bad config
 *   value that was ignored, a client that sent garbage);
 * - info: lifecycle (bound, draining, stopped), one line per finished RPC
 *   and one per invocation outcome;
 * - debug: health checks, and why a call was refused for want of a key
 *   or by the rate limit (its RPC line is at info).
 */
export type LogLevel = "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";

export interface LoggerOptions {
  /**
   * Human-readable lines instead of JSON.
   * @default true when stdout is a terminal
   */
  pretty?: boolean;
  /** Where lines go. @default stdout */
  destination?: DestinationStream;
}

/**
 * Header names whose values are credentials. Nothing here logs request
 * headers; this is the backstop should a line ever carry them, under any
 * of the shapes a header bag takes in a log object.
 */
const SECRET_HEADERS = ["authorization", "x-api-key", "cookie"];
const REDACTED_PATHS = SECRET_HEADERS.flatMap((name) => {
  const key = `["${name}"]`;
  return [key, `headers${key}`, `*.headers${key}`, `header${key}`, `*.header${key}`];
});

/**
 * Creates the root logger: JSON lines on stdout, or colourful lines when a
 * person is watching the terminal.
 */
export function createLogger(level: LogLevel = "info", options: LoggerOptions = {}): Logger {
  const pretty = options.pretty ?? process.stdout.isTTY === true;
  const destination = pretty
    ? // In-thread rather than pino's worker transport: a terminal is slow
      // anyway, and the last lines before an exit are never lost.
      PinoPretty({
        colorize: options.destination === undefined,
        translateTime: "SYS:HH:MM:ss.l",
        // The same on every line; JSON keeps it for log shippers.
        ignore: "service",
        destination: options.destination ?? 1,
        sync: true,
      })
    : options.destination;
  const settings = {
    level,
    base: { service: "agent-gateway" },
    redact: { paths: REDACTED_PATHS, censor: "[redacted]" },
  };
  return destination ? pino(settings, destination) : pino(settings);
}

/** A logger that writes nothing, for tests and embedding. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
