import { BlockList, isIP } from "node:net";
import {
  Code,
  ConnectError,
  createContextKey,
  type Interceptor,
} from "@connectrpc/connect";
import { AgentService } from "../../gen/agent/v1/agent_pb.js";
import { ConfigError, type Config, type Scope } from "../config.js";
import { tenantKey } from "../service/tenant.js";
import type { Logger } from "../telemetry/logger.js";
import { ApiKeyRing, keyIdOf, type KeyIdentity } from "./api-keys.js";

/** The tenant every caller is when no API keys are configured. */
export const DEFAULT_TENANT = "default";

/**
 * The scope each AgentService method needs; `admin` may call every method.
 * Keyed by the generated service, so a new RPC is a compile error here
 * until it is given a scope.
 */
export const METHOD_SCOPES = {
  invoke: "invoke",
  startInvocation: "invoke",
  invokeStream: "invoke",
  listAgents: "read",
  getAgent: "read",
  getInvocation: "read",
  listInvocations: "read",
  watchInvocation: "read",
  cancelInvocation: "cancel",
  provideInput: "input",
} as const satisfies Record<keyof typeof AgentService.method, Scope>;

/**
 * Services any caller may use without a key: health checks come from
 * probes that hold no key, and reflection only describes the contract,
 * which is public, to tools such as `buf curl` before they call.
 * Every other service needs a key, and one not in METHOD_SCOPES the admin
 * scope, so that a service added later is closed until it is thought about.
 */
export const OPEN_SERVICES: ReadonlySet<string> = new Set([
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
]);

/**
 * Who the key of a request belongs to; undefined when no keys are
 * configured. The rate limiter uses it to find the key's bucket.
 */
export const callerKey = createContextKey<KeyIdentity | undefined>(undefined, {
  description: "the API key of the caller",
});

export interface AuthOptions {
  /** The configured keys; with none, every caller is tenant `default`. */
  keys: ApiKeyRing;
  logger: Logger;
}

/**
 * Authenticates every call: reads the key from `authorization: Bearer
 * <key>` or `x-api-key`, refuses a missing or unknown key with
 * UNAUTHENTICATED and a key without the method's scope with
 * PERMISSION_DENIED, and puts the key's tenant in the context, so that
 * every invocation belongs to the tenant of the key that started it.
 *
 * The client learns only the code and a plain message; which key, tenant
 * or scope it was goes to the log.
 */
export function createAuthInterceptor(options: AuthOptions): Interceptor {
  const { keys, logger } = options;
  return (next) =>
    async function authenticate(req) {
      const service = req.service.typeName;
      if (keys.size === 0 || OPEN_SERVICES.has(service)) return next(req);
      const procedure = `${service}/${req.method.name}`;

      const presented = presentedKey(req.header);
      if (presented === undefined) {
        logger.debug({ procedure }, "refused: no API key");
        throw new ConnectError(
          "an API key is required: send authorization: Bearer <key> or x-api-key",
          Code.Unauthenticated,
        );
      }
      const identity = presented === null ? undefined : keys.verify(presented);
      if (identity === undefined) {
        logger.warn(
          {
            procedure,
            // Never the key; its hash prefix tells two callers apart.
            presentedKeyId:
              presented === null ? "malformed" : keyIdOf(presented.slice(0, 1024)),
          },
          "refused: unknown API key",
        );
        throw new ConnectError("invalid API key", Code.Unauthenticated);
      }

      const needed = scopeOf(service, req.method.localName);
      if (!identity.scopes.has("admin") && !identity.scopes.has(needed)) {
        logger.warn(
          {
            procedure,
            keyId: identity.id,
            keyName: identity.name,
            tenant: identity.tenant,
            needed,
            scopes: [...identity.scopes],
          },
          "refused: API key lacks the scope",
        );
        throw new ConnectError(
          "this API key may not call this method",
          Code.PermissionDenied,
        );
      }
      req.contextValues.set(tenantKey, identity.tenant);
      req.contextValues.set(callerKey, identity);
      return next(req);
    };
}

function scopeOf(service: string, localName: string): Scope {
  if (service !== AgentService.typeName) return "admin";
  return (METHOD_SCOPES as Record<string, Scope>)[localName] ?? "admin";
}

/**
 * The key a request carries: from `authorization: Bearer <key>`, else from
 * `x-api-key`. Undefined when there is none; null when what is there
 * cannot be a key (two different keys, or a Bearer with no token), which
 * is refused like an unknown key. An authorization header of another
 * scheme is not ours and is ignored.
 */
export function presentedKey(header: Headers): string | null | undefined {
  const authorization = header.get("authorization")?.trim();
  let bearer: string | null | undefined;
  if (authorization !== undefined && /^bearer(\s|$)/i.test(authorization)) {
    const token = authorization.slice("bearer".length).trim();
    bearer = token !== "" && !/\s/.test(token) ? token : null;
  }
  const apiKey = header.get("x-api-key")?.trim() || undefined;
  if (bearer === null) return null;
  if (bearer !== undefined && apiKey !== undefined && apiKey !== bearer) {
    return null;
  }
  return bearer ?? apiKey;
}

const loopback = new BlockList();
loopback.addSubnet("127.0.0.0", 8, "ipv4");
loopback.addAddress("::1", "ipv6");

/**
 * True for an address only this machine can reach: 127.0.0.0/8, ::1
 * (also as ::ffff:127.x.y.z) and the name localhost.
 */
export function isLoopbackHost(host: string): boolean {
  const bare = host.replace(/^\[(.*)\]$/, "$1").toLowerCase();
  if (bare === "localhost") return true;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(bare);
  if (mapped) return loopback.check(mapped[1]!, "ipv4");
  const family = isIP(bare);
  if (family === 0) return false;
  return loopback.check(bare, family === 4 ? "ipv4" : "ipv6");
}

/**
 * Builds the key ring and enforces the rule for running without keys:
 * allowed on loopback (with a warning that says so), refused elsewhere
 * with a ConfigError unless `allowUnauthenticated` is set.
 */
export function createKeyRing(
  config: Pick<Config, "apiKeys" | "host" | "allowUnauthenticated">,
  logger: Logger,
): ApiKeyRing {
  const keys = new ApiKeyRing(config.apiKeys);
  if (keys.size > 0) return keys;
  if (isLoopbackHost(config.host)) {
    logger.warn(
      { host: config.host, tenant: DEFAULT_TENANT },
      "no API keys configured: every caller is tenant default, served on loopback only",
    );
  } else if (config.allowUnauthenticated) {
    logger.warn(
      { host: config.host, tenant: DEFAULT_TENANT },
      "no API keys configured and allowUnauthenticated is set: anyone who reaches this address is tenant default",
    );
  } else {
    throw new ConfigError(
      `host ${config.host} is not a loopback address and no apiKeys are configured: ` +
        "refusing to serve without authentication. Add keys to the --config file " +
        "(make one with `agent-gateway keys create`), bind to 127.0.0.1, or set " +
        "allowUnauthenticated (ALLOW_UNAUTHENTICATED=true)",
    );
  }
  return keys;
}
