import { createInterface } from "node:readline";
import { fromJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { bound, grpcClient, options } from "./common.js";

/**
 * Holds many quiet WatchInvocation streams on one invocation that waits
 * for input, for bench/run.ts to read the server's memory:
 * opens `warm` streams and prints {"phase":"warm"}; on the line "more"
 * opens the rest up to `streams` and prints {"phase":"ready"}; on "stop"
 * (or end of input) closes everything and exits.
 */
const o = options<{
  url: string;
  agent: string;
  streams: number;
  warm: number;
  perConnection: number;
  timeoutMs: number;
}>();
bound(o.timeoutMs, "quiet");

const connections = Array.from({ length: Math.ceil(o.streams / o.perConnection) + 1 }, () =>
  grpcClient(o.url),
);
const started = await connections[0]!.client.startInvocation({
  agent: o.agent,
  input: fromJson(ValueSchema, {}),
});
const id = started.invocation!.id;
const abort = new AbortController();
let failures = 0;

function open(index: number): Promise<void> {
  const { client } = connections[1 + Math.floor(index / o.perConnection)]!;
  return new Promise((attached) => {
    void (async () => {
      try {
        for await (const _ of client.watchInvocation(
          { invocationId: id, afterSequence: 0n },
          { signal: abort.signal },
        )) {
          attached();
        }
      } catch (error) {
        if (!abort.signal.aborted) {
          failures++;
          process.stderr.write(`stream ${index}: ${String(error)}\n`);
        }
      }
      attached();
    })();
  });
}

async function openRange(from: number, to: number): Promise<void> {
  // In batches, so that a burst of thousands does not trip anything.
  for (let i = from; i < to; i += 500) {
    const batch = [];
    for (let j = i; j < Math.min(to, i + 500); j++) batch.push(open(j));
    await Promise.all(batch);
  }
}

const lines = createInterface({ input: process.stdin });
const commands = lines[Symbol.asyncIterator]();
await openRange(0, o.warm);
process.stdout.write(`${JSON.stringify({ phase: "warm", failures })}\n`);
await commands.next();
await openRange(o.warm, o.streams);
process.stdout.write(`${JSON.stringify({ phase: "ready", failures })}\n`);
await commands.next();
abort.abort();
for (const c of connections) c.close();
process.exit(failures > 0 ? 1 : 0);
