import {
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  TraceFlags,
  isSpanContextValid,
  isValidTraceId,
  trace,
  type Attributes,
  type Link,
  type Span,
} from "@opentelemetry/api";
import type { RunObserver, RunStart, RuntimeObserver } from "../runtime/observer.js";
import type { InvocationChange } from "../store/store.js";
import type { InvocationRecord, StoredEvent } from "../store/types.js";
import {
  ERROR_TYPE,
  EVENT_SEQUENCE,
  GEN_AI_AGENT_DESCRIPTION,
  GEN_AI_AGENT_ID,
  GEN_AI_AGENT_NAME,
  GEN_AI_OPERATION_NAME,
  INPUT_REQUEST_ID,
  INTERRUPTED,
  INVOCATION_ID,
  INVOCATION_RESUMED,
  INVOCATION_STATE,
  NODE_ATTEMPT,
  NODE_EMITTED_TO,
  NODE_NAME,
  TASK_ID,
  TENANT,
} from "./attributes.js";
import { spanIdOf, type Tracing } from "./tracing.js";

export interface InvocationTracingOptions {
  /**
   * The description of an agent by name, for `gen_ai.agent.description`.
   * @default none: the attribute is left out
   */
  describeAgent?: (agent: string) => string | undefined;
}

/**
 * Traces invocations: a span `invoke_agent <agent>` per run (the GenAI
 * conventions' invoke agent internal span), a child span per node attempt,
 * and chunks and input requests as span events. A new invocation's span is
 * a child of the RPC that started it; a resumed one starts a new trace
 * linked to the first.
 *
 * `gen_ai.conversation.id` is left out: an invocation is one run of a
 * graph, not a conversation, and nothing groups invocations into one; the
 * invocation id is `agent_gateway.invocation.id`.
 */
export function traceInvocations(
  tracing: Tracing,
  options: InvocationTracingOptions = {},
): RuntimeObserver {
  return {
    begin: (invocation, start) =>
      new InvocationTrace(
        tracing,
        invocation,
        start,
        options.describeAgent?.(invocation.agent),
      ),
  };
}

class InvocationTrace implements RunObserver {
  readonly traceId: string | undefined;
  private readonly span: Span;
  /** Open node attempts, by task id. */
  private readonly nodes = new Map<string, Span>();
  /** The node span that asked each input request, by request id. */
  private readonly asked = new Map<string, Span>();
  private readonly agent: string;
  private ended = false;

  constructor(
    private readonly tracing: Tracing,
    invocation: InvocationRecord,
    start: RunStart,
    description: string | undefined,
  ) {
    this.agent = invocation.agent;
    const name = `invoke_agent ${invocation.agent}`;
    const attributes: Attributes = {
      [GEN_AI_OPERATION_NAME]: "invoke_agent",
      [GEN_AI_AGENT_NAME]: invocation.agent,
      [GEN_AI_AGENT_ID]: invocation.agent,
      [INVOCATION_ID]: invocation.id,
      [TENANT]: invocation.tenant,
    };
    if (description) attributes[GEN_AI_AGENT_DESCRIPTION] = description;
    // In-process agents: INTERNAL, as the GenAI conventions ask.
    if (start.resumed) {
      attributes[INVOCATION_RESUMED] = true;
      this.span = tracing.tracer.startSpan(
        name,
        { kind: SpanKind.INTERNAL, attributes, links: earlierRun(invocation), root: true },
        ROOT_CONTEXT,
      );
    } else {
      this.span = tracing.startSpanWithId(
        spanIdOf(invocation.id),
        name,
        { kind: SpanKind.INTERNAL, attributes },
        start.traceContext ?? ROOT_CONTEXT,
      );
    }
    const context = this.span.spanContext();
    this.traceId = isSpanContextValid(context) ? context.traceId : undefined;
  }

  change(change: Omit<InvocationChange, "invocationId">): void {
    if (this.ended) return;
    for (const event of change.events ?? []) this.event(event);
  }

  stopped(): void {
    if (this.ended) return;
    this.ended = true;
    for (const span of this.nodes.values()) {
      span.setAttribute(INTERRUPTED, true);
      span.end();
    }
    this.nodes.clear();
    this.span.setAttribute(INTERRUPTED, true);
    this.span.end();
  }

  private event({ body, sequence }: StoredEvent): void {
    switch (body.type) {
      case "node_started": {
        this.nodes.get(body.taskId)?.end();
        const span = this.tracing.tracer.startSpan(
          `node ${body.node}`,
          {
            kind: SpanKind.INTERNAL,
            attributes: {
              [GEN_AI_AGENT_NAME]: this.agent,
              [NODE_NAME]: body.node,
              [TASK_ID]: body.taskId,
              [NODE_ATTEMPT]: body.attempt,
            },
          },
          trace.setSpan(ROOT_CONTEXT, this.span),
        );
        this.nodes.set(body.taskId, span);
        return;
      }
      case "chunk": {
        const span = this.nodes.get(body.taskId) ?? this.span;
        // Chunks are the hot path; skip building attributes for nothing.
        if (span.isRecording()) span.addEvent("chunk", { [EVENT_SEQUENCE]: sequence });
        return;
      }
      case "node_finished": {
        const span = this.nodes.get(body.taskId);
        if (!span) return;
        span.setAttribute(NODE_EMITTED_TO, body.emittedTo);
        span.end();
        this.nodes.delete(body.taskId);
        return;
      }
      case "node_retrying": {
        const span = this.nodes.get(body.taskId);
        if (!span) {
          // The attempt ran before a restart, in the earlier run's trace.
          this.span.addEvent("node_interrupted", {
            [NODE_NAME]: body.node,
            [TASK_ID]: body.taskId,
            [NODE_ATTEMPT]: body.attempt,
          });
          return;
        }
        span.setAttribute(ERROR_TYPE, "node_failed");
        span.setStatus({ code: SpanStatusCode.ERROR, message: body.error });
        span.end();
        this.nodes.delete(body.taskId);
        return;
      }
      case "input_requested": {
        // Request ids are `<task id>.<n>` (see Execution.requestInput).
        const taskId = body.requestId.slice(0, body.requestId.lastIndexOf("."));
        const span = this.nodes.get(taskId) ?? this.span;
        this.asked.set(body.requestId, span);
        span.addEvent("input_requested", {
          [INPUT_REQUEST_ID]: body.requestId,
          [EVENT_SEQUENCE]: sequence,
        });
        return;
      }
      case "input_provided": {
        const span = this.asked.get(body.requestId) ?? this.span;
        this.asked.delete(body.requestId);
        span.addEvent("input_provided", {
          [INPUT_REQUEST_ID]: body.requestId,
          [EVENT_SEQUENCE]: sequence,
        });
        return;
      }
      case "completed":
        this.end("succeeded");
        return;
      case "failed":
        this.end("failed", { code: body.code, message: body.message });
        return;
      case "cancelled":
        this.span.addEvent("cancelled", { "agent_gateway.cancel.reason": body.reason });
        this.end("cancelled");
        return;
      default:
        return;
    }
  }

  /** Ends the run: open node spans end with it, failed if it failed. */
  private end(state: string, error?: { code: string; message: string }): void {
    this.ended = true;
    for (const span of this.nodes.values()) {
      if (error) span.setStatus({ code: SpanStatusCode.ERROR, message: error.message });
      span.end();
    }
    this.nodes.clear();
    this.span.setAttribute(INVOCATION_STATE, state);
    if (error) {
      this.span.setAttribute(ERROR_TYPE, error.code);
      this.span.setStatus({ code: SpanStatusCode.ERROR, message: error.message });
    }
    this.span.end();
  }
}

/**
 * The link of a resumed run to the first run's span: its trace id is
 * stored, its span id derived from the invocation id.
 */
function earlierRun(invocation: InvocationRecord): Link[] {
  const traceId = invocation.traceId;
  if (!traceId || !isValidTraceId(traceId)) return [];
  return [
    {
      context: {
        traceId,
        spanId: spanIdOf(invocation.id),
        traceFlags: TraceFlags.NONE,
        isRemote: true,
      },
      attributes: { [INVOCATION_ID]: invocation.id },
    },
  ];
}
