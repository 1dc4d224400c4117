import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import * as http2 from "node:http2";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { create, fromBinary } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import type { ConnectRouter, Transport } from "@connectrpc/connect";
import {
  Http2SessionManager,
  connectNodeAdapter,
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentService } from "../../gen/agent/v1/agent_pb.js";
import {
  ServerReflection,
  ServerReflectionRequestSchema,
  type ServerReflectionResponse,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { createListener, detectProtocol } from "../../src/server/listener.js";
import type { Listener, ListenerOptions } from "../../src/server/listener.js";
import { registerReflection } from "../../src/server/reflection.js";

const run = promisify(execFile);
const buf = fileURLToPath(
  new URL("../../node_modules/.bin/buf", import.meta.url),
);
const listAgentsPath = "/agent.v1.AgentService/ListAgents";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** ListAgents returns one agent; WatchInvocation streams on a schedule. */
function routes(router: ConnectRouter): void {
  router.service(AgentService, {
    listAgents: () => ({ agents: [{ name: "echo", description: "Echoes." }] }),
    async *watchInvocation(req, ctx) {
      // "slow": four events 400 ms apart; "forever": one, then until aborted.
      const count = req.invocationId === "slow" ? 4 : 1;
      for (let i = 1; i <= count; i++) {
        if (i > 1) await sleep(400);
        const event = { invocationId: req.invocationId, sequence: BigInt(i) };
        yield { event };
      }
      if (req.invocationId === "forever") {
        await new Promise((resolve) =>
          ctx.signal.addEventListener("abort", resolve),
        );
      }
    },
  });
  registerReflection(router, [AgentService]);
}

const handler = connectNodeAdapter({ routes, readMaxBytes: 1 << 20 });

async function start(
  extra: Partial<ListenerOptions> = {},
): Promise<{ listener: Listener; port: number }> {
  const listener = createListener({
    host: "127.0.0.1",
    port: 0,
    handler,
    ...extra,
  });
  const { port } = await listener.listen();
  return { listener, port };
}

/** Connect unary JSON through curl; returns the body and the HTTP version. */
async function curl(url: string, ...flags: string[]) {
  const { stdout } = await run("curl", [
    "-sS",
    "--max-time",
    "10",
    ...flags,
    "-H",
    "content-type: application/json",
    "-d",
    "{}",
    "-w",
    "\n%{http_version}",
    url,
  ]);
  const cut = stdout.lastIndexOf("\n");
  return {
    body: JSON.parse(stdout.slice(0, cut)) as unknown,
    version: stdout.slice(cut + 1),
  };
}

async function listAgentNames(transport: Transport): Promise<string[]> {
  const res = await createClient(AgentService, transport).listAgents({});
  return res.agents.map((a) => a.name);
}

/** Resolves with what the server sent, once it closes the connection. */
function rawExchange(
  port: number,
  parts: readonly string[],
  gapMs = 50,
): Promise<{ data: Buffer; socket: net.Socket }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.setNoDelay(true);
    const chunks: Buffer[] = [];
    socket.on("data", (c: Buffer) => chunks.push(c));
    socket.on("error", reject);
    socket.on("close", () => resolve({ data: Buffer.concat(chunks), socket }));
    void (async () => {
      for (const part of parts) {
        socket.write(part);
        await sleep(gapMs);
      }
    })();
  });
}

describe("detectProtocol", () => {
  it("waits while the bytes are a prefix of the HTTP/2 preface", () => {
    const enc = (s: string) => Buffer.from(s, "latin1");
    expect(detectProtocol(enc("P"))).toBe("undecided");
    expect(detectProtocol(enc("PRI * HTTP/2.0\r\n"))).toBe("undecided");
    expect(detectProtocol(enc("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))).toBe("h2");
    expect(detectProtocol(enc("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"))).toBe(
      "h2",
    );
    expect(detectProtocol(enc("PO"))).toBe("http1");
    expect(detectProtocol(enc("GET / HTTP/1.1\r\n"))).toBe("http1");
  });
});

describe("plaintext listener", () => {
  let listener: Listener;
  let baseUrl: string;
  let port: number;
  const managers: Http2SessionManager[] = [];
  const h2Transport = (kind: "connect" | "grpc" | "grpc-web") => {
    const sessionManager = new Http2SessionManager(baseUrl);
    managers.push(sessionManager);
    const options = { baseUrl, httpVersion: "2", sessionManager } as const;
    if (kind === "grpc") return createGrpcTransport(options);
    if (kind === "grpc-web") return createGrpcWebTransport(options);
    return createConnectTransport(options);
  };

  beforeAll(async () => {
    ({ listener, port } = await start());
    baseUrl = `http://127.0.0.1:${port}`;
  });
  afterAll(async () => {
    for (const m of managers) m.abort();
    await listener.close();
  });

  it("answers curl over HTTP/1.1 and h2c on the same port", async () => {
    const expected = { agents: [{ name: "echo", description: "Echoes." }] };
    const h1 = await curl(baseUrl + listAgentsPath, "--http1.1");
    expect(h1).toEqual({ body: expected, version: "1.1" });
    const h2 = await curl(baseUrl + listAgentsPath, "--http2-prior-knowledge");
    expect(h2).toEqual({ body: expected, version: "2" });
  });

  it("answers every connect-node transport", async () => {
    const transports = [
      createConnectTransport({ baseUrl, httpVersion: "1.1" }),
      createGrpcWebTransport({ baseUrl, httpVersion: "1.1" }),
      h2Transport("connect"),
      h2Transport("grpc"),
      h2Transport("grpc-web"),
    ];
    for (const transport of transports) {
      expect(await listAgentNames(transport)).toEqual(["echo"]);
    }
  });

  it("streams over HTTP/1.1 and HTTP/2", async () => {
    for (const transport of [
      createConnectTransport({ baseUrl, httpVersion: "1.1" }),
      h2Transport("grpc"),
    ]) {
      const client = createClient(AgentService, transport);
      const seqs: bigint[] = [];
      for await (const res of client.watchInvocation({ invocationId: "x" })) {
        seqs.push(res.event?.sequence ?? 0n);
      }
      expect(seqs).toEqual([1n]);
    }
  });

  it("rejects listen() when the port is taken", async () => {
    const other = createListener({ host: "127.0.0.1", port, handler });
    await expect(other.listen()).rejects.toMatchObject({
      code: "EADDRINUSE",
    });
    await other.close();
  });

  it("tells protocols apart when the first bytes arrive split", async () => {
    const h1 = await rawExchange(port, [
      "P",
      "OST " + listAgentsPath + " HTTP/1.1\r\nHost: x\r\n",
      "Content-Type: application/json\r\nContent-Length: 2\r\n" +
        "Connection: close\r\n\r\n{}",
    ]);
    expect(h1.data.toString("latin1")).toMatch(/^HTTP\/1\.1 200 OK/);
    expect(h1.data.toString("latin1")).toContain('"name":"echo"');

    // Half a preface must not be answered as HTTP/1.1 (400) nor dropped.
    const socket = net.connect(port, "127.0.0.1");
    socket.setNoDelay(true);
    const received: Buffer[] = [];
    socket.on("data", (c: Buffer) => received.push(c));
    await new Promise((r) => socket.once("connect", r));
    socket.write("PRI * HTTP/2.0\r\n");
    await sleep(100);
    expect(received).toEqual([]);
    // The rest of the preface and an empty SETTINGS frame.
    socket.write("\r\nSM\r\n\r\n");
    socket.write(Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]));
    await sleep(100);
    const reply = Buffer.concat(received);
    expect(reply[3]).toBe(4); // the server's SETTINGS frame
    socket.destroy();
  });

  it("lists methods and calls through reflection with buf curl", async () => {
    const common = ["curl", "--protocol", "grpc", "--http2-prior-knowledge"];
    const list = await run(buf, [...common, "--list-methods", baseUrl]);
    expect(list.stdout.split("\n")).toEqual(
      expect.arrayContaining([
        "agent.v1.AgentService/ListAgents",
        "agent.v1.AgentService/Invoke",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
      ]),
    );
    const call = await run(buf, [
      ...common,
      "-d",
      "{}",
      baseUrl + listAgentsPath,
    ]);
    expect(JSON.parse(call.stdout)).toEqual({
      agents: [{ name: "echo", description: "Echoes." }],
    });
  }, 30_000);

  it("answers reflection requests for symbols and files", async () => {
    const client = createClient(ServerReflection, h2Transport("grpc"));
    type Req = MessageInitShape<typeof ServerReflectionRequestSchema>;
    const ask = async (...reqs: Req["messageRequest"][]) => {
      const out: ServerReflectionResponse[] = [];
      async function* requests() {
        for (const messageRequest of reqs) {
          yield create(ServerReflectionRequestSchema, { messageRequest });
        }
      }
      for await (const res of client.serverReflectionInfo(requests())) {
        out.push(res);
      }
      return out.map((r) => r.messageResponse);
    };
    const fileNames = (a: ServerReflectionResponse["messageResponse"]) =>
      a.case === "fileDescriptorResponse"
        ? a.value.fileDescriptorProto.map(
            (b) => fromBinary(FileDescriptorProtoSchema, b).name,
          )
        : a;

    const [services, ...answers] = await ask(
      { case: "listServices", value: "" },
      { case: "fileContainingSymbol", value: "agent.v1.Event.Started" },
      { case: "fileContainingSymbol", value: "agent.v1.AgentService.Invoke" },
      { case: "fileContainingSymbol", value: "agent.v1.InvocationState" },
      {
        case: "fileContainingSymbol",
        value: "agent.v1.INVOCATION_STATE_QUEUED",
      },
      { case: "fileByFilename", value: "google/protobuf/timestamp.proto" },
      { case: "fileContainingSymbol", value: "agent.v1.Nope" },
      { case: "fileByFilename", value: "nope.proto" },
      {
        case: "allExtensionNumbersOfType",
        value: "google.protobuf.MethodOptions",
      },
    );
    expect(services).toEqual({
      case: "listServicesResponse",
      value: expect.objectContaining({
        service: [
          expect.objectContaining({ name: "agent.v1.AgentService" }),
          expect.objectContaining({
            name: "grpc.reflection.v1.ServerReflection",
          }),
        ],
      }),
    });
    const agentFiles = [
      "agent/v1/agent.proto",
      "google/api/annotations.proto",
      "google/api/http.proto",
      "google/protobuf/descriptor.proto",
      "google/protobuf/duration.proto",
      "google/protobuf/struct.proto",
      "google/protobuf/timestamp.proto",
    ];
    for (const answer of answers.slice(0, 4)) {
      const names = fileNames(answer!) as string[];
      expect(names[0]).toBe("agent/v1/agent.proto");
      expect([...names].sort()).toEqual(agentFiles);
    }
    expect(fileNames(answers[4]!)).toEqual(["google/protobuf/timestamp.proto"]);
    for (const answer of answers.slice(5, 7)) {
      expect(answer).toMatchObject({
        case: "errorResponse",
        value: { errorCode: Code.NotFound },
      });
    }
    expect(answers[7]).toMatchObject({
      case: "allExtensionNumbersResponse",
      value: { extensionNumber: [72295728] }, // google.api.http
    });
  });
});

describe("listener timeouts and close", () => {
  let listener: Listener;
  let baseUrl: string;
  let port: number;
  const sessionManager = () => new Http2SessionManager(baseUrl);
  let manager: Http2SessionManager | undefined;

  beforeAll(async () => {
    ({ listener, port } = await start({
      headersTimeoutMs: 400,
      requestTimeoutMs: 800,
      closeTimeoutMs: 300,
    }));
    baseUrl = `http://127.0.0.1:${port}`;
  });
  afterAll(async () => {
    manager?.abort();
    await listener.close();
  });

  it("lets an HTTP/1.1 stream outlive requestTimeout", async () => {
    const transport = createConnectTransport({ baseUrl, httpVersion: "1.1" });
    const client = createClient(AgentService, transport);
    const seqs: bigint[] = [];
    const started = Date.now();
    for await (const res of client.watchInvocation({ invocationId: "slow" })) {
      seqs.push(res.event?.sequence ?? 0n);
    }
    expect(Date.now() - started).toBeGreaterThan(1_000);
    expect(seqs).toEqual([1n, 2n, 3n, 4n]);
  });

  it("drops connections that stay silent or stall in headers", async () => {
    const started = Date.now();
    const [silent, slow] = await Promise.all([
      rawExchange(port, []),
      rawExchange(port, ["GET / HTTP/1.1\r\n", "Host: x\r\n"]),
    ]);
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(silent.data.length).toBe(0);
    expect(slow.data.toString("latin1")).toMatch(/^HTTP\/1\.1 408/);
  });

  it("closes with idle and busy connections open, once", async () => {
    // An idle HTTP/1.1 keep-alive connection after one request.
    const idle = net.connect(port, "127.0.0.1");
    const idleClosed = new Promise((r) => idle.once("close", r));
    idle.write(
      `POST ${listAgentsPath} HTTP/1.1\r\nHost: x\r\n` +
        "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    );
    await new Promise((r) => idle.once("data", r));
    // An idle h2c session, and a stream that never ends on another.
    const session = http2.connect(baseUrl);
    session.on("error", () => undefined);
    const sessionClosed = new Promise((r) => session.once("close", r));
    const goaway = new Promise<number>((r) => session.once("goaway", r));
    await new Promise((r) => session.once("remoteSettings", r));
    manager = sessionManager();
    const busy = createClient(
      AgentService,
      createGrpcTransport({ baseUrl, sessionManager: manager }),
    );
    const stream = busy.watchInvocation({ invocationId: "forever" });
    const first = await stream[Symbol.asyncIterator]().next();
    expect(first.done).toBe(false);
    expect(listener.sessions.size).toBe(2);

    const started = Date.now();
    const closed = listener.close();
    expect(listener.close()).toBe(closed);
    await closed;
    expect(Date.now() - started).toBeLessThan(2_000);
    await Promise.all([idleClosed, sessionClosed]);
    // HTTP/2 clients were told to go away, not just cut off.
    expect(await goaway).toBe(http2.constants.NGHTTP2_NO_ERROR);
    expect(listener.sockets.size).toBe(0);
    await expect(listener.listen()).rejects.toThrow(/closed/);
    // The forced close cut the stream that never ended.
    const cut = await (async () => {
      for await (const _ of stream);
    })().catch((e: unknown) => ConnectError.from(e));
    expect([Code.Canceled, Code.Unavailable]).toContain(cut?.code);
  });
});

describe("TLS listener", () => {
  let dir: string;
  let listener: Listener;
  let baseUrl: string;
  let cert: Buffer;
  let manager: Http2SessionManager | undefined;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "listener-tls-"));
    const [certPath, keyPath] = [join(dir, "cert.pem"), join(dir, "key.pem")];
    await run("openssl", [
      "req", "-x509", "-newkey", "ec",
      "-pkeyopt", "ec_paramgen_curve:prime256v1",
      "-nodes", "-days", "1", "-subj", "/CN=localhost",
      "-keyout", keyPath, "-out", certPath,
    ]); // prettier-ignore
    cert = await readFile(certPath);
    const key = await readFile(keyPath);
    let port: number;
    ({ listener, port } = await start({ tls: { cert, key } }));
    baseUrl = `https://127.0.0.1:${port}`;
  });
  afterAll(async () => {
    manager?.abort();
    await listener?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("answers curl over ALPN h2 and http/1.1", async () => {
    const expected = { agents: [{ name: "echo", description: "Echoes." }] };
    const url = baseUrl + listAgentsPath;
    expect(await curl(url, "-k", "--http1.1")).toEqual({
      body: expected,
      version: "1.1",
    });
    expect(await curl(url, "-k", "--http2")).toEqual({
      body: expected,
      version: "2",
    });
  });

  it("answers connect-node over TLS, trusting the certificate", async () => {
    const tls = { ca: cert, servername: "localhost" };
    manager = new Http2SessionManager(baseUrl, {}, tls);
    const grpc = createGrpcTransport({ baseUrl, sessionManager: manager });
    const connect = createConnectTransport({
      baseUrl,
      httpVersion: "1.1",
      nodeOptions: tls,
    });
    expect(await listAgentNames(grpc)).toEqual(["echo"]);
    expect(await listAgentNames(connect)).toEqual(["echo"]);
  });
});
