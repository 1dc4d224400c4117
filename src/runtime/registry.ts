import { z } from "zod";
import type { Agent } from "./agent.js";
import type { Json } from "../store/types.js";

/** An agent as callers see it. */
export interface AgentInfo {
  name: string;
  description: string;
  inputSchema: Json;
  outputSchema: Json;
  nodes: string[];
  startNode: string;
}

/** The agents a gateway hosts, by name. */
export class AgentRegistry {
  private readonly agents = new Map<string, Agent>();

  constructor(agents: Iterable<Agent> = []) {
    for (const agent of agents) this.register(agent);
  }

  /** Adds an agent; a second agent with the same name is an error. */
  register(agent: Agent): void {
    if (this.agents.has(agent.name)) {
      throw new Error(`an agent named ${agent.name} is already registered`);
    }
    this.agents.set(agent.name, agent);
  }

  get(name: string): Agent | undefined {
    return this.agents.get(name);
  }

  /** Every agent, sorted by name. */
  list(): Agent[] {
    return [...this.agents.values()].sort((a, b) =>
      a.name.localeCompare(b.name),
    );
  }

  describe(agent: Agent): AgentInfo {
    return {
      name: agent.name,
      description: agent.description,
      // Callers send input before defaults apply, so a field with a default
      // is optional for them; results are read after.
      inputSchema: z.toJSONSchema(agent.input, { io: "input" }) as Json,
      outputSchema: z.toJSONSchema(agent.output, { io: "output" }) as Json,
      nodes: [...agent.specs.keys()],
      startNode: agent.start,
    };
  }
}
