import { it } from "vitest";
import * as http2 from "node:http2";
import { create, toBinary } from "@bufbuild/protobuf";
import { InvokeRequestSchema } from "../../gen/agent/v1/agent_pb.js";
import { startGateway } from "../helpers/gateway.js";
import { testAgents } from "../fixtures/agents.js";

it("explore", async () => {
  const gw = await startGateway({ agents: testAgents });
  try {
    const r = await fetch(gw.baseUrl + "/agent.v1.AgentService/Invoke", { method: "POST", headers: { "content-type": "application/json", "connect-timeout-ms": "200" }, body: JSON.stringify({ agent: "forever", input: {}, onDisconnect: "ON_DISCONNECT_CANCEL" }) });
    console.log(r.status, [...r.headers], await r.text());
    const msg = Buffer.from(toBinary(InvokeRequestSchema, create(InvokeRequestSchema, { agent: "forever" })));
    const env = Buffer.alloc(5); env.writeUInt32BE(msg.length, 1);
    await new Promise<void>((resolve) => {
      const s = http2.connect(gw.baseUrl);
      const req = s.request({ ":method": "POST", ":path": "/agent.v1.AgentService/Invoke", "content-type": "application/grpc", te: "trailers", "grpc-timeout": "200m" });
      req.on("response", (h) => console.log("h", h));
      req.on("trailers", (t) => console.log("t", t));
      req.on("data", () => {});
      req.on("end", () => { s.close(); resolve(); });
      req.end(Buffer.concat([env, msg]));
    });
    await new Promise((r) => setTimeout(r, 200));
    const { invocations } = await gw.client("grpc").listInvocations({ agent: "forever" });
    console.log(invocations.map((i) => [i.id, i.state, i.error]));
  } finally { await gw.close(); }
});
