import type { RunObserver, RunStart, RuntimeObserver } from "../runtime/observer.js";
import type { InvocationChange } from "../store/store.js";
import type { InvocationRecord, InvocationState } from "../store/types.js";
import type { GatewayMetrics } from "./metrics.js";

/**
 * Counts invocations and times node attempts from what the runtime writes:
 * started, resumed and finished invocations, the running and waiting
 * gauges, and node durations.
 */
export function meterInvocations(metrics: GatewayMetrics): RuntimeObserver {
  return { begin: (invocation, start) => new InvocationMeter(metrics, invocation, start) };
}

type Gauged = "running" | "waiting" | undefined;

class InvocationMeter implements RunObserver {
  readonly traceId = undefined;
  private readonly agent: string;
  /** Which gauge counts this invocation now. */
  private gauged: Gauged;
  /** When each open node attempt began (performance.now()), by task id. */
  private readonly attempts = new Map<string, { node: string; since: number }>();
  private ended = false;

  constructor(
    private readonly metrics: GatewayMetrics,
    invocation: InvocationRecord,
    start: RunStart,
  ) {
    this.agent = invocation.agent;
    if (start.resumed) metrics.invocationsResumed.inc({ agent: this.agent });
  }

  change(change: Omit<InvocationChange, "invocationId">): void {
    if (this.ended) return;
    for (const { body } of change.events ?? []) {
      switch (body.type) {
        case "started":
          this.metrics.invocationsStarted.inc({ agent: this.agent });
          break;
        case "node_started":
          this.attempts.set(body.taskId, { node: body.node, since: performance.now() });
          break;
        case "node_finished":
          this.attemptEnded(body.taskId, "ok");
          break;
        case "node_retrying":
          this.attemptEnded(body.taskId, "error");
          break;
        default:
          break;
      }
    }
    const state = change.set?.state;
    if (state) this.state(state);
  }

  stopped(): void {
    if (this.ended) return;
    this.ended = true;
    this.gauge(undefined);
  }

  private state(state: InvocationState): void {
    if (state === "succeeded" || state === "failed" || state === "cancelled") {
      this.ended = true;
      const outcome = state === "succeeded" ? "ok" : state === "failed" ? "error" : "cancelled";
      for (const taskId of [...this.attempts.keys()]) this.attemptEnded(taskId, outcome);
      this.gauge(undefined);
      this.metrics.invocationsFinished.inc({ agent: this.agent, state });
      return;
    }
    // A queued invocation is about to run: it waits for no one.
    this.gauge(state === "waiting_for_input" ? "waiting" : "running");
  }

  private gauge(to: Gauged): void {
    if (to === this.gauged) return;
    const labels = { agent: this.agent };
    if (this.gauged === "running") this.metrics.invocationsRunning.dec(labels);
    if (this.gauged === "waiting") this.metrics.invocationsWaiting.dec(labels);
    if (to === "running") this.metrics.invocationsRunning.inc(labels);
    if (to === "waiting") this.metrics.invocationsWaiting.inc(labels);
    this.gauged = to;
  }

  private attemptEnded(taskId: string, outcome: "ok" | "error" | "cancelled"): void {
    const attempt = this.attempts.get(taskId);
    // An attempt interrupted by a restart began in the earlier process.
    if (!attempt) return;
    this.attempts.delete(taskId);
    this.metrics.nodeDuration.observe(
      { agent: this.agent, node: attempt.node, outcome },
      (performance.now() - attempt.since) / 1000,
    );
  }
}
