import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import {
  InvalidCursorError,
  type CreateResult,
  type InvocationChange,
  type ListPage,
  type ListQuery,
  type NewInvocation,
  type Store,
} from "../store.js";
import type {
  InputRequestRecord,
  InvocationRecord,
  Json,
  StoredEvent,
  TaskRecord,
} from "../types.js";
import { migrate } from "./migrations.js";

export interface SqliteStoreOptions {
  /**
   * A database file, whose parent directory is created if missing, or
   * `":memory:"` for a private database that disappears on close.
   */
  path: string;
  /**
   * How hard a commit waits for the disk.
   *
   * - `"full"` (the default): fsync on every commit; a power loss keeps
   *   every commit that returned.
   * - `"normal"`: fsync only at WAL checkpoints; a process crash loses
   *   nothing, a power loss or OS crash can lose the last commits.
   * - `"off"`: never fsync; for tests and benchmarks only.
   */
  synchronous?: "full" | "normal" | "off";
  /**
   * How long a statement waits for another connection's lock before it
   * fails with SQLITE_BUSY, in milliseconds.
   * @default 5000
   */
  busyTimeoutMs?: number;
}

/**
 * Opens (creating and migrating if needed) a SQLite store. A file database
 * runs in WAL mode, so readers in other processes do not block the writer.
 *
 * better-sqlite3 is synchronous: a read does its work before its promise
 * is returned, and blocks the event loop for that long. Writes (creates
 * and changes) are group-committed: those made in the same turn of the
 * event loop share one immediate transaction, so one fsync; one failing
 * write is refused alone, the others commit. A write's promise settles only
 * once that transaction has committed.
 */
export function createSqliteStore(options: SqliteStoreOptions): Store {
  return new SqliteStore(options);
}

const UNFINISHED = "('queued', 'running', 'waiting_for_input')";

const LIST_FILTERS = `tenant = @tenant
  AND (@agent IS NULL OR agent = @agent)
  AND (@states IS NULL OR state IN (SELECT value FROM json_each(@states)))`;

/** One write of an optimistic batch threw: run the batch isolated. */
class WriteRefused extends Error {}

/** A write waiting for the next group commit. */
interface PendingWrite {
  /** Does the write; runs inside the batch transaction. */
  run: () => unknown;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
}

type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

interface InvocationRow {
  id: string;
  tenant: string;
  agent: string;
  state: InvocationRecord["state"];
  input: string;
  result: string | null;
  error_code: string | null;
  error_message: string | null;
  metadata: string;
  idempotency_key: string | null;
  trace_id: string | null;
  on_disconnect: InvocationRecord["onDisconnect"];
  timeout_ms: number | null;
  deadline_at: number | null;
  last_sequence: number;
  created_at: number;
  updated_at: number;
  finished_at: number | null;
}

interface EventRow {
  invocation_id: string;
  sequence: number;
  time: number;
  body: string;
}

interface TaskRow {
  invocation_id: string;
  task_id: string;
  node: string;
  input: string;
  state: TaskRecord["state"];
  attempt: number;
  created_at: number;
}

interface InputRequestRow {
  invocation_id: string;
  request_id: string;
  task_id: string;
  node: string;
  prompt: string;
  schema: string;
  state: InputRequestRecord["state"];
  answer: string | null;
  created_at: number;
  answered_at: number | null;
}

/** The SQLite `Store`; build it with {@link createSqliteStore}. */
export class SqliteStore implements Store {
  private readonly db: Database.Database;
  private readonly sql: ReturnType<typeof prepareStatements>;
  /** Runs a batch of writes in one immediate transaction. */
  private readonly batchTx: (batch: PendingWrite[]) => Outcome[];
  /** Invocation updates by the columns they set; see updateInvocation. */
  private readonly updates = new Map<string, Database.Statement>();
  private pending: PendingWrite[] = [];
  private flushScheduled = false;

  constructor(options: SqliteStoreOptions) {
    const memory = options.path === ":memory:";
    if (!memory) mkdirSync(dirname(options.path), { recursive: true });
    this.db = new Database(options.path);
    try {
      // WAL is a property of the file; an in-memory database has no use for it.
      if (!memory) this.db.pragma("journal_mode = WAL");
      this.db.pragma(`synchronous = ${pragmaSynchronous(options)}`);
      this.db.pragma(`busy_timeout = ${busyTimeout(options)}`);
      this.db.pragma("foreign_keys = ON");
      migrate(this.db);
      this.sql = prepareStatements(this.db);
    } catch (err) {
      this.db.close();
      throw err;
    }
    // A transaction function called inside another transaction runs as a
    // savepoint: a throw rolls back its own changes only.
    const savepoint = this.db.transaction((run: () => unknown) => run());
    // Writes almost never fail, so a batch first runs without a savepoint
    // each (two statements fewer per write); if one throws, the whole
    // transaction rolls back and the batch runs again with savepoints, so
    // that the failing write is refused alone. Writes touch nothing but
    // the database, so running them twice is safe.
    const optimistic = this.db.transaction((writes: PendingWrite[]) =>
      writes.map((w): Outcome => {
        try {
          return { ok: true, value: w.run() };
        } catch {
          throw new WriteRefused();
        }
      }),
    );
    const isolated = this.db.transaction((writes: PendingWrite[]) =>
      writes.map((w): Outcome => {
        try {
          return { ok: true, value: savepoint(w.run) };
        } catch (error) {
          return { ok: false, error };
        }
      }),
    );
    // Immediate: take the write lock at BEGIN, so a second process waits on
    // busy_timeout instead of failing when a read lock would be upgraded.
    this.batchTx = (writes) => {
      if (writes.length === 1) return isolated.immediate(writes);
      try {
        return optimistic.immediate(writes);
      } catch (error) {
        // BEGIN or COMMIT failing fails the batch; a write failing does not.
        if (!(error instanceof WriteRefused)) throw error;
        return isolated.immediate(writes);
      }
    };
  }

  createInvocation(init: NewInvocation): Promise<CreateResult> {
    return this.enqueue(() => this.createNow(init));
  }

  async write(changes: InvocationChange[]): Promise<void> {
    if (changes.length === 0) return;
    await this.enqueue(() => {
      for (const change of changes) this.applyNow(change);
    });
  }

  async getInvocation(id: string): Promise<InvocationRecord | undefined> {
    const row = this.sql.getInvocation.get(id) as InvocationRow | undefined;
    return row && toInvocation(row);
  }

  async findByIdempotencyKey(
    tenant: string,
    key: string,
  ): Promise<InvocationRecord | undefined> {
    const row = this.sql.getByIdempotencyKey.get(tenant, key) as
      | InvocationRow
      | undefined;
    return row && toInvocation(row);
  }

  async listInvocations(query: ListQuery): Promise<ListPage> {
    assertLimit(query.limit);
    const params = {
      tenant: query.tenant,
      agent: query.agent ?? null,
      states: query.states?.length ? JSON.stringify(query.states) : null,
      // One row past the page tells whether another page follows.
      limit: query.limit + 1,
    };
    const rows = (
      query.cursor === undefined
        ? this.sql.listFirst.all(params)
        : this.sql.listAfter.all({ ...params, ...decodeCursor(query.cursor) })
    ) as InvocationRow[];
    const page = rows.slice(0, query.limit);
    const last = page.at(-1);
    const invocations = page.map(toInvocation);
    return rows.length > query.limit && last
      ? { invocations, nextCursor: encodeCursor(last) }
      : { invocations };
  }

  async listUnfinished(): Promise<InvocationRecord[]> {
    const rows = this.sql.listUnfinished.all() as InvocationRow[];
    return rows.map(toInvocation);
  }

  async readEvents(
    invocationId: string,
    afterSequence: number,
    limit: number,
  ): Promise<StoredEvent[]> {
    assertLimit(limit);
    const rows = this.sql.readEvents.all(
      invocationId,
      afterSequence,
      limit,
    ) as EventRow[];
    return rows.map(toEvent);
  }

  async listTasks(invocationId: string): Promise<TaskRecord[]> {
    const rows = this.sql.listTasks.all(invocationId) as TaskRow[];
    return rows.map(toTask);
  }

  async listInputRequests(
    invocationId: string,
  ): Promise<InputRequestRecord[]> {
    const rows = this.sql.listInputRequests.all(
      invocationId,
    ) as InputRequestRow[];
    return rows.map(toInputRequest);
  }

  async ping(): Promise<void> {
    this.sql.ping.get();
  }

  async close(): Promise<void> {
    // Writes already made are committed, not dropped.
    this.flush();
    if (this.db.open) this.db.close();
  }

  /** Queues a write for the next group commit. */
  private enqueue<T>(run: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.pending.push({
        run,
        resolve: resolve as (value: unknown) => void,
        reject,
      });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        // After this turn's I/O callbacks: every write they make joins in.
        setImmediate(() => this.flush());
      }
    });
  }

  /** Commits every queued write in one transaction, then settles them. */
  private flush(): void {
    this.flushScheduled = false;
    const writes = this.pending;
    if (writes.length === 0) return;
    this.pending = [];
    let outcomes: Outcome[];
    try {
      if (!this.db.open) throw new Error("the store is closed");
      outcomes = this.batchTx(writes);
    } catch (error) {
      // BEGIN or COMMIT failed: nothing of the batch was stored.
      for (const w of writes) w.reject(error);
      return;
    }
    writes.forEach((w, i) => {
      const outcome = outcomes[i]!;
      if (outcome.ok) w.resolve(outcome.value);
      else w.reject(outcome.error);
    });
  }

  /** Runs inside the create transaction. */
  private createNow(init: NewInvocation): CreateResult {
    const { invocation: inv, startTask, started } = init;
    if (started.invocationId !== inv.id || startTask.invocationId !== inv.id) {
      throw new Error(
        `the start task and started event must belong to invocation ${inv.id}`,
      );
    }
    if (started.sequence !== 1) {
      throw new Error(
        `the started event must have sequence 1, not ${started.sequence}`,
      );
    }
    const inserted = this.sql.insertInvocation.run({
      id: inv.id,
      tenant: inv.tenant,
      agent: inv.agent,
      state: inv.state,
      input: JSON.stringify(inv.input),
      result: jsonOrNull(inv.result),
      errorCode: inv.error?.code ?? null,
      errorMessage: inv.error?.message ?? null,
      metadata: JSON.stringify(inv.metadata),
      idempotencyKey: inv.idempotencyKey ?? null,
      traceId: inv.traceId ?? null,
      onDisconnect: inv.onDisconnect,
      timeoutMs: inv.timeoutMs ?? null,
      deadlineAt: inv.deadlineAt ?? null,
      // The started event is stored with it, so the record says so.
      lastSequence: started.sequence,
      createdAt: inv.createdAt,
      updatedAt: inv.updatedAt,
      finishedAt: inv.finishedAt ?? null,
    });
    if (inserted.changes === 0) {
      const row = this.sql.getByIdempotencyKey.get(
        inv.tenant,
        inv.idempotencyKey,
      ) as InvocationRow;
      return { invocation: toInvocation(row), created: false };
    }
    this.sql.insertTask.run(taskParams(startTask));
    this.insertEvent(started);
    // What was just inserted, as a read would return it, without the read.
    return {
      invocation: withoutUndefined({ ...inv, lastSequence: started.sequence }),
      created: true,
    };
  }

  /** Runs inside the write transaction; a throw rolls back every change. */
  private applyNow(change: InvocationChange): void {
    const id = change.invocationId;
    const events = change.events ?? [];
    const follows = (events[0]?.sequence ?? 1) - 1;
    checkEvents(id, follows, events);

    const lastEvent = events.at(-1);
    // One statement both checks that the invocation exists and that the
    // events follow its last one, and updates it.
    const updated = this.updateInvocation(
      id,
      events.length > 0 ? follows : undefined,
      change.set ?? {},
      lastEvent,
    );
    if (updated.changes === 0) this.refuseChange(id, follows);

    for (const task of change.newTasks ?? []) {
      if (task.invocationId !== id) {
        throw new Error(`task ${task.taskId} does not belong to ${id}`);
      }
      this.sql.insertTask.run(taskParams(task));
    }
    for (const { taskId, attempt } of change.startedTasks ?? []) {
      const r = this.sql.startTask.run(attempt, id, taskId);
      if (r.changes === 0) throw new Error(`task ${taskId} of ${id} not found`);
    }
    for (const taskId of change.finishedTasks ?? []) {
      const r = this.sql.finishTask.run(id, taskId);
      if (r.changes === 0) throw new Error(`task ${taskId} of ${id} not found`);
    }

    for (const req of change.newInputRequests ?? []) {
      if (req.invocationId !== id) {
        throw new Error(
          `input request ${req.requestId} does not belong to ${id}`,
        );
      }
      this.sql.insertInputRequest.run(inputRequestParams(req));
    }
    for (const a of change.answeredInputRequests ?? []) {
      // Only a pending request takes an answer, so of two racing answers
      // exactly one commits.
      const r = this.sql.answerInputRequest.run(
        JSON.stringify(a.answer),
        a.answeredAt,
        id,
        a.requestId,
      );
      if (r.changes === 0) {
        throw new Error(`input request ${a.requestId} of ${id} is not pending`);
      }
    }

    for (const event of events) this.insertEvent(event);
  }

  /** Positional parameters: on the chunk path, binding by name costs. */
  private insertEvent(e: StoredEvent): void {
    this.sql.insertEvent.run(e.invocationId, e.sequence, e.time, JSON.stringify(e.body));
  }

  /**
   * Updates the columns a change sets, and no other: most changes set one
   * or two (a chunk only moves last_sequence), and a statement that names
   * every column costs twice as much. One prepared statement per shape.
   */
  private updateInvocation(
    id: string,
    follows: number | undefined,
    set: NonNullable<InvocationChange["set"]>,
    lastEvent: StoredEvent | undefined,
  ): Database.RunResult {
    const columns: string[] = [];
    const values: unknown[] = [];
    const put = (column: string, value: unknown) => {
      columns.push(column);
      values.push(value);
    };
    if (set.state !== undefined) put("state", set.state);
    if (set.result !== undefined) put("result", JSON.stringify(set.result));
    if (set.error !== undefined) {
      put("error_code", set.error.code);
      put("error_message", set.error.message);
    }
    if (set.finishedAt !== undefined) put("finished_at", set.finishedAt);
    if (set.traceId !== undefined) put("trace_id", set.traceId);
    if (lastEvent) {
      put("last_sequence", lastEvent.sequence);
      put("updated_at", lastEvent.time);
    }
    values.push(id);
    if (follows !== undefined) values.push(follows);
    const shape = `${columns.join(",")}|${follows !== undefined}`;
    let statement = this.updates.get(shape);
    if (!statement) {
      // Nothing to set still checks that the invocation exists.
      const assignments = columns.length > 0 ? columns.map((c) => `${c} = ?`).join(", ") : "id = id";
      const check = follows !== undefined ? " AND last_sequence = ?" : "";
      statement = this.db.prepare(`UPDATE invocations SET ${assignments} WHERE id = ?${check}`);
      this.updates.set(shape, statement);
    }
    return statement.run(...values);
  }

  /** Says why the update of a change matched no invocation. */
  private refuseChange(id: string, follows: number): never {
    const head = this.sql.getLastSequence.get(id) as
      | { last_sequence: number }
      | undefined;
    if (!head) throw new Error(`invocation ${id} does not exist`);
    throw new Error(
      `invocation ${id}: event sequence ${follows + 1} does not follow ` +
        `${head.last_sequence}`,
    );
  }
}

function prepareStatements(db: Database.Database) {
  const listSql = (afterCursor: boolean): string => `
SELECT * FROM invocations
WHERE ${LIST_FILTERS}
  ${afterCursor ? "AND (created_at, id) < (@createdAt, @id)" : ""}
ORDER BY created_at DESC, id DESC
LIMIT @limit`;
  return {
    ping: db.prepare("SELECT 1"),
    getInvocation: db.prepare("SELECT * FROM invocations WHERE id = ?"),
    getByIdempotencyKey: db.prepare(
      "SELECT * FROM invocations WHERE tenant = ? AND idempotency_key = ?",
    ),
    getLastSequence: db.prepare(
      "SELECT last_sequence FROM invocations WHERE id = ?",
    ),
    insertInvocation: db.prepare(`
INSERT INTO invocations (
  id, tenant, agent, state, input, result, error_code, error_message,
  metadata, idempotency_key, trace_id, on_disconnect, timeout_ms,
  deadline_at, last_sequence, created_at, updated_at, finished_at
) VALUES (
  @id, @tenant, @agent, @state, @input, @result, @errorCode, @errorMessage,
  @metadata, @idempotencyKey, @traceId, @onDisconnect, @timeoutMs,
  @deadlineAt, @lastSequence, @createdAt, @updatedAt, @finishedAt
)
ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL
DO NOTHING`),
    listFirst: db.prepare(listSql(false)),
    listAfter: db.prepare(listSql(true)),
    listUnfinished: db.prepare(`
SELECT * FROM invocations WHERE state IN ${UNFINISHED}
ORDER BY created_at, id`),
    insertEvent: db.prepare(
      "INSERT INTO events (invocation_id, sequence, time, body) VALUES (?, ?, ?, ?)",
    ),
    readEvents: db.prepare(`
SELECT * FROM events WHERE invocation_id = ? AND sequence > ?
ORDER BY sequence LIMIT ?`),
    insertTask: db.prepare(`
INSERT INTO tasks (
  invocation_id, task_id, position, node, input, state, attempt, created_at
) VALUES (
  @invocationId, @taskId,
  (SELECT coalesce(max(position), 0) + 1 FROM tasks
   WHERE invocation_id = @invocationId),
  @node, @input, @state, @attempt, @createdAt
)`),
    startTask: db.prepare(
      "UPDATE tasks SET attempt = ? WHERE invocation_id = ? AND task_id = ?",
    ),
    finishTask: db.prepare(
      "UPDATE tasks SET state = 'finished' " +
        "WHERE invocation_id = ? AND task_id = ?",
    ),
    listTasks: db.prepare(
      "SELECT * FROM tasks WHERE invocation_id = ? ORDER BY position",
    ),
    insertInputRequest: db.prepare(`
INSERT INTO input_requests (
  invocation_id, request_id, position, task_id, node, prompt, schema,
  state, answer, created_at, answered_at
) VALUES (
  @invocationId, @requestId,
  (SELECT coalesce(max(position), 0) + 1 FROM input_requests
   WHERE invocation_id = @invocationId),
  @taskId, @node, @prompt, @schema, @state, @answer, @createdAt, @answeredAt
)`),
    answerInputRequest: db.prepare(`
UPDATE input_requests SET state = 'answered', answer = ?, answered_at = ?
WHERE invocation_id = ? AND request_id = ? AND state = 'pending'`),
    listInputRequests: db.prepare(
      "SELECT * FROM input_requests WHERE invocation_id = ? ORDER BY position",
    ),
  };
}

/** Events of one invocation whose sequences run on from `last` without a gap. */
function checkEvents(id: string, last: number, events: StoredEvent[]): void {
  let expected = last + 1;
  for (const e of events) {
    if (e.invocationId !== id) {
      throw new Error(
        `event ${e.sequence} belongs to ${e.invocationId}, not ${id}`,
      );
    }
    if (e.sequence !== expected) {
      throw new Error(
        `invocation ${id}: event sequence ${e.sequence} does not follow ` +
          `${expected - 1}`,
      );
    }
    expected++;
  }
}

function assertLimit(limit: number): void {
  if (!Number.isSafeInteger(limit) || limit < 1) {
    throw new RangeError(`limit must be a positive integer, not ${limit}`);
  }
}

function pragmaSynchronous(options: SqliteStoreOptions): string {
  const value = options.synchronous ?? "full";
  if (value !== "full" && value !== "normal" && value !== "off") {
    throw new Error(`unknown synchronous mode ${String(value)}`);
  }
  return value.toUpperCase();
}

function busyTimeout(options: SqliteStoreOptions): number {
  const ms = options.busyTimeoutMs ?? 5000;
  if (!Number.isSafeInteger(ms) || ms < 0) {
    throw new RangeError(`busyTimeoutMs must be a whole number, not ${ms}`);
  }
  return ms;
}

/** The cursor names the last row shown; it is opaque to callers. */
function encodeCursor(row: InvocationRow): string {
  return Buffer.from(JSON.stringify([row.created_at, row.id])).toString(
    "base64url",
  );
}

function decodeCursor(cursor: string): { createdAt: number; id: string } {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(cursor, "base64url").toString("utf8"));
  } catch {
    value = undefined;
  }
  if (
    Array.isArray(value) &&
    value.length === 2 &&
    Number.isSafeInteger(value[0]) &&
    typeof value[1] === "string"
  ) {
    return { createdAt: value[0] as number, id: value[1] };
  }
  throw new InvalidCursorError();
}

/** SQL NULL for unset; JSON null becomes the text `null`. */
function jsonOrNull(value: Json | undefined): string | null {
  return value === undefined ? null : JSON.stringify(value);
}

function taskParams(t: TaskRecord) {
  return {
    invocationId: t.invocationId,
    taskId: t.taskId,
    node: t.node,
    input: JSON.stringify(t.input),
    state: t.state,
    attempt: t.attempt,
    createdAt: t.createdAt,
  };
}

function inputRequestParams(r: InputRequestRecord) {
  return {
    invocationId: r.invocationId,
    requestId: r.requestId,
    taskId: r.taskId,
    node: r.node,
    prompt: r.prompt,
    schema: JSON.stringify(r.schema),
    state: r.state,
    answer: jsonOrNull(r.answer),
    createdAt: r.createdAt,
    answeredAt: r.answeredAt ?? null,
  };
}

/** A record as the store returns it: no key holds undefined. */
function withoutUndefined(record: InvocationRecord): InvocationRecord {
  for (const key of Object.keys(record) as (keyof InvocationRecord)[]) {
    if (record[key] === undefined) delete record[key];
  }
  return record;
}

function toInvocation(row: InvocationRow): InvocationRecord {
  const record: InvocationRecord = {
    id: row.id,
    tenant: row.tenant,
    agent: row.agent,
    state: row.state,
    input: JSON.parse(row.input) as Json,
    metadata: JSON.parse(row.metadata) as Record<string, string>,
    onDisconnect: row.on_disconnect,
    lastSequence: row.last_sequence,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
  if (row.result !== null) record.result = JSON.parse(row.result) as Json;
  if (row.error_code !== null && row.error_message !== null) {
    record.error = { code: row.error_code, message: row.error_message };
  }
  if (row.idempotency_key !== null) record.idempotencyKey = row.idempotency_key;
  if (row.trace_id !== null) record.traceId = row.trace_id;
  if (row.timeout_ms !== null) record.timeoutMs = row.timeout_ms;
  if (row.deadline_at !== null) record.deadlineAt = row.deadline_at;
  if (row.finished_at !== null) record.finishedAt = row.finished_at;
  return record;
}

function toEvent(row: EventRow): StoredEvent {
  return {
    invocationId: row.invocation_id,
    sequence: row.sequence,
    time: row.time,
    body: JSON.parse(row.body) as StoredEvent["body"],
  };
}

function toTask(row: TaskRow): TaskRecord {
  return {
    invocationId: row.invocation_id,
    taskId: row.task_id,
    node: row.node,
    input: JSON.parse(row.input) as Json,
    state: row.state,
    attempt: row.attempt,
    createdAt: row.created_at,
  };
}

function toInputRequest(row: InputRequestRow): InputRequestRecord {
  const record: InputRequestRecord = {
    invocationId: row.invocation_id,
    requestId: row.request_id,
    taskId: row.task_id,
    node: row.node,
    prompt: row.prompt,
    schema: JSON.parse(row.schema) as Json,
    state: row.state,
    createdAt: row.created_at,
  };
  if (row.answer !== null) record.answer = JSON.parse(row.answer) as Json;
  if (row.answered_at !== null) record.answeredAt = row.answered_at;
  return record;
}
