import { createContextKey, type HandlerContext } from "@connectrpc/connect";

/**
 * The tenant a request acts for. The server's authentication sets it; with
 * no authentication every caller is the tenant `default`.
 */
export const tenantKey = createContextKey<string>("default", {
  description: "the tenant of the caller",
});

export function tenantOf(ctx: HandlerContext): string {
  return ctx.values.get(tenantKey);
}
