import type { InvocationChange, Store } from "../store/store.js";
import type { EventHub } from "./event-hub.js";

interface Pending {
  change: InvocationChange;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/**
 * Group commit: every change enqueued while one write is under way, or in
 * the same task, goes to the store in one write (the SQLite store also
 * commits every write of one turn of the event loop in one transaction),
 * then its events are published. So an event is never seen before it is
 * stored, and a burst of chunks costs one commit, not one each.
 */
export class CommitQueue {
  private pending: Pending[] = [];
  private flushing: Promise<void> | undefined;
  private scheduled = false;

  constructor(
    private readonly store: Store,
    private readonly hub: EventHub,
    private readonly maxBatch = 2048,
  ) {}

  /** Resolves once the change is stored and its events are published. */
  enqueue(change: InvocationChange): Promise<void> {
    return new Promise((resolve, reject) => {
      this.pending.push({ change, resolve, reject });
      this.schedule();
    });
  }

  /** Resolves when everything enqueued so far is written (or failed). */
  async drain(): Promise<void> {
    while (this.pending.length > 0 || this.flushing || this.scheduled) {
      await (this.flushing ?? new Promise((r) => setImmediate(r)));
    }
  }

  private schedule(): void {
    if (this.scheduled || this.flushing) return;
    this.scheduled = true;
    const run = () => {
      this.scheduled = false;
      this.flushing = this.flush().finally(() => {
        this.flushing = undefined;
        if (this.pending.length > 0) this.schedule();
      });
    };
    // A microtask, not setImmediate: the store groups writes of one turn
    // of the event loop itself (see createSqliteStore), and a second wait
    // for the next turn here would only add latency to every commit.
    queueMicrotask(run);
  }

  private async flush(): Promise<void> {
    const batch = this.pending.splice(0, this.maxBatch);
    try {
      await this.store.write(batch.map((p) => p.change));
    } catch (error) {
      if (batch.length === 1) {
        batch[0]?.reject(error);
        return;
      }
      // One bad change must not fail the others' invocations: retry them
      // one transaction each, so only the bad one is refused.
      for (const p of batch) await this.writeAlone(p);
      return;
    }
    for (const p of batch) this.publish(p);
  }

  private async writeAlone(p: Pending): Promise<void> {
    try {
      await this.store.write([p.change]);
    } catch (error) {
      p.reject(error);
      return;
    }
    this.publish(p);
  }

  private publish({ change, resolve }: Pending): void {
    for (const event of change.events ?? []) this.hub.publish(event);
    const state = change.set?.state;
    if (state) this.hub.publishState(change.invocationId, state);
    resolve();
  }
}
