import { pathToFileURL } from "node:url";
import { resolve } from "node:path";
import type { Agent } from "../runtime/index.js";

function isAgent(value: unknown): value is Agent {
  return (
    typeof value === "object" &&
    value !== null &&
    "specs" in value &&
    value.specs instanceof Map &&
    "name" in value
  );
}

/**
 * Imports agent modules (paths relative to the working directory) and
 * returns every agent they export, made with defineAgent. A module that
 * exports none is an error: it is surely a mistake in the configuration.
 */
export async function loadAgentModules(paths: string[]): Promise<Agent[]> {
  const agents: Agent[] = [];
  for (const path of paths) {
    const module = (await import(pathToFileURL(resolve(path)).href)) as Record<
      string,
      unknown
    >;
    const found = Object.values(module).filter(isAgent);
    if (found.length === 0) {
      throw new Error(`${path} exports no agent made with defineAgent`);
    }
    agents.push(...found);
  }
  return agents;
}
