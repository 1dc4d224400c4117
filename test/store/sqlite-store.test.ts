import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import {
  MIGRATIONS,
  migrate,
} from "../../src/store/sqlite/migrations.js";
import { createSqliteStore } from "../../src/store/sqlite/sqlite-store.js";
import type { NewInvocation } from "../../src/store/store.js";
import type { InvocationRecord } from "../../src/store/types.js";
import { describeStoreContract } from "./store-contract.js";

const root = mkdtempSync(join(tmpdir(), "agent-gateway-sqlite-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

let files = 0;
/** A path in a directory that does not exist yet. */
function freshPath(): string {
  files++;
  return join(root, `case-${files}`, "nested", "gateway.db");
}

describeStoreContract("sqlite file", async () =>
  createSqliteStore({ path: freshPath() }),
);

describeStoreContract("sqlite :memory:", async () =>
  createSqliteStore({ path: ":memory:", synchronous: "off" }),
);

describe("SQLite store", () => {
  const invocation: InvocationRecord = {
    id: "inv-1",
    tenant: "t",
    agent: "echo",
    state: "running",
    input: { text: "hi" },
    result: null,
    metadata: { a: "b" },
    idempotencyKey: "k",
    onDisconnect: "continue",
    lastSequence: 1,
    createdAt: 1000,
    updatedAt: 1000,
  };
  const init = startOf(invocation);

  it("records its migrations and runs in WAL mode", async () => {
    const path = freshPath();
    const store = createSqliteStore({ path, synchronous: "normal" });
    await store.close();

    const db = new Database(path, { readonly: true });
    try {
      const versions = db
        .prepare("SELECT version FROM schema_migrations ORDER BY version")
        .pluck()
        .all();
      expect(versions).toEqual(MIGRATIONS.map((m) => m.version));
      expect(db.pragma("journal_mode", { simple: true })).toBe("wal");
    } finally {
      db.close();
    }
  });

  it("reopens an existing file, keeping its data", async () => {
    const path = freshPath();
    const first = createSqliteStore({ path });
    await first.createInvocation(init);
    await first.write([
      {
        invocationId: "inv-1",
        set: { state: "succeeded", result: { ok: true }, finishedAt: 1002 },
        finishedTasks: ["task-1"],
        events: [
          {
            invocationId: "inv-1",
            sequence: 2,
            time: 1002,
            body: { type: "completed", result: { ok: true } },
          },
        ],
      },
    ]);
    const before = await first.getInvocation("inv-1");
    await first.close();

    const second = createSqliteStore({ path });
    try {
      expect(await second.getInvocation("inv-1")).toEqual(before);
      expect(before).toMatchObject({ lastSequence: 2, updatedAt: 1002 });
      expect(await second.readEvents("inv-1", 0, 10)).toHaveLength(2);
      expect(await second.listTasks("inv-1")).toEqual([
        { ...init.startTask, state: "finished" },
      ]);
      // Idempotency survives the restart too.
      const again = await second.createInvocation(
        startOf({ ...invocation, id: "inv-2" }),
      );
      expect(again).toEqual({ invocation: before, created: false });
    } finally {
      await second.close();
    }

    const db = new Database(path);
    try {
      expect(migrate(db)).toEqual([]);
      const count = db.prepare("SELECT count(*) FROM schema_migrations");
      expect(count.pluck().get()).toBe(MIGRATIONS.length);
    } finally {
      db.close();
    }
  });

  it("refuses a database migrated by a newer build", async () => {
    const path = freshPath();
    await createSqliteStore({ path }).close();
    const db = new Database(path);
    db.prepare(
      "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
    ).run(MIGRATIONS.length + 100, Date.now());
    db.close();

    expect(() => createSqliteStore({ path })).toThrow(/newer/);
  });

  it("applies only the versions it has not applied", () => {
    const db = new Database(":memory:");
    try {
      const steps = [
        { version: 1, sql: "CREATE TABLE a (x INTEGER)" },
        { version: 2, sql: "CREATE TABLE b (x INTEGER)" },
      ];
      expect(migrate(db, steps.slice(0, 1))).toEqual([1]);
      expect(migrate(db, steps)).toEqual([2]);
      expect(migrate(db, steps)).toEqual([]);
    } finally {
      db.close();
    }
  });

  it("rolls back a migration that fails, recording nothing", () => {
    const db = new Database(":memory:");
    try {
      const steps = [
        { version: 1, sql: "CREATE TABLE a (x INTEGER)" },
        { version: 2, sql: "CREATE TABLE a (x INTEGER)" },
      ];
      expect(() => migrate(db, steps)).toThrow();
      const tables = db
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")
        .pluck()
        .all();
      expect(tables).toEqual([]);
    } finally {
      db.close();
    }
  });

  it("rejects migrations out of order", () => {
    const db = new Database(":memory:");
    try {
      const steps = [
        { version: 2, sql: "SELECT 1" },
        { version: 1, sql: "SELECT 1" },
      ];
      expect(() => migrate(db, steps)).toThrow(/increasing/);
    } finally {
      db.close();
    }
  });

  it("rejects work after close", async () => {
    const store = createSqliteStore({ path: ":memory:" });
    await store.close();
    await expect(store.getInvocation("x")).rejects.toThrow();
  });
});

function startOf(invocation: InvocationRecord): NewInvocation {
  const { id, createdAt } = invocation;
  return {
    invocation,
    startTask: {
      invocationId: id,
      taskId: "task-1",
      node: "start",
      input: invocation.input,
      state: "pending",
      attempt: 0,
      createdAt,
    },
    started: {
      invocationId: id,
      sequence: 1,
      time: createdAt,
      body: { type: "started", invocation },
    },
  };
}
