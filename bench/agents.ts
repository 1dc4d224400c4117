import { setTimeout as sleep } from "node:timers/promises";
import { z } from "zod";
import { defineAgent } from "../src/runtime/index.js";

/**
 * Agents that only the benchmark hosts (AGENT_MODULES=bench/agents.ts).
 * The scenarios of the issue use the built-in echo, ticker and approval;
 * these add what those cannot do.
 */

const ticks = z.object({
  count: z.number().int().min(0).max(1_000_000),
  intervalMs: z.number().int().min(0).max(60_000).default(0),
});

/**
 * Waits for an answer `{count, intervalMs}` and then streams `count`
 * chunks `{tick}` that far apart: the fan-out scenario attaches every
 * watcher first and then lets the events flow.
 */
export const benchFanout = defineAgent({
  name: "bench-fanout",
  description: "Waits for {count, intervalMs}, then streams that many chunks.",
  input: z.object({}),
  output: z.object({ count: z.number().int() }),
  start: "wait",
  nodes: {
    wait: async (ctx) => {
      const { count, intervalMs } = await ctx.requestInput({
        prompt: "How many ticks, how far apart?",
        schema: ticks,
      });
      for (let tick = 1; tick <= count; tick++) {
        if (intervalMs > 0) await sleep(intervalMs, undefined, { signal: ctx.signal });
        await ctx.stream({ tick });
      }
      ctx.result({ count });
    },
  },
});

/**
 * Streams `count` chunks `{tick}` as the ticker does, but keeps up to
 * `window` of them in flight instead of awaiting each before the next, so
 * group commit can store many chunks per transaction.
 */
export const benchBurst = defineAgent({
  name: "bench-burst",
  description: "Streams `count` chunks with up to `window` awaiting storage.",
  input: z.object({
    count: z.number().int().min(0).max(1_000_000),
    window: z.number().int().min(1).max(5_000).default(256),
  }),
  output: z.object({ count: z.number().int() }),
  start: "tick",
  nodes: {
    tick: async (ctx, { count, window }) => {
      const inFlight: Promise<void>[] = [];
      for (let tick = 1; tick <= count; tick++) {
        const stored = ctx.stream({ tick });
        // Awaited below; this only keeps an early failure from being
        // reported as unhandled before its turn comes.
        stored.catch(() => undefined);
        inFlight.push(stored);
        if (inFlight.length >= window) await inFlight.shift();
      }
      await Promise.all(inFlight);
      ctx.result({ count });
    },
  },
});
