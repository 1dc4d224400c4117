import * as http2 from "node:http2";
import { setTimeout as sleep } from "node:timers/promises";
import { fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema, type Value } from "@bufbuild/protobuf/wkt";
import { ConnectError, type Client } from "@connectrpc/connect";
import type { AgentService, Event, Invocation } from "../../gen/agent/v1/agent_pb.js";

/** Helpers for tests that drive a gateway through its clients. */

export type AgentClient = Client<typeof AgentService>;

/** A JSON value as a google.protobuf.Value, for agent input and answers. */
export function value(json: JsonValue): Value {
  return fromJson(ValueSchema, json);
}

/**
 * A google.protobuf.Value back as plain JSON. (Struct fields need no such
 * help: protobuf-es gives them as plain JSON objects already.)
 */
export function plain(v: Value | undefined): JsonValue | undefined {
  return v === undefined ? undefined : toJson(ValueSchema, v);
}

/**
 * The error a call failed with, as a ConnectError (its code and message);
 * throws, failing the test, if the call succeeded.
 */
export async function failure(
  call: Promise<unknown> | (() => Promise<unknown>),
): Promise<ConnectError> {
  try {
    await (typeof call === "function" ? call() : call);
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("expected the call to fail, but it succeeded");
}

/** Reads a whole server stream, e.g. to see that it fails. */
export async function drain(stream: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of stream) {
    // nothing to do
  }
}

/**
 * Every event of an invocation, in order, until its last one (the watch
 * ends there). Heartbeats are left out.
 */
export async function eventsOf(
  client: AgentClient,
  invocationId: string,
): Promise<Event[]> {
  const events: Event[] = [];
  for await (const res of client.watchInvocation({ invocationId }, { timeoutMs: 20_000 })) {
    if (res.event && res.event.kind.case !== "heartbeat") events.push(res.event);
  }
  return events;
}

/** Waits (watching its events) until the invocation has ended. */
export async function settled(
  client: AgentClient,
  invocationId: string,
): Promise<Invocation> {
  await eventsOf(client, invocationId);
  const { invocation } = await client.getInvocation({ invocationId });
  return invocation!;
}

/**
 * Watches an invocation until `until` holds for an event, then stops
 * watching; the events seen so far are returned.
 */
export async function watchUntil(
  client: AgentClient,
  invocationId: string,
  until: (event: Event) => boolean,
): Promise<Event[]> {
  const seen: Event[] = [];
  const stop = new AbortController();
  try {
    for await (const res of client.watchInvocation(
      { invocationId },
      { signal: stop.signal, timeoutMs: 20_000 },
    )) {
      if (!res.event) continue;
      seen.push(res.event);
      if (until(res.event)) return seen;
    }
  } finally {
    stop.abort();
  }
  throw new Error(`invocation ${invocationId} ended before the awaited event`);
}

/** The `kind` cases of events, e.g. ["started", "nodeStarted", ...]. */
export function kinds(events: Event[]): string[] {
  return events.map((e) => e.kind.case ?? "none");
}

/**
 * Polls `check` until it returns something other than undefined. The limit
 * only bounds a wait for a condition; it is not a timing assertion.
 */
export async function eventually<T>(
  check: () => Promise<T | undefined>,
  what: string,
  limitMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    const result = await check();
    if (result !== undefined) return result;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

export interface RawGrpcResponse {
  /** The HTTP status. */
  status: number;
  headers: http2.IncomingHttpHeaders;
  /** grpc-status from the trailers (or a trailers-only response). */
  grpcStatus: number | undefined;
  /** grpc-message, percent-decoded. */
  grpcMessage: string;
  body: Buffer;
}

/** A gRPC length-prefixed message: flags, 4-byte big-endian length, bytes. */
export function envelope(
  payload: Uint8Array,
  options: { length?: number; flags?: number } = {},
): Buffer {
  const prefix = Buffer.alloc(5);
  prefix.writeUInt8(options.flags ?? 0, 0);
  prefix.writeUInt32BE(options.length ?? payload.length, 1);
  return Buffer.concat([prefix, payload]);
}

/**
 * One gRPC call over h2c with node:http2, sending exactly `body`: for bytes
 * no gRPC client would send.
 */
export async function rawGrpc(
  baseUrl: string,
  path: string,
  body: Uint8Array,
  headers: http2.OutgoingHttpHeaders = {},
): Promise<RawGrpcResponse> {
  const session = http2.connect(baseUrl);
  try {
    return await new Promise<RawGrpcResponse>((resolve, reject) => {
      session.once("error", reject);
      const req = session.request({
        ":method": "POST",
        ":path": path,
        "content-type": "application/grpc",
        te: "trailers",
        ...headers,
      });
      let responseHeaders: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders = {};
      const chunks: Buffer[] = [];
      req.on("response", (h) => (responseHeaders = h));
      req.on("trailers", (t) => (trailers = t));
      req.on("data", (chunk: Buffer) => chunks.push(chunk));
      req.on("error", reject);
      req.on("end", () => {
        // A trailers-only response carries the status in its headers.
        const status = trailers["grpc-status"] ?? responseHeaders["grpc-status"];
        const message = trailers["grpc-message"] ?? responseHeaders["grpc-message"];
        resolve({
          status: Number(responseHeaders[":status"]),
          headers: responseHeaders,
          grpcStatus: status === undefined ? undefined : Number(status),
          grpcMessage: decodeURIComponent(String(message ?? "")),
          body: Buffer.concat(chunks),
        });
      });
      req.end(body);
    });
  } finally {
    session.close();
  }
}
