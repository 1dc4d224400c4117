import { create, fromJson, toBinary } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import { AgentService, InvocationState, InvokeResponseSchema } from "../gen/agent/v1/agent_pb.js";
import { ECHO_INPUT, grpcEchoBody, h2load, wrk, type LoadResult } from "./lib/load.js";
import { PeakRss, groupRss, runClient, sleep, waitIdle, Child, nodeArgs } from "./lib/proc.js";
import {
  medianFigures,
  type Comparison,
  type Figures,
  type Goal,
  type Metric,
} from "./lib/report.js";
import {
  LABELS,
  peerUnavailable,
  startServer,
  type Server,
  type ServerKind,
} from "./lib/servers.js";
import { median } from "./lib/stats.js";

/** How much of everything: full, quick or smoke. */
export interface Mode {
  name: "full" | "quick" | "smoke";
  /** A/B rounds; each metric is the median over them. */
  rounds: number;
  unaryS: number;
  /** h2load's own warm-up before each timed run. */
  warmupS: number;
  inFlight: number[];
  durabilityInFlight: number[];
  streamChunks: number;
  ttfeCalls: number;
  fanWatchers: number;
  fanTicks: number;
  fanIntervalMs: number;
  fanRounds: number;
  quietStreams: number;
  quietWarm: number;
  quietRounds: number;
  peerS: number;
  peerTtfeCalls: number;
}

export const MODES: Record<Mode["name"], Mode> = {
  full: {
    name: "full",
    rounds: 3,
    unaryS: 5,
    warmupS: 1,
    inFlight: [1, 16, 64],
    durabilityInFlight: [16, 64],
    streamChunks: 100_000,
    ttfeCalls: 1000,
    fanWatchers: 1000,
    fanTicks: 50,
    fanIntervalMs: 200,
    fanRounds: 3,
    quietStreams: 10_000,
    quietWarm: 500,
    quietRounds: 2,
    peerS: 10,
    peerTtfeCalls: 40,
  },
  quick: {
    name: "quick",
    rounds: 2,
    unaryS: 0.5,
    warmupS: 0.2,
    inFlight: [1, 16, 64],
    durabilityInFlight: [16],
    streamChunks: 2000,
    ttfeCalls: 60,
    fanWatchers: 1000,
    fanTicks: 4,
    fanIntervalMs: 200,
    fanRounds: 1,
    quietStreams: 2000,
    quietWarm: 200,
    quietRounds: 1,
    peerS: 2,
    peerTtfeCalls: 4,
  },
  smoke: {
    name: "smoke",
    rounds: 1,
    unaryS: 1,
    warmupS: 0.1,
    inFlight: [16],
    durabilityInFlight: [16],
    streamChunks: 500,
    ttfeCalls: 20,
    fanWatchers: 50,
    fanTicks: 5,
    fanIntervalMs: 20,
    fanRounds: 1,
    quietStreams: 300,
    quietWarm: 50,
    quietRounds: 1,
    peerS: 1,
    peerTtfeCalls: 5,
  },
};

export interface Context {
  mode: Mode;
  pool: ServerPool;
  tools: { h2load: boolean; wrk: boolean };
  /** Directory for gateway CPU profiles, when --cpu-prof was given. */
  cpuProfDir?: string;
  log(message: string): void;
}

export interface Scenario {
  name: string;
  /** The pooled servers it uses (quiet streams start their own). */
  needs: ServerKind[];
  run(ctx: Context): Promise<Comparison[]>;
}

// ---- servers -------------------------------------------------------------

/**
 * The servers under test, started when first needed and kept for the next
 * scenario that needs them (start-up costs seconds of CPU on a 2-core
 * machine); run.ts stops those no later scenario needs.
 */
export class ServerPool {
  private readonly servers = new Map<ServerKind, Server>();

  constructor(private readonly options: { cpuProfDir?: string }) {}

  async get(kind: ServerKind): Promise<Server> {
    const running = this.servers.get(kind);
    if (running?.child.running) return running;
    if (running) await running.stop();
    const server = await startServer(kind, this.options);
    this.servers.set(kind, server);
    return server;
  }

  /** Stops every server not in `kinds`. */
  async keepOnly(kinds: readonly ServerKind[]): Promise<void> {
    for (const [kind, server] of this.servers) {
      if (kinds.includes(kind)) continue;
      this.servers.delete(kind);
      await server.stop();
    }
  }

  stopAll(): Promise<void> {
    return this.keepOnly([]);
  }
}

/** The servers a scenario needs, from the pool (started one at a time). */
async function withServers<T>(
  ctx: Context,
  kinds: ServerKind[],
  body: (servers: Map<ServerKind, Server>) => Promise<T>,
): Promise<T> {
  const servers = new Map<ServerKind, Server>();
  for (const kind of kinds) servers.set(kind, await ctx.pool.get(kind));
  return body(servers);
}

const INVOKE_PATH = "/agent.v1.AgentService/Invoke";
const STREAM_PATH = "/agent.v1.AgentService/InvokeStream";
const ECHO_JSON = JSON.stringify({ agent: "echo", input: ECHO_INPUT });

/**
 * One echo Invoke over gRPC: checks that the server answers correctly and
 * returns the size of a correct gRPC response body, to tell h2load's
 * successes (HTTP 200) from gRPC errors (also HTTP 200).
 */
async function checkGrpc(server: Server): Promise<number> {
  const sessionManager = new Http2SessionManager(server.url);
  try {
    const client = createClient(
      AgentService,
      createGrpcTransport({ baseUrl: server.url, sessionManager }),
    );
    const res = await client.invoke({ agent: "echo", input: fromJson(ValueSchema, ECHO_INPUT) });
    if (res.invocation?.state !== InvocationState.SUCCEEDED) {
      throw new Error(`${server.label}: echo did not succeed over gRPC`);
    }
    return 5 + toBinary(InvokeResponseSchema, create(InvokeResponseSchema, res)).length;
  } finally {
    sessionManager.abort();
  }
}

/** One echo Invoke over Connect JSON on HTTP/1.1. */
async function checkJson(server: Server): Promise<void> {
  const res = await fetch(server.url + INVOKE_PATH, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: ECHO_JSON,
  });
  const body = (await res.json()) as { invocation?: { state?: string } };
  if (res.status !== 200 || body.invocation?.state !== "INVOCATION_STATE_SUCCEEDED") {
    throw new Error(
      `${server.label}: echo over Connect JSON answered ${res.status} ${JSON.stringify(body)}`,
    );
  }
}

type Path = "grpc" | "connect-json";

interface Target {
  server: Server;
  /** gRPC response body size of a correct answer. */
  grpcBytes: number;
}

async function prepare(server: Server, paths: Path[]): Promise<Target> {
  const grpcBytes = paths.includes("grpc") ? await checkGrpc(server) : 0;
  if (paths.includes("connect-json") && server.kind !== "bare-grpc") await checkJson(server);
  return { server, grpcBytes };
}

/** One timed unary load on one server, with its peak RSS. */
async function unaryLoad(
  ctx: Context,
  target: Target,
  path: Path,
  inFlight: number,
  durationS: number,
): Promise<Figures> {
  const { server } = target;
  const peak = new PeakRss(server.child.pid);
  let r: LoadResult;
  try {
    r =
      path === "grpc"
        ? await h2load({
            url: server.url + INVOKE_PATH,
            body: grpcEchoBody(),
            connections: 1,
            streams: inFlight,
            durationS,
            warmupS: ctx.mode.warmupS,
          })
        : await wrk({
            url: server.url + INVOKE_PATH,
            body: ECHO_JSON,
            connections: inFlight,
            durationS,
          });
  } catch (error) {
    peak.stop();
    throw error;
  }
  const rss = peak.stop();
  if (r.requests === 0 || r.failed > r.requests * 0.01) {
    throw new Error(
      `${server.label} ${path} x${inFlight}: ${r.failed} of ${r.requests} requests failed`,
    );
  }
  if (path === "grpc" && r.dataBytesPerRequest < target.grpcBytes * 0.9) {
    throw new Error(
      `${server.label} gRPC x${inFlight}: ${r.dataBytesPerRequest.toFixed(0)} response bytes a call, ` +
        `a correct answer has ${target.grpcBytes}: calls are failing (gRPC errors are HTTP 200)`,
    );
  }
  ctx.log(
    `  ${server.label} ${path} x${inFlight}: ${r.rps.toFixed(0)}/s p50 ${r.p50Ms.toFixed(2)} ms p99 ${r.p99Ms.toFixed(2)} ms`,
  );
  await waitIdle(server.child.pid);
  return { throughput: r.rps, p50: r.p50Ms, p99: r.p99Ms, mean: r.meanMs, rss };
}

/** Round r runs the targets in one order, round r+1 in the reverse one. */
function alternate<T>(items: readonly T[], round: number): T[] {
  return round % 2 === 0 ? [...items] : [...items].reverse();
}

function compare(
  scenario: string,
  title: string,
  unit: string,
  ours: { label: string; samples: Figures[] },
  baseline: { label: string; samples: Figures[] },
  primary: Metric,
  goal?: Goal,
  note?: string,
): Comparison {
  return {
    scenario,
    title,
    unit,
    oursLabel: ours.label,
    baselineLabel: baseline.label,
    ours: medianFigures(ours.samples),
    baseline: medianFigures(baseline.samples),
    primary,
    goal,
    note,
  };
}

function unavailable(
  scenario: string,
  title: string,
  unit: string,
  ours: string,
  baseline: string,
  primary: Metric,
  reason: string,
  goal?: Goal,
): Comparison {
  return {
    scenario,
    title,
    unit,
    oursLabel: ours,
    baselineLabel: baseline,
    primary,
    goal,
    unavailable: reason,
  };
}

// ---- 1. unary ------------------------------------------------------------

const unary: Scenario = {
  name: "unary",
  needs: ["gateway", "bare-connect", "bare-grpc"],
  async run(ctx) {
    const { mode } = ctx;
    const paths: Path[] = [];
    if (ctx.tools.h2load) paths.push("grpc");
    if (ctx.tools.wrk) paths.push("connect-json");
    const out: Comparison[] = [];
    const goalFor = (n: number): Goal | undefined =>
      n >= 16 ? { kind: "ratio", metric: "throughput", min: 0.7 } : undefined;
    const title = (path: Path, n: number) =>
      `echo Invoke, ${path === "grpc" ? "gRPC over h2c (h2load, 1 connection)" : "Connect JSON over HTTP/1.1 (wrk)"}, ${n} in flight`;
    if (paths.length === 0) {
      for (const n of mode.inFlight) {
        out.push(
          unavailable(
            `unary/grpc/${n}`,
            title("grpc", n),
            "calls/s",
            LABELS.gateway,
            LABELS["bare-connect"],
            "throughput",
            "h2load is not installed",
            goalFor(n),
          ),
        );
        out.push(
          unavailable(
            `unary/connect-json/${n}`,
            title("connect-json", n),
            "calls/s",
            LABELS.gateway,
            LABELS["bare-connect"],
            "throughput",
            "wrk is not installed",
            goalFor(n),
          ),
        );
      }
      return out;
    }
    const kinds: ServerKind[] = ["gateway", "bare-connect"];
    if (paths.includes("grpc")) kinds.push("bare-grpc");
    return withServers(ctx, kinds, async (servers) => {
      const targets = new Map<ServerKind, Target>();
      for (const [kind, server] of servers) targets.set(kind, await prepare(server, paths));
      const combos = paths.flatMap((path) => mode.inFlight.map((n) => ({ path, n })));
      const samples = new Map<string, Figures[]>();
      const key = (kind: ServerKind, path: Path, n: number) => `${kind}|${path}|${n}`;

      // Warm-up: JIT and caches of every server, not counted (quick mode
      // relies on h2load's warm-up time and the runs before).
      for (const path of mode.name === "full" ? paths : []) {
        for (const [kind, target] of targets) {
          if (path === "connect-json" && kind === "bare-grpc") continue;
          await unaryLoad(ctx, target, path, 16, mode.unaryS);
        }
      }
      for (let round = 0; round < mode.rounds; round++) {
        ctx.log(` round ${round + 1}/${mode.rounds}`);
        for (const { path, n } of combos) {
          for (const kind of alternate([...targets.keys()], round)) {
            if (path === "connect-json" && kind === "bare-grpc") continue;
            const figures = await unaryLoad(ctx, targets.get(kind)!, path, n, mode.unaryS);
            const list = samples.get(key(kind, path, n)) ?? [];
            list.push(figures);
            samples.set(key(kind, path, n), list);
          }
        }
      }
      const of = (kind: ServerKind, path: Path, n: number) => ({
        label: LABELS[kind],
        samples: samples.get(key(kind, path, n)) ?? [],
      });
      for (const path of ["grpc", "connect-json"] as Path[]) {
        for (const n of mode.inFlight) {
          const id = `unary/${path}/${n}`;
          if (!paths.includes(path)) {
            const tool = path === "grpc" ? "h2load" : "wrk";
            out.push(
              unavailable(
                id,
                title(path, n),
                "calls/s",
                LABELS.gateway,
                LABELS["bare-connect"],
                "throughput",
                `${tool} is not installed`,
                goalFor(n),
              ),
            );
            continue;
          }
          out.push(
            compare(
              id,
              title(path, n),
              "calls/s",
              of("gateway", path, n),
              of("bare-connect", path, n),
              "throughput",
              goalFor(n),
            ),
          );
          if (path === "grpc") {
            out.push(
              compare(
                id,
                title(path, n),
                "calls/s",
                of("gateway", path, n),
                of("bare-grpc", path, n),
                "throughput",
              ),
            );
          }
        }
      }
      return out;
    });
  },
};

// ---- 4. durability -------------------------------------------------------

const durability: Scenario = {
  name: "durability",
  needs: ["gateway", "gateway-normal", "gateway-memory", "bare-connect"],
  async run(ctx) {
    const { mode } = ctx;
    const title = (n: number) =>
      `echo Invoke over gRPC h2c (h2load), ${n} in flight, by store durability`;
    if (!ctx.tools.h2load) {
      return mode.durabilityInFlight.map((n) =>
        unavailable(
          `durability/${n}`,
          title(n),
          "calls/s",
          LABELS.gateway,
          LABELS["gateway-memory"],
          "throughput",
          "h2load is not installed",
        ),
      );
    }
    const kinds: ServerKind[] = ["gateway", "gateway-normal", "gateway-memory", "bare-connect"];
    return withServers(ctx, kinds, async (servers) => {
      const targets = new Map<ServerKind, Target>();
      for (const [kind, server] of servers) targets.set(kind, await prepare(server, ["grpc"]));
      if (mode.name === "full") {
        for (const target of targets.values())
          await unaryLoad(ctx, target, "grpc", 16, mode.unaryS);
      }
      const samples = new Map<string, Figures[]>();
      for (let round = 0; round < mode.rounds; round++) {
        ctx.log(` round ${round + 1}/${mode.rounds}`);
        for (const n of mode.durabilityInFlight) {
          for (const kind of alternate(kinds, round)) {
            const k = `${kind}|${n}`;
            samples.set(k, [
              ...(samples.get(k) ?? []),
              await unaryLoad(ctx, targets.get(kind)!, "grpc", n, mode.unaryS),
            ]);
          }
        }
      }
      const of = (kind: ServerKind, n: number) => ({
        label: LABELS[kind],
        samples: samples.get(`${kind}|${n}`) ?? [],
      });
      const out: Comparison[] = [];
      // Each store setting against the in-memory one, which against bare Connect.
      const pairs: [ServerKind, ServerKind][] = [
        ["gateway", "gateway-memory"],
        ["gateway-normal", "gateway-memory"],
        ["gateway-memory", "bare-connect"],
      ];
      for (const n of mode.durabilityInFlight) {
        for (const [ours, baseline] of pairs) {
          out.push(
            compare(`durability/${n}`, title(n), "calls/s", of(ours, n), of(baseline, n), "throughput"),
          );
        }
      }
      return out;
    });
  },
};

// ---- 2. streaming --------------------------------------------------------

interface StreamReport {
  messages: number;
  seconds: number;
  messagesPerSecond: number;
}

interface LatencyReport {
  n: number;
  p50Ms: number;
  p99Ms: number;
  meanMs: number;
}

async function streamOnce(
  ctx: Context,
  server: Server,
  agent: string,
  input: object,
  chunks: number,
): Promise<Figures> {
  const peak = new PeakRss(server.child.pid);
  try {
    const r = await runClient<StreamReport>(
      "bench/clients/stream.ts",
      { url: server.url, agent, input, chunks, timeoutMs: 600_000 },
      620_000,
    );
    ctx.log(
      `  ${server.label} ${agent}: ${r.messagesPerSecond.toFixed(0)} msgs/s (${r.seconds.toFixed(2)} s)`,
    );
    return { throughput: r.messagesPerSecond, mean: r.seconds * 1000, rss: peak.stop() };
  } finally {
    peak.stop();
  }
}

async function httpTtfe(ctx: Context, server: Server, calls: number): Promise<Figures> {
  const peer = server.kind === "langgraph";
  const peak = new PeakRss(server.child.pid);
  try {
    const r = await runClient<LatencyReport>(
      "bench/clients/ttfe-http.ts",
      peer
        ? {
            url: `${server.url}/runs/stream`,
            body: JSON.stringify({
              assistant_id: "echo",
              input: ECHO_INPUT,
              stream_mode: ["values"],
            }),
            contentType: "application/json",
            envelope: false,
            n: calls,
            timeoutMs: 300_000,
          }
        : {
            url: server.url + STREAM_PATH,
            body: ECHO_JSON,
            contentType: "application/connect+json",
            envelope: true,
            n: calls,
            timeoutMs: 300_000,
          },
      320_000,
    );
    ctx.log(
      `  ${server.label} first event over HTTP/1.1: p50 ${r.p50Ms.toFixed(2)} ms p99 ${r.p99Ms.toFixed(2)} ms`,
    );
    return { p50: r.p50Ms, p99: r.p99Ms, mean: r.meanMs, rss: peak.stop() };
  } finally {
    peak.stop();
  }
}

const streaming: Scenario = {
  name: "streaming",
  needs: ["gateway", "gateway-normal", "bare-connect"],
  async run(ctx) {
    const { mode } = ctx;
    const n = mode.streamChunks;
    const kinds: ServerKind[] = ["gateway", "gateway-normal", "bare-connect"];
    return withServers(ctx, kinds, async (servers) => {
      const gateway = servers.get("gateway")!;
      const normal = servers.get("gateway-normal")!;
      const bare = servers.get("bare-connect")!;
      const s: Record<string, Figures[]> = {
        ticker: [],
        tickerNormal: [],
        burst: [],
        bare: [],
        ttfe: [],
        ttfeNormal: [],
        ttfeBare: [],
      };
      // Warm-up, not counted.
      const warm = Math.min(n, 1000);
      for (const server of mode.name === "full" ? servers.values() : []) {
        await streamOnce(ctx, server, "ticker", { count: warm }, warm);
      }
      for (let round = 0; round < mode.rounds; round++) {
        ctx.log(` round ${round + 1}/${mode.rounds}`);
        for (const kind of alternate(kinds, round)) {
          if (kind === "gateway") {
            s.ticker!.push(await streamOnce(ctx, gateway, "ticker", { count: n }, n));
            s.burst!.push(
              await streamOnce(ctx, gateway, "bench-burst", { count: n, window: 256 }, n),
            );
            s.ttfe!.push(await httpTtfe(ctx, gateway, mode.ttfeCalls));
          } else if (kind === "gateway-normal") {
            s.tickerNormal!.push(await streamOnce(ctx, normal, "ticker", { count: n }, n));
            s.ttfeNormal!.push(await httpTtfe(ctx, normal, mode.ttfeCalls));
          } else {
            s.bare!.push(await streamOnce(ctx, bare, "ticker", { count: n }, n));
            s.ttfeBare!.push(await httpTtfe(ctx, bare, mode.ttfeCalls));
          }
        }
      }
      const bareStream = { label: `${LABELS["bare-connect"]} stream`, samples: s.bare! };
      const title = `InvokeStream over gRPC h2c, ${n.toLocaleString("en-US")} chunks {tick}, no interval, each stored before it is sent; one Node client`;
      const id = `streaming/${n}`;
      const ttfeTitle = `time to first event, ${mode.ttfeCalls} short echo InvokeStream calls one after another, Connect JSON over HTTP/1.1`;
      const bareTtfe = { label: `${LABELS["bare-connect"]} stream`, samples: s.ttfeBare! };
      return [
        compare(
          id,
          title,
          "msgs/s",
          { label: "gateway ticker, sync full (default)", samples: s.ticker! },
          bareStream,
          "throughput",
          { kind: "ratio", metric: "throughput", min: 0.8 },
        ),
        compare(
          id,
          title,
          "msgs/s",
          { label: "gateway ticker, sync normal", samples: s.tickerNormal! },
          bareStream,
          "throughput",
          undefined,
          "the cost of an fsync per awaited chunk: the same ticker without one",
        ),
        compare(
          id,
          title,
          "msgs/s",
          { label: "gateway bench-burst, sync full, 256 chunks in flight", samples: s.burst! },
          bareStream,
          "throughput",
          undefined,
          "an agent that does not await each chunk lets group commit store many per fsync",
        ),
        compare(
          "streaming/first-event",
          ttfeTitle,
          "",
          { label: LABELS.gateway, samples: s.ttfe! },
          bareTtfe,
          "p50",
          { kind: "absolute", metric: "p50", max: 2 },
        ),
        compare(
          "streaming/first-event",
          ttfeTitle,
          "",
          { label: LABELS["gateway-normal"], samples: s.ttfeNormal! },
          bareTtfe,
          "p50",
        ),
      ];
    });
  },
};

// ---- 3. fan-out ----------------------------------------------------------

async function fanOnce(ctx: Context, server: Server): Promise<Figures> {
  const { mode } = ctx;
  const peak = new PeakRss(server.child.pid);
  try {
    const r = await runClient<LatencyReport & { samples: number }>(
      "bench/clients/fanout.ts",
      {
        url: server.url,
        watchers: mode.fanWatchers,
        count: mode.fanTicks,
        intervalMs: mode.fanIntervalMs,
        perConnection: 200,
        timeoutMs: 300_000,
      },
      320_000,
    );
    ctx.log(
      `  ${server.label} fan-out: p50 ${r.p50Ms.toFixed(1)} ms p99 ${r.p99Ms.toFixed(1)} ms (${r.samples} deliveries)`,
    );
    return { p50: r.p50Ms, p99: r.p99Ms, mean: r.meanMs, rss: peak.stop() };
  } finally {
    peak.stop();
  }
}

/** RSS now, the median of a few readings over half a second. */
async function steadyRss(pid: number): Promise<number> {
  const readings: number[] = [];
  for (let i = 0; i < 5; i++) {
    readings.push(groupRss(pid));
    await sleep(100);
  }
  return median(readings);
}

/**
 * A fresh server holding `quietStreams` quiet WatchInvocation streams on
 * one invocation that waits for input. The cost per stream is the RSS
 * growth from `quietWarm` streams to all of them, over the difference, so
 * one-time costs (code paths warming up, the first sessions) drop out.
 */
async function quietOnce(ctx: Context, kind: ServerKind): Promise<Figures> {
  const { mode } = ctx;
  const server = await startServer(kind);
  const client = new Child(
    "quiet client",
    process.execPath,
    nodeArgs("bench/clients/quiet.ts", [
      JSON.stringify({
        url: server.url,
        agent: "approval",
        streams: mode.quietStreams,
        warm: mode.quietWarm,
        perConnection: 200,
        timeoutMs: 300_000,
      }),
    ]),
  );
  const peak = new PeakRss(server.child.pid);
  try {
    const phase = (name: string) => (line: string) =>
      line.startsWith("{") && (JSON.parse(line) as { phase?: string }).phase === name
        ? true
        : undefined;
    const settle = mode.name === "full" ? 2000 : 500;
    await client.waitFor(phase("warm"), 120_000, "warm phase");
    await sleep(settle);
    const before = await steadyRss(server.child.pid);
    client.send("more");
    await client.waitFor(phase("ready"), 240_000, "ready phase");
    await sleep(settle);
    const after = await steadyRss(server.child.pid);
    const perStream = (after - before) / (mode.quietStreams - mode.quietWarm);
    ctx.log(
      `  ${server.label}: ${(perStream / 1024).toFixed(1)} KB per quiet stream (${(before / 2 ** 20).toFixed(0)} -> ${(after / 2 ** 20).toFixed(0)} MB)`,
    );
    return { perStream, rss: peak.stop() };
  } finally {
    peak.stop();
    client.send("stop");
    await client.stop(5000);
    await server.stop();
  }
}

const fanout: Scenario = {
  name: "fanout",
  needs: ["gateway", "bare-connect"],
  async run(ctx) {
    const { mode } = ctx;
    const latency = await withServers(ctx, ["gateway", "bare-connect"], async (servers) => {
      const gateway = servers.get("gateway")!;
      const bare = servers.get("bare-connect")!;
      const gw: Figures[] = [];
      const base: Figures[] = [];
      for (let round = 0; round < mode.fanRounds; round++) {
        ctx.log(` round ${round + 1}/${mode.fanRounds}`);
        for (const which of alternate(["gateway", "bare"] as const, round)) {
          if (which === "gateway") gw.push(await fanOnce(ctx, gateway));
          else base.push(await fanOnce(ctx, bare));
        }
      }
      return compare(
        "fan-out/latency",
        `one invocation, ${mode.fanWatchers} WatchInvocation streams (gRPC, 200 a connection), ${mode.fanTicks} chunks ${mode.fanIntervalMs} ms apart: event time to receipt`,
        "",
        { label: LABELS.gateway, samples: gw },
        { label: `${LABELS["bare-connect"]} broadcast`, samples: base },
        "p99",
        { kind: "absolute", metric: "p99", max: 50 },
        "event time is set when the event is made, before it is stored, so the latency includes the commit",
      );
    });
    const gw: Figures[] = [];
    const base: Figures[] = [];
    for (let round = 0; round < mode.quietRounds; round++) {
      ctx.log(` quiet streams, round ${round + 1}/${mode.quietRounds}`);
      for (const which of alternate(["gateway", "bare"] as const, round)) {
        if (which === "gateway") gw.push(await quietOnce(ctx, "gateway"));
        else base.push(await quietOnce(ctx, "bare-connect"));
      }
    }
    const quiet = compare(
      "fan-out/quiet-streams",
      `${mode.quietStreams.toLocaleString("en-US")} quiet WatchInvocation streams (gRPC, 200 a connection) on one invocation waiting for input; fresh server each`,
      "",
      { label: LABELS.gateway, samples: gw },
      { label: `${LABELS["bare-connect"]} quiet streams`, samples: base },
      "perStream",
      { kind: "ratio", metric: "perStream", max: 1.2 },
    );
    return [latency, quiet];
  },
};

// ---- 5. peer -------------------------------------------------------------

async function httpLoad(ctx: Context, server: Server, durationS: number): Promise<Figures> {
  const peer = server.kind === "langgraph";
  const peak = new PeakRss(server.child.pid);
  let r: LoadResult;
  try {
    r = await wrk({
      url: peer ? `${server.url}/runs/wait` : server.url + INVOKE_PATH,
      body: peer ? JSON.stringify({ assistant_id: "echo", input: ECHO_INPUT }) : ECHO_JSON,
      connections: 16,
      durationS,
    });
  } catch (error) {
    peak.stop();
    throw error;
  }
  const rss = peak.stop();
  if (r.requests === 0 || r.failed > r.requests * 0.01) {
    throw new Error(`${server.label}: ${r.failed} of ${r.requests} requests failed`);
  }
  ctx.log(
    `  ${server.label} x16 over HTTP/1.1: ${r.rps.toFixed(1)}/s p50 ${r.p50Ms.toFixed(1)} ms`,
  );
  await waitIdle(server.child.pid, 30_000);
  return { throughput: r.rps, p50: r.p50Ms, p99: r.p99Ms, mean: r.meanMs, rss };
}

const peer: Scenario = {
  name: "peer",
  needs: ["gateway", "langgraph"],
  async run(ctx) {
    const { mode } = ctx;
    const waitTitle =
      "echo over HTTP/1.1 JSON, 16 in flight (wrk): our Connect Invoke vs LangGraph POST /runs/wait";
    const ttfeTitle = `time to first streamed event, ${mode.peerTtfeCalls} calls one after another over HTTP/1.1: our Connect InvokeStream vs LangGraph POST /runs/stream`;
    const waitGoal: Goal = { kind: "ratio", metric: "throughput", min: 100 };
    const ttfeGoal: Goal = { kind: "ratio", metric: "p50", max: 0.05 };
    const missing =
      peerUnavailable() ??
      (ctx.tools.wrk ? undefined : "wrk is not installed") ??
      (mode.name === "smoke" ? "not run in --smoke (the peer takes long to start)" : undefined);
    if (missing) {
      return [
        unavailable(
          "peer/runs-wait",
          waitTitle,
          "req/s",
          LABELS.gateway,
          LABELS.langgraph,
          "throughput",
          missing,
          waitGoal,
        ),
        unavailable(
          "peer/first-event",
          ttfeTitle,
          "",
          LABELS.gateway,
          LABELS.langgraph,
          "p50",
          missing,
          ttfeGoal,
        ),
      ];
    }
    return withServers(ctx, ["gateway", "langgraph"], async (servers) => {
      const gateway = servers.get("gateway")!;
      const lg = servers.get("langgraph")!;
      const check = await fetch(`${lg.url}/runs/wait`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ assistant_id: "echo", input: ECHO_INPUT }),
      });
      const answer = (await check.json()) as { text?: string };
      if (answer.text !== ECHO_INPUT.text) {
        throw new Error(`LangGraph echo answered ${check.status} ${JSON.stringify(answer)}`);
      }
      await checkJson(gateway);
      // Warm-up, not counted (the gateway is warm in quick mode already).
      if (mode.name === "full") await httpLoad(ctx, gateway, 2);
      await httpLoad(ctx, lg, mode.name === "full" ? 3 : 1);
      const s: Record<string, Figures[]> = { gwWait: [], lgWait: [], gwTtfe: [], lgTtfe: [] };
      for (let round = 0; round < mode.rounds; round++) {
        ctx.log(` round ${round + 1}/${mode.rounds}`);
        for (const which of alternate(["gateway", "langgraph"] as const, round)) {
          // First events on an idle server, then the load (after which
          // httpLoad waits until the server has drained its queue).
          if (which === "gateway") {
            s.gwTtfe!.push(await httpTtfe(ctx, gateway, mode.peerTtfeCalls));
            s.gwWait!.push(await httpLoad(ctx, gateway, mode.peerS));
          } else {
            s.lgTtfe!.push(await httpTtfe(ctx, lg, mode.peerTtfeCalls));
            s.lgWait!.push(await httpLoad(ctx, lg, mode.peerS));
          }
        }
      }
      return [
        compare(
          "peer/runs-wait",
          waitTitle,
          "req/s",
          { label: LABELS.gateway, samples: s.gwWait! },
          { label: LABELS.langgraph, samples: s.lgWait! },
          "throughput",
          waitGoal,
        ),
        compare(
          "peer/first-event",
          ttfeTitle,
          "",
          { label: LABELS.gateway, samples: s.gwTtfe! },
          { label: LABELS.langgraph, samples: s.lgTtfe! },
          "p50",
          ttfeGoal,
        ),
      ];
    });
  },
};

export const SCENARIOS: Scenario[] = [unary, durability, streaming, fanout, peer];
