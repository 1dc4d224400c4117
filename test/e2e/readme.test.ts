import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { fromJson, toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadAgentModules } from "../../src/agents/load-modules.js";
import { OPTIONS, loadConfig, type OptionDefinition } from "../../src/config.js";
import { startChildGateway, stopAll, type ChildGateway } from "../helpers/child.js";
import { startGateway, type TestGateway } from "../helpers/gateway.js";

/**
 * The README's examples run against a live gateway, so they cannot rot:
 * every `sh` block of "Call it" in order, in one shell, then the
 * TypeScript client, then the example agent; the configuration file and
 * the options table against the options; then "API keys and tenants" as an
 * operator follows it (make a key, write the file, start `npm start` with
 * it, call with the key) and every `sh` block of "Operate it" against that
 * gateway.
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

const onTestPort = (text: string, port = gw.port) =>
  text.replaceAll("localhost:8080", `127.0.0.1:${port}`);

/** Runs a script as the README's reader would, in bash, from the root. */
async function shell(script: string, env: NodeJS.ProcessEnv = {}): Promise<string> {
  const { stdout } = await run("bash", ["-euo", "pipefail", "-c", script], {
    cwd: root,
    timeout: 60_000,
    env: { ...process.env, ...env },
  });
  return stdout;
}

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

  it("the configuration file example and the options table fit the options", async () => {
    const [yaml] = blocks("yaml", "## Configure it", "## API keys");
    const dir = await mkdtemp(join(tmpdir(), "agent-gateway-readme-"));
    try {
      const file = join(dir, "config.yaml");
      await writeFile(file, yaml!);
      const { config } = loadConfig(["--config", file], {});
      expect(config.port).toBe(9090);
      expect(config.apiKeys[0]?.tenant).toBe("acme");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    // One row per option, with its flag and its variable.
    const section = readme.slice(readme.indexOf("## Configure it"), readme.indexOf("## API keys"));
    const rows = section.split("\n").filter((line) => line.startsWith("| "));
    for (const [key, option] of Object.entries(OPTIONS as Record<string, OptionDefinition>)) {
      const name =
        option.flag === false ? key : `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
      const row = rows.find((r) => r.includes(`\`${name}\``));
      expect(row, key).toBeDefined();
      if (option.env) expect(row, key).toContain(`\`${option.env}\``);
    }
  });

  describe("API keys, then operating the gateway they protect", () => {
    let dir: string;
    let keyed: ChildGateway | undefined;
    let key: string | undefined;

    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "agent-gateway-readme-"));
    });
    afterAll(async () => {
      await stopAll();
      await rm(dir, { recursive: true, force: true });
    });

    it("a key made, put in config.yaml, started with and called with", async () => {
      const [make, start, calls, ...rest] = blocks("sh", "## API keys", "## Operate it");
      expect(rest).toEqual([]);
      // The reader's config.yaml, in a directory of the test's own.
      const inDir = (text: string) => text.replaceAll("config.yaml", join(dir, "config.yaml"));
      const made = await shell(`${inDir(make!)}\nprintf 'KEY=%s\\n' "$KEY"`);
      key = /^KEY=(agk_\S+)$/m.exec(made)?.[1];
      expect(key).toBeDefined();

      // `npm start -- <args>` is package.json's start script with the args;
      // port 0, so that it cannot collide with anything.
      expect(start).toMatch(/^npm start -- .*\n$/);
      const script = (JSON.parse(readFileSync(`${root}package.json`, "utf8")) as {
        scripts: { start: string };
      }).scripts.start;
      const [node, ...startArgs] = script.split(" ");
      expect(node).toBe("node");
      const args = inDir(start!).trim().slice("npm start -- ".length).split(/\s+/);
      keyed = await startChildGateway([...startArgs, ...args, "--port", "0"], {
        DATA_DIR: join(dir, "data"),
      });

      const stdout = await shell(onTestPort(calls!, keyed.port), { KEY: key });
      expect(stdout).toContain('"name":"echo"');
      expect(stdout).toContain('"result":{"text":"hi"}');
      // curl prints no newline after a body: the last answer, then the code.
      expect(stdout).toMatch(/\}401\n$/);
      // Both calls with the key were tenant acme's.
      const tenants = keyed.log
        .filter((l) => l.msg === "rpc finished" && l.code === "ok")
        .map((l) => l.tenant);
      expect(tenants).toEqual(["acme", "acme"]);
    });

    it("the Operate it examples work against it", async () => {
      expect(keyed, "the gateway of the test above").toBeDefined();
      const script = blocks("sh", "## Operate it", "## Layout").join("\n");
      const stdout = await shell(onTestPort(script, keyed!.port), { KEY: key });
      expect(stdout).toMatch(/^ok\nready\n\{"status":"SERVING"\}/);
      expect(stdout).toContain('agent_gateway_invocations_started_total{agent="echo"} 1');
      expect(stdout).toMatch(/^ratelimit-policy: "default";q=100;w=2\r?$/im);
      expect(stdout).toMatch(/^ratelimit: "default";r=\d+;t=\d+\r?$/im);
    });
  });
});
