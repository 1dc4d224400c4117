import { create, toBinary, type JsonValue } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import {
  InvocationState,
  InvokeRequestSchema,
} from "../../gen/agent/v1/agent_pb.js";
import { defineAgent } from "../../src/runtime/index.js";
import { testAgents } from "../fixtures/agents.js";
import {
  drain,
  envelope,
  failure,
  plain,
  rawGrpc,
  settled,
  value,
  watchUntil,
  type AgentClient,
} from "../helpers/calls.js";
import { PROTOCOLS, startGateway, type TestGateway } from "../helpers/gateway.js";

/**
 * Bad input of every kind, sent as a client would (or, where a client
 * library refuses to, as raw bytes): each is refused with the right code,
 * and the gateway goes on answering normal calls afterwards.
 */

/** Input with a nested path, so an error can name all of it. */
const order = defineAgent({
  name: "order",
  description: "Accepts an order and returns how many items it has.",
  input: z.object({
    order: z.object({
      items: z.array(z.object({ sku: z.string(), qty: z.number().int().min(1) })),
    }),
  }),
  output: z.object({ items: z.number().int() }),
  start: "take",
  nodes: {
    take: (ctx, { order }) => ctx.result({ items: order.items.length }),
  },
});

/** Asks two questions in turn, so a request can be answered while the invocation still waits. */
const twoQuestions = defineAgent({
  name: "two-questions",
  description: "Asks for a first and then a second word.",
  input: z.object({}),
  output: z.object({ first: z.string(), second: z.string() }),
  start: "ask",
  nodes: {
    ask: async (ctx) => {
      const a = await ctx.requestInput({
        prompt: "first word?",
        schema: z.object({ word: z.string() }),
      });
      const b = await ctx.requestInput({
        prompt: "second word?",
        schema: z.object({ word: z.string() }),
      });
      ctx.result({ first: a.word, second: b.word });
    },
  },
});

const SMALL_LIMIT = 64 * 1024;
const INVOKE_PATH = "/agent.v1.AgentService/Invoke";

let gw: TestGateway;
let small: TestGateway;
let client: AgentClient;

beforeAll(async () => {
  [gw, small] = await Promise.all([
    startGateway({ agents: [...testAgents, order, twoQuestions] }),
    startGateway({ config: { maxMessageBytes: SMALL_LIMIT } }),
  ]);
  client = gw.client("grpc");
});
afterAll(async () => {
  await Promise.all([gw?.close(), small?.close()]);
});

/** After every bad call, both gateways still answer, over HTTP/1.1 and h2c. */
let checks = 0;
afterEach(async () => {
  for (const target of [gw, small]) {
    for (const protocol of ["connect-json", "grpc"] as const) {
      const input = { check: ++checks };
      const { invocation } = await target.client(protocol).invoke({
        agent: "echo",
        input: value(input),
      });
      expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
      expect(plain(invocation?.result)).toEqual(input);
    }
  }
});

/** POSTs a Connect unary request exactly as given. */
async function postConnect(
  path: string,
  contentType: string,
  body: string | Uint8Array,
  target = gw,
) {
  const res = await fetch(`${target.baseUrl}${path}`, {
    method: "POST",
    headers: { "content-type": contentType },
    body,
  });
  const text = await res.text();
  let json: { code?: string; message?: string; invocation?: unknown } = {};
  if (res.headers.get("content-type")?.includes("json") && text !== "") {
    json = JSON.parse(text) as typeof json;
  }
  return { status: res.status, text, json };
}

async function invocationCount(agent: string): Promise<number> {
  const { invocations } = await client.listInvocations({ agent, pageSize: 500 });
  return invocations.length;
}

describe.each(PROTOCOLS)("unknown agent over %s", (protocol) => {
  it("Invoke, StartInvocation and InvokeStream answer NOT_FOUND", async () => {
    const c = gw.client(protocol);
    const request = { agent: "no-such-agent", input: value({}) };
    for (const error of [
      await failure(c.invoke(request)),
      await failure(c.startInvocation(request)),
      await failure(drain(c.invokeStream(request))),
      await failure(c.getAgent({ name: "no-such-agent" })),
    ]) {
      expect(error.code).toBe(Code.NotFound);
      expect(error.message).toContain("no-such-agent");
    }
  });

  it("an empty agent name is INVALID_ARGUMENT", async () => {
    const error = await failure(gw.client(protocol).invoke({ agent: "" }));
    expect(error.code).toBe(Code.InvalidArgument);
    expect(error.message).toContain("agent");
  });
});

describe("input that violates the agent's schema", () => {
  it.each(PROTOCOLS)("names the failing field over %s", async (protocol) => {
    const before = await invocationCount("ticker");
    const error = await failure(
      gw.client(protocol).invoke({ agent: "ticker", input: value({ count: "three" }) }),
    );
    expect(error.code).toBe(Code.InvalidArgument);
    expect(error.message).toMatch(/\bcount\b/);
    // A refused start leaves nothing behind.
    expect(await invocationCount("ticker")).toBe(before);
  });

  it("names a missing required field", async () => {
    const error = await failure(client.invoke({ agent: "ticker", input: value({}) }));
    expect(error.code).toBe(Code.InvalidArgument);
    expect(error.message).toMatch(/\bcount\b/);
  });

  it("names a field that is out of range, not the fields that are fine", async () => {
    const error = await failure(
      client.invoke({ agent: "wordfreq", input: value({ text: "a b", top: 0 }) }),
    );
    expect(error.code).toBe(Code.InvalidArgument);
    expect(error.message).toMatch(/\btop\b/);
    expect(error.message).not.toMatch(/\btext\b/);
  });

  it("names the whole path of a nested field", async () => {
    const input = {
      order: { items: [{ sku: "a", qty: 1 }, { sku: "b", qty: 0 }] },
    };
    const error = await failure(client.invoke({ agent: "order", input: value(input) }));
    expect(error.code).toBe(Code.InvalidArgument);
    expect(error.message).toContain("order.items.1.qty");
    // The same input, corrected, is accepted.
    input.order.items[1]!.qty = 2;
    const { invocation } = await client.invoke({ agent: "order", input: value(input) });
    expect(plain(invocation?.result)).toEqual({ items: 2 });
  });

  it("refuses a non-object input to an agent that wants an object", async () => {
    const error = await failure(client.invoke({ agent: "ticker", input: value("five") }));
    expect(error.code).toBe(Code.InvalidArgument);
  });

  it("refuses a negative or zero run timeout", async () => {
    for (const seconds of [-1n, 0n]) {
      const error = await failure(
        client.invoke({ agent: "echo", input: value({}), timeout: { seconds } }),
      );
      expect(error.code).toBe(Code.InvalidArgument);
      expect(error.message).toContain("timeout");
    }
  });
});

describe("Connect requests with a bad body (raw HTTP)", () => {
  it("malformed JSON is invalid_argument with HTTP 400", async () => {
    const res = await postConnect(INVOKE_PATH, "application/json", '{"agent": "echo", ');
    expect(res.status).toBe(400);
    expect(res.json.code).toBe("invalid_argument");
  });

  it("a JSON field of the wrong type is invalid_argument with HTTP 400", async () => {
    const res = await postConnect(INVOKE_PATH, "application/json", '{"agent": 5}');
    expect(res.status).toBe(400);
    expect(res.json.code).toBe("invalid_argument");
  });

  it("an unknown JSON field is ignored, as connect-es does by default", async () => {
    const res = await postConnect(
      INVOKE_PATH,
      "application/json",
      JSON.stringify({ agent: "ticker", input: { count: 1, extra: true }, noSuchField: 1 }),
    );
    expect(res.status).toBe(200);
    const invocation = res.json.invocation as { state: string; input: unknown };
    expect(invocation.state).toBe("INVOCATION_STATE_SUCCEEDED");
    // The agent's schema drops the unknown key from its input.
    expect(invocation.input).toEqual({ count: 1, intervalMs: 0 });
  });

  it("a truncated protobuf body is refused", async () => {
    const whole = toBinary(
      InvokeRequestSchema,
      create(InvokeRequestSchema, { agent: "echo", input: value({ text: "hi" }) }),
    );
    const res = await postConnect(INVOKE_PATH, "application/proto", whole.subarray(0, 3));
    // connect-es reports bytes that do not decode as INTERNAL (as grpc-go
    // and grpc-java do), not INVALID_ARGUMENT: the request never reaches
    // our handlers, so the gateway cannot choose the code.
    expect(res.json.code).toBe("internal");
    expect(res.status).toBe(500);
    // The whole message is accepted.
    const ok = await postConnect(INVOKE_PATH, "application/proto", whole);
    expect(ok.status).toBe(200);
  });

  it("a content type that is not Connect's is HTTP 415", async () => {
    for (const type of ["text/plain", "application/xml", "application/connect+json"]) {
      const res = await postConnect(INVOKE_PATH, type, '{"agent": "echo"}');
      expect(res.status, type).toBe(415);
    }
  });

  it("GET on a method with side effects is HTTP 405", async () => {
    const res = await fetch(`${gw.baseUrl}${INVOKE_PATH}?encoding=json&message={}`);
    await res.arrayBuffer();
    expect(res.status).toBe(405);
  });

  it("an unknown method is HTTP 404", async () => {
    const res = await postConnect("/agent.v1.AgentService/Explode", "application/json", "{}");
    expect(res.status).toBe(404);
  });
});

describe("gRPC over h2c with a bad length-prefixed message (raw HTTP/2)", () => {
  const message = toBinary(
    InvokeRequestSchema,
    create(InvokeRequestSchema, { agent: "echo", input: value({ text: "hi" }) }),
  );

  it("a well-formed call succeeds, so the raw client is right", async () => {
    const res = await rawGrpc(gw.baseUrl, INVOKE_PATH, envelope(message));
    expect(res.grpcStatus).toBe(0);
    expect(res.status).toBe(200);
    expect(res.body.length).toBeGreaterThan(5);
  });

  it("a message shorter than its prefix promises is INVALID_ARGUMENT", async () => {
    const res = await rawGrpc(
      gw.baseUrl,
      INVOKE_PATH,
      envelope(message, { length: message.length + 10 }),
    );
    expect(res.grpcStatus).toBe(Code.InvalidArgument);
    expect(res.grpcMessage).toContain("envelope");
  });

  it("a prefix cut short is INVALID_ARGUMENT", async () => {
    const res = await rawGrpc(gw.baseUrl, INVOKE_PATH, Buffer.from([0, 0, 0]));
    expect(res.grpcStatus).toBe(Code.InvalidArgument);
  });

  it("garbage inside a complete envelope is refused as INTERNAL", async () => {
    // As for Connect binary above: connect-es, like grpc-go, reports a
    // message that does not decode as INTERNAL.
    const res = await rawGrpc(
      gw.baseUrl,
      INVOKE_PATH,
      envelope(Buffer.from([0xff, 0xff, 0xff, 0xff])),
    );
    expect(res.grpcStatus).toBe(Code.Internal);
  });

  it("a message truncated inside a field is refused as INTERNAL", async () => {
    const res = await rawGrpc(gw.baseUrl, INVOKE_PATH, envelope(message.subarray(0, 3)));
    expect(res.grpcStatus).toBe(Code.Internal);
  });

  it("a compressed flag without grpc-encoding is refused", async () => {
    // The gRPC protocol spec asks for INTERNAL here.
    const res = await rawGrpc(gw.baseUrl, INVOKE_PATH, envelope(message, { flags: 1 }));
    expect(res.grpcStatus).toBe(Code.Internal);
  });

  it("a wrong content type on HTTP/2 is HTTP 415", async () => {
    const res = await rawGrpc(gw.baseUrl, INVOKE_PATH, envelope(message), {
      "content-type": "application/octet-stream",
    });
    expect(res.status).toBe(415);
  });
});

describe("oversized messages", () => {
  const text = (bytes: number) => value({ text: "x".repeat(bytes) });

  it.each(PROTOCOLS)("past config.maxMessageBytes are RESOURCE_EXHAUSTED over %s", async (protocol) => {
    const c = small.client(protocol);
    const error = await failure(c.invoke({ agent: "echo", input: text(SMALL_LIMIT + 1024) }));
    expect(error.code).toBe(Code.ResourceExhausted);
    // Below the limit the same call goes through.
    const { invocation } = await c.invoke({ agent: "echo", input: text(SMALL_LIMIT / 2) });
    expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
  });

  it("a raw Connect request past the limit is resource_exhausted", async () => {
    const body = JSON.stringify({ agent: "echo", input: { text: "x".repeat(SMALL_LIMIT) } });
    const res = await postConnect(INVOKE_PATH, "application/json", body, small);
    expect(res.json.code).toBe("resource_exhausted");
    expect(res.status).toBe(429);
  });

  it("the default limit is 4 MiB", async () => {
    const MiB = 1024 * 1024;
    const error = await failure(
      client.startInvocation({ agent: "echo", input: text(4 * MiB + 1024) }),
    );
    expect(error.code).toBe(Code.ResourceExhausted);
    expect(error.message).toContain(String(4 * MiB));
    const { invocation } = await client.startInvocation({
      agent: "echo",
      input: text(3 * MiB),
    });
    expect((await settled(client, invocation!.id)).state).toBe(InvocationState.SUCCEEDED);
  });
});

describe("ProvideInput with a bad answer or request", () => {
  async function waitingApproval() {
    const { invocation } = await client.invoke({ agent: "approval", input: value({}) });
    expect(invocation?.state).toBe(InvocationState.WAITING_FOR_INPUT);
    const request = invocation!.pendingInputs[0]!;
    return { id: invocation!.id, requestId: request.requestId };
  }

  it("an answer of the wrong shape is INVALID_ARGUMENT naming the field, and changes nothing", async () => {
    const { id, requestId } = await waitingApproval();
    const answers: JsonValue[] = [{ approved: "yes" }, {}, "yes"];
    for (const answer of answers) {
      const error = await failure(
        client.provideInput({ invocationId: id, requestId, value: value(answer) }),
      );
      expect(error.code, JSON.stringify(answer)).toBe(Code.InvalidArgument);
      if (typeof answer === "object") expect(error.message).toContain("approved");
    }
    const { invocation } = await client.getInvocation({ invocationId: id });
    expect(invocation?.state).toBe(InvocationState.WAITING_FOR_INPUT);
    expect(invocation?.pendingInputs.map((r) => r.requestId)).toEqual([requestId]);
    // The request can still be answered properly.
    await client.provideInput({
      invocationId: id,
      requestId,
      value: value({ approved: true }),
    });
    expect(plain((await settled(client, id)).result)).toEqual({ approved: true });
  });

  it("answering twice is FAILED_PRECONDITION", async () => {
    const { id, requestId } = await waitingApproval();
    await client.provideInput({ invocationId: id, requestId, value: value({ approved: false }) });
    await settled(client, id);
    const error = await failure(
      client.provideInput({ invocationId: id, requestId, value: value({ approved: true }) }),
    );
    expect(error.code).toBe(Code.FailedPrecondition);
    // The first answer stands.
    const { invocation } = await client.getInvocation({ invocationId: id });
    expect(plain(invocation?.result)).toEqual({ approved: false });
  });

  it("answering a request that is no longer pending, while the invocation still waits, is FAILED_PRECONDITION", async () => {
    const { invocation } = await client.invoke({ agent: "two-questions", input: value({}) });
    const id = invocation!.id;
    const first = invocation!.pendingInputs[0]!.requestId;
    await client.provideInput({ invocationId: id, requestId: first, value: value({ word: "one" }) });
    const seen = await watchUntil(
      client,
      id,
      (e) => e.kind.case === "inputRequested" && e.kind.value.requestId !== first,
    );
    const second = seen.at(-1)!.kind.value as { requestId: string };

    const error = await failure(
      client.provideInput({ invocationId: id, requestId: first, value: value({ word: "again" }) }),
    );
    expect(error.code).toBe(Code.FailedPrecondition);
    const { invocation: waiting } = await client.getInvocation({ invocationId: id });
    expect(waiting?.state).toBe(InvocationState.WAITING_FOR_INPUT);
    expect(waiting?.pendingInputs.map((r) => r.requestId)).toEqual([second.requestId]);

    await client.provideInput({
      invocationId: id,
      requestId: second.requestId,
      value: value({ word: "two" }),
    });
    expect(plain((await settled(client, id)).result)).toEqual({ first: "one", second: "two" });
  });

  it("answering a cancelled invocation is FAILED_PRECONDITION", async () => {
    const { id, requestId } = await waitingApproval();
    await client.cancelInvocation({ invocationId: id });
    const error = await failure(
      client.provideInput({ invocationId: id, requestId, value: value({ approved: true }) }),
    );
    expect(error.code).toBe(Code.FailedPrecondition);
  });

  it("an unknown request id is NOT_FOUND; an empty one INVALID_ARGUMENT", async () => {
    const { id, requestId } = await waitingApproval();
    const unknown = await failure(
      client.provideInput({ invocationId: id, requestId: "t99.0", value: value({ approved: true }) }),
    );
    expect(unknown.code).toBe(Code.NotFound);
    const empty = await failure(
      client.provideInput({ invocationId: id, requestId: "", value: value({ approved: true }) }),
    );
    expect(empty.code).toBe(Code.InvalidArgument);
    expect(empty.message).toContain("request_id");
    await client.cancelInvocation({ invocationId: id, reason: `cleanup of ${requestId}` });
  });
});

describe.each(PROTOCOLS)("invocation ids over %s", (protocol) => {
  const calls = (c: AgentClient, invocationId: string) => ({
    GetInvocation: () => c.getInvocation({ invocationId }),
    CancelInvocation: () => c.cancelInvocation({ invocationId }),
    ProvideInput: () =>
      c.provideInput({ invocationId, requestId: "t1.0", value: value(true) }),
    WatchInvocation: () => drain(c.watchInvocation({ invocationId })),
  });

  it("an empty invocation_id is INVALID_ARGUMENT", async () => {
    for (const [name, call] of Object.entries(calls(gw.client(protocol), ""))) {
      const error = await failure(call);
      expect(error.code, name).toBe(Code.InvalidArgument);
      expect(error.message, name).toContain("invocation_id");
    }
  });

  it("an unknown invocation is NOT_FOUND", async () => {
    const id = "00000000-0000-4000-8000-000000000000";
    for (const [name, call] of Object.entries(calls(gw.client(protocol), id))) {
      const error = await failure(call);
      expect(error.code, name).toBe(Code.NotFound);
      expect(error.message, name).toContain(id);
    }
  });

  it("a negative after_sequence is INVALID_ARGUMENT", async () => {
    const { invocation } = await gw.client(protocol).invoke({ agent: "echo", input: value({}) });
    const error = await failure(
      drain(gw.client(protocol).watchInvocation({ invocationId: invocation!.id, afterSequence: -1n })),
    );
    expect(error.code).toBe(Code.InvalidArgument);
  });
});
