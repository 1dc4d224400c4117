import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import {
  InvocationState,
  InvokeRequestSchema,
  OnDisconnect,
  type Event,
  type Invocation,
} from "../../gen/agent/v1/agent_pb.js";
import { defineAgent } from "../../src/runtime/index.js";
import { testAgents } from "../fixtures/agents.js";
import {
  envelope,
  eventsOf,
  eventually,
  failure,
  kinds,
  plain,
  rawGrpc,
  settled,
  value,
  watchUntil,
  type AgentClient,
} from "../helpers/calls.js";
import { PROTOCOLS, startGateway, type TestGateway } from "../helpers/gateway.js";

/**
 * The invocation semantics of DESIGN.md, as a client sees them: deadlines,
 * run timeouts, cancellation, human input, retries, heartbeats, fan-out.
 */

/** Why each probe invocation's node was aborted, by invocation id. */
const aborted = new Map<string, string>();

/** Runs until aborted and records that it was, so a test can see it. */
const probe = defineAgent({
  name: "probe",
  description: "Waits until aborted, and notes the abort.",
  input: z.object({}),
  output: z.object({}),
  start: "wait",
  nodes: {
    wait: async (ctx) => {
      await new Promise((resolve) =>
        ctx.signal.addEventListener("abort", resolve, { once: true }),
      );
      aborted.set(ctx.invocationId, String(ctx.signal.reason));
    },
  },
});

let gw: TestGateway;
let client: AgentClient;

beforeAll(async () => {
  gw = await startGateway({ agents: [...testAgents, probe] });
  client = gw.client("grpc");
});
afterAll(async () => {
  await gw?.close();
});

const empty = value({});

async function get(id: string): Promise<Invocation> {
  const { invocation } = await client.getInvocation({ invocationId: id });
  return invocation!;
}

/** The invocation of `agent` started with metadata `{case}`; waits until it is stored. */
function findByCase(agent: string, tag: string): Promise<Invocation> {
  return eventually(async () => {
    const { invocations } = await client.listInvocations({ agent, pageSize: 500 });
    return invocations.find((i) => i.metadata.case === tag);
  }, `the ${agent} invocation tagged ${tag}`);
}

function waitForState(id: string, state: InvocationState): Promise<Invocation> {
  return eventually(async () => {
    const invocation = await get(id);
    return invocation.state === state ? invocation : undefined;
  }, `invocation ${id} to be ${InvocationState[state]}`);
}

/** Starts a probe and returns once its node is running. */
async function runningProbe(): Promise<string> {
  const { invocation } = await client.startInvocation({ agent: "probe", input: empty });
  const id = invocation!.id;
  await watchUntil(client, id, (e) => e.kind.case === "nodeStarted");
  return id;
}

function last(events: Event[]): Event {
  const event = events.at(-1);
  if (!event) throw new Error("no events");
  return event;
}

/** A pause that gives a wrongly sent cancel time to land; asserts nothing about time. */
const grace = () => sleep(300);

describe.each(PROTOCOLS)("the RPC deadline over %s", (protocol) => {
  it("bounds the wait, not the run: DEADLINE_EXCEEDED and the invocation goes on", async () => {
    const tag = randomUUID();
    const error = await failure(
      gw.client(protocol).invoke(
        { agent: "forever", input: empty, metadata: { case: tag } },
        { timeoutMs: 200 },
      ),
    );
    expect(error.code).toBe(Code.DeadlineExceeded);
    const found = await findByCase("forever", tag);
    await grace();
    const invocation = await get(found.id);
    expect(invocation.state).toBe(InvocationState.RUNNING);
    expect(invocation.finishTime).toBeUndefined();
    await client.cancelInvocation({ invocationId: found.id, reason: "test cleanup" });
  });

  it("with on_disconnect CANCEL the invocation ends CANCELLED", async () => {
    const tag = randomUUID();
    const error = await failure(
      gw.client(protocol).invoke(
        {
          agent: "probe",
          input: empty,
          metadata: { case: tag },
          onDisconnect: OnDisconnect.CANCEL,
        },
        { timeoutMs: 200 },
      ),
    );
    expect(error.code).toBe(Code.DeadlineExceeded);
    const found = await findByCase("probe", tag);
    const invocation = await waitForState(found.id, InvocationState.CANCELLED);
    expect(invocation.error?.code).toBe("cancelled");
    expect(last(await eventsOf(client, found.id)).kind.case).toBe("cancelled");
    await eventually(async () => aborted.get(found.id), "the node to be aborted");
  });

  it("with a slow ticker: DEADLINE_EXCEEDED, and the ticks go on", async () => {
    const tag = randomUUID();
    const error = await failure(
      gw.client(protocol).invoke(
        {
          agent: "ticker",
          input: value({ count: 1000, intervalMs: 50 }),
          metadata: { case: tag },
        },
        { timeoutMs: 200 },
      ),
    );
    expect(error.code).toBe(Code.DeadlineExceeded);
    const { id } = await findByCase("ticker", tag);
    // Ticks keep coming after the RPC has ended.
    const before = (await get(id)).lastSequence;
    await eventually(
      async () => ((await get(id)).lastSequence > before + 2n ? true : undefined),
      "more ticks",
    );
    expect((await get(id)).state).toBe(InvocationState.RUNNING);
    await client.cancelInvocation({ invocationId: id });
  });
});

describe("the server enforces the RPC deadline itself (raw requests)", () => {
  it("Connect: connect-timeout-ms gives HTTP 504 deadline_exceeded with the invocation id", async () => {
    const res = await fetch(`${gw.baseUrl}/agent.v1.AgentService/Invoke`, {
      method: "POST",
      headers: { "content-type": "application/json", "connect-timeout-ms": "200" },
      body: JSON.stringify({ agent: "forever", input: {} }),
    });
    const body = (await res.json()) as { code: string };
    expect(res.status).toBe(504);
    expect(body.code).toBe("deadline_exceeded");
    const id = res.headers.get("agent-invocation-id");
    expect(id).toBeTruthy();
    await grace();
    expect((await get(id!)).state).toBe(InvocationState.RUNNING);
    await client.cancelInvocation({ invocationId: id! });
  });

  it("gRPC: grpc-timeout gives DEADLINE_EXCEEDED with the invocation id; CANCEL cancels", async () => {
    for (const onDisconnect of [OnDisconnect.CONTINUE, OnDisconnect.CANCEL]) {
      const message = toBinary(
        InvokeRequestSchema,
        create(InvokeRequestSchema, { agent: "forever", input: empty, onDisconnect }),
      );
      const res = await rawGrpc(
        gw.baseUrl,
        "/agent.v1.AgentService/Invoke",
        envelope(message),
        { "grpc-timeout": "200m" },
      );
      expect(res.grpcStatus).toBe(Code.DeadlineExceeded);
      const id = String(res.headers["agent-invocation-id"]);
      if (onDisconnect === OnDisconnect.CANCEL) {
        await waitForState(id, InvocationState.CANCELLED);
      } else {
        await grace();
        expect((await get(id)).state).toBe(InvocationState.RUNNING);
        await client.cancelInvocation({ invocationId: id });
      }
    }
  });
});

describe("the request's timeout", () => {
  it("bounds the run: FAILED with deadline_exceeded, last event failed, nodes aborted", async () => {
    for (const agent of ["forever", "probe"]) {
      const { invocation } = await client.invoke(
        { agent, input: empty, timeout: { seconds: 0n, nanos: 300_000_000 } },
        { timeoutMs: 10_000 },
      );
      expect(invocation?.state).toBe(InvocationState.FAILED);
      expect(invocation?.error?.code).toBe("deadline_exceeded");
      expect(invocation?.timeout?.nanos).toBe(300_000_000);
      const end = last(await eventsOf(client, invocation!.id));
      expect(end.kind.case).toBe("failed");
      expect(end.kind.value).toMatchObject({ code: "deadline_exceeded" });
      if (agent === "probe") {
        await eventually(async () => aborted.get(invocation!.id), "the node to be aborted");
      }
    }
  });

  it("does not touch a run that finishes in time", async () => {
    const { invocation } = await client.invoke({
      agent: "chain",
      input: value({ stepMs: 1 }),
      timeout: { seconds: 30n },
    });
    expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
    expect(plain(invocation?.result)).toEqual({ steps: ["a", "b", "c"] });
  });
});

describe("CancelInvocation", () => {
  it("cancels a running invocation: CANCELLED, a cancelled event with the reason, nodes aborted", async () => {
    const id = await runningProbe();
    const { invocation } = await client.cancelInvocation({
      invocationId: id,
      reason: "the user changed their mind",
    });
    expect(invocation?.state).toBe(InvocationState.CANCELLED);
    expect(invocation?.error).toMatchObject({
      code: "cancelled",
      message: "the user changed their mind",
    });
    expect(invocation?.finishTime).toBeDefined();
    const events = await eventsOf(client, id);
    const end = last(events);
    expect(end.kind.case).toBe("cancelled");
    expect(end.kind.value).toMatchObject({ reason: "the user changed their mind" });
    expect(end.sequence).toBe(invocation?.lastSequence);
    const reason = await eventually(async () => aborted.get(id), "the node to be aborted");
    expect(reason).toContain("the user changed their mind");
  });

  it("is idempotent: a second call returns the same final state and records nothing", async () => {
    const id = await runningProbe();
    const first = (await client.cancelInvocation({ invocationId: id, reason: "first" }))
      .invocation!;
    const second = (await client.cancelInvocation({ invocationId: id, reason: "second" }))
      .invocation!;
    expect(second.state).toBe(InvocationState.CANCELLED);
    expect(second.error).toEqual(first.error);
    expect(second.finishTime).toEqual(first.finishTime);
    expect(second.lastSequence).toBe(first.lastSequence);
    const cancelled = (await eventsOf(client, id)).filter((e) => e.kind.case === "cancelled");
    expect(cancelled).toHaveLength(1);
  });

  it("leaves a SUCCEEDED invocation SUCCEEDED", async () => {
    const done = (await client.invoke({ agent: "echo", input: value({ a: 1 }) })).invocation!;
    expect(done.state).toBe(InvocationState.SUCCEEDED);
    const { invocation } = await client.cancelInvocation({ invocationId: done.id, reason: "too late" });
    expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
    expect(plain(invocation?.result)).toEqual({ a: 1 });
    expect(invocation?.error).toBeUndefined();
    expect(invocation?.lastSequence).toBe(done.lastSequence);
    expect(last(await eventsOf(client, done.id)).kind.case).toBe("completed");
  });
});

describe.each(PROTOCOLS)("InvokeStream whose client goes away over %s", (protocol) => {
  /** Streams a probe until its node runs, then aborts the call; returns the id. */
  async function abandon(onDisconnect: OnDisconnect): Promise<string> {
    const stop = new AbortController();
    let id: string | undefined;
    const error = await failure(async () => {
      for await (const res of gw.client(protocol).invokeStream(
        { agent: "probe", input: empty, onDisconnect },
        { signal: stop.signal, timeoutMs: 10_000 },
      )) {
        if (res.event?.kind.case === "started") id = res.event.invocationId;
        if (res.event?.kind.case === "nodeStarted") stop.abort();
      }
    });
    expect(error.code).toBe(Code.Canceled);
    if (!id) throw new Error("no started event");
    return id;
  }

  it("with on_disconnect CANCEL the invocation ends CANCELLED", async () => {
    const id = await abandon(OnDisconnect.CANCEL);
    const invocation = await waitForState(id, InvocationState.CANCELLED);
    expect(invocation.error?.message).toContain("went away");
    await eventually(async () => aborted.get(id), "the node to be aborted");
  });

  it("with on_disconnect CONTINUE the invocation goes on", async () => {
    const id = await abandon(OnDisconnect.CONTINUE);
    await grace();
    expect((await get(id)).state).toBe(InvocationState.RUNNING);
    expect(aborted.has(id)).toBe(false);
    await client.cancelInvocation({ invocationId: id });
  });
});

describe("human input", () => {
  it("approval waits for input with a JSON Schema, and ProvideInput completes it with the answer", async () => {
    // Invoke returns once the invocation waits for input.
    const waiting = (
      await client.invoke({ agent: "approval", input: value({ subject: "the budget" }) })
    ).invocation!;
    expect(waiting.state).toBe(InvocationState.WAITING_FOR_INPUT);
    expect(waiting.pendingInputs).toHaveLength(1);
    const request = waiting.pendingInputs[0]!;
    expect(request.prompt).toContain("the budget");
    expect(request.node).toBe("ask");
    const schema = request.schema as Record<string, any>;
    expect(schema.$schema).toMatch(/json-schema\.org/);
    expect(schema.type).toBe("object");
    expect(schema.properties.approved).toEqual({ type: "boolean" });
    expect(schema.properties.comment).toEqual({ type: "string" });
    expect(schema.required).toEqual(["approved"]);

    const answer = { approved: true, comment: "within limits" };
    await client.provideInput({
      invocationId: waiting.id,
      requestId: request.requestId,
      value: value(answer),
    });
    const done = await settled(client, waiting.id);
    expect(done.state).toBe(InvocationState.SUCCEEDED);
    expect(plain(done.result)).toEqual(answer);
    expect(done.pendingInputs).toEqual([]);

    const events = await eventsOf(client, waiting.id);
    expect(kinds(events)).toEqual([
      "started",
      "nodeStarted",
      "inputRequested",
      "inputProvided",
      "nodeFinished",
      "completed",
    ]);
    const requested = events[2]!.kind.value as { requestId: string; schema: unknown };
    expect(requested.requestId).toBe(request.requestId);
    expect(requested.schema).toEqual(schema);
    expect(events[3]!.kind.value).toMatchObject({ requestId: request.requestId });
  });
});

describe("retries", () => {
  it("flaky with one failure succeeds on attempt 2, with node_retrying between", async () => {
    const { invocation } = await client.invoke({
      agent: "flaky",
      input: value({ failures: 1 }),
    });
    expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
    expect(plain(invocation?.result)).toEqual({ attempt: 2 });

    const events = await eventsOf(client, invocation!.id);
    const brief = events.map((e) => {
      const v = e.kind.value as { attempt?: number; error?: string };
      return `${e.kind.case}${v?.attempt ? `@${v.attempt}` : ""}`;
    });
    expect(brief).toEqual([
      "started",
      "nodeStarted@1",
      "chunk@1",
      "nodeRetrying@1",
      "nodeStarted@2",
      "chunk@2",
      "nodeFinished@2",
      "completed",
    ]);
    const retrying = events[3]!.kind.value as { error: string; taskId: string };
    expect(retrying.error).toContain("attempt 1 failed on purpose");
    expect(retrying.taskId).toBe((events[1]!.kind.value as { taskId: string }).taskId);
  });

  it("flaky with five failures fails after its attempts", async () => {
    const { invocation } = await client.invoke({
      agent: "flaky",
      input: value({ failures: 5 }),
    });
    expect(invocation?.state).toBe(InvocationState.FAILED);
    expect(invocation?.error?.code).toBe("internal");
    expect(invocation?.error?.message).toContain("3 attempts");
    expect(invocation?.error?.message).toContain("attempt 3 failed on purpose");

    const events = await eventsOf(client, invocation!.id);
    const retries = events.filter((e) => e.kind.case === "nodeRetrying");
    expect(retries.map((e) => (e.kind.value as { attempt: number }).attempt)).toEqual([1, 2]);
    expect(last(events).kind).toMatchObject({ case: "failed", value: { code: "internal" } });
  });

  it("an agent that sets no result fails", async () => {
    const { invocation } = await client.invoke({ agent: "silent", input: empty });
    expect(invocation?.state).toBe(InvocationState.FAILED);
    expect(invocation?.error?.code).toBe("internal");
    expect(invocation?.error?.message).toContain("without setting a result");
    expect(last(await eventsOf(client, invocation!.id)).kind.case).toBe("failed");
  });
});

describe("heartbeats", () => {
  let quick: TestGateway;
  beforeAll(async () => {
    quick = await startGateway({ config: { heartbeatMs: 200 } });
  });
  afterAll(async () => {
    await quick?.close();
  });

  it.each(["grpc", "connect-json"] as const)(
    "a quiet WatchInvocation of a waiting approval gets heartbeats over %s",
    async (protocol) => {
      const c = quick.client(protocol);
      const { invocation } = await c.startInvocation({ agent: "approval", input: empty });
      const id = invocation!.id;
      const stop = new AbortController();
      let lastSeen = 0n;
      let waiting = false;
      const beats: { sequence: bigint; lastSequence: bigint; seen: bigint; after: boolean }[] = [];
      try {
        for await (const { event } of c.watchInvocation(
          { invocationId: id },
          { signal: stop.signal, timeoutMs: 20_000 },
        )) {
          if (!event) continue;
          if (event.kind.case === "heartbeat") {
            expect(event.invocationId).toBe(id);
            expect(event.kind.value.serverTime).toBeDefined();
            beats.push({
              sequence: event.sequence,
              lastSequence: event.kind.value.lastSequence,
              seen: lastSeen,
              after: waiting,
            });
            if (beats.filter((b) => b.after).length >= 2) break;
            continue;
          }
          expect(event.sequence).toBe(lastSeen + 1n);
          lastSeen = event.sequence;
          if (event.kind.case === "inputRequested") waiting = true;
        }
      } finally {
        stop.abort();
      }
      expect(waiting).toBe(true);
      for (const beat of beats) {
        expect(beat.sequence).toBe(0n);
        expect(beat.lastSequence).toBe(beat.seen);
      }
      // started, node_started, input_requested: then only heartbeats.
      expect(beats.filter((b) => b.after).map((b) => b.lastSequence)).toEqual([3n, 3n]);
      // Heartbeats are not stored: the log is the three events and the end.
      const { invocation: cancelled } = await c.cancelInvocation({ invocationId: id });
      expect(cancelled?.lastSequence).toBe(4n);
    },
  );
});

describe("fan-out and fan-in", () => {
  it("wordfreq counts paragraphs in several count nodes and merges them once", async () => {
    const text = "The cat sat.\n\nThe dog sat down.\n\n\nthe end";
    const events: Event[] = [];
    for await (const { event } of client.invokeStream(
      { agent: "wordfreq", input: value({ text, top: 3 }) },
      { timeoutMs: 10_000 },
    )) {
      if (event) events.push(event);
    }
    const end = last(events);
    if (end.kind.case !== "completed") throw new Error(`ended with ${end.kind.case}`);
    expect(plain(end.kind.value.result)).toEqual({
      words: [
        ["the", 3],
        ["sat", 2],
        ["cat", 1],
      ],
    });

    const started = events.flatMap((e) =>
      e.kind.case === "nodeStarted" ? [e.kind.value.node] : [],
    );
    expect(started.filter((n) => n === "split")).toHaveLength(1);
    expect(started.filter((n) => n === "count")).toHaveLength(3);
    expect(started.filter((n) => n === "merge")).toHaveLength(1);

    const split = events.find(
      (e) => e.kind.case === "nodeFinished" && e.kind.value.node === "split",
    );
    expect((split?.kind.value as { emittedTo: string[] }).emittedTo.sort()).toEqual([
      "count",
      "count",
      "count",
      "merge",
    ]);
    // The merge starts only after every count has finished.
    const mergeAt = events.findIndex(
      (e) => e.kind.case === "nodeStarted" && e.kind.value.node === "merge",
    );
    const countsDone = events
      .map((e, i) => (e.kind.case === "nodeFinished" && e.kind.value.node === "count" ? i : -1))
      .filter((i) => i >= 0);
    expect(countsDone).toHaveLength(3);
    expect(Math.max(...countsDone)).toBeLessThan(mergeAt);
    // Sequences run 1, 2, 3 ... with no gap.
    expect(events.map((e) => e.sequence)).toEqual(events.map((_, i) => BigInt(i + 1)));
  });
});

describe("ListAgents", () => {
  it("describes each agent's input and output with a JSON Schema", async () => {
    const { agents } = await client.listAgents({});
    const byName = new Map(agents.map((a) => [a.name, a]));
    expect([...byName.keys()]).toEqual(
      expect.arrayContaining(["approval", "echo", "ticker", "wordfreq", "flaky"]),
    );
    for (const agent of agents) {
      for (const schema of [agent.inputSchema, agent.outputSchema]) {
        expect(schema, agent.name).toMatchObject({
          $schema: expect.stringMatching(/json-schema\.org/),
        });
      }
    }

    const ticker = byName.get("ticker")!.inputSchema as Record<string, any>;
    expect(ticker.type).toBe("object");
    expect(ticker.properties.count.type).toBe("integer");
    expect(ticker.properties.intervalMs).toMatchObject({ type: "integer", default: 0 });
    // A field with a default is optional for the caller.
    expect(ticker.required).toEqual(["count"]);

    const wordfreq = byName.get("wordfreq")!;
    const input = wordfreq.inputSchema as Record<string, any>;
    expect(input.properties.text).toEqual({ type: "string" });
    expect(input.required).toEqual(["text"]);
    const output = wordfreq.outputSchema as Record<string, any>;
    expect(output.properties.words.type).toBe("array");
    expect(wordfreq.startNode).toBe("split");
    expect(wordfreq.nodes).toEqual(["split", "count", "merge"]);

    const { agent } = await client.getAgent({ name: "ticker" });
    expect(agent).toEqual(byName.get("ticker"));
  });
});
