import { readFileSync, readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { ROOT } from "./lib/proc.js";

/**
 * Summarizes V8 CPU profiles (`bench/run.ts --cpu-prof DIR` writes one per
 * gateway process): the functions with the most self time, and self time
 * by where the code lives (our src/, a package, Node itself).
 *
 *   node --import tsx bench/profile.ts DIR_OR_FILE [--top 25]
 */

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}

interface Profile {
  nodes: Node[];
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

function files(path: string): string[] {
  if (statSync(path).isDirectory()) {
    return readdirSync(path)
      .filter((f) => f.endsWith(".cpuprofile"))
      .map((f) => join(path, f));
  }
  return [path];
}

/** Where a function lives: src/x.ts, a package name, node:internal, (gc) ... */
function place(url: string, name: string): string {
  if (!url) return name.startsWith("(") ? name : "(native)";
  if (url.startsWith("node:")) return "node:*";
  const path = url.replace(/^file:\/\//, "");
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(path);
  if (pkg) return pkg[1]!;
  return relative(ROOT, path);
}

const args = process.argv.slice(2);
const target = args[0];
const flag = (name: string, fallback: number) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const top = flag("--top", 25);
/** Seconds at the start (loading code, start-up) left out. */
const skip = flag("--skip", 0);
if (!target) {
  process.stderr.write(
    "usage: node --import tsx bench/profile.ts DIR_OR_FILE [--top N] [--skip SECONDS]\n",
  );
  process.exit(2);
}

for (const file of files(target)) {
  const profile = JSON.parse(readFileSync(file, "utf8")) as Profile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const self = new Map<number, number>();
  let total = 0;
  let clock = 0;
  profile.samples.forEach((id, i) => {
    const dt = profile.timeDeltas[i] ?? 0;
    clock += dt;
    if (clock < skip * 1e6) return;
    self.set(id, (self.get(id) ?? 0) + dt);
    total += dt;
  });
  // Inclusive time by file of ours: samples with a frame of the file on
  // their stack, each sample counted once per file.
  const inclusive = new Map<string, number>();
  for (const [id, us] of self) {
    const seen = new Set<string>();
    for (let n: number | undefined = id; n !== undefined; n = parent.get(n)) {
      const url = byId.get(n)?.callFrame.url ?? "";
      if (url.includes("/src/") && !url.includes("node_modules")) seen.add(place(url, ""));
    }
    for (const f of seen) inclusive.set(f, (inclusive.get(f) ?? 0) + us);
  }
  const byFunction = new Map<string, number>();
  const byPlace = new Map<string, number>();
  for (const [id, us] of self) {
    const node = byId.get(id);
    if (!node) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    const where = place(url, functionName);
    const fn = `${functionName || "(anonymous)"} ${where}${url ? `:${lineNumber + 1}` : ""}`;
    byFunction.set(fn, (byFunction.get(fn) ?? 0) + us);
    byPlace.set(where, (byPlace.get(where) ?? 0) + us);
  }
  const idle = [...self].reduce((sum, [id, us]) => {
    const name = byId.get(id)?.callFrame.functionName;
    return name === "(idle)" ? sum + us : sum;
  }, 0);
  const busy = total - idle;
  const pct = (us: number) => `${((100 * us) / busy).toFixed(1).padStart(5)}%`;
  const list = (m: Map<string, number>) =>
    [...m]
      .filter(([k]) => !k.startsWith("(idle)"))
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([k, us]) => `  ${pct(us)}  ${k}`)
      .join("\n");
  process.stdout.write(
    `${relative(process.cwd(), file)}: ${(total / 1e6).toFixed(1)} s sampled, ${(busy / 1e6).toFixed(1)} s busy (percentages of busy)\n` +
      `by place (self time):\n${list(byPlace)}\n` +
      `our files (inclusive: time with the file on the stack):\n${list(inclusive)}\n` +
      `by function (self time):\n${list(byFunction)}\n\n`,
  );
}
