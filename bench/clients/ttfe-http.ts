import * as http from "node:http";
import { summarize } from "../lib/stats.js";
import { bound, options, report } from "./common.js";

/**
 * Time to first event over HTTP/1.1 keep-alive: `n` streaming POSTs one
 * after another, each read to its end; the time from sending the request
 * to the first bytes of the response body (the first event: an envelope
 * of a Connect stream, or an SSE event).
 */
const o = options<{
  url: string;
  body: string;
  contentType: string;
  /** Wrap the body in a Connect envelope (Connect server streams). */
  envelope: boolean;
  n: number;
  timeoutMs: number;
}>();
bound(o.timeoutMs, "ttfe-http");
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
let payload = Buffer.from(o.body);
if (o.envelope) {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(payload.length, 1);
  payload = Buffer.concat([head, payload]);
}

function once(): Promise<number> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    let first = Number.NaN;
    const req = http.request(
      o.url,
      {
        method: "POST",
        agent,
        headers: { "content-type": o.contentType, "content-length": payload.length },
      },
      (res) => {
        if (res.statusCode !== 200) {
          reject(new Error(`HTTP ${res.statusCode}`));
          res.resume();
          return;
        }
        res.on("data", () => {
          if (Number.isNaN(first)) first = performance.now() - start;
        });
        res.on("end", () => resolve(first));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(payload);
  });
}

const latencies: number[] = [];
// Untimed calls first: they open the connection and warm both sides.
const warm = Math.min(3, Math.ceil(o.n / 4));
for (let i = -warm; i < o.n; i++) {
  const first = await once();
  if (i >= 0) latencies.push(first);
}
agent.destroy();
const s = summarize(latencies);
report({ n: latencies.length, p50Ms: s.p50, p99Ms: s.p99, meanMs: s.mean });
