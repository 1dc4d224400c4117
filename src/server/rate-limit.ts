import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { AgentService } from "../../gen/agent/v1/agent_pb.js";
import { retryLater } from "../service/retry.js";
import { tenantKey } from "../service/tenant.js";
import type { Logger } from "../telemetry/logger.js";
import { callerKey } from "./auth.js";

/** The rate of one bucket: tokens added a second, and its size. */
export interface Rate {
  readonly ratePerSecond: number;
  readonly burst: number;
}

/** What taking one token from a bucket found. */
export interface Take {
  readonly allowed: boolean;
  /** Whole tokens left after this request. */
  readonly remaining: number;
  /**
   * How long until the next whole token: until then the caller can make
   * no more than `remaining` requests. When refused, when to retry.
   */
  readonly nextTokenMs: number;
}

/**
 * Token buckets by partition (an API key, or a tenant when there are no
 * keys). A bucket starts full, holds at most `burst` tokens and gains
 * `ratePerSecond` a second; every request takes one. Partitions are the
 * configured keys (or the one default tenant), so the map stays small.
 */
export class TokenBuckets {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  /** @param now a monotonic clock in ms; performance.now by default */
  constructor(private readonly now: () => number = () => performance.now()) {}

  take(partition: string, rate: Rate): Take {
    const now = this.now();
    const bucket = this.buckets.get(partition) ?? { tokens: rate.burst, at: now };
    bucket.tokens = Math.min(
      rate.burst,
      bucket.tokens + ((now - bucket.at) / 1000) * rate.ratePerSecond,
    );
    bucket.at = now;
    this.buckets.set(partition, bucket);
    const allowed = bucket.tokens >= 1;
    if (allowed) bucket.tokens -= 1;
    const remaining = Math.floor(bucket.tokens);
    return {
      allowed,
      remaining,
      nextTokenMs: ((remaining + 1 - bucket.tokens) / rate.ratePerSecond) * 1000,
    };
  }
}

/**
 * The fields of draft-ietf-httpapi-ratelimit-headers-11 (the current
 * draft; Structured Fields): `RateLimit-Policy: "<name>";q=<quota>;w=<window>`
 * and `RateLimit: "<name>";r=<available>;t=<effective window>`.
 *
 * A token bucket is advertised as `burst` requests per the time an empty
 * bucket takes to fill (whole seconds, at least 1): a client that keeps
 * to that is never refused. `r` is the whole tokens left and `t` the
 * seconds until the next one, so that within `t` the client can make no
 * more than `r` requests, as the draft defines it; on a refusal `t` equals
 * Retry-After, which the draft asks for.
 */
export function rateLimitHeaders(
  policy: string,
  rate: Rate,
  take: Take,
): Record<string, string> {
  const window = Math.max(1, Math.ceil(rate.burst / rate.ratePerSecond));
  return {
    "ratelimit-policy": `"${policy}";q=${rate.burst};w=${window}`,
    ratelimit: `"${policy}";r=${take.remaining};t=${Math.ceil(take.nextTokenMs / 1000)}`,
  };
}

export interface RateLimitOptions {
  /** The rate of a key whose entry sets none, and of tenant `default`. */
  defaults: Rate;
  logger: Logger;
  /**
   * Told about every refusal, with the tenant; the rate-limit rejection
   * metric counts them.
   */
  onReject?: (tenant: string) => void;
  /** A monotonic clock in ms, for tests. @default performance.now */
  now?: () => number;
}

/**
 * Takes one token per AgentService call from the bucket of the caller's
 * key (of its tenant when there are no keys); with none left the call is
 * RESOURCE_EXHAUSTED with when to retry (Retry-After and RetryInfo). Runs
 * after authentication: it needs to know the key.
 *
 * Every answer carries the RateLimit fields in its headers. An error's
 * metadata becomes headers only in Connect unary (the 429 and other
 * refusals); in gRPC, gRPC-web and Connect streams it is a trailer, where
 * the draft forbids these fields, so there the refusal carries Retry-After
 * and RetryInfo only. A refusal by a concurrency cap carries Retry-After
 * and RetryInfo, not this bucket's fields.
 */
export function createRateLimitInterceptor(options: RateLimitOptions): Interceptor {
  const { defaults, logger, onReject } = options;
  const buckets = new TokenBuckets(options.now);
  return (next) =>
    async function rateLimit(req) {
      if (req.service.typeName !== AgentService.typeName) return next(req);
      const tenant = req.contextValues.get(tenantKey);
      const key = req.contextValues.get(callerKey);
      const own = key?.ratePerSecond !== undefined || key?.burst !== undefined;
      const rate: Rate = {
        ratePerSecond: key?.ratePerSecond ?? defaults.ratePerSecond,
        burst: key?.burst ?? defaults.burst,
      };
      const take = buckets.take(key ? `key:${key.id}` : `tenant:${tenant}`, rate);
      const headers = rateLimitHeaders(own ? "key" : "default", rate, take);
      const contentType = req.header.get("content-type") ?? "";
      const errorsInHeaders = !req.stream && !contentType.startsWith("application/grpc");

      if (!take.allowed) {
        onReject?.(tenant);
        logger.debug(
          { procedure: `${req.service.typeName}/${req.method.name}`, tenant, keyId: key?.id },
          "refused: rate limit",
        );
        throw retryLater("rate limit exceeded; retry later", take.nextTokenMs, {
          metadata: errorsInHeaders ? headers : undefined,
        });
      }
      try {
        const res = await next(req);
        for (const [name, value] of Object.entries(headers)) res.header.set(name, value);
        return res;
      } catch (error) {
        // A refusal by a concurrency cap is not about this bucket: its
        // fields would say requests are left while the answer is 429.
        const otherLimit = error instanceof ConnectError && error.code === Code.ResourceExhausted;
        if (error instanceof ConnectError && errorsInHeaders && !otherLimit) {
          for (const [name, value] of Object.entries(headers)) {
            if (!error.metadata.has(name)) error.metadata.set(name, value);
          }
        }
        throw error;
      }
    };
}
