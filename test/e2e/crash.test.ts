import type { ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { JsonValue } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import {
  Http2SessionManager,
  createConnectTransport,
  createGrpcTransport,
} from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  AgentService,
  InvocationState,
  type Event,
} from "../../gen/agent/v1/agent_pb.js";
import { DATABASE_FILE } from "../../src/server/gateway.js";
import { createSqliteStore } from "../../src/store/sqlite/sqlite-store.js";
import type { StoredEvent } from "../../src/store/types.js";
import { NODE_RUNS_ENV, readNodeRuns, type NodeRun } from "../fixtures/node-runs.js";
import { startChildGateway, stopAll } from "../helpers/child.js";
import { collect, expectWholeLog, json, ofKind, range, value } from "../helpers/event-log.js";

/**
 * A gateway killed with SIGKILL in the middle of its invocations resumes
 * them when it starts again on the same data: finished nodes do not run
 * again, the nodes that were running do, answered input requests are not
 * asked again, and every event log stays 1..n without a gap. Which nodes
 * ran is judged twice: from the gateway's events and from the record the
 * fixture agents' nodes keep themselves (NODE_RUNS_FILE), which a gateway
 * that re-ran a finished node under a new task id could not hide from.
 */

const AGENT_MODULES = "test/fixtures/agents.ts,test/fixtures/review-agent.ts";
/** A bound on waiting for a condition, so a hang fails instead of stalling. */
const BOUND_MS = 30_000;

interface Child {
  process: ChildProcess;
  port: number;
  grpc: Client<typeof AgentService>;
  json: Client<typeof AgentService>;
  /** Closes the clients' connections (the process is left alone). */
  disconnect(): void;
}

/**
 * `npm start` as a user runs it, on a free port; resolves once it listens.
 * The fixture agents' nodes record their runs in `runsFile`.
 */
async function startChild(dataDir: string, runsFile: string): Promise<Child> {
  const gateway = await startChildGateway(["--import", "tsx", "src/main.ts"], {
    PORT: "0",
    HOST: "127.0.0.1",
    DATA_DIR: dataDir,
    AGENT_MODULES,
    [NODE_RUNS_ENV]: runsFile,
  });
  const { baseUrl } = gateway;
  const sessionManager = new Http2SessionManager(baseUrl);
  return {
    process: gateway.process,
    port: gateway.port,
    grpc: createClient(AgentService, createGrpcTransport({ baseUrl, sessionManager })),
    json: createClient(AgentService, createConnectTransport({ baseUrl, httpVersion: "1.1" })),
    disconnect: () => sessionManager.abort(),
  };
}

/** `kill -9` of the child's whole process group; resolves once it is gone. */
async function killChild(child: ChildProcess, signal: NodeJS.Signals = "SIGKILL") {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  try {
    process.kill(-child.pid!, signal);
  } catch {
    // Already gone.
  }
  await exited;
}

/** Waits until `condition` holds, checking often; fails past the bound. */
async function until(what: string, condition: () => boolean | Promise<boolean>) {
  const deadline = Date.now() + BOUND_MS;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(10);
  }
}

/** `node_started` as the wire names it: `nodeStarted`. */
function wireKind(type: string): string {
  return type.replace(/_(\w)/g, (_, c: string) => c.toUpperCase());
}

/** What the client starts before the crash, with its input. */
const PLAN = {
  chain1: { agent: "chain", input: { stepMs: 500 } },
  chain2: { agent: "chain", input: { stepMs: 500 } },
  chain3: { agent: "chain", input: { stepMs: 500 } },
  ticker1: { agent: "ticker", input: { count: 80, intervalMs: 25 } },
  ticker2: { agent: "ticker", input: { count: 60, intervalMs: 30 } },
  /** Answered before the crash; it ends at once. */
  approved: { agent: "approval", input: { subject: "the deploy" } },
  /** Answered before the crash, and still working on it at the crash. */
  review: { agent: "review", input: { stepMs: 1500 } },
  /** Not answered before the crash. */
  waiting: { agent: "approval", input: { subject: "the budget" } },
} satisfies Record<string, { agent: string; input: JsonValue }>;
type Name = keyof typeof PLAN;
const NAMES = Object.keys(PLAN) as Name[];

/** The invocations whose nodes record their own runs: nodes in order. */
const RECORDED_NODES = {
  chain1: ["a", "b", "c"],
  chain2: ["a", "b", "c"],
  chain3: ["a", "b", "c"],
  review: ["ask", "apply"],
} satisfies Partial<Record<Name, string[]>>;
type Recorded = keyof typeof RECORDED_NODES;
const RECORDED = Object.keys(RECORDED_NODES) as Recorded[];

const APPROVED_ANSWER = { approved: true, comment: "before the crash" };
const REVIEW_ANSWER = { approved: false, comment: "not like this" };
const LATE_ANSWER = { approved: true, comment: "after the restart" };

/** True when `events` holds a `node` event of `kind`. */
function has(events: Event[], kind: "nodeStarted" | "nodeFinished", node: string) {
  return ofKind(events, kind).some((e) => e.kind.value.node === node);
}

/** The runs of one invocation in a record of node runs. */
function runsOf(runs: NodeRun[], name: Name): NodeRun[] {
  return runs.filter((r) => r.invocationId === ids[name]);
}

/** The runs that started and did not return: no `end` for the attempt. */
function unfinished(runs: NodeRun[]): NodeRun[] {
  const attempt = (r: NodeRun) => `${r.taskId} ${r.attempt}`;
  const ended = new Set(runs.filter((r) => r.phase === "end").map(attempt));
  return runs.filter((r) => r.phase === "start" && !ended.has(attempt(r)));
}

/** The nodes whose runs returned, in the order they did. */
function ended(runs: NodeRun[]): string[] {
  return runs.filter((r) => r.phase === "end").map((r) => r.node);
}

/** What the store held when the process died. */
interface Snapshot {
  events: StoredEvent[];
  lastSequence: number;
  /** Tasks that had started and not finished: task id to its attempt. */
  interrupted: Map<string, number>;
}

let dataDir: string;
/** The nodes' own record of their runs, kept beside the data. */
let runsFile: string;
/** The record as the killed process left it. */
let runsBefore: NodeRun[] = [];
/** What the restarted process added to it. */
let runsAfter: NodeRun[] = [];
let child: Child | undefined;
const ids = {} as Record<Name, string>;
/** What watchers saw before the crash, per invocation. */
const seen = {} as Record<Name, Event[]>;
const snapshot = {} as Record<Name, Snapshot>;
/** Every event after the restart, from 1 to the end. */
const logs = {} as Record<Exclude<Name, "waiting">, Event[]>;

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), "agent-gateway-crash-"));
  runsFile = join(dataDir, "node-runs.log");
  child = await startChild(dataDir, runsFile);
  const first = child;

  // Start everything, over two protocols, and watch it all.
  await Promise.all(
    NAMES.map(async (name, i) => {
      const client = i % 2 === 0 ? first.grpc : first.json;
      const { agent, input } = PLAN[name];
      const { invocation } = await client.startInvocation({ agent, input: value(input) });
      ids[name] = invocation!.id;
      seen[name] = [];
    }),
  );
  const stopWatching = new AbortController();
  const watchers = NAMES.map((name) =>
    collect(
      first.grpc.watchInvocation(
        { invocationId: ids[name], afterSequence: 0n },
        { signal: stopWatching.signal },
      ),
      async (event) => {
        seen[name].push(event);
        if (event.kind.case !== "inputRequested") return;
        const answer =
          name === "approved" ? APPROVED_ANSWER : name === "review" ? REVIEW_ANSWER : undefined;
        if (answer) {
          await first.json.provideInput({
            invocationId: ids[name],
            requestId: event.kind.value.requestId,
            value: value(answer),
          });
        }
      },
    ).catch(() => undefined),
  );

  // Mid-graph: each chain has run a and runs b or c; the tickers tick;
  // the review works on its answer; one approval waits.
  const midGraph: Record<Name, (events: Event[]) => boolean> = {
    chain1: (e) => has(e, "nodeStarted", "b") && !has(e, "nodeFinished", "c"),
    chain2: (e) => has(e, "nodeStarted", "b") && !has(e, "nodeFinished", "c"),
    chain3: (e) => has(e, "nodeStarted", "b") && !has(e, "nodeFinished", "c"),
    ticker1: (e) => ofKind(e, "chunk").length >= 5 && ofKind(e, "completed").length === 0,
    ticker2: (e) => ofKind(e, "chunk").length >= 5 && ofKind(e, "completed").length === 0,
    approved: (e) => ofKind(e, "completed").length === 1,
    review: (e) => ofKind(e, "inputProvided").length === 1 && !has(e, "nodeFinished", "ask"),
    waiting: (e) => ofKind(e, "inputRequested").length === 1,
  };
  // And by the nodes' own record, each recording invocation is inside a
  // node, not between a node's return and its checkpoint.
  await until("every invocation is mid-graph", () => {
    const runs = readNodeRuns(runsFile);
    return (
      NAMES.every((name) => midGraph[name](seen[name])) &&
      RECORDED.every((name) => unfinished(runsOf(runs, name)).length === 1)
    );
  });

  await killChild(first.process);
  runsBefore = readNodeRuns(runsFile);
  stopWatching.abort();
  first.disconnect();
  await Promise.all(watchers);
  child = undefined;

  // Read what the dead process left in its store.
  const store = createSqliteStore({
    path: join(dataDir, DATABASE_FILE),
    synchronous: "normal",
  });
  try {
    for (const name of NAMES) {
      const events = await store.readEvents(ids[name], 0, 10_000);
      const interrupted = new Map<string, number>();
      for (const { body } of events) {
        if (body.type === "node_started") interrupted.set(body.taskId, body.attempt);
        if (body.type === "node_finished") interrupted.delete(body.taskId);
      }
      snapshot[name] = {
        events,
        lastSequence: events.at(-1)?.sequence ?? 0,
        interrupted,
      };
    }
  } finally {
    await store.close();
  }

  // Start again on the same data and follow every invocation to its end.
  child = await startChild(dataDir, runsFile);
  const second = child;
  await Promise.all(
    NAMES.filter((name) => name !== "waiting").map(async (name) => {
      logs[name as Exclude<Name, "waiting">] = await collect(
        second.grpc.watchInvocation(
          { invocationId: ids[name], afterSequence: 0n },
          { signal: AbortSignal.timeout(BOUND_MS) },
        ),
      );
    }),
  );
  runsAfter = readNodeRuns(runsFile).slice(runsBefore.length);
}, 2 * BOUND_MS);

afterAll(async () => {
  child?.disconnect();
  await stopAll();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

const RESUMED = NAMES.filter((name): name is Exclude<Name, "waiting"> => name !== "waiting");

describe("after kill -9 and a restart on the same data", () => {
  it("the crash happened mid-graph, after what clients saw was stored", () => {
    for (const name of NAMES) {
      const stored = snapshot[name].events;
      // Write first, then publish: nothing seen was lost with the process.
      const last = Number(seen[name].at(-1)!.sequence);
      expect(snapshot[name].lastSequence).toBeGreaterThanOrEqual(last);
      expect(stored.map((e) => e.sequence)).toEqual(range(1, stored.length));
      const terminal = stored.filter((e) =>
        ["completed", "failed", "cancelled"].includes(e.body.type),
      );
      expect(terminal).toHaveLength(name === "approved" ? 1 : 0);
    }
    // Nodes that were running and must run again: one per invocation
    // (the tickers', the review's ask, the waiting approval's ask, and
    // each chain's b or c).
    for (const name of NAMES) {
      expect(snapshot[name].interrupted.size, name).toBe(name === "approved" ? 0 : 1);
    }
    // The nodes' own record agrees with the store: what had returned was
    // stored as finished, and what was running was stored as started.
    for (const name of RECORDED) {
      const before = runsOf(runsBefore, name);
      const finished = snapshot[name].events.flatMap(({ body }) =>
        body.type === "node_finished" ? [body.node] : [],
      );
      expect(ended(before), name).toEqual(finished);
      expect(
        new Map(unfinished(before).map((r) => [r.taskId, r.attempt])),
        name,
      ).toEqual(snapshot[name].interrupted);
    }
    // Each chain had finished a and was inside b or c.
    for (const name of ["chain1", "chain2", "chain3"] as const) {
      expect(ended(runsOf(runsBefore, name))[0], name).toBe("a");
    }
  });

  it.each(RESUMED)("%s finishes with a whole log that extends the stored one", async (name) => {
    const log = logs[name];
    expectWholeLog(log);
    const { invocation } = await child!.json.getInvocation({ invocationId: ids[name] });
    expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
    expect(invocation?.lastSequence).toBe(log.at(-1)!.sequence);
    // Nothing stored before the crash was taken back or rewritten.
    const before = snapshot[name].events;
    expect(log.slice(0, before.length).map((e) => [Number(e.sequence), e.kind.case])).toEqual(
      before.map((e) => [e.sequence, wireKind(e.body.type)]),
    );
  });

  it.each(RESUMED)("%s ran no finished node twice", (name) => {
    const log = logs[name];
    const finished = ofKind(log, "nodeFinished");
    const taskIds = new Set(ofKind(log, "nodeStarted").map((e) => e.kind.value.taskId));
    expect(new Set(finished.map((e) => e.kind.value.taskId))).toEqual(taskIds);
    for (const taskId of taskIds) {
      const ends = log.filter(
        (e) => e.kind.case === "nodeFinished" && e.kind.value.taskId === taskId,
      );
      expect(ends, taskId).toHaveLength(1);
      const end = ends[0]!.sequence;
      const laterStarts = ofKind(log, "nodeStarted").filter(
        (e) => e.kind.value.taskId === taskId && e.sequence > end,
      );
      expect(laterStarts, taskId).toEqual([]);
    }
  });

  it.each(RECORDED)("%s, by its nodes' own record, ran no finished node again", (name) => {
    const finished = ended(runsOf(runsBefore, name));
    const startedAfter = runsOf(runsAfter, name)
      .filter((r) => r.phase === "start")
      .map((r) => r.node);
    for (const node of finished) expect(startedAfter, node).not.toContain(node);
  });

  it.each(RECORDED)("%s, by its nodes' own record, ran its interrupted node again", (name) => {
    const [interrupted, ...others] = unfinished(runsOf(runsBefore, name));
    expect(interrupted).toBeDefined();
    expect(others).toEqual([]);
    const rerun = runsOf(runsAfter, name).find(
      (r) => r.phase === "start" && r.node === interrupted!.node,
    );
    expect(rerun?.taskId, interrupted!.node).toBe(interrupted!.taskId);
    expect(rerun?.attempt, interrupted!.node).toBeGreaterThan(interrupted!.attempt);
  });

  it.each(RECORDED)("%s, by its nodes' own record, finished each node once", (name) => {
    const all = [...runsOf(runsBefore, name), ...runsOf(runsAfter, name)];
    expect(ended(all)).toEqual(RECORDED_NODES[name]);
    expect(unfinished(runsOf(runsAfter, name))).toEqual([]);
  });

  it.each(RESUMED)("%s ran its interrupted node again", (name) => {
    const after = logs[name].filter((e) => Number(e.sequence) > snapshot[name].lastSequence);
    for (const [taskId, attempt] of snapshot[name].interrupted) {
      const retry = ofKind(after, "nodeRetrying").find((e) => e.kind.value.taskId === taskId);
      expect(retry?.kind.value.attempt, taskId).toBe(attempt);
      expect(retry?.kind.value.error).toMatch(/interrupted/);
      const rerun = ofKind(after, "nodeStarted").find(
        (e) => e.kind.value.taskId === taskId && e.sequence > retry!.sequence,
      );
      expect(rerun?.kind.value.attempt).toBeGreaterThan(attempt);
    }
    // Only the interrupted nodes were retried.
    expect(new Set(ofKind(after, "nodeRetrying").map((e) => e.kind.value.taskId))).toEqual(
      new Set(snapshot[name].interrupted.keys()),
    );
  });

  it("answers an input request answered before the crash from the store", () => {
    for (const [name, answer] of [
      ["approved", APPROVED_ANSWER],
      ["review", REVIEW_ANSWER],
    ] as const) {
      const log = logs[name];
      expect(ofKind(log, "inputRequested"), name).toHaveLength(1);
      expect(ofKind(log, "inputProvided"), name).toHaveLength(1);
      expect(json(ofKind(log, "completed")[0]!.kind.value.result)).toEqual(answer);
    }
    // The review's ask ran again after the restart and went on with the
    // stored answer instead of asking.
    expect(snapshot.review.interrupted.size).toBe(1);
  });

  it("an input request not answered before the crash still waits, and can be answered", async () => {
    const client = child!.grpc;
    const id = ids.waiting;
    const asked = ofKind(seen.waiting, "inputRequested")[0]!.kind.value.requestId;
    let pending: string[] = [];
    await until("the approval waits for input again", async () => {
      const { invocation } = await client.getInvocation({ invocationId: id });
      pending = invocation!.pendingInputs.map((p) => p.requestId);
      return invocation!.state === InvocationState.WAITING_FOR_INPUT;
    });
    expect(pending).toEqual([asked]);

    const { invocation } = await child!.json.provideInput({
      invocationId: id,
      requestId: asked,
      value: value(LATE_ANSWER),
    });
    expect(invocation?.pendingInputs).toEqual([]);
    const log = await collect(
      client.watchInvocation(
        { invocationId: id, afterSequence: 0n },
        { signal: AbortSignal.timeout(BOUND_MS) },
      ),
    );
    expectWholeLog(log);
    expect(ofKind(log, "inputRequested")).toHaveLength(1);
    expect(json(ofKind(log, "completed")[0]!.kind.value.result)).toEqual(LATE_ANSWER);
    const retries = ofKind(log, "nodeRetrying");
    expect(retries).toHaveLength(1);
    expect(retries[0]!.kind.value.error).toMatch(/interrupted/);
    const { invocation: final } = await client.getInvocation({ invocationId: id });
    expect(final?.state).toBe(InvocationState.SUCCEEDED);
  });
});
