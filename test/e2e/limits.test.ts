import { once } from "node:events";
import * as http2 from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  InvocationState,
  WatchInvocationRequestSchema,
  WatchInvocationResponseSchema,
  type WatchInvocationResponse,
} from "../../gen/agent/v1/agent_pb.js";
import { envelope, failure, value, type AgentClient } from "../helpers/calls.js";
import { PROTOCOLS, startGateway, type TestGateway } from "../helpers/gateway.js";

/**
 * Limits a client meets on the wire, through real clients on a real port:
 * the longest deadline a call may ask for (config.maxTimeoutMs) and how many
 * HTTP/2 streams one connection may have open at once
 * (config.maxConcurrentStreams).
 */

const MAX_TIMEOUT_MS = 10_000;
const MAX_STREAMS = 2;
/**
 * Past the default cap of 24 h, so only "no cap" lets it through. It stays
 * within 8 digits: connect-es's gRPC client sends the deadline in
 * milliseconds ("90000000m"), and the gRPC spec, which connect-es's server
 * enforces, allows at most 8 digits.
 */
const LONG_TIMEOUT_MS = 25 * 60 * 60 * 1000;
const WATCH_PATH = "/agent.v1.AgentService/WatchInvocation";

let capped: TestGateway;
let uncapped: TestGateway;
let narrow: TestGateway;

beforeAll(async () => {
  [capped, uncapped, narrow] = await Promise.all([
    startGateway({ config: { maxTimeoutMs: MAX_TIMEOUT_MS } }),
    startGateway({ config: { maxTimeoutMs: 0 } }),
    startGateway({ config: { maxConcurrentStreams: MAX_STREAMS } }),
  ]);
});
afterAll(async () => {
  await Promise.all([capped?.close(), uncapped?.close(), narrow?.close()]);
});

async function echoCount(client: AgentClient): Promise<number> {
  const { invocations } = await client.listInvocations({ agent: "echo", pageSize: 500 });
  return invocations.length;
}

describe.each(PROTOCOLS)("deadlines over %s", (protocol) => {
  it("one past config.maxTimeoutMs is INVALID_ARGUMENT and starts nothing", async () => {
    const client = capped.client(protocol);
    const before = await echoCount(client);
    const error = await failure(
      client.invoke({ agent: "echo", input: value({}) }, { timeoutMs: MAX_TIMEOUT_MS + 1 }),
    );
    expect(error.code).toBe(Code.InvalidArgument);
    expect(error.message).toContain(`timeout ${MAX_TIMEOUT_MS + 1}ms must be <= ${MAX_TIMEOUT_MS}`);
    expect(await echoCount(client)).toBe(before);
  });

  it("one of exactly config.maxTimeoutMs is served", async () => {
    const { invocation } = await capped
      .client(protocol)
      .invoke({ agent: "echo", input: value({}) }, { timeoutMs: MAX_TIMEOUT_MS });
    expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
  });

  it("with maxTimeoutMs 0 (no cap), one past the default cap is served", async () => {
    const { invocation } = await uncapped
      .client(protocol)
      .invoke({ agent: "echo", input: value({}) }, { timeoutMs: LONG_TIMEOUT_MS });
    expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
  });
});

/** How a raw stream first turned out: its first message, or its end. */
type Outcome =
  | { kind: "served"; status: number | undefined; message: WatchInvocationResponse }
  | { kind: "closed"; rstCode: number; responded: boolean };

interface RawWatch {
  stream: http2.ClientHttp2Stream;
  /** Settles on the first whole message or on the stream's end. */
  outcome: Promise<Outcome>;
}

/** A gRPC WatchInvocation call on a raw HTTP/2 session. */
function rawWatch(session: http2.ClientHttp2Session, invocationId: string): RawWatch {
  const stream = session.request({
    ":method": "POST",
    ":path": WATCH_PATH,
    "content-type": "application/grpc",
    te: "trailers",
  });
  stream.end(
    envelope(toBinary(WatchInvocationRequestSchema, create(WatchInvocationRequestSchema, { invocationId }))),
  );
  // A refused stream emits an error; its rstCode says why.
  stream.on("error", () => undefined);
  const outcome = new Promise<Outcome>((resolve) => {
    let status: number | undefined;
    let received = Buffer.alloc(0);
    stream.once("response", (headers) => {
      status = headers[":status"];
    });
    stream.on("data", (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length < 5) return;
      const end = 5 + received.readUInt32BE(1);
      if (received.length < end) return;
      const message = fromBinary(WatchInvocationResponseSchema, received.subarray(5, end));
      resolve({ kind: "served", status, message });
    });
    stream.once("close", () => {
      resolve({ kind: "closed", rstCode: stream.rstCode, responded: status !== undefined });
    });
  });
  return { stream, outcome };
}

describe("HTTP/2 streams per connection (config.maxConcurrentStreams)", () => {
  /** An invocation that waits for input, so watching it never ends. */
  async function waiting(): Promise<string> {
    const { invocation } = await narrow
      .client("grpc")
      .startInvocation({ agent: "approval", input: value({}) });
    return invocation!.id;
  }

  function expectServed(outcome: Outcome): void {
    expect(outcome.kind).toBe("served");
    if (outcome.kind !== "served") return;
    expect(outcome.status).toBe(200);
    expect(outcome.message.event?.kind.case).toBe("started");
  }

  it("the cap is advertised, and streams past it are refused with REFUSED_STREAM", async () => {
    const id = await waiting();
    // Until the server's SETTINGS arrive, Node's client assumes the peer
    // allows this many streams. Streams asked for at once go out with the
    // connection preface, before the server can have answered, so the
    // client does not hold back the ones past the cap: the server must
    // turn them away itself.
    const session = http2.connect(narrow.baseUrl, { peerMaxConcurrentStreams: 100 });
    try {
      const settings = once(session, "remoteSettings");
      const watches = Array.from({ length: MAX_STREAMS + 2 }, () => rawWatch(session, id));
      const [remote] = (await settings) as [http2.Settings];
      expect(remote.maxConcurrentStreams).toBe(MAX_STREAMS);
      expect(session.remoteSettings.maxConcurrentStreams).toBe(MAX_STREAMS);

      const outcomes = await Promise.all(watches.map((w) => w.outcome));
      for (const outcome of outcomes.slice(0, MAX_STREAMS)) expectServed(outcome);
      for (const outcome of outcomes.slice(MAX_STREAMS)) {
        expect(outcome).toEqual({
          kind: "closed",
          rstCode: http2.constants.NGHTTP2_REFUSED_STREAM,
          responded: false,
        });
      }
      // Only those streams were refused: the session goes on, and once a
      // served stream ends a new one is served in its place.
      const first = watches[0]!.stream;
      first.close();
      await once(first, "close");
      expectServed(await rawWatch(session, id).outcome);
      // The served streams are still open.
      expect(watches[1]!.stream.closed).toBe(false);
    } finally {
      session.destroy();
    }
  });

  it("a client that heeds the cap holds a stream past it back until one ends", async () => {
    const id = await waiting();
    const session = http2.connect(narrow.baseUrl);
    try {
      await once(session, "remoteSettings");
      const watches = Array.from({ length: MAX_STREAMS + 1 }, () => rawWatch(session, id));
      const outcomes = await Promise.all(watches.slice(0, MAX_STREAMS).map((w) => w.outcome));
      for (const outcome of outcomes) expectServed(outcome);
      // The client sent the first streams' HEADERS and, in the same write,
      // would have sent this one's had the cap allowed it: it is still idle,
      // never sent, so the server never saw it.
      const extra = watches[MAX_STREAMS]!.stream;
      expect(extra.state.state).toBe(http2.constants.NGHTTP2_STREAM_STATE_IDLE);

      watches[0]!.stream.close();
      expectServed(await watches[MAX_STREAMS]!.outcome);
    } finally {
      session.destroy();
    }
  });
});
