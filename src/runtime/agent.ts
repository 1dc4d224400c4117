import type { z } from "zod";
import type { Logger } from "../telemetry/logger.js";
import type { Json } from "../store/types.js";

/** What a node can do while it runs. */
export interface NodeContext<TResult = Json> {
  /** The invocation this node runs in. */
  readonly invocationId: string;
  /** This run of this node on this input; the same across its attempts. */
  readonly taskId: string;
  /** 1 on the first attempt, 2 on the first retry, and so on. */
  readonly attempt: number;
  /** The node's name. */
  readonly node: string;
  /** Fires when the invocation is cancelled, times out or the gateway stops. */
  readonly signal: AbortSignal;
  /** A logger with the invocation, task and node attached. */
  readonly logger: Logger;
  /**
   * Sends `input` to another node of the agent. Emits take effect when this
   * node finishes (they are stored with its checkpoint); the nodes emitted
   * to then run concurrently.
   */
  emit(node: string, input: Json): void;
  /**
   * Streams a chunk (a model token, a progress line) to every watcher, who
   * sees it once it is stored. Resolves at once while only a few chunks
   * (256 by default) wait to be stored, so that many share one commit, and
   * otherwise once this one is stored. Await it: a loop that does not
   * fails its node when too many chunks wait.
   */
  stream(data: Json): Promise<void>;
  /**
   * Asks a human for input and waits for the answer, which is validated
   * against `schema`. The invocation is WAITING_FOR_INPUT meanwhile. After
   * a restart an answered request is answered again from the store.
   */
  requestInput<T extends z.ZodType>(request: {
    prompt: string;
    schema: T;
  }): Promise<z.output<T>>;
  /**
   * Sets the invocation's result. When this node finishes the invocation
   * succeeds and every other running node is aborted.
   */
  result(value: TResult): void;
}

export type NodeFunction<TInput, TResult> = (
  ctx: NodeContext<TResult>,
  input: TInput,
) => Promise<void> | void;

/** How often a failing node runs again, and how long it waits between. */
export interface RetryPolicy {
  /** Attempts in all, the first included. @default 3 */
  maxAttempts?: number;
  /** The wait after the first failure; it doubles after each. @default 100 */
  initialDelayMs?: number;
  /** The longest wait. @default 5000 */
  maxDelayMs?: number;
}

/** A node with options. A plain function is a node with the defaults. */
export interface NodeSpec<TInput = any, TResult = Json> {
  run: NodeFunction<TInput, TResult>;
  retry?: RetryPolicy;
  /**
   * An aggregating node collects every input emitted to it and runs once,
   * on all of them, when no other node of the invocation is left to run.
   */
  aggregate?: boolean;
}

export type NodeDefinition<TInput = any, TResult = Json> =
  | NodeFunction<TInput, TResult>
  | NodeSpec<TInput, TResult>;

export interface AgentDefinition<
  I extends z.ZodType = z.ZodType,
  O extends z.ZodType = z.ZodType,
> {
  /** The unique name callers use. Letters, digits, `-` and `_`. */
  name: string;
  description: string;
  /** Validates (and applies defaults to) the input of every invocation. */
  input: I;
  /** Validates the result a node sets. */
  output: O;
  /** The node each invocation starts at, given the input. */
  start: string;
  nodes: Record<string, NodeDefinition<any, z.output<O>>>;
}

/** An agent as the runtime holds it: definition plus resolved nodes. */
export interface Agent<
  I extends z.ZodType = z.ZodType,
  O extends z.ZodType = z.ZodType,
> extends AgentDefinition<I, O> {
  readonly specs: ReadonlyMap<string, NodeSpec<any, z.output<O>>>;
}

const NAME = /^[A-Za-z][A-Za-z0-9_-]{0,62}$/;

/**
 * Defines an agent: a graph of async nodes that starts at `start` with the
 * validated input. Throws at once on a definition that cannot run.
 */
export function defineAgent<
  I extends z.ZodType,
  O extends z.ZodType,
  S extends string,
  N extends Record<string, unknown>,
>(
  definition: {
    name: string;
    description: string;
    input: I;
    output: O;
    start: S & keyof N;
    // The start node gets the validated input, typed from the schema; the
    // others declare what they are emitted.
    nodes: {
      [K in keyof N]: K extends S
        ? NodeDefinition<z.output<I>, z.output<O>>
        : NodeDefinition<any, z.output<O>>;
    };
  },
): Agent<I, O> {
  if (!NAME.test(definition.name)) {
    throw new Error(`agent name ${JSON.stringify(definition.name)} is not valid`);
  }
  const specs = new Map<string, NodeSpec<any, z.output<O>>>();
  const nodes = definition.nodes as Record<
    string,
    NodeDefinition<any, z.output<O>>
  >;
  for (const [name, node] of Object.entries(nodes)) {
    if (!NAME.test(name)) {
      throw new Error(`node name ${JSON.stringify(name)} is not valid`);
    }
    specs.set(name, typeof node === "function" ? { run: node } : node);
  }
  const start = specs.get(definition.start);
  if (!start) {
    throw new Error(
      `agent ${definition.name}: start node ${definition.start} is not defined`,
    );
  }
  if (start.aggregate) {
    throw new Error(
      `agent ${definition.name}: the start node cannot be an aggregate`,
    );
  }
  return { ...definition, nodes, specs };
}

/**
 * Makes a fan-in node: it runs once, with every input emitted to it, when
 * the rest of the graph is done.
 */
export function aggregate<TInput, TResult = Json>(
  run: NodeFunction<TInput[], TResult>,
  options: { retry?: RetryPolicy } = {},
): NodeSpec<TInput[], TResult> {
  return { run, aggregate: true, ...options };
}
