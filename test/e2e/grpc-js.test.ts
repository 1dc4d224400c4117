import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startGateway, type TestGateway } from "../helpers/gateway.js";

/**
 * The gateway seen by a client that shares no code with it: @grpc/grpc-js
 * with the schema loaded from proto/ by @grpc/proto-loader, messages as
 * plain objects, google.protobuf.Value spelled out by hand.
 */

const root = join(dirname(fileURLToPath(import.meta.url)), "../..");
const require = createRequire(import.meta.url);
const googleProtoFiles = dirname(require.resolve("google-proto-files/package.json"));

/** A bound for waiting on an RPC, never an assertion. */
const DEADLINE_MS = 20_000;

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A google.protobuf.Value as proto-loader's plain objects spell it. */
interface PlainValue {
  nullValue?: string;
  numberValue?: number;
  stringValue?: string;
  boolValue?: boolean;
  structValue?: { fields?: Record<string, PlainValue> };
  listValue?: { values?: PlainValue[] };
  kind?: string;
}

function toValue(json: Json): PlainValue {
  if (json === null) return { nullValue: "NULL_VALUE" };
  if (typeof json === "number") return { numberValue: json };
  if (typeof json === "string") return { stringValue: json };
  if (typeof json === "boolean") return { boolValue: json };
  if (Array.isArray(json)) return { listValue: { values: json.map(toValue) } };
  return {
    structValue: {
      fields: Object.fromEntries(
        Object.entries(json).map(([k, v]) => [k, toValue(v)]),
      ),
    },
  };
}

function fromValue(value: PlainValue | null | undefined): Json | undefined {
  if (!value) return undefined;
  switch (value.kind) {
    case "nullValue":
      return null;
    case "numberValue":
      return value.numberValue ?? 0;
    case "stringValue":
      return value.stringValue ?? "";
    case "boolValue":
      return value.boolValue ?? false;
    case "listValue":
      return (value.listValue?.values ?? []).map((v) => fromValue(v) ?? null);
    case "structValue":
      return Object.fromEntries(
        Object.entries(value.structValue?.fields ?? {}).map(([k, v]) => [
          k,
          fromValue(v) ?? null,
        ]),
      );
    default:
      throw new Error(`not a google.protobuf.Value: ${JSON.stringify(value)}`);
  }
}

interface PlainInvocation {
  id: string;
  agent: string;
  state: string;
  input?: PlainValue;
  result?: PlainValue;
  lastSequence: string;
}

interface PlainEvent {
  invocationId: string;
  sequence: string;
  /** The case of the oneof `kind`. */
  kind: string;
  started?: { invocation?: PlainInvocation };
  chunk?: { node: string; data?: PlainValue };
  completed?: { result?: PlainValue };
}

type Callback<T> = (error: grpc.ServiceError | null, response?: T) => void;
type InvocationResponse = { invocation: PlainInvocation };
type EventStream = grpc.ClientReadableStream<{ event: PlainEvent }>;

/** The methods this test calls, as grpc-js generates them at run time. */
interface AgentServiceClient extends grpc.Client {
  Invoke(
    request: object,
    options: grpc.CallOptions,
    callback: Callback<InvocationResponse>,
  ): grpc.ClientUnaryCall;
  GetInvocation(
    request: object,
    options: grpc.CallOptions,
    callback: Callback<InvocationResponse>,
  ): grpc.ClientUnaryCall;
  InvokeStream(request: object, options: grpc.CallOptions): EventStream;
  WatchInvocation(request: object, options: grpc.CallOptions): EventStream;
}

function loadClientConstructor(): grpc.ServiceClientConstructor {
  const definition = protoLoader.loadSync("agent/v1/agent.proto", {
    includeDirs: [join(root, "proto"), googleProtoFiles],
    keepCase: false,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    agent: { v1: { AgentService: grpc.ServiceClientConstructor } };
  };
  return loaded.agent.v1.AgentService;
}

function unary<T>(
  call: (options: grpc.CallOptions, callback: Callback<T>) => unknown,
): Promise<T> {
  return new Promise((resolve, reject) => {
    call({ deadline: Date.now() + DEADLINE_MS }, (error, response) => {
      if (error) reject(error);
      else resolve(response as T);
    });
  });
}

/** Every message of a server stream, and the response headers. */
async function readStream(
  call: EventStream,
): Promise<{ events: PlainEvent[]; metadata: grpc.Metadata | undefined }> {
  let metadata: grpc.Metadata | undefined;
  call.on("metadata", (m: grpc.Metadata) => (metadata = m));
  const events: PlainEvent[] = [];
  for await (const message of call as AsyncIterable<{ event: PlainEvent }>) {
    if (message.event.kind !== "heartbeat") events.push(message.event);
  }
  return { events, metadata };
}

async function errorOf(promise: Promise<unknown>): Promise<grpc.ServiceError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(Error);
  return error as grpc.ServiceError;
}

function range(from: number, to: number): string[] {
  return Array.from({ length: to - from + 1 }, (_, i) => String(from + i));
}

let gw: TestGateway;
let client: AgentServiceClient;
beforeAll(async () => {
  gw = await startGateway();
  const AgentService = loadClientConstructor();
  client = new AgentService(
    `127.0.0.1:${gw.port}`,
    grpc.credentials.createInsecure(),
  ) as unknown as AgentServiceClient;
});
afterAll(async () => {
  client?.close();
  await gw?.close();
});

describe("grpc-js client", () => {
  it("invokes echo", async () => {
    const input = { text: "hi", list: [1, true, null], nested: { a: "b" } };
    const { invocation } = await unary<InvocationResponse>((o, cb) =>
      client.Invoke({ agent: "echo", input: toValue(input) }, o, cb),
    );
    expect(invocation.id).toMatch(/\S/);
    expect(invocation.agent).toBe("echo");
    expect(invocation.state).toBe("INVOCATION_STATE_SUCCEEDED");
    expect(fromValue(invocation.input)).toEqual(input);
    expect(fromValue(invocation.result)).toEqual(input);

    const got = await unary<InvocationResponse>((o, cb) =>
      client.GetInvocation({ invocationId: invocation.id }, o, cb),
    );
    expect(got.invocation.id).toBe(invocation.id);
    expect(got.invocation.state).toBe("INVOCATION_STATE_SUCCEEDED");
    expect(fromValue(got.invocation.result)).toEqual(input);
    expect(got.invocation.lastSequence).toBe(invocation.lastSequence);
  });

  it("invokes wordfreq", async () => {
    const text = "one two two\n\nthree three three two";
    const { invocation } = await unary<InvocationResponse>((o, cb) =>
      client.Invoke({ agent: "wordfreq", input: toValue({ text, top: 2 }) }, o, cb),
    );
    expect(invocation.state).toBe("INVOCATION_STATE_SUCCEEDED");
    expect(fromValue(invocation.input)).toEqual({ text, top: 2 });
    expect(fromValue(invocation.result)).toEqual({
      words: [
        ["three", 3],
        ["two", 3],
      ],
    });
  });

  it("gets gRPC status codes for refusals", async () => {
    const unknownAgent = await errorOf(
      unary((o, cb) => client.Invoke({ agent: "nope", input: toValue({}) }, o, cb)),
    );
    expect(unknownAgent.code).toBe(grpc.status.NOT_FOUND);
    expect(unknownAgent.details).toContain("nope");

    const badInput = await errorOf(
      unary((o, cb) =>
        client.Invoke({ agent: "ticker", input: toValue({ count: -1 }) }, o, cb),
      ),
    );
    expect(badInput.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(badInput.details).toContain("count");

    const unknownInvocation = await errorOf(
      unary((o, cb) => client.GetInvocation({ invocationId: "nope" }, o, cb)),
    );
    expect(unknownInvocation.code).toBe(grpc.status.NOT_FOUND);

    const streamed = await errorOf(
      readStream(
        client.WatchInvocation(
          { invocationId: "nope" },
          { deadline: Date.now() + DEADLINE_MS },
        ),
      ),
    );
    expect(streamed.code).toBe(grpc.status.NOT_FOUND);
  });

  it("streams InvokeStream of ticker with the id in the metadata", async () => {
    const { events, metadata } = await readStream(
      client.InvokeStream(
        { agent: "ticker", input: toValue({ count: 3, intervalMs: 5 }) },
        { deadline: Date.now() + DEADLINE_MS },
      ),
    );
    const id = events[0]?.started?.invocation?.id;
    expect(id).toMatch(/\S/);
    expect(metadata?.get("agent-invocation-id")).toEqual([id]);
    expect(events.map((e) => e.sequence)).toEqual(range(1, events.length));
    expect(events.every((e) => e.invocationId === id)).toBe(true);
    expect(events.map((e) => e.kind)).toEqual([
      "started",
      "nodeStarted",
      "chunk",
      "chunk",
      "chunk",
      "nodeFinished",
      "completed",
    ]);
    expect(events.filter((e) => e.chunk).map((e) => fromValue(e.chunk?.data))).toEqual([
      { tick: 1 },
      { tick: 2 },
      { tick: 3 },
    ]);
    expect(fromValue(events.at(-1)?.completed?.result)).toEqual({ count: 3 });

    // WatchInvocation replays the same history, then from a sequence on.
    const watched = await readStream(
      client.WatchInvocation(
        { invocationId: id, afterSequence: "0" },
        { deadline: Date.now() + DEADLINE_MS },
      ),
    );
    expect(watched.events).toEqual(events);
    const tail = await readStream(
      client.WatchInvocation(
        { invocationId: id, afterSequence: "4" },
        { deadline: Date.now() + DEADLINE_MS },
      ),
    );
    expect(tail.events.map((e) => e.sequence)).toEqual(range(5, events.length));
  });

  it("watches an invocation while it runs", async () => {
    const started = await new Promise<string>((resolve, reject) => {
      const call = client.InvokeStream(
        { agent: "ticker", input: toValue({ count: 5, intervalMs: 20 }) },
        { deadline: Date.now() + DEADLINE_MS },
      );
      // Leave as soon as the id is known; the invocation goes on.
      call.on("metadata", (m: grpc.Metadata) => {
        resolve(String(m.get("agent-invocation-id")[0]));
        call.cancel();
      });
      call.on("error", (e: grpc.ServiceError) => {
        if (e.code !== grpc.status.CANCELLED) reject(e);
      });
      call.on("data", () => undefined);
    });
    const { events } = await readStream(
      client.WatchInvocation(
        { invocationId: started },
        { deadline: Date.now() + DEADLINE_MS },
      ),
    );
    expect(events.map((e) => e.sequence)).toEqual(range(1, events.length));
    expect(events[0]?.kind).toBe("started");
    expect(events.filter((e) => e.kind === "chunk")).toHaveLength(5);
    expect(fromValue(events.at(-1)?.completed?.result)).toEqual({ count: 5 });
  });
});
