import type {
  InputRequestRecord,
  InvocationError,
  InvocationRecord,
  InvocationState,
  Json,
  StoredEvent,
  TaskRecord,
} from "./types.js";

/** A list cursor that this store did not hand out. */
export class InvalidCursorError extends Error {
  override readonly name = "InvalidCursorError";
  constructor() {
    super("invalid list cursor");
  }
}

/** A new invocation together with the first task and its `started` event. */
export interface NewInvocation {
  invocation: InvocationRecord;
  startTask: TaskRecord;
  /** Sequence 1. */
  started: StoredEvent;
}

export interface CreateResult {
  invocation: InvocationRecord;
  /** False when the tenant's idempotency key already named an invocation. */
  created: boolean;
}

/**
 * Everything that changes about one invocation in one step. The fields are
 * applied in this order: invocation fields, tasks, input requests, events.
 */
export interface InvocationChange {
  invocationId: string;
  /** Fields of the invocation to overwrite; undefined ones are kept. */
  set?: {
    state?: InvocationState;
    result?: Json;
    error?: InvocationError;
    finishedAt?: number;
    traceId?: string;
  };
  /** Tasks to insert (emits). */
  newTasks?: TaskRecord[];
  /** Tasks whose attempt counter is raised to the given value. */
  startedTasks?: { taskId: string; attempt: number }[];
  /** Tasks that finished. */
  finishedTasks?: string[];
  /** Input requests to insert. */
  newInputRequests?: InputRequestRecord[];
  /**
   * Input requests that were answered. Each must still be pending, or the
   * write throws: of two racing answers exactly one commits.
   */
  answeredInputRequests?: {
    requestId: string;
    answer: Json;
    answeredAt: number;
  }[];
  /**
   * Events to append, with sequences following the stored last sequence
   * without a gap; `lastSequence` and `updatedAt` follow the last one.
   */
  events?: StoredEvent[];
}

export interface ListQuery {
  tenant: string;
  agent?: string;
  /** Any of these states; undefined or empty matches every state. */
  states?: InvocationState[];
  limit: number;
  /** The cursor a previous page returned; undefined for the first page. */
  cursor?: string;
}

export interface ListPage {
  invocations: InvocationRecord[];
  /** Undefined on the last page. */
  nextCursor?: string;
}

/**
 * Where invocations live. Every method is asynchronous so that a networked
 * database fits behind it; every write is atomic.
 */
export interface Store {
  /**
   * Creates an invocation with its start task and `started` event, unless
   * its tenant already used its idempotency key: then returns that
   * invocation with `created: false` and writes nothing. A new record is
   * stored with `lastSequence` 1, that of `started`, whatever it said.
   */
  createInvocation(init: NewInvocation): Promise<CreateResult>;

  /**
   * Applies the changes in one transaction: all of them or none. Throws if
   * an event's sequence does not follow the invocation's last one, or if an
   * invocation, task or input request it names does not exist. Writes are
   * applied, and their promises settled, in the order they were made, so
   * that a caller may make the next write before the last one has settled.
   */
  write(changes: InvocationChange[]): Promise<void>;

  getInvocation(id: string): Promise<InvocationRecord | undefined>;

  /** The invocation a tenant's idempotency key names, if any. */
  findByIdempotencyKey(
    tenant: string,
    key: string,
  ): Promise<InvocationRecord | undefined>;

  /**
   * Newest first (by creation time, then id). Throws InvalidCursorError for
   * a cursor it did not hand out.
   */
  listInvocations(query: ListQuery): Promise<ListPage>;

  /** Invocations that are not in a terminal state, oldest first. */
  listUnfinished(): Promise<InvocationRecord[]>;

  /** Events with sequence > afterSequence, in order, at most `limit`. */
  readEvents(
    invocationId: string,
    afterSequence: number,
    limit: number,
  ): Promise<StoredEvent[]>;

  /** Every task of an invocation, in creation order. */
  listTasks(invocationId: string): Promise<TaskRecord[]>;

  /** Every input request of an invocation, in creation order. */
  listInputRequests(invocationId: string): Promise<InputRequestRecord[]>;

  /** Answers whether the store can be reached. */
  ping(): Promise<void>;

  close(): Promise<void>;
}
