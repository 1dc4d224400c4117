import { create, fromJson, toJson, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import {
  DurationSchema,
  ValueSchema,
  timestampFromMs,
  type Duration,
  type Value,
} from "@bufbuild/protobuf/wkt";
import {
  AgentSchema,
  EventSchema,
  Event_CancelledSchema,
  Event_ChunkSchema,
  Event_CompletedSchema,
  Event_FailedSchema,
  Event_HeartbeatSchema,
  Event_InputProvidedSchema,
  Event_InputRequestedSchema,
  Event_NodeFinishedSchema,
  Event_NodeRetryingSchema,
  Event_NodeStartedSchema,
  Event_StartedSchema,
  InputRequestSchema,
  InvocationErrorSchema,
  InvocationSchema,
  InvocationState as ProtoState,
  OnDisconnect as ProtoOnDisconnect,
  type Agent,
  type Event,
  type InputRequest,
  type Invocation,
} from "../../gen/agent/v1/agent_pb.js";
import type { AgentInfo } from "../runtime/registry.js";
import type { InvocationView } from "../runtime/runtime.js";
import type { Heartbeat } from "../runtime/watch.js";
import type {
  EventBody,
  InputRequestRecord,
  InvocationRecord,
  InvocationState,
  Json,
  OnDisconnect,
  StoredEvent,
} from "../store/types.js";

/** Records as the wire contract shapes them, and back. */

const STATES: Record<InvocationState, ProtoState> = {
  queued: ProtoState.QUEUED,
  running: ProtoState.RUNNING,
  waiting_for_input: ProtoState.WAITING_FOR_INPUT,
  succeeded: ProtoState.SUCCEEDED,
  failed: ProtoState.FAILED,
  cancelled: ProtoState.CANCELLED,
};

export function stateToProto(state: InvocationState): ProtoState {
  return STATES[state];
}

/** Undefined for UNSPECIFIED or a number this version does not know. */
export function stateFromProto(state: ProtoState): InvocationState | undefined {
  for (const [name, value] of Object.entries(STATES)) {
    if (value === state) return name as InvocationState;
  }
  return undefined;
}

export function onDisconnectFromProto(value: ProtoOnDisconnect): OnDisconnect {
  return value === ProtoOnDisconnect.CANCEL ? "cancel" : "continue";
}

export function jsonToValue(json: Json): Value {
  return fromJson(ValueSchema, json as JsonValue);
}

/** An unset Value reads as an empty object, so `{}` can be left out. */
export function valueToJson(value: Value | undefined): Json {
  if (!value) return {};
  return toJson(ValueSchema, value) as Json;
}

export function durationFromMs(ms: number): Duration {
  const whole = Math.floor(ms);
  return create(DurationSchema, {
    seconds: BigInt(Math.floor(whole / 1000)),
    nanos: Math.round((ms - Math.floor(ms / 1000) * 1000) * 1e6) % 1e9,
  });
}

export function durationToMs(duration: Duration): number {
  return Number(duration.seconds) * 1000 + duration.nanos / 1e6;
}

export function agentToProto(info: AgentInfo): Agent {
  return create(AgentSchema, {
    name: info.name,
    description: info.description,
    inputSchema: info.inputSchema as JsonObject,
    outputSchema: info.outputSchema as JsonObject,
    nodes: info.nodes,
    startNode: info.startNode,
  });
}

function inputRequestToProto(request: InputRequestRecord): InputRequest {
  return create(InputRequestSchema, {
    requestId: request.requestId,
    node: request.node,
    prompt: request.prompt,
    schema: request.schema as JsonObject,
    createTime: timestampFromMs(request.createdAt),
  });
}

export function invocationToProto(
  record: InvocationRecord | InvocationView,
): Invocation {
  return create(InvocationSchema, {
    id: record.id,
    agent: record.agent,
    state: stateToProto(record.state),
    input: jsonToValue(record.input),
    result: record.result === undefined ? undefined : jsonToValue(record.result),
    error: record.error && create(InvocationErrorSchema, record.error),
    createTime: timestampFromMs(record.createdAt),
    updateTime: timestampFromMs(record.updatedAt),
    finishTime:
      record.finishedAt === undefined ? undefined : timestampFromMs(record.finishedAt),
    metadata: record.metadata,
    idempotencyKey: record.idempotencyKey ?? "",
    traceId: record.traceId ?? "",
    lastSequence: BigInt(record.lastSequence),
    pendingInputs:
      "pendingInputs" in record ? record.pendingInputs.map(inputRequestToProto) : [],
    timeout:
      record.timeoutMs === undefined ? undefined : durationFromMs(record.timeoutMs),
    onDisconnect:
      record.onDisconnect === "cancel"
        ? ProtoOnDisconnect.CANCEL
        : ProtoOnDisconnect.CONTINUE,
  });
}

export function heartbeatToProto(invocationId: string, beat: Heartbeat): Event {
  return create(EventSchema, {
    invocationId,
    sequence: 0n,
    time: timestampFromMs(beat.time),
    kind: {
      case: "heartbeat",
      value: create(Event_HeartbeatSchema, {
        lastSequence: BigInt(beat.lastSequence),
        serverTime: timestampFromMs(beat.time),
      }),
    },
  });
}

/**
 * A live event reaches every watcher of its invocation as the same object:
 * it is converted once, not once per watcher. Nothing mutates the result.
 */
const converted = new WeakMap<StoredEvent, Event>();

export function eventToProto(event: StoredEvent): Event {
  let message = converted.get(event);
  if (message === undefined) {
    message = create(EventSchema, {
      invocationId: event.invocationId,
      sequence: BigInt(event.sequence),
      time: timestampFromMs(event.time),
      kind: kindToProto(event.body),
    });
    converted.set(event, message);
  }
  return message;
}

function kindToProto(body: EventBody): Event["kind"] {
  switch (body.type) {
    case "started":
      return {
        case: "started",
        value: create(Event_StartedSchema, {
          invocation: invocationToProto(body.invocation),
        }),
      };
    case "node_started":
      return {
        case: "nodeStarted",
        value: create(Event_NodeStartedSchema, {
          node: body.node,
          taskId: body.taskId,
          attempt: body.attempt,
        }),
      };
    case "chunk":
      return {
        case: "chunk",
        value: create(Event_ChunkSchema, {
          node: body.node,
          taskId: body.taskId,
          attempt: body.attempt,
          data: jsonToValue(body.data),
        }),
      };
    case "node_finished":
      return {
        case: "nodeFinished",
        value: create(Event_NodeFinishedSchema, {
          node: body.node,
          taskId: body.taskId,
          attempt: body.attempt,
          duration: durationFromMs(body.durationMs),
          emittedTo: body.emittedTo,
        }),
      };
    case "node_retrying":
      return {
        case: "nodeRetrying",
        value: create(Event_NodeRetryingSchema, {
          node: body.node,
          taskId: body.taskId,
          attempt: body.attempt,
          error: body.error,
          delay: durationFromMs(body.delayMs),
        }),
      };
    case "input_requested":
      return {
        case: "inputRequested",
        value: create(Event_InputRequestedSchema, {
          requestId: body.requestId,
          node: body.node,
          prompt: body.prompt,
          schema: body.schema as JsonObject,
        }),
      };
    case "input_provided":
      return {
        case: "inputProvided",
        value: create(Event_InputProvidedSchema, { requestId: body.requestId }),
      };
    case "completed":
      return {
        case: "completed",
        value: create(Event_CompletedSchema, {
          result: jsonToValue(body.result),
        }),
      };
    case "failed":
      return {
        case: "failed",
        value: create(Event_FailedSchema, {
          code: body.code,
          message: body.message,
        }),
      };
    case "cancelled":
      return {
        case: "cancelled",
        value: create(Event_CancelledSchema, { reason: body.reason }),
      };
  }
}
