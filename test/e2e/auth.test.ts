import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { Code, ConnectError, createClient, type CallOptions } from "@connectrpc/connect";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AgentService} from "../../gen/agent/v1/agent_pb.js";
import { InvocationState } from "../../gen/agent/v1/agent_pb.js";
import {
  ServerReflection,
  type ServerReflectionRequest,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/health/v1/health_pb.js";
import { ConfigError, defaultConfig, type ApiKeyEntry, type Scope } from "../../src/config.js";
import { generateApiKey, hashApiKey, keyIdOf } from "../../src/server/api-keys.js";
import { isLoopbackHost } from "../../src/server/auth.js";
import { createGateway } from "../../src/server/gateway.js";
import { testAgents } from "../fixtures/agents.js";
import { drain, failure, value, type AgentClient } from "../helpers/calls.js";
import { BIN, run, startChildGateway, stopAll } from "../helpers/child.js";
import { PROTOCOLS, startGateway, type Protocol, type TestGateway } from "../helpers/gateway.js";

/**
 * API keys, scopes and tenants through real clients: every RPC against
 * every kind of caller, over every protocol.
 */

const NON_ADMIN: Scope[] = ["invoke", "read", "cancel", "input"];

/** Keys made as `agent-gateway keys create` makes them. */
const keys = {
  /** Tenant a, every scope but admin. */
  a: generateApiKey(),
  /** Tenant a, admin only. */
  aAdmin: generateApiKey(),
  /** Tenant b, every scope but admin. */
  b: generateApiKey(),
  /** Tenant a, every scope but the one named. */
  aWithout: Object.fromEntries(NON_ADMIN.map((s) => [s, generateApiKey()])) as Record<
    Scope,
    string
  >,
};

const apiKeys: ApiKeyEntry[] = [
  { hash: hashApiKey(keys.a), tenant: "tenant-a", scopes: NON_ADMIN, name: "a" },
  { hash: hashApiKey(keys.aAdmin), tenant: "tenant-a", scopes: ["admin"], name: "a-admin" },
  { hash: hashApiKey(keys.b), tenant: "tenant-b", scopes: NON_ADMIN, name: "b" },
  ...NON_ADMIN.map((scope) => ({
    hash: hashApiKey(keys.aWithout[scope]),
    tenant: "tenant-a",
    scopes: NON_ADMIN.filter((s) => s !== scope),
    name: `a-without-${scope}`,
  })),
];

const bearer = (key: string): CallOptions => ({ headers: { authorization: `Bearer ${key}` } });
const xApiKey = (key: string): CallOptions => ({ headers: { "x-api-key": key } });

/** What one call ended with: "OK" or the name of its code. */
type Outcome = "OK" | keyof typeof Code;

async function outcome(call: () => Promise<unknown>): Promise<Outcome> {
  try {
    await call();
    return "OK";
  } catch (error) {
    return Code[ConnectError.from(error).code] as keyof typeof Code;
  }
}

type Rpc = keyof typeof AgentService.method;

/** The scope each RPC needs, as the issue lists them. */
const SCOPE_OF: Record<Rpc, Scope> = {
  invoke: "invoke",
  startInvocation: "invoke",
  invokeStream: "invoke",
  listAgents: "read",
  getAgent: "read",
  getInvocation: "read",
  listInvocations: "read",
  watchInvocation: "read",
  cancelInvocation: "cancel",
  provideInput: "input",
};

const CASES = ["no key", "wrong key", "missing scope", "own tenant", "other tenant", "admin key"] as const;
type Case = (typeof CASES)[number];

/**
 * The expected outcome of every RPC for every caller. Another tenant's
 * invocation is NOT_FOUND, exactly like a missing one; starting, listing
 * and the agent catalogue work for any tenant, on its own invocations.
 */
const EXPECTED: Record<Rpc, Record<Case, Outcome>> = Object.fromEntries(
  (Object.keys(SCOPE_OF) as Rpc[]).map((rpc) => {
    const touchesAnInvocation = [
      "getInvocation",
      "watchInvocation",
      "cancelInvocation",
      "provideInput",
    ].includes(rpc);
    return [
      rpc,
      {
        "no key": "Unauthenticated",
        "wrong key": "Unauthenticated",
        "missing scope": "PermissionDenied",
        "own tenant": "OK",
        "other tenant": touchesAnInvocation ? "NotFound" : "OK",
        "admin key": "OK",
      },
    ];
  }),
) as Record<Rpc, Record<Case, Outcome>>;

describe("API keys, scopes and tenants", () => {
  let gw: TestGateway;
  let logLines: Record<string, unknown>[];
  /** Tenant a's client for fixtures, with its admin key. */
  let admin: AgentClient;
  /** A finished echo invocation of tenant a. */
  let echoId: string;

  beforeAll(async () => {
    logLines = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString().split("\n").filter(Boolean)) {
          logLines.push(JSON.parse(line) as Record<string, unknown>);
        }
        done();
      },
    });
    gw = await startGateway({
      agents: testAgents,
      // Not this file's subject: the matrix must not be throttled.
      config: { apiKeys, ratePerSecond: 1_000_000, rateBurst: 1_000_000 },
      logger: pino({ level: "debug" }, sink),
    });
    admin = gw.client("connect-json");
    const { invocation } = await admin.invoke(
      { agent: "echo", input: value({ hello: "a" }) },
      bearer(keys.aAdmin),
    );
    echoId = invocation!.id;
  });
  afterAll(() => gw?.close());

  /** A running invocation of tenant a, new for each call. */
  async function running(): Promise<string> {
    const { invocation } = await admin.startInvocation(
      { agent: "forever", input: value({}) },
      bearer(keys.aAdmin),
    );
    return invocation!.id;
  }

  /** An invocation of tenant a that waits for input, new for each call. */
  async function waiting(): Promise<{ invocationId: string; requestId: string }> {
    const { invocation } = await admin.invoke(
      { agent: "approval", input: value({ subject: "the test" }) },
      bearer(keys.aAdmin),
    );
    return { invocationId: invocation!.id, requestId: invocation!.pendingInputs[0]!.requestId };
  }

  /** Calls `rpc` as the caller of `case`, with valid arguments. */
  async function callAs(client: AgentClient, rpc: Rpc, as: CallOptions): Promise<Outcome> {
    const echo = { agent: "echo", input: value({ n: 1 }) };
    switch (rpc) {
      case "listAgents":
        return outcome(() => client.listAgents({}, as));
      case "getAgent":
        return outcome(() => client.getAgent({ name: "echo" }, as));
      case "invoke":
        return outcome(() => client.invoke(echo, as));
      case "startInvocation":
        return outcome(() => client.startInvocation(echo, as));
      case "invokeStream":
        return outcome(() => drain(client.invokeStream(echo, as)));
      case "watchInvocation":
        return outcome(() => drain(client.watchInvocation({ invocationId: echoId }, as)));
      case "getInvocation":
        return outcome(() => client.getInvocation({ invocationId: echoId }, as));
      case "listInvocations":
        return outcome(() => client.listInvocations({}, as));
      case "cancelInvocation": {
        const invocationId = await running();
        return outcome(() => client.cancelInvocation({ invocationId, reason: "test" }, as));
      }
      case "provideInput": {
        const target = await waiting();
        return outcome(() =>
          client.provideInput({ ...target, value: value({ approved: true }) }, as),
        );
      }
    }
  }

  function callerOf(c: Case, rpc: Rpc): CallOptions {
    switch (c) {
      case "no key":
        return {};
      case "wrong key":
        // Well-formed, but not configured.
        return bearer(generateApiKey());
      case "missing scope":
        return xApiKey(keys.aWithout[SCOPE_OF[rpc]]);
      case "own tenant":
        return bearer(keys.a);
      case "other tenant":
        return xApiKey(keys.b);
      case "admin key":
        return bearer(keys.aAdmin);
    }
  }

  it.each(PROTOCOLS)(
    "%s: every RPC x {no key, wrong key, missing scope, own tenant, other tenant, admin}",
    async (protocol: Protocol) => {
      const client = gw.client(protocol);
      const actual: Record<string, Record<string, Outcome>> = {};
      for (const rpc of Object.keys(SCOPE_OF) as Rpc[]) {
        actual[rpc] = {};
        for (const c of CASES) actual[rpc][c] = await callAs(client, rpc, callerOf(c, rpc));
      }
      expect(actual).toEqual(EXPECTED);
    },
  );

  it("an invocation belongs to the tenant of the key that started it", async () => {
    const client = gw.client("grpc");
    const { invocation: ofB } = await client.invoke(
      { agent: "echo", input: value({ from: "b" }), idempotencyKey: "same-key" },
      xApiKey(keys.b),
    );
    const { invocation: ofA } = await client.invoke(
      { agent: "echo", input: value({ from: "b" }), idempotencyKey: "same-key" },
      bearer(keys.a),
    );
    // The same idempotency key in another tenant is another invocation.
    expect(ofA!.id).not.toBe(ofB!.id);
    expect((await failure(client.getInvocation({ invocationId: ofB!.id }, bearer(keys.a)))).code)
      .toBe(Code.NotFound);
    const asB = await client.getInvocation({ invocationId: ofB!.id }, bearer(keys.b));
    expect(asB.invocation!.id).toBe(ofB!.id);
  });

  it("ListInvocations never shows another tenant's invocations", async () => {
    const client = gw.client("connect-json");
    const all = async (as: CallOptions): Promise<Set<string>> => {
      const ids = new Set<string>();
      let pageToken = "";
      do {
        const page = await client.listInvocations({ pageSize: 7, pageToken }, as);
        for (const inv of page.invocations) ids.add(inv.id);
        pageToken = page.nextPageToken;
      } while (pageToken);
      return ids;
    };
    const { invocation: ofB } = await client.startInvocation(
      { agent: "echo", input: value({ list: "b" }) },
      bearer(keys.b),
    );
    const [ofA, seenByB] = [await all(bearer(keys.a)), await all(bearer(keys.b))];
    expect(ofA.has(echoId)).toBe(true);
    expect(seenByB.has(ofB!.id)).toBe(true);
    // Many of each by now (the matrix ran): and not one in common.
    expect(ofA.size).toBeGreaterThan(10);
    expect(seenByB.size).toBeGreaterThan(2);
    expect([...ofA].filter((id) => seenByB.has(id))).toEqual([]);
    // Filtering by state or agent does not widen it either.
    const filtered = await client.listInvocations({ agent: "echo", pageSize: 500 }, bearer(keys.b));
    expect(filtered.invocations.some((inv) => ofA.has(inv.id))).toBe(false);
  });

  it("another tenant's cancel or input changes nothing", async () => {
    const client = gw.client("grpc");
    const runningId = await running();
    const target = await waiting();
    expect(
      (await failure(client.cancelInvocation({ invocationId: runningId }, bearer(keys.b)))).code,
    ).toBe(Code.NotFound);
    expect(
      (
        await failure(
          client.provideInput({ ...target, value: value({ approved: false }) }, bearer(keys.b)),
        )
      ).code,
    ).toBe(Code.NotFound);
    const get = (invocationId: string) =>
      client.getInvocation({ invocationId }, bearer(keys.a)).then((r) => r.invocation!);
    // Still running, still waiting on the same request.
    expect([InvocationState.QUEUED, InvocationState.RUNNING]).toContain(
      (await get(runningId)).state,
    );
    const stillWaiting = await get(target.invocationId);
    expect(stillWaiting.state).toBe(InvocationState.WAITING_FOR_INPUT);
    expect(stillWaiting.pendingInputs.map((p) => p.requestId)).toEqual([target.requestId]);
    await client.cancelInvocation({ invocationId: runningId }, bearer(keys.a));
  });

  it("takes the key from authorization: Bearer or x-api-key, and refuses what is not one key", async () => {
    const client = gw.client("connect-json");
    const codeOf = (headers: Record<string, string>) =>
      outcome(() => client.listAgents({}, { headers }));
    expect(await codeOf({ authorization: `Bearer ${keys.a}` })).toBe("OK");
    expect(await codeOf({ authorization: `bearer ${keys.a}` })).toBe("OK");
    expect(await codeOf({ "x-api-key": keys.a })).toBe("OK");
    // The same key both ways is one key.
    expect(await codeOf({ authorization: `Bearer ${keys.a}`, "x-api-key": keys.a })).toBe("OK");
    // Another scheme is not ours: the x-api-key counts.
    expect(await codeOf({ authorization: "Basic dXNlcjpwYXNz", "x-api-key": keys.a })).toBe("OK");
    expect(await codeOf({ authorization: "Basic dXNlcjpwYXNz" })).toBe("Unauthenticated");
    expect(await codeOf({ authorization: "Bearer" })).toBe("Unauthenticated");
    expect(await codeOf({ authorization: "Bearer " })).toBe("Unauthenticated");
    // Two different keys: which would it be? Neither.
    expect(await codeOf({ authorization: `Bearer ${keys.a}`, "x-api-key": keys.b })).toBe(
      "Unauthenticated",
    );
    // The hash is not the key.
    expect(await codeOf({ "x-api-key": hashApiKey(keys.a) })).toBe("Unauthenticated");
    expect(await codeOf({ "x-api-key": keys.a.slice(0, -1) })).toBe("Unauthenticated");
  });

  it("tells the client nothing but the code and a plain message; the details go to the log", async () => {
    const client = gw.client("connect-json");
    logLines.length = 0;
    const wrongKey = generateApiKey();
    const refusals = [
      await failure(client.getInvocation({ invocationId: echoId })),
      await failure(client.getInvocation({ invocationId: echoId }, bearer(wrongKey))),
      await failure(client.getInvocation({ invocationId: echoId }, bearer(keys.aWithout.read))),
    ];
    expect(refusals.map((e) => [Code[e.code], e.rawMessage])).toEqual([
      ["Unauthenticated", "an API key is required: send authorization: Bearer <key> or x-api-key"],
      ["Unauthenticated", "invalid API key"],
      ["PermissionDenied", "this API key may not call this method"],
    ]);
    for (const error of refusals) {
      expect(error.details).toEqual([]);
      expect([...error.metadata.keys()].filter((k) => k.includes("tenant") || k.includes("key")))
        .toEqual([]);
    }
    // The operator learns which key, tenant and scope.
    const denied = logLines.find((l) => l.msg === "refused: API key lacks the scope");
    expect(denied).toMatchObject({
      level: 40,
      procedure: "agent.v1.AgentService/GetInvocation",
      keyId: hashApiKey(keys.aWithout.read).slice("sha256:".length, "sha256:".length + 12),
      keyName: "a-without-read",
      tenant: "tenant-a",
      needed: "read",
    });
    const unknown = logLines.find((l) => l.msg === "refused: unknown API key");
    expect(unknown).toMatchObject({ level: 40, presentedKeyId: keyIdOf(wrongKey) });
    // Not a plain hash of what was sent: the log gives no guess a test.
    expect(unknown?.presentedKeyId).not.toBe(
      hashApiKey(wrongKey).slice("sha256:".length, "sha256:".length + 12),
    );
    expect(logLines.some((l) => l.msg === "refused: no API key" && l.level === 20)).toBe(true);
    // No key, right or wrong, is ever written to the log.
    const everything = JSON.stringify(logLines);
    for (const key of [wrongKey, keys.aWithout.read, keys.a]) {
      expect(everything).not.toContain(key);
    }
  });

  it("health and reflection answer without a key", async () => {
    const transport = gw.transport("grpc");
    const health = createClient(Health, transport);
    const check = await health.check({ service: "" });
    expect(check.status).toBe(HealthCheckResponse_ServingStatus.SERVING);

    const reflection = createClient(ServerReflection, transport);
    async function* ask(): AsyncIterable<Partial<ServerReflectionRequest>> {
      yield { messageRequest: { case: "listServices", value: "" } };
    }
    const names: string[] = [];
    for await (const res of reflection.serverReflectionInfo(ask() as never)) {
      if (res.messageResponse.case === "listServicesResponse") {
        names.push(...res.messageResponse.value.service.map((s) => s.name));
      }
    }
    expect(names).toContain("agent.v1.AgentService");

    const healthz = await fetch(`${gw.baseUrl}/healthz`);
    expect(healthz.status).toBe(200);
  });
});

describe("the loopback rule: no keys only on loopback", () => {
  afterAll(stopAll);

  it("knows which hosts are loopback", () => {
    const loopback = [
      "127.0.0.1",
      "127.8.9.10",
      "::1",
      "[::1]",
      "0:0:0:0:0:0:0:1",
      "::ffff:127.0.0.1",
      "localhost",
      "LOCALHOST",
    ];
    const reachable = [
      "0.0.0.0",
      "::",
      "10.0.0.1",
      "192.168.1.2",
      "128.0.0.1",
      "::ffff:10.0.0.1",
      "example.com",
      "localhost.example.com",
    ];
    for (const host of loopback) expect(isLoopbackHost(host), host).toBe(true);
    for (const host of reachable) expect(isLoopbackHost(host), host).toBe(false);
  });

  it("serves tenant default on loopback, and says so in the log", async () => {
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        done();
      },
    });
    const gw = await startGateway({ logger: pino({ level: "info" }, sink) });
    try {
      expect(lines).toContainEqual(
        expect.objectContaining({
          level: 40,
          tenant: "default",
          msg: "no API keys configured: every caller is tenant default, served on loopback only",
        }),
      );
      await expect(gw.client("grpc").listAgents({})).resolves.toBeDefined();
    } finally {
      await gw.close();
    }
  });

  it("refuses to start on another address without keys: a clear error, exit code 2", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "agent-gateway-auth-"));
    try {
      const out = await run([...BIN, "--host", "0.0.0.0", "--port", "0", "--data-dir", dataDir]);
      expect(out.code).toBe(2);
      expect(out.stderr).toMatch(
        /^agent-gateway: host 0\.0\.0\.0 is not a loopback address and no apiKeys are configured: refusing to serve without authentication/,
      );
      expect(out.stderr).toMatch(/allowUnauthenticated/);
      expect(out.stdout).not.toMatch(/listening/);
      // The same rule holds for a gateway built in-process.
      expect(() =>
        createGateway({ config: { ...defaultConfig(), host: "0.0.0.0", dataDir } }),
      ).toThrow(ConfigError);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it("starts on another address when allowUnauthenticated says so, and warns", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "agent-gateway-auth-"));
    try {
      const child = await startChildGateway(
        [...BIN, "--host", "0.0.0.0", "--port", "0", "--data-dir", dataDir],
        { ALLOW_UNAUTHENTICATED: "true" },
      );
      expect(child.log).toContainEqual(
        expect.objectContaining({ level: 40, host: "0.0.0.0", tenant: "default" }),
      );
      const warned = child.log.find((l) => l.level === 40 && l.host === "0.0.0.0");
      expect(String(warned?.msg)).toMatch(/allowUnauthenticated/);
      const res = await fetch(`${child.baseUrl}/agent.v1.AgentService/ListAgents`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{}",
      });
      expect(res.status).toBe(200);
      await child.stop();
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it("starts on another address with keys, and wants them", async () => {
    const key = generateApiKey();
    const gw = await startGateway({
      config: {
        host: "0.0.0.0",
        apiKeys: [{ hash: hashApiKey(key), tenant: "t", scopes: ["read"] }],
      },
    });
    try {
      const client = gw.client("connect-json");
      expect((await failure(client.listAgents({}))).code).toBe(Code.Unauthenticated);
      await expect(client.listAgents({}, bearer(key))).resolves.toBeDefined();
    } finally {
      await gw.close();
    }
  });
});
