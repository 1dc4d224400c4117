import * as http2 from "node:http2";
import { create, fromBinary, fromJson, toBinary } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import {
  WatchInvocationRequestSchema,
  WatchInvocationResponseSchema,
} from "../../gen/agent/v1/agent_pb.js";
import { summarize } from "../lib/stats.js";
import { bound, grpcClient, msOf, options, report } from "./common.js";

/**
 * Fan-out: one invocation watched by many WatchInvocation streams. The
 * invocation waits for input until every watcher has its first event;
 * the answer {count, intervalMs} then lets `count` chunks flow. For each
 * chunk on each watcher: receive time minus the event's own time (set by
 * the server when the event was made, before it was stored).
 */
const o = options<{
  url: string;
  watchers: number;
  count: number;
  intervalMs: number;
  perConnection: number;
  timeoutMs: number;
}>();
bound(o.timeoutMs, "fanout");

const connections = [grpcClient(o.url)];
const control = connections[0]!.client;
const started = await control.startInvocation({
  agent: "bench-fanout",
  input: fromJson(ValueSchema, {}),
});
const id = started.invocation!.id;

// The request id of the pending input, once the node has asked.
let requestId = "";
for (let i = 0; i < 500 && !requestId; i++) {
  const got = await control.getInvocation({ invocationId: id });
  requestId = got.invocation?.pendingInputs[0]?.requestId ?? "";
  if (!requestId) await new Promise((r) => setTimeout(r, 10));
}
if (!requestId) throw new Error("the invocation never asked for input");

const latencies: number[] = [];
let attached = 0;
let onAttached: () => void = () => {};
const allAttached = new Promise<void>((r) => (onAttached = r));

// The watchers read with plain node:http2 and decode each message with
// @bufbuild/protobuf: a client far cheaper than a full Connect client, so
// that the latency is the server's, not the client's.
const sessions = Array.from({ length: Math.ceil(o.watchers / o.perConnection) }, () =>
  http2.connect(o.url),
);
const request = (() => {
  const body = toBinary(
    WatchInvocationRequestSchema,
    create(WatchInvocationRequestSchema, { invocationId: id, afterSequence: 0n }),
  );
  const frame = Buffer.alloc(5 + body.length);
  frame.writeUInt32BE(body.length, 1);
  Buffer.from(body).copy(frame, 5);
  return frame;
})();

function watch(index: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const stream = sessions[Math.floor(index / o.perConnection)]!.request({
      ":method": "POST",
      ":path": "/agent.v1.AgentService/WatchInvocation",
      "content-type": "application/grpc",
      te: "trailers",
    });
    let chunks = 0;
    let first = true;
    let pending: Buffer = Buffer.alloc(0);
    stream.on("data", (data: Buffer) => {
      const now = Date.now();
      pending = pending.length === 0 ? data : Buffer.concat([pending, data]);
      while (pending.length >= 5) {
        const length = pending.readUInt32BE(1);
        if (pending.length < 5 + length) break;
        const message = fromBinary(WatchInvocationResponseSchema, pending.subarray(5, 5 + length));
        pending = pending.subarray(5 + length);
        if (first) {
          first = false;
          if (++attached === o.watchers) onAttached();
        }
        const event = message.event;
        if (event?.kind.case === "chunk") {
          chunks++;
          latencies.push(now - msOf(event.time));
        }
      }
    });
    stream.on("trailers", (trailers) => {
      const status = trailers["grpc-status"];
      if (status !== undefined && status !== "0") {
        reject(
          new Error(
            `watch ${index}: grpc-status ${String(status)} ${String(trailers["grpc-message"])}`,
          ),
        );
      }
    });
    stream.on("end", () => resolve(chunks));
    stream.on("error", reject);
    stream.end(request);
  });
}

const watches = Array.from({ length: o.watchers }, (_, i) => watch(i));
await allAttached;
await control.provideInput({
  invocationId: id,
  requestId,
  value: fromJson(ValueSchema, { count: o.count, intervalMs: o.intervalMs }),
});
const received = await Promise.all(watches);
for (const c of connections) c.close();
for (const session of sessions) session.close();
const short = received.filter((c) => c !== o.count).length;
if (short > 0) throw new Error(`${short} watchers did not get all ${o.count} chunks`);
const s = summarize(latencies);
report({
  watchers: o.watchers,
  samples: latencies.length,
  p50Ms: s.p50,
  p99Ms: s.p99,
  meanMs: s.mean,
});
