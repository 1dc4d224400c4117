import { describe, expect, it } from "vitest";
import { approval } from "../../src/agents/approval.js";
import { echo } from "../../src/agents/echo.js";
import { ticker } from "../../src/agents/ticker.js";
import { wordfreq } from "../../src/agents/wordfreq.js";
import { runAgent } from "../../src/runtime/index.js";

/** The built-in agents, run in-process as an agent author would test one. */

const types = (events: { type: string }[]) => events.map((e) => e.type);

describe("built-in agents", () => {
  it("echo streams its input once and returns it", async () => {
    const run = await runAgent(echo, { text: "hi" });
    expect(run.invocation.state).toBe("succeeded");
    expect(run.invocation.result).toEqual({ text: "hi" });
    expect(types(run.events)).toEqual([
      "started",
      "node_started",
      "chunk",
      "node_finished",
      "completed",
    ]);
  });

  it("ticker streams count chunks in order", async () => {
    const run = await runAgent(ticker, { count: 5 });
    const ticks = run.events.flatMap((e) => (e.type === "chunk" ? [e.data] : []));
    expect(ticks).toEqual([1, 2, 3, 4, 5].map((tick) => ({ tick })));
    expect(run.invocation.result).toEqual({ count: 5 });
  });

  it("approval asks, then returns the answer", async () => {
    const prompts: string[] = [];
    const run = await runAgent(approval, { subject: "the plan" }, {
      answer: ({ prompt }) => {
        prompts.push(prompt);
        return { approved: false, comment: "not yet" };
      },
    });
    expect(prompts).toEqual(["Do you approve the plan?"]);
    expect(run.invocation.result).toEqual({ approved: false, comment: "not yet" });
  });

  it("approval waits when nobody answers", async () => {
    const run = await runAgent(approval, {});
    expect(run.invocation.state).toBe("waiting_for_input");
    expect(run.invocation.result).toBeUndefined();
  });

  it("wordfreq counts each paragraph in its own node and merges once", async () => {
    const text = "the cat\n\nthe dog and the cat\n\n  \n\nA dog";
    const run = await runAgent(wordfreq, { text, top: 3 });
    expect(run.invocation.result).toEqual({
      words: [["the", 3], ["cat", 2], ["dog", 2]],
    });
    const nodes = run.events.flatMap((e) =>
      e.type === "node_finished" ? [e.node] : [],
    );
    expect(nodes.filter((n) => n === "count")).toHaveLength(3);
    expect(nodes.filter((n) => n === "merge")).toHaveLength(1);
    expect(nodes.at(-1)).toBe("merge");
  });
});
