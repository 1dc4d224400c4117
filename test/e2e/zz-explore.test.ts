import { it } from "vitest";
import { ConnectError } from "@connectrpc/connect";
import { startGateway, PROTOCOLS } from "../helpers/gateway.js";
import { testAgents } from "../fixtures/agents.js";

it("explore", async () => {
  const gw = await startGateway({ agents: testAgents });
  try {
    for (const p of PROTOCOLS) {
      const c = gw.client(p);
      let hdr: string | null = null;
      try {
        await c.invoke({ agent: "forever", input: { kind: { case: "structValue", value: { fields: {} } } } }, { timeoutMs: 200, onHeader: (h) => (hdr = h.get("agent-invocation-id")) });
      } catch (e) {
        const ce = ConnectError.from(e);
        console.log(p, ce.code, ce.message, "hdr", hdr, "meta", ce.metadata.get("agent-invocation-id"));
      }
    }
    const { invocations } = await gw.client("grpc").listInvocations({ agent: "forever" });
    console.log(invocations.map((i) => [i.id, i.state]));
  } finally { await gw.close(); }
});
