import { accessSync, constants, readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { parse as parseYaml } from "yaml";
import { z } from "zod";

/**
 * One typed configuration. Each option comes from, in rising priority: its
 * default, the configuration file (`--config path`, YAML or JSON, keys as
 * named here), an environment variable, a command-line flag.
 */

const number = (min: number) => z.coerce.number().int().min(min);

/**
 * "true"/"false"/"1"/"0" from the environment or `--flag=value`, or a
 * boolean from a file or a bare `--flag`.
 */
const boolean = z.union(
  [
    z.boolean(),
    z.enum(["true", "false", "1", "0"]).transform((v) => v === "true" || v === "1"),
  ],
  { error: "expected true, false, 1 or 0" },
);

/** A comma-separated list from the environment, or a list from a file. */
const list = z.union([
  z.array(z.string()),
  z.string().transform((v) => v.split(",").map((s) => s.trim()).filter(Boolean)),
]);

export const SCOPES = ["invoke", "read", "cancel", "input", "admin"] as const;
export type Scope = (typeof SCOPES)[number];

/** One entry of `apiKeys`, as `agent-gateway keys create` prints it. */
export const apiKeySchema = z.strictObject({
  /** `sha256:<hex>` of the key; the key itself is never stored. */
  hash: z.string().regex(/^sha256:[0-9a-f]{64}$/, "expected sha256:<64 hex digits>"),
  tenant: z.string().min(1),
  scopes: z.array(z.enum(SCOPES)).min(1),
  /** A name for logs; never the key. */
  name: z.string().optional(),
  ratePerSecond: z.number().positive().optional(),
  burst: z.number().int().positive().optional(),
});
export type ApiKeyEntry = z.output<typeof apiKeySchema>;

/** How one option is read, checked and shown. */
export interface OptionDefinition {
  /** The environment variable; none for options only a file can hold. */
  env?: string;
  /** False for options only a file can hold. @default true */
  flag?: boolean;
  schema: z.ZodType;
  default: unknown;
  doc: string;
}

/**
 * Every option: its variable, whether it has a flag, its schema, default
 * and the line `--help` shows. Keys are the names in the file and in Config.
 */
export const OPTIONS = {
  host: {
    env: "HOST",
    schema: z.string().min(1),
    default: "127.0.0.1",
    doc: "the address to listen on",
  },
  port: {
    env: "PORT",
    schema: number(0).max(65535),
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
    schema: list,
    default: [],
    doc: "modules (comma-separated) whose exported agents are hosted besides the built-in ones",
  },
  heartbeatMs: {
    env: "HEARTBEAT_MS",
    schema: number(100),
    default: 15_000,
    doc: "a progress stream quiet this long gets a heartbeat",
  },
  maxMessageBytes: {
    env: "MAX_MESSAGE_BYTES",
    schema: number(1024),
    default: 4 * 1024 * 1024,
    doc: "the largest request message; larger is RESOURCE_EXHAUSTED",
  },
  maxConcurrentStreams: {
    env: "MAX_CONCURRENT_STREAMS",
    schema: number(1),
    default: 256,
    doc: "HTTP/2 streams one connection may have open at once",
  },
  maxTimeoutMs: {
    env: "MAX_TIMEOUT_MS",
    schema: number(0),
    default: 24 * 60 * 60 * 1000,
    doc: "the longest RPC deadline a client may ask for; 0 for no cap",
  },
  shutdownGraceMs: {
    env: "SHUTDOWN_GRACE_MS",
    schema: number(0),
    default: 30_000,
    doc: "on SIGTERM, how long running invocations may finish before they are stopped to resume at the next start",
  },
  apiKeys: {
    flag: false,
    schema: z.array(apiKeySchema),
    default: [],
    doc: "API keys (file only): list of {hash, tenant, scopes, name?, ratePerSecond?, burst?}; make one with `agent-gateway keys create`",
  },
  allowUnauthenticated: {
    env: "ALLOW_UNAUTHENTICATED",
    schema: boolean,
    default: false,
    doc: "with no API keys, serve every caller as tenant `default` even on a non-loopback address",
  },
  ratePerSecond: {
    env: "RATE_PER_SECOND",
    schema: z.coerce.number().positive(),
    default: 50,
    doc: "requests a second each key may make on average, unless its entry says otherwise",
  },
  rateBurst: {
    env: "RATE_BURST",
    schema: number(1),
    default: 100,
    doc: "requests each key may make at once, unless its entry says otherwise",
  },
  maxRunningInvocations: {
    env: "MAX_RUNNING_INVOCATIONS",
    schema: number(1),
    default: 1000,
    doc: "invocations running at once in this process (waiting for input counts); past it starts are RESOURCE_EXHAUSTED",
  },
  maxRunningPerTenant: {
    env: "MAX_RUNNING_PER_TENANT",
    schema: number(1),
    default: 100,
    doc: "invocations one tenant may have running at once (waiting for input counts)",
  },
  corsOrigins: {
    env: "CORS_ORIGINS",
    schema: list,
    default: [],
    doc: "origins (comma-separated) browsers may call from; `*` allows any",
  },
  otlpEndpoint: {
    env: "OTEL_EXPORTER_OTLP_ENDPOINT",
    schema: z.string(),
    default: "",
    doc: "OTLP base URL traces are exported to (the standard OTEL_EXPORTER_OTLP_* variables apply, _PROTOCOL included); empty: no export",
  },
  logLevel: {
    env: "LOG_LEVEL",
    schema: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]),
    default: "info",
    doc: "the least severe level that is logged",
  },
} satisfies Record<string, OptionDefinition>;

type Options = typeof OPTIONS;

export type Config = {
  -readonly [K in keyof Options]: z.output<Options[K]["schema"]>;
};

/** The flag of an option: `maxMessageBytes` is `--max-message-bytes`. */
function flagOf(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

function hasFlag(option: OptionDefinition): boolean {
  return option.flag !== false;
}

/** A boolean option's flag needs no value: `--allow-unauthenticated`. */
function isSwitch(option: OptionDefinition): boolean {
  return option.schema === boolean;
}

const OPTION_ENTRIES = Object.entries(OPTIONS as Record<string, OptionDefinition>);
const SWITCHES = new Set(
  OPTION_ENTRIES.filter(([, o]) => hasFlag(o) && isSwitch(o)).map(([key]) => flagOf(key)),
);

/** True when the command line asks for help, before any `--`. */
function asksForHelp(argv: readonly string[]): boolean {
  const end = argv.indexOf("--");
  return (end === -1 ? argv : argv.slice(0, end)).some((a) => a === "--help" || a === "-h");
}

/**
 * Takes `--switch=value` out of `argv`: parseArgs refuses a value on a
 * boolean flag, so these are read here and checked by the schema.
 */
function takeSwitchValues(argv: readonly string[]): {
  args: string[];
  values: Map<string, string>;
} {
  const args: string[] = [];
  const values = new Map<string, string>();
  for (const [i, arg] of argv.entries()) {
    if (arg === "--") {
      args.push(...argv.slice(i));
      break;
    }
    const match = /^--([a-z-]+)=(.*)$/s.exec(arg);
    if (match && SWITCHES.has(match[1]!)) values.set(match[1]!, match[2]!);
    else args.push(arg);
  }
  return { args, values };
}

export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

export interface LoadedConfig {
  config: Config;
  /**
   * `--help` or `-h` was given. Then nothing else is read or checked and
   * `config` is the defaults, so that help prints whatever else is wrong.
   */
  help: boolean;
  /** The file the configuration was read from, if any. */
  file?: string;
}

/**
 * Reads the configuration. Throws ConfigError naming the option, where its
 * value came from and what was expected, when a value does not fit.
 */
export function loadConfig(
  argv: string[] = process.argv.slice(2),
  env: NodeJS.ProcessEnv = process.env,
): LoadedConfig {
  if (asksForHelp(argv)) return { config: defaultConfig(), help: true };
  const { args, values: switchValues } = takeSwitchValues(argv);
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        config: { type: "string" },
        ...Object.fromEntries(
          OPTION_ENTRIES.filter(([, option]) => hasFlag(option)).map(([key, option]) => [
            flagOf(key),
            { type: isSwitch(option) ? ("boolean" as const) : ("string" as const) },
          ]),
        ),
      },
      strict: true,
    });
  } catch (error) {
    throw new ConfigError(error instanceof Error ? error.message : String(error));
  }
  const flags = parsed.values as Record<string, string | boolean | undefined>;
  const file = (flags.config as string | undefined) ?? (env.CONFIG_FILE || undefined);
  const fromFile = file ? readConfigFile(file) : {};

  const config: Record<string, unknown> = {};
  for (const [key, option] of OPTION_ENTRIES) {
    const name = flagOf(key);
    // A bare switch is true; `--switch=value` is read like the variable.
    const flag = hasFlag(option) ? (switchValues.get(name) ?? flags[name]) : undefined;
    const fromEnv = option.env ? env[option.env] : undefined;
    let raw: unknown;
    let source: string;
    if (flag !== undefined) {
      [raw, source] = [flag, `--${name}`];
    } else if (fromEnv !== undefined && fromEnv !== "") {
      [raw, source] = [fromEnv, option.env!];
    } else if (key in fromFile) {
      [raw, source] = [fromFile[key], `${file}: ${key}`];
    } else {
      config[key] = option.default;
      continue;
    }
    const result = option.schema.safeParse(raw);
    if (!result.success) {
      const issue = result.error.issues[0];
      const where = issue && issue.path.length > 0 ? `.${issue.path.join(".")}` : "";
      throw new ConfigError(`${source}${where}: ${issue?.message ?? "invalid value"}`);
    }
    config[key] = result.data;
  }
  checkTls(config as Config);
  return { config: config as Config, help: false, file };
}

/**
 * A certificate without its key (or the other way round) would quietly
 * serve plaintext, and an unreadable file would fail later with a stack
 * trace: both stop the start here, naming the option.
 */
function checkTls(config: Config): void {
  const { tlsCert, tlsKey } = config;
  if (Boolean(tlsCert) !== Boolean(tlsKey)) {
    const missing = tlsCert ? "tls-key" : "tls-cert";
    const given = tlsCert ? "tls-cert" : "tls-key";
    throw new ConfigError(`${missing}: required with ${given} (TLS needs both)`);
  }
  for (const [name, path] of [
    ["tls-cert", tlsCert],
    ["tls-key", tlsKey],
  ] as const) {
    if (!path) continue;
    try {
      accessSync(path, constants.R_OK);
    } catch (error) {
      throw new ConfigError(`${name}: cannot read ${path}: ${(error as Error).message}`);
    }
  }
}

function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    throw new ConfigError(`--config ${path}: ${(error as Error).message}`);
  }
  let content: unknown;
  try {
    // YAML is a superset of JSON, so one parser reads both.
    content = parseYaml(text);
  } catch (error) {
    throw new ConfigError(`${path}: not valid YAML or JSON: ${(error as Error).message}`);
  }
  if (content === null || content === undefined) return {};
  if (typeof content !== "object" || Array.isArray(content)) {
    throw new ConfigError(`${path}: expected a mapping of options`);
  }
  for (const key of Object.keys(content)) {
    if (!(key in OPTIONS)) {
      throw new ConfigError(`${path}: ${key} is not an option (see --help)`);
    }
  }
  return content as Record<string, unknown>;
}

/** Every option with its flag, variable and default, for `--help`. */
export function describeOptions(): string {
  const lines = [
    "Usage: agent-gateway [options]",
    "       agent-gateway keys create --tenant T --scopes a,b [--rate-per-second N --burst M]",
    "",
    "Each option comes from its default < the --config file (YAML or JSON,",
    "keys as below in camelCase) < its environment variable < its flag.",
    "",
    "Options:",
    "  --config <path> (CONFIG_FILE)",
    "      a YAML or JSON file of options",
  ];
  for (const [key, option] of OPTION_ENTRIES) {
    const flag = `--${flagOf(key)}${isSwitch(option) ? "[=true|false]" : ""}`;
    const names = [
      hasFlag(option) ? flag : `${key} (file only)`,
      option.env ? `(${option.env})` : "",
    ].filter(Boolean);
    lines.push(
      `  ${names.join(" ")} default ${JSON.stringify(option.default)}`,
      `      ${option.doc}`,
    );
  }
  lines.push("  --help, -h", "      print this and exit, whatever else is given");
  return lines.join("\n");
}

/** The defaults, for tests and embedding. */
export function defaultConfig(): Config {
  return Object.fromEntries(
    OPTION_ENTRIES.map(([key, option]) => [key, structuredClone(option.default)]),
  ) as Config;
}
