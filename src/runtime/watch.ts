import type { Store } from "../store/store.js";
import { isTerminalEvent, type StoredEvent } from "../store/types.js";
import type { EventHub } from "./event-hub.js";

/** Sent on a stream that has been quiet; never stored. */
export interface Heartbeat {
  heartbeat: true;
  /** The sequence of the last event sent on this stream. */
  lastSequence: number;
  time: number;
}

export interface WatchOptions {
  store: Store;
  hub: EventHub;
  invocationId: string;
  /** Events after this sequence are sent; 0 sends them all. */
  afterSequence: number;
  /** Ends the watch when it fires. */
  signal: AbortSignal;
  /** A heartbeat follows this much quiet. */
  heartbeatMs: number;
  /** Live events buffered for a slow watcher before it reads the store. */
  bufferSize: number;
  /** Events read from the store at a time. */
  pageSize?: number;
}

/**
 * Every event of an invocation after `afterSequence`, in order, with no gap
 * and no duplicate: stored events first, then live ones, ending after the
 * terminal event (or when the signal fires, once it has sent the events
 * already stored or published then).
 *
 * Why there is no gap: the subscription opens before the store is read, and
 * events are published only after they are stored. So an event is either
 * already in the store when it is read, or arrives through the subscription
 * (or both, and the sequence drops the copy).
 */
export async function* watchEvents(
  options: WatchOptions,
): AsyncGenerator<StoredEvent | Heartbeat> {
  const { store, hub, invocationId, signal, heartbeatMs } = options;
  const pageSize = options.pageSize ?? 512;
  const subscription = hub.subscribe(invocationId, options.bufferSize);
  let last = options.afterSequence;
  try {
    for (;;) {
      // Catch up from the store until it has nothing newer.
      for (;;) {
        const page = await store.readEvents(invocationId, last, pageSize);
        // Not stopped by the signal: what is stored is sent (see
        // Subscription.next); a client that has gone ends the stream anyway.
        for (const event of page) {
          yield event;
          last = event.sequence;
          if (isTerminalEvent(event.body)) return;
        }
        if (page.length < pageSize) break;
      }
      // Then follow the live events until the watcher falls behind.
      for (;;) {
        const delivery = await subscription.next(heartbeatMs, signal);
        if (delivery.kind === "aborted") return;
        if (delivery.kind === "overflow") break;
        if (delivery.kind === "quiet") {
          yield { heartbeat: true, lastSequence: last, time: Date.now() };
          continue;
        }
        const { event } = delivery;
        if (event.sequence <= last) continue;
        // A sequence beyond the next one means live events were missed
        // while reading the store: the store has them.
        if (event.sequence > last + 1) break;
        yield event;
        last = event.sequence;
        if (isTerminalEvent(event.body)) return;
      }
    }
  } finally {
    subscription.close();
  }
}
