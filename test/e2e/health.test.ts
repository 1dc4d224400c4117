import * as grpc from "@grpc/grpc-js";
import { Code, createClient, createRouterTransport } from "@connectrpc/connect";
import { service as healthDefinition } from "grpc-health-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "../../gen/health/v1/health_pb.js";
import {
  ServerReflection,
  type ServerReflectionResponse,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { generateApiKey, hashApiKey } from "../../src/server/api-keys.js";
import {
  HEALTH_SERVICE_NAME,
  WATCH_INTERVAL_MS,
  createHealthService,
} from "../../src/server/health.js";
import { Lifecycle } from "../../src/server/lifecycle.js";
import type { Store } from "../../src/store/store.js";
import { createSqliteStore } from "../../src/store/sqlite/sqlite-store.js";
import { failure } from "../helpers/calls.js";
import { PROTOCOLS, startGateway, type TestGateway } from "../helpers/gateway.js";

/**
 * grpc.health.v1 and the Kubernetes probes of a serving gateway, through
 * connect-node (every protocol), a client that shares no code with ours
 * (@grpc/grpc-js with the grpc-health-check package's own service
 * definition), and plain fetch. How they change across a shutdown is in
 * shutdown.test.ts.
 */

/** A bound on waiting for a call, never an assertion. */
const DEADLINE_MS = 20_000;

let gw: TestGateway;

beforeAll(async () => {
  gw = await startGateway();
});

afterAll(async () => {
  await gw?.close();
});

describe("grpc.health.v1.Health through connect-node", () => {
  it.each(PROTOCOLS)("Check over %s: SERVING for the server and for AgentService", async (protocol) => {
    const health = createClient(Health, gw.transport(protocol));
    for (const service of ["", "agent.v1.AgentService"]) {
      const res = await health.check({ service }, { timeoutMs: DEADLINE_MS });
      expect(res.status, service).toBe(ServingStatus.SERVING);
    }
  });

  it.each(PROTOCOLS)("Check over %s of an unknown service is NOT_FOUND", async (protocol) => {
    const health = createClient(Health, gw.transport(protocol));
    const error = await failure(health.check({ service: "no.such.Service" }));
    expect(error.code).toBe(Code.NotFound);
  });

  it("Watch sends SERVING at once for a known service", async () => {
    const health = createClient(Health, gw.transport("grpc"));
    const stop = new AbortController();
    const stream = health.watch({ service: "agent.v1.AgentService" }, { signal: stop.signal });
    const first = await stream[Symbol.asyncIterator]().next();
    stop.abort();
    expect(first.done).toBe(false);
    expect(first.value?.status).toBe(ServingStatus.SERVING);
  });

  it("Watch of an unknown service sends SERVICE_UNKNOWN and keeps the stream open", async () => {
    const health = createClient(Health, gw.transport("grpc"));
    const stop = new AbortController();
    const it = health.watch({ service: "no.such.Service" }, { signal: stop.signal })[
      Symbol.asyncIterator
    ]();
    const first = await it.next();
    expect(first.value?.status).toBe(ServingStatus.SERVICE_UNKNOWN);
    let settled = false;
    const next = it.next().then(
      () => (settled = true),
      () => (settled = true),
    );
    // A whole round trip on another call: a stream the server had ended
    // would have been seen ended by now.
    await createClient(Health, gw.transport("grpc")).check({ service: "" });
    expect(settled).toBe(false);
    stop.abort();
    await next;
  });

  it("List reports both services", async () => {
    const health = createClient(Health, gw.transport("connect-json"));
    const { statuses } = await health.list({});
    expect(Object.keys(statuses).sort()).toEqual(["", "agent.v1.AgentService"]);
    for (const entry of Object.values(statuses)) {
      expect(entry.status).toBe(ServingStatus.SERVING);
    }
  });

  it("reflection lists the health service", async () => {
    const reflection = createClient(ServerReflection, gw.transport("grpc"));
    const responses: ServerReflectionResponse[] = [];
    async function* one() {
      yield { messageRequest: { case: "listServices" as const, value: "" } };
    }
    for await (const res of reflection.serverReflectionInfo(one())) responses.push(res);
    const answer = responses[0]?.messageResponse;
    expect(answer?.case).toBe("listServicesResponse");
    const names = answer?.case === "listServicesResponse" ? answer.value.service.map((s) => s.name) : [];
    expect(names).toContain(HEALTH_SERVICE_NAME);
    expect(names).toContain("agent.v1.AgentService");
  });

  it("Check is plain Connect JSON for curl-like clients", async () => {
    const res = await fetch(`${gw.baseUrl}/grpc.health.v1.Health/Check`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ service: "" }),
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: "SERVING" });
  });
});

/** The grpc-health-check package's client, on @grpc/grpc-js. */
interface GrpcHealthClient extends grpc.Client {
  check(
    request: { service: string },
    options: grpc.CallOptions,
    callback: (error: grpc.ServiceError | null, response?: { status: string }) => void,
  ): grpc.ClientUnaryCall;
  watch(request: { service: string }): grpc.ClientReadableStream<{ status: string }>;
}

describe("grpc.health.v1.Health through @grpc/grpc-js and grpc-health-check", () => {
  let client: GrpcHealthClient;

  beforeAll(() => {
    const Client = grpc.makeClientConstructor(healthDefinition, "Health");
    client = new Client(
      `127.0.0.1:${gw.port}`,
      grpc.credentials.createInsecure(),
    ) as unknown as GrpcHealthClient;
  });

  afterAll(() => client?.close());

  const check = (service: string) =>
    new Promise<{ error: grpc.ServiceError | null; status?: string }>((resolve) => {
      client.check({ service }, { deadline: Date.now() + DEADLINE_MS }, (error, response) =>
        resolve({ error, status: response?.status }),
      );
    });

  it("Check: SERVING for both services, NOT_FOUND for another", async () => {
    expect(await check("")).toEqual({ error: null, status: "SERVING" });
    expect(await check("agent.v1.AgentService")).toEqual({ error: null, status: "SERVING" });
    const unknown = await check("no.such.Service");
    expect(unknown.error?.code).toBe(grpc.status.NOT_FOUND);
  });

  it("Watch: SERVING for the server, SERVICE_UNKNOWN for another", async () => {
    for (const [service, expected] of [
      ["", "SERVING"],
      ["no.such.Service", "SERVICE_UNKNOWN"],
    ] as const) {
      const call = client.watch({ service });
      const first = await new Promise<{ status: string }>((resolve, reject) => {
        call.once("data", resolve);
        call.once("error", reject);
      });
      expect(first.status, service).toBe(expected);
      call.on("error", () => undefined); // the cancel below ends it with CANCELLED
      call.cancel();
    }
  });
});

describe("HTTP probes", () => {
  it("/healthz and /readyz answer 200 while serving", async () => {
    for (const path of ["/healthz", "/readyz"]) {
      const res = await fetch(`${gw.baseUrl}${path}`);
      expect(res.status, path).toBe(200);
      expect(res.headers.get("cache-control")).toBe("no-store");
      await res.text();
    }
  });

  it("answer HEAD without a body, other methods 405, and ignore a query", async () => {
    const head = await fetch(`${gw.baseUrl}/readyz`, { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(await head.text()).toBe("");
    const post = await fetch(`${gw.baseUrl}/healthz`, { method: "POST" });
    expect(post.status).toBe(405);
    expect(post.headers.get("allow")).toBe("GET, HEAD");
    await post.text();
    const query = await fetch(`${gw.baseUrl}/readyz?verbose=1`);
    expect(query.status).toBe(200);
    await query.text();
  });

  it("answer over HTTP/2 on the same port", async () => {
    const { connect } = await import("node:http2");
    const session = connect(gw.baseUrl);
    try {
      const status = await new Promise<number>((resolve, reject) => {
        const req = session.request({ ":path": "/readyz" });
        req.once("response", (headers) => resolve(Number(headers[":status"])));
        req.once("error", reject);
        req.resume();
      });
      expect(status).toBe(200);
    } finally {
      session.close();
    }
  });

  it("/readyz is 503 once the store does not answer; /healthz stays 200", async () => {
    const broken = await startGateway();
    try {
      // The database closed under the gateway: ping() throws.
      await broken.gateway.store.close();
      const ready = await fetch(`${broken.baseUrl}/readyz`);
      expect(ready.status).toBe(503);
      // The store's own error is for the log, not for whoever probes.
      expect(await ready.text()).toBe("not ready: store unreachable\n");
      const alive = await fetch(`${broken.baseUrl}/healthz`);
      expect(alive.status).toBe(200);
      await alive.text();
      const health = createClient(Health, broken.transport("grpc"));
      expect((await health.check({ service: "" })).status).toBe(ServingStatus.NOT_SERVING);
    } finally {
      await broken.close();
    }
  });
});

describe("with API keys configured", () => {
  let keyed: TestGateway;

  beforeAll(async () => {
    keyed = await startGateway({
      config: {
        apiKeys: [{ hash: hashApiKey(generateApiKey()), tenant: "acme", scopes: ["admin"] }],
      },
    });
  });

  afterAll(async () => {
    await keyed?.close();
  });

  it("health needs no key, while AgentService does", async () => {
    const health = createClient(Health, keyed.transport("grpc"));
    expect((await health.check({ service: "" })).status).toBe(ServingStatus.SERVING);
    const it = health.watch({ service: "" }, { timeoutMs: DEADLINE_MS })[Symbol.asyncIterator]();
    expect((await it.next()).value?.status).toBe(ServingStatus.SERVING);
    await it.return?.();
    for (const path of ["/healthz", "/readyz"]) {
      const res = await fetch(`${keyed.baseUrl}${path}`);
      expect(res.status, path).toBe(200);
      await res.text();
    }
    const refused = await failure(keyed.client("grpc").listAgents({}));
    expect(refused.code).toBe(Code.Unauthenticated);
  });
});

/**
 * A real SQLite store whose ping() throws while `down` is true, as a store
 * on a lost disk would; everything else goes to the store itself.
 */
function flakyStore(): { store: Store; down: boolean } {
  const real = createSqliteStore({ path: ":memory:" });
  const state = { store: real, down: false };
  state.store = new Proxy(real, {
    get(target, property) {
      if (property === "ping" && state.down) {
        return () => Promise.reject(new Error("disk I/O error"));
      }
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  return state;
}

describe("Watch follows the store, not only the lifecycle", () => {
  it("sends NOT_SERVING when the store stops answering, SERVING when it is back, nothing in between", async () => {
    const flaky = flakyStore();
    const lifecycle = new Lifecycle();
    lifecycle.advance("serving");
    const health = createClient(
      Health,
      createRouterTransport(({ service }) => {
        service(
          Health,
          createHealthService({
            lifecycle,
            store: flaky.store,
            services: ["agent.v1.AgentService"],
            watchIntervalMs: 20,
          }),
        );
      }),
    );
    const stop = new AbortController();
    const it = health
      .watch({ service: "agent.v1.AgentService" }, { signal: stop.signal })
      [Symbol.asyncIterator]();
    try {
      expect((await it.next()).value?.status).toBe(ServingStatus.SERVING);
      flaky.down = true;
      expect((await it.next()).value?.status).toBe(ServingStatus.NOT_SERVING);
      // Many checks with the same answer send nothing: the next message is
      // the recovery, however long it takes to come.
      await new Promise((resolve) => setTimeout(resolve, 200));
      flaky.down = false;
      expect((await it.next()).value?.status).toBe(ServingStatus.SERVING);
      // A lifecycle change is still heard at once, not at the next tick.
      lifecycle.advance("draining");
      expect((await it.next()).value?.status).toBe(ServingStatus.NOT_SERVING);
    } finally {
      stop.abort();
      await it.return?.();
      await flaky.store.close();
    }
  });

  it(
    "on a real port, with the default interval",
    async () => {
      const flaky = flakyStore();
      const gw = await startGateway({ store: flaky.store });
      try {
        const health = createClient(Health, gw.transport("grpc"));
        const it = health
          .watch({ service: "" }, { timeoutMs: DEADLINE_MS })
          [Symbol.asyncIterator]();
        expect((await it.next()).value?.status).toBe(ServingStatus.SERVING);
        flaky.down = true;
        const started = Date.now();
        expect((await it.next()).value?.status).toBe(ServingStatus.NOT_SERVING);
        // Heard at the next periodic check: within one interval.
        expect(Date.now() - started).toBeLessThan(WATCH_INTERVAL_MS + 3_000);
        await it.return?.();
      } finally {
        flaky.down = false;
        await gw.close();
      }
    },
    WATCH_INTERVAL_MS + DEADLINE_MS,
  );
});
