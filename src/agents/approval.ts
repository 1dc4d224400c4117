import { z } from "zod";
import { defineAgent } from "../runtime/index.js";

const answer = z.object({ approved: z.boolean(), comment: z.string().optional() });

/** Asks a human to approve something and returns the answer. */
export const approval = defineAgent({
  name: "approval",
  description:
    "Asks a human to approve `subject` and returns the answer `{approved}`.",
  input: z.object({ subject: z.string().default("the request") }),
  output: answer,
  start: "ask",
  nodes: {
    ask: async (ctx, { subject }) => {
      const reply = await ctx.requestInput({
        prompt: `Do you approve ${subject}?`,
        schema: answer,
      });
      ctx.result(reply);
    },
  },
});
