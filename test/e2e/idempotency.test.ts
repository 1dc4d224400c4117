import { randomUUID } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InvocationState, type Event } from "../../gen/agent/v1/agent_pb.js";
import { INVOCATION_ID_HEADER } from "../../src/service/agent-service.js";
import {
  collect,
  expectWholeLog,
  ofKind,
  range,
  ticks,
  value,
} from "../helpers/event-log.js";
import { PROTOCOLS, startGateway, type TestGateway } from "../helpers/gateway.js";

/**
 * A start request with an idempotency key can be retried safely: however
 * many copies arrive, at once or later, over whatever protocol, there is one
 * invocation, and a retried stream shows that one from its first event.
 */

let gw: TestGateway;
beforeAll(async () => {
  gw = await startGateway();
});
afterAll(async () => {
  await gw?.close();
});

const BOUND_MS = 20_000;

async function invocationsWithKey(agent: string, key: string) {
  const { invocations, nextPageToken } = await gw
    .client("grpc")
    .listInvocations({ agent, pageSize: 500 });
  expect(nextPageToken).toBe("");
  return invocations.filter((i) => i.idempotencyKey === key);
}

function codeOf(error: unknown): Code | undefined {
  return error instanceof ConnectError ? error.code : undefined;
}

describe("idempotency keys", () => {
  it("50 concurrent starts with one key create one invocation", async () => {
    // Only this test starts echo, so the listing below sees all of them.
    const key = randomUUID();
    const input = value({ text: "once", n: [1, 2, 3] });
    const calls = range(1, 50).map(async (i) => {
      const client = gw.client(PROTOCOLS[i % PROTOCOLS.length]!);
      const request = { agent: "echo", input, idempotencyKey: key };
      const { invocation } =
        i % 2 === 0
          ? await client.invoke(request, { signal: AbortSignal.timeout(BOUND_MS) })
          : await client.startInvocation(request);
      return invocation!;
    });
    const invocations = await Promise.all(calls);

    const ids = new Set(invocations.map((i) => i.id));
    expect(ids.size).toBe(1);
    for (const invocation of invocations) {
      expect(invocation.idempotencyKey).toBe(key);
    }
    const { invocations: listed } = await gw
      .client("connect-json")
      .listInvocations({ agent: "echo" });
    expect(listed.map((i) => i.id)).toEqual([...ids]);

    // It ran once: one node, one result.
    const id = [...ids][0]!;
    const log = await collect(
      gw.client("grpc").watchInvocation(
        { invocationId: id, afterSequence: 0n },
        { signal: AbortSignal.timeout(BOUND_MS) },
      ),
    );
    expectWholeLog(log);
    expect(ofKind(log, "started")).toHaveLength(1);
    expect(ofKind(log, "nodeStarted")).toHaveLength(1);
    const { invocation } = await gw.client("grpc").getInvocation({ invocationId: id });
    expect(invocation?.state).toBe(InvocationState.SUCCEEDED);
  });

  it.each(PROTOCOLS)(
    "the same key with another input or agent is INVALID_ARGUMENT over %s",
    async (protocol) => {
      const client = gw.client(protocol);
      const key = randomUUID();
      const first = await client.invoke({
        agent: "ticker",
        input: value({ count: 2 }),
        idempotencyKey: key,
      });
      expect(first.invocation?.state).toBe(InvocationState.SUCCEEDED);

      const refusals: Promise<unknown>[] = [
        client.invoke({ agent: "ticker", input: value({ count: 3 }), idempotencyKey: key }),
        client.startInvocation({
          agent: "ticker",
          input: value({ count: 2, intervalMs: 1 }),
          idempotencyKey: key,
        }),
        // echo accepts any input: only the key can be the reason to refuse.
        client.startInvocation({
          agent: "echo",
          input: value({ count: 2 }),
          idempotencyKey: key,
        }),
        collect(
          client.invokeStream({
            agent: "echo",
            input: value({ count: 2 }),
            idempotencyKey: key,
          }),
        ),
      ];
      for (const outcome of await Promise.allSettled(refusals)) {
        expect(outcome.status).toBe("rejected");
        const error: unknown = outcome.status === "rejected" && outcome.reason;
        expect(codeOf(error)).toBe(Code.InvalidArgument);
        expect((error as ConnectError).rawMessage).toContain("idempotency_key");
      }

      // Nothing new was started, and the key still names the first one.
      expect((await invocationsWithKey("ticker", key)).map((i) => i.id)).toEqual([
        first.invocation!.id,
      ]);
      expect(await invocationsWithKey("echo", key)).toEqual([]);
      const again = await client.startInvocation({
        agent: "ticker",
        input: value({ count: 2 }),
        idempotencyKey: key,
      });
      expect(again.invocation?.id).toBe(first.invocation!.id);
    },
  );

  it.each([
    ["grpc", "connect-json"],
    ["connect-json", "grpc-web"],
    ["connect-binary", "grpc"],
  ] as const)(
    "a retried InvokeStream (%s, then %s) streams the same invocation from its first event",
    async (firstProtocol, retryProtocol) => {
      const key = randomUUID();
      const request = {
        agent: "ticker",
        input: value({ count: 100, intervalMs: 2 }),
        idempotencyKey: key,
      };

      // The first attempt drops after a few events.
      const drop = new AbortController();
      const firstSeen: Event[] = [];
      let firstHeader: string | null = null;
      const firstAttempt = collect(
        gw.client(firstProtocol).invokeStream(request, {
          signal: drop.signal,
          onHeader: (h) => (firstHeader = h.get(INVOCATION_ID_HEADER)),
        }),
        (event) => {
          firstSeen.push(event);
          if (ofKind(firstSeen, "chunk").length === 10) drop.abort();
        },
      );
      await expect(firstAttempt).rejects.toMatchObject({ code: Code.Canceled });
      expect(ofKind(firstSeen, "completed")).toHaveLength(0);
      const id = firstSeen[0]!.invocationId;
      expect(firstHeader).toBe(id);

      // The retry gets the whole invocation, from `started` on.
      let retryHeader: string | null = null;
      const retried = await collect(
        gw.client(retryProtocol).invokeStream(request, {
          signal: AbortSignal.timeout(BOUND_MS),
          onHeader: (h) => (retryHeader = h.get(INVOCATION_ID_HEADER)),
        }),
      );
      expect(retryHeader).toBe(id);
      expect(retried[0]?.kind.case).toBe("started");
      expectWholeLog(retried);
      expect(retried[0]?.invocationId).toBe(id);
      expect(ticks(retried)).toEqual(range(1, 100));
      // What the first attempt saw is the start of the same log.
      expect(retried.slice(0, firstSeen.length)).toEqual(firstSeen);

      // A retry after the end replays the same log again.
      const late = await collect(
        gw.client(firstProtocol).invokeStream(request, {
          signal: AbortSignal.timeout(BOUND_MS),
        }),
      );
      expect(late).toEqual(retried);
      expect(await invocationsWithKey("ticker", key)).toHaveLength(1);
    },
  );
});
