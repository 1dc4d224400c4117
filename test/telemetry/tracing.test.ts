import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pino } from "pino";
import { z } from "zod";
import { AgentService, InvocationState } from "../../gen/agent/v1/agent_pb.js";
import { defaultConfig } from "../../src/config.js";
import { defineAgent } from "../../src/runtime/index.js";
import { createGateway } from "../../src/server/gateway.js";
import { AgentRegistry } from "../../src/runtime/registry.js";
import { createObservability } from "../../src/server/observability.js";
import type { InvocationRecord } from "../../src/store/types.js";
import { silentLogger } from "../../src/telemetry/logger.js";
import { createTracing, spanIdOf } from "../../src/telemetry/tracing.js";
import { failure, value } from "../helpers/calls.js";
import { startChildGateway, stopAll } from "../helpers/child.js";
import { startGateway } from "../helpers/gateway.js";
import {
  startOtlpGrpcReceiver,
  startOtlpReceiver,
  type OtlpReceiver,
  type ReceivedSpan,
} from "../helpers/otlp-receiver.js";

/**
 * Traces go to a real OTLP/HTTP receiver on loopback, the way a collector
 * receives them: one SERVER span per RPC continuing the caller's
 * traceparent, an `invoke_agent` span under the RPC that started the
 * invocation, a span per node attempt under it with chunks and input
 * requests as events, and a resumed invocation linked to its first trace.
 */

/** Streams two chunks, fails its first attempt, then asks for approval. */
const drafting = defineAgent({
  name: "drafting",
  description: "Drafts in two chunks (failing once), then asks for approval.",
  input: z.object({ text: z.string() }),
  output: z.object({ text: z.string(), approved: z.boolean() }),
  start: "draft",
  nodes: {
    draft: {
      retry: { maxAttempts: 2, initialDelayMs: 10 },
      run: async (ctx, { text }: { text: string }) => {
        await ctx.stream({ token: text.slice(0, 1) });
        if (ctx.attempt === 1) throw new Error("first drafts are never good");
        await ctx.stream({ token: text.slice(1) });
        ctx.emit("check", { text });
      },
    },
    check: async (ctx, { text }: { text: string }) => {
      const reply = await ctx.requestInput({
        prompt: "Publish?",
        schema: z.object({ approved: z.boolean() }),
      });
      ctx.result({ text, approved: reply.approved });
    },
  },
});

const TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN = "00f067aa0ba902b7";
const traceparent = (traceId: string, spanId: string) => `00-${traceId}-${spanId}-01`;

const SERVER = 2;
const INTERNAL = 1;
const STATUS_ERROR = 2;

let receiver: OtlpReceiver;
beforeAll(async () => {
  receiver = await startOtlpReceiver();
});
afterAll(async () => {
  await receiver?.close();
});

/** Polls until the invocation is in `state`; a bound, not a timing. */
async function waitFor(
  client: Client<typeof AgentService>,
  invocationId: string,
  state: InvocationState,
) {
  for (let i = 0; i < 400; i++) {
    const { invocation } = await client.getInvocation({ invocationId });
    if (invocation?.state === state) return invocation;
    await sleep(25);
  }
  throw new Error(`invocation ${invocationId} never reached state ${InvocationState[state]}`);
}

const waitForInput = (client: Client<typeof AgentService>, invocationId: string) =>
  waitFor(client, invocationId, InvocationState.WAITING_FOR_INPUT);

function only(spans: ReceivedSpan[], predicate: (s: ReceivedSpan) => boolean): ReceivedSpan {
  const found = spans.filter(predicate);
  expect(found, "exactly one such span").toHaveLength(1);
  return found[0]!;
}

describe("an invocation's trace", () => {
  it("is one tree: RPC server span, invoke_agent span, node attempt spans with events", async () => {
    const gw = await startGateway({ agents: [drafting], config: { otlpEndpoint: receiver.url } });
    const json = gw.client("connect-json");
    const grpc = gw.client("grpc");
    let invocationId: string;
    try {
      const { invocation } = await json.startInvocation(
        { agent: "drafting", input: value({ text: "hi" }) },
        { headers: { traceparent: traceparent(TRACE_ID, CALLER_SPAN) } },
      );
      invocationId = invocation!.id;
      // The caller's trace is the invocation's trace, and it says so.
      expect(invocation!.traceId).toBe(TRACE_ID);
      const waiting = await waitForInput(grpc, invocationId);
      await grpc.provideInput({
        invocationId,
        requestId: waiting.pendingInputs[0]!.requestId,
        value: value({ approved: true }),
      });
      const done = await waitFor(grpc, invocationId, InvocationState.SUCCEEDED);
      expect(done.traceId).toBe(TRACE_ID);
    } finally {
      // Closing flushes what the batch processor holds.
      await gw.close();
    }

    const spans = receiver.spans().filter((s) => s.traceId === TRACE_ID);
    expect(spans[0]?.resource["service.name"]).toBe("agent-gateway");

    const rpc = only(spans, (s) => s.name === "agent.v1.AgentService/StartInvocation");
    expect(rpc.kind).toBe(SERVER);
    expect(rpc.parentSpanId).toBe(CALLER_SPAN);
    expect(rpc.attributes).toMatchObject({
      "rpc.system": "connect_rpc",
      "rpc.service": "agent.v1.AgentService",
      "rpc.method": "StartInvocation",
      "agent_gateway.invocation.id": invocationId,
    });
    expect(rpc.attributes).not.toHaveProperty("rpc.connect_rpc.error_code");

    const invoke = only(spans, (s) => s.name === "invoke_agent drafting");
    expect(invoke.kind).toBe(INTERNAL);
    expect(invoke.parentSpanId).toBe(rpc.spanId);
    expect(invoke.spanId).toBe(spanIdOf(invocationId));
    expect(invoke.attributes).toMatchObject({
      "gen_ai.operation.name": "invoke_agent",
      "gen_ai.agent.name": "drafting",
      // The agent's id is its unique name; the invocation has its own.
      "gen_ai.agent.id": "drafting",
      "gen_ai.agent.description": drafting.description,
      "agent_gateway.invocation.id": invocationId,
      "agent_gateway.invocation.state": "succeeded",
      "agent_gateway.tenant": "default",
    });

    const nodes = spans
      .filter((s) => s.parentSpanId === invoke.spanId)
      .map((s) => ({
        name: s.name,
        task: s.attributes["agent_gateway.task.id"],
        attempt: s.attributes["agent_gateway.node.attempt"],
        error: s.status.code === STATUS_ERROR ? s.status.message : undefined,
        events: s.events.map((e) => e.name),
      }))
      .sort((a, b) => `${a.task}.${a.attempt}`.localeCompare(`${b.task}.${b.attempt}`));
    expect(nodes).toEqual([
      {
        name: "node draft",
        task: "t1",
        attempt: 1,
        error: "first drafts are never good",
        events: ["chunk"],
      },
      { name: "node draft", task: "t1", attempt: 2, error: undefined, events: ["chunk", "chunk"] },
      {
        name: "node check",
        task: "t2",
        attempt: 1,
        error: undefined,
        events: ["input_requested", "input_provided"],
      },
    ]);

    // The answer came over gRPC with no traceparent: a trace of its own,
    // with the gRPC attributes.
    const provide = only(
      receiver.spans(),
      (s) => s.name === "agent.v1.AgentService/ProvideInput" && s.traceId !== TRACE_ID,
    );
    expect(provide.parentSpanId).toBe("");
    expect(provide.attributes).toMatchObject({
      "rpc.system": "grpc",
      "rpc.method": "ProvideInput",
      "rpc.grpc.status_code": 0,
    });
  });

  it("continues a traceparent sent as gRPC metadata, and records status codes", async () => {
    const gw = await startGateway({ config: { otlpEndpoint: receiver.url } });
    const traceId = "5bf92f3577b34da6a3ce929d0e0e4737";
    const grpc = gw.client("grpc");
    const web = gw.client("grpc-web");
    let invocationId: string;
    try {
      const { invocation } = await grpc.invoke(
        { agent: "echo", input: value({ text: "hello" }) },
        { headers: { traceparent: traceparent(traceId, CALLER_SPAN) } },
      );
      invocationId = invocation!.id;
      expect(invocation?.traceId).toBe(traceId);
      const missing = await failure(
        web.getInvocation(
          { invocationId: "no-such-invocation" },
          { headers: { traceparent: traceparent(traceId, "00f067aa0ba902b8") } },
        ),
      );
      expect(missing.code).toBe(Code.NotFound);
    } finally {
      await gw.close();
    }
    const spans = receiver.spans().filter((s) => s.traceId === traceId);
    const invoke = only(spans, (s) => s.name === "agent.v1.AgentService/Invoke");
    expect(invoke.parentSpanId).toBe(CALLER_SPAN);
    expect(invoke.attributes).toMatchObject({ "rpc.system": "grpc", "rpc.grpc.status_code": 0 });
    const agent = only(spans, (s) => s.name === "invoke_agent echo");
    expect(agent.parentSpanId).toBe(invoke.spanId);
    expect(agent.attributes["agent_gateway.invocation.id"]).toBe(invocationId);

    // gRPC-web is gRPC to the conventions; NOT_FOUND is the caller's
    // business, so the span is not an error.
    const get = only(spans, (s) => s.name === "agent.v1.AgentService/GetInvocation");
    expect(get.parentSpanId).toBe("00f067aa0ba902b8");
    expect(get.attributes).toMatchObject({
      "rpc.system": "grpc",
      "rpc.grpc.status_code": Code.NotFound,
      "error.type": "not_found",
    });
    expect(get.status.code).not.toBe(STATUS_ERROR);
  });

  it("without a traceparent, an invocation gets the trace of the RPC that started it", async () => {
    const gw = await startGateway({ config: { otlpEndpoint: receiver.url } });
    let traceId: string;
    try {
      const { invocation } = await gw
        .client("connect-binary")
        .invoke({ agent: "echo", input: value({ text: "x" }) });
      traceId = invocation!.traceId;
      expect(traceId).toMatch(/^[0-9a-f]{32}$/);
    } finally {
      await gw.close();
    }
    const spans = receiver.spans().filter((s) => s.traceId === traceId);
    const rpc = only(spans, (s) => s.name === "agent.v1.AgentService/Invoke");
    expect(rpc.parentSpanId).toBe("");
    expect(only(spans, (s) => s.name === "invoke_agent echo").parentSpanId).toBe(rpc.spanId);
  });
});

describe("an invocation resumed after a restart", () => {
  it("starts a new trace whose invoke_agent span links to the first run's span", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "agent-gateway-trace-"));
    const config = {
      ...defaultConfig(),
      port: 0,
      dataDir,
      sqliteSynchronous: "normal" as const,
      otlpEndpoint: receiver.url,
      // Stop the waiting invocation at once instead of granting it time.
      shutdownGraceMs: 0,
    };
    const clientOf = (port: number) =>
      createClient(
        AgentService,
        createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "1.1" }),
      );
    let invocationId: string;
    let firstTrace: string;
    try {
      const first = createGateway({ config });
      const a = await first.start();
      try {
        const client = clientOf(a.port);
        const { invocation } = await client.startInvocation({ agent: "approval", input: value({}) });
        invocationId = invocation!.id;
        firstTrace = invocation!.traceId;
        await waitForInput(client, invocationId);
      } finally {
        await first.close();
      }

      const second = createGateway({ config });
      const b = await second.start();
      try {
        const client = clientOf(b.port);
        const waiting = await waitForInput(client, invocationId);
        // The invocation keeps the trace id it was started with.
        expect(waiting.traceId).toBe(firstTrace);
        await client.provideInput({
          invocationId,
          requestId: waiting.pendingInputs[0]!.requestId,
          value: value({ approved: false }),
        });
        await waitFor(client, invocationId, InvocationState.SUCCEEDED);
      } finally {
        await second.close();
      }
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }

    const runs = receiver
      .spans()
      .filter((s) => s.attributes["agent_gateway.invocation.id"] === invocationId && s.name === "invoke_agent approval");
    expect(runs).toHaveLength(2);
    const [interrupted, resumed] = [
      only(runs, (s) => s.traceId === firstTrace),
      only(runs, (s) => s.traceId !== firstTrace),
    ];
    expect(interrupted.attributes["agent_gateway.interrupted"]).toBe(true);
    expect(resumed.parentSpanId).toBe("");
    expect(resumed.attributes).toMatchObject({
      "agent_gateway.invocation.resumed": true,
      "agent_gateway.invocation.state": "succeeded",
    });
    expect(resumed.links).toEqual([
      {
        traceId: firstTrace,
        spanId: interrupted.spanId,
        attributes: { "agent_gateway.invocation.id": invocationId },
      },
    ]);
    // The node that was waiting when the first gateway stopped runs again
    // under the new span, and hears the answer there.
    const ask = receiver
      .spans()
      .filter((s) => s.parentSpanId === resumed.spanId && s.name === "node ask");
    expect(ask).toHaveLength(1);
    expect(ask[0]!.attributes["agent_gateway.node.attempt"]).toBe(2);
    expect(resumed.events.map((e) => e.name)).toEqual(["node_interrupted", "input_provided"]);
  });
});

describe("the invoke_agent span's GenAI attributes", () => {
  const record = (agent: string, id: string): InvocationRecord => ({
    id,
    tenant: "acme",
    agent,
    state: "running",
    input: {},
    metadata: {},
    onDisconnect: "continue",
    lastSequence: 1,
    createdAt: 0,
    updatedAt: 0,
  });

  it("carry the agent's id and, given the agents, its description", async () => {
    const telemetry = createObservability({
      config: { otlpEndpoint: receiver.url },
      logger: silentLogger(),
      env: {},
      agents: new AgentRegistry([drafting]),
    });
    for (const [agent, id] of [
      ["drafting", "inv-described"],
      ["unknown", "inv-undescribed"],
    ] as const) {
      const run = telemetry.runtimeObserver.begin(record(agent, id), { resumed: false });
      const completed = { type: "completed", result: null } as const;
      run.change({ events: [{ invocationId: id, sequence: 2, time: 0, body: completed }] });
    }
    await telemetry.shutdown();
    const span = (id: string) =>
      only(receiver.spans(), (s) => s.attributes["agent_gateway.invocation.id"] === id);
    expect(span("inv-described").attributes).toMatchObject({
      "gen_ai.operation.name": "invoke_agent",
      "gen_ai.agent.name": "drafting",
      "gen_ai.agent.id": "drafting",
      "gen_ai.agent.description": drafting.description,
    });
    // No description to give: the attribute is left out, not empty.
    const undescribed = span("inv-undescribed").attributes;
    expect(undescribed["gen_ai.agent.id"]).toBe("unknown");
    expect(undescribed).not.toHaveProperty("gen_ai.agent.description");
    // Not applicable: an invocation is not a conversation.
    expect(undescribed).not.toHaveProperty("gen_ai.conversation.id");
  });
});

describe("export settings", () => {
  it("records nothing and exports nowhere when no endpoint is set", async () => {
    const tracing = createTracing({ env: {} });
    expect(tracing.exportUrl).toBeUndefined();
    const span = tracing.tracer.startSpan("anything");
    expect(span.isRecording()).toBe(false);
    // Still a trace id, so that invocations record one.
    expect(span.spanContext().traceId).toMatch(/^[0-9a-f]{32}$/);
    span.end();
    await tracing.shutdown();
    await tracing.shutdown();
  });

  it.each([
    ["OTEL_EXPORTER_OTLP_ENDPOINT", (url: string) => url],
    ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", (url: string) => `${url}/v1/traces`],
  ])("follows %s from the environment", async (variable, valueOf) => {
    const tracing = createTracing({ env: { [variable]: valueOf(receiver.url) } });
    expect(tracing.exportUrl).toBe(`${receiver.url}/v1/traces`);
    const span = tracing.tracer.startSpan(`exported via ${variable}`);
    span.end();
    // Shutdown is the flush; twice is the same promise.
    await Promise.all([tracing.shutdown(), tracing.shutdown()]);
    expect(receiver.spans().map((s) => s.name)).toContain(`exported via ${variable}`);
    expect(receiver.contentTypes().every((t) => t.startsWith("application/json"))).toBe(true);
  });

  it("follows OTEL_EXPORTER_OTLP_PROTOCOL http/protobuf", async () => {
    const tracing = createTracing({
      env: { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf" },
    });
    expect([tracing.exportUrl, tracing.exportProtocol]).toEqual([
      `${receiver.url}/v1/traces`,
      "http/protobuf",
    ]);
    const span = tracing.tracer.startSpan("exported as protobuf");
    span.end();
    await tracing.shutdown();
    // Protobuf keeps strings as they are and ids as raw bytes.
    const body = Buffer.concat(receiver.protobufBodies());
    expect(body.includes("exported as protobuf")).toBe(true);
    expect(body.includes(Buffer.from(span.spanContext().traceId, "hex"))).toBe(true);
  });

  it("follows OTEL_EXPORTER_OTLP_TRACES_PROTOCOL grpc", async () => {
    const collector = await startOtlpGrpcReceiver();
    try {
      const tracing = createTracing({
        env: { OTEL_EXPORTER_OTLP_ENDPOINT: collector.url, OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "grpc" },
      });
      // gRPC names the service in the call, not in the URL.
      expect([tracing.exportUrl, tracing.exportProtocol]).toEqual([collector.url, "grpc"]);
      const span = tracing.tracer.startSpan("exported over grpc");
      span.end();
      await tracing.shutdown();
      const body = Buffer.concat(collector.requests());
      expect(body.includes("exported over grpc")).toBe(true);
      expect(body.includes(Buffer.from(span.spanContext().traceId, "hex"))).toBe(true);
    } finally {
      await collector.close();
    }
  });

  it("exports http/json when the protocol is unknown, and says so", async () => {
    const out: string[] = [];
    const logger = pino({ level: "warn" }, { write: (line: string) => void out.push(line) });
    const tracing = createTracing({
      env: { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL: "carrier-pigeon" },
      logger,
    });
    expect(tracing.exportProtocol).toBe("http/json");
    await tracing.shutdown();
    expect(out.map((line) => JSON.parse(line) as unknown)).toContainEqual(
      expect.objectContaining({ msg: "unknown OTLP protocol", protocol: "carrier-pigeon" }),
    );
  });
});

describe("a gateway process stopped by SIGTERM", () => {
  afterAll(() => stopAll());

  it("exports the spans it still holds before it exits", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "agent-gateway-flush-"));
    try {
      const child = await startChildGateway(["--import", "tsx", "src/main.ts"], {
        PORT: "0",
        HOST: "127.0.0.1",
        DATA_DIR: dataDir,
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
        // Far longer than the test: only the flush at shutdown can send them.
        OTEL_BSP_SCHEDULE_DELAY: "600000",
      });
      const client = createClient(
        AgentService,
        createConnectTransport({ baseUrl: child.baseUrl, httpVersion: "1.1" }),
      );
      const { invocation } = await client.invoke({ agent: "echo", input: value({ text: "flush" }) });
      const exited = new Promise<number | null>((resolve) => child.process.once("exit", resolve));
      child.process.kill("SIGTERM");
      expect(await exited).toBe(0);
      const ours = receiver
        .spans()
        .filter((s) => s.traceId === invocation?.traceId)
        .map((s) => s.name);
      expect(ours).toEqual(
        expect.arrayContaining(["agent.v1.AgentService/Invoke", "invoke_agent echo"]),
      );
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
