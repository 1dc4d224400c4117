/**
 * The records the gateway keeps. The store persists them as they are; it
 * knows nothing of agents, nodes or protocols, only of invocations, their
 * tasks, their input requests and their numbered events.
 */

/** A value that survives JSON.stringify and JSON.parse unchanged. */
export type Json =
  | null
  | boolean
  | number
  | string
  | Json[]
  | { [key: string]: Json };

export type InvocationState =
  | "queued"
  | "running"
  | "waiting_for_input"
  | "succeeded"
  | "failed"
  | "cancelled";

export const TERMINAL_STATES: readonly InvocationState[] = [
  "succeeded",
  "failed",
  "cancelled",
];

export function isTerminal(state: InvocationState): boolean {
  return TERMINAL_STATES.includes(state);
}

export type OnDisconnect = "continue" | "cancel";

/** Why an invocation failed or was cancelled. */
export interface InvocationError {
  /** A Connect code in snake case, such as `deadline_exceeded`. */
  code: string;
  message: string;
}

export interface InvocationRecord {
  id: string;
  tenant: string;
  agent: string;
  state: InvocationState;
  input: Json;
  /** Undefined until a node sets it; `null` is a result like any other. */
  result?: Json;
  error?: InvocationError;
  metadata: Record<string, string>;
  idempotencyKey?: string;
  traceId?: string;
  onDisconnect: OnDisconnect;
  /** The run's own limit in milliseconds, if one was given. */
  timeoutMs?: number;
  /** Epoch milliseconds past which the run fails; from timeoutMs. */
  deadlineAt?: number;
  lastSequence: number;
  /** Epoch milliseconds. */
  createdAt: number;
  updatedAt: number;
  finishedAt?: number;
}

/** The body of an event; `type` names it as the wire contract does. */
export type EventBody =
  | { type: "started"; invocation: InvocationRecord }
  | { type: "node_started"; node: string; taskId: string; attempt: number }
  | {
      type: "chunk";
      node: string;
      taskId: string;
      attempt: number;
      data: Json;
    }
  | {
      type: "node_finished";
      node: string;
      taskId: string;
      attempt: number;
      durationMs: number;
      emittedTo: string[];
    }
  | {
      type: "node_retrying";
      node: string;
      taskId: string;
      attempt: number;
      error: string;
      delayMs: number;
    }
  | {
      type: "input_requested";
      requestId: string;
      node: string;
      prompt: string;
      schema: Json;
    }
  | { type: "input_provided"; requestId: string }
  | { type: "completed"; result: Json }
  | { type: "failed"; code: string; message: string }
  | { type: "cancelled"; reason: string };

export interface StoredEvent {
  invocationId: string;
  /** 1, 2, 3 ... within the invocation, with no gaps. */
  sequence: number;
  /** Epoch milliseconds. */
  time: number;
  body: EventBody;
}

export function isTerminalEvent(body: EventBody): boolean {
  return (
    body.type === "completed" ||
    body.type === "failed" ||
    body.type === "cancelled"
  );
}

/**
 * One run of one node on one input. Its id is stored before it runs, so it
 * is stable across retries and restarts.
 */
export interface TaskRecord {
  invocationId: string;
  taskId: string;
  node: string;
  input: Json;
  state: "pending" | "finished";
  /** Attempts begun so far; 0 while it has never started. */
  attempt: number;
  createdAt: number;
}

export interface InputRequestRecord {
  invocationId: string;
  requestId: string;
  taskId: string;
  node: string;
  prompt: string;
  schema: Json;
  state: "pending" | "answered";
  /** Set once answered. */
  answer?: Json;
  createdAt: number;
  answeredAt?: number;
}
