import { expect } from "vitest";
import type { Event } from "../../gen/agent/v1/agent_pb.js";

import { plain as json } from "./calls.js";

export { value, plain as json } from "./calls.js";

export type Kind = NonNullable<Event["kind"]["case"]>;

export function isTerminal(event: Event): boolean {
  const kind = event.kind.case;
  return kind === "completed" || kind === "failed" || kind === "cancelled";
}

/**
 * Reads a stream of `{event}` messages to its end, leaving heartbeats out.
 * `onEvent` sees each event as it arrives; the next one is read once it
 * has returned (or its promise has settled), so it can read slowly.
 */
export async function collect(
  stream: AsyncIterable<{ event?: Event }>,
  onEvent?: (event: Event, all: Event[]) => void | Promise<void>,
): Promise<Event[]> {
  const events: Event[] = [];
  for await (const { event } of stream) {
    if (!event || event.kind.case === "heartbeat") continue;
    events.push(event);
    await onEvent?.(event, events);
  }
  return events;
}

export function sequences(events: Event[]): number[] {
  return events.map((e) => Number(e.sequence));
}

/** 1, 2 ... n (or from `first`): every number once, in order. */
export function range(first: number, last: number): number[] {
  return Array.from({ length: last - first + 1 }, (_, i) => first + i);
}

/**
 * Asserts that the events are the whole log of one invocation: sequences
 * first..n with no gap and no duplicate, ending with its terminal event.
 */
export function expectWholeLog(
  events: Event[],
  options: { first?: number; end?: Kind } = {},
): void {
  const first = options.first ?? 1;
  const last = events.at(-1);
  expect(last?.kind.case).toBe(options.end ?? "completed");
  expect(sequences(events)).toEqual(range(first, Number(last!.sequence)));
  expect(events.filter(isTerminal)).toHaveLength(1);
  expect(new Set(events.map((e) => e.invocationId)).size).toBe(1);
}

/** The events of one kind, narrowed to it. */
export function ofKind<K extends Kind>(
  events: Event[],
  kind: K,
): (Event & { kind: Extract<Event["kind"], { case: K }> })[] {
  return events.filter((e) => e.kind.case === kind) as never;
}

/** The `tick` numbers of a ticker's chunks, in the order they came. */
export function ticks(events: Event[]): number[] {
  return ofKind(events, "chunk").map((e) => {
    const data = json(e.kind.value.data) as { tick: number };
    return data.tick;
  });
}
