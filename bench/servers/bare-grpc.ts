import { randomUUID } from "node:crypto";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

/**
 * What Node itself can do: a bare @grpc/grpc-js server of
 * agent.v1.AgentService/Invoke over h2c, returning the invocation echo
 * would, succeeded, with no runtime and no store. The schema is loaded
 * from proto/ at run time, as grpc-js users do.
 *
 * Prints `{"msg":"listening","port":N}` once bound (PORT, default 0).
 */

const root = join(dirname(fileURLToPath(import.meta.url)), "../..");
const require = createRequire(import.meta.url);
const googleProtoFiles = dirname(require.resolve("google-proto-files/package.json"));

const definition = protoLoader.loadSync("agent/v1/agent.proto", {
  includeDirs: [join(root, "proto"), googleProtoFiles],
  keepCase: false,
  longs: String,
  enums: String,
  defaults: false,
  oneofs: true,
});
const loaded = grpc.loadPackageDefinition(definition) as unknown as {
  agent: { v1: { AgentService: grpc.ServiceClientConstructor } };
};

interface InvokeRequest {
  agent: string;
  input?: unknown;
}

function timestamp(ms: number) {
  return { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 };
}

const server = new grpc.Server();
server.addService(loaded.agent.v1.AgentService.service, {
  Invoke(
    call: grpc.ServerUnaryCall<InvokeRequest, unknown>,
    callback: grpc.sendUnaryData<unknown>,
  ) {
    const now = timestamp(Date.now());
    const id = randomUUID();
    const metadata = new grpc.Metadata();
    metadata.set("agent-invocation-id", id);
    call.sendMetadata(metadata);
    callback(null, {
      invocation: {
        id,
        agent: call.request.agent,
        state: "INVOCATION_STATE_SUCCEEDED",
        input: call.request.input,
        result: call.request.input,
        createTime: now,
        updateTime: now,
        finishTime: now,
        lastSequence: "5",
        onDisconnect: "ON_DISCONNECT_CONTINUE",
      },
    });
  },
});

const port = await new Promise<number>((resolve, reject) => {
  server.bindAsync(
    `127.0.0.1:${process.env.PORT ?? 0}`,
    grpc.ServerCredentials.createInsecure(),
    (error, bound) => (error ? reject(error) : resolve(bound)),
  );
});
process.stdout.write(`${JSON.stringify({ msg: "listening", port })}\n`);

const stop = () => server.tryShutdown(() => process.exit(0));
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
