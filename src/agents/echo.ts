import { z } from "zod";
import { defineAgent, type Json } from "../runtime/index.js";

const anyJson = z.json();

/** Returns its input as the result, after streaming it as one chunk. */
export const echo = defineAgent({
  name: "echo",
  description: "Returns its input as the result, streamed first as one chunk.",
  input: anyJson,
  output: anyJson,
  start: "reply",
  nodes: {
    reply: async (ctx, input: Json) => {
      await ctx.stream(input);
      ctx.result(input);
    },
  },
});
