import { RuntimeError } from "./errors.js";

export interface AdmissionOptions {
  /** Invocations that may run at once in this process. @default no limit */
  maxRunning?: number;
  /** Invocations one tenant may have running at once. @default no limit */
  maxRunningPerTenant?: number;
  /**
   * The retry delay a refused start is told. Nobody knows when a running
   * invocation ends, so it is a hint, not a promise. @default 1000
   */
  retryAfterMs?: number;
  /** Told about every refused start: which cap, and whose. */
  onRefuse?: (limit: "tenant_running" | "total_running", tenant: string) => void;
}

/** One counted invocation; its place is given back exactly once. */
export interface Slot {
  /** Gives the place back now. */
  release(): void;
  /** Gives the place back once `done` settles; at once without it. */
  releaseWhen(done: Promise<unknown> | undefined): void;
}

/**
 * Counts the invocations that run in this process (waiting for input
 * counts: the invocation holds its place until it ends), in total and per
 * tenant, and refuses starts past the caps. Counting is synchronous, so
 * starts that race each other cannot both take the last place.
 */
export class Admission {
  private total = 0;
  private readonly byTenant = new Map<string, number>();
  private readonly maxRunning: number;
  private readonly maxRunningPerTenant: number;
  private readonly retryAfterMs: number;
  private readonly onRefuse: AdmissionOptions["onRefuse"];

  constructor(options: AdmissionOptions = {}) {
    this.onRefuse = options.onRefuse;
    this.maxRunning = options.maxRunning ?? Infinity;
    this.maxRunningPerTenant = options.maxRunningPerTenant ?? Infinity;
    this.retryAfterMs = options.retryAfterMs ?? 1000;
  }

  /** Invocations running now: of one tenant, or in total. */
  running(tenant?: string): number {
    return tenant === undefined ? this.total : (this.byTenant.get(tenant) ?? 0);
  }

  /**
   * Takes a place for a new invocation of the tenant, or throws
   * RuntimeError resource_exhausted (with retryAfterMs) past a cap.
   */
  reserve(tenant: string): Slot {
    if (this.running(tenant) >= this.maxRunningPerTenant) {
      this.onRefuse?.("tenant_running", tenant);
      throw new RuntimeError(
        "resource_exhausted",
        `this tenant already runs ${this.maxRunningPerTenant} invocations, its limit; retry once one has finished`,
        { retryAfterMs: this.retryAfterMs },
      );
    }
    if (this.total >= this.maxRunning) {
      this.onRefuse?.("total_running", tenant);
      throw new RuntimeError(
        "resource_exhausted",
        "the gateway runs as many invocations as it may; retry later",
        { retryAfterMs: this.retryAfterMs },
      );
    }
    return this.count(tenant);
  }

  /**
   * Counts an invocation without refusing it: one resumed after a restart
   * was accepted before and is not turned away now.
   */
  count(tenant: string): Slot {
    this.total += 1;
    this.byTenant.set(tenant, this.running(tenant) + 1);
    let held = true;
    const release = (): void => {
      if (!held) return;
      held = false;
      this.total -= 1;
      const left = this.running(tenant) - 1;
      if (left > 0) this.byTenant.set(tenant, left);
      else this.byTenant.delete(tenant);
    };
    return {
      release,
      releaseWhen(done) {
        if (done === undefined) release();
        else void done.then(release, release);
      },
    };
  }
}
