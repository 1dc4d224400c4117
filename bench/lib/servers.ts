import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Child, ROOT, freePort, listeningPort, nodeArgs, sleep } from "./proc.js";

/** Every server a scenario can put under load. */
export type ServerKind =
  "gateway" | "gateway-normal" | "gateway-memory" | "bare-connect" | "bare-grpc" | "langgraph";

export const LABELS: Record<ServerKind, string> = {
  gateway: "gateway (SQLite, sync full: default)",
  "gateway-normal": "gateway (SQLite, sync normal)",
  "gateway-memory": "gateway (SQLite in memory)",
  "bare-connect": "bare Connect",
  "bare-grpc": "bare grpc-js",
  langgraph: "LangGraph.js dev server",
};

/** A server under test, in its own process group on a loopback port. */
export interface Server {
  readonly kind: ServerKind;
  readonly label: string;
  readonly child: Child;
  readonly port: number;
  /** http://127.0.0.1:port */
  readonly url: string;
  stop(): Promise<void>;
}

export const PEER_DIR = join(ROOT, "bench/peer");
const PEER_BIN = join(PEER_DIR, "node_modules/.bin/langgraphjs");

/** Why the LangGraph.js peer cannot run here, or undefined if it can. */
export function peerUnavailable(): string | undefined {
  if (!existsSync(PEER_BIN)) {
    return "the LangGraph.js peer is not installed (npm ci --prefix bench/peer)";
  }
  return undefined;
}

export interface StartOptions {
  /** Write a V8 CPU profile of a gateway into this directory at exit. */
  cpuProfDir?: string;
}

/** Starts a server and waits until it answers on its port. */
export async function startServer(kind: ServerKind, options: StartOptions = {}): Promise<Server> {
  if (kind === "langgraph") return startPeer();
  const dataDir = mkdtempSync(join(tmpdir(), "bench-gateway-"));
  const flags =
    options.cpuProfDir && kind.startsWith("gateway")
      ? ["--cpu-prof", `--cpu-prof-dir=${options.cpuProfDir}`]
      : [];
  const script = {
    gateway: "src/main.ts",
    "gateway-normal": "src/main.ts",
    "gateway-memory": "bench/servers/gateway-memory.ts",
    "bare-connect": "bench/servers/bare-connect.ts",
    "bare-grpc": "bench/servers/bare-grpc.ts",
  }[kind];
  const env: NodeJS.ProcessEnv = {
    PORT: "0",
    HOST: "127.0.0.1",
    DATA_DIR: dataDir,
    AGENT_MODULES: "bench/agents.ts",
    // Every other setting keeps its default. The per-caller request quota
    // (50 a second by default) is a policy, not a cost: a load test far
    // past it would only measure refusals. Raised, the limiter still runs.
    RATE_PER_SECOND: "1000000000",
    RATE_BURST: "1000000000",
  };
  if (kind === "gateway-normal") env.SQLITE_SYNCHRONOUS = "normal";
  const child = new Child(kind, process.execPath, nodeArgs(script, [], flags), { env });
  try {
    const port = await child.waitFor(listeningPort, 60_000, "listening line");
    return {
      kind,
      label: LABELS[kind],
      child,
      port,
      url: `http://127.0.0.1:${port}`,
      async stop() {
        await child.stop();
        rmSync(dataDir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    await child.stop();
    rmSync(dataDir, { recursive: true, force: true });
    throw error;
  }
}

/**
 * The LangGraph.js agent server (`langgraphjs dev`, in memory) serving the
 * one-node echo graph of bench/peer, with its analytics and LangSmith
 * tracing off so that nothing leaves the machine.
 */
async function startPeer(): Promise<Server> {
  const port = await freePort();
  const child = new Child(
    "langgraph",
    PEER_BIN,
    ["dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", String(port)],
    {
      cwd: PEER_DIR,
      env: {
        LANGGRAPH_CLI_NO_ANALYTICS: "1",
        LANGSMITH_TRACING: "false",
        LANGCHAIN_TRACING_V2: "false",
        NO_COLOR: "1",
        BROWSER: "none",
      },
    },
  );
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 120_000;
  for (;;) {
    if (!child.running) throw child.failure("exited before it answered");
    try {
      const res = await fetch(`${url}/ok`);
      await res.arrayBuffer();
      if (res.ok) break;
    } catch {
      // Not up yet.
    }
    if (Date.now() > deadline) {
      await child.stop();
      throw child.failure("did not answer /ok within 120 s");
    }
    await sleep(250);
  }
  return {
    kind: "langgraph",
    label: LABELS.langgraph,
    child,
    port,
    url,
    stop: () => child.stop(),
  };
}
