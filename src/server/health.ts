import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "../../gen/health/v1/health_pb.js";
import type { Store } from "../store/store.js";
import type { Logger } from "../telemetry/logger.js";
import type { PlainRoute } from "./http-routes.js";
import type { Lifecycle } from "./lifecycle.js";

/**
 * `grpc.health.v1.Health`: probes call it without an API key, so
 * authentication lets it through by this name.
 */
export const HEALTH_SERVICE_NAME = Health.typeName;

/** The longest a readiness check waits for the store to answer. */
const PING_TIMEOUT_MS = 2_000;

/** How often a Watch stream checks readiness again, by default. */
export const WATCH_INTERVAL_MS = 5_000;

/**
 * Ready, or why not: `reason` is the body of `/readyz`, which any probe may
 * read; `cause`, the store's own error, is for the log only (it can name
 * hosts and users).
 */
export type Readiness =
  | { ready: true }
  | { ready: false; reason: string; cause?: unknown };

export interface HealthOptions {
  lifecycle: Lifecycle;
  store: Store;
  /**
   * The services health is reported for, besides `""` (the whole server);
   * every other name is unknown.
   */
  services: readonly string[];
  /**
   * How often each Watch stream checks readiness (the store's ping
   * included) between lifecycle changes, which it hears at once. A new
   * status is sent only when it differs from the last one sent.
   * @default WATCH_INTERVAL_MS, 5 s
   */
  watchIntervalMs?: number;
}

/**
 * Ready means: serving (not starting, not draining) and the store answers
 * `ping()` within PING_TIMEOUT_MS. What `/readyz` and health Check report.
 */
export async function readiness(lifecycle: Lifecycle, store: Store): Promise<Readiness> {
  if (lifecycle.state !== "serving") {
    return { ready: false, reason: lifecycle.state };
  }
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      store.ping(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`no answer in ${PING_TIMEOUT_MS} ms`)),
          PING_TIMEOUT_MS,
        );
      }),
    ]);
  } catch (error) {
    return { ready: false, reason: "store unreachable", cause: error };
  } finally {
    clearTimeout(timer);
  }
  // The state may have changed while the store answered.
  return lifecycle.state === "serving"
    ? { ready: true }
    : { ready: false, reason: lifecycle.state };
}

/**
 * The gRPC health service (https://github.com/grpc/grpc/blob/master/doc/health-checking.md)
 * for `""` and `options.services`: SERVING while ready, NOT_SERVING
 * otherwise. Check of an unknown service is NOT_FOUND; Watch of one sends
 * SERVICE_UNKNOWN and stays open, as the protocol asks.
 *
 * Watch sends the status at once, then checks it again on every lifecycle
 * change (draining turns it NOT_SERVING at once) and every
 * `watchIntervalMs` (a store that stops answering turns it NOT_SERVING, one
 * that answers again SERVING), and sends it only when it changed. When the
 * gateway shuts the stream down it ends with OK: the client retries, as the
 * protocol tells it to on any end.
 */
export function createHealthService(options: HealthOptions): ServiceImpl<typeof Health> {
  const { lifecycle, store } = options;
  const intervalMs = options.watchIntervalMs ?? WATCH_INTERVAL_MS;
  const known = new Set(["", ...options.services]);
  const status = async (): Promise<ServingStatus> =>
    (await readiness(lifecycle, store)).ready ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;

  return {
    async check(request) {
      if (!known.has(request.service)) {
        throw new ConnectError(`unknown service ${request.service}`, Code.NotFound);
      }
      return { status: await status() };
    },

    async *watch(request, ctx) {
      const { signal } = ctx;
      if (!known.has(request.service)) {
        // The set of services is fixed for the life of the process: the
        // status never becomes known, so wait for the end.
        yield { status: ServingStatus.SERVICE_UNKNOWN };
        await nextCheck(lifecycle, signal, () => false);
        return;
      }
      let sent: ServingStatus | undefined;
      while (!signal.aborted) {
        // Listen before reading, so a change in between is not missed.
        let changed = false;
        const unlisten = lifecycle.onChange(() => (changed = true));
        try {
          const now = await status();
          if (signal.aborted) return;
          if (now !== sent) {
            sent = now;
            yield { status: now };
          }
          await nextCheck(lifecycle, signal, () => changed, intervalMs);
        } finally {
          unlisten();
        }
      }
    },

    async list() {
      const now = await status();
      return {
        statuses: Object.fromEntries([...known].map((name) => [name, { status: now }])),
      };
    },
  };
}

/**
 * The Kubernetes probes, as plain HTTP routes:
 * - `/healthz` (liveness): 200 while the process runs, draining included,
 *   so that a slow shutdown is not cut short by a restart;
 * - `/readyz` (readiness): 200 when ready (see readiness()), else 503 with
 *   the reason, so that no new traffic is sent to a draining gateway.
 */
export function healthRoutes(
  lifecycle: Lifecycle,
  store: Store,
  logger: Logger,
): Record<string, PlainRoute> {
  return {
    "/healthz": () => ({ status: 200, body: "ok\n" }),
    "/readyz": async () => {
      const state = await readiness(lifecycle, store);
      if (state.ready) return { status: 200, body: "ready\n" };
      if (state.cause !== undefined) logger.warn({ err: state.cause }, "not ready: store unreachable");
      return { status: 503, body: `not ready: ${state.reason}\n` };
    },
  };
}

/**
 * Resolves on the next lifecycle change (at once if `already()`), after
 * `intervalMs` if given, or when `signal` fires, whichever is first.
 */
function nextCheck(
  lifecycle: Lifecycle,
  signal: AbortSignal,
  already: () => boolean,
  intervalMs?: number,
): Promise<void> {
  if (signal.aborted || already()) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      unlisten();
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = intervalMs === undefined ? undefined : setTimeout(done, intervalMs);
    const unlisten = lifecycle.onChange(done);
    signal.addEventListener("abort", done, { once: true });
  });
}
