/**
 * Where a gateway is in its life. It only moves forward:
 * - `starting`: resuming stored invocations, not bound yet;
 * - `serving`: bound and taking every request;
 * - `draining`: shutting down: not ready, new invocations refused, running
 *   ones given the grace period, reads and streams still answered;
 * - `stopped`: the port is closed and the store too.
 */
export type LifecycleState = "starting" | "serving" | "draining" | "stopped";

const ORDER: readonly LifecycleState[] = ["starting", "serving", "draining", "stopped"];

type Listener = (state: LifecycleState) => void;

/**
 * The lifecycle state of one gateway, with listeners for its changes
 * (health Watch streams). Readiness is derived from it: only `serving` is
 * ready.
 */
export class Lifecycle {
  private current: LifecycleState = "starting";
  private readonly listeners = new Set<Listener>();

  get state(): LifecycleState {
    return this.current;
  }

  /**
   * Moves to `next`. Moving backwards or to the same state does nothing and
   * returns false, so a second shutdown cannot make a draining gateway look
   * ready again.
   */
  advance(next: LifecycleState): boolean {
    if (ORDER.indexOf(next) <= ORDER.indexOf(this.current)) return false;
    this.current = next;
    for (const listener of [...this.listeners]) listener(next);
    return true;
  }

  /** Calls `listener` on every change until the returned function is called. */
  onChange(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }
}
