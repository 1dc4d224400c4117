import type { ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import {
  Http2SessionManager,
  createConnectTransport,
  createGrpcTransport,
} from "@connectrpc/connect-node";
import { service as healthDefinition } from "grpc-health-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { AgentService, InvocationState, type Event } from "../../gen/agent/v1/agent_pb.js";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
  type HealthCheckResponse,
} from "../../gen/health/v1/health_pb.js";
import { defineAgent } from "../../src/runtime/index.js";
import { DATABASE_FILE } from "../../src/server/gateway.js";
import { createSqliteStore } from "../../src/store/sqlite/sqlite-store.js";
import type { InvocationRecord, StoredEvent } from "../../src/store/types.js";
import { failure, value } from "../helpers/calls.js";
import { collect, ofKind } from "../helpers/event-log.js";
import { startChildGateway, stopAll } from "../helpers/child.js";
import { startGateway, type TestGateway } from "../helpers/gateway.js";

/**
 * Graceful shutdown: not ready at once, new starts refused, running
 * invocations given the grace to finish, what is left stopped without being
 * failed and resumed at the next start, streams ended cleanly, exit 0; a
 * second signal exits at once. In process first, then `npm start` in a
 * child process sent SIGTERM.
 */

/** A bound on waiting for a condition, so a hang fails instead of stalling. */
const BOUND_MS = 30_000;
/** A grace no test waits out: draining ends when the work does. */
const LONG_GRACE_MS = 120_000;

/** Waits until `condition` holds, checking often; fails past the bound. */
async function until(what: string, condition: () => boolean | Promise<boolean>) {
  const deadline = Date.now() + BOUND_MS;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(10);
  }
}

/**
 * The id of the one invocation of `agent`, once the server has stored it:
 * a unary Invoke sends its headers only with its response.
 */
async function startedOne(client: Client<typeof AgentService>, agent: string): Promise<string> {
  let id = "";
  await until(`an invocation of ${agent} is stored`, async () => {
    const { invocations } = await client.listInvocations({ agent });
    id = invocations[0]?.id ?? "";
    return invocations.length === 1;
  });
  return id;
}

/** Reads a health Watch stream into `seen`; resolves with how it ended. */
function followHealth(
  stream: AsyncIterable<HealthCheckResponse>,
  seen: ServingStatus[],
): Promise<ConnectError | "ok"> {
  return (async () => {
    try {
      for await (const res of stream) seen.push(res.status);
      return "ok" as const;
    } catch (error) {
      return ConnectError.from(error);
    }
  })();
}

/**
 * A health Watch through @grpc/grpc-js with the grpc-health-check package's
 * service definition: a client that shares no code with the gateway.
 */
function grpcJsHealthWatch(port: number, service: string) {
  const Client = grpc.makeClientConstructor(healthDefinition, "Health");
  const client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  const statuses: string[] = [];
  const call = (client as unknown as {
    watch(request: { service: string }): grpc.ClientReadableStream<{ status: string }>;
  }).watch({ service });
  call.on("data", (res: { status: string }) => statuses.push(res.status));
  call.on("error", () => undefined); // the status event below says how it ended
  const ended = new Promise<grpc.status>((resolve) =>
    call.on("status", (status: grpc.StatusObject) => resolve(status.code)),
  );
  return { statuses, ended, close: () => client.close() };
}

/** Reads a progress stream; resolves with its events and how it ended. */
async function followEvents(
  stream: AsyncIterable<{ event?: Event }>,
  seen: Event[],
): Promise<ConnectError | "ok"> {
  try {
    await collect(stream, (event) => {
      seen.push(event);
    });
    return "ok";
  } catch (error) {
    return ConnectError.from(error);
  }
}

describe("in process: close() drains", () => {
  let gw: TestGateway;
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  /** Runs until the test opens the gate, whatever happens meanwhile. */
  const gated = defineAgent({
    name: "gated",
    description: "Waits until the test opens the gate.",
    input: z.object({}),
    output: z.object({ opened: z.boolean() }),
    start: "wait",
    nodes: {
      wait: async (ctx) => {
        await gate;
        ctx.result({ opened: true });
      },
    },
  });

  beforeAll(async () => {
    gw = await startGateway({
      agents: [gated],
      config: { shutdownGraceMs: LONG_GRACE_MS },
    });
  });

  afterAll(async () => {
    release();
    await gw?.close();
  });

  it("turns NOT_SERVING at once, refuses starts, lets the running invocation finish, then stops", async () => {
    const client = gw.client("grpc");
    const health = createClient(Health, gw.transport("grpc"));
    const statuses: ServingStatus[] = [];
    const healthEnd = followHealth(health.watch({ service: "" }), statuses);
    await until("the health watch says SERVING", () => statuses.length === 1);
    expect(statuses).toEqual([ServingStatus.SERVING]);

    // In flight: a unary Invoke of the gated agent, and a watch on it.
    const invoke = client.invoke({ agent: "gated", input: value({}) });
    const id = await startedOne(client, "gated");
    const events: Event[] = [];
    const watchEnd = followEvents(client.watchInvocation({ invocationId: id }), events);
    await until("the node runs", () => events.some((e) => e.kind.case === "nodeStarted"));
    // Waiting for input: this one does not hold the grace.
    const { invocation: waiting } = await client.startInvocation({
      agent: "approval",
      input: value({ subject: "the shutdown" }),
    });
    await until("the approval waits for input", async () => {
      const { invocation } = await client.getInvocation({ invocationId: waiting!.id });
      return invocation!.state === InvocationState.WAITING_FOR_INPUT;
    });

    expect(gw.gateway.state).toBe("serving");
    const closing = gw.gateway.close();
    expect(gw.gateway.close()).toBe(closing);
    expect(gw.gateway.state).toBe("draining");

    await until("the health watch says NOT_SERVING", () => statuses.length === 2);
    expect(statuses).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING]);
    expect((await health.check({ service: "" })).status).toBe(ServingStatus.NOT_SERVING);
    const ready = await fetch(`${gw.baseUrl}/readyz`);
    expect(ready.status).toBe(503);
    expect(await ready.text()).toBe("not ready: draining\n");
    const alive = await fetch(`${gw.baseUrl}/healthz`);
    expect(alive.status).toBe(200);
    await alive.text();

    const refused = await failure(client.startInvocation({ agent: "echo", input: value("x") }));
    expect(refused.code).toBe(Code.Unavailable);
    // Reads go on while draining.
    const { invocation: running } = await client.getInvocation({ invocationId: id });
    expect(running?.state).toBe(InvocationState.RUNNING);

    release();
    const { invocation } = await invoke;
    expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
    expect(await watchEnd).toBe("ok");
    expect(events.at(-1)?.kind.case).toBe("completed");

    await closing;
    expect(gw.gateway.state).toBe("stopped");
    // The health watch ended cleanly, with nothing after NOT_SERVING.
    expect(await healthEnd).toBe("ok");
    expect(statuses).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING]);

    // The approval was stopped, not ended: it resumes at the next start.
    const store = createSqliteStore({
      path: join(gw.dataDir, DATABASE_FILE),
      synchronous: "normal",
    });
    try {
      expect((await store.getInvocation(waiting!.id))?.state).toBe("waiting_for_input");
      expect((await store.getInvocation(id))?.state).toBe("succeeded");
    } finally {
      await store.close();
    }
  });
});

/** `npm start` in a child process, and what it printed. */
interface Child {
  process: ChildProcess;
  port: number;
  baseUrl: string;
  grpc: Client<typeof AgentService>;
  json: Client<typeof AgentService>;
  health: Client<typeof Health>;
  /** Every JSON log line so far, as parsed. */
  logs: Record<string, unknown>[];
  /** Resolves with the exit code (or the signal) once it has exited. */
  exited: Promise<number | NodeJS.Signals>;
  /** Closes the clients' connections (the process is left alone). */
  disconnect(): void;
}

/** `npm start` on a free loopback port; resolves once it listens. */
async function startChild(dataDir: string, graceMs: number): Promise<Child> {
  const gateway = await startChildGateway(["--import", "tsx", "src/main.ts"], {
    PORT: "0",
    HOST: "127.0.0.1",
    DATA_DIR: dataDir,
    AGENT_MODULES: "test/fixtures/agents.ts",
    SHUTDOWN_GRACE_MS: String(graceMs),
    SQLITE_SYNCHRONOUS: "normal",
  });
  const exited = new Promise<number | NodeJS.Signals>((resolve) =>
    gateway.process.once("exit", (code, signal) => resolve(code ?? signal!)),
  );
  const { baseUrl } = gateway;
  const sessionManager = new Http2SessionManager(baseUrl);
  const grpcTransport = createGrpcTransport({ baseUrl, sessionManager });
  return {
    process: gateway.process,
    port: gateway.port,
    baseUrl,
    grpc: createClient(AgentService, grpcTransport),
    json: createClient(AgentService, createConnectTransport({ baseUrl, httpVersion: "1.1" })),
    health: createClient(Health, grpcTransport),
    logs: gateway.log,
    exited,
    disconnect: () => sessionManager.abort(),
  };
}

/** Sends `signal` to the child's whole process group. */
function signalChild(child: Child, signal: NodeJS.Signals) {
  process.kill(-child.process.pid!, signal);
}

/** The messages of the child's log lines, in order. */
const messages = (child: Child) => child.logs.map((l) => l.msg as string | undefined);

/** The store a stopped child left behind. */
async function readStore(dataDir: string, ids: string[]) {
  const store = createSqliteStore({ path: join(dataDir, DATABASE_FILE), synchronous: "normal" });
  try {
    const found: Record<string, { record: InvocationRecord; events: StoredEvent[] }> = {};
    for (const id of ids) {
      found[id] = {
        record: (await store.getInvocation(id))!,
        events: await store.readEvents(id, 0, 10_000),
      };
    }
    return found;
  } finally {
    await store.close();
  }
}

const TERMINAL = ["completed", "failed", "cancelled"];

afterAll(() => stopAll());

describe("SIGTERM with an invocation that finishes within the grace", () => {
  let dataDir: string;
  let child: Child;
  const statuses: ServingStatus[] = [];
  let healthEnd: Promise<ConnectError | "ok">;
  let grpcJs: ReturnType<typeof grpcJsHealthWatch>;
  const events: Event[] = [];
  let watchEnd: Promise<ConnectError | "ok">;
  let invoke: Promise<unknown>;
  let id = "";
  let ready: Response;
  let refused: ConnectError;
  let exit: number | NodeJS.Signals;

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "agent-gateway-shutdown-"));
    child = await startChild(dataDir, LONG_GRACE_MS);
    healthEnd = followHealth(child.health.watch({ service: "agent.v1.AgentService" }), statuses);
    grpcJs = grpcJsHealthWatch(child.port, "");
    await until(
      "the health watches say SERVING",
      () => statuses.length === 1 && grpcJs.statuses.length === 1,
    );

    // 3 steps of 1.5 s: still running while the checks below are made.
    invoke = child.grpc.invoke({ agent: "chain", input: value({ stepMs: 1500 }) });
    id = await startedOne(child.grpc, "chain");
    watchEnd = followEvents(child.grpc.watchInvocation({ invocationId: id }), events);
    await until("node a runs", () => events.some((e) => e.kind.case === "nodeStarted"));

    signalChild(child, "SIGTERM");
    await until(
      "the health watches say NOT_SERVING",
      () => statuses.length === 2 && grpcJs.statuses.length === 2,
    );
    ready = await fetch(`${child.baseUrl}/readyz`);
    refused = await failure(child.json.invoke({ agent: "chain", input: value({ stepMs: 0 }) }));
    exit = await child.exited;
    child.disconnect();
    grpcJs.close();
  }, 3 * BOUND_MS);

  afterAll(async () => {
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it("readiness turns NOT_SERVING: health Watch is told, /readyz answers 503", async () => {
    expect(statuses).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING]);
    expect(grpcJs.statuses).toEqual(["SERVING", "NOT_SERVING"]);
    expect(ready.status).toBe(503);
    expect(await ready.text()).toMatch(/draining/);
  });

  it("a new Invoke gets UNAVAILABLE", () => {
    expect(refused.code).toBe(Code.Unavailable);
  });

  it("the running invocation finishes SUCCEEDED, and its Invoke and watch end normally", async () => {
    const res = (await invoke) as { invocation?: { state: InvocationState } };
    expect(res.invocation?.state).toBe(InvocationState.SUCCEEDED);
    expect(await watchEnd).toBe("ok");
    expect(events.at(-1)?.kind.case).toBe("completed");
    const stored = await readStore(dataDir, [id]);
    expect(stored[id]!.record.state).toBe("succeeded");
  });

  it("open streams end cleanly and the process exits 0, logging draining then stopped", async () => {
    expect(await healthEnd).toBe("ok");
    expect(statuses).toHaveLength(2);
    expect(await grpcJs.ended).toBe(grpc.status.OK);
    expect(grpcJs.statuses).toHaveLength(2);
    expect(exit).toBe(0);
    const lifecycle = messages(child).filter((m) => ["listening", "draining", "stopped"].includes(m!));
    expect(lifecycle).toEqual(["listening", "draining", "stopped"]);
    expect(child.logs.find((l) => l.msg === "stopped")).toMatchObject({ stopped: 0, busy: 0 });
  });
});

describe("SIGTERM with invocations that outlast the grace, then a restart", () => {
  let dataDir: string;
  let first: Child;
  let second: Child;
  const ids = { chain: "", forever: "" };
  const foreverEvents: Event[] = [];
  let foreverWatchEnd: Promise<ConnectError | "ok">;
  let foreverInvoke: Promise<ConnectError>;
  let firstExit: number | NodeJS.Signals;
  let stored: Awaited<ReturnType<typeof readStore>>;
  let chainLog: Event[];

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "agent-gateway-shutdown-"));
    first = await startChild(dataDir, 300);
    const { invocation: chain } = await first.grpc.startInvocation({
      agent: "chain",
      input: value({ stepMs: 2000 }),
    });
    // forever through a unary Invoke that waits for it.
    foreverInvoke = failure(first.grpc.invoke({ agent: "forever", input: value({}) }));
    ids.chain = chain!.id;
    ids.forever = await startedOne(first.json, "forever");
    foreverWatchEnd = followEvents(
      first.grpc.watchInvocation({ invocationId: ids.forever }),
      foreverEvents,
    );
    await until("both nodes run", async () => {
      const states = await Promise.all(
        [ids.chain, ids.forever].map(
          async (invocationId) =>
            (await first.grpc.getInvocation({ invocationId })).invocation!.state,
        ),
      );
      return (
        states.every((s) => s === InvocationState.RUNNING) &&
        foreverEvents.some((e) => e.kind.case === "nodeStarted")
      );
    });

    signalChild(first, "SIGTERM");
    firstExit = await first.exited;
    first.disconnect();
    stored = await readStore(dataDir, [ids.chain, ids.forever]);

    second = await startChild(dataDir, LONG_GRACE_MS);
    chainLog = await collect(
      second.grpc.watchInvocation(
        { invocationId: ids.chain, afterSequence: 0n },
        { signal: AbortSignal.timeout(BOUND_MS) },
      ),
    );
  }, 4 * BOUND_MS);

  afterAll(async () => {
    second?.disconnect();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it("the process exits 0 after the grace, having stopped both", () => {
    expect(firstExit).toBe(0);
    expect(first.logs.find((l) => l.msg === "stopped")).toMatchObject({ stopped: 2, busy: 2 });
  });

  it("neither invocation was marked failed: both are stored unfinished", () => {
    for (const id of [ids.chain, ids.forever]) {
      const { record, events } = stored[id]!;
      expect(record.state).toBe("running");
      expect(record.error).toBeUndefined();
      expect(events.filter((e) => TERMINAL.includes(e.body.type))).toEqual([]);
    }
  });

  it("an Invoke still waiting when the grace runs out ends UNAVAILABLE", async () => {
    expect((await foreverInvoke).code).toBe(Code.Unavailable);
  });

  it("a progress stream cut by the shutdown ends UNAVAILABLE, not OK", async () => {
    const end = await foreverWatchEnd;
    expect(end).toBeInstanceOf(ConnectError);
    expect((end as ConnectError).code).toBe(Code.Unavailable);
    expect(ofKind(foreverEvents, "nodeStarted")).toHaveLength(1);
  });

  it("after a restart on the same data the chain resumes and finishes SUCCEEDED", async () => {
    expect(chainLog.at(-1)?.kind.case).toBe("completed");
    const retried = ofKind(chainLog, "nodeRetrying");
    expect(retried).toHaveLength(1);
    expect(retried[0]!.kind.value.error).toMatch(/interrupted/);
    expect(ofKind(chainLog, "failed")).toEqual([]);
    const { invocation } = await second.json.getInvocation({ invocationId: ids.chain });
    expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
  });

  it("after the restart the forever invocation runs again", async () => {
    const stop = new AbortController();
    const bound = setTimeout(() => stop.abort(), BOUND_MS);
    const events: Event[] = [];
    await collect(
      second.grpc.watchInvocation({ invocationId: ids.forever }, { signal: stop.signal }),
      (event, all) => {
        events.push(event);
        if (ofKind(all, "nodeStarted").length === 2) stop.abort();
      },
    ).catch(() => undefined);
    clearTimeout(bound);
    expect(ofKind(events, "nodeStarted")).toHaveLength(2);
    expect(ofKind(events, "nodeRetrying")[0]?.kind.value.error).toMatch(/interrupted/);
    const { invocation } = await second.grpc.getInvocation({ invocationId: ids.forever });
    expect(invocation?.state).toBe(InvocationState.RUNNING);
  });

  it("a second signal (SIGINT after SIGTERM) while draining exits at once, non-zero", async () => {
    // forever still runs, and the grace is long: only the second signal
    // can end this process soon.
    signalChild(second, "SIGTERM");
    await until("it drains", () => messages(second).includes("draining"));
    signalChild(second, "SIGINT");
    const exit = await second.exited;
    expect(exit).toBe(128 + 2);
    expect(messages(second)).not.toContain("stopped");
  });
});

describe("SIGINT as the first signal", () => {
  it("drains like SIGTERM: an invocation in flight finishes, the process exits 0", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "agent-gateway-sigint-"));
    try {
      const child = await startChild(dataDir, LONG_GRACE_MS);
      const invoke = child.grpc.invoke({ agent: "chain", input: value({ stepMs: 300 }) });
      await startedOne(child.grpc, "chain");
      signalChild(child, "SIGINT");
      const res = (await invoke) as { invocation?: { state: InvocationState } };
      expect(res.invocation?.state).toBe(InvocationState.SUCCEEDED);
      expect(await child.exited).toBe(0);
      child.disconnect();
      const lifecycle = messages(child).filter((m) => ["listening", "draining", "stopped"].includes(m!));
      expect(lifecycle).toEqual(["listening", "draining", "stopped"]);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  }, 2 * BOUND_MS);
});
