import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { ConfigError, type ApiKeyEntry, type Scope } from "../config.js";

/**
 * Every key starts with this, so that a key pasted into the wrong place
 * (a log, a repository) is recognisable by people and secret scanners.
 */
export const API_KEY_PREFIX = "agk_";

/** 256 random bits, as the issue asks; 43 characters of base64url. */
const KEY_BYTES = 32;

/**
 * A new API key: the prefix and 256 random bits in base64url. Shown once;
 * only its hash (hashApiKey) is stored.
 */
export function generateApiKey(): string {
  return API_KEY_PREFIX + randomBytes(KEY_BYTES).toString("base64url");
}

/** What the configuration stores of a key: `sha256:<64 hex digits>`. */
export function hashApiKey(key: string): string {
  return `sha256:${sha256(key).toString("hex")}`;
}

/** The caller a valid key stands for. Holds nothing secret. */
export interface KeyIdentity {
  readonly tenant: string;
  readonly scopes: ReadonlySet<Scope>;
  /** The entry's name, if it has one; for logs. */
  readonly name?: string;
  /**
   * The first 12 hex digits of the key's hash: names the key in logs and
   * rate-limit partitions without revealing anything usable.
   */
  readonly id: string;
  /** The key's own rate, if its entry sets one. */
  readonly ratePerSecond?: number;
  /** The key's own burst, if its entry sets one. */
  readonly burst?: number;
}

interface Known {
  readonly digest: Buffer;
  readonly identity: KeyIdentity;
}

/**
 * Keys that presented headers can be long; nothing longer than this is
 * hashed, it is simply not a key.
 */
const MAX_KEY_LENGTH = 512;

/**
 * The configured API keys, by the SHA-256 digest of the key. Verifying a
 * key hashes it and looks the digest up: the lookup's timing depends only
 * on the digest of what the caller sent, which tells the caller nothing
 * about the stored digests (it cannot steer a SHA-256 output), and the
 * final comparison runs in constant time.
 */
export class ApiKeyRing {
  private readonly byDigest = new Map<string, Known>();

  /** Throws ConfigError if two entries have the same hash. */
  constructor(entries: readonly ApiKeyEntry[]) {
    for (const [index, entry] of entries.entries()) {
      const hex = entry.hash.slice("sha256:".length);
      if (this.byDigest.has(hex)) {
        throw new ConfigError(
          `apiKeys.${index}.hash: the same key is configured twice`,
        );
      }
      this.byDigest.set(hex, {
        digest: Buffer.from(hex, "hex"),
        identity: {
          tenant: entry.tenant,
          scopes: new Set(entry.scopes),
          name: entry.name,
          id: hex.slice(0, 12),
          ratePerSecond: entry.ratePerSecond,
          burst: entry.burst,
        },
      });
    }
  }

  /** How many keys are configured; none means no authentication. */
  get size(): number {
    return this.byDigest.size;
  }

  /** The identity of a presented key, or undefined for an unknown one. */
  verify(presented: string): KeyIdentity | undefined {
    if (presented.length === 0 || presented.length > MAX_KEY_LENGTH) {
      return undefined;
    }
    const digest = sha256(presented);
    const known = this.byDigest.get(digest.toString("hex"));
    // Compare even on a miss (against itself), so that a hit and a miss
    // do the same work after the lookup.
    const equal = timingSafeEqual(digest, known?.digest ?? digest);
    return equal && known !== undefined ? known.identity : undefined;
  }
}

/**
 * Keyed per process: a plain hash of what was sent would let anyone who
 * reads the logs test guesses at it offline, and a caller who sends a
 * password by mistake sends something guessable.
 */
const LOG_ID_SECRET = randomBytes(32);

/**
 * The short id logs use for a presented key that matched nothing: 12 hex
 * digits of an HMAC of it, enough to tell two callers apart within one
 * process's logs, and nothing to test a guess against.
 */
export function keyIdOf(presented: string): string {
  return createHmac("sha256", LOG_ID_SECRET).update(presented, "utf8").digest("hex").slice(0, 12);
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text, "utf8").digest();
}
