import { cors } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateApiKey, hashApiKey } from "../../src/server/api-keys.js";
import { envelope } from "../helpers/calls.js";
import { startGateway, type TestGateway } from "../helpers/gateway.js";

/**
 * CORS as a browser sees it: the preflight, and the headers of the answer
 * a page may read. Sent with fetch, which (unlike a browser) lets a test
 * set Origin itself.
 */

const ALLOWED = "https://app.example";
const OTHER = "https://evil.example";

/** Header names of a comma-separated list field, lower case. */
function names(field: string | null): string[] {
  return (field ?? "").split(",").map((s) => s.trim().toLowerCase()).filter(Boolean);
}

describe("CORS", () => {
  let gw: TestGateway;
  const key = generateApiKey();

  beforeAll(async () => {
    gw = await startGateway({
      config: {
        // A trailing slash in the configuration still means the origin.
        corsOrigins: [`${ALLOWED}/`],
        apiKeys: [{ hash: hashApiKey(key), tenant: "web", scopes: ["invoke", "read"] }],
      },
    });
  });
  afterAll(() => gw?.close());

  const preflight = (origin: string, method = "POST") =>
    fetch(`${gw.baseUrl}/agent.v1.AgentService/StartInvocation`, {
      method: "OPTIONS",
      headers: {
        origin,
        "access-control-request-method": method,
        "access-control-request-headers": "content-type,connect-protocol-version,authorization",
      },
    });

  it("answers the preflight of an allowed origin with what Connect and gRPC-web need", async () => {
    const res = await preflight(ALLOWED);
    expect(res.status).toBe(204);
    expect(res.headers.get("access-control-allow-origin")).toBe(ALLOWED);
    expect(names(res.headers.get("access-control-allow-methods"))).toEqual(
      expect.arrayContaining(cors.allowedMethods.map((m) => m.toLowerCase())),
    );
    expect(names(res.headers.get("access-control-allow-headers"))).toEqual(
      expect.arrayContaining([
        ...cors.allowedHeaders.map((h) => h.toLowerCase()),
        "authorization",
        "x-api-key",
        "traceparent",
      ]),
    );
    expect(Number(res.headers.get("access-control-max-age"))).toBeGreaterThan(0);
    expect(names(res.headers.get("vary"))).toContain("origin");
  });

  it("gives a disallowed origin no allow header", async () => {
    const res = await preflight(OTHER);
    expect(res.status).toBe(403);
    expect(res.headers.get("access-control-allow-origin")).toBeNull();
    expect(res.headers.get("access-control-allow-headers")).toBeNull();
    // An origin that only starts like an allowed one is another origin.
    const lookalike = await preflight(`${ALLOWED}.evil.example`);
    expect(lookalike.headers.get("access-control-allow-origin")).toBeNull();

    const call = await fetch(`${gw.baseUrl}/agent.v1.AgentService/ListAgents`, {
      method: "POST",
      headers: { origin: OTHER, "content-type": "application/json", "x-api-key": key },
      body: "{}",
    });
    // Answered (CORS is not authentication) but not readable by the page.
    expect(call.status).toBe(200);
    expect(call.headers.get("access-control-allow-origin")).toBeNull();
    expect(call.headers.get("access-control-expose-headers")).toBeNull();
  });

  it("lets a page read the answer, the invocation id and the rate-limit fields (Connect)", async () => {
    const res = await fetch(`${gw.baseUrl}/agent.v1.AgentService/StartInvocation`, {
      method: "POST",
      headers: {
        origin: ALLOWED,
        "content-type": "application/json",
        "connect-protocol-version": "1",
        authorization: `Bearer ${key}`,
      },
      body: JSON.stringify({ agent: "echo", input: { from: "a page" } }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("access-control-allow-origin")).toBe(ALLOWED);
    const exposed = names(res.headers.get("access-control-expose-headers"));
    expect(exposed).toEqual(
      expect.arrayContaining([
        ...cors.exposedHeaders.map((h) => h.toLowerCase()),
        "agent-invocation-id",
        "retry-after",
        "ratelimit",
        "ratelimit-policy",
      ]),
    );
    // What is exposed is there to read.
    const body = (await res.json()) as { invocation: { id: string } };
    expect(res.headers.get("agent-invocation-id")).toBe(body.invocation.id);
    expect(res.headers.get("ratelimit")).toMatch(/^"default";r=\d+;t=\d+$/);
  });

  it("lets a page read gRPC-web's status", async () => {
    const res = await fetch(`${gw.baseUrl}/agent.v1.AgentService/ListAgents`, {
      method: "POST",
      headers: {
        origin: ALLOWED,
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "x-user-agent": "grpc-web-javascript/0.1",
        // No key: the refusal must be readable too.
      },
      body: envelope(new Uint8Array()),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("access-control-allow-origin")).toBe(ALLOWED);
    expect(names(res.headers.get("access-control-expose-headers"))).toEqual(
      expect.arrayContaining(["grpc-status", "grpc-message", "grpc-status-details-bin"]),
    );
    // The status is in the trailer frame (flag 0x80) of the body: 16,
    // UNAUTHENTICATED, as there was no key.
    const body = Buffer.from(await res.arrayBuffer());
    expect(body[0]).toBe(0x80);
    expect(body.subarray(5).toString()).toMatch(/^grpc-status: ?16\r$/m);
  });

  it("leaves requests without Origin alone", async () => {
    const res = await fetch(`${gw.baseUrl}/agent.v1.AgentService/ListAgents`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-api-key": key },
      body: "{}",
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("access-control-allow-origin")).toBeNull();
  });
});

describe("CORS with *", () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ config: { corsOrigins: ["*"] } });
  });
  afterAll(() => gw?.close());

  it("allows any origin", async () => {
    const res = await fetch(`${gw.baseUrl}/agent.v1.AgentService/ListAgents`, {
      method: "OPTIONS",
      headers: { origin: OTHER, "access-control-request-method": "POST" },
    });
    expect(res.status).toBe(204);
    expect(res.headers.get("access-control-allow-origin")).toBe(OTHER);
  });
});

describe("CORS not configured", () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway();
  });
  afterAll(() => gw?.close());

  it("allows no origin", async () => {
    const res = await fetch(`${gw.baseUrl}/agent.v1.AgentService/ListAgents`, {
      method: "OPTIONS",
      headers: { origin: ALLOWED, "access-control-request-method": "POST" },
    });
    expect(res.headers.get("access-control-allow-origin")).toBeNull();
  });
});
