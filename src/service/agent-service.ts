import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  AgentService,
  type InvokeRequest,
  type InvokeStreamRequest,
  type StartInvocationRequest,
} from "../../gen/agent/v1/agent_pb.js";
import type { AgentRegistry } from "../runtime/registry.js";
import type { Runtime, StartRequest } from "../runtime/runtime.js";
import { isTerminalEvent } from "../store/types.js";
import type { Logger } from "../telemetry/logger.js";
import {
  agentToProto,
  durationToMs,
  eventToProto,
  heartbeatToProto,
  invocationToProto,
  onDisconnectFromProto,
  stateFromProto,
  valueToJson,
} from "./convert.js";
import { toConnectError } from "./errors.js";
import { tenantOf } from "./tenant.js";
import { traceContextOf } from "./trace-context.js";

/** The response header that carries the id of a started invocation. */
export const INVOCATION_ID_HEADER = "agent-invocation-id";

const DEFAULT_PAGE_SIZE = 50;
const MAX_PAGE_SIZE = 500;

export interface AgentServiceOptions {
  runtime: Runtime;
  agents: AgentRegistry;
  logger: Logger;
}

/**
 * AgentService on top of the runtime. Typed as the generated service, so a
 * new RPC in the contract is a compile error here until it is implemented.
 */
export function createAgentService(
  options: AgentServiceOptions,
): ServiceImpl<typeof AgentService> {
  const { runtime, agents, logger } = options;

  async function start(
    request: InvokeRequest | StartInvocationRequest | InvokeStreamRequest,
    ctx: HandlerContext,
  ) {
    const { invocation } = await runtime.start(startRequest(request, ctx));
    ctx.responseHeader.set(INVOCATION_ID_HEADER, invocation.id);
    return invocation;
  }

  /** On a CANCEL start, the invocation ends with the RPC that started it. */
  async function cancelOnDisconnect(tenant: string, id: string) {
    await runtime
      .cancel(tenant, id, "the client went away")
      .catch((error: unknown) => logger.warn({ err: error }, "cancel on disconnect failed"));
  }

  const impl: ServiceImpl<typeof AgentService> = {
    listAgents() {
      return { agents: agents.list().map((a) => agentToProto(agents.describe(a))) };
    },

    getAgent(request) {
      const agent = agents.get(request.name);
      if (!agent) {
        throw new ConnectError(`agent ${request.name} not found`, Code.NotFound);
      }
      return { agent: agentToProto(agents.describe(agent)) };
    },

    async invoke(request, ctx) {
      const tenant = tenantOf(ctx);
      const invocation = await start(request, ctx);
      try {
        const view = await runtime.waitUntilSettled(tenant, invocation.id, ctx.signal);
        return { invocation: invocationToProto(view) };
      } catch (error) {
        if (ctx.signal.aborted && invocation.onDisconnect === "cancel") {
          await cancelOnDisconnect(tenant, invocation.id);
        }
        throw error;
      }
    },

    async startInvocation(request, ctx) {
      const invocation = await start(request, ctx);
      return { invocation: invocationToProto(invocation) };
    },

    async *invokeStream(request, ctx) {
      const tenant = tenantOf(ctx);
      const invocation = await start(request, ctx);
      const events = await runtime.watch(tenant, invocation.id, 0, ctx.signal);
      let ended = false;
      try {
        for await (const event of events) {
          if ("heartbeat" in event) {
            yield { event: heartbeatToProto(invocation.id, event) };
            continue;
          }
          ended = isTerminalEvent(event.body);
          yield { event: eventToProto(event) };
        }
        if (!ended) throwServerAbort(ctx);
      } finally {
        if (!ended && invocation.onDisconnect === "cancel") {
          await cancelOnDisconnect(tenant, invocation.id);
        }
      }
    },

    async *watchInvocation(request, ctx) {
      const id = requireId(request.invocationId);
      if (request.afterSequence < 0n) {
        throw new ConnectError("after_sequence must not be negative", Code.InvalidArgument);
      }
      const events = await runtime.watch(
        tenantOf(ctx),
        id,
        Number(request.afterSequence),
        ctx.signal,
      );
      let ended = false;
      for await (const event of events) {
        if (!("heartbeat" in event)) ended = isTerminalEvent(event.body);
        yield {
          event: "heartbeat" in event ? heartbeatToProto(id, event) : eventToProto(event),
        };
      }
      if (!ended) throwServerAbort(ctx);
    },

    async getInvocation(request, ctx) {
      const view = await runtime.get(tenantOf(ctx), requireId(request.invocationId));
      return { invocation: invocationToProto(view) };
    },

    async listInvocations(request, ctx) {
      if (request.pageSize < 0) {
        throw new ConnectError("page_size must not be negative", Code.InvalidArgument);
      }
      const states = request.states.map((state) => {
        const name = stateFromProto(state);
        if (!name) {
          throw new ConnectError(`states: ${state} is not a state`, Code.InvalidArgument);
        }
        return name;
      });
      const page = await runtime.list({
        tenant: tenantOf(ctx),
        agent: request.agent || undefined,
        states: states.length > 0 ? states : undefined,
        limit: Math.min(request.pageSize || DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
        cursor: request.pageToken || undefined,
      });
      return {
        invocations: page.invocations.map(invocationToProto),
        nextPageToken: page.nextCursor ?? "",
      };
    },

    async cancelInvocation(request, ctx) {
      const view = await runtime.cancel(
        tenantOf(ctx),
        requireId(request.invocationId),
        request.reason,
      );
      return { invocation: invocationToProto(view) };
    },

    async provideInput(request, ctx) {
      if (!request.requestId) {
        throw new ConnectError("request_id is required", Code.InvalidArgument);
      }
      const view = await runtime.provideInput(
        tenantOf(ctx),
        requireId(request.invocationId),
        request.requestId,
        request.value ? valueToJson(request.value) : null,
      );
      return { invocation: invocationToProto(view) };
    },
  };
  return withErrorMapping(impl, logger);
}

function startRequest(
  request: InvokeRequest | StartInvocationRequest | InvokeStreamRequest,
  ctx: HandlerContext,
): StartRequest {
  if (!request.agent) {
    throw new ConnectError("agent is required", Code.InvalidArgument);
  }
  return {
    tenant: tenantOf(ctx),
    agent: request.agent,
    input: valueToJson(request.input),
    idempotencyKey: request.idempotencyKey || undefined,
    timeoutMs: request.timeout ? durationToMs(request.timeout) : undefined,
    metadata: request.metadata,
    onDisconnect: onDisconnectFromProto(request.onDisconnect),
    traceContext: traceContextOf(ctx),
  };
}

/**
 * A progress stream that stops before the invocation's end because the
 * server aborted the RPC (its deadline passed, or the gateway is shutting
 * down: UNAVAILABLE) ends with that error, not OK, so that the client
 * knows the log is not complete and watches again after its last sequence.
 */
function throwServerAbort(ctx: HandlerContext): void {
  if (ctx.signal.aborted && ctx.signal.reason instanceof ConnectError) {
    throw ctx.signal.reason;
  }
}

function requireId(id: string): string {
  if (!id) throw new ConnectError("invocation_id is required", Code.InvalidArgument);
  return id;
}

/**
 * Wraps every method so that what it throws reaches the client with the
 * right code (see toConnectError), for unary and streaming methods alike.
 */
function withErrorMapping(
  impl: ServiceImpl<typeof AgentService>,
  logger: Logger,
): ServiceImpl<typeof AgentService> {
  const wrapped: Record<string, unknown> = {};
  for (const method of AgentService.methods) {
    const fn = impl[method.localName as keyof typeof impl] as (
      ...args: unknown[]
    ) => unknown;
    if (method.methodKind === "server_streaming") {
      wrapped[method.localName] = async function* (...args: unknown[]) {
        try {
          yield* fn(...args) as AsyncIterable<unknown>;
        } catch (error) {
          throw toConnectError(error, logger);
        }
      };
    } else {
      wrapped[method.localName] = async (...args: unknown[]) => {
        try {
          return await fn(...args);
        } catch (error) {
          throw toConnectError(error, logger);
        }
      };
    }
  }
  return wrapped as ServiceImpl<typeof AgentService>;
}
