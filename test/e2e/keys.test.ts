import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Code, createClient, type CallOptions } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentService } from "../../gen/agent/v1/agent_pb.js";
import { loadConfig } from "../../src/config.js";
import { runKeysCommand } from "../../src/keys-command.js";
import { hashApiKey } from "../../src/server/api-keys.js";
import { failure, value } from "../helpers/calls.js";
import { BIN, ROOT, run, startChildGateway, stopAll, type ChildGateway } from "../helpers/child.js";

/**
 * `agent-gateway keys create` end to end, as an operator uses it: make a
 * key, write the configuration file exactly as the issue shows, start the
 * gateway with it and call with the key.
 */

const exec = promisify(execFile);

/** runKeysCommand, which main.ts runs for `agent-gateway keys`, in-process. */
function inProcess(argv: string[]): { code: number; stdout: string; stderr: string } {
  let stdout = "";
  let stderr = "";
  const code = runKeysCommand(
    argv,
    { write: (text: string) => (stdout += text) },
    { write: (text: string) => (stderr += text) },
  );
  return { code, stdout, stderr };
}
const KEY_PATTERN = /^agk_[A-Za-z0-9_-]{43}$/;

describe("agent-gateway keys create", () => {
  let dir: string;
  let gateway: ChildGateway | undefined;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "agent-gateway-keys-"));
  });
  afterAll(async () => {
    await stopAll();
    await rm(dir, { recursive: true, force: true });
  });

  it("prints a new 256-bit key alone on the first line, then its entry", async () => {
    const args = ["create", "--tenant", "acme", "--scopes", "invoke,read"];
    // The command as a user runs it, and the same function in-process.
    const [one, two] = [await run([...BIN, "keys", ...args]), inProcess(args)];
    for (const out of [one, two]) {
      expect(out.code).toBe(0);
      const [key, ...entry] = out.stdout.trimEnd().split("\n");
      expect(key).toMatch(KEY_PATTERN);
      expect(Buffer.from(key!.slice(4), "base64url")).toHaveLength(32);
      expect(entry).toEqual([
        `- hash: ${hashApiKey(key!)}`,
        "  tenant: acme",
        "  scopes:",
        "    - invoke",
        "    - read",
      ]);
      // The key is not repeated anywhere else, and the advice goes to stderr.
      expect(out.stdout.split(key!)).toHaveLength(2);
      expect(out.stderr).toMatch(/not shown again/);
    }
    expect(one.stdout).not.toBe(two.stdout);
  });

  it("refuses a bad command with exit code 2 and prints no key", async () => {
    const out = await run([...BIN, "keys", "create", "--tenant", "t"]);
    expect(out.code).toBe(2);
    expect(out.stderr).toMatch(/--scopes is required/);
    expect(out.stdout).toBe("");
  });

  it("says what is wrong with each bad argument", () => {
    const cases: [string[], RegExp][] = [
      [["--scopes", "read"], /--tenant is required/],
      [["--tenant", "t"], /--scopes is required/],
      [["--tenant", "t", "--scopes", "read,write"], /--scopes: one or more of invoke, read, cancel, input, admin/],
      [["--tenant", "t", "--scopes", "read", "--burst", "0"], /--burst/],
      [["--tenant", "t", "--scopes", "read", "--rate-per-second", "fast"], /--rate-per-second: expected a number/],
      [["--tenant", "t", "--scopes", "read", "--colour", "red"], /colour/],
    ];
    for (const [args, message] of cases) {
      const out = inProcess(["create", ...args]);
      expect(out.code, args.join(" ")).toBe(2);
      expect(out.stderr).toMatch(message);
      expect(out.stdout).toBe("");
    }
    const unknown = inProcess(["delete"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown command delete/);
  });

  it("works as npm run keys -- create", async () => {
    const { stdout } = await exec(
      "npm",
      ["run", "--silent", "keys", "--", "create", "--tenant", "t", "--scopes", "admin"],
      { cwd: ROOT },
    );
    const [key, ...entry] = stdout.trimEnd().split("\n");
    expect(key).toMatch(KEY_PATTERN);
    expect(entry[0]).toBe(`- hash: ${hashApiKey(key!)}`);
  });

  it("makes a config file as the issue shows, which the gateway starts with and accepts the key of", async () => {
    const config = join(dir, "config.yaml");
    // Exactly the shell an operator would type.
    await exec(
      "bash",
      [
        "-euo",
        "pipefail",
        "-c",
        `out=$(node bin/agent-gateway.js keys create --tenant acme --scopes invoke,read \\
            --rate-per-second 5 --burst 10 --name "ci: deploy")
         key=$(printf '%s\\n' "$out" | head -n 1)
         entry=$(printf '%s\\n' "$out" | tail -n +2)
         printf 'apiKeys:\\n%s\\n' "$entry" > "$CONFIG"
         printf '%s' "$key" > "$CONFIG.key"`,
      ],
      { cwd: ROOT, env: { ...process.env, CONFIG: config } },
    );
    const key = await readFile(`${config}.key`, "utf8");
    expect(key).toMatch(KEY_PATTERN);
    expect(await readFile(config, "utf8")).not.toContain(key);

    // The configuration loader takes it as it is.
    expect(loadConfig(["--config", config], {}).config.apiKeys).toEqual([
      {
        hash: hashApiKey(key),
        tenant: "acme",
        scopes: ["invoke", "read"],
        name: "ci: deploy",
        ratePerSecond: 5,
        burst: 10,
      },
    ]);

    gateway = await startChildGateway([
      ...BIN,
      "--config",
      config,
      "--port",
      "0",
      "--data-dir",
      join(dir, "data"),
    ]);
    // With keys there is nothing to warn about.
    expect(gateway.log.some((l) => String(l.msg).includes("no API keys"))).toBe(false);

    const as: CallOptions = { headers: { authorization: `Bearer ${key}` } };
    const grpc = createClient(
      AgentService,
      createGrpcTransport({ baseUrl: gateway.baseUrl }),
    );
    const json = createClient(
      AgentService,
      createConnectTransport({ baseUrl: gateway.baseUrl, httpVersion: "1.1" }),
    );
    const { invocation } = await grpc.invoke({ agent: "echo", input: value({ hi: 1 }) }, as);
    expect(invocation!.result).toBeDefined();
    const listed = await json.listInvocations({}, { headers: { "x-api-key": key } });
    expect(listed.invocations.map((i) => i.id)).toEqual([invocation!.id]);

    // Its scopes hold: no cancel; no key is no entry.
    const denied = await failure(grpc.cancelInvocation({ invocationId: invocation!.id }, as));
    expect(denied.code).toBe(Code.PermissionDenied);
    expect((await failure(json.listAgents({}))).code).toBe(Code.Unauthenticated);

    // And its own rate: a bucket of 10, full in 2 s.
    const res = await fetch(`${gateway.baseUrl}/agent.v1.AgentService/ListAgents`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
      body: "{}",
    });
    expect(res.headers.get("ratelimit-policy")).toBe('"key";q=10;w=2');

    // The key never reaches the log.
    expect(JSON.stringify(gateway.log)).not.toContain(key);
    await gateway.stop();
  });
});
