import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { rm, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { fromJson, toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadAgentModules } from "../../src/agents/load-modules.js";
import { startGateway, type TestGateway } from "../helpers/gateway.js";

/**
 * The README's examples run against a live gateway, so they cannot rot:
 * every `sh` block of "Call it" in order, in one shell, then the
 * TypeScript client, then the example agent.
 */

const run = promisify(execFile);
const root = fileURLToPath(new URL("../../", import.meta.url));
const readme = readFileSync(`${root}README.md`, "utf8");

function blocks(language: string, from: string, to: string): string[] {
  const section = readme.slice(readme.indexOf(from), readme.indexOf(to));
  const fence = new RegExp("```" + language + "\\n([\\s\\S]*?)```", "g");
  return [...section.matchAll(fence)].map((m) => m[1]!);
}

let gw: TestGateway;
beforeAll(async () => {
  gw = await startGateway();
});
afterAll(async () => {
  await gw?.close();
});

const onTestPort = (text: string) =>
  text.replaceAll("localhost:8080", `127.0.0.1:${gw.port}`);

describe("README", () => {
  it("has the two commands a newcomer runs", () => {
    expect(blocks("sh", "## Start it", "## Call it")).toEqual([
      "npm install\nnpm start\n",
      "npm test\n",
    ]);
  });

  it("curl and buf curl examples work as shown", async () => {
    const script = blocks("sh", "## Call it", "## Semantics").join("\n");
    expect(script).toContain("curl");
    const { stdout } = await run(
      "bash",
      ["-euo", "pipefail", "-c", onTestPort(script)],
      { cwd: root, timeout: 60_000 },
    );
    // Each example's answer, in order: the agents, echo, wordfreq, the
    // approval answered and read back, the same by GET, then buf curl.
    expect(stdout).toContain('"name":"wordfreq"');
    expect(stdout).toContain('"result":{"text":"hi"}');
    expect(stdout).toContain('"result":{"words":[["be",2],["to",2],["is",1]]}');
    expect(stdout).toContain('"result":{"approved":true}');
    expect(stdout).toMatch(/"tick": 3/);
    expect(stdout).toMatch(/"completed"/);
  });

  it("the TypeScript client works as shown", async () => {
    const [client] = blocks("ts", "From TypeScript", "## Semantics");
    const file = `${root}.readme-client-${process.pid}.ts`;
    await writeFile(file, onTestPort(client!));
    try {
      const { stdout } = await run("node", ["--import", "tsx", file], {
        cwd: root,
        timeout: 30_000,
      });
      expect(stdout.trim().split("\n")).toEqual([
        "1n started",
        "2n nodeStarted",
        "3n chunk",
        "4n chunk",
        "5n chunk",
        "6n nodeFinished",
        "7n completed",
      ]);
    } finally {
      await rm(file, { force: true });
    }
  });

  it("the example agent runs as shown", async () => {
    const [agent] = blocks("ts", "## Write an agent", "## Configure it");
    const file = `${root}.readme-agent-${process.pid}.ts`;
    await writeFile(file, agent!);
    let own: TestGateway | undefined;
    try {
      own = await startGateway({ agents: await loadAgentModules([file]) });
      const client = own.client("connect-json");
      const { invocation } = await client.invoke({
        agent: "greet",
        input: fromJson(ValueSchema, { name: "Ada" }),
      });
      const request = invocation?.pendingInputs[0];
      expect(request?.prompt).toBe("How should I greet Ada?");
      await client.provideInput({
        invocationId: invocation!.id,
        requestId: request!.requestId,
        value: fromJson(ValueSchema, { word: "Hello" }),
      });
      const events = [];
      for await (const { event } of client.watchInvocation({
        invocationId: invocation!.id,
      })) {
        events.push(event!);
      }
      const last = events.at(-1)!;
      expect(last.kind.case).toBe("completed");
      if (last.kind.case !== "completed") return;
      expect(toJson(ValueSchema, last.kind.value.result!)).toEqual({
        greeting: "Hello, Ada!",
      });
    } finally {
      await own?.close();
      await rm(file, { force: true });
    }
  });
});
