import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError, type CallOptions } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InvocationState } from "../../gen/agent/v1/agent_pb.js";
import { RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import type { ApiKeyEntry } from "../../src/config.js";
import { generateApiKey, hashApiKey } from "../../src/server/api-keys.js";
import { testAgents } from "../fixtures/agents.js";
import { drain, failure, value } from "../helpers/calls.js";
import { PROTOCOLS, startGateway, type Protocol, type TestGateway } from "../helpers/gateway.js";

/**
 * Token buckets per key and caps on running invocations, through real
 * clients: what is refused, and what the refusal tells the client.
 */

const bearer = (key: string): CallOptions => ({ headers: { authorization: `Bearer ${key}` } });

/** The retry delay of a RetryInfo detail, in ms. */
function retryDelayMs(error: ConnectError): number {
  const [info] = error.findDetails(RetryInfoSchema);
  expect(info?.retryDelay).toBeDefined();
  return Number(info!.retryDelay!.seconds) * 1000 + info!.retryDelay!.nanos / 1e6;
}

/** `"name";a=1;b=2` as {name, a: 1, b: 2}: one Structured Fields item. */
function sfItem(field: string | null): Record<string, string | number> {
  expect(field).not.toBeNull();
  const [name, ...params] = field!.split(";");
  const item: Record<string, string | number> = { name: JSON.parse(name!) as string };
  for (const param of params) {
    const [k, v] = param.split("=");
    item[k!] = Number(v);
  }
  return item;
}

/** One Connect unary call with fetch, to see the HTTP status and headers. */
function connectJson(gw: TestGateway, method: string, key?: string, body: unknown = {}) {
  return fetch(`${gw.baseUrl}/agent.v1.AgentService/${method}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(key ? { authorization: `Bearer ${key}` } : {}),
    },
    body: JSON.stringify(body),
  });
}

describe("rate limits per key", () => {
  let gw: TestGateway;
  /**
   * Per protocol: a key of burst 5 that gains a token only every 1000 s,
   * so that nothing refills while a test runs.
   */
  const burstKeys = Object.fromEntries(PROTOCOLS.map((p) => [p, generateApiKey()])) as Record<
    Protocol,
    string
  >;
  /** Burst 2, 2 tokens a second: a refused call may retry within a second. */
  const fastKey = generateApiKey();
  /** Another key of the same tenant as fastKey. */
  const neighbourKey = generateApiKey();
  /** No own rate: the configured default (burst 3, a token every 1000 s). */
  const defaultKey = generateApiKey();
  const apiKeys: ApiKeyEntry[] = [
    ...PROTOCOLS.map((p) => ({
      hash: hashApiKey(burstKeys[p]),
      tenant: `tenant-${p}`,
      scopes: ["admin" as const],
      ratePerSecond: 0.001,
      burst: 5,
    })),
    { hash: hashApiKey(fastKey), tenant: "t", scopes: ["read"], ratePerSecond: 2, burst: 2 },
    { hash: hashApiKey(neighbourKey), tenant: "t", scopes: ["read"], ratePerSecond: 2, burst: 2 },
    { hash: hashApiKey(defaultKey), tenant: "d", scopes: ["read"] },
  ];

  beforeAll(async () => {
    gw = await startGateway({
      config: { apiKeys, ratePerSecond: 0.001, rateBurst: 3 },
    });
  });
  afterAll(() => gw?.close());

  it.each(PROTOCOLS)(
    "%s: a burst of 12 calls at once is cut at the bucket's 5",
    async (protocol) => {
      const client = gw.client(protocol);
      const key = burstKeys[protocol];
      const outcomes = await Promise.all(
        Array.from({ length: 12 }, (_, i) =>
          (i % 2 === 0
            ? client.listAgents({}, bearer(key))
            : drain(client.watchInvocation({ invocationId: "none" }, bearer(key)))
          ).then(
            () => "ok",
            (error: unknown) => Code[ConnectError.from(error).code],
          ),
        ),
      );
      // The watches that got a token end NOT_FOUND (there is no such
      // invocation): what matters is that they were let through.
      const passed = outcomes.filter((o) => o !== "ResourceExhausted");
      expect(passed).toHaveLength(5);
      expect(outcomes.filter((o) => o === "ResourceExhausted")).toHaveLength(7);
      expect(passed.filter((o) => o !== "ok" && o !== "NotFound")).toEqual([]);
      // Every refusal says when to retry: the next token is ~1000 s away.
      const refusal = await failure(client.listAgents({}, bearer(key)));
      expect(refusal.code).toBe(Code.ResourceExhausted);
      const delay = retryDelayMs(refusal);
      expect(delay).toBeGreaterThan(990_000);
      expect(delay).toBeLessThanOrEqual(1_000_000);
      expect(refusal.metadata.get("retry-after")).toBe(String(Math.ceil(delay / 1000)));
    },
  );

  it("Connect answers a refusal with HTTP 429, Retry-After, RetryInfo and the RateLimit fields", async () => {
    // Two tokens: both calls pass and say what is left.
    const first = await connectJson(gw, "ListAgents", fastKey);
    expect(first.status).toBe(200);
    expect(sfItem(first.headers.get("ratelimit-policy"))).toEqual({ name: "key", q: 2, w: 1 });
    const left = sfItem(first.headers.get("ratelimit"));
    expect(left).toMatchObject({ name: "key", r: 1 });
    await connectJson(gw, "ListAgents", fastKey);

    const refused = await connectJson(gw, "ListAgents", fastKey);
    expect(refused.status).toBe(429);
    const body = (await refused.json()) as {
      code: string;
      message: string;
      details: { type: string; value: string }[];
    };
    expect(body.code).toBe("resource_exhausted");
    expect(body.details.map((d) => d.type)).toEqual(["google.rpc.RetryInfo"]);
    // At 2 tokens a second the next one is at most half a second away:
    // whole seconds, rounded up.
    expect(refused.headers.get("retry-after")).toBe("1");
    expect(sfItem(refused.headers.get("ratelimit-policy"))).toEqual({ name: "key", q: 2, w: 1 });
    // Nothing left, and within `t` (the Retry-After) no more than that.
    expect(sfItem(refused.headers.get("ratelimit"))).toEqual({ name: "key", r: 0, t: 1 });
  });

  it("the delay a refusal gives is enough, and another key is not throttled meanwhile", async () => {
    const client = gw.client("grpc");
    let refusal: ConnectError | undefined;
    for (let i = 0; i < 5 && refusal === undefined; i++) {
      await client.listAgents({}, bearer(fastKey)).catch((error: unknown) => {
        refusal = ConnectError.from(error);
      });
    }
    expect(refusal?.code).toBe(Code.ResourceExhausted);
    const delay = retryDelayMs(refusal!);
    expect(delay).toBeGreaterThan(0);
    expect(delay).toBeLessThanOrEqual(500);
    expect(refusal!.metadata.get("retry-after")).toBe("1");

    // Another key of the same tenant has its own bucket.
    await expect(client.listAgents({}, bearer(neighbourKey))).resolves.toBeDefined();
    // Waiting as told is enough.
    await sleep(delay + 20);
    await expect(client.listAgents({}, bearer(fastKey))).resolves.toBeDefined();
  });

  it("a key without its own rate gets the configured default", async () => {
    const outcomes: number[] = [];
    for (let i = 0; i < 5; i++) outcomes.push((await connectJson(gw, "ListAgents", defaultKey)).status);
    expect(outcomes).toEqual([200, 200, 200, 429, 429]);
    const last = await connectJson(gw, "ListAgents", defaultKey);
    expect(sfItem(last.headers.get("ratelimit-policy"))).toEqual({
      name: "default",
      q: 3,
      w: 3000,
    });
  });

  it("counts every refusal in agent_gateway_rejected_total by tenant", async () => {
    const scrape = await (await fetch(`${gw.baseUrl}/metrics`)).text();
    const count = (tenant: string) =>
      Number(
        new RegExp(`^agent_gateway_rejected_total\\{[^}]*tenant="${tenant}"[^}]*\\} (\\d+)`, "m")
          .exec(scrape)?.[1],
      );
    // 7 of the burst and the one that asked for the delay, per protocol.
    for (const p of PROTOCOLS) expect(count(`tenant-${p}`)).toBe(8);
    // Two of the five and the one that read the policy.
    expect(count("d")).toBe(3);
    expect(scrape).toMatch(/agent_gateway_rejected_total\{[^}]*limit="rate"/);
  });
});

describe("rate limits without keys", () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ config: { ratePerSecond: 0.001, rateBurst: 4 } });
  });
  afterAll(() => gw?.close());

  it("tenant default has one bucket; health needs no token", async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await connectJson(gw, "ListAgents")).status);
    expect(statuses).toEqual([200, 200, 200, 200, 429, 429]);
    // Every client of tenant default shares it.
    const refusal = await failure(gw.client("grpc").listAgents({}));
    expect(refusal.code).toBe(Code.ResourceExhausted);
    expect((await fetch(`${gw.baseUrl}/healthz`)).status).toBe(200);
  });
});

describe("caps on running invocations", () => {
  let gw: TestGateway;
  const keyOf = Object.fromEntries(
    ["a", "b", "c", "race"].map((t) => [t, generateApiKey()]),
  ) as Record<"a" | "b" | "c" | "race", string>;

  beforeAll(async () => {
    gw = await startGateway({
      agents: testAgents,
      config: {
        apiKeys: Object.entries(keyOf).map(([tenant, key]) => ({
          hash: hashApiKey(key),
          tenant,
          scopes: ["admin" as const],
        })),
        ratePerSecond: 1_000_000,
        rateBurst: 1_000_000,
        maxRunningPerTenant: 2,
        maxRunningInvocations: 3,
      },
    });
  });
  afterAll(() => gw?.close());

  const forever = { agent: "forever", input: value({}) };

  it("refuses a tenant past its cap and the gateway past its total, with a retry delay", async () => {
    const client = gw.client("grpc");
    const a1 = await client.startInvocation(forever, bearer(keyOf.a));
    await client.startInvocation(forever, bearer(keyOf.a));

    // Tenant a runs 2, its cap: every way to start is refused.
    const refusals = [
      await failure(client.startInvocation(forever, bearer(keyOf.a))),
      await failure(client.invoke(forever, bearer(keyOf.a))),
      await failure(drain(client.invokeStream(forever, bearer(keyOf.a)))),
    ];
    for (const refusal of refusals) {
      expect(refusal.code).toBe(Code.ResourceExhausted);
      expect(refusal.rawMessage).toMatch(/this tenant already runs 2 invocations/);
      expect(retryDelayMs(refusal)).toBe(1000);
      expect(refusal.metadata.get("retry-after")).toBe("1");
    }

    // Tenant b may start one: that makes 3, the gateway's cap.
    await client.startInvocation(forever, bearer(keyOf.b));
    const full = await failure(client.startInvocation(forever, bearer(keyOf.c)));
    expect(full.code).toBe(Code.ResourceExhausted);
    expect(full.rawMessage).toMatch(/the gateway runs as many invocations as it may/);

    // Over Connect it is an HTTP 429 with Retry-After.
    const http = await connectJson(gw, "StartInvocation", keyOf.c, { agent: "forever", input: {} });
    expect(http.status).toBe(429);
    expect(http.headers.get("retry-after")).toBe("1");
    // The token bucket did not refuse it: its fields would contradict the 429.
    expect(http.headers.get("ratelimit")).toBeNull();

    // Reading is not starting: it goes on.
    await expect(client.listInvocations({}, bearer(keyOf.a))).resolves.toBeDefined();

    // One ends: its place is free again, for tenant a as for c.
    await client.cancelInvocation({ invocationId: a1.invocation!.id }, bearer(keyOf.a));
    await expect(client.startInvocation(forever, bearer(keyOf.c))).resolves.toBeDefined();
    const scrape = await (await fetch(`${gw.baseUrl}/metrics`)).text();
    expect(scrape).toMatch(/agent_gateway_rejected_total\{limit="tenant_running",tenant="a"\} 3/);
    expect(scrape).toMatch(/agent_gateway_rejected_total\{limit="total_running",tenant="c"\} 2/);

    // Leave nothing running for the next test.
    for (const key of [keyOf.a, keyOf.b, keyOf.c]) {
      const { invocations } = await client.listInvocations({}, bearer(key));
      for (const inv of invocations) {
        await client.cancelInvocation({ invocationId: inv.id }, bearer(key));
      }
    }
  });

  it("lets a retry with the same idempotency key through at the cap, with its invocation", async () => {
    const client = gw.client("grpc");
    const keyed = (key: string) => ({ ...forever, idempotencyKey: key });
    const first = await client.startInvocation(keyed("retry-1"), bearer(keyOf.a));
    await client.startInvocation(forever, bearer(keyOf.a));
    // Tenant a runs 2, its cap: a new start is refused, a retry is not.
    const again = await client.startInvocation(keyed("retry-1"), bearer(keyOf.a));
    expect(again.invocation?.id).toBe(first.invocation?.id);
    const refused = await failure(client.startInvocation(keyed("retry-2"), bearer(keyOf.a)));
    expect(refused.code).toBe(Code.ResourceExhausted);

    const { invocations } = await client.listInvocations(
      { states: [InvocationState.RUNNING] },
      bearer(keyOf.a),
    );
    expect(invocations.map((i) => i.id)).toContain(first.invocation?.id);
    expect(invocations).toHaveLength(2);
    for (const inv of invocations) {
      await client.cancelInvocation({ invocationId: inv.id }, bearer(keyOf.a));
    }
  });

  it("holds under concurrency: 20 starts at once, exactly the cap of them run", async () => {
    const client = gw.client("grpc");
    const outcomes = await Promise.all(
      Array.from({ length: 20 }, () =>
        client.startInvocation(forever, bearer(keyOf.race)).then(
          () => "started",
          (error: unknown) => Code[ConnectError.from(error).code],
        ),
      ),
    );
    expect(outcomes.filter((o) => o === "started")).toHaveLength(2);
    expect(outcomes.filter((o) => o === "ResourceExhausted")).toHaveLength(18);
    const { invocations } = await client.listInvocations({}, bearer(keyOf.race));
    expect(invocations).toHaveLength(2);
  });
});
