import type { Context } from "@opentelemetry/api";
import type { InvocationChange } from "../store/store.js";
import type { InvocationRecord } from "../store/types.js";

/**
 * What the runtime tells telemetry about one run of one invocation, from
 * its start (or its resumption after a restart) to its end or to the
 * gateway stopping. Tracing and metrics implement it; the runtime knows
 * neither. Implementations must not throw.
 */
export interface RunObserver {
  /** The trace id to record on a new invocation; undefined records none. */
  readonly traceId: string | undefined;
  /**
   * Sees every change of the invocation as the runtime writes it: the
   * `started` event of a new one, node events, chunks, input requests,
   * state changes and the terminal event.
   */
  change(change: Omit<InvocationChange, "invocationId">): void;
  /**
   * The run stopped without an end because the gateway is stopping or a
   * write failed; the invocation resumes at the next start.
   */
  stopped(): void;
}

/** How a run begins. */
export type RunStart =
  | {
      resumed: false;
      /** The caller's trace context (the RPC span), if it has one. */
      traceContext?: Context;
    }
  | { resumed: true };

/**
 * Hands out a RunObserver per run. `begin` for a new invocation is called
 * before it is stored, so the observer's trace id can be stored with it; a
 * start that turns out to repeat an idempotency key abandons its observer
 * without another call.
 */
export interface RuntimeObserver {
  begin(invocation: InvocationRecord, start: RunStart): RunObserver;
}

const quietRun: RunObserver = {
  traceId: undefined,
  change() {},
  stopped() {},
};

/** Observes nothing: the runtime's default. */
export const noObserver: RuntimeObserver = { begin: () => quietRun };

/**
 * One observer made of several; the trace id is the first one that has
 * one.
 */
export function combineObservers(...observers: RuntimeObserver[]): RuntimeObserver {
  return {
    begin(invocation, start) {
      const runs = observers.map((o) => o.begin(invocation, start));
      return {
        traceId: runs.find((r) => r.traceId !== undefined)?.traceId,
        change(change) {
          for (const run of runs) run.change(change);
        },
        stopped() {
          for (const run of runs) run.stopped();
        },
      };
    },
  };
}
