import { randomUUID } from "node:crypto";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type {
  InvocationChange,
  NewInvocation,
  Store,
} from "../../src/store/store.js";
import type {
  EventBody,
  InputRequestRecord,
  InvocationRecord,
  InvocationState,
  StoredEvent,
  TaskRecord,
} from "../../src/store/types.js";

const T0 = 1_700_000_000_000;

/**
 * Registers the tests every `Store` must pass. `open` is called before each
 * test and must return a store that holds no invocations (listUnfinished is
 * global); the store is closed after the test.
 */
export function describeStoreContract(
  name: string,
  open: () => Promise<Store>,
): void {
  describe(`Store contract: ${name}`, () => {
    let store: Store;
    beforeEach(async () => {
      store = await open();
    });
    afterEach(async () => {
      await store.close();
    });

    describe("createInvocation and getInvocation", () => {
      it("round-trips every field", async () => {
        const init = newInvocation({
          tenant: "acme",
          agent: "wordfreq",
          state: "running",
          input: { text: "héllo ✓", nested: [1, 2.5, true, null, { a: "b" }] },
          result: null,
          error: { code: "deadline_exceeded", message: "too slow" },
          metadata: { user: "u1", "x-trace": "" },
          idempotencyKey: "key-1",
          traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
          onDisconnect: "cancel",
          timeoutMs: 30_000,
          deadlineAt: T0 + 30_000,
          createdAt: T0,
          updatedAt: T0 + 1,
          finishedAt: T0 + 2,
        });

        const created = await store.createInvocation(init);
        expect(created).toEqual({ invocation: init.invocation, created: true });
        const got = await store.getInvocation(init.invocation.id);
        expect(got).toEqual(init.invocation);
        expect(got && "result" in got).toBe(true);
        expect(got?.result).toBeNull();
      });

      it("keeps an unset result apart from a null one", async () => {
        const init = newInvocation();
        await store.createInvocation(init);

        const got = await store.getInvocation(init.invocation.id);
        expect(got).toEqual(init.invocation);
        for (const key of [
          "result",
          "error",
          "idempotencyKey",
          "traceId",
          "timeoutMs",
          "deadlineAt",
          "finishedAt",
        ]) {
          expect(got?.[key as keyof InvocationRecord]).toBeUndefined();
        }
        expect(got && "result" in got).toBe(false);
      });

      it("stores the start task and the started event", async () => {
        const init = newInvocation();
        await store.createInvocation(init);
        const id = init.invocation.id;

        expect(await store.listTasks(id)).toEqual([init.startTask]);
        expect(await store.readEvents(id, 0, 10)).toEqual([init.started]);
        expect(await store.listInputRequests(id)).toEqual([]);
      });

      it("answers undefined for an unknown id", async () => {
        expect(await store.getInvocation(randomUUID())).toBeUndefined();
      });
    });

    describe("idempotency", () => {
      it("returns the original for the same tenant and key", async () => {
        const first = newInvocation({ idempotencyKey: "k" });
        const second = newInvocation({
          idempotencyKey: "k",
          input: { other: true },
        });
        await store.createInvocation(first);

        const again = await store.createInvocation(second);
        expect(again).toEqual({ invocation: first.invocation, created: false });
        // Nothing of the second was written.
        const secondId = second.invocation.id;
        expect(await store.getInvocation(secondId)).toBeUndefined();
        expect(await store.listTasks(secondId)).toEqual([]);
        expect(await store.readEvents(secondId, 0, 10)).toEqual([]);
      });

      it("finds the invocation a tenant's key names, and only that", async () => {
        const first = newInvocation({ tenant: "a", idempotencyKey: "k" });
        await store.createInvocation(first);
        expect(await store.findByIdempotencyKey("a", "k")).toEqual(first.invocation);
        expect(await store.findByIdempotencyKey("b", "k")).toBeUndefined();
        expect(await store.findByIdempotencyKey("a", "other")).toBeUndefined();
      });

      it("scopes keys to a tenant", async () => {
        const a = newInvocation({ tenant: "a", idempotencyKey: "k" });
        const b = newInvocation({ tenant: "b", idempotencyKey: "k" });

        expect((await store.createInvocation(a)).created).toBe(true);
        expect(await store.createInvocation(b)).toEqual({
          invocation: b.invocation,
          created: true,
        });
      });

      it("never deduplicates invocations without a key", async () => {
        const a = await store.createInvocation(newInvocation());
        const b = await store.createInvocation(newInvocation());
        expect([a.created, b.created]).toEqual([true, true]);
      });

      it("creates exactly one of 50 concurrent creates", async () => {
        const inits = Array.from({ length: 50 }, () =>
          newInvocation({ idempotencyKey: "race" }),
        );
        const results = await Promise.all(
          inits.map((init) => store.createInvocation(init)),
        );

        const winners = results.filter((r) => r.created);
        expect(winners).toHaveLength(1);
        const winnerId = winners[0]?.invocation.id;
        for (const r of results) expect(r.invocation.id).toBe(winnerId);
        const page = await store.listInvocations({ tenant: "t1", limit: 100 });
        expect(page.invocations.map((i) => i.id)).toEqual([winnerId]);
      });
    });

    describe("write", () => {
      it("overwrites fields and follows the last event", async () => {
        const { invocation } = await created(store);
        const id = invocation.id;
        const result = { words: [["a", 2]] };

        await store.write([
          {
            invocationId: id,
            set: {
              state: "succeeded",
              result,
              finishedAt: T0 + 50,
              traceId: "trace-2",
            },
            events: [
              event(id, 2, {
                type: "chunk",
                node: "n",
                taskId: "t",
                attempt: 1,
                data: "x",
              }),
              event(id, 3, { type: "completed", result }, T0 + 40),
            ],
          },
        ]);

        expect(await store.getInvocation(id)).toEqual({
          ...invocation,
          state: "succeeded",
          result,
          finishedAt: T0 + 50,
          traceId: "trace-2",
          lastSequence: 3,
          updatedAt: T0 + 40,
        });
      });

      it("stores a null result and an error", async () => {
        const { invocation } = await created(store);
        const id = invocation.id;

        await store.write([{ invocationId: id, set: { result: null } }]);
        const got = await store.getInvocation(id);
        expect(got && "result" in got).toBe(true);
        expect(got?.result).toBeNull();

        const error = { code: "internal", message: "boom" };
        await store.write([
          { invocationId: id, set: { state: "failed", error } },
        ]);
        expect(await store.getInvocation(id)).toMatchObject({
          state: "failed",
          error,
          result: null,
        });
      });

      it("keeps what a change leaves undefined", async () => {
        const { invocation } = await created(store, { result: { a: 1 } });

        await store.write([
          { invocationId: invocation.id, set: { state: "running" } },
        ]);
        expect(await store.getInvocation(invocation.id)).toEqual({
          ...invocation,
          state: "running",
        });
      });

      it("accepts an empty batch and an empty change", async () => {
        const { invocation } = await created(store);
        await store.write([]);
        await store.write([{ invocationId: invocation.id }]);
        expect(await store.getInvocation(invocation.id)).toEqual(invocation);
      });

      it("continues sequences across changes of one batch", async () => {
        const { invocation } = await created(store);
        const id = invocation.id;

        await store.write([
          { invocationId: id, events: [event(id, 2), event(id, 3)] },
          { invocationId: id, events: [event(id, 4)] },
        ]);
        const events = await store.readEvents(id, 0, 100);
        expect(events.map((e) => e.sequence)).toEqual([1, 2, 3, 4]);
        expect((await store.getInvocation(id))?.lastSequence).toBe(4);
      });

      it.each([
        ["a gap", [3]],
        ["a repeat of the last", [1]],
        ["a gap inside the batch", [2, 4]],
        ["a repeat inside the batch", [2, 2]],
      ])("rejects %s in the sequence", async (_, sequences) => {
        const { invocation } = await created(store);
        const id = invocation.id;

        await expect(
          store.write([
            { invocationId: id, events: sequences.map((s) => event(id, s)) },
          ]),
        ).rejects.toThrow();
        expect(await store.readEvents(id, 0, 100)).toEqual([
          expect.objectContaining({ sequence: 1 }),
        ]);
        expect(await store.getInvocation(id)).toEqual(invocation);
      });

      it("writes nothing of a batch whose later change fails", async () => {
        const a = (await created(store)).invocation;
        const b = (await created(store)).invocation;

        await expect(
          store.write([
            {
              invocationId: a.id,
              set: { state: "running" },
              newTasks: [task(a.id, "a-next")],
              startedTasks: [{ taskId: taskIdOf(a.id), attempt: 1 }],
              newInputRequests: [inputRequest(a.id, "r1")],
              events: [event(a.id, 2)],
            },
            { invocationId: b.id, events: [event(b.id, 3)] },
          ]),
        ).rejects.toThrow();

        expect(await store.getInvocation(a.id)).toEqual(a);
        expect(await store.readEvents(a.id, 0, 100)).toHaveLength(1);
        expect(await store.listTasks(a.id)).toEqual([
          expect.objectContaining({ taskId: taskIdOf(a.id), attempt: 0 }),
        ]);
        expect(await store.listInputRequests(a.id)).toEqual([]);
        expect(await store.getInvocation(b.id)).toEqual(b);
      });

      it("applies and settles writes in the order they were made", async () => {
        const { invocation } = await created(store);
        const settled: number[] = [];

        await Promise.all(
          Array.from({ length: 20 }, (_, i) =>
            store
              .write([
                { invocationId: invocation.id, events: [event(invocation.id, i + 2)] },
              ])
              .then(() => settled.push(i + 2)),
          ),
        );

        const expected = Array.from({ length: 20 }, (_, i) => i + 2);
        expect(settled).toEqual(expected);
        const stored = await store.readEvents(invocation.id, 1, 100);
        expect(stored.map((e) => e.sequence)).toEqual(expected);
      });

      it("refuses a failing write alone among concurrent ones", async () => {
        const a = (await created(store)).invocation;
        const b = (await created(store)).invocation;
        const fresh = newInvocation();

        // Made together, so a store that groups writes commits them together.
        const [good, bad, create, gap] = await Promise.allSettled([
          store.write([{ invocationId: a.id, events: [event(a.id, 2)] }]),
          store.write([{ invocationId: b.id, events: [event(b.id, 2)] }, {
            invocationId: randomUUID(),
            set: { state: "running" },
          }]),
          store.createInvocation(fresh),
          store.write([{ invocationId: a.id, events: [event(a.id, 4)] }]),
        ]);

        expect(good.status).toBe("fulfilled");
        expect(bad.status).toBe("rejected");
        expect(create.status).toBe("fulfilled");
        expect(gap.status).toBe("rejected");
        expect((await store.getInvocation(a.id))?.lastSequence).toBe(2);
        expect(await store.getInvocation(b.id)).toEqual(b);
        expect(await store.getInvocation(fresh.invocation.id)).toEqual(
          fresh.invocation,
        );
      });

      it("rejects a change to an unknown invocation", async () => {
        await expect(
          store.write([
            { invocationId: randomUUID(), set: { state: "running" } },
          ]),
        ).rejects.toThrow();
      });
    });

    describe("readEvents", () => {
      it("reads after a sequence, in order, at most limit", async () => {
        const { invocation } = await created(store);
        const id = invocation.id;
        const events = [2, 3, 4, 5, 6].map((s) => event(id, s));
        await store.write([{ invocationId: id, events }]);

        expect(await store.readEvents(id, 1, 100)).toEqual(events);
        expect(await store.readEvents(id, 2, 2)).toEqual(events.slice(1, 3));
        expect(await store.readEvents(id, 6, 10)).toEqual([]);
        const [first, ...rest] = await store.readEvents(id, 0, 1);
        expect(rest).toEqual([]);
        expect(first?.sequence).toBe(1);
        expect(first?.body.type).toBe("started");
        expect(await store.readEvents(randomUUID(), 0, 10)).toEqual([]);
      });

      it("round-trips every kind of event body", async () => {
        const { invocation } = await created(store);
        const id = invocation.id;
        const at = { node: "n", taskId: "t", attempt: 1 };
        const bodies: EventBody[] = [
          { type: "node_started", ...at },
          { type: "chunk", ...at, data: { d: [null, "ü"] } },
          { type: "node_retrying", ...at, error: "e", delayMs: 100 },
          {
            type: "node_finished",
            ...at,
            attempt: 2,
            durationMs: 12.5,
            emittedTo: ["m"],
          },
          {
            type: "input_requested",
            requestId: "r",
            node: "n",
            prompt: "ok?",
            schema: { type: "boolean" },
          },
          { type: "input_provided", requestId: "r" },
          { type: "completed", result: null },
        ];
        const events = bodies.map((b, i) => event(id, i + 2, b, T0 + i));
        await store.write([{ invocationId: id, events }]);

        expect(await store.readEvents(id, 1, 100)).toEqual(events);
      });
    });

    describe("tasks", () => {
      it("inserts, starts and finishes tasks in insertion order", async () => {
        const { invocation, startTask } = await created(store);
        const id = invocation.id;
        // Ids and times out of order, so only insertion order can sort them.
        const z = task(id, "z", T0 + 5);
        const a = task(id, "a", T0 + 1);
        const m = task(id, "m", T0 + 3);

        await store.write([
          {
            invocationId: id,
            startedTasks: [{ taskId: startTask.taskId, attempt: 1 }],
          },
        ]);
        await store.write([
          {
            invocationId: id,
            finishedTasks: [startTask.taskId],
            newTasks: [z, a],
          },
        ]);
        await store.write([
          {
            invocationId: id,
            newTasks: [m],
            startedTasks: [{ taskId: "a", attempt: 1 }],
          },
        ]);
        await store.write([
          { invocationId: id, startedTasks: [{ taskId: "a", attempt: 2 }] },
        ]);

        expect(await store.listTasks(id)).toEqual([
          { ...startTask, attempt: 1, state: "finished" },
          z,
          { ...a, attempt: 2 },
          m,
        ]);
      });

      it("keeps each invocation's tasks apart", async () => {
        const x = await created(store);
        const y = await created(store);
        const add = (id: string): InvocationChange => ({
          invocationId: id,
          newTasks: [task(id, "same")],
        });
        await store.write([add(x.invocation.id), add(y.invocation.id)]);

        expect(await store.listTasks(x.invocation.id)).toEqual([
          x.startTask,
          task(x.invocation.id, "same"),
        ]);
      });
    });

    describe("input requests", () => {
      it("inserts and answers requests, keeping insertion order", async () => {
        const { invocation } = await created(store);
        const id = invocation.id;
        const r2 = inputRequest(id, "r2");
        const r1 = inputRequest(id, "r1");

        await store.write([{ invocationId: id, newInputRequests: [r2, r1] }]);
        expect(await store.listInputRequests(id)).toEqual([r2, r1]);

        await store.write([
          {
            invocationId: id,
            set: { state: "running" },
            answeredInputRequests: [
              { requestId: "r1", answer: null, answeredAt: T0 + 9 },
            ],
          },
        ]);
        const [first, second] = await store.listInputRequests(id);
        expect(first).toEqual(r2);
        expect(second).toEqual({
          ...r1,
          state: "answered",
          answer: null,
          answeredAt: T0 + 9,
        });
        expect(second && "answer" in second).toBe(true);
      });

      it("rejects a second answer to the same request", async () => {
        const { invocation } = await created(store);
        const id = invocation.id;
        await store.write([
          { invocationId: id, newInputRequests: [inputRequest(id, "r")] },
        ]);
        const answer = (value: boolean): InvocationChange => ({
          invocationId: id,
          answeredInputRequests: [
            { requestId: "r", answer: value, answeredAt: T0 + 1 },
          ],
        });

        await store.write([answer(true)]);
        await expect(store.write([answer(false)])).rejects.toThrow();
        expect((await store.listInputRequests(id))[0]?.answer).toBe(true);
      });
    });

    describe("listInvocations", () => {
      it("lists newest first, by creation time then id", async () => {
        const ids = await createMany(store, [
          { id: "b", createdAt: T0 + 1 },
          { id: "a", createdAt: T0 + 2 },
          { id: "c", createdAt: T0 + 1 },
          { id: "d", createdAt: T0 },
        ]);
        expect(ids).toHaveLength(4);

        const page = await store.listInvocations({ tenant: "t1", limit: 10 });
        expect(page.invocations.map((i) => i.id)).toEqual(["a", "c", "b", "d"]);
        expect(page.nextCursor).toBeUndefined();
      });

      it("returns whole records", async () => {
        const { invocation } = await created(store, {
          result: null,
          metadata: { k: "v" },
        });
        const page = await store.listInvocations({ tenant: "t1", limit: 1 });
        expect(page.invocations).toEqual([invocation]);
      });

      it("filters by agent and by states", async () => {
        await createMany(store, [
          { id: "e1", agent: "echo", state: "succeeded", createdAt: T0 + 1 },
          { id: "e2", agent: "echo", state: "running", createdAt: T0 + 2 },
          { id: "w1", agent: "wordfreq", state: "failed", createdAt: T0 + 3 },
          { id: "w2", agent: "wordfreq", state: "queued", createdAt: T0 + 4 },
        ]);
        type Filter = { agent?: string; states?: InvocationState[] };
        const list = async (q: Filter) =>
          (await store.listInvocations({ tenant: "t1", limit: 10, ...q }))
            .invocations.map((i) => i.id);

        expect(await list({ agent: "echo" })).toEqual(["e2", "e1"]);
        expect(await list({ states: ["succeeded", "failed"] })).toEqual([
          "w1",
          "e1",
        ]);
        expect(await list({ agent: "wordfreq", states: ["queued"] })).toEqual([
          "w2",
        ]);
        expect(await list({ states: [] })).toHaveLength(4);
        expect(await list({ agent: "nobody" })).toEqual([]);
      });

      it("keeps tenants apart", async () => {
        await createMany(store, [
          { id: "mine", tenant: "me" },
          { id: "theirs", tenant: "them" },
        ]);
        const page = await store.listInvocations({ tenant: "me", limit: 10 });
        expect(page.invocations.map((i) => i.id)).toEqual(["mine"]);
        const none = await store.listInvocations({ tenant: "else", limit: 10 });
        expect(none).toEqual({ invocations: [] });
      });

      it("pages through everything with no duplicate or gap", async () => {
        // Several share a creation time, so the id must break ties.
        const specs = Array.from({ length: 23 }, (_, i) => ({
          id: `inv-${String(i).padStart(2, "0")}`,
          createdAt: T0 + Math.floor(i / 3),
          agent: i % 2 === 0 ? "even" : "odd",
        }));
        await createMany(store, specs);
        await createMany(store, [{ id: "other-tenant", tenant: "t2" }]);
        const expected = [...specs]
          .sort((x, y) => y.createdAt - x.createdAt || (x.id < y.id ? 1 : -1))
          .map((s) => s.id);

        const seen = await pageAll(store, { tenant: "t1" }, 5);
        expect(seen.pages).toEqual([5, 5, 5, 5, 3]);
        expect(seen.ids).toEqual(expected);

        const even = await pageAll(store, { tenant: "t1", agent: "even" }, 4);
        expect(even.ids).toEqual(
          expected.filter((id) => Number(id.slice(4)) % 2 === 0),
        );
      });

      it("ends without a cursor when the last page is full", async () => {
        await createMany(
          store,
          Array.from({ length: 6 }, (_, i) => ({ createdAt: T0 + i })),
        );
        const seen = await pageAll(store, { tenant: "t1" }, 3);
        expect(seen.pages).toEqual([3, 3]);
      });

      it("is not shifted by invocations created between pages", async () => {
        await createMany(store, [
          { id: "x1", createdAt: T0 + 1 },
          { id: "x2", createdAt: T0 + 2 },
          { id: "x3", createdAt: T0 + 3 },
        ]);
        const first = await store.listInvocations({ tenant: "t1", limit: 2 });
        await createMany(store, [{ id: "x4", createdAt: T0 + 4 }]);

        const second = await store.listInvocations({
          tenant: "t1",
          limit: 2,
          cursor: first.nextCursor,
        });
        expect(first.invocations.map((i) => i.id)).toEqual(["x3", "x2"]);
        expect(second.invocations.map((i) => i.id)).toEqual(["x1"]);
        expect(second.nextCursor).toBeUndefined();
      });

      it("rejects a malformed cursor", async () => {
        await expect(
          store.listInvocations({ tenant: "t1", limit: 2, cursor: "%%%" }),
        ).rejects.toThrow();
      });
    });

    describe("listUnfinished", () => {
      it("lists every tenant's live invocations, oldest first", async () => {
        await createMany(store, [
          { id: "q", tenant: "a", state: "queued", createdAt: T0 + 3 },
          { id: "r", tenant: "b", state: "running", createdAt: T0 + 1 },
          {
            id: "w",
            tenant: "a",
            state: "waiting_for_input",
            createdAt: T0 + 2,
          },
          { id: "s", state: "succeeded", createdAt: T0 },
          { id: "f", state: "failed", createdAt: T0 },
          { id: "c", state: "cancelled", createdAt: T0 },
        ]);
        const ids = async () => (await store.listUnfinished()).map((i) => i.id);

        expect(await ids()).toEqual(["r", "w", "q"]);
        await store.write([{ invocationId: "w", set: { state: "cancelled" } }]);
        expect(await ids()).toEqual(["r", "q"]);
      });
    });

    describe("lifecycle", () => {
      it("answers ping and can be closed twice", async () => {
        await expect(store.ping()).resolves.toBeUndefined();
        await store.close();
        await store.close();
      });
    });
  });
}

/** A new invocation in tenant t1 with its start task and started event. */
function newInvocation(over: Partial<InvocationRecord> = {}): NewInvocation {
  const id = over.id ?? randomUUID();
  const createdAt = over.createdAt ?? T0;
  const invocation: InvocationRecord = {
    id,
    tenant: "t1",
    agent: "echo",
    state: "queued",
    input: { text: "hi" },
    metadata: {},
    onDisconnect: "continue",
    lastSequence: 1,
    createdAt,
    updatedAt: createdAt,
    ...over,
  };
  return {
    invocation,
    startTask: {
      invocationId: id,
      taskId: taskIdOf(id),
      node: "start",
      input: invocation.input,
      state: "pending",
      attempt: 0,
      createdAt,
    },
    started: event(id, 1, { type: "started", invocation }, createdAt),
  };
}

async function created(
  store: Store,
  over: Partial<InvocationRecord> = {},
): Promise<NewInvocation> {
  const init = newInvocation(over);
  const result = await store.createInvocation(init);
  expect(result.created).toBe(true);
  return init;
}

async function createMany(
  store: Store,
  specs: Partial<InvocationRecord>[],
): Promise<string[]> {
  const ids: string[] = [];
  for (const spec of specs) {
    ids.push((await created(store, spec)).invocation.id);
  }
  return ids;
}

async function pageAll(
  store: Store,
  query: { tenant: string; agent?: string },
  limit: number,
): Promise<{ ids: string[]; pages: number[] }> {
  const ids: string[] = [];
  const pages: number[] = [];
  let cursor: string | undefined;
  do {
    const page = await store.listInvocations({ ...query, limit, cursor });
    pages.push(page.invocations.length);
    ids.push(...page.invocations.map((i) => i.id));
    cursor = page.nextCursor;
    // A store that never ends its cursor would loop forever.
    expect(pages.length).toBeLessThan(100);
  } while (cursor !== undefined);
  return { ids, pages };
}

function taskIdOf(invocationId: string): string {
  return `${invocationId}:start`;
}

function event(
  invocationId: string,
  sequence: number,
  body: EventBody = { type: "input_provided", requestId: `r${sequence}` },
  time = T0 + sequence,
): StoredEvent {
  return { invocationId, sequence, time, body };
}

function task(
  invocationId: string,
  taskId: string,
  createdAt = T0,
): TaskRecord {
  return {
    invocationId,
    taskId,
    node: "count",
    input: { part: taskId },
    state: "pending",
    attempt: 0,
    createdAt,
  };
}

function inputRequest(
  invocationId: string,
  requestId: string,
): InputRequestRecord {
  return {
    invocationId,
    requestId,
    taskId: taskIdOf(invocationId),
    node: "approve",
    prompt: `answer ${requestId}`,
    schema: { type: "boolean" },
    state: "pending",
    createdAt: T0,
  };
}
