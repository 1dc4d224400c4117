import { subscribe, unsubscribe } from "node:diagnostics_channel";
import type { ClientRequest } from "node:http";
import { fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import {
  ValueSchema,
  timestampMs,
  type Value,
} from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  AgentService,
  InvocationState,
  OnDisconnect,
  type Event,
  type Invocation,
} from "../../gen/agent/v1/agent_pb.js";
import { PROTOCOLS, startGateway, type TestGateway } from "../helpers/gateway.js";

/**
 * Every RPC of AgentService over every protocol a client may speak to the
 * one port: Connect JSON, Connect binary, gRPC and gRPC-web.
 */

type AgentClient = Client<typeof AgentService>;

/** A bound for waiting on a stream or an RPC, never an assertion. */
const CALL_TIMEOUT_MS = 20_000;

const value = (json: JsonValue): Value => fromJson(ValueSchema, json);
const json = (v: Value | undefined): JsonValue =>
  v === undefined ? null : toJson(ValueSchema, v);

/** The events of a stream that are stored (heartbeats have sequence 0). */
async function collect(
  stream: AsyncIterable<{ event?: Event }>,
  until?: (event: Event) => boolean,
): Promise<Event[]> {
  const events: Event[] = [];
  for await (const { event } of stream) {
    if (!event || event.kind.case === "heartbeat") continue;
    events.push(event);
    if (until?.(event)) break;
  }
  return events;
}

function sequences(events: Event[]): number[] {
  return events.map((e) => Number(e.sequence));
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

/** The events of one invocation: numbered 1..n, started first, one end. */
function expectCompleteHistory(events: Event[], id: string): void {
  expect(sequences(events)).toEqual(range(1, events.length));
  expect(events[0]?.kind.case).toBe("started");
  expect(events.every((e) => e.invocationId === id)).toBe(true);
  const ends = events.filter((e) =>
    ["completed", "failed", "cancelled"].includes(e.kind.case ?? ""),
  );
  expect(ends).toHaveLength(1);
  expect(events.at(-1)).toBe(ends[0]);
}

function chunks(events: Event[]): JsonValue[] {
  return events.flatMap((e) =>
    e.kind.case === "chunk" ? [json(e.kind.value.data)] : [],
  );
}

async function expectCode(promise: Promise<unknown>, code: Code): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ConnectError);
  expect((error as ConnectError).code).toBe(code);
}

async function drain(stream: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of stream) {
    // nothing to keep
  }
}

describe.each(PROTOCOLS)("AgentService over %s", (protocol) => {
  let gw: TestGateway;
  let client: AgentClient;
  beforeAll(async () => {
    gw = await startGateway();
    client = gw.client(protocol);
  });
  afterAll(async () => {
    await gw?.close();
  });

  describe("ListAgents and GetAgent", () => {
    it("lists the built-in agents with their schemas", async () => {
      const { agents } = await client.listAgents({});
      const names = agents.map((a) => a.name);
      expect(names).toEqual(
        expect.arrayContaining(["echo", "ticker", "approval", "wordfreq"]),
      );
      const ticker = agents.find((a) => a.name === "ticker");
      expect(ticker?.description).toContain("chunks");
      expect(ticker?.startNode).toBe("tick");
      expect(ticker?.nodes).toEqual(["tick"]);
      const properties = ticker?.inputSchema?.properties as
        | Record<string, unknown>
        | undefined;
      expect(Object.keys(properties ?? {}).sort()).toEqual(["count", "intervalMs"]);
      expect(ticker?.outputSchema?.type).toBe("object");
    });

    it("gets one agent", async () => {
      const { agent } = await client.getAgent({ name: "wordfreq" });
      expect(agent?.name).toBe("wordfreq");
      expect(agent?.startNode).toBe("split");
      expect([...(agent?.nodes ?? [])].sort()).toEqual(["count", "merge", "split"]);
      expect(agent?.inputSchema?.required).toEqual(["text"]);
    });

    it("answers NOT_FOUND for an unknown agent", async () => {
      await expectCode(client.getAgent({ name: "no-such-agent" }), Code.NotFound);
    });
  });

  describe("Invoke", () => {
    it("runs echo to the end and returns its result", async () => {
      const input = { text: "hello", n: 3, nested: { ok: true, list: [1, "two"] } };
      const { invocation } = await client.invoke(
        {
          agent: "echo",
          input: value(input),
          metadata: { caller: protocol },
        },
        { timeoutMs: CALL_TIMEOUT_MS },
      );
      expect(invocation?.id).toMatch(/\S/);
      expect(invocation?.agent).toBe("echo");
      expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
      expect(json(invocation?.input)).toEqual(input);
      expect(json(invocation?.result)).toEqual(input);
      expect(invocation?.error).toBeUndefined();
      expect(invocation?.metadata).toEqual({ caller: protocol });
      expect(invocation?.onDisconnect).toBe(OnDisconnect.CONTINUE);
      expect(invocation?.finishTime).toBeDefined();
      // started, node_started, chunk, node_finished, completed
      expect(invocation?.lastSequence).toBe(5n);
    });

    it("runs wordfreq's fan-out and fan-in", async () => {
      const text = "the cat and the hat\n\nthe bat and a cat\n\nThe end";
      const { invocation } = await client.invoke(
        { agent: "wordfreq", input: value({ text, top: 3 }) },
        { timeoutMs: CALL_TIMEOUT_MS },
      );
      expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
      expect(json(invocation?.result)).toEqual({
        words: [
          ["the", 4],
          ["and", 2],
          ["cat", 2],
        ],
      });
      // The schema's default is applied to the stored input.
      const { invocation: defaults } = await client.invoke(
        { agent: "wordfreq", input: value({ text: "b a b" }) },
        { timeoutMs: CALL_TIMEOUT_MS },
      );
      expect(json(defaults?.input)).toEqual({ text: "b a b", top: 10 });
      expect(json(defaults?.result)).toEqual({ words: [["b", 2], ["a", 1]] });
    });

    it("answers NOT_FOUND for an unknown agent", async () => {
      await expectCode(
        client.invoke({ agent: "no-such-agent", input: value({}) }),
        Code.NotFound,
      );
    });

    it("answers INVALID_ARGUMENT for input the schema refuses", async () => {
      const error = await client
        .invoke({ agent: "ticker", input: value({ count: "three" }) })
        .catch((e: unknown) => ConnectError.from(e));
      expect(error).toBeInstanceOf(ConnectError);
      expect((error as ConnectError).code).toBe(Code.InvalidArgument);
      expect((error as ConnectError).rawMessage).toContain("count");
    });

    it("returns an invocation that waits for input", async () => {
      const { invocation } = await client.invoke(
        { agent: "approval", input: value({ subject: "the budget" }) },
        { timeoutMs: CALL_TIMEOUT_MS },
      );
      expect(invocation?.state).toBe(InvocationState.WAITING_FOR_INPUT);
      expect(invocation?.pendingInputs).toHaveLength(1);
      expect(invocation?.pendingInputs[0]?.prompt).toBe(
        "Do you approve the budget?",
      );
      await client.cancelInvocation({ invocationId: invocation?.id ?? "" });
    });
  });

  describe("StartInvocation, WatchInvocation and GetInvocation", () => {
    it("starts in the background; watching replays every event", async () => {
      const { invocation } = await client.startInvocation({
        agent: "ticker",
        input: value({ count: 3, intervalMs: 10 }),
        idempotencyKey: `start-${protocol}`,
      });
      const id = invocation?.id ?? "";
      expect(id).toMatch(/\S/);
      expect(invocation?.state).toBe(InvocationState.QUEUED);
      expect(invocation?.idempotencyKey).toBe(`start-${protocol}`);
      expect(invocation?.lastSequence).toBe(1n);

      const events = await collect(
        client.watchInvocation(
          { invocationId: id, afterSequence: 0n },
          { timeoutMs: CALL_TIMEOUT_MS },
        ),
      );
      expectCompleteHistory(events, id);
      const started = events[0]?.kind;
      expect(started?.case === "started" && started.value.invocation?.id).toBe(id);
      expect(chunks(events)).toEqual([{ tick: 1 }, { tick: 2 }, { tick: 3 }]);
      const last = events.at(-1)?.kind;
      expect(last?.case).toBe("completed");
      expect(last?.case === "completed" && json(last.value.result)).toEqual({
        count: 3,
      });

      const { invocation: got } = await client.getInvocation({ invocationId: id });
      expect(got?.state).toBe(InvocationState.SUCCEEDED);
      expect(json(got?.result)).toEqual({ count: 3 });
      expect(got?.lastSequence).toBe(BigInt(events.length));
      expect(got?.finishTime).toBeDefined();
      expect(timestampMs(got!.finishTime!)).toBeGreaterThanOrEqual(
        timestampMs(got!.createTime!),
      );

      // The same idempotency key names the same invocation.
      const { invocation: again } = await client.startInvocation({
        agent: "ticker",
        input: value({ count: 3, intervalMs: 10 }),
        idempotencyKey: `start-${protocol}`,
      });
      expect(again?.id).toBe(id);
      expect(again?.state).toBe(InvocationState.SUCCEEDED);
    });

    it("watches from after a sequence, with no gap", async () => {
      const { invocation } = await client.invoke(
        { agent: "ticker", input: value({ count: 4 }) },
        { timeoutMs: CALL_TIMEOUT_MS },
      );
      const id = invocation?.id ?? "";
      const last = Number(invocation?.lastSequence);
      expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
      const tail = await collect(
        client.watchInvocation(
          { invocationId: id, afterSequence: 3n },
          { timeoutMs: CALL_TIMEOUT_MS },
        ),
      );
      expect(sequences(tail)).toEqual(range(4, last));
      expect(tail.at(-1)?.kind.case).toBe("completed");
    });

    it("answers NOT_FOUND for an unknown invocation", async () => {
      const unknown = "00000000-0000-4000-8000-000000000000";
      await expectCode(client.getInvocation({ invocationId: unknown }), Code.NotFound);
      await expectCode(
        drain(client.watchInvocation({ invocationId: unknown })),
        Code.NotFound,
      );
      await expectCode(
        client.cancelInvocation({ invocationId: unknown }),
        Code.NotFound,
      );
      await expectCode(
        client.provideInput({
          invocationId: unknown,
          requestId: "r1",
          value: value({ approved: true }),
        }),
        Code.NotFound,
      );
    });

    it("answers INVALID_ARGUMENT without an invocation id", async () => {
      await expectCode(client.getInvocation({ invocationId: "" }), Code.InvalidArgument);
    });
  });

  describe("InvokeStream", () => {
    it("streams every event, with the id in a response header", async () => {
      let headerId: string | null = null;
      const events = await collect(
        client.invokeStream(
          { agent: "ticker", input: value({ count: 3 }) },
          {
            timeoutMs: CALL_TIMEOUT_MS,
            onHeader: (header) => {
              headerId = header.get("agent-invocation-id");
            },
          },
        ),
      );
      const started = events[0]?.kind;
      const id = started?.case === "started" ? started.value.invocation?.id : undefined;
      expect(id).toMatch(/\S/);
      expect(headerId).toBe(id);
      expectCompleteHistory(events, id ?? "");
      expect(events.map((e) => e.kind.case)).toEqual([
        "started",
        "nodeStarted",
        "chunk",
        "chunk",
        "chunk",
        "nodeFinished",
        "completed",
      ]);
      expect(chunks(events)).toEqual([{ tick: 1 }, { tick: 2 }, { tick: 3 }]);
      const last = events.at(-1)?.kind;
      expect(last?.case === "completed" && json(last.value.result)).toEqual({
        count: 3,
      });

      const { invocation } = await client.getInvocation({ invocationId: id ?? "" });
      expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
      expect(invocation?.lastSequence).toBe(BigInt(events.length));
    });

    it("streams a graph with parallel nodes, numbered without gaps", async () => {
      const text = Array.from({ length: 5 }, (_, i) => `w${i} common`).join("\n\n");
      const events = await collect(
        client.invokeStream(
          { agent: "wordfreq", input: value({ text, top: 1 }) },
          { timeoutMs: CALL_TIMEOUT_MS },
        ),
      );
      const started = events[0]?.kind;
      const id = started?.case === "started" ? started.value.invocation?.id : "";
      expectCompleteHistory(events, id ?? "");
      const finished = events.flatMap((e) =>
        e.kind.case === "nodeFinished" ? [e.kind.value.node] : [],
      );
      expect(finished.filter((n) => n === "count")).toHaveLength(5);
      expect(finished.at(-1)).toBe("merge");
      const last = events.at(-1)?.kind;
      expect(last?.case === "completed" && json(last.value.result)).toEqual({
        words: [["common", 5]],
      });
    });

    it("answers NOT_FOUND for an unknown agent", async () => {
      await expectCode(
        drain(client.invokeStream({ agent: "no-such-agent", input: value({}) })),
        Code.NotFound,
      );
    });
  });

  describe("CancelInvocation", () => {
    it("cancels a running invocation, idempotently", async () => {
      const { invocation } = await client.startInvocation({
        agent: "ticker",
        input: value({ count: 1_000_000, intervalMs: 20 }),
      });
      const id = invocation?.id ?? "";
      // Wait until it runs: its first chunk is stored.
      const before = await collect(
        client.watchInvocation({ invocationId: id }, { timeoutMs: CALL_TIMEOUT_MS }),
        (e) => e.kind.case === "chunk",
      );
      expect(before.at(-1)?.kind.case).toBe("chunk");

      const { invocation: cancelled } = await client.cancelInvocation({
        invocationId: id,
        reason: "enough ticks",
      });
      expect(cancelled?.state).toBe(InvocationState.CANCELLED);
      expect(cancelled?.error?.code).toBe("cancelled");
      expect(cancelled?.error?.message).toBe("enough ticks");
      expect(cancelled?.finishTime).toBeDefined();

      const events = await collect(
        client.watchInvocation({ invocationId: id }, { timeoutMs: CALL_TIMEOUT_MS }),
      );
      expectCompleteHistory(events, id);
      const last = events.at(-1)?.kind;
      expect(last?.case).toBe("cancelled");
      expect(last?.case === "cancelled" && last.value.reason).toBe("enough ticks");

      // Again: nothing changes, the final state is returned.
      const { invocation: again } = await client.cancelInvocation({
        invocationId: id,
        reason: "twice",
      });
      expect(again?.state).toBe(InvocationState.CANCELLED);
      expect(again?.error?.message).toBe("enough ticks");
      expect(again?.lastSequence).toBe(BigInt(events.length));
    });

    it("leaves a finished invocation as it was", async () => {
      const { invocation } = await client.invoke(
        { agent: "echo", input: value("done") },
        { timeoutMs: CALL_TIMEOUT_MS },
      );
      const { invocation: after } = await client.cancelInvocation({
        invocationId: invocation?.id ?? "",
      });
      expect(after?.state).toBe(InvocationState.SUCCEEDED);
      expect(json(after?.result)).toBe("done");
      expect(after?.lastSequence).toBe(invocation?.lastSequence);
    });
  });

  describe("ProvideInput", () => {
    it("answers the approval agent's request", async () => {
      const { invocation } = await client.invoke(
        { agent: "approval", input: value({ subject: "the release" }) },
        { timeoutMs: CALL_TIMEOUT_MS },
      );
      const id = invocation?.id ?? "";
      expect(invocation?.state).toBe(InvocationState.WAITING_FOR_INPUT);
      const request = invocation?.pendingInputs[0];
      expect(request?.node).toBe("ask");
      expect(request?.prompt).toBe("Do you approve the release?");
      expect(request?.schema?.required).toEqual(["approved"]);
      const requestId = request?.requestId ?? "";
      expect(requestId).toMatch(/\S/);

      // GetInvocation shows the same pending request.
      const { invocation: got } = await client.getInvocation({ invocationId: id });
      expect(got?.state).toBe(InvocationState.WAITING_FOR_INPUT);
      expect(got?.pendingInputs.map((r) => r.requestId)).toEqual([requestId]);

      // An answer that does not fit the schema is refused and changes nothing.
      await expectCode(
        client.provideInput({
          invocationId: id,
          requestId,
          value: value({ approved: "yes" }),
        }),
        Code.InvalidArgument,
      );
      await expectCode(
        client.provideInput({
          invocationId: id,
          requestId: "no-such-request",
          value: value({ approved: true }),
        }),
        Code.NotFound,
      );

      const { invocation: answered } = await client.provideInput({
        invocationId: id,
        requestId,
        value: value({ approved: true, comment: "ship it" }),
      });
      expect(answered?.id).toBe(id);
      expect(answered?.pendingInputs).toEqual([]);

      const events = await collect(
        client.watchInvocation({ invocationId: id }, { timeoutMs: CALL_TIMEOUT_MS }),
      );
      expectCompleteHistory(events, id);
      const kinds = events.map((e) => e.kind.case);
      expect(kinds.indexOf("inputRequested")).toBeGreaterThan(0);
      expect(kinds.indexOf("inputProvided")).toBeGreaterThan(
        kinds.indexOf("inputRequested"),
      );
      const provided = events.find((e) => e.kind.case === "inputProvided")?.kind;
      expect(provided?.case === "inputProvided" && provided.value.requestId).toBe(
        requestId,
      );
      const last = events.at(-1)?.kind;
      expect(last?.case === "completed" && json(last.value.result)).toEqual({
        approved: true,
        comment: "ship it",
      });

      const { invocation: done } = await client.getInvocation({ invocationId: id });
      expect(done?.state).toBe(InvocationState.SUCCEEDED);
      expect(json(done?.result)).toEqual({ approved: true, comment: "ship it" });

      // The request is no longer pending.
      await expectCode(
        client.provideInput({
          invocationId: id,
          requestId,
          value: value({ approved: false }),
        }),
        Code.FailedPrecondition,
      );
    });
  });
});

describe.each(PROTOCOLS)("ListInvocations over %s", (protocol) => {
  let gw: TestGateway;
  let client: AgentClient;
  /** What this gateway holds, in the order it was created. */
  const echoes: Invocation[] = [];
  let waiting: Invocation;
  beforeAll(async () => {
    gw = await startGateway();
    client = gw.client(protocol);
    for (let i = 0; i < 5; i++) {
      const { invocation } = await client.invoke({ agent: "echo", input: value(i) });
      echoes.push(invocation!);
    }
    const { invocation } = await client.invoke({
      agent: "approval",
      input: value({}),
    });
    waiting = invocation!;
  });
  afterAll(async () => {
    await gw?.close();
  });

  it("lists every invocation, newest first", async () => {
    const { invocations, nextPageToken } = await client.listInvocations({});
    expect(nextPageToken).toBe("");
    expect(invocations).toHaveLength(6);
    expect(new Set(invocations.map((i) => i.id))).toEqual(
      new Set([...echoes, waiting].map((i) => i.id)),
    );
    const times = invocations.map((i) => timestampMs(i.createTime!));
    expect(times).toEqual([...times].sort((a, b) => b - a));
    // Created one after another, so the order is exactly the reverse.
    expect(invocations.map((i) => i.id)).toEqual(
      [...echoes, waiting]
        .sort(
          (a, b) =>
            timestampMs(b.createTime!) - timestampMs(a.createTime!) ||
            (b.id < a.id ? -1 : b.id > a.id ? 1 : 0),
        )
        .map((i) => i.id),
    );
  });

  it("pages through with page tokens, without gaps or repeats", async () => {
    const { invocations: all } = await client.listInvocations({});
    const pages: string[][] = [];
    let pageToken = "";
    do {
      const page = await client.listInvocations({ pageSize: 2, pageToken });
      pages.push(page.invocations.map((i) => i.id));
      pageToken = page.nextPageToken;
      expect(pages.length).toBeLessThanOrEqual(10);
    } while (pageToken !== "");
    expect(pages.map((p) => p.length)).toEqual([2, 2, 2]);
    expect(pages.flat()).toEqual(all.map((i) => i.id));
  });

  it("filters by agent and by state", async () => {
    const echo = await client.listInvocations({ agent: "echo" });
    expect(echo.invocations.map((i) => i.id).sort()).toEqual(
      echoes.map((i) => i.id).sort(),
    );

    const waitingOnes = await client.listInvocations({
      states: [InvocationState.WAITING_FOR_INPUT],
    });
    expect(waitingOnes.invocations.map((i) => i.id)).toEqual([waiting.id]);
    expect(waitingOnes.invocations[0]?.agent).toBe("approval");

    const both = await client.listInvocations({
      states: [InvocationState.SUCCEEDED, InvocationState.WAITING_FOR_INPUT],
    });
    expect(both.invocations).toHaveLength(6);

    const none = await client.listInvocations({
      agent: "echo",
      states: [InvocationState.WAITING_FOR_INPUT],
    });
    expect(none.invocations).toEqual([]);

    const paged = await client.listInvocations({ agent: "echo", pageSize: 3 });
    expect(paged.invocations).toHaveLength(3);
    const rest = await client.listInvocations({
      agent: "echo",
      pageSize: 3,
      pageToken: paged.nextPageToken,
    });
    expect(rest.invocations).toHaveLength(2);
    expect(rest.nextPageToken).toBe("");
    expect(rest.invocations.every((i) => i.agent === "echo")).toBe(true);
  });

  it("refuses a page token it did not hand out", async () => {
    await expectCode(
      client.listInvocations({ pageToken: "not-a-token" }),
      Code.InvalidArgument,
    );
    await expectCode(client.listInvocations({ pageSize: -1 }), Code.InvalidArgument);
  });
});

describe("Connect GET and the Connect JSON format", () => {
  let gw: TestGateway;
  const requests: { method: string; path: string; contentType: unknown }[] = [];
  const record = (message: unknown) => {
    const { request } = message as { request: ClientRequest };
    requests.push({
      method: request.method,
      path: request.path,
      contentType: request.getHeader("content-type"),
    });
  };
  beforeAll(async () => {
    gw = await startGateway();
    subscribe("http.client.request.start", record);
  });
  afterAll(async () => {
    unsubscribe("http.client.request.start", record);
    await gw?.close();
  });

  const sent = (rpc: string) =>
    requests.filter((r) => r.path.startsWith(`/agent.v1.AgentService/${rpc}`));

  it.each([
    { format: "json", useBinaryFormat: false },
    { format: "binary", useBinaryFormat: true },
  ])("reads with GET in $format", async ({ format, useBinaryFormat }) => {
    requests.length = 0;
    const client = createClient(
      AgentService,
      createConnectTransport({
        baseUrl: gw.baseUrl,
        httpVersion: "1.1",
        useHttpGet: true,
        useBinaryFormat,
      }),
    );
    const { agents } = await client.listAgents({});
    expect(agents.map((a) => a.name)).toContain("echo");
    const { agent } = await client.getAgent({ name: "ticker" });
    expect(agent?.startNode).toBe("tick");
    await expectCode(client.getAgent({ name: "nope" }), Code.NotFound);

    // Invoke has side effects: it is still a POST.
    const { invocation } = await client.invoke({
      agent: "echo",
      input: value({ via: format }),
    });
    const { invocation: got } = await client.getInvocation({
      invocationId: invocation?.id ?? "",
    });
    expect(got?.state).toBe(InvocationState.SUCCEEDED);
    expect(json(got?.result)).toEqual({ via: format });

    const encoding = format === "json" ? "json" : "proto";
    for (const rpc of ["ListAgents", "GetAgent", "GetInvocation"]) {
      expect(sent(rpc).length).toBeGreaterThan(0);
      for (const request of sent(rpc)) {
        expect(request.method).toBe("GET");
        expect(request.path).toContain(`encoding=${encoding}`);
      }
    }
    expect(sent("Invoke").map((r) => r.method)).toContain("POST");
    expect(sent("Invoke").every((r) => r.method === "POST")).toBe(true);
  });

  it("the connect-json protocol of the tests sends JSON", async () => {
    requests.length = 0;
    const client = gw.client("connect-json");
    await client.listAgents({});
    expect(sent("ListAgents").map((r) => r.contentType)).toContain(
      "application/json",
    );
  });
});
