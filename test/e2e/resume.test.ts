import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { InvocationState, type Event } from "../../gen/agent/v1/agent_pb.js";
import { defineAgent } from "../../src/runtime/index.js";
import {
  collect,
  expectWholeLog,
  ofKind,
  range,
  sequences,
  ticks,
  value,
} from "../helpers/event-log.js";
import { PROTOCOLS, startGateway, type TestGateway } from "../helpers/gateway.js";

/**
 * Re-attaching to an invocation loses nothing and repeats nothing: a client
 * that drops its stream and watches from the last sequence it saw gets the
 * rest exactly, whenever it attaches and however slowly it reads.
 */

const TICKS = 200;
const tickerInput = value({ count: TICKS, intervalMs: 2 });

/**
 * Asks for a go, then streams `rounds` bursts of `size` chunks. A burst is
 * stored in one commit and published at once, so any watcher with a buffer
 * smaller than `size` overflows on it.
 */
const burst = defineAgent({
  name: "burst",
  description: "Waits for a go, then streams bursts of chunks.",
  input: z.object({ rounds: z.number().int(), size: z.number().int() }),
  output: z.object({ chunks: z.number().int() }),
  start: "burst",
  nodes: {
    burst: async (ctx, { rounds, size }) => {
      await ctx.requestInput({ prompt: "go?", schema: z.boolean() });
      for (let round = 0; round < rounds; round++) {
        await Promise.all(
          range(1, size).map((i) => ctx.stream({ tick: round * size + i })),
        );
      }
      ctx.result({ chunks: rounds * size });
    },
  },
});

let gw: TestGateway;
/** Holds two live events per watcher, so watchers overflow all the time. */
let tiny: TestGateway;
beforeAll(async () => {
  [gw, tiny] = await Promise.all([
    startGateway(),
    startGateway({ agents: [burst], watchBufferSize: 2 }),
  ]);
});
afterAll(async () => {
  await Promise.all([gw?.close(), tiny?.close()]);
});

/** A bound on waiting for a stream, so a hang fails instead of stalling. */
const BOUND_MS = 20_000;

describe.each(PROTOCOLS)("resume over %s", (protocol) => {
  it("a dropped InvokeStream resumes with WatchInvocation, losing nothing", async () => {
    const client = gw.client(protocol);
    const drop = new AbortController();
    const seen: Event[] = [];
    let dropped = false;
    try {
      const stream = client.invokeStream(
        { agent: "ticker", input: tickerInput },
        { signal: drop.signal },
      );
      for await (const { event } of stream) {
        if (!event || event.kind.case === "heartbeat") continue;
        seen.push(event);
        if (ofKind(seen, "chunk").length === 20) drop.abort();
      }
    } catch (error) {
      dropped = ConnectError.from(error).code === Code.Canceled;
    }
    expect(dropped).toBe(true);
    expect(seen[0]?.kind.case).toBe("started");
    expect(ofKind(seen, "completed")).toHaveLength(0);
    const id = seen[0]!.invocationId;
    const lastSeen = seen.at(-1)!.sequence;

    const rest = await collect(
      client.watchInvocation(
        { invocationId: id, afterSequence: lastSeen },
        { signal: AbortSignal.timeout(BOUND_MS) },
      ),
    );
    expect(rest[0]?.sequence).toBe(lastSeen + 1n);
    const all = [...seen, ...rest];
    expectWholeLog(all);
    expect(ticks(all)).toEqual(range(1, TICKS));

    const { invocation } = await client.getInvocation({ invocationId: id });
    expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
    expect(invocation?.lastSequence).toBe(all.at(-1)!.sequence);
  });
});

describe("WatchInvocation of a finished invocation", () => {
  it("replays exactly the events after after_sequence", async () => {
    const client = gw.client("grpc");
    const { invocation } = await client.invoke({
      agent: "ticker",
      input: value({ count: 30 }),
    });
    expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
    const id = invocation!.id;
    const whole = await collect(
      client.watchInvocation(
        { invocationId: id, afterSequence: 0n },
        { signal: AbortSignal.timeout(BOUND_MS) },
      ),
    );
    expectWholeLog(whole);
    const n = whole.length;

    for (const protocol of PROTOCOLS) {
      for (const after of [1, Math.floor(n / 2), n - 1]) {
        const rest = await collect(
          gw.client(protocol).watchInvocation(
            { invocationId: id, afterSequence: BigInt(after) },
            { signal: AbortSignal.timeout(BOUND_MS) },
          ),
        );
        expect(sequences(rest)).toEqual(range(after + 1, n));
        expect(rest).toEqual(whole.slice(after));
      }
    }
  });

  it("ends at once when after_sequence is its last event", async () => {
    const client = gw.client("connect-json");
    const { invocation } = await client.invoke({
      agent: "ticker",
      input: value({ count: 3 }),
    });
    expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
    const rest = await collect(
      client.watchInvocation(
        { invocationId: invocation!.id, afterSequence: invocation!.lastSequence },
        { signal: AbortSignal.timeout(BOUND_MS) },
      ),
    );
    expect(rest).toEqual([]);
  });

  it("refuses an after_sequence past its last event", async () => {
    const client = gw.client("grpc");
    const { invocation } = await client.invoke({
      agent: "ticker",
      input: value({ count: 3 }),
    });
    const past = invocation!.lastSequence + 1n;
    const watch = collect(
      client.watchInvocation(
        { invocationId: invocation!.id, afterSequence: past },
        { signal: AbortSignal.timeout(BOUND_MS) },
      ),
    );
    await expect(watch).rejects.toMatchObject({ code: Code.InvalidArgument });
  });
});

describe("watchers attached at random times", () => {
  it("each receive exactly the events after their sequence", async () => {
    const client = gw.client("grpc");
    const { invocation } = await client.startInvocation({
      agent: "ticker",
      input: tickerInput,
    });
    const id = invocation!.id;

    // Random attach times over the run (about 400 ms of ticks at least)
    // and a little after it; half replay from a sequence already stored.
    const watchers = range(1, 40).map(async (i) => {
      const protocol = PROTOCOLS[i % PROTOCOLS.length]!;
      const watcher = gw.client(protocol);
      await sleep(Math.floor(Math.random() * 800));
      let after = 0n;
      if (i % 2 === 0) {
        const { invocation: now } = await watcher.getInvocation({ invocationId: id });
        after = BigInt(Math.floor(Math.random() * Number(now!.lastSequence)));
      }
      const events = await collect(
        watcher.watchInvocation(
          { invocationId: id, afterSequence: after },
          { signal: AbortSignal.timeout(BOUND_MS) },
        ),
      );
      return { after: Number(after), events };
    });
    const results = await Promise.all(watchers);

    const whole = results.find((r) => r.after === 0)!.events;
    expectWholeLog(whole);
    expect(ticks(whole)).toEqual(range(1, TICKS));
    for (const { after, events } of results) {
      expect(sequences(events)).toEqual(range(after + 1, whole.length));
      expect(events).toEqual(whole.slice(after));
    }
  });
});

describe("a slow watcher whose buffer overflows", () => {
  it("still gets every event once, in order", async () => {
    const client = tiny.client("grpc");
    const { invocation } = await client.startInvocation({
      agent: "burst",
      input: value({ rounds: 5, size: 40 }),
    });
    const id = invocation!.id;

    // Attach before the bursts, so they reach the watchers' buffers live;
    // read slowly as well.
    let answer!: (requestId: string) => void;
    const asked = new Promise<string>((resolve) => (answer = resolve));
    const slow = PROTOCOLS.map((protocol) =>
      collect(
        tiny.client(protocol).watchInvocation(
          { invocationId: id, afterSequence: 0n },
          { signal: AbortSignal.timeout(BOUND_MS) },
        ),
        async (event, all) => {
          if (event.kind.case === "inputRequested") {
            answer(event.kind.value.requestId);
          }
          if (all.length % 10 === 0) await sleep(5);
        },
      ),
    );
    const requestId = await asked;
    await client.provideInput({
      invocationId: id,
      requestId,
      value: value(true),
    });
    const logs = await Promise.all(slow);

    for (const events of logs) {
      expectWholeLog(events);
      expect(ticks(events)).toEqual(range(1, 200));
    }
  });

  it("reading slowly, still gets every event of a ticker once", async () => {
    const client = tiny.client("connect-json");
    const stream = client.invokeStream(
      { agent: "ticker", input: value({ count: 300 }) },
      { signal: AbortSignal.timeout(BOUND_MS) },
    );
    const events: Event[] = [];
    for await (const { event } of stream) {
      if (!event || event.kind.case === "heartbeat") continue;
      events.push(event);
      // Fall behind the ticker, which does not wait for anyone.
      if (events.length % 10 === 0) await sleep(5);
    }
    expectWholeLog(events);
    expect(ticks(events)).toEqual(range(1, 300));
  });
});
