import { createClient, type Client } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { AgentService } from "../../gen/agent/v1/agent_pb.js";

/** The options a client process was started with (its one argument). */
export function options<T>(): T {
  const arg = process.argv[2];
  if (!arg) throw new Error("expected one JSON argument");
  return JSON.parse(arg) as T;
}

/** Prints the result as the last line, for bench/run.ts. */
export function report(result: object): void {
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

/**
 * A gRPC (h2c) client on its own HTTP/2 connection. The gateway allows a
 * bounded number of streams per connection, so many streams need several.
 */
export function grpcClient(baseUrl: string): {
  client: Client<typeof AgentService>;
  close(): void;
} {
  const sessionManager = new Http2SessionManager(baseUrl, {
    // Quiet streams must not be mistaken for a dead connection.
    idleConnectionTimeoutMs: 10 * 60_000,
  });
  const transport = createGrpcTransport({ baseUrl, sessionManager });
  return {
    client: createClient(AgentService, transport),
    close: () => sessionManager.abort(),
  };
}

export function msOf(time: Timestamp | undefined): number {
  return time ? timestampMs(time) : Number.NaN;
}

/** Exits with a message when the process runs past its bound. */
export function bound(ms: number, what: string): void {
  setTimeout(() => {
    process.stderr.write(`${what}: gave up after ${ms} ms\n`);
    process.exit(3);
  }, ms).unref();
}
