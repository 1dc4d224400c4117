import type { Database } from "better-sqlite3";

/** One step of the schema; applied once, in version order, never edited. */
export interface Migration {
  version: number;
  /** Statements run as one script inside the opening transaction. */
  sql: string;
}

/**
 * The schema, oldest first. Append a new version to change it; an applied
 * version must never be edited, because databases that already ran it will
 * not run it again.
 *
 * JSON travels as TEXT. A nullable JSON column holds SQL NULL when the value
 * is unset and the text `null` when it is JSON null, so the two stay apart.
 * Tables are STRICT so that a non-integer time or a stray type fails loudly
 * instead of being stored as whatever SQLite's affinity makes of it.
 */
export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    sql: `
CREATE TABLE invocations (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  agent TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN
    ('queued', 'running', 'waiting_for_input',
     'succeeded', 'failed', 'cancelled')),
  input TEXT NOT NULL,
  result TEXT,
  error_code TEXT,
  error_message TEXT,
  metadata TEXT NOT NULL,
  idempotency_key TEXT,
  trace_id TEXT,
  on_disconnect TEXT NOT NULL CHECK (on_disconnect IN ('continue', 'cancel')),
  timeout_ms INTEGER,
  deadline_at INTEGER,
  last_sequence INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  finished_at INTEGER,
  CHECK ((error_code IS NULL) = (error_message IS NULL))
) STRICT;

CREATE UNIQUE INDEX invocations_idempotency
  ON invocations (tenant, idempotency_key)
  WHERE idempotency_key IS NOT NULL;

CREATE INDEX invocations_list
  ON invocations (tenant, created_at DESC, id DESC);

-- Recovery at start-up reads only these; finished ones stay out of the index.
CREATE INDEX invocations_unfinished
  ON invocations (created_at, id)
  WHERE state IN ('queued', 'running', 'waiting_for_input');

CREATE TABLE events (
  invocation_id TEXT NOT NULL REFERENCES invocations (id),
  sequence INTEGER NOT NULL,
  time INTEGER NOT NULL,
  body TEXT NOT NULL,
  PRIMARY KEY (invocation_id, sequence)
) WITHOUT ROWID, STRICT;

CREATE TABLE tasks (
  invocation_id TEXT NOT NULL REFERENCES invocations (id),
  task_id TEXT NOT NULL,
  position INTEGER NOT NULL,
  node TEXT NOT NULL,
  input TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('pending', 'finished')),
  attempt INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (invocation_id, task_id),
  UNIQUE (invocation_id, position)
) STRICT;

CREATE TABLE input_requests (
  invocation_id TEXT NOT NULL REFERENCES invocations (id),
  request_id TEXT NOT NULL,
  position INTEGER NOT NULL,
  task_id TEXT NOT NULL,
  node TEXT NOT NULL,
  prompt TEXT NOT NULL,
  schema TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('pending', 'answered')),
  answer TEXT,
  created_at INTEGER NOT NULL,
  answered_at INTEGER,
  PRIMARY KEY (invocation_id, request_id),
  UNIQUE (invocation_id, position)
) STRICT;
`,
  },
];

/**
 * Brings the database up to the newest version in one immediate transaction,
 * so two processes opening the same file at once cannot both migrate it.
 * Returns the versions applied now. Throws if the database was migrated by a
 * newer build, whose schema this one cannot know.
 */
export function migrate(
  db: Database,
  migrations: readonly Migration[] = MIGRATIONS,
): number[] {
  assertOrdered(migrations);
  const run = db.transaction((): number[] => {
    db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
  version INTEGER PRIMARY KEY,
  applied_at INTEGER NOT NULL
) STRICT`);
    const rows = db
      .prepare("SELECT version FROM schema_migrations")
      .pluck()
      .all() as number[];
    const applied = new Set(rows);
    const newest = migrations.at(-1)?.version ?? 0;
    const unknown = rows.filter((v) => v > newest);
    if (unknown.length > 0) {
      throw new Error(
        `database schema version ${Math.max(...unknown)} is newer than ` +
          `this build knows (${newest}); upgrade the gateway`,
      );
    }
    const record = db.prepare(
      "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
    );
    const done: number[] = [];
    for (const m of migrations) {
      if (applied.has(m.version)) continue;
      db.exec(m.sql);
      record.run(m.version, Date.now());
      done.push(m.version);
    }
    return done;
  });
  return run.immediate();
}

function assertOrdered(migrations: readonly Migration[]): void {
  let previous = 0;
  for (const m of migrations) {
    if (!Number.isInteger(m.version) || m.version <= previous) {
      throw new Error(
        `migration versions must be increasing integers from 1; ` +
          `got ${m.version} after ${previous}`,
      );
    }
    previous = m.version;
  }
}
