import { formatNumber, median } from "./stats.js";

/** What one server did in one scenario; any figure may be missing. */
export interface Figures {
  /** Calls, requests or messages per second, as `unit` says. */
  throughput?: number;
  p50?: number;
  p99?: number;
  mean?: number;
  /** Peak resident memory of the server process (group), bytes. */
  rss?: number;
  /** Resident memory per open stream, bytes. */
  perStream?: number;
}

export type Metric = keyof Figures;
export type Better = "higher" | "lower";

export const METRICS: Record<
  Metric,
  { name: (unit: string) => string; better: Better; scale: number }
> = {
  throughput: { name: (unit) => `throughput (${unit})`, better: "higher", scale: 1 },
  p50: { name: () => "p50 latency (ms)", better: "lower", scale: 1 },
  p99: { name: () => "p99 latency (ms)", better: "lower", scale: 1 },
  mean: { name: () => "mean latency (ms)", better: "lower", scale: 1 },
  rss: { name: () => "peak RSS (MB)", better: "lower", scale: 1 / 2 ** 20 },
  perStream: { name: () => "RSS per stream (KB)", better: "lower", scale: 1 / 1024 },
};

/** A goal on ours ÷ baseline, or on ours alone. */
export type Goal =
  | { kind: "ratio"; metric: Metric; min?: number; max?: number }
  | { kind: "absolute"; metric: Metric; max: number };

/** Ours against one baseline, measured in the same run. */
export interface Comparison {
  /** A stable id: `unary/grpc/16`. */
  scenario: string;
  /** One line for the table. */
  title: string;
  /** Unit of throughput: calls/s, msgs/s. */
  unit: string;
  oursLabel: string;
  baselineLabel: string;
  ours?: Figures;
  baseline?: Figures;
  /** The metric the ratio column shows. */
  primary: Metric;
  goal?: Goal;
  /** Why the row has no figures. */
  unavailable?: string;
  /** Something a reader should know about this row. */
  note?: string;
}

/** The per-metric medians of several samples. */
export function medianFigures(samples: readonly Figures[]): Figures | undefined {
  if (samples.length === 0) return undefined;
  const out: Figures = {};
  for (const metric of Object.keys(METRICS) as Metric[]) {
    const values = samples.map((s) => s[metric]).filter((v): v is number => v !== undefined);
    if (values.length > 0) out[metric] = median(values);
  }
  return out;
}

function ratio(c: Comparison, metric: Metric): number | undefined {
  const a = c.ours?.[metric];
  const b = c.baseline?.[metric];
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0) {
    return undefined;
  }
  return a / b;
}

function goalText(goal: Goal, unit: string): string {
  const metric = METRICS[goal.metric].name(unit).replace(/ \(.*\)$/, "");
  if (goal.kind === "absolute") return `${metric} ≤ ${goal.max}`;
  if (goal.min !== undefined) return `${metric} ≥ ${goal.min}x`;
  return `${metric} ≤ ${goal.max}x`;
}

/** Whether the goal is met; undefined when it cannot be told. */
export function goalMet(c: Comparison): boolean | undefined {
  const goal = c.goal;
  if (!goal || c.unavailable) return undefined;
  if (goal.kind === "absolute") {
    const v = c.ours?.[goal.metric];
    return v === undefined || !Number.isFinite(v) ? undefined : v <= goal.max;
  }
  const r = ratio(c, goal.metric);
  if (r === undefined) return undefined;
  if (goal.min !== undefined && r < goal.min) return false;
  if (goal.max !== undefined && r > goal.max) return false;
  return true;
}

/** A row of the `--json` output. */
export interface JsonRow {
  scenario: string;
  metric: string;
  value: number | null;
  baseline: number | null;
  ratio: number | null;
  better: Better;
  /** Only on the row a goal is about. */
  goal?: string;
  met?: boolean | null;
  /** Only on rows without figures: why. */
  unavailable?: string;
}

const round = (v: number | undefined, scale: number): number | null =>
  v === undefined || !Number.isFinite(v) ? null : Number((v * scale).toPrecision(4));

export function toJson(comparisons: readonly Comparison[]): JsonRow[] {
  const rows: JsonRow[] = [];
  for (const c of comparisons) {
    const scenario = `${c.scenario} vs ${c.baselineLabel}`;
    if (c.unavailable) {
      const m = METRICS[c.primary];
      rows.push({
        scenario,
        metric: m.name(c.unit),
        value: null,
        baseline: null,
        ratio: null,
        better: m.better,
        ...(c.goal ? { goal: goalText(c.goal, c.unit), met: null } : {}),
        unavailable: c.unavailable,
      });
      continue;
    }
    for (const metric of Object.keys(METRICS) as Metric[]) {
      const m = METRICS[metric];
      const value = c.ours?.[metric];
      if (value === undefined) continue;
      const r = ratio(c, metric);
      const row: JsonRow = {
        scenario,
        metric: m.name(c.unit),
        value: round(value, m.scale),
        baseline: round(c.baseline?.[metric], m.scale),
        ratio: r === undefined ? null : Number(r.toPrecision(3)),
        better: m.better,
      };
      if (c.goal?.metric === metric) {
        row.goal = goalText(c.goal, c.unit);
        row.met = goalMet(c) ?? null;
      }
      rows.push(row);
    }
  }
  return rows;
}

function cell(f: Figures | undefined, metric: Metric): string {
  const v = f?.[metric];
  return v === undefined ? "-" : formatNumber(v * METRICS[metric].scale);
}

function ratioCell(c: Comparison): string {
  const r = ratio(c, c.primary);
  if (r === undefined) return "-";
  const name = METRICS[c.primary].name(c.unit).replace(/ \(.*\)$/, "");
  return `${formatNumber(r)}x ${name}`;
}

function goalCell(c: Comparison): string {
  if (!c.goal) return "";
  const met = goalMet(c);
  const verdict = met === undefined ? "n/a" : met ? "**met**" : "**missed**";
  return `${goalText(c.goal, c.unit)}: ${verdict}`;
}

/**
 * The Markdown table: for each scenario our server first, then each
 * baseline with the ratio ours ÷ baseline and the goal.
 */
export function toTable(comparisons: readonly Comparison[]): string {
  const lines = [
    "| scenario | server | throughput | p50 ms | p99 ms | mean ms | peak RSS MB | RSS/stream KB | ours ÷ baseline | goal |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ];
  const figures = (f: Figures | undefined, unit: string) =>
    [
      f?.throughput === undefined ? "-" : `${cell(f, "throughput")} ${unit}`,
      cell(f, "p50"),
      cell(f, "p99"),
      cell(f, "mean"),
      cell(f, "rss"),
      cell(f, "perStream"),
    ].join(" | ");
  let last = "";
  for (const c of comparisons) {
    const key = `${c.scenario}|${c.oursLabel}`;
    if (c.unavailable) {
      lines.push(
        `| ${c.scenario} | ${c.oursLabel} vs ${c.baselineLabel} | unavailable: ${c.unavailable} | | | | | | | ${c.goal ? `${goalText(c.goal, c.unit)}: n/a` : ""} |`,
      );
      last = "";
      continue;
    }
    if (key !== last) {
      lines.push(`| ${c.scenario} | **${c.oursLabel}** | ${figures(c.ours, c.unit)} | | |`);
      last = key;
    }
    lines.push(
      `| | ${c.baselineLabel} | ${figures(c.baseline, c.unit)} | ${ratioCell(c)} | ${goalCell(c)} |`,
    );
  }
  return lines.join("\n");
}

/** One line per goal: met, missed or not measured. */
export function goalSummary(comparisons: readonly Comparison[]): string {
  const lines: string[] = [];
  for (const c of comparisons) {
    if (!c.goal) continue;
    const met = goalMet(c);
    const r = c.goal.kind === "ratio" ? ratio(c, c.goal.metric) : c.ours?.[c.goal.metric];
    const shown =
      r === undefined ? "" : ` (${formatNumber(r)}${c.goal.kind === "ratio" ? "x" : ""})`;
    const verdict = c.unavailable
      ? `not measured: ${c.unavailable}`
      : met
        ? "met"
        : met === false
          ? "MISSED"
          : "n/a";
    lines.push(
      `- ${c.scenario} vs ${c.baselineLabel}: ${goalText(c.goal, c.unit)}${shown}: ${verdict}`,
    );
  }
  return lines.join("\n");
}
