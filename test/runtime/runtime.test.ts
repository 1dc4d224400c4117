import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { z } from "zod";
import { approval } from "../../src/agents/approval.js";
import { echo } from "../../src/agents/echo.js";
import { wordfreq } from "../../src/agents/wordfreq.js";
import { RuntimeError } from "../../src/runtime/errors.js";
import { aggregate, defineAgent, type Agent } from "../../src/runtime/index.js";
import { AgentRegistry } from "../../src/runtime/registry.js";
import { Runtime } from "../../src/runtime/runtime.js";
import { createSqliteStore } from "../../src/store/sqlite/sqlite-store.js";
import type { Store } from "../../src/store/store.js";
import type { EventBody, Json, StoredEvent } from "../../src/store/types.js";

/**
 * Agents run in-process, without a server: a Runtime over a SQLite store,
 * with the events each invocation records.
 */

const TENANT = "tenant-a";

interface Harness {
  runtime: Runtime;
  store: Store;
  close(): Promise<void>;
}

const open: Harness[] = [];

function harness(agents: Agent[], path = ":memory:"): Harness {
  const store = createSqliteStore({ path, synchronous: "off" });
  const runtime = new Runtime({ store, agents: new AgentRegistry(agents) });
  let closed: Promise<void> | undefined;
  const h: Harness = {
    runtime,
    store,
    close: () =>
      (closed ??= (async () => {
        await runtime.close();
        await store.close();
      })()),
  };
  open.push(h);
  return h;
}

afterEach(async () => {
  await Promise.all(open.splice(0).map((h) => h.close()));
});

/**
 * Events of an invocation from the runtime's watch, until the last one or
 * until `until` holds for one. Heartbeats are left out.
 */
async function watch(
  runtime: Runtime,
  id: string,
  options: { after?: number; until?: (body: EventBody) => boolean } = {},
): Promise<StoredEvent[]> {
  const stop = new AbortController();
  let timedOut = false;
  // Only bounds a wait that would otherwise hang the test.
  const limit = setTimeout(() => {
    timedOut = true;
    stop.abort();
  }, 10_000);
  const events: StoredEvent[] = [];
  try {
    const stream = await runtime.watch(TENANT, id, options.after ?? 0, stop.signal);
    for await (const event of stream) {
      if ("heartbeat" in event) continue;
      events.push(event);
      if (options.until?.(event.body)) return events;
    }
  } finally {
    clearTimeout(limit);
    stop.abort();
  }
  if (timedOut) throw new Error(`watch of ${id} timed out`);
  return events;
}

async function run(h: Harness, agent: string, input: Json) {
  const { invocation, created } = await h.runtime.start({ tenant: TENANT, agent, input });
  expect(created).toBe(true);
  const events = await watch(h.runtime, invocation.id);
  const final = await h.runtime.get(TENANT, invocation.id);
  return { id: invocation.id, events, final, bodies: events.map((e) => e.body) };
}

const types = (bodies: EventBody[]) => bodies.map((b) => b.type);

/** Node names of the events of one type, in order. */
function nodesOf(bodies: EventBody[], type: "node_started" | "node_finished"): string[] {
  return bodies.flatMap((b) => (b.type === type ? [b.node] : []));
}

function expectGapless(events: StoredEvent[], first = 1): void {
  expect(events.map((e) => e.sequence)).toEqual(
    events.map((_, i) => first + i),
  );
}

describe("echo", () => {
  it("records started, the node, its chunk and the result, numbered 1 to 5", async () => {
    const h = harness([echo]);
    const input = { text: "hi", n: [1, 2] };
    const { id, events, final, bodies } = await run(h, "echo", input);

    expectGapless(events);
    expect(events.every((e) => e.invocationId === id)).toBe(true);
    expect(bodies).toEqual([
      {
        type: "started",
        invocation: expect.objectContaining({ id, agent: "echo", state: "queued", input }),
      },
      { type: "node_started", node: "reply", taskId: "t1", attempt: 1 },
      { type: "chunk", node: "reply", taskId: "t1", attempt: 1, data: input },
      {
        type: "node_finished",
        node: "reply",
        taskId: "t1",
        attempt: 1,
        durationMs: expect.any(Number),
        emittedTo: [],
      },
      { type: "completed", result: input },
    ]);
    expect(final).toMatchObject({
      state: "succeeded",
      result: input,
      lastSequence: 5,
      pendingInputs: [],
    });
    expect(final.finishedAt).toEqual(expect.any(Number));
    expect(final.error).toBeUndefined();
  });

  it("replays only the events after a sequence", async () => {
    const h = harness([echo]);
    const { id, events } = await run(h, "echo", "again");
    const rest = await watch(h.runtime, id, { after: 3 });
    expect(rest).toEqual(events.slice(3));
  });

  it("another tenant's invocation is not found", async () => {
    const h = harness([echo]);
    const { id } = await run(h, "echo", 1);
    const error = await h.runtime.get("tenant-b", id).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(RuntimeError);
    expect((error as RuntimeError).code).toBe("not_found");
  });
});

describe("wordfreq", () => {
  it("fans out one count per paragraph and merges once, after every count", async () => {
    const h = harness([wordfreq]);
    const text = "a b a\n\nb c\n\n  \n\nA z";
    const { final, bodies, events } = await run(h, "wordfreq", { text, top: 2 });
    expect(final.state).toBe("succeeded");
    expect(final.result).toEqual({ words: [["a", 3], ["b", 2]] });
    expectGapless(events);

    expect(nodesOf(bodies, "node_started").sort()).toEqual([
      "count",
      "count",
      "count",
      "merge",
      "split",
    ]);
    const finished = nodesOf(bodies, "node_finished");
    expect(finished.at(-1)).toBe("merge");
    const split = bodies.find((b) => b.type === "node_finished" && b.node === "split");
    expect(split).toMatchObject({ emittedTo: ["count", "count", "count", "merge"] });
    // Each paragraph is its own task.
    const countTasks = bodies.flatMap((b) =>
      b.type === "node_started" && b.node === "count" ? [b.taskId] : [],
    );
    expect(new Set(countTasks).size).toBe(3);
  });
});

describe("an aggregate node", () => {
  /**
   * Squares 1..n in parallel; odd squares take a detour through `double`,
   * which is slower, so `sum` must wait for the whole graph, not only for
   * the nodes emitting to it first.
   */
  const squares = defineAgent({
    name: "squares",
    description: "Sums the squares of 1..n, doubling the odd ones.",
    input: z.object({ n: z.number().int().min(1) }),
    output: z.object({ total: z.number(), inputs: z.number() }),
    start: "fan",
    nodes: {
      fan: (ctx, { n }) => {
        for (let i = 1; i <= n; i++) ctx.emit("square", i);
      },
      square: (ctx, i: number) => {
        if (i % 2 === 1) ctx.emit("double", i * i);
        else ctx.emit("sum", i * i);
      },
      double: async (ctx, v: number) => {
        await sleep(20, undefined, { signal: ctx.signal });
        ctx.emit("sum", 2 * v);
      },
      sum: aggregate<number>((ctx, values) => {
        ctx.result({ total: values.reduce((a, b) => a + b, 0), inputs: values.length });
      }),
    },
  });

  it("runs once, on every input, when nothing else is left to run", async () => {
    const h = harness([squares]);
    const n = 6;
    const { final, bodies } = await run(h, "squares", { n });
    // 1, 9, 25 doubled; 4, 16, 36 as they are.
    expect(final.result).toEqual({ total: 2 * (1 + 9 + 25) + 4 + 16 + 36, inputs: n });

    const started = nodesOf(bodies, "node_started");
    expect(started.filter((s) => s === "square")).toHaveLength(n);
    expect(started.filter((s) => s === "double")).toHaveLength(n / 2);
    expect(started.filter((s) => s === "sum")).toHaveLength(1);
    const sumAt = bodies.findIndex((b) => b.type === "node_started" && b.node === "sum");
    const lastDouble = bodies.findLastIndex(
      (b) => b.type === "node_finished" && b.node === "double",
    );
    expect(lastDouble).toBeLessThan(sumAt);
  });
});

describe("a result", () => {
  it("aborts the nodes still running, and nothing is recorded after completed", async () => {
    let slowAborted = false;
    let lateWrite: unknown;
    const race = defineAgent({
      name: "race",
      description: "One node answers while another still works.",
      input: z.object({}),
      output: z.object({ winner: z.string() }),
      start: "fork",
      nodes: {
        fork: async (ctx) => {
          ctx.emit("slow", {});
          ctx.emit("fast", {});
        },
        slow: async (ctx) => {
          await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
          slowAborted = true;
          // What an agent that ignores its signal would try next.
          lateWrite = await ctx
            .requestInput({ prompt: "too late", schema: z.boolean() })
            .catch((error: unknown) => error);
        },
        fast: async (ctx) => {
          // Let slow start first, so that it is running when this finishes.
          await sleep(20);
          ctx.result({ winner: "fast" });
        },
      },
    });
    const h = harness([race]);
    const { id, bodies, final } = await run(h, "race", {});
    expect(final.state).toBe("succeeded");
    expect(bodies.at(-1)).toEqual({ type: "completed", result: { winner: "fast" } });
    await vi.waitFor(() => expect(lateWrite).toBeDefined());
    expect(slowAborted).toBe(true);
    expect(lateWrite).toBeInstanceOf(Error);
    // The stored log still ends with completed.
    const stored = await h.store.readEvents(id, 0, 100);
    expect(stored.at(-1)?.body.type).toBe("completed");
    expect((await h.store.getInvocation(id))?.lastSequence).toBe(stored.length);
  });
});

describe("retries", () => {
  const attempts: number[] = [];
  const wobbly = defineAgent({
    name: "wobbly",
    description: "Fails its first `failures` attempts.",
    input: z.object({ failures: z.number().int() }),
    output: z.object({ attempt: z.number() }),
    start: "try",
    nodes: {
      try: {
        retry: { maxAttempts: 3, initialDelayMs: 1 },
        run: async (ctx, input: { failures: number }) => {
          attempts.push(ctx.attempt);
          await ctx.stream({ attempt: ctx.attempt });
          if (ctx.attempt <= input.failures) throw new Error(`boom ${ctx.attempt}`);
          ctx.result({ attempt: ctx.attempt });
        },
      },
    },
  });
  const once = defineAgent({
    name: "once",
    description: "Fails and is not retried.",
    input: z.object({}),
    output: z.object({}),
    start: "fail",
    nodes: {
      fail: {
        retry: { maxAttempts: 1 },
        run: () => {
          throw new Error("no second chance");
        },
      },
    },
  });

  it("retry a failing node with backoff, reporting each failed attempt", async () => {
    attempts.length = 0;
    const h = harness([wobbly]);
    const { final, bodies } = await run(h, "wobbly", { failures: 2 });
    expect(final.state).toBe("succeeded");
    expect(final.result).toEqual({ attempt: 3 });
    expect(attempts).toEqual([1, 2, 3]);
    expect(bodies.slice(1)).toEqual([
      { type: "node_started", node: "try", taskId: "t1", attempt: 1 },
      { type: "chunk", node: "try", taskId: "t1", attempt: 1, data: { attempt: 1 } },
      { type: "node_retrying", node: "try", taskId: "t1", attempt: 1, error: "boom 1", delayMs: 1 },
      { type: "node_started", node: "try", taskId: "t1", attempt: 2 },
      { type: "chunk", node: "try", taskId: "t1", attempt: 2, data: { attempt: 2 } },
      // The delay doubles after each failure.
      { type: "node_retrying", node: "try", taskId: "t1", attempt: 2, error: "boom 2", delayMs: 2 },
      { type: "node_started", node: "try", taskId: "t1", attempt: 3 },
      { type: "chunk", node: "try", taskId: "t1", attempt: 3, data: { attempt: 3 } },
      expect.objectContaining({ type: "node_finished", node: "try", attempt: 3 }),
      { type: "completed", result: { attempt: 3 } },
    ]);
  });

  it("fail the invocation once the attempts are used up", async () => {
    attempts.length = 0;
    const h = harness([wobbly]);
    const { final, bodies } = await run(h, "wobbly", { failures: 9 });
    expect(attempts).toEqual([1, 2, 3]);
    expect(final.state).toBe("failed");
    expect(final.error).toEqual({
      code: "internal",
      message: "node try failed after 3 attempts: boom 3",
    });
    expect(types(bodies).filter((t) => t === "node_retrying")).toHaveLength(2);
    expect(bodies.at(-1)).toEqual({ type: "failed", ...final.error });
  });

  it("do not happen for a node with one attempt", async () => {
    const h = harness([once]);
    const { final, bodies } = await run(h, "once", {});
    expect(final.state).toBe("failed");
    expect(final.error?.message).toContain("no second chance");
    expect(types(bodies)).toEqual(["started", "node_started", "failed"]);
  });
});

describe("human input", () => {
  it("waits for an answer that validates, then completes with it", async () => {
    const h = harness([approval]);
    const { invocation } = await h.runtime.start({
      tenant: TENANT,
      agent: "approval",
      input: { subject: "the plan" },
    });
    const asked = await watch(h.runtime, invocation.id, {
      until: (b) => b.type === "input_requested",
    });
    const request = asked.at(-1)!.body as Extract<EventBody, { type: "input_requested" }>;
    expect(request.prompt).toBe("Do you approve the plan?");
    const waiting = await h.runtime.get(TENANT, invocation.id);
    expect(waiting.state).toBe("waiting_for_input");
    expect(waiting.pendingInputs.map((r) => r.requestId)).toEqual([request.requestId]);

    const wrong = await h.runtime
      .provideInput(TENANT, invocation.id, request.requestId, { approved: "yes" })
      .catch((e: unknown) => e);
    expect(wrong).toMatchObject({ code: "invalid_argument" });
    expect((wrong as Error).message).toContain("approved");

    await h.runtime.provideInput(TENANT, invocation.id, request.requestId, { approved: true });
    const events = await watch(h.runtime, invocation.id);
    expect(types(events.map((e) => e.body)).slice(-4)).toEqual([
      "input_requested",
      "input_provided",
      "node_finished",
      "completed",
    ]);
    const final = await h.runtime.get(TENANT, invocation.id);
    expect(final).toMatchObject({ state: "succeeded", result: { approved: true }, pendingInputs: [] });
  });
});

describe("resume after a stop", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "agent-gateway-runtime-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** How often each node ran, and whether b may finish yet. */
  const runs = { a: 0, b: 0, c: 0 };
  const bAborted: string[] = [];
  let holdB = true;

  const steps = defineAgent({
    name: "steps",
    description: "a, then b (held until released), then c.",
    input: z.object({}),
    output: z.object({ steps: z.array(z.string()) }),
    start: "a",
    nodes: {
      a: (ctx) => {
        runs.a++;
        ctx.emit("b", ["a"]);
      },
      b: async (ctx, done: string[]) => {
        runs.b++;
        if (holdB) {
          await new Promise((resolve) =>
            ctx.signal.addEventListener("abort", resolve, { once: true }),
          );
          bAborted.push(String(ctx.signal.reason));
          return;
        }
        ctx.emit("c", [...done, "b"]);
      },
      c: (ctx, done: string[]) => {
        runs.c++;
        ctx.result({ steps: [...done, "c"] });
      },
    },
  });

  it("goes on from the last finished node; finished nodes do not run again", async () => {
    const path = join(dir, "steps.db");
    const first = harness([steps], path);
    const { invocation } = await first.runtime.start({ tenant: TENANT, agent: "steps", input: {} });
    const before = await watch(first.runtime, invocation.id, {
      until: (b) => b.type === "node_started" && b.node === "b",
    });

    // close() stops the run without recording an end.
    await first.close();
    expect(bAborted).toHaveLength(1);
    expect(runs).toEqual({ a: 1, b: 1, c: 0 });

    holdB = false;
    const second = harness([steps], path);
    const stored = await second.runtime.get(TENANT, invocation.id);
    expect(stored.state).toBe("running");
    expect(stored.lastSequence).toBe(before.at(-1)!.sequence);

    expect(await second.runtime.resume()).toBe(1);
    const events = await watch(second.runtime, invocation.id);
    const bodies = events.map((e) => e.body);
    expect(bodies.at(-1)).toEqual({ type: "completed", result: { steps: ["a", "b", "c"] } });
    expect(runs).toEqual({ a: 1, b: 2, c: 1 });

    // One log, numbered without a gap or a repeat across the two runtimes.
    expectGapless(events);
    expect(events.slice(0, before.length)).toEqual(before);
    const after = bodies.slice(before.length);
    expect(after[0]).toMatchObject({
      type: "node_retrying",
      node: "b",
      attempt: 1,
      error: expect.stringContaining("interrupted"),
    });
    expect(after[1]).toMatchObject({ type: "node_started", node: "b", attempt: 2 });
    expect(nodesOf(bodies, "node_started")).toEqual(["a", "b", "b", "c"]);
    expect(nodesOf(bodies, "node_finished")).toEqual(["a", "b", "c"]);

    // A finished invocation is not resumed again.
    await second.close();
    const third = harness([steps], path);
    expect(await third.runtime.resume()).toBe(0);
    expect((await third.runtime.get(TENANT, invocation.id)).state).toBe("succeeded");
  });

  it("answers an input request that was answered before the stop from the store", async () => {
    let asked = 0;
    let hold = true;
    const confirm = defineAgent({
      name: "confirm",
      description: "Asks, then works until released.",
      input: z.object({}),
      output: z.object({ said: z.string() }),
      start: "ask",
      nodes: {
        ask: async (ctx) => {
          asked++;
          const answer = await ctx.requestInput({ prompt: "say?", schema: z.string() });
          if (hold) {
            await new Promise((resolve) =>
              ctx.signal.addEventListener("abort", resolve, { once: true }),
            );
            return;
          }
          ctx.result({ said: answer });
        },
      },
    });
    const path = join(dir, "confirm.db");
    const first = harness([confirm], path);
    const { invocation } = await first.runtime.start({ tenant: TENANT, agent: "confirm", input: {} });
    const id = invocation.id;
    const asking = await watch(first.runtime, id, { until: (b) => b.type === "input_requested" });
    const { requestId } = asking.at(-1)!.body as { requestId: string };
    await first.runtime.provideInput(TENANT, id, requestId, "hello");
    await watch(first.runtime, id, { until: (b) => b.type === "input_provided" });
    await first.close();

    hold = false;
    const second = harness([confirm], path);
    expect(await second.runtime.resume()).toBe(1);
    const events = await watch(second.runtime, id);
    const bodies = events.map((e) => e.body);
    expect(bodies.at(-1)).toEqual({ type: "completed", result: { said: "hello" } });
    expect(asked).toBe(2);
    // The node asked again, but nobody was: the stored answer was used.
    expect(types(bodies).filter((t) => t === "input_requested")).toHaveLength(1);
    expect(types(bodies).filter((t) => t === "input_provided")).toHaveLength(1);
    expectGapless(events);
  });
});
