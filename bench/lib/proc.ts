import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root. */
export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "../..");

const PAGE_SIZE = 4096;
const KEEP_LINES = 200;

/**
 * A child process in its own process group, whose output is kept line by
 * line so that a caller can wait for a line and show the last ones when
 * something fails. Stopping it signals the whole group.
 */
export class Child {
  /** Every child still running, so that none outlives the benchmark. */
  private static readonly live = new Set<Child>();

  /** Kills every child's process group at once (for exit paths). */
  static killAll(): void {
    for (const child of Child.live) child.signal("SIGKILL");
  }

  readonly process: ChildProcess;
  readonly exited: Promise<number | null>;
  private readonly lines: string[] = [];
  private readonly waiters = new Set<(line: string) => void>();
  private exitCode: number | null | undefined;

  constructor(
    readonly name: string,
    command: string,
    args: string[],
    options: { env?: NodeJS.ProcessEnv; cwd?: string } = {},
  ) {
    this.process = spawn(command, args, {
      cwd: options.cwd ?? ROOT,
      env: { ...process.env, ...options.env },
      stdio: ["pipe", "pipe", "pipe"],
      detached: true,
    });
    Child.live.add(this);
    this.exited = new Promise((resolve) => {
      this.process.once("exit", (code, signal) => {
        Child.live.delete(this);
        this.exitCode = code ?? (signal ? -1 : null);
        resolve(this.exitCode);
      });
      this.process.once("error", (error) => {
        Child.live.delete(this);
        this.remember(`spawn failed: ${error.message}`);
        this.exitCode = -1;
        resolve(-1);
      });
    });
    for (const stream of [this.process.stdout!, this.process.stderr!]) {
      let partial = "";
      stream.setEncoding("utf8");
      stream.on("data", (text: string) => {
        const parts = (partial + text).split("\n");
        partial = parts.pop() ?? "";
        for (const line of parts) this.remember(line);
      });
    }
  }

  get pid(): number {
    return this.process.pid ?? -1;
  }

  get running(): boolean {
    return this.exitCode === undefined;
  }

  /** The last lines it printed, for an error message. */
  tail(n = 20): string {
    return this.lines.slice(-n).join("\n");
  }

  /** Every line printed so far (the last few hundred). */
  output(): readonly string[] {
    return this.lines;
  }

  /**
   * Resolves with the first value `match` returns for a line, looking at
   * lines already printed too; rejects if the process exits first or the
   * time runs out.
   */
  waitFor<T>(
    match: (line: string) => T | undefined,
    timeoutMs: number,
    what = "the expected output",
  ): Promise<T> {
    for (const line of this.lines) {
      const found = match(line);
      if (found !== undefined) return Promise.resolve(found);
    }
    return new Promise<T>((resolve, reject) => {
      const finish = (error?: Error, value?: T) => {
        clearTimeout(timer);
        this.waiters.delete(waiter);
        if (error) reject(error);
        else resolve(value as T);
      };
      const waiter = (line: string) => {
        const found = match(line);
        if (found !== undefined) finish(undefined, found);
      };
      const timer = setTimeout(
        () => finish(this.failure(`no ${what} within ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.waiters.add(waiter);
      void this.exited.then((code) => finish(this.failure(`exited (${code}) before ${what}`)));
    });
  }

  /** Writes a line to its standard input. */
  send(line: string): void {
    this.process.stdin?.write(`${line}\n`);
  }

  /** SIGTERM to the group, then SIGKILL after `graceMs`. */
  async stop(graceMs = 10_000): Promise<void> {
    if (!this.running) return;
    this.signal("SIGTERM");
    const timer = setTimeout(() => this.signal("SIGKILL"), graceMs);
    await this.exited;
    clearTimeout(timer);
    // Whatever it left behind in its group goes too.
    this.signal("SIGKILL");
  }

  failure(message: string): Error {
    return new Error(`${this.name}: ${message}\n--- last output ---\n${this.tail()}`);
  }

  private signal(signal: NodeJS.Signals): void {
    try {
      process.kill(-this.pid, signal);
    } catch {
      // The group is gone already.
    }
  }

  private remember(line: string): void {
    this.lines.push(line);
    if (this.lines.length > KEEP_LINES) this.lines.shift();
    for (const waiter of [...this.waiters]) waiter(line);
  }
}

/** `node --import tsx <script> ...args`, as every server and client runs. */
export function nodeArgs(script: string, args: string[] = [], nodeFlags: string[] = []): string[] {
  return [...nodeFlags, "--import", "tsx", script, ...args];
}

/** The port from a JSON log line `{"msg":"listening","port":N}`. */
export function listeningPort(line: string): number | undefined {
  if (!line.startsWith("{")) return undefined;
  try {
    const entry = JSON.parse(line) as { msg?: unknown; port?: unknown };
    return entry.msg === "listening" && typeof entry.port === "number" ? entry.port : undefined;
  } catch {
    return undefined;
  }
}

/** A loopback port that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/**
 * Runs a Node client process to its end and returns the JSON object it
 * printed last. Throws with its output if it fails or runs too long.
 */
export async function runClient<T>(
  script: string,
  options: Record<string, unknown>,
  timeoutMs: number,
): Promise<T> {
  const child = new Child(script, process.execPath, nodeArgs(script, [JSON.stringify(options)]));
  const timer = setTimeout(() => void child.stop(1000), timeoutMs);
  const code = await child.exited;
  clearTimeout(timer);
  if (code !== 0) throw child.failure(`exited with ${code}`);
  const last = [...child.output()].reverse().find((l) => l.startsWith("{"));
  if (!last) throw child.failure("printed no result");
  return JSON.parse(last) as T;
}

/** Runs a command to its end; resolves with its output and exit code. */
export async function runCommand(
  command: string,
  args: string[],
  timeoutMs: number,
  env?: NodeJS.ProcessEnv,
): Promise<{ code: number | null; output: string }> {
  const child = new Child(command, command, args, { env });
  const timer = setTimeout(() => void child.stop(1000), timeoutMs);
  const code = await child.exited;
  clearTimeout(timer);
  return { code, output: child.output().join("\n") };
}

/** Pids of the processes in a process group. */
function groupPids(pgid: number): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      // Fields after the command name, which may hold spaces: state ppid pgrp.
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(fields[2]) === pgid) pids.push(Number(entry));
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

function rssOf(pid: number): number {
  try {
    const statm = readFileSync(`/proc/${pid}/statm`, "utf8").split(" ");
    return Number(statm[1]) * PAGE_SIZE;
  } catch {
    return 0;
  }
}

function hwmOf(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = /VmHWM:\s+(\d+)/.exec(status)?.[1];
    return kb ? Number(kb) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** The resident memory of a process group now, in bytes. */
export function groupRss(pgid: number): number {
  let sum = 0;
  for (const pid of groupPids(pgid)) sum += rssOf(pid);
  return sum;
}

/**
 * The peak resident memory of a process group over a window: sampled
 * every 25 ms, and for a one-process group also the kernel's own high-water
 * mark (reset at the start of the window where the kernel allows it).
 */
export class PeakRss {
  private peak = 0;
  private pids: number[];
  private readonly timer: NodeJS.Timeout;
  private readonly refresher: NodeJS.Timeout;
  private hwmReset = false;

  constructor(private readonly pgid: number) {
    this.pids = groupPids(pgid);
    if (this.pids.length === 1) {
      try {
        // "5" resets the peak RSS (Linux 4.0+); needs write access.
        writeFileSync(`/proc/${this.pids[0]}/clear_refs`, "5");
        this.hwmReset = true;
      } catch {
        this.hwmReset = false;
      }
    }
    this.sample();
    this.timer = setInterval(() => this.sample(), 25);
    this.refresher = setInterval(() => (this.pids = groupPids(pgid)), 500);
  }

  private stopped = false;

  /** Stops sampling; returns the peak in bytes. Safe to call twice. */
  stop(): number {
    if (this.stopped) return this.peak;
    this.stopped = true;
    clearInterval(this.timer);
    clearInterval(this.refresher);
    this.sample();
    if (this.hwmReset && this.pids.length === 1) {
      this.peak = Math.max(this.peak, hwmOf(this.pids[0]!));
    }
    return this.peak;
  }

  private sample(): void {
    let sum = 0;
    for (const pid of this.pids) sum += rssOf(pid);
    if (sum > this.peak) this.peak = sum;
  }
}

/** CPU time used so far by a process group, in seconds. */
export function groupCpuSeconds(pgid: number): number {
  let ticks = 0;
  for (const pid of groupPids(pgid)) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      // utime and stime, fields 14 and 15 of stat(5).
      ticks += Number(fields[11]) + Number(fields[12]);
    } catch {
      // Gone meanwhile.
    }
  }
  return ticks / 100;
}

/**
 * Waits until a server has finished what a load left queued (its CPU use
 * falls under 10% of a core over 100 ms), at most `maxMs`: so that work of
 * one run does not steal the CPU of the next.
 */
export async function waitIdle(pgid: number, maxMs = 10_000): Promise<void> {
  const deadline = Date.now() + maxMs;
  let before = groupCpuSeconds(pgid);
  while (Date.now() < deadline) {
    await sleep(100);
    const now = groupCpuSeconds(pgid);
    if (now - before < 0.01) return;
    before = now;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export { groupPids };
