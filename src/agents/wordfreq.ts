import { z } from "zod";
import { aggregate, defineAgent } from "../runtime/index.js";

const WORD = /[\p{L}\p{N}']+/gu;

type Counts = Record<string, number>;

/**
 * Counts the most frequent words of a text: one node splits it into
 * paragraphs, one node per paragraph counts in parallel, and an aggregate
 * merges the counts once they are all in.
 */
export const wordfreq = defineAgent({
  name: "wordfreq",
  description:
    "Counts the most frequent words of a text: paragraphs are counted in parallel, then merged.",
  input: z.object({
    text: z.string(),
    top: z.number().int().min(1).max(1000).default(10),
  }),
  output: z.object({
    words: z.array(z.tuple([z.string(), z.number().int()])),
  }),
  start: "split",
  nodes: {
    split: (ctx, { text, top }) => {
      const paragraphs = text.split(/\n\s*\n/).filter((p) => p.trim() !== "");
      for (const paragraph of paragraphs) ctx.emit("count", paragraph);
      ctx.emit("merge", { top });
    },
    count: async (ctx, paragraph: string) => {
      const counts: Counts = {};
      for (const [word] of paragraph.toLowerCase().matchAll(WORD)) {
        counts[word] = (counts[word] ?? 0) + 1;
      }
      await ctx.stream({ words: Object.keys(counts).length });
      ctx.emit("merge", { counts });
    },
    merge: aggregate<{ top?: number; counts?: Counts }>((ctx, inputs) => {
      let top = 10;
      const total: Counts = {};
      for (const input of inputs) {
        if (input.top !== undefined) top = input.top;
        for (const [word, n] of Object.entries(input.counts ?? {})) {
          total[word] = (total[word] ?? 0) + n;
        }
      }
      const words = Object.entries(total)
        .sort(([a, x], [b, y]) => y - x || a.localeCompare(b))
        .slice(0, top);
      ctx.result({ words });
    }),
  },
});
