import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import type { AddressInfo } from "node:net";

/**
 * Answers one request, HTTP/1.1 or HTTP/2 (compatibility API) alike: what
 * `connectNodeAdapter` from @connectrpc/connect-node returns.
 */
export type ListenerHandler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

/** A certificate chain and its private key, PEM encoded. */
export interface ListenerTls {
  readonly cert: string | Buffer;
  readonly key: string | Buffer;
}

export interface ListenerOptions {
  /**
   * The address to bind. By default every interface (Node's default: `::`,
   * which also accepts IPv4 where the system allows).
   */
  readonly host?: string;
  /** The port to bind; 0 picks a free one. @default 8080 */
  readonly port?: number;
  /** Answers every request, whatever the protocol. */
  readonly handler: ListenerHandler;
  /**
   * Serve TLS, choosing h2 or http/1.1 by ALPN. Without it the listener
   * serves plaintext and tells h2c from HTTP/1.1 by the connection's first
   * bytes.
   */
  readonly tls?: ListenerTls;
  /**
   * The HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS sent to clients: how many
   * calls one connection may have open at once. Node's own default is
   * unlimited. @default 100
   */
  readonly maxConcurrentStreams?: number;
  /**
   * Memory one HTTP/2 session may hold, in MiB, mostly outbound data a slow
   * client has not read yet. Past it nghttp2 refuses new streams. Node's
   * default of 10 is tight for 100 busy streams. @default 32
   */
  readonly maxSessionMemoryMiB?: number;
  /**
   * HTTP/1.1: how long an idle keep-alive connection stays open. Longer than
   * the 60 s idle timeout of common load balancers, so that they, not we,
   * close idle connections and never reuse one we just closed.
   * @default 65_000
   */
  readonly keepAliveTimeoutMs?: number;
  /**
   * How long a client has, from opening a connection or starting a request,
   * to send the complete request headers (HTTP/1.1), or the first bytes of
   * the connection (plaintext). Guards against slowloris clients. 0 turns it
   * off. @default 60_000
   */
  readonly headersTimeoutMs?: number;
  /**
   * HTTP/1.1: how long a client has to send its whole request, body
   * included. It stops counting once the request is received, so response
   * streams that last hours are not affected. Must be 0 (off) or at least
   * headersTimeoutMs. @default 300_000
   */
  readonly requestTimeoutMs?: number;
  /**
   * How long close() lets in-flight requests finish before it destroys
   * their connections. Streams can last hours: a graceful shutdown ends them
   * first (through Connect's shutdown signal); this is the backstop.
   * @default 5_000
   */
  readonly closeTimeoutMs?: number;
}

/**
 * One port serving HTTP/1.1 and HTTP/2, created unstarted by
 * createListener().
 */
export interface Listener {
  /** Binds the port; resolves once connections are accepted. */
  listen(): Promise<AddressInfo>;
  /**
   * Stops accepting connections, sends GOAWAY to HTTP/2 sessions and closes
   * idle HTTP/1.1 connections, lets in-flight requests finish for up to
   * closeTimeoutMs, then destroys what is left. Every call returns the same
   * promise.
   */
  close(): Promise<void>;
  /** The bound address, or undefined before listen() resolves. */
  address(): AddressInfo | undefined;
  /** True once close() has been called. */
  readonly closing: boolean;
  /** The server bound to the port: a net.Server or, with TLS, the http2 one. */
  readonly server: net.Server;
  /** The server answering HTTP/1.1 (with TLS, the same as http2). */
  readonly http1: http.Server | http2.Http2SecureServer;
  /** The server answering HTTP/2. */
  readonly http2: http2.Http2Server | http2.Http2SecureServer;
  /** Open HTTP/2 sessions. */
  readonly sessions: ReadonlySet<http2.ServerHttp2Session>;
  /** Open TCP connections, whatever their protocol. */
  readonly sockets: ReadonlySet<net.Socket>;
}

const defaults = {
  port: 8080,
  maxConcurrentStreams: 100,
  maxSessionMemoryMiB: 32,
  keepAliveTimeoutMs: 65_000,
  headersTimeoutMs: 60_000,
  requestTimeoutMs: 300_000,
  closeTimeoutMs: 5_000,
} as const;

const h2Preface = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

/**
 * Tells an HTTP/2 prior-knowledge connection from HTTP/1.1 by its first
 * bytes: "h2" once the whole preface has arrived, "http1" as soon as a byte
 * differs, "undecided" while what arrived is a prefix of the preface.
 */
export function detectProtocol(
  bytes: Uint8Array,
): "h2" | "http1" | "undecided" {
  const n = Math.min(bytes.length, h2Preface.length);
  if (Buffer.compare(bytes.subarray(0, n), h2Preface.subarray(0, n)) !== 0) {
    return "http1";
  }
  return n === h2Preface.length ? "h2" : "undecided";
}

/**
 * Creates an unstarted listener that serves HTTP/1.1 and HTTP/2 on one
 * port. Call listen() to bind it.
 */
export function createListener(options: ListenerOptions): Listener {
  const o = { ...defaults, ...withoutUndefined(options) };
  const sessions = new Set<http2.ServerHttp2Session>();
  const sockets = new Set<net.Socket>();
  const sniffing = new Set<net.Socket>();
  let closing = false;
  let listenPromise: Promise<AddressInfo> | undefined;
  let closePromise: Promise<void> | undefined;

  const http1Options = {
    keepAliveTimeout: o.keepAliveTimeoutMs,
    headersTimeout: o.headersTimeoutMs,
    requestTimeout: o.requestTimeoutMs,
    // Node checks the two timeouts above every 30 s by default, so a 60 s
    // limit could take 90 s; check at a quarter of the limit instead.
    connectionsCheckingInterval: Math.min(
      30_000,
      Math.max(100, Math.floor(o.headersTimeoutMs / 4) || 30_000),
    ),
  };
  const http2Options = {
    settings: { maxConcurrentStreams: o.maxConcurrentStreams },
    maxSessionMemory: o.maxSessionMemoryMiB,
  };
  const tcpOptions = {
    // Small gRPC messages should not wait for Nagle's algorithm; TCP
    // keep-alive finds peers that vanished during hours-long streams.
    noDelay: true,
    keepAlive: true,
    keepAliveInitialDelay: 60_000,
  };

  let server: net.Server;
  let h1: http.Server | http2.Http2SecureServer;
  let h2: http2.Http2Server | http2.Http2SecureServer;
  let closeIdleConnections: () => void;
  if (o.tls !== undefined) {
    const secure = http2.createSecureServer({
      ...http2Options,
      ...tcpOptions,
      cert: o.tls.cert,
      key: o.tls.key,
      allowHTTP1: true,
      ALPNProtocols: ["h2", "http/1.1"],
    });
    // Node reads these for the HTTP/1.1 connections of an http2 server with
    // allowHTTP1, but createSecureServer() takes no options for them.
    Object.assign(secure, http1Options);
    // Node has it since 19 (lib/internal/http2/core.js); @types/node 20
    // does not declare it.
    const idle = secure as unknown as Pick<http.Server, "closeIdleConnections">;
    closeIdleConnections = () => idle.closeIdleConnections();
    server = h1 = h2 = secure;
  } else {
    const plain1 = http.createServer(http1Options);
    const plain2 = http2.createServer(http2Options);
    server = net.createServer(tcpOptions, (socket) => {
      sniffing.add(socket);
      socket.once("close", () => sniffing.delete(socket));
      sniff(socket, o.headersTimeoutMs, (protocol) => {
        sniffing.delete(socket);
        handOff(socket, protocol === "h2" ? plain2 : plain1);
      });
    });
    h1 = plain1;
    h2 = plain2;
    closeIdleConnections = () => plain1.closeIdleConnections();
  }

  server.on("connection", (socket: net.Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  h2.on("session", (session: http2.ServerHttp2Session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
    if (closing) session.close();
  });
  h1.on("request", onRequest);
  if (h2 !== h1) h2.on("request", onRequest);

  function onRequest(
    req: http.IncomingMessage | http2.Http2ServerRequest,
    res: http.ServerResponse | http2.Http2ServerResponse,
  ): void {
    if (res instanceof http.ServerResponse) {
      if (closing) {
        // Answer, then close the connection instead of keeping it alive.
        res.shouldKeepAlive = false;
      } else {
        res.once("finish", afterHttp1Response);
      }
    }
    o.handler(req, res);
  }

  function afterHttp1Response(): void {
    // A response that was in flight when close() began leaves an idle
    // keep-alive connection behind; close it once Node has released it.
    if (closing) setImmediate(closeIdleConnections);
  }

  function handOff(socket: net.Socket, to: net.Server): void {
    to.emit("connection", socket);
    // The http server reads the unshifted bytes as "data" events once the
    // socket flows; the http2 session reads them from the buffer itself
    // (nodejs/node#34532).
    if (to === h1) socket.resume();
  }

  function listen(): Promise<AddressInfo> {
    if (closing) return Promise.reject(new Error("listener is closed"));
    listenPromise ??= new Promise<AddressInfo>((resolve, reject) => {
      server.once("error", reject);
      server.listen({ host: o.host, port: o.port }, () => {
        server.off("error", reject);
        // Node starts enforcing headersTimeout and requestTimeout, and
        // tracking connections for closeIdleConnections(), on "listening"
        // (lib/_http_server.js, setupConnectionsTracking). The plaintext
        // http server never binds, so it would never hear it.
        if (h1 !== server) h1.emit("listening");
        resolve(server.address() as AddressInfo);
      });
    });
    return listenPromise;
  }

  async function shutdown(): Promise<void> {
    closing = true;
    await listenPromise?.catch(() => undefined);
    // Resolves once every accepted connection is gone; an error only says
    // the server never listened.
    const drained = new Promise<void>((resolve) =>
      server.close(() => resolve()),
    );
    for (const session of sessions) session.close();
    closeIdleConnections();
    for (const socket of sniffing) socket.destroy();
    const force = setTimeout(() => {
      for (const session of sessions) session.destroy();
      for (const socket of sockets) socket.destroy();
    }, o.closeTimeoutMs);
    try {
      await drained;
      // The server counts a connection gone before its "close" event, which
      // is what empties `sockets`.
      await Promise.all(
        [...sockets].map((s) => new Promise((r) => s.once("close", r))),
      );
    } finally {
      clearTimeout(force);
      // Stops the plaintext http server's timeout checks.
      if (h1 !== server) h1.close();
    }
  }

  return {
    listen,
    close: () => (closePromise ??= shutdown()),
    address: () => {
      const address = server.address();
      return address !== null && typeof address === "object"
        ? address
        : undefined;
    },
    get closing() {
      return closing;
    },
    server,
    http1: h1,
    http2: h2,
    sessions,
    sockets,
  };
}

/**
 * Reads the first bytes of a plaintext connection until detectProtocol()
 * decides, then puts them back for whichever server takes the socket. A
 * socket that errs, ends or stays silent for timeoutMs (0: forever) first is
 * destroyed: nothing was read that anyone could answer.
 */
function sniff(
  socket: net.Socket,
  timeoutMs: number,
  decided: (protocol: "h2" | "http1") => void,
): void {
  let received: Buffer = Buffer.alloc(0);
  const stop = (): void => {
    socket.off("data", onData);
    socket.off("error", drop);
    socket.off("end", drop);
    socket.off("timeout", drop);
    socket.setTimeout(0);
  };
  const drop = (): void => {
    stop();
    socket.destroy();
  };
  const onData = (chunk: Buffer): void => {
    received =
      received.length === 0 ? chunk : Buffer.concat([received, chunk]);
    const protocol = detectProtocol(received);
    if (protocol === "undecided") return;
    stop();
    socket.pause();
    socket.unshift(received);
    decided(protocol);
  };
  socket.on("data", onData);
  socket.on("error", drop);
  socket.on("end", drop);
  if (timeoutMs > 0) {
    socket.setTimeout(timeoutMs);
    socket.on("timeout", drop);
  }
}

/** Drops undefined values, so they do not override defaults. */
function withoutUndefined<T extends object>(value: T): T {
  return Object.fromEntries(
    Object.entries(value).filter(([, v]) => v !== undefined),
  ) as T;
}
