/**
 * The public API for agent authors: define an agent, and run it in-process
 * against an in-memory store in tests. Agents import only from here.
 */
export { defineAgent, aggregate } from "./agent.js";
export type {
  Agent,
  AgentDefinition,
  NodeContext,
  NodeDefinition,
  NodeFunction,
  NodeSpec,
  RetryPolicy,
} from "./agent.js";
export type { Json } from "../store/types.js";
export { runAgent } from "./testing.js";
export type { AgentRun, RunAgentOptions } from "./testing.js";
