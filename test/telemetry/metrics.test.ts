import { setTimeout as sleep } from "node:timers/promises";
import { Code, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AgentService} from "../../gen/agent/v1/agent_pb.js";
import { InvocationState } from "../../gen/agent/v1/agent_pb.js";
import { generateApiKey, hashApiKey } from "../../src/server/api-keys.js";
import { testAgents } from "../fixtures/agents.js";
import { failure, value } from "../helpers/calls.js";
import { startGateway, type TestGateway } from "../helpers/gateway.js";
import { parseMetrics, valueOf, type Sample } from "../helpers/prometheus.js";

/**
 * `/metrics` as Prometheus scrapes it, after a known set of calls: every
 * series the operator dashboards need, with the labels and counts those
 * calls must have produced.
 */

const KEY = generateApiKey();
const auth = { headers: { authorization: `Bearer ${KEY}` } };

let gw: TestGateway;
beforeAll(async () => {
  gw = await startGateway({
    agents: testAgents,
    config: {
      apiKeys: [
        { hash: hashApiKey(KEY), tenant: "acme", scopes: ["invoke", "read", "cancel", "input"] },
      ],
    },
  });
});
afterAll(async () => {
  await gw?.close();
});

async function scrape(target: TestGateway = gw): Promise<Sample[]> {
  const res = await fetch(`${target.baseUrl}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
  return parseMetrics(await res.text());
}

/** Scrapes until `check` holds; a bound on waiting, not a timing. */
async function scrapeUntil(check: (samples: Sample[]) => boolean): Promise<Sample[]> {
  for (let i = 0; i < 200; i++) {
    const samples = await scrape();
    if (check(samples)) return samples;
    await sleep(25);
  }
  throw new Error("the metrics never showed what was expected");
}

async function waitFor(
  client: Client<typeof AgentService>,
  invocationId: string,
  state: InvocationState,
): Promise<void> {
  for (let i = 0; i < 400; i++) {
    const { invocation } = await client.getInvocation({ invocationId }, auth);
    if (invocation?.state === state) return;
    await sleep(25);
  }
  throw new Error(`invocation ${invocationId} never reached ${InvocationState[state]}`);
}

const rpcCount = (samples: Sample[], procedure: string, protocol: string, code: string) =>
  valueOf(samples, "agent_gateway_rpc_duration_seconds_count", {
    procedure: `agent.v1.AgentService/${procedure}`,
    protocol,
    code,
  });

describe("/metrics", () => {
  it("answers without a key, in the Prometheus text format, GET and HEAD only", async () => {
    const samples = await scrape();
    expect(samples.length).toBeGreaterThan(0);
    const head = await fetch(`${gw.baseUrl}/metrics`, { method: "HEAD" });
    expect(head.status).toBe(200);
    const post = await fetch(`${gw.baseUrl}/metrics`, { method: "POST" });
    expect(post.status).toBe(405);
    // An RPC on the same port without a key is refused.
    const refused = await failure(gw.client("grpc").getAgent({ name: "echo" }));
    expect(refused.code).toBe(Code.Unauthenticated);
  });

  it("counts RPCs, invocations, nodes, streams and store operations", async () => {
    const json = gw.client("connect-json");
    const grpc = gw.client("grpc");
    const web = gw.client("grpc-web");
    const binary = gw.client("connect-binary");

    const refused = await failure(grpc.listAgents({}));
    expect(refused.code).toBe(Code.Unauthenticated);
    for (let i = 0; i < 2; i++) await json.invoke({ agent: "echo", input: value({ text: "a" }) }, auth);
    await grpc.invoke({ agent: "echo", input: value({ text: "b" }) }, auth);
    await grpc.invoke({ agent: "flaky", input: value({ failures: 1 }) }, auth);
    const missing = await failure(web.getInvocation({ invocationId: "nope" }, auth));
    expect(missing.code).toBe(Code.NotFound);
    const waiting = (await binary.startInvocation({ agent: "approval", input: value({}) }, auth))
      .invocation!.id;
    const running = (await binary.startInvocation({ agent: "forever", input: value({}) }, auth))
      .invocation!.id;
    await waitFor(binary, waiting, InvocationState.WAITING_FOR_INPUT);
    await waitFor(binary, running, InvocationState.RUNNING);

    // A progress stream held open, then dropped by its client.
    const drop = new AbortController();
    const stream = grpc.watchInvocation({ invocationId: waiting }, { ...auth, signal: drop.signal });
    const reading = (async () => {
      for await (const _ of stream) {
        // the started and input_requested events, then nothing
      }
    })().catch(() => undefined);
    const open = await scrapeUntil(
      (s) =>
        valueOf(s, "agent_gateway_streams_open", {
          procedure: "agent.v1.AgentService/WatchInvocation",
        }) === 1,
    );

    expect(valueOf(open, "agent_gateway_invocations_running", { agent: "forever" })).toBe(1);
    expect(valueOf(open, "agent_gateway_invocations_waiting_for_input", { agent: "approval" })).toBe(1);
    expect(valueOf(open, "agent_gateway_invocations_running", { agent: "approval" })).toBe(0);

    drop.abort();
    await reading;
    await binary.cancelInvocation({ invocationId: running, reason: "enough" }, auth);
    const after = await scrapeUntil(
      (s) =>
        valueOf(s, "agent_gateway_streams_open", {
          procedure: "agent.v1.AgentService/WatchInvocation",
        }) === 0,
    );

    // RPCs by procedure, protocol and code.
    expect(rpcCount(after, "Invoke", "connect", "ok")).toBe(2);
    expect(rpcCount(after, "Invoke", "grpc", "ok")).toBe(2);
    expect(rpcCount(after, "GetInvocation", "grpc_web", "not_found")).toBe(1);
    expect(rpcCount(after, "StartInvocation", "connect", "ok")).toBe(2);
    expect(rpcCount(after, "WatchInvocation", "grpc", "canceled")).toBe(1);
    expect(rpcCount(after, "CancelInvocation", "connect", "ok")).toBe(1);
    // Counted though authentication refused it.
    expect(rpcCount(after, "ListAgents", "grpc", "unauthenticated")).toBe(1);

    // Invocations started and finished, by agent and final state.
    const started = (agent: string) =>
      valueOf(after, "agent_gateway_invocations_started_total", { agent });
    const finished = (agent: string, state: string) =>
      valueOf(after, "agent_gateway_invocations_finished_total", { agent, state });
    expect([started("echo"), started("flaky"), started("approval"), started("forever")]).toEqual([
      3, 1, 1, 1,
    ]);
    expect(finished("echo", "succeeded")).toBe(3);
    expect(finished("flaky", "succeeded")).toBe(1);
    expect(finished("forever", "cancelled")).toBe(1);
    expect(finished("approval", "succeeded")).toBeUndefined();
    expect(valueOf(after, "agent_gateway_invocations_running", { agent: "forever" })).toBe(0);
    expect(valueOf(after, "agent_gateway_invocations_waiting_for_input", { agent: "approval" })).toBe(1);

    // Node attempts by agent, node and outcome: flaky failed once.
    const nodes = (agent: string, node: string, outcome: string) =>
      valueOf(after, "agent_gateway_node_duration_seconds_count", { agent, node, outcome });
    expect(nodes("echo", "reply", "ok")).toBe(3);
    expect(nodes("flaky", "work", "error")).toBe(1);
    expect(nodes("flaky", "work", "ok")).toBe(1);
    expect(nodes("forever", "wait", "cancelled")).toBe(1);

    // Every start is one createInvocation; writes happened and took time.
    const store = (operation: string) =>
      valueOf(after, "agent_gateway_store_operation_duration_seconds_count", {
        operation,
        outcome: "ok",
      });
    expect(store("createInvocation")).toBe(6);
    expect(store("write")).toBeGreaterThan(0);
    expect(store("listUnfinished")).toBe(1);

    // Process memory and event loop delay.
    expect(valueOf(after, "process_resident_memory_bytes")).toBeGreaterThan(0);
    expect(valueOf(after, "nodejs_heap_size_used_bytes")).toBeGreaterThan(0);
    expect(valueOf(after, "nodejs_eventloop_lag_seconds")).toBeGreaterThanOrEqual(0);
    expect(valueOf(after, "nodejs_eventloop_lag_p99_seconds")).toBeGreaterThanOrEqual(0);
  });
});

describe("rejections by a limit", () => {
  let limited: TestGateway;
  beforeAll(async () => {
    limited = await startGateway({
      agents: testAgents,
      // Four calls' worth of tokens that do not come back during the test,
      // and one running invocation per tenant.
      config: { rateBurst: 4, ratePerSecond: 0.01, maxRunningPerTenant: 1 },
    });
  });
  afterAll(async () => {
    await limited?.close();
  });

  it("are counted by limit and tenant", async () => {
    const client = limited.client("connect-json");
    await client.startInvocation({ agent: "forever", input: value({}) });
    const busy = await failure(client.startInvocation({ agent: "forever", input: value({}) }));
    expect(busy.code).toBe(Code.ResourceExhausted);
    await client.listAgents({});
    await client.listAgents({});
    const throttled = await failure(client.listAgents({}));
    expect(throttled.code).toBe(Code.ResourceExhausted);

    const samples = await scrape(limited);
    const rejected = (limit: string) =>
      valueOf(samples, "agent_gateway_rejected_total", { limit, tenant: "default" });
    expect([rejected("rate"), rejected("tenant_running")]).toEqual([1, 1]);
    expect(rejected("total_running")).toBeUndefined();
    expect(rpcCount(samples, "StartInvocation", "connect", "resource_exhausted")).toBe(1);
    expect(rpcCount(samples, "ListAgents", "connect", "resource_exhausted")).toBe(1);
    expect(rpcCount(samples, "ListAgents", "connect", "ok")).toBe(2);
  });
});

describe("two gateways in one process", () => {
  it("keep their own metrics", async () => {
    const other = await startGateway();
    const echoes = (samples: Sample[]) =>
      valueOf(samples, "agent_gateway_invocations_started_total", { agent: "echo" }) ?? 0;
    try {
      const before = echoes(await scrape(gw));
      await other.client("grpc").invoke({ agent: "echo", input: value({ text: "x" }) });
      expect(echoes(await scrape(other))).toBe(1);
      expect(echoes(await scrape(gw))).toBe(before);
    } finally {
      await other.close();
    }
  });
});
