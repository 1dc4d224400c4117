import type * as http from "node:http";
import type * as http2 from "node:http2";
import { cors } from "@connectrpc/connect";
import { INVOCATION_ID_HEADER } from "../service/agent-service.js";
import { RETRY_AFTER_HEADER } from "../service/retry.js";
import type { Logger } from "../telemetry/logger.js";
import type { ListenerHandler } from "./listener.js";

/** A request on either HTTP version, as the listener hands it over. */
export type PlainRequest = http.IncomingMessage | http2.Http2ServerRequest;
/** A response on either HTTP version, as the listener hands it over. */
export type PlainResponse = http.ServerResponse | http2.Http2ServerResponse;

/** What a plain route answers. */
export interface PlainAnswer {
  status: number;
  /** @default "text/plain; charset=utf-8" */
  contentType?: string;
  body: string;
}

/** Answers a GET (or HEAD) of one path. */
export type PlainRoute = (req: PlainRequest) => PlainAnswer | Promise<PlainAnswer>;

/**
 * Puts plain HTTP routes (probes, metrics) in front of `next` (the Connect
 * handler) on the same port. A route is an exact path answered on GET and
 * HEAD; another method on it is 405. Every other request goes to `next`:
 * Connect's paths are `/<package>.<Service>/<Method>`, so they cannot
 * collide with these.
 *
 * The routes see no Connect interceptor, so they need no API key: probes
 * and scrapers hold none.
 */
export function withPlainRoutes(
  routes: Readonly<Record<string, PlainRoute>>,
  next: ListenerHandler,
  logger: Logger,
): ListenerHandler {
  const table = new Map(Object.entries(routes));
  return (req, res) => {
    const path = pathOf(req.url);
    const route = path === undefined ? undefined : table.get(path);
    if (route === undefined) {
      next(req, res);
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      send(req, res, { status: 405, body: "method not allowed\n" }, { allow: "GET, HEAD" });
      return;
    }
    Promise.resolve()
      .then(() => route(req))
      .then(
        (answer) => send(req, res, answer),
        (error: unknown) => {
          logger.error({ err: error, path }, "plain route failed");
          send(req, res, { status: 500, body: "internal error\n" });
        },
      );
  };
}

/** The path of a request target, without the query; undefined if unparsable. */
function pathOf(url: string | undefined): string | undefined {
  if (url === undefined) return undefined;
  const query = url.indexOf("?");
  return query === -1 ? url : url.slice(0, query);
}

function send(
  req: PlainRequest,
  res: PlainResponse,
  answer: PlainAnswer,
  extra: Record<string, string> = {},
): void {
  if (res.headersSent || res.writableEnded) return;
  const body = Buffer.from(answer.body);
  const headers = {
    "content-type": answer.contentType ?? "text/plain; charset=utf-8",
    "content-length": String(body.length),
    // Probes and scrapers must see the state now, never a cached one.
    "cache-control": "no-store",
    ...extra,
  };
  // Both response types take writeHead(status, headers) and end(body); the
  // union of their overloads does not type-check as one call.
  const r = res as http.ServerResponse;
  r.writeHead(answer.status, headers);
  r.end(req.method === "HEAD" ? undefined : body);
}

/**
 * Request headers a browser client may send besides Connect's and
 * gRPC-web's own: the API key (either form) and W3C trace context.
 */
const CORS_ALLOWED_HEADERS = [
  ...cors.allowedHeaders,
  "authorization",
  "x-api-key",
  "traceparent",
  "tracestate",
].join(", ");

/**
 * Response headers a browser client may read besides Connect's and
 * gRPC-web's own: the id of a started invocation, the retry delay and the
 * rate-limit fields.
 */
const CORS_EXPOSED_HEADERS = [
  ...cors.exposedHeaders,
  INVOCATION_ID_HEADER,
  RETRY_AFTER_HEADER,
  "ratelimit",
  "ratelimit-policy",
].join(", ");

/**
 * How long a browser may cache a preflight answer, in seconds; Chromium
 * caps it at 7200.
 */
const CORS_MAX_AGE_SECONDS = 7200;

/**
 * Lets browsers on `origins` call the Connect handler `next` from another
 * origin (`*` allows any): preflight OPTIONS requests are answered here,
 * with the methods and headers Connect and gRPC-web need, and answers to
 * allowed origins say so. Another origin gets no allow header: its
 * preflight is a 403, and its browser will not show it any answer.
 *
 * CORS only tells browsers what a page may read; every call still needs
 * its API key.
 */
export function withCors(
  origins: readonly string[],
  next: ListenerHandler,
): ListenerHandler {
  const any = origins.includes("*");
  // An origin has no path; "https://app.example/" is meant as the origin.
  const allowed = new Set(origins.map((o) => o.replace(/\/+$/, "").toLowerCase()));
  return (req, res) => {
    const origin = header(req, "origin");
    if (origin === undefined) {
      next(req, res);
      return;
    }
    const ok = any || allowed.has(origin.toLowerCase());
    const preflight =
      req.method === "OPTIONS" && header(req, "access-control-request-method") !== undefined;
    // The answer depends on Origin: caches must keep one per origin.
    const headers: Record<string, string> = { vary: "Origin" };
    if (ok) headers["access-control-allow-origin"] = origin;
    if (preflight) {
      if (ok) {
        Object.assign(headers, {
          "access-control-allow-methods": cors.allowedMethods.join(", "),
          "access-control-allow-headers": CORS_ALLOWED_HEADERS,
          "access-control-max-age": String(CORS_MAX_AGE_SECONDS),
        });
      }
      const r = res as http.ServerResponse;
      r.writeHead(ok ? 204 : 403, { ...headers, "content-length": "0" });
      r.end();
      return;
    }
    if (ok) headers["access-control-expose-headers"] = CORS_EXPOSED_HEADERS;
    for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
    next(req, res);
  };
}

function header(req: PlainRequest, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}
