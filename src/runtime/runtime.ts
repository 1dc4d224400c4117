import { randomUUID } from "node:crypto";
import type { AgentRegistry } from "./registry.js";
import { Admission, type AdmissionOptions } from "./admission.js";
import { CommitQueue } from "./commit-queue.js";
import { RuntimeError } from "./errors.js";
import { EventHub } from "./event-hub.js";
import { Execution, formatIssues, type ExecutionOptions } from "./execution.js";
import { canonicalJson } from "./json.js";
import { noObserver, type RunObserver, type RuntimeObserver } from "./observer.js";
import { watchEvents, type Heartbeat } from "./watch.js";
import {
  InvalidCursorError,
  type ListPage,
  type ListQuery,
  type Store,
} from "../store/store.js";
import {
  isTerminal,
  type InputRequestRecord,
  type InvocationRecord,
  type InvocationState,
  type Json,
  type OnDisconnect,
  type StoredEvent,
  type TaskRecord,
} from "../store/types.js";
import type { Context } from "@opentelemetry/api";
import { silentLogger, type Logger } from "../telemetry/logger.js";

export interface RuntimeOptions {
  store: Store;
  agents: AgentRegistry;
  /** @default a logger that writes nothing */
  logger?: Logger;
  /** A watch stream quiet this long gets a heartbeat. @default 15000 */
  heartbeatMs?: number;
  /**
   * Live events held for one slow watcher; past it the watcher reads from
   * the store instead. @default 256
   */
  watchBufferSize?: number;
  /** Nodes of one invocation that run at once. @default 16 */
  maxConcurrentNodes?: number;
  /**
   * Chunks of one invocation that a node may stream ahead of the store:
   * `ctx.stream()` resolves at once while fewer wait to be stored, so that
   * many chunks share one commit. Watchers see a chunk only once it is
   * stored either way. @default 256
   */
  chunksAhead?: number;
  /** Chunks of one invocation waiting to be stored at once. @default 10000 */
  maxPendingChunks?: number;
  /** Told about every run, for traces and metrics. @default observes nothing */
  observer?: RuntimeObserver;
  /** Caps on running invocations, in total and per tenant. @default none */
  admission?: AdmissionOptions;
}

export interface StartRequest {
  tenant: string;
  agent: string;
  input: Json;
  idempotencyKey?: string;
  /** The run's own limit; past it the invocation fails. */
  timeoutMs?: number;
  metadata?: Record<string, string>;
  onDisconnect?: OnDisconnect;
  /** The caller's trace context: the invocation's span is its child. */
  traceContext?: Context;
}

/** An invocation with the input requests it waits on. */
export interface InvocationView extends InvocationRecord {
  pendingInputs: InputRequestRecord[];
}

const MAX_IDEMPOTENCY_KEY = 256;

/**
 * The agent runtime: starts, runs, resumes and reports invocations. It is
 * the only thing that writes to the store, and it knows nothing of HTTP.
 */
export class Runtime {
  readonly hub = new EventHub();
  private readonly queue: CommitQueue;
  private readonly executions = new Map<string, Execution>();
  private readonly store: Store;
  private readonly agents: AgentRegistry;
  private readonly log: Logger;
  private readonly heartbeatMs: number;
  private readonly watchBufferSize: number;
  private readonly maxConcurrentNodes: number;
  private readonly chunksAhead: number;
  private readonly maxPendingChunks: number;
  private readonly observer: RuntimeObserver;
  private readonly admission: Admission;
  private closing: Promise<void> | undefined;
  private draining = false;

  constructor(options: RuntimeOptions) {
    this.store = options.store;
    this.agents = options.agents;
    this.log = options.logger ?? silentLogger();
    this.heartbeatMs = options.heartbeatMs ?? 15_000;
    this.watchBufferSize = options.watchBufferSize ?? 256;
    this.maxConcurrentNodes = options.maxConcurrentNodes ?? 16;
    this.chunksAhead = options.chunksAhead ?? 256;
    this.maxPendingChunks = options.maxPendingChunks ?? 10_000;
    this.observer = options.observer ?? noObserver;
    this.admission = new Admission(options.admission);
    this.queue = new CommitQueue(this.store, this.hub);
  }

  /** How many invocations run in this process now. */
  get active(): number {
    return this.executions.size;
  }

  /**
   * Stores a new invocation and starts running it, or returns the one the
   * tenant's idempotency key already names.
   */
  async start(
    request: StartRequest,
  ): Promise<{ invocation: InvocationRecord; created: boolean }> {
    this.refuseWhenClosing();
    const agent = this.agents.get(request.agent);
    if (!agent) {
      throw new RuntimeError("not_found", `agent ${request.agent} not found`);
    }
    const parsed = agent.input.safeParse(request.input);
    if (!parsed.success) {
      throw new RuntimeError(
        "invalid_argument",
        `input does not match the schema of agent ${agent.name}: ${formatIssues(parsed.error)}`,
      );
    }
    const key = request.idempotencyKey || undefined;
    if (key !== undefined && key.length > MAX_IDEMPOTENCY_KEY) {
      throw new RuntimeError(
        "invalid_argument",
        `idempotency_key is longer than ${MAX_IDEMPOTENCY_KEY} characters`,
      );
    }
    if (request.timeoutMs !== undefined && !(request.timeoutMs > 0)) {
      throw new RuntimeError("invalid_argument", "timeout must be positive");
    }
    const input = parsed.data as Json;
    // A retry gets what its key already names, even past a cap or while
    // draining: retrying a start is always safe.
    if (key !== undefined) {
      const existing = await this.store.findByIdempotencyKey(request.tenant, key);
      if (existing) return { invocation: sameStart(existing, agent.name, input), created: false };
    }
    if (this.draining) {
      throw new RuntimeError(
        "unavailable",
        "the gateway is shutting down; retry on another instance",
      );
    }
    // Counted before the next await, so that racing starts cannot pass
    // the cap together; given back if nothing new runs.
    const slot = this.admission.reserve(request.tenant);
    const now = Date.now();
    const invocation: InvocationRecord = {
      id: randomUUID(),
      tenant: request.tenant,
      agent: agent.name,
      state: "queued",
      input,
      metadata: request.metadata ?? {},
      idempotencyKey: key,
      onDisconnect: request.onDisconnect ?? "continue",
      timeoutMs: request.timeoutMs,
      deadlineAt:
        request.timeoutMs === undefined ? undefined : now + request.timeoutMs,
      lastSequence: 1,
      createdAt: now,
      updatedAt: now,
    };
    const run = this.observer.begin(invocation, {
      resumed: false,
      traceContext: request.traceContext,
    });
    if (run.traceId !== undefined) invocation.traceId = run.traceId;
    const startTask: TaskRecord = {
      invocationId: invocation.id,
      taskId: "t1",
      node: agent.start,
      input,
      state: "pending",
      attempt: 0,
      createdAt: now,
    };
    const started: StoredEvent = {
      invocationId: invocation.id,
      sequence: 1,
      time: now,
      body: { type: "started", invocation },
    };
    const result = await this.store.createInvocation({
      invocation,
      started,
      startTask,
    }).catch((error: unknown) => {
      slot.release();
      throw error;
    });
    if (!result.created) {
      // A racing start with the same key was first.
      slot.release();
      return { invocation: sameStart(result.invocation, agent.name, input), created: false };
    }
    run.change({ set: { state: invocation.state }, events: [started] });
    this.hub.publish(started);
    this.launch(result.invocation, run, {
      tasks: [{ ...startTask }],
      inputRequests: [],
    });
    slot.releaseWhen(this.executions.get(result.invocation.id)?.finished);
    return result;
  }

  /** One invocation of the tenant; NOT_FOUND for another tenant's. */
  async get(tenant: string, id: string): Promise<InvocationView> {
    const record = await this.load(tenant, id);
    // A finished invocation waits for nothing, whatever was left unasked.
    if (isTerminal(record.state)) return { ...record, pendingInputs: [] };
    const requests = await this.store.listInputRequests(id);
    return {
      ...record,
      pendingInputs: requests.filter((r) => r.state === "pending"),
    };
  }

  async list(query: ListQuery): Promise<ListPage> {
    try {
      return await this.store.listInvocations(query);
    } catch (error) {
      if (error instanceof InvalidCursorError) {
        throw new RuntimeError("invalid_argument", "page_token is not valid");
      }
      throw error;
    }
  }

  /** Cancels an invocation; cancelling a finished one changes nothing. */
  async cancel(
    tenant: string,
    id: string,
    reason: string,
  ): Promise<InvocationView> {
    this.refuseWhenClosing();
    const record = await this.load(tenant, id);
    if (!isTerminal(record.state)) {
      const execution = this.executions.get(id);
      if (!execution) {
        throw new RuntimeError(
          "unavailable",
          `invocation ${id} is not running on this gateway yet; retry`,
        );
      }
      await execution.cancel(reason || "cancelled by the caller");
    }
    return this.get(tenant, id);
  }

  async provideInput(
    tenant: string,
    id: string,
    requestId: string,
    value: Json,
  ): Promise<InvocationView> {
    this.refuseWhenClosing();
    const record = await this.load(tenant, id);
    const execution = this.executions.get(id);
    if (isTerminal(record.state) || !execution) {
      throw new RuntimeError(
        "failed_precondition",
        `invocation ${id} is ${record.state}; input request ${requestId} is not pending`,
      );
    }
    await execution.provideInput(requestId, value);
    return this.get(tenant, id);
  }

  /**
   * Opens a watch on an invocation: every event after `afterSequence`, then
   * the live ones, until the last. Throws NOT_FOUND before anything is
   * sent if the tenant has no such invocation, and INVALID_ARGUMENT if
   * `afterSequence` is past its last event.
   */
  async watch(
    tenant: string,
    id: string,
    afterSequence: number,
    signal: AbortSignal,
  ): Promise<AsyncGenerator<StoredEvent | Heartbeat>> {
    const record = await this.load(tenant, id);
    // Events are stored before anyone sees them, so a client cannot have
    // seen a sequence past the stored last one; waiting for it would never end.
    if (afterSequence > record.lastSequence) {
      throw new RuntimeError(
        "invalid_argument",
        `after_sequence ${afterSequence} is past the last event ${record.lastSequence} of invocation ${id}`,
      );
    }
    // A finished invocation has nothing after its last event: end at once.
    if (isTerminal(record.state) && afterSequence === record.lastSequence) {
      return (async function* nothing() {})();
    }
    return watchEvents({
      store: this.store,
      hub: this.hub,
      invocationId: id,
      afterSequence,
      signal,
      heartbeatMs: this.heartbeatMs,
      bufferSize: this.watchBufferSize,
    });
  }

  /**
   * Waits until the invocation has finished or waits for input, and
   * returns it then. Rejects with the signal's reason if it fires first.
   */
  async waitUntilSettled(
    tenant: string,
    id: string,
    signal: AbortSignal,
  ): Promise<InvocationView> {
    const settled = (state: InvocationState) =>
      isTerminal(state) || state === "waiting_for_input";
    let wake!: () => void;
    const changed = new Promise<void>((resolve) => (wake = resolve));
    // Listen before reading, so a change between the two is not missed.
    const unlisten = this.hub.onState(id, (state) => {
      if (settled(state)) wake();
    });
    try {
      const record = await this.load(tenant, id);
      if (!settled(record.state)) {
        signal.throwIfAborted();
        await new Promise<void>((resolve, reject) => {
          const onAbort = () => reject(signal.reason);
          signal.addEventListener("abort", onAbort, { once: true });
          void changed.then(() => {
            signal.removeEventListener("abort", onAbort);
            resolve();
          });
        });
      }
    } finally {
      unlisten();
    }
    return this.get(tenant, id);
  }

  /**
   * Resumes every invocation the store holds unfinished: after a crash or a
   * restart, they go on from their last checkpoint.
   */
  async resume(): Promise<number> {
    const unfinished = await this.store.listUnfinished();
    // Stopped meanwhile: what is unfinished stays so for the next start.
    if (this.closing) return 0;
    for (const record of unfinished) {
      if (!this.executions.has(record.id)) {
        this.launch(record, this.observer.begin(record, { resumed: true }));
        // Accepted before the restart: counted, never refused.
        const slot = this.admission.count(record.tenant);
        slot.releaseWhen(this.executions.get(record.id)?.finished);
      }
    }
    if (unfinished.length > 0) {
      this.log.info({ count: unfinished.length }, "resuming invocations");
    }
    return unfinished.length;
  }

  /**
   * Refuses new starts from now on (UNAVAILABLE) while running invocations
   * go on, and resolves once none of them is busy, or after `graceMs`,
   * whichever is first. An invocation waiting for input is not busy: a
   * person may take hours to answer, and stopping it loses nothing (it asks
   * again after the restart). Cancel, input and reads keep working. Returns
   * how many invocations are still busy; close() stops them.
   */
  async drain(graceMs: number): Promise<number> {
    this.draining = true;
    const deadline = Date.now() + graceMs;
    for (;;) {
      const busy = [...this.executions.values()].filter((e) => !e.waitingForInput);
      const left = deadline - Date.now();
      if (busy.length === 0 || left <= 0) return busy.length;
      // Look again when one of them ends or changes state (an answer makes
      // a waiting one busy again, a question makes a busy one wait).
      await new Promise<void>((resolve) => {
        const unlisten = busy.map((e) => this.hub.onState(e.id, wake));
        const timer = setTimeout(wake, left);
        for (const e of busy) void e.finished.then(wake);
        function wake() {
          clearTimeout(timer);
          for (const stop of unlisten) stop();
          resolve();
        }
      });
    }
  }

  /**
   * Stops every running invocation without recording an end (they resume
   * at the next start) and waits for pending writes. Safe to call twice.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const execution of this.executions.values()) execution.stop();
      this.executions.clear();
      await this.queue.drain();
    })();
    return this.closing;
  }

  private launch(
    record: InvocationRecord,
    observer: RunObserver,
    known?: ExecutionOptions["known"],
  ): void {
    const agent = this.agents.get(record.agent);
    if (!agent) {
      void this.failOrphan(record);
      return;
    }
    const execution = new Execution(record, {
      store: this.store,
      queue: this.queue,
      agent,
      logger: this.log,
      maxConcurrentNodes: this.maxConcurrentNodes,
      chunksAhead: this.chunksAhead,
      maxPendingChunks: this.maxPendingChunks,
      observer,
      known,
    });
    this.executions.set(record.id, execution);
    void execution.finished.then(() => {
      if (this.executions.get(record.id) === execution) {
        this.executions.delete(record.id);
      }
    });
    execution.start().catch((error: unknown) => {
      this.log.error({ err: error, invocationId: record.id }, "invocation could not start");
      execution.stop();
    });
  }

  /** An invocation whose agent is no longer hosted cannot go on. */
  private async failOrphan(record: InvocationRecord): Promise<void> {
    const message = `agent ${record.agent} is no longer hosted by this gateway`;
    const now = Date.now();
    try {
      await this.queue.enqueue({
        invocationId: record.id,
        set: {
          state: "failed",
          error: { code: "failed_precondition", message },
          finishedAt: now,
        },
        events: [
          {
            invocationId: record.id,
            sequence: record.lastSequence + 1,
            time: now,
            body: { type: "failed", code: "failed_precondition", message },
          },
        ],
      });
    } catch (error) {
      this.log.error({ err: error, invocationId: record.id }, "could not fail an orphaned invocation");
    }
  }

  /**
   * Once closing, nothing changes an invocation: what runs now resumes at
   * the next start exactly as it was stored.
   */
  private refuseWhenClosing(): void {
    if (this.closing) {
      throw new RuntimeError("unavailable", "the gateway is shutting down");
    }
  }

  private async load(tenant: string, id: string): Promise<InvocationRecord> {
    const record = await this.store.getInvocation(id);
    // Another tenant's invocation is answered exactly as a missing one.
    if (!record || record.tenant !== tenant) {
      throw new RuntimeError("not_found", `invocation ${id} not found`);
    }
    return record;
  }
}

/**
 * The invocation an idempotency key already names, if it was started with
 * this agent and input; INVALID_ARGUMENT if not.
 */
function sameStart(existing: InvocationRecord, agent: string, input: Json): InvocationRecord {
  if (existing.agent !== agent || canonicalJson(existing.input) !== canonicalJson(input)) {
    throw new RuntimeError(
      "invalid_argument",
      `idempotency_key ${existing.idempotencyKey} was already used with another agent or input`,
    );
  }
  return existing;
}
