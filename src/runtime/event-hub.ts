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
  private wake: ((woke: boolean) => void) | undefined;
  // A watcher waits once per event: one timer and one abort listener per
  // subscription, re-armed at each wait, cost less than new ones each time.
  private quietTimer: NodeJS.Timeout | undefined;
  private quietMs = 0;
  private signal: AbortSignal | undefined;
  private readonly onAbort = () => this.settle(false);
  private readonly onQuiet = () => this.settle(false);

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
    this.settle(true);
  }

  /**
   * Waits up to `quietMs` for the next delivery. What was published before
   * the signal fired is delivered first: a gateway that shuts down right
   * after an invocation's last event still sends it.
   */
  async next(quietMs: number, signal: AbortSignal): Promise<Delivery> {
    for (;;) {
      if (this.overflowed) {
        this.overflowed = false;
        return { kind: "overflow" };
      }
      const event = this.buffer.shift();
      if (event) return { kind: "event", event };
      if (signal.aborted) return { kind: "aborted" };
      const woke = await this.waitForPush(quietMs, signal);
      if (!woke) return signal.aborted ? { kind: "aborted" } : { kind: "quiet" };
    }
  }

  close(): void {
    this.buffer = [];
    clearTimeout(this.quietTimer);
    this.signal?.removeEventListener("abort", this.onAbort);
    this.unsubscribe();
  }

  /** Resolves true on a push, false on `ms` of quiet or the signal. */
  private waitForPush(ms: number, signal: AbortSignal): Promise<boolean> {
    if (signal !== this.signal) {
      this.signal?.removeEventListener("abort", this.onAbort);
      signal.addEventListener("abort", this.onAbort, { once: true });
      this.signal = signal;
    }
    // The quiet time counts from now; a timer that fired while nobody
    // waited is armed again (refresh() does both).
    if (this.quietTimer && ms === this.quietMs) {
      this.quietTimer.refresh();
    } else {
      clearTimeout(this.quietTimer);
      this.quietTimer = setTimeout(this.onQuiet, ms);
      this.quietMs = ms;
    }
    return new Promise((resolve) => (this.wake = resolve));
  }

  private settle(woke: boolean): void {
    const wake = this.wake;
    if (!wake) return;
    this.wake = undefined;
    wake(woke);
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
