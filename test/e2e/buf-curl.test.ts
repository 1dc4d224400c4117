import { execFile } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startGateway, type TestGateway } from "../helpers/gateway.js";

/**
 * The gateway driven by `buf curl`, a Go client: gRPC over h2c with the
 * schema from server reflection, and the Connect protocol over HTTP/1.1
 * with the schema compiled from proto/.
 */

const root = join(dirname(fileURLToPath(import.meta.url)), "../..");
const buf = join(root, "node_modules/.bin/buf");
const SERVICE = "agent.v1.AgentService";

interface Run {
  /** 0 on success; buf curl exits with 8 times the RPC's error code. */
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs buf asynchronously: the gateway answers from this very process. */
function runBuf(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(
      buf,
      args,
      { cwd: root, timeout: 60_000, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        if (error && typeof error.code !== "number") {
          reject(error);
          return;
        }
        resolve({ code: error ? Number(error.code) : 0, stdout, stderr });
      },
    );
  });
}

/** buf curl prints one pretty JSON document per message, one after another. */
function parseDocuments(text: string): unknown[] {
  const documents: unknown[] = [];
  let depth = 0;
  let start = -1;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') inString = true;
    else if (c === "{" || c === "[") {
      if (depth++ === 0) start = i;
    } else if (c === "}" || c === "]") {
      if (--depth === 0) documents.push(JSON.parse(text.slice(start, i + 1)));
    }
  }
  expect(depth).toBe(0);
  return documents;
}

interface JsonInvocation {
  id: string;
  agent: string;
  state: string;
  input?: unknown;
  result?: unknown;
  lastSequence: string;
}

interface JsonEvent {
  invocationId: string;
  sequence: string;
  started?: { invocation: JsonInvocation };
  chunk?: { node: string; data: unknown };
  completed?: { result: unknown };
  [kind: string]: unknown;
}

/** The kind of an event: its one key besides the common fields. */
function kindOf(event: JsonEvent): string {
  const keys = Object.keys(event).filter(
    (k) => !["invocationId", "sequence", "time"].includes(k),
  );
  expect(keys).toHaveLength(1);
  return keys[0] ?? "";
}

function range(from: number, to: number): string[] {
  return Array.from({ length: to - from + 1 }, (_, i) => String(from + i));
}

let gw: TestGateway;
let url: (method: string) => string;
beforeAll(async () => {
  gw = await startGateway();
  url = (method) => `${gw.baseUrl}/${SERVICE}/${method}`;
});
afterAll(async () => {
  await gw?.close();
});

describe("buf curl, gRPC over h2c with server reflection", () => {
  const grpc = ["curl", "--protocol", "grpc", "--http2-prior-knowledge"];

  it("lists the methods", async () => {
    const run = await runBuf([...grpc, "--list-methods", gw.baseUrl]);
    expect(run.code, run.stderr).toBe(0);
    const methods = run.stdout.split("\n").filter((l) => l !== "");
    expect(methods).toEqual(
      expect.arrayContaining(
        [
          "ListAgents",
          "GetAgent",
          "Invoke",
          "StartInvocation",
          "InvokeStream",
          "WatchInvocation",
          "GetInvocation",
          "ListInvocations",
          "CancelInvocation",
          "ProvideInput",
        ].map((m) => `${SERVICE}/${m}`),
      ),
    );
    expect(methods).toContain("grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
  });

  it("invokes echo", async () => {
    const input = { text: "hi from buf", n: 2, list: [true, null] };
    const run = await runBuf([
      ...grpc,
      "-d",
      JSON.stringify({ agent: "echo", input, metadata: { via: "buf" } }),
      url("Invoke"),
    ]);
    expect(run.code, run.stderr).toBe(0);
    const [response] = parseDocuments(run.stdout) as [
      { invocation: JsonInvocation & { metadata: unknown } },
    ];
    expect(response.invocation.id).toMatch(/\S/);
    expect(response.invocation.agent).toBe("echo");
    expect(response.invocation.state).toBe("INVOCATION_STATE_SUCCEEDED");
    expect(response.invocation.input).toEqual(input);
    expect(response.invocation.result).toEqual(input);
    expect(response.invocation.metadata).toEqual({ via: "buf" });
  });

  it("streams InvokeStream of ticker", async () => {
    const run = await runBuf([
      ...grpc,
      "-v",
      "-d",
      JSON.stringify({ agent: "ticker", input: { count: 3 } }),
      url("InvokeStream"),
    ]);
    expect(run.code, run.stderr).toBe(0);
    const events = (parseDocuments(run.stdout) as { event: JsonEvent }[]).map(
      (m) => m.event,
    );
    const id = events[0]?.started?.invocation.id;
    expect(id).toMatch(/\S/);
    expect(events.map((e) => e.sequence)).toEqual(range(1, events.length));
    expect(events.every((e) => e.invocationId === id)).toBe(true);
    expect(events.map(kindOf)).toEqual([
      "started",
      "nodeStarted",
      "chunk",
      "chunk",
      "chunk",
      "nodeFinished",
      "completed",
    ]);
    expect(events.filter((e) => e.chunk).map((e) => e.chunk?.data)).toEqual([
      { tick: 1 },
      { tick: 2 },
      { tick: 3 },
    ]);
    expect(events.at(-1)?.completed?.result).toEqual({ count: 3 });
    // -v prints the response headers: the id came first, as a header.
    const header = /agent-invocation-id:\s*(\S+)/i.exec(run.stderr);
    expect(header?.[1]).toBe(id);
  });

  it("reports a gRPC error code", async () => {
    const run = await runBuf([
      ...grpc,
      "-d",
      JSON.stringify({ invocation_id: "no-such-invocation" }),
      url("GetInvocation"),
    ]);
    expect(run.code).toBe(8 * 5); // NOT_FOUND
    const [error] = parseDocuments(run.stderr) as [{ code: string }];
    expect(error.code).toBe("not_found");
  });
});

describe("buf curl, Connect over HTTP/1.1 with --schema proto", () => {
  // proto/ imports google/api/annotations.proto; buf resolves it through
  // the workspace in buf.yaml (google-proto-files is its second module).
  const connect = ["curl", "--protocol", "connect", "--schema", "proto"];

  it("invokes wordfreq and reads the invocation back", async () => {
    const text = "red green\n\nred blue\n\nred";
    const run = await runBuf([
      ...connect,
      "-v",
      "-d",
      JSON.stringify({ agent: "wordfreq", input: { text, top: 1 } }),
      url("Invoke"),
    ]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/HTTP\/1\.1 200/);
    const [response] = parseDocuments(run.stdout) as [{ invocation: JsonInvocation }];
    expect(response.invocation.state).toBe("INVOCATION_STATE_SUCCEEDED");
    expect(response.invocation.result).toEqual({ words: [["red", 3]] });

    const got = await runBuf([
      ...connect,
      "-d",
      JSON.stringify({ invocation_id: response.invocation.id }),
      url("GetInvocation"),
    ]);
    expect(got.code, got.stderr).toBe(0);
    const [again] = parseDocuments(got.stdout) as [{ invocation: JsonInvocation }];
    expect(again.invocation).toEqual(response.invocation);
  });

  it("watches an invocation as a Connect stream", async () => {
    const { invocation } = await gw.client("grpc").invoke({
      agent: "echo",
      input: { kind: { case: "stringValue", value: "watched" } },
    });
    const run = await runBuf([
      ...connect,
      "-d",
      JSON.stringify({ invocation_id: invocation?.id, after_sequence: 1 }),
      url("WatchInvocation"),
    ]);
    expect(run.code, run.stderr).toBe(0);
    const events = (parseDocuments(run.stdout) as { event: JsonEvent }[]).map(
      (m) => m.event,
    );
    expect(events.map((e) => e.sequence)).toEqual(
      range(2, Number(invocation?.lastSequence)),
    );
    expect(events.at(-1)?.completed?.result).toBe("watched");
  });

  it("reports NOT_FOUND for an unknown agent", async () => {
    const run = await runBuf([
      ...connect,
      "-d",
      JSON.stringify({ name: "no-such-agent" }),
      url("GetAgent"),
    ]);
    expect(run.code).toBe(8 * 5);
    const [error] = parseDocuments(run.stderr) as [{ code: string; message: string }];
    expect(error).toEqual({
      code: "not_found",
      message: "agent no-such-agent not found",
    });
  });
});
