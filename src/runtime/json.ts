import type { Json } from "../store/types.js";

/**
 * JSON with object keys sorted, so two equal values always give the same
 * text whatever order their keys were written in.
 */
export function canonicalJson(value: Json): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (v === null || typeof v !== "object" || Array.isArray(v)) return v;
    const sorted: Record<string, unknown> = {};
    for (const key of Object.keys(v).sort()) {
      sorted[key] = (v as Record<string, unknown>)[key];
    }
    return sorted;
  });
}
