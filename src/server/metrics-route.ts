import type { Registry } from "prom-client";
import type { PlainRoute } from "./http-routes.js";

/**
 * `GET /metrics`: the gateway's registry in the Prometheus text format.
 * Like the probes it needs no API key (scrapers hold none); it shows
 * counts by agent, procedure and tenant, never payloads or keys, and an
 * operator who wants it private keeps the port off the public network.
 */
export function metricsRoute(registry: Registry): PlainRoute {
  return async () => ({
    status: 200,
    contentType: registry.contentType,
    body: await registry.metrics(),
  });
}
