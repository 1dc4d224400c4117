import { setTimeout as sleep } from "node:timers/promises";
import { z } from "zod";
import { defineAgent } from "../runtime/index.js";

/** Streams `count` numbered chunks, `intervalMs` apart. */
export const ticker = defineAgent({
  name: "ticker",
  description:
    "Streams `count` chunks `{tick}` at `intervalMs` apart; the result is `{count}`.",
  input: z.object({
    count: z.number().int().min(0).max(1_000_000),
    intervalMs: z.number().int().min(0).max(60_000).default(0),
  }),
  output: z.object({ count: z.number().int() }),
  start: "tick",
  nodes: {
    tick: async (ctx, { count, intervalMs }) => {
      for (let tick = 1; tick <= count; tick++) {
        if (intervalMs > 0) await sleep(intervalMs, undefined, { signal: ctx.signal });
        await ctx.stream({ tick });
      }
      ctx.result({ count });
    },
  },
});
