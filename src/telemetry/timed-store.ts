import type { Store } from "../store/store.js";
import type { GatewayMetrics } from "./metrics.js";

/**
 * The store with every operation timed into
 * `agent_gateway_store_operation_duration_seconds`. Listing each method
 * makes a new Store method a compile error here until it is timed too.
 */
export function timeStore(store: Store, metrics: GatewayMetrics): Store {
  const timed =
    <A extends unknown[], R>(operation: keyof Store, run: (...args: A) => Promise<R>) =>
    async (...args: A): Promise<R> => {
      const end = metrics.storeDuration.startTimer({ operation });
      try {
        const result = await run(...args);
        end({ outcome: "ok" });
        return result;
      } catch (error) {
        end({ outcome: "error" });
        throw error;
      }
    };
  return {
    createInvocation: timed("createInvocation", (init) => store.createInvocation(init)),
    write: timed("write", (changes) => store.write(changes)),
    getInvocation: timed("getInvocation", (id) => store.getInvocation(id)),
    findByIdempotencyKey: timed("findByIdempotencyKey", (tenant, key) =>
      store.findByIdempotencyKey(tenant, key),
    ),
    listInvocations: timed("listInvocations", (query) => store.listInvocations(query)),
    listUnfinished: timed("listUnfinished", () => store.listUnfinished()),
    readEvents: timed("readEvents", (id, after, limit) => store.readEvents(id, after, limit)),
    listTasks: timed("listTasks", (id) => store.listTasks(id)),
    listInputRequests: timed("listInputRequests", (id) => store.listInputRequests(id)),
    ping: timed("ping", () => store.ping()),
    close: timed("close", () => store.close()),
  };
}
