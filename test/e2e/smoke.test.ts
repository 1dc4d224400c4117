import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InvocationState } from "../../gen/agent/v1/agent_pb.js";
import { testAgents } from "../fixtures/agents.js";
import { PROTOCOLS, startGateway, type TestGateway } from "../helpers/gateway.js";

let gw: TestGateway;
beforeAll(async () => {
  gw = await startGateway({ agents: testAgents });
});
afterAll(async () => {
  await gw?.close();
});

describe.each(PROTOCOLS)("smoke over %s", (protocol) => {
  it("invokes echo", async () => {
    const client = gw.client(protocol);
    const { invocation } = await client.invoke({
      agent: "echo",
      input: { kind: { case: "stringValue", value: "hi" } },
    });
    expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
  });
});
