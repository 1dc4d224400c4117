import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import type { ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { AgentService, type Event } from "../../gen/agent/v1/agent_pb.js";
import { defaultConfig } from "../../src/config.js";
import { createListener } from "../../src/server/listener.js";
import { eventToProto, invocationToProto, valueToJson } from "../../src/service/convert.js";
import type { InvocationView } from "../../src/runtime/runtime.js";
import type { EventBody, InvocationRecord, Json, StoredEvent } from "../../src/store/types.js";

/**
 * The limit of our stack: AgentService on the same listener and Connect
 * adapter settings as the gateway, answering with the same messages, but
 * with no runtime and no store behind it.
 *
 * - Invoke: the invocation echo would return, succeeded.
 * - InvokeStream: the events the gateway would send (started,
 *   node_started, chunks, node_finished, completed), for echo one chunk,
 *   for ticker or bench-burst `count` chunks `{tick}`.
 * - StartInvocation, WatchInvocation, ProvideInput, GetInvocation: enough
 *   for the fan-out and quiet-stream scenarios. A watch gets a `started`
 *   event and then nothing until ProvideInput({count, intervalMs}) on its
 *   invocation broadcasts that many chunks and `completed`.
 *
 * Prints `{"msg":"listening","port":N}` once bound (PORT, default 0).
 */

const config = defaultConfig();
const PROMPT_SCHEMA: Json = { type: "object" };

function record(id: string, agent: string, input: Json, done: boolean): InvocationRecord {
  const now = Date.now();
  return {
    id,
    tenant: "default",
    agent,
    state: done ? "succeeded" : "waiting_for_input",
    input,
    result: done ? input : undefined,
    metadata: {},
    onDisconnect: "continue",
    lastSequence: done ? 5 : 3,
    createdAt: now,
    updatedAt: now,
    finishedAt: done ? now : undefined,
  };
}

function view(rec: InvocationRecord): InvocationView {
  const pendingInputs =
    rec.state === "waiting_for_input"
      ? [
          {
            invocationId: rec.id,
            requestId: "t1.0",
            taskId: "t1",
            node: "wait",
            prompt: "go",
            schema: PROMPT_SCHEMA,
            state: "pending" as const,
            createdAt: rec.createdAt,
          },
        ]
      : [];
  return { ...rec, pendingInputs };
}

function event(invocationId: string, sequence: number, body: EventBody): Event {
  const stored: StoredEvent = { invocationId, sequence, time: Date.now(), body };
  return eventToProto(stored);
}

/** A watcher's queue of broadcast events. */
class Watcher {
  private queue: Event[] = [];
  private wake: (() => void) | undefined;
  private readonly settle = () => {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  };

  push(e: Event): void {
    this.queue.push(e);
    this.settle();
  }

  async *drain(signal: AbortSignal): AsyncGenerator<Event> {
    signal.addEventListener("abort", this.settle, { once: true });
    try {
      for (;;) {
        const next = this.queue.shift();
        if (next) {
          yield next;
          if (next.kind.case === "completed") return;
          continue;
        }
        if (signal.aborted) return;
        await new Promise<void>((resolve) => (this.wake = resolve));
      }
    } finally {
      signal.removeEventListener("abort", this.settle);
    }
  }
}

const invocations = new Map<string, InvocationRecord>();
const watchers = new Map<string, Set<Watcher>>();

async function broadcast(id: string, count: number, intervalMs: number): Promise<void> {
  const send = (e: Event) => {
    for (const w of watchers.get(id) ?? []) w.push(e);
  };
  let sequence = 4;
  for (let tick = 1; tick <= count; tick++) {
    if (intervalMs > 0) await sleep(intervalMs);
    // Converted once and shared by every watcher.
    send(
      event(id, sequence++, {
        type: "chunk",
        node: "wait",
        taskId: "t1",
        attempt: 1,
        data: { tick },
      }),
    );
  }
  send(event(id, sequence, { type: "completed", result: { count } }));
}

function ticks(input: Json): number {
  const count =
    input && typeof input === "object" && !Array.isArray(input) ? input.count : undefined;
  return typeof count === "number" ? count : 0;
}

const impl: Partial<ServiceImpl<typeof AgentService>> = {
  invoke(request, ctx) {
    const id = randomUUID();
    ctx.responseHeader.set("agent-invocation-id", id);
    const rec = record(id, request.agent, valueToJson(request.input), true);
    return { invocation: invocationToProto(view(rec)) };
  },

  async *invokeStream(request, ctx) {
    const id = randomUUID();
    ctx.responseHeader.set("agent-invocation-id", id);
    const input = valueToJson(request.input);
    const started = { ...record(id, request.agent, input, false), state: "queued" as const };
    const node = request.agent === "echo" ? "reply" : "tick";
    const common = { node, taskId: "t1", attempt: 1 };
    let sequence = 1;
    yield { event: event(id, sequence++, { type: "started", invocation: started }) };
    yield { event: event(id, sequence++, { type: "node_started", ...common }) };
    const count = request.agent === "echo" ? 1 : ticks(input);
    for (let tick = 1; tick <= count; tick++) {
      const data = request.agent === "echo" ? input : { tick };
      yield { event: event(id, sequence++, { type: "chunk", ...common, data }) };
    }
    yield {
      event: event(id, sequence++, {
        type: "node_finished",
        ...common,
        durationMs: 0,
        emittedTo: [],
      }),
    };
    const result = request.agent === "echo" ? input : { count };
    yield { event: event(id, sequence, { type: "completed", result }) };
  },

  startInvocation(request, ctx) {
    const id = randomUUID();
    ctx.responseHeader.set("agent-invocation-id", id);
    const rec = record(id, request.agent, valueToJson(request.input), false);
    invocations.set(id, rec);
    return { invocation: invocationToProto(view(rec)) };
  },

  getInvocation(request) {
    const rec =
      invocations.get(request.invocationId) ?? record(request.invocationId, "?", {}, false);
    return { invocation: invocationToProto(view(rec)) };
  },

  provideInput(request) {
    const value = request.value ? valueToJson(request.value) : {};
    const obj = value && typeof value === "object" && !Array.isArray(value) ? value : {};
    const intervalMs = typeof obj.intervalMs === "number" ? obj.intervalMs : 0;
    void broadcast(request.invocationId, ticks(obj), intervalMs);
    const rec =
      invocations.get(request.invocationId) ?? record(request.invocationId, "?", {}, false);
    return { invocation: invocationToProto({ ...rec, state: "running" }) };
  },

  async *watchInvocation(request, ctx) {
    const id = request.invocationId;
    const watcher = new Watcher();
    const set = watchers.get(id) ?? new Set();
    watchers.set(id, set);
    set.add(watcher);
    try {
      const rec = invocations.get(id) ?? record(id, "?", {}, false);
      yield { event: event(id, 1, { type: "started", invocation: rec }) };
      for await (const e of watcher.drain(ctx.signal)) yield { event: e };
    } finally {
      set.delete(watcher);
      if (set.size === 0) watchers.delete(id);
    }
  },
};

const shutdown = new AbortController();
const listener = createListener({
  host: "127.0.0.1",
  port: Number(process.env.PORT ?? 0),
  handler: connectNodeAdapter({
    routes(router) {
      router.service(AgentService, impl);
    },
    readMaxBytes: config.maxMessageBytes,
    maxTimeoutMs: config.maxTimeoutMs,
    shutdownSignal: shutdown.signal,
  }),
  maxConcurrentStreams: config.maxConcurrentStreams,
});
const address = await listener.listen();
process.stdout.write(`${JSON.stringify({ msg: "listening", port: address.port })}\n`);

const stop = () => {
  shutdown.abort();
  void listener.close().then(() => process.exit(0));
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
