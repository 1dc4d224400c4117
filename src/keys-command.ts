import { parseArgs } from "node:util";
import { stringify } from "yaml";
import { SCOPES, apiKeySchema, type ApiKeyEntry } from "./config.js";
import { generateApiKey, hashApiKey } from "./server/api-keys.js";

const USAGE = `Usage: agent-gateway keys create --tenant T --scopes a,b [options]

Prints a new API key on the first line and, after it, its entry for the
configuration file: a YAML list item for the top-level apiKeys: list.
The key is shown only this once; the configuration keeps only its hash.

Options:
  --tenant <name>           the tenant every call with this key acts for (required)
  --scopes <a,b>            comma-separated, of: ${SCOPES.join(", ")} (required)
  --rate-per-second <n>     the key's own request rate (default: ratePerSecond)
  --burst <n>               the key's own burst (default: rateBurst)
  --name <text>             a name for logs, never the key itself
  --help                    print this and exit`;

/** What a command writes to; process.stdout and process.stderr in main. */
export interface CommandOutput {
  write(text: string): unknown;
}

/**
 * `agent-gateway keys <subcommand>`: makes API keys. Returns the exit code:
 * 0 on success, 2 on a usage error (with the reason on `err`).
 */
export function runKeysCommand(
  argv: readonly string[],
  out: CommandOutput,
  err: CommandOutput,
): number {
  const [subcommand, ...rest] = argv;
  if (subcommand === undefined || subcommand === "--help" || subcommand === "-h") {
    (subcommand === undefined ? err : out).write(`${USAGE}\n`);
    return subcommand === undefined ? 2 : 0;
  }
  if (subcommand !== "create") {
    err.write(`agent-gateway keys: unknown command ${subcommand}\n\n${USAGE}\n`);
    return 2;
  }
  let entry: ApiKeyEntry | undefined;
  let help = false;
  try {
    ({ entry, help } = parseCreate(rest));
  } catch (error) {
    err.write(`agent-gateway keys create: ${(error as Error).message}\n(see --help)\n`);
    return 2;
  }
  if (help || entry === undefined) {
    out.write(`${USAGE}\n`);
    return 0;
  }
  const key = generateApiKey();
  // The key alone on the first line, so that scripts can take it with
  // `head -n 1` and the entry with `tail -n +2`.
  out.write(`${key}\n`);
  out.write(stringify([{ ...entry, hash: hashApiKey(key) }].map(ordered)));
  err.write(
    "Keep the key now: it is not shown again. Put the entry under apiKeys: in the --config file.\n",
  );
  return 0;
}

function parseCreate(argv: readonly string[]): {
  entry?: ApiKeyEntry;
  help: boolean;
} {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      tenant: { type: "string" },
      scopes: { type: "string" },
      "rate-per-second": { type: "string" },
      burst: { type: "string" },
      name: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return { help: true };
  if (!values.tenant) throw new Error("--tenant is required");
  if (!values.scopes) throw new Error("--scopes is required");
  const candidate = {
    // A placeholder that fits the schema; the real hash is set once the
    // entry is known to be valid, so no key is made for a bad command.
    hash: `sha256:${"0".repeat(64)}`,
    tenant: values.tenant,
    scopes: [...new Set(values.scopes.split(",").map((s) => s.trim()).filter(Boolean))],
    name: values.name,
    ratePerSecond: numberFlag("--rate-per-second", values["rate-per-second"]),
    burst: numberFlag("--burst", values.burst),
  };
  // The same schema loadConfig applies, so what is printed is accepted.
  const result = apiKeySchema.safeParse(candidate);
  if (!result.success) {
    const issue = result.error.issues[0];
    const flag = issue?.path[0] === "ratePerSecond" ? "rate-per-second" : issue?.path[0];
    const expected =
      issue?.path[0] === "scopes" ? `one or more of ${SCOPES.join(", ")}` : issue?.message;
    throw new Error(`--${String(flag)}: ${expected ?? "invalid value"}`);
  }
  return { entry: result.data, help: false };
}

function numberFlag(flag: string, raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined;
  const value = Number(raw);
  if (raw.trim() === "" || !Number.isFinite(value)) {
    throw new Error(`${flag}: expected a number, got ${JSON.stringify(raw)}`);
  }
  return value;
}

/** The entry with its fields in a fixed order and no empty ones. */
function ordered(entry: ApiKeyEntry): ApiKeyEntry {
  const { hash, tenant, scopes, name, ratePerSecond, burst } = entry;
  return Object.fromEntries(
    Object.entries({ hash, tenant, scopes, name, ratePerSecond, burst }).filter(
      ([, v]) => v !== undefined,
    ),
  ) as ApiKeyEntry;
}
