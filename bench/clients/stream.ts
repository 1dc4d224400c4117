import { fromJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { bound, grpcClient, options, report } from "./common.js";

/**
 * One InvokeStream over gRPC, read to its end: messages per second from
 * the call to the last message. Checks that every chunk arrived.
 */
const o = options<{
  url: string;
  agent: string;
  input: object;
  chunks: number;
  timeoutMs: number;
}>();
bound(o.timeoutMs, "stream");
const { client, close } = grpcClient(o.url);
const start = performance.now();
let messages = 0;
let chunks = 0;
let completed = false;
for await (const response of client.invokeStream({
  agent: o.agent,
  input: fromJson(ValueSchema, o.input as never),
})) {
  messages++;
  const kind = response.event?.kind.case;
  if (kind === "chunk") chunks++;
  if (kind === "completed") completed = true;
}
const seconds = (performance.now() - start) / 1000;
close();
if (!completed || chunks !== o.chunks) {
  throw new Error(
    `expected ${o.chunks} chunks and completed, got ${chunks} (completed: ${completed})`,
  );
}
report({ messages, chunks, seconds, messagesPerSecond: messages / seconds });
