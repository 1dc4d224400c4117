import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import {
  Http2SessionManager,
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { AgentService } from "../../gen/agent/v1/agent_pb.js";
import { defaultConfig, type Config } from "../../src/config.js";
import type { Agent } from "../../src/runtime/index.js";
import type { Store } from "../../src/store/store.js";
import { createGateway, type Gateway } from "../../src/server/gateway.js";
import type { Logger } from "../../src/telemetry/logger.js";

/** A gateway on a free loopback port with its own data directory. */
export interface TestGateway {
  gateway: Gateway;
  baseUrl: string;
  port: number;
  dataDir: string;
  /** Closes the gateway, the clients' sessions and removes the data. */
  close(): Promise<void>;
  /** A transport of the given protocol; closed with the gateway. */
  transport(protocol: Protocol): Transport;
  client(protocol: Protocol): Client<typeof AgentService>;
}

export type Protocol = "connect-json" | "connect-binary" | "grpc" | "grpc-web";

export const PROTOCOLS: Protocol[] = [
  "connect-json",
  "connect-binary",
  "grpc",
  "grpc-web",
];

export async function startGateway(
  options: {
    config?: Partial<Config>;
    agents?: Agent[];
    /** Live events buffered per watch stream; small to test overflow. */
    watchBufferSize?: number;
    /** @default a logger that writes nothing */
    logger?: Logger;
    /** @default SQLite in the test's own data directory */
    store?: Store;
  } = {},
): Promise<TestGateway> {
  const dataDir = await mkdtemp(join(tmpdir(), "agent-gateway-test-"));
  const config: Config = {
    ...defaultConfig(),
    port: 0,
    dataDir,
    sqliteSynchronous: "normal",
    // close() stops running invocations at once, as before graceful
    // shutdown existed; tests of the grace set their own.
    shutdownGraceMs: 0,
    // Tests make hundreds of calls a second as tenant default; the rate
    // limit is not what they test, so it is out of their way. Rate-limit
    // tests set their own.
    ratePerSecond: 1_000_000,
    rateBurst: 1_000_000,
    ...options.config,
  };
  const gateway = createGateway({
    config,
    agents: options.agents,
    watchBufferSize: options.watchBufferSize,
    logger: options.logger,
    store: options.store,
  });
  const address = await gateway.start();
  const baseUrl = `http://127.0.0.1:${address.port}`;
  const sessions: Http2SessionManager[] = [];
  const transport = (protocol: Protocol): Transport => {
    const sessionManager = new Http2SessionManager(baseUrl);
    sessions.push(sessionManager);
    switch (protocol) {
      case "connect-json":
        // connect-node defaults to the binary format: ask for JSON.
        return createConnectTransport({
          baseUrl,
          httpVersion: "1.1",
          useBinaryFormat: false,
        });
      case "connect-binary":
        return createConnectTransport({
          baseUrl,
          httpVersion: "2",
          useBinaryFormat: true,
          sessionManager,
        });
      case "grpc":
        return createGrpcTransport({ baseUrl, sessionManager });
      case "grpc-web":
        return createGrpcWebTransport({ baseUrl, httpVersion: "1.1" });
    }
  };
  return {
    gateway,
    baseUrl,
    port: address.port,
    dataDir,
    transport,
    client: (protocol) => createClient(AgentService, transport(protocol)),
    async close() {
      for (const session of sessions) session.abort();
      await gateway.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
