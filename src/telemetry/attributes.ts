/**
 * Span attribute names. The `rpc.*` and `gen_ai.*` ones are OpenTelemetry
 * semantic conventions that are still incubating, which the OTel docs ask
 * users to copy rather than import from the unstable entry point; the
 * `agent_gateway.*` ones are ours, for what the conventions do not name.
 */

export const RPC_SYSTEM = "rpc.system";
export const RPC_SERVICE = "rpc.service";
export const RPC_METHOD = "rpc.method";
/** gRPC and gRPC-web: the numeric status code, 0 for OK. */
export const RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code";
/** Connect: the error code in snake case; absent on success. */
export const RPC_CONNECT_RPC_ERROR_CODE = "rpc.connect_rpc.error_code";
export const ERROR_TYPE = "error.type";

export const GEN_AI_OPERATION_NAME = "gen_ai.operation.name";
export const GEN_AI_AGENT_NAME = "gen_ai.agent.name";
/**
 * The agent's own identifier, not the invocation's: a hosted agent is
 * identified by its unique name, so it is the same value as the name.
 */
export const GEN_AI_AGENT_ID = "gen_ai.agent.id";
/** The `description` of the agent's definition. */
export const GEN_AI_AGENT_DESCRIPTION = "gen_ai.agent.description";

export const INVOCATION_ID = "agent_gateway.invocation.id";
export const INVOCATION_STATE = "agent_gateway.invocation.state";
/** True on the span of a run that resumed an interrupted invocation. */
export const INVOCATION_RESUMED = "agent_gateway.invocation.resumed";
/** True on spans that ended because the gateway stopped, not the run. */
export const INTERRUPTED = "agent_gateway.interrupted";
export const TENANT = "agent_gateway.tenant";
export const NODE_NAME = "agent_gateway.node.name";
export const TASK_ID = "agent_gateway.task.id";
export const NODE_ATTEMPT = "agent_gateway.node.attempt";
export const NODE_EMITTED_TO = "agent_gateway.node.emitted_to";
export const EVENT_SEQUENCE = "agent_gateway.event.sequence";
export const INPUT_REQUEST_ID = "agent_gateway.input_request.id";
