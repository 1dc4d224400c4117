import { parseArgs } from "node:util";
import { z } from "zod";

/**
 * One typed configuration. Each option comes from, in rising priority: its
 * default, an environment variable, a command-line flag.
 */
const OPTIONS = {
  host: {
    env: "HOST",
    schema: z.string().min(1),
    default: "127.0.0.1",
    doc: "the address to listen on",
  },
  port: {
    env: "PORT",
    schema: z.coerce.number().int().min(0).max(65535),
    default: 8080,
    doc: "the TCP port for every protocol; 0 picks a free one",
  },
  dataDir: {
    env: "DATA_DIR",
    schema: z.string().min(1),
    default: "./data",
    doc: "where the SQLite database lives",
  },
  sqliteSynchronous: {
    env: "SQLITE_SYNCHRONOUS",
    schema: z.enum(["full", "normal", "off"]),
    default: "full",
    doc: "full: fsync every commit; normal: survives a process crash, not a power loss; off: for tests only",
  },
  tlsCert: {
    env: "TLS_CERT",
    schema: z.string(),
    default: "",
    doc: "PEM certificate file; with tls-key, serves TLS (ALPN h2 and http/1.1)",
  },
  tlsKey: {
    env: "TLS_KEY",
    schema: z.string(),
    default: "",
    doc: "PEM private key file for tls-cert",
  },
  agents: {
    env: "AGENT_MODULES",
    schema: z.string(),
    default: "",
    doc: "comma-separated modules whose exported agents are hosted besides the built-in ones",
  },
  heartbeatMs: {
    env: "HEARTBEAT_MS",
    schema: z.coerce.number().int().min(100),
    default: 15_000,
    doc: "a progress stream quiet this long gets a heartbeat",
  },
  maxMessageBytes: {
    env: "MAX_MESSAGE_BYTES",
    schema: z.coerce.number().int().min(1024),
    default: 4 * 1024 * 1024,
    doc: "the largest request message; larger is RESOURCE_EXHAUSTED",
  },
  maxConcurrentStreams: {
    env: "MAX_CONCURRENT_STREAMS",
    schema: z.coerce.number().int().min(1),
    default: 256,
    doc: "HTTP/2 streams one connection may have open at once",
  },
  maxTimeoutMs: {
    env: "MAX_TIMEOUT_MS",
    schema: z.coerce.number().int().min(0),
    default: 24 * 60 * 60 * 1000,
    doc: "the longest RPC deadline a client may ask for; 0 for no cap",
  },
  logLevel: {
    env: "LOG_LEVEL",
    schema: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]),
    default: "info",
    doc: "the least severe level that is logged",
  },
} as const;

type Options = typeof OPTIONS;

export type Config = {
  [K in keyof Options]: z.output<Options[K]["schema"]>;
};

/** The flag of an option: `maxMessageBytes` is `--max-message-bytes`. */
function flagOf(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

/**
 * Reads the configuration from flags and environment. Throws ConfigError
 * naming the option and what it expected when a value does not fit.
 */
export function loadConfig(
  argv: string[] = process.argv.slice(2),
  env: NodeJS.ProcessEnv = process.env,
): Config & { help: boolean } {
  const { values } = parseArgs({
    args: argv,
    options: {
      help: { type: "boolean", short: "h" },
      ...Object.fromEntries(
        Object.keys(OPTIONS).map((key) => [flagOf(key), { type: "string" as const }]),
      ),
    },
    strict: true,
  });
  const flags = values as Record<string, string | boolean | undefined>;
  const config: Record<string, unknown> = { help: flags.help === true };
  for (const [key, option] of Object.entries(OPTIONS)) {
    const flag = flagOf(key);
    const fromFlag = flags[flag];
    const raw = typeof fromFlag === "string" ? fromFlag : env[option.env];
    const source = fromFlag !== undefined ? `--${flag}` : option.env;
    if (raw === undefined || raw === "") {
      config[key] = option.default;
      continue;
    }
    const parsed = option.schema.safeParse(raw);
    if (!parsed.success) {
      const why = parsed.error.issues[0]?.message ?? "invalid value";
      throw new ConfigError(`${source}=${JSON.stringify(raw)}: ${why}`);
    }
    config[key] = parsed.data;
  }
  return config as Config & { help: boolean };
}

/** Every option with its flag, variable and default, for `--help`. */
export function describeOptions(): string {
  const lines = ["Usage: agent-gateway [options]", "", "Options:"];
  for (const [key, option] of Object.entries(OPTIONS)) {
    lines.push(
      `  --${flagOf(key)} (${option.env}, default ${JSON.stringify(option.default)})`,
      `      ${option.doc}`,
    );
  }
  lines.push("  --help", "      print this and exit");
  return lines.join("\n");
}

/** The defaults, for tests and embedding. */
export function defaultConfig(): Config {
  return loadConfig([], {});
}
