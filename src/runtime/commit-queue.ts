import type { InvocationChange, Store } from "../store/store.js";
import type { EventHub } from "./event-hub.js";

/**
 * Write first, then publish: each change goes to the store as a write of
 * its own, and its events are published once it is stored. The store
 * group-commits writes made close together (the SQLite store: all of one
 * turn of the event loop, or made while a commit is under way, share one
 * transaction) and settles them in the order they were made, so events
 * are published in order and a burst of chunks costs one commit, not one
 * each. A failing change is refused alone.
 */
export class CommitQueue {
  private readonly inFlight = new Set<Promise<void>>();

  constructor(
    private readonly store: Store,
    private readonly hub: EventHub,
  ) {}

  /** Resolves once the change is stored and its events are published. */
  enqueue(change: InvocationChange): Promise<void> {
    const stored = this.store.write([change]).then(() => this.publish(change));
    const tracked = stored.catch(() => undefined);
    this.inFlight.add(tracked);
    void tracked.then(() => this.inFlight.delete(tracked));
    return stored;
  }

  /** Resolves when everything enqueued so far is written (or failed). */
  async drain(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.all(this.inFlight);
  }

  private publish(change: InvocationChange): void {
    for (const event of change.events ?? []) this.hub.publish(event);
    const state = change.set?.state;
    if (state) this.hub.publishState(change.invocationId, state);
  }
}
