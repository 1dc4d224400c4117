import type { Agent } from "./agent.js";
import { AgentRegistry } from "./registry.js";
import { Runtime } from "./runtime.js";
import { createSqliteStore } from "../store/sqlite/sqlite-store.js";
import {
  isTerminalEvent,
  type EventBody,
  type InvocationRecord,
  type Json,
} from "../store/types.js";

export interface RunAgentOptions {
  /**
   * Answers the agent's input requests, as a human would through
   * ProvideInput. Without it, the first request ends the run with the
   * invocation WAITING_FOR_INPUT.
   */
  answer?: (request: { prompt: string; node: string; schema: Json }) => Json;
  /** The run's own limit. */
  timeoutMs?: number;
}

export interface AgentRun {
  /** The invocation as it ended (or waits for input). */
  invocation: InvocationRecord;
  /** Every event, in sequence order. */
  events: EventBody[];
}

/**
 * Runs an agent in-process against an in-memory store, with the same
 * runtime the gateway uses, and returns its events: a test of an agent
 * needs no server.
 */
export async function runAgent(
  agent: Agent,
  input: Json,
  options: RunAgentOptions = {},
): Promise<AgentRun> {
  const store = createSqliteStore({ path: ":memory:", synchronous: "off" });
  const runtime = new Runtime({ store, agents: new AgentRegistry([agent]) });
  const tenant = "test";
  const events: EventBody[] = [];
  const done = new AbortController();
  try {
    const { invocation } = await runtime.start({
      tenant,
      agent: agent.name,
      input,
      timeoutMs: options.timeoutMs,
    });
    const watch = await runtime.watch(tenant, invocation.id, 0, done.signal);
    for await (const event of watch) {
      if ("heartbeat" in event) continue;
      events.push(event.body);
      if (isTerminalEvent(event.body)) break;
      if (event.body.type === "input_requested") {
        if (!options.answer) break;
        const { requestId, prompt, node, schema } = event.body;
        await runtime.provideInput(
          tenant,
          invocation.id,
          requestId,
          options.answer({ prompt, node, schema }),
        );
      }
    }
    return { invocation: await runtime.get(tenant, invocation.id), events };
  } finally {
    done.abort();
    await runtime.close();
    await store.close();
  }
}
