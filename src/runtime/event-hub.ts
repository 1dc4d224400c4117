import type { InvocationState, StoredEvent } from "../store/types.js";

/** What a subscription yields while it waits: an event, or why it woke. */
export type Delivery =
  | { kind: "event"; event: StoredEvent }
  | { kind: "quiet" }
  | { kind: "overflow" }
  | { kind: "aborted" };

/**
 * Live events of one invocation for one watcher. The buffer is bounded:
 * when the watcher falls behind, the buffer is dropped and the watcher is
 * told to catch up from the store, so a slow client never grows memory.
 */
export class Subscription {
  private buffer: StoredEvent[] = [];
  private overflowed = false;
  private wake: (() => void) | undefined;

  constructor(
    private readonly capacity: number,
    private readonly unsubscribe: () => void,
  ) {}

  /** Called by the hub; never blocks. */
  push(event: StoredEvent): void {
    if (this.overflowed) return;
    if (this.buffer.length >= this.capacity) {
      this.overflowed = true;
      this.buffer = [];
    } else {
      this.buffer.push(event);
    }
    this.wake?.();
  }

  /** Waits up to `quietMs` for the next delivery. */
  async next(quietMs: number, signal: AbortSignal): Promise<Delivery> {
    for (;;) {
      if (signal.aborted) return { kind: "aborted" };
      if (this.overflowed) {
        this.overflowed = false;
        return { kind: "overflow" };
      }
      const event = this.buffer.shift();
      if (event) return { kind: "event", event };
      const woke = await this.waitForPush(quietMs, signal);
      if (!woke) return signal.aborted ? { kind: "aborted" } : { kind: "quiet" };
    }
  }

  close(): void {
    this.buffer = [];
    this.unsubscribe();
  }

  private waitForPush(ms: number, signal: AbortSignal): Promise<boolean> {
    return new Promise((resolve) => {
      const done = (woke: boolean) => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        this.wake = undefined;
        resolve(woke);
      };
      const onAbort = () => done(false);
      const timer = setTimeout(() => done(false), ms);
      signal.addEventListener("abort", onAbort, { once: true });
      this.wake = () => done(true);
    });
  }
}

type StateListener = (state: InvocationState) => void;

/**
 * Fans committed events and state changes out to the watchers in this
 * process. Only the commit queue publishes, and only after a commit.
 */
export class EventHub {
  private readonly subscriptions = new Map<string, Set<Subscription>>();
  private readonly stateListeners = new Map<string, Set<StateListener>>();

  /** How many event subscriptions are open, over all invocations. */
  get size(): number {
    let n = 0;
    for (const set of this.subscriptions.values()) n += set.size;
    return n;
  }

  subscribe(invocationId: string, capacity: number): Subscription {
    const set = this.subscriptions.get(invocationId) ?? new Set();
    this.subscriptions.set(invocationId, set);
    const subscription: Subscription = new Subscription(capacity, () => {
      set.delete(subscription);
      if (set.size === 0) this.subscriptions.delete(invocationId);
    });
    set.add(subscription);
    return subscription;
  }

  /** Calls `listener` on every state change until the returned function. */
  onState(invocationId: string, listener: StateListener): () => void {
    const set = this.stateListeners.get(invocationId) ?? new Set();
    this.stateListeners.set(invocationId, set);
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.stateListeners.delete(invocationId);
    };
  }

  publish(event: StoredEvent): void {
    const set = this.subscriptions.get(event.invocationId);
    if (set) for (const subscription of set) subscription.push(event);
  }

  publishState(invocationId: string, state: InvocationState): void {
    const set = this.stateListeners.get(invocationId);
    if (set) for (const listener of [...set]) listener(state);
  }
}
