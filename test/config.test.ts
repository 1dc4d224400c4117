import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ConfigError,
  OPTIONS,
  defaultConfig,
  describeOptions,
  loadConfig,
  type OptionDefinition,
} from "../src/config.js";

const run = promisify(execFile);
const root = fileURLToPath(new URL("../", import.meta.url));

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "agent-gateway-config-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** `text` as a literal inside a RegExp. */
const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

async function file(name: string, text: string): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, text);
  return path;
}

function refusal(argv: string[], env: NodeJS.ProcessEnv = {}): string {
  try {
    loadConfig(argv, env);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as Error).message;
  }
  throw new Error("the configuration was accepted");
}

describe("configuration", () => {
  it("has defaults a newcomer can start with", () => {
    const config = defaultConfig();
    expect(config.host).toBe("127.0.0.1");
    expect(config.port).toBe(8080);
    expect(config.dataDir).toBe("./data");
    expect(config.maxMessageBytes).toBe(4 * 1024 * 1024);
    expect(config.apiKeys).toEqual([]);
  });

  it("takes defaults < file < environment < flags", async () => {
    const path = await file("layers.yaml", "port: 1000\nheartbeatMs: 500\nlogLevel: warn\n");
    const { config } = loadConfig(
      ["--config", path, "--port", "3000"],
      { PORT: "2000", HEARTBEAT_MS: "700" },
    );
    expect(config.port).toBe(3000);
    expect(config.heartbeatMs).toBe(700);
    expect(config.logLevel).toBe("warn");
    expect(config.host).toBe("127.0.0.1");
  });

  it("reads JSON files and CONFIG_FILE too", async () => {
    const path = await file("c.json", JSON.stringify({ corsOrigins: ["https://a.example"] }));
    const { config, file: used } = loadConfig([], { CONFIG_FILE: path });
    expect(used).toBe(path);
    expect(config.corsOrigins).toEqual(["https://a.example"]);
  });

  it("splits lists and reads booleans from the environment", () => {
    const { config } = loadConfig([], {
      CORS_ORIGINS: "https://a.example, https://b.example",
      ALLOW_UNAUTHENTICATED: "false",
    });
    expect(config.corsOrigins).toEqual(["https://a.example", "https://b.example"]);
    expect(config.allowUnauthenticated).toBe(false);
  });

  it("takes a boolean option as a bare flag or with =true / =false", () => {
    const allowed = (argv: string[], env: NodeJS.ProcessEnv = {}) =>
      loadConfig(argv, env).config.allowUnauthenticated;
    expect(allowed(["--allow-unauthenticated"])).toBe(true);
    expect(allowed(["--allow-unauthenticated=true"])).toBe(true);
    expect(allowed(["--allow-unauthenticated=0"])).toBe(false);
    // The flag still wins over the environment, either way.
    expect(allowed(["--allow-unauthenticated=false"], { ALLOW_UNAUTHENTICATED: "true" })).toBe(
      false,
    );
    expect(allowed(["--allow-unauthenticated"], { ALLOW_UNAUTHENTICATED: "false" })).toBe(true);
    expect(refusal(["--allow-unauthenticated=maybe"])).toMatch(
      /^--allow-unauthenticated: expected true, false/,
    );
    // Other options keep taking `--flag=value` through parseArgs.
    expect(loadConfig(["--port=9000", "--allow-unauthenticated"], {}).config.port).toBe(9000);
  });

  it("answers --help whatever else is wrong", async () => {
    const path = await file("broken.yaml", "prot: 80\n");
    for (const argv of [
      ["--help"],
      ["-h"],
      ["--config", path, "--help"],
      ["--no-such-flag", "--help"],
      ["--port", "70000", "-h"],
    ]) {
      const loaded = loadConfig(argv, { PORT: "eighty" });
      expect(loaded.help, argv.join(" ")).toBe(true);
      expect(loaded.config).toEqual(defaultConfig());
    }
  });

  it("names the option, its source and what was expected", async () => {
    expect(refusal([], { PORT: "eighty" })).toMatch(/^PORT: .*number/);
    expect(refusal(["--port", "70000"])).toMatch(/^--port: .*65535/);
    expect(refusal(["--sqlite-synchronous", "sometimes"])).toMatch(
      /^--sqlite-synchronous: .*"full"/,
    );
    const typo = await file("typo.yaml", "prot: 80\n");
    expect(refusal(["--config", typo])).toMatch(/prot is not an option/);
    const badKey = await file("key.yaml", "apiKeys:\n  - hash: md5:abc\n    tenant: t\n    scopes: [read]\n");
    expect(refusal(["--config", badKey])).toMatch(/apiKeys\.0\.hash: expected sha256/);
    const badScope = await file(
      "scope.yaml",
      `apiKeys:\n  - hash: sha256:${"0".repeat(64)}\n    tenant: t\n    scopes: [write]\n`,
    );
    expect(refusal(["--config", badScope])).toMatch(/apiKeys\.0\.scopes\.0/);
    expect(refusal(["--config", join(dir, "missing.yaml")])).toMatch(/missing\.yaml/);
    expect(refusal(["--no-such-flag"])).toMatch(/no-such-flag/);
  });

  it("wants a TLS certificate and key together, and readable", async () => {
    const cert = await file("cert.pem", "not checked here\n");
    expect(refusal(["--tls-cert", cert])).toMatch(/^tls-key: required with tls-cert/);
    expect(refusal([], { TLS_KEY: cert })).toMatch(/^tls-cert: required with tls-key/);
    expect(refusal(["--tls-cert", cert, "--tls-key", join(dir, "gone.pem")])).toMatch(
      /^tls-key: cannot read .*gone\.pem/,
    );
    const both = loadConfig(["--tls-cert", cert, "--tls-key", cert], {}).config;
    expect([both.tlsCert, both.tlsKey]).toEqual([cert, cert]);
  });

  it("lists every option with its default in --help", () => {
    const lines = describeOptions().split("\n");
    const entries = Object.entries(OPTIONS as Record<string, OptionDefinition>);
    expect(entries.length).toBeGreaterThan(0);
    for (const [key, option] of entries) {
      const name =
        option.flag === false
          ? `${key} (file only)`
          : `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
      // One line per option: its flag, its variable, then its default.
      const line = lines.find((l) => new RegExp(`^  ${escape(name)}[ [=]`).test(l));
      expect(line, key).toBeDefined();
      if (option.env) expect(line, key).toContain(`(${option.env})`);
      expect(line, key).toMatch(new RegExp(`default ${escape(JSON.stringify(option.default))}$`));
    }
    expect(lines.find((l) => l.includes("--allow-unauthenticated"))).toContain(
      "--allow-unauthenticated[=true|false]",
    );
  });

  it("prints --help and exits 0 even with a bad variable", async () => {
    const { stdout } = await run("node", ["--import", "tsx", "src/main.ts", "--help"], {
      cwd: root,
      env: { ...process.env, PORT: "eighty" },
    });
    expect(stdout).toContain("Usage: agent-gateway");
    expect(stdout).toContain("--port (PORT) default 8080");
  });

  it("stops the start with exit code 2 and the reason", async () => {
    const failure = await run("node", ["--import", "tsx", "src/main.ts"], {
      cwd: root,
      env: { ...process.env, PORT: "eighty" },
    }).then(
      () => undefined,
      (error: { code: number; stderr: string }) => error,
    );
    expect(failure?.code).toBe(2);
    expect(failure?.stderr).toMatch(/PORT: /);
  });
});
