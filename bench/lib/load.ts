import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { fromJson } from "@bufbuild/protobuf";
import { InvokeRequestSchema } from "../../gen/agent/v1/agent_pb.js";
import { ROOT, runCommand } from "./proc.js";
import { quantile } from "./stats.js";

/** What one run of a load generator measured. */
export interface LoadResult {
  /** Completed requests per second. */
  rps: number;
  p50Ms: number;
  p99Ms: number;
  meanMs: number;
  requests: number;
  /** Requests that failed (transport errors or error responses). */
  failed: number;
  /** Response payload bytes per request, to tell answers from errors. */
  dataBytesPerRequest: number;
}

/** Which load tools are installed, and a sentence for each missing one. */
export function findTools(): { h2load: boolean; wrk: boolean; missing: string[] } {
  const has = (tool: string) => {
    try {
      execFileSync("sh", ["-c", `command -v ${tool}`], { stdio: "ignore" });
      return true;
    } catch {
      return false;
    }
  };
  const h2load = has("h2load");
  const wrk = has("wrk");
  const missing: string[] = [];
  if (!h2load) missing.push("h2load is not installed (apt-get install nghttp2-client)");
  if (!wrk) missing.push("wrk is not installed (apt-get install wrk)");
  return { h2load, wrk, missing };
}

/** The echo request every unary scenario sends. */
export const ECHO_INPUT = { text: "hello, agent" };

/** A gRPC length-prefixed InvokeRequest for echo, as h2load sends it. */
export function grpcEchoBody(): Buffer {
  const message = toBinary(
    InvokeRequestSchema,
    create(InvokeRequestSchema, {
      agent: "echo",
      input: fromJson(ValueSchema, ECHO_INPUT),
    }),
  );
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt8(0, 0);
  frame.writeUInt32BE(message.length, 1);
  Buffer.from(message).copy(frame, 5);
  return frame;
}

export interface H2loadOptions {
  url: string;
  body: Buffer;
  connections: number;
  /** Concurrent streams per connection. */
  streams: number;
  durationS: number;
  warmupS: number;
}

/**
 * gRPC unary over h2c with h2load (one client thread). Latency percentiles
 * come from its per-request log. h2load counts HTTP statuses only, and a
 * gRPC error is HTTP 200: the caller checks dataBytesPerRequest.
 */
export async function h2load(options: H2loadOptions): Promise<LoadResult> {
  const dir = mkdtempSync(join(tmpdir(), "bench-h2load-"));
  try {
    const bodyFile = join(dir, "body");
    const logFile = join(dir, "log");
    writeFileSync(bodyFile, options.body);
    const args = [
      "-t",
      "1",
      "-c",
      String(options.connections),
      "-m",
      String(options.streams),
      "-D",
      `${Math.round(options.durationS * 1000)}ms`,
      `--warm-up-time=${Math.round(options.warmupS * 1000)}ms`,
      "-d",
      bodyFile,
      "-H",
      "content-type: application/grpc",
      "-H",
      "te: trailers",
      `--log-file=${logFile}`,
      options.url,
    ];
    const timeout = (options.durationS + options.warmupS + 30) * 1000;
    const { code, output } = await runCommand("h2load", args, timeout);
    const finished = /finished in ([\d.]+)(m?s), ([\d.]+) req\/s/.exec(output);
    const counts =
      /requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored/.exec(
        output,
      );
    const traffic = /traffic: .*?, \S+ \((\d+)\) data/.exec(output);
    if (code !== 0 || !finished || !counts) {
      throw new Error(`h2load failed (${code}):\n${output}`);
    }
    const latencies = readFileSync(logFile, "utf8")
      .split("\n")
      .filter(Boolean)
      .map((line) => Number(line.split("\t")[2]) / 1000);
    const done = Number(counts[2]);
    return {
      rps: Number(finished[3]),
      p50Ms: quantile(latencies, 0.5),
      p99Ms: quantile(latencies, 0.99),
      meanMs: latencies.reduce((a, b) => a + b, 0) / Math.max(1, latencies.length),
      requests: done,
      failed: Number(counts[4]) + Number(counts[5]),
      dataBytesPerRequest: traffic ? Number(traffic[1]) / Math.max(1, done) : 0,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface WrkOptions {
  url: string;
  body: string;
  contentType?: string;
  connections: number;
  durationS: number;
}

interface WrkReport {
  requests: number;
  duration_us: number;
  bytes: number;
  connect_errors: number;
  read_errors: number;
  write_errors: number;
  status_errors: number;
  timeouts: number;
  p50_us: number;
  p99_us: number;
  mean_us: number;
}

/** POSTs over HTTP/1.1 keep-alive with wrk (one thread), one per connection. */
export async function wrk(options: WrkOptions): Promise<LoadResult> {
  const args = [
    "-t",
    "1",
    "-c",
    String(options.connections),
    // wrk takes whole seconds.
    "-d",
    `${Math.max(1, Math.round(options.durationS))}s`,
    "--timeout",
    "10s",
    "-s",
    join(ROOT, "bench/wrk/post.lua"),
    options.url,
  ];
  const { code, output } = await runCommand("wrk", args, (options.durationS + 30) * 1000, {
    BENCH_BODY: options.body,
    BENCH_CONTENT_TYPE: options.contentType ?? "application/json",
  });
  const line = output.split("\n").find((l) => l.startsWith('{"requests"'));
  if (code !== 0 || !line) throw new Error(`wrk failed (${code}):\n${output}`);
  const r = JSON.parse(line) as WrkReport;
  return {
    rps: r.requests / (r.duration_us / 1e6),
    p50Ms: r.p50_us / 1000,
    p99Ms: r.p99_us / 1000,
    meanMs: r.mean_us / 1000,
    requests: r.requests,
    failed: r.connect_errors + r.read_errors + r.write_errors + r.status_errors + r.timeouts,
    dataBytesPerRequest: r.bytes / Math.max(1, r.requests),
  };
}
