import { setTimeout as sleep } from "node:timers/promises";
import { z } from "zod";
import type { Agent, NodeContext, NodeSpec } from "./agent.js";
import type { CommitQueue } from "./commit-queue.js";
import { RuntimeError, messageOf } from "./errors.js";
import type { RunObserver } from "./observer.js";
import type { InvocationChange, Store } from "../store/store.js";
import type {
  EventBody,
  InputRequestRecord,
  InvocationRecord,
  InvocationState,
  Json,
  StoredEvent,
  TaskRecord,
} from "../store/types.js";
import type { Logger } from "../telemetry/logger.js";

export interface ExecutionOptions {
  store: Store;
  queue: CommitQueue;
  agent: Agent;
  logger: Logger;
  /** Nodes of one invocation that run at once; more wait their turn. */
  maxConcurrentNodes: number;
  /** Chunks a node may stream before `ctx.stream()` waits for the store. */
  chunksAhead: number;
  /** Chunks of one invocation that may wait to be stored at once. */
  maxPendingChunks: number;
  /** Sees every change this run writes, and its stop. */
  observer: RunObserver;
  /**
   * The tasks and input requests of a fresh invocation, which the store
   * need not be asked for. @default read from the store at start
   */
  known?: { tasks: TaskRecord[]; inputRequests: InputRequestRecord[] };
}

/** A node running now, on one task (or, for an aggregate, several). */
interface Running {
  tasks: TaskRecord[];
  controller: AbortController;
  waitingForInput: number;
}

/** A node awaiting a human's answer. */
interface InputWaiter {
  schema: z.ZodType;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
  running: Running;
}

/** Thrown inside a node when its invocation stops; never retried. */
class Stopped extends Error {
  override readonly name = "Stopped";
}

/**
 * Runs one invocation to its end: starts ready tasks, checkpoints each
 * finished node, and writes the terminal event. It owns the invocation's
 * sequence numbers while it runs.
 *
 * It can be built from a fresh invocation or from one that was interrupted:
 * finished tasks are never run again, a task that had started runs again
 * (its earlier attempt is reported as interrupted), and answered input
 * requests are answered again from the store.
 */
export class Execution {
  private state: InvocationState;
  private sequence: number;
  private readonly tasks = new Map<string, TaskRecord>();
  private readonly inputRequests = new Map<string, InputRequestRecord>();
  private readonly waiters = new Map<string, InputWaiter>();
  private readonly running = new Set<Running>();
  private nextTaskNumber = 1;
  private pendingChunks = 0;
  /**
   * Set when the invocation begins to end (a result, a failure, a cancel,
   * a stop): no node starts after it.
   */
  private ending = false;
  /** Set once the terminal change is enqueued: no write may follow it. */
  private closed = false;
  /** Set when the gateway stops: nothing more is written. */
  private stopped = false;
  private deadlineTimer: NodeJS.Timeout | undefined;
  private readonly done: Promise<InvocationRecord>;
  private settle!: (record: InvocationRecord) => void;
  private readonly log: Logger;

  constructor(
    private record: InvocationRecord,
    private readonly options: ExecutionOptions,
  ) {
    this.state = record.state;
    this.sequence = record.lastSequence;
    this.log = options.logger.child({
      invocationId: record.id,
      agent: record.agent,
    });
    this.done = new Promise((resolve) => (this.settle = resolve));
  }

  get id(): string {
    return this.record.id;
  }

  /** Resolves with the final record once the invocation has ended. */
  get finished(): Promise<InvocationRecord> {
    return this.done;
  }

  /** True while every running node waits for input. */
  get waitingForInput(): boolean {
    return this.state === "waiting_for_input";
  }

  /** Loads what is stored of the invocation and starts running it. */
  async start(): Promise<void> {
    const { store, known } = this.options;
    const id = this.record.id;
    for (const task of known?.tasks ?? (await store.listTasks(id))) {
      this.tasks.set(task.taskId, task);
    }
    for (const request of known?.inputRequests ??
      (await store.listInputRequests(id))) {
      this.inputRequests.set(request.requestId, request);
    }
    this.nextTaskNumber = this.tasks.size + 1;
    if (this.record.deadlineAt !== undefined) {
      const left = this.record.deadlineAt - Date.now();
      this.deadlineTimer = setTimeout(() => {
        void this.fail(
          "deadline_exceeded",
          `the invocation ran past its timeout of ${this.record.timeoutMs} ms`,
        );
      }, Math.max(0, left));
      this.deadlineTimer.unref();
    }
    if (this.ending) return;
    // Not awaited: the first node's own write follows in the same commit,
    // and a failed write stops the execution anyway.
    this.write({ set: { state: "running" } }).catch(() => undefined);
    this.pump();
  }

  /**
   * Cancels the invocation: aborts its nodes and records `cancelled`.
   * Resolves with the final record, whatever it is.
   */
  async cancel(reason: string): Promise<InvocationRecord> {
    await this.end("cancelled", { code: "cancelled", message: reason }, {
      type: "cancelled",
      reason,
    });
    return this.done;
  }

  /**
   * Stops running without recording an end, so the invocation resumes when
   * the gateway next starts. Nodes see their signal abort.
   */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.ending = true;
    this.options.observer.stopped();
    clearTimeout(this.deadlineTimer);
    this.abortAll("the gateway is stopping");
    this.settle({ ...this.record });
  }

  /** Answers a pending input request. */
  async provideInput(requestId: string, value: Json): Promise<void> {
    const request = this.inputRequests.get(requestId);
    if (!request) {
      throw new RuntimeError("not_found", `input request ${requestId} not found`);
    }
    if (request.state !== "pending" || this.ending) {
      throw new RuntimeError(
        "failed_precondition",
        `input request ${requestId} is not pending`,
      );
    }
    const waiter = this.waiters.get(requestId);
    // After a restart a request is known before its node has asked again;
    // its stored JSON Schema validates the answer meanwhile.
    const schema = waiter?.schema ?? z.fromJSONSchema(request.schema as never);
    const parsed = schema.safeParse(value);
    if (!parsed.success) {
      throw new RuntimeError(
        "invalid_argument",
        `the answer does not match the schema: ${formatIssues(parsed.error)}`,
      );
    }
    const answeredAt = Date.now();
    // Mark it answered before the write, so a concurrent second answer is
    // refused rather than recorded twice.
    request.state = "answered";
    request.answer = value;
    request.answeredAt = answeredAt;
    if (waiter) {
      this.waiters.delete(requestId);
      waiter.running.waitingForInput -= 1;
    }
    await this.write({
      answeredInputRequests: [{ requestId, answer: value, answeredAt }],
      events: [this.event({ type: "input_provided", requestId })],
      set: this.stateChange(),
    });
    waiter?.resolve(parsed.data);
  }

  /** Starts every task that can run now, or ends a finished graph. */
  private pump(): void {
    if (this.ending) return;
    const busy = new Set<string>();
    for (const r of this.running) for (const t of r.tasks) busy.add(t.taskId);
    const ready = [...this.tasks.values()].filter(
      (t) => t.state === "pending" && !busy.has(t.taskId),
    );
    const isAggregate = (t: TaskRecord) => this.spec(t.node).aggregate === true;
    for (const task of ready.filter((t) => !isAggregate(t))) {
      if (this.running.size >= this.options.maxConcurrentNodes) return;
      this.launch([task]);
    }
    const othersActive =
      ready.some((t) => !isAggregate(t)) ||
      [...this.running].some((r) => r.tasks.some((t) => !isAggregate(t)));
    if (!othersActive) {
      // Fan-in: nothing else can emit any more, so every aggregate node
      // runs once on all the inputs it has collected.
      const byNode = new Map<string, TaskRecord[]>();
      for (const task of ready.filter(isAggregate)) {
        byNode.set(task.node, [...(byNode.get(task.node) ?? []), task]);
      }
      for (const tasks of byNode.values()) this.launch(tasks);
    }
    if (this.running.size === 0) {
      void this.end(
        "failed",
        {
          code: "internal",
          message: "the agent finished without setting a result",
        },
      );
    }
  }

  private launch(tasks: TaskRecord[]): void {
    const running: Running = {
      tasks,
      controller: new AbortController(),
      waitingForInput: 0,
    };
    this.running.add(running);
    this.runNode(running)
      .catch((error: unknown) => {
        if (this.ending) return;
        this.log.error({ err: error }, "node runner failed");
        void this.fail("internal", `node ${tasks[0]?.node} failed: ${messageOf(error)}`);
      })
      .finally(() => {
        this.running.delete(running);
        this.pump();
      });
  }

  /** Runs a node's attempts until one succeeds or the limit is reached. */
  private async runNode(running: Running): Promise<void> {
    const task = running.tasks[0]!;
    const spec = this.spec(task.node);
    const retry = spec.retry ?? {};
    const maxAttempts = retry.maxAttempts ?? 3;
    const signal = running.controller.signal;

    // A task that had started before a restart was interrupted: its
    // chunks are void, as for any failed attempt.
    if (task.attempt > 0) {
      await this.write({
        events: [
          this.event({
            type: "node_retrying",
            node: task.node,
            taskId: task.taskId,
            attempt: task.attempt,
            error: "interrupted: the gateway stopped while the node ran",
            delayMs: 0,
          }),
        ],
      });
    }

    for (let attempt = task.attempt + 1; ; attempt++) {
      if (this.ending) return;
      const outcome = await this.runAttempt(running, spec, attempt);
      if (outcome === "done" || this.ending || signal.aborted) return;
      if (attempt >= maxAttempts) {
        await this.fail(
          "internal",
          `node ${task.node} failed after ${attempt} attempts: ${messageOf(outcome.error)}`,
        );
        return;
      }
      const delayMs = Math.min(
        (retry.initialDelayMs ?? 100) * 2 ** (attempt - 1),
        retry.maxDelayMs ?? 5000,
      );
      this.log.warn(
        { node: task.node, taskId: task.taskId, attempt, err: outcome.error },
        "node attempt failed; retrying",
      );
      await this.write({
        events: [
          this.event({
            type: "node_retrying",
            node: task.node,
            taskId: task.taskId,
            attempt,
            error: messageOf(outcome.error),
            delayMs,
          }),
        ],
      });
      await sleep(delayMs, undefined, { signal }).catch(() => undefined);
    }
  }

  private async runAttempt(
    running: Running,
    spec: NodeSpec,
    attempt: number,
  ): Promise<"done" | { error: unknown }> {
    const task = running.tasks[0]!;
    const { node, taskId } = task;
    for (const t of running.tasks) t.attempt = attempt;
    void this.write({
      startedTasks: running.tasks.map((t) => ({ taskId: t.taskId, attempt })),
      events: [this.event({ type: "node_started", node, taskId, attempt })],
    }).catch(() => undefined);

    const emits: { node: string; input: Json }[] = [];
    let result: { value: Json } | undefined;
    let inputIndex = 0;
    const signal = running.controller.signal;
    const ctx: NodeContext = {
      invocationId: this.record.id,
      taskId,
      attempt,
      node,
      signal,
      logger: this.log.child({ node, taskId, attempt }),
      emit: (target, input) => {
        if (!this.options.agent.specs.has(target)) {
          throw new Error(`node ${node} emitted to unknown node ${target}`);
        }
        emits.push({ node: target, input });
      },
      stream: (data) => this.chunk(running, attempt, data),
      requestInput: (request) =>
        this.requestInput(running, `${taskId}.${inputIndex++}`, request),
      result: (value) => {
        result = { value };
      },
    };
    const input: Json = spec.aggregate
      ? running.tasks.map((t) => t.input)
      : task.input;
    const startedAt = performance.now();
    try {
      await spec.run(ctx, input);
    } catch (error) {
      return { error };
    }
    if (this.ending || signal.aborted) return "done";
    if (result) {
      const parsed = this.options.agent.output.safeParse(result.value);
      if (!parsed.success) {
        await this.fail(
          "internal",
          `node ${node} set a result that does not match the output schema: ${formatIssues(parsed.error)}`,
        );
        return "done";
      }
      result = { value: parsed.data as Json };
    }
    await this.checkpoint(running, attempt, emits, result, startedAt);
    return "done";
  }

  /**
   * Stores a finished node in one transaction: the task is finished, its
   * emits become tasks, and a result it set ends the invocation.
   */
  private async checkpoint(
    running: Running,
    attempt: number,
    emits: { node: string; input: Json }[],
    result: { value: Json } | undefined,
    startedAt: number,
  ): Promise<void> {
    const { node, taskId } = running.tasks[0]!;
    const now = Date.now();
    const newTasks: TaskRecord[] = emits.map((emit) => ({
      invocationId: this.record.id,
      taskId: `t${this.nextTaskNumber++}`,
      node: emit.node,
      input: emit.input,
      state: "pending",
      attempt: 0,
      createdAt: now,
    }));
    const events = [
      this.event({
        type: "node_finished",
        node,
        taskId,
        attempt,
        durationMs: performance.now() - startedAt,
        emittedTo: emits.map((e) => e.node),
      }),
    ];
    const change: Omit<InvocationChange, "invocationId"> = {
      finishedTasks: running.tasks.map((t) => t.taskId),
      newTasks,
      events,
    };
    if (result) {
      this.ending = true;
      events.push(this.event({ type: "completed", result: result.value }));
      change.set = {
        state: "succeeded",
        result: result.value,
        finishedAt: now,
      };
    }
    for (const t of running.tasks) t.state = "finished";
    for (const t of newTasks) this.tasks.set(t.taskId, t);
    this.running.delete(running);
    if (result) this.abortAll("the invocation has its result");
    else change.set = this.stateChange();
    await this.write(change, result !== undefined);
    if (result) this.finish(change.set!);
  }

  private async chunk(running: Running, attempt: number, data: Json) {
    const { node, taskId } = running.tasks[0]!;
    if (this.ending || running.controller.signal.aborted) {
      throw new Stopped("the invocation is no longer running");
    }
    if (this.pendingChunks >= this.options.maxPendingChunks) {
      throw new RuntimeError(
        "resource_exhausted",
        `more than ${this.options.maxPendingChunks} chunks wait to be stored; await ctx.stream()`,
      );
    }
    this.pendingChunks++;
    const stored = this.write({
      events: [this.event({ type: "chunk", node, taskId, attempt, data })],
    }).finally(() => this.pendingChunks--);
    // A failed write stops the whole execution; the node hears of it from
    // its signal and its next call, so an unawaited failure is not lost.
    stored.catch(() => undefined);
    // Commits keep their order: once this chunk is stored, so is every
    // chunk before it.
    if (this.pendingChunks > this.options.chunksAhead) await stored;
  }

  private async requestInput(
    running: Running,
    requestId: string,
    request: { prompt: string; schema: z.ZodType },
  ): Promise<any> {
    const task = running.tasks[0]!;
    const known = this.inputRequests.get(requestId);
    if (known?.state === "answered") {
      return request.schema.parse(known.answer);
    }
    const signal = running.controller.signal;
    if (signal.aborted) throw new Stopped("the invocation is no longer running");
    const answer = new Promise((resolve, reject) => {
      this.waiters.set(requestId, { schema: request.schema, resolve, reject, running });
    });
    running.waitingForInput += 1;
    if (!known) {
      const schema = z.toJSONSchema(request.schema, { io: "input" }) as Json;
      const record: InputRequestRecord = {
        invocationId: this.record.id,
        requestId,
        taskId: task.taskId,
        node: task.node,
        prompt: request.prompt,
        schema,
        state: "pending",
        createdAt: Date.now(),
      };
      this.inputRequests.set(requestId, record);
      await this.write({
        newInputRequests: [record],
        events: [
          this.event({
            type: "input_requested",
            requestId,
            node: task.node,
            prompt: request.prompt,
            schema,
          }),
        ],
        set: this.stateChange(),
      });
    } else {
      await this.write({ set: this.stateChange() });
    }
    return answer;
  }

  private async fail(code: string, message: string): Promise<void> {
    await this.end("failed", { code, message }, { type: "failed", code, message });
  }

  /** Records the end of the invocation, once; later calls do nothing. */
  private async end(
    state: "failed" | "cancelled",
    error: { code: string; message: string },
    body: EventBody = { type: "failed", ...error },
  ): Promise<void> {
    if (this.ending) return;
    this.ending = true;
    this.abortAll(error.message);
    const set = { state, error, finishedAt: Date.now() };
    this.log.info({ state, error }, "invocation ended");
    try {
      await this.write({ set, events: [this.event(body)] }, true);
    } catch {
      return;
    }
    this.finish(set);
  }

  private finish(set: NonNullable<InvocationChange["set"]>): void {
    clearTimeout(this.deadlineTimer);
    this.record = {
      ...this.record,
      ...set,
      lastSequence: this.sequence,
      updatedAt: Date.now(),
    };
    this.settle(this.record);
  }

  private abortAll(reason: string): void {
    for (const running of this.running) running.controller.abort(new Stopped(reason));
    for (const waiter of this.waiters.values()) waiter.reject(new Stopped(reason));
    this.waiters.clear();
  }

  /** The state the invocation is in now, if it changed. */
  private stateChange(): InvocationChange["set"] {
    if (this.ending) return undefined;
    const running = [...this.running];
    const waiting =
      running.length > 0 && running.every((r) => r.waitingForInput > 0);
    const state: InvocationState = waiting ? "waiting_for_input" : "running";
    if (state === this.state) return undefined;
    this.state = state;
    return { state };
  }

  private spec(node: string): NodeSpec {
    const spec = this.options.agent.specs.get(node);
    if (!spec) throw new Error(`node ${node} is not defined`);
    return spec;
  }

  private event(body: EventBody): StoredEvent {
    return {
      invocationId: this.record.id,
      sequence: ++this.sequence,
      time: Date.now(),
      body,
    };
  }

  /**
   * Enqueues a change for the group commit; `last` marks the terminal
   * change. A failed write stops the execution: memory is ahead of the
   * store, so the store's version wins and the invocation resumes from it
   * at the next start.
   */
  private async write(change: Omit<InvocationChange, "invocationId">, last = false) {
    if (this.stopped) throw new Stopped("the gateway is stopping");
    // The terminal event is the last of the log, whatever a node that was
    // aborted late still tries to record.
    if (this.closed) throw new Stopped("the invocation has ended");
    if (last) this.closed = true;
    if (change.set?.state) this.state = change.set.state;
    this.options.observer.change(change);
    try {
      await this.options.queue.enqueue({ invocationId: this.record.id, ...change });
    } catch (error) {
      this.log.error({ err: error }, "store write failed; stopping the invocation");
      this.stop();
      throw error;
    }
  }
}

/** Zod issues as `path: message` pairs, for a client to read. */
export function formatIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => {
      const path = issue.path.length > 0 ? issue.path.join(".") : "(root)";
      return `${path}: ${issue.message}`;
    })
    .join("; ");
}
