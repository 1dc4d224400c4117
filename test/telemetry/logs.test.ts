import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentService } from "../../gen/agent/v1/agent_pb.js";
import { Health } from "../../gen/health/v1/health_pb.js";
import { defaultConfig } from "../../src/config.js";
import { generateApiKey, hashApiKey } from "../../src/server/api-keys.js";
import { createGateway } from "../../src/server/gateway.js";
import { createObservability } from "../../src/server/observability.js";
import { createLogger, type LogLevel } from "../../src/telemetry/logger.js";
import { failure, value } from "../helpers/calls.js";
import { startChildGateway, stopAll } from "../helpers/child.js";

/**
 * The logs an operator reads: JSON lines on stdout of `npm start`, one
 * line per finished RPC with what identifies it, the lifecycle lines, and
 * never a key.
 */

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const KEY = generateApiKey();
/** Looks like a key, is sent like one, and is no one's. */
const WRONG_KEY = generateApiKey();
const TRACE_ID = "6bf92f3577b34da6a3ce929d0e0e4738";

type Line = Record<string, unknown>;

describe("the log of a gateway process", () => {
  let dir: string;
  let child: ChildProcess;
  const stdout: string[] = [];
  const stderr: string[] = [];
  let exited: Promise<number | null>;
  let port: number;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "agent-gateway-logs-"));
    const configFile = join(dir, "config.yaml");
    await writeFile(
      configFile,
      `apiKeys:\n  - hash: ${hashApiKey(KEY)}\n    tenant: acme\n    scopes: [invoke, read]\n`,
    );
    child = spawn(
      process.execPath,
      ["--import", "tsx", "src/main.ts", "--config", configFile],
      {
        cwd: ROOT,
        env: {
          ...process.env,
          PORT: "0",
          HOST: "127.0.0.1",
          DATA_DIR: join(dir, "data"),
          LOG_LEVEL: "info",
          SHUTDOWN_GRACE_MS: "0",
        },
        // Its own process group, so that killing the group kills all of it.
        detached: true,
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
    child.stderr!.on("data", (chunk: Buffer) => stderr.push(chunk.toString()));
    port = await new Promise<number>((resolve, reject) => {
      createInterface({ input: child.stdout! }).on("line", (line) => {
        stdout.push(line);
        const entry = JSON.parse(line) as Line;
        if (entry.msg === "listening") resolve(entry.port as number);
      });
      child.once("exit", (code) =>
        reject(new Error(`exited ${code} before listening: ${stderr.join("")}`)),
      );
    });
  });

  afterAll(async () => {
    if (child?.exitCode === null && child.pid) {
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    await rm(dir, { recursive: true, force: true });
  });

  it("has a line per finished RPC, lifecycle lines, and no key anywhere", async () => {
    const baseUrl = `http://127.0.0.1:${port}`;
    const grpc = createClient(AgentService, createGrpcTransport({ baseUrl }));
    const json = createClient(
      AgentService,
      createConnectTransport({ baseUrl, httpVersion: "1.1" }),
    );
    const { invocation } = await grpc.invoke(
      { agent: "echo", input: value({ text: "hi" }) },
      {
        headers: {
          authorization: `Bearer ${KEY}`,
          traceparent: `00-${TRACE_ID}-00f067aa0ba902b7-01`,
        },
      },
    );
    const got = await json.getInvocation(
      { invocationId: invocation!.id },
      { headers: { "x-api-key": KEY } },
    );
    expect(got.invocation?.traceId).toBe(TRACE_ID);
    // A stream names its invocation in its one request message.
    for await (const _ of grpc.watchInvocation(
      { invocationId: invocation!.id },
      { headers: { "x-api-key": KEY } },
    )) {
      // the finished invocation's events, then the end
    }
    // The key may invoke and read, not cancel.
    const denied = await failure(
      json.cancelInvocation({ invocationId: invocation!.id }, { headers: { "x-api-key": KEY } }),
    );
    expect(denied.code).toBe(Code.PermissionDenied);
    const refused = await failure(
      json.listAgents({}, { headers: { authorization: `Bearer ${WRONG_KEY}` } }),
    );
    expect(refused.code).toBe(Code.Unauthenticated);

    // Probes need no key, and their checks are logged at debug only.
    await createClient(Health, createGrpcTransport({ baseUrl })).check({ service: "" });

    process.kill(child.pid!, "SIGTERM");
    expect(await exited).toBe(0);

    // Every stdout line is JSON: stdout is not a terminal here.
    const lines = stdout.map((l) => JSON.parse(l) as Line);
    const rpcs = lines.filter((l) => l.msg === "rpc finished");
    expect(rpcs.find((l) => l.procedure === "agent.v1.AgentService/Invoke")).toMatchObject({
      level: 30,
      protocol: "grpc",
      code: "ok",
      durationMs: expect.any(Number),
      tenant: "acme",
      invocationId: invocation!.id,
      traceId: TRACE_ID,
    });
    expect(rpcs.find((l) => l.procedure === "agent.v1.AgentService/GetInvocation")).toMatchObject({
      protocol: "connect",
      code: "ok",
      tenant: "acme",
      invocationId: invocation!.id,
      traceId: expect.stringMatching(/^[0-9a-f]{32}$/),
    });
    expect(rpcs.find((l) => l.procedure === "agent.v1.AgentService/WatchInvocation")).toMatchObject({
      protocol: "grpc",
      code: "ok",
      invocationId: invocation!.id,
    });
    const permissionDenied = rpcs.find(
      (l) => l.procedure === "agent.v1.AgentService/CancelInvocation",
    );
    expect(permissionDenied).toMatchObject({ code: "permission_denied", invocationId: invocation!.id });
    expect(permissionDenied).not.toHaveProperty("tenant");
    const unauthenticated = rpcs.find((l) => l.procedure === "agent.v1.AgentService/ListAgents");
    expect(unauthenticated).toMatchObject({ protocol: "connect", code: "unauthenticated" });
    expect(unauthenticated).not.toHaveProperty("tenant");

    expect(rpcs.filter((l) => String(l.procedure).startsWith("grpc.health.v1."))).toEqual([]);

    const lifecycle = lines
      .map((l) => l.msg)
      .filter((m) => m === "listening" || m === "draining" || m === "stopped");
    expect(lifecycle).toEqual(["listening", "draining", "stopped"]);

    const everything = stdout.join("\n") + stderr.join("");
    expect(everything).not.toContain(KEY);
    expect(everything).not.toContain(KEY.slice(4));
    expect(everything).not.toContain(WRONG_KEY.slice(4));
  });
});

describe("LOG_LEVEL", () => {
  afterAll(() => stopAll());

  // At warn and above the process would not say where it listens, which
  // is how the test finds it: the levels below info are compared.
  it.each([
    ["info", 1],
    ["debug", 2],
  ])("at %s, a gateway process writes %i RPC lines for one call and one probe", async (level, count) => {
    const dataDir = await mkdtemp(join(tmpdir(), "agent-gateway-loglevel-"));
    try {
      const child = await startChildGateway(["--import", "tsx", "src/main.ts"], {
        PORT: "0",
        HOST: "127.0.0.1",
        DATA_DIR: dataDir,
        LOG_LEVEL: level,
      });
      const baseUrl = child.baseUrl;
      await createClient(AgentService, createConnectTransport({ baseUrl, httpVersion: "1.1" })).listAgents({});
      // Health checks are logged at debug only.
      await createClient(Health, createGrpcTransport({ baseUrl })).check({ service: "" });
      child.process.kill("SIGTERM");
      await new Promise((resolve) => child.process.once("exit", resolve));
      expect(child.log.filter((l) => l.msg === "rpc finished")).toHaveLength(count);
      expect(child.log.some((l) => l.level === 20)).toBe(level === "debug");
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

/** Collects what a logger writes; a stream, as pino-pretty wants one. */
function capture(): Writable & { text(): string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer | string, _encoding, done) {
      chunks.push(chunk.toString());
      done();
    },
  });
  return Object.assign(stream, { text: () => chunks.join("") });
}

describe("the logger", () => {
  it("redacts credential headers should a line ever carry them", () => {
    const out = capture();
    const log = createLogger("info", { pretty: false, destination: out });
    log.info({ headers: { authorization: "Bearer s3cret-a", "x-api-key": "s3cret-b" } }, "one");
    log.info({ req: { headers: { authorization: "Bearer s3cret-c" } } }, "two");
    log.info({ "x-api-key": "s3cret-d", cookie: "s3cret-e" }, "three");
    const text = out.text();
    expect(text).not.toMatch(/s3cret/);
    expect(text.match(/\[redacted\]/g)).toHaveLength(5);
    expect(text.split("\n").filter(Boolean).map((l) => (JSON.parse(l) as Line).msg)).toEqual([
      "one",
      "two",
      "three",
    ]);
  });

  it("writes human-readable lines when asked (as on a terminal), redacted too", () => {
    const out = capture();
    const log = createLogger("info", { pretty: true, destination: out });
    log.info({ headers: { authorization: "Bearer s3cret-f" }, port: 8080 }, "listening");
    const text = out.text();
    expect(() => JSON.parse(text)).toThrow();
    expect(text).toMatch(/INFO.*listening/);
    expect(text).toContain("port: 8080");
    expect(text).not.toContain("s3cret");
  });

  it("says where traces go without the credentials an endpoint URL carries", async () => {
    const out = capture();
    const telemetry = createObservability({
      config: { otlpEndpoint: "" },
      logger: createLogger("info", { pretty: false, destination: out }),
      env: { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://ops:s3cret-g@127.0.0.1:9/v1/traces?key=s3cret-h" },
    });
    await telemetry.shutdown();
    const lines = out.text().split("\n").filter(Boolean).map((l) => JSON.parse(l) as Line);
    expect(lines.find((l) => l.msg === "exporting traces")?.url).toBe("http://127.0.0.1:9/v1/traces");
    expect(out.text()).not.toContain("s3cret");
  });

  it.each([
    ["info", 1],
    ["warn", 0],
  ] as const)("at level %s writes %i RPC lines for one call", async (level: LogLevel, count) => {
    const out = capture();
    const dataDir = await mkdtemp(join(tmpdir(), "agent-gateway-level-"));
    const gateway = createGateway({
      config: { ...defaultConfig(), port: 0, dataDir, sqliteSynchronous: "normal" },
      logger: createLogger(level, { pretty: false, destination: out }),
    });
    try {
      const { port } = await gateway.start();
      const client = createClient(
        AgentService,
        createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "1.1" }),
      );
      await client.listAgents({});
    } finally {
      await gateway.close();
      await rm(dataDir, { recursive: true, force: true });
    }
    const lines = out.text().split("\n").filter(Boolean).map((l) => JSON.parse(l) as Line);
    expect(lines.filter((l) => l.msg === "rpc finished")).toHaveLength(count);
  });
});
