import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** The repository root: where `bin/agent-gateway.js` and `src/` are. */
export const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** A bound on waiting for a child, so that a hang fails instead of stalling. */
const BOUND_MS = 30_000;

/** The command a user runs: the `agent-gateway` bin (TypeScript via tsx). */
export const BIN = ["bin/agent-gateway.js"];

export interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

const running = new Set<ChildProcess>();

function spawnChild(args: string[], env: NodeJS.ProcessEnv): ChildProcess {
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: "info", ...env },
    // Its own process group, so that killing the group kills all of it.
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  child.once("exit", () => running.delete(child));
  return child;
}

/** Runs a command to its end (killed past the bound) and returns its output. */
export function run(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Finished> {
  const child = spawnChild(args, env);
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const timer = setTimeout(() => void killGroup(child), BOUND_MS);
  return new Promise((resolve) => {
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

export interface ChildGateway {
  process: ChildProcess;
  port: number;
  baseUrl: string;
  /** Every JSON log line so far. */
  log: Record<string, unknown>[];
  /** Kills the child's process group; resolves once it is gone. */
  stop(): Promise<void>;
}

/**
 * Starts a gateway process with `args` and resolves once it logs
 * "listening"; rejects with its output if it exits first.
 */
export async function startChildGateway(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<ChildGateway> {
  const child = spawnChild(args, env);
  const log: Record<string, unknown>[] = [];
  const output: string[] = [];
  child.stderr!.on("data", (chunk: Buffer) => output.push(chunk.toString()));
  const port = await new Promise<number>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on("line", (line) => {
      output.push(line);
      try {
        const entry = JSON.parse(line) as Record<string, unknown>;
        log.push(entry);
        if (entry.msg === "listening" && typeof entry.port === "number") resolve(entry.port);
      } catch {
        // Not a log line; kept in the output for the error below.
      }
    });
    child.once("exit", (code, signal) =>
      reject(new Error(`gateway exited (${code ?? signal}) before listening:\n${output.join("\n")}`)),
    );
    setTimeout(
      () => reject(new Error(`gateway did not listen:\n${output.join("\n")}`)),
      BOUND_MS,
    ).unref();
  }).catch(async (error: unknown) => {
    await killGroup(child);
    throw error;
  });
  return {
    process: child,
    port,
    baseUrl: `http://127.0.0.1:${port}`,
    log,
    stop: () => killGroup(child),
  };
}

/** Kills every child still running; for afterAll. */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map(killGroup));
}

async function killGroup(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  try {
    process.kill(-child.pid!, "SIGKILL");
  } catch {
    // Already gone.
  }
  await exited;
}
