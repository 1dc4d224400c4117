import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { findTools } from "./lib/load.js";
import { Child, ROOT } from "./lib/proc.js";
import { goalSummary, toJson, toTable, type Comparison } from "./lib/report.js";
import { MODES, SCENARIOS, ServerPool, type Context, type Mode } from "./scenarios.js";

/**
 * `npm run bench` (full), `npm run bench:quick` (--quick, under two
 * minutes), `--smoke` (each scenario for about a second: checks that the
 * harness works, for CI). Prints the Markdown table, or with --json one JSON
 * array of {scenario, metric, value, baseline, ratio, better}. Progress goes
 * to stderr. Exits non-zero only when the harness itself fails (a server
 * that does not start, a client that errs), never for a missed goal or a
 * load tool that is not installed.
 */

const USAGE = `usage: node --import tsx bench/run.ts [--quick | --smoke] [--json] [--json-file F]
       [--only unary,streaming,fanout,durability,peer] [--cpu-prof DIR]`;

let args;
try {
  args = parseArgs({
    options: {
      quick: { type: "boolean" },
      smoke: { type: "boolean" },
      json: { type: "boolean" },
      "json-file": { type: "string" },
      only: { type: "string" },
      "cpu-prof": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  }).values;
} catch (error) {
  process.stderr.write(`${(error as Error).message}\n${USAGE}\n`);
  process.exit(2);
}
if (args.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}

const mode: Mode = MODES[args.smoke ? "smoke" : args.quick ? "quick" : "full"];
const only = args.only
  ?.split(",")
  .map((s) => s.trim())
  .filter(Boolean);
const unknown = only?.filter((name) => !SCENARIOS.some((s) => s.name === name)) ?? [];
if (unknown.length > 0) {
  process.stderr.write(`unknown scenario ${unknown.join(", ")}\n${USAGE}\n`);
  process.exit(2);
}

// Servers and load generators run in process groups of their own: end
// them with us, however we end.
process.on("exit", () => Child.killAll());
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    process.stderr.write(`\n${signal}: stopping\n`);
    process.exit(130);
  });
}

/** How this run was started, for the header. */
function command(): string {
  const flags = process.argv.slice(2).join(" ");
  const script = process.env.npm_lifecycle_event;
  return script ? `npm run ${script}${flags ? ` -- ${flags}` : ""}` : `node --import tsx bench/run.ts ${flags}`;
}

const started = Date.now();
const log = (message: string) => {
  const t = ((Date.now() - started) / 1000).toFixed(0).padStart(4);
  process.stderr.write(`[${t}s] ${message}\n`);
};

const tools = findTools();
for (const sentence of tools.missing)
  log(`missing: ${sentence}; its rows are reported unavailable`);
let cpuProfDir: string | undefined;
if (args["cpu-prof"]) {
  cpuProfDir = resolve(args["cpu-prof"]);
  mkdirSync(cpuProfDir, { recursive: true });
}
const pool = new ServerPool({ cpuProfDir });
const ctx: Context = { mode, pool, tools, cpuProfDir, log };

const comparisons: Comparison[] = [];
const failures: string[] = [];
const selected = SCENARIOS.filter((s) => !only || only.includes(s.name));
try {
  for (const [i, scenario] of selected.entries()) {
    log(`${scenario.name} (${mode.name})`);
    try {
      comparisons.push(...(await scenario.run(ctx)));
      await pool.keepOnly(selected.slice(i + 1).flatMap((s) => s.needs));
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      failures.push(`${scenario.name}: ${message}`);
      log(`FAILED ${scenario.name}: ${message}`);
      // The next scenario starts from fresh servers.
      await pool.stopAll();
    }
  }
} finally {
  await pool.stopAll();
}
const seconds = (Date.now() - started) / 1000;
log(`done in ${seconds.toFixed(0)} s`);

if (args["json-file"]) {
  writeFileSync(args["json-file"], `${JSON.stringify(toJson(comparisons), null, 2)}\n`);
}
if (args.json) {
  process.stdout.write(`${JSON.stringify(toJson(comparisons), null, 2)}\n`);
} else {
  const cpu = cpus()[0]?.model ?? "unknown CPU";
  const header = [
    `agent-gateway benchmark (${mode.name}), ${new Date().toISOString()}`,
    `${cpus().length} x ${cpu}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, ${ROOT}`,
    `command: ${command()}`,
    `${mode.rounds} A/B round(s), medians; ratios are ours ÷ baseline from this run`,
    "",
  ];
  process.stdout.write(
    `${header.join("\n")}\n${toTable(comparisons)}\n\nGoals:\n${goalSummary(comparisons)}\n`,
  );
  for (const c of comparisons) {
    if (c.note) process.stdout.write(`\nNote on ${c.scenario}: ${c.note}`);
  }
  process.stdout.write("\n");
}
if (failures.length > 0) {
  process.stderr.write(`\nthe harness failed:\n${failures.map((f) => `- ${f}`).join("\n")}\n`);
  process.exit(1);
}
// Load generators and servers are gone; nothing should keep us alive.
process.exit(0);
