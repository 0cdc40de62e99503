// A scripted gateway for tests: a real `ws` WebSocketServer on port 0 that
// speaks the contract's frames (JSON or chorus.v1.msgpack). Each test scripts
// what the server sends; every client frame is recorded in order.

import { decode, encode } from "@msgpack/msgpack";
import type { IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { WebSocketServer, type WebSocket } from "ws";
import type { ClientFrame } from "../../src/types.js";

export const MSGPACK = "chorus.v1.msgpack";

export interface FakeServerOptions {
  /** heartbeatMs of the `ready` frame (default 25 000: no pings during a short test). */
  heartbeatMs?: number;
  /** Send `ready` on connect (default true). */
  autoReady?: boolean;
  /** Answer `ping` with `pong` (default true). */
  answerPings?: boolean;
  /** Return an HTTP status to refuse an upgrade (e.g. 401), or null to accept. */
  refuse?: (req: IncomingMessage, attempt: number) => number | null;
  userId?: string;
}

export class FakeConn {
  readonly frames: ClientFrame[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;
  private cursor = 0;
  private waiters: (() => void)[] = [];

  constructor(
    readonly ws: WebSocket,
    readonly index: number,
    readonly token: string | null,
    readonly protocol: string,
    readonly url: string,
  ) {
    this.closed = new Promise((resolve) => ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() })));
    ws.on("message", (data, isBinary) => {
      const frame = (isBinary ? decode(data as Buffer) : JSON.parse(data.toString())) as ClientFrame & { binary?: boolean };
      Object.defineProperty(frame, "binary", { value: isBinary, enumerable: false });
      this.frames.push(frame);
      for (const w of this.waiters.splice(0)) w();
    });
  }

  /** Frames other than pings, in order. */
  get commands(): ClientFrame[] {
    return this.frames.filter((f) => f.type !== "ping");
  }

  send(frame: object): void {
    if (this.protocol === MSGPACK) this.ws.send(encode(frame));
    else this.ws.send(JSON.stringify(frame));
  }

  close(code?: number, reason?: string): void {
    this.ws.close(code, reason);
  }

  ack(ref: number | undefined, data: object = {}): void {
    this.send({ type: "ack", ref, data });
  }

  /** The next received frame (after earlier next() results) of `type`, pings skipped unless asked. */
  async next(type?: string, timeoutMs = 2000): Promise<ClientFrame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      while (this.cursor < this.frames.length) {
        const f = this.frames[this.cursor++]!;
        if (type ? f.type === type : f.type !== "ping") return f;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`conn ${this.index}: no ${type ?? "frame"} within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }
}

export class FakeServer {
  readonly conns: FakeConn[] = [];
  private attempts = 0;
  private waiters: (() => void)[] = [];

  private constructor(
    private readonly wss: WebSocketServer,
    readonly url: string,
  ) {}

  static async start(options: FakeServerOptions = {}): Promise<FakeServer> {
    const wss = new WebSocketServer({
      port: 0,
      host: "127.0.0.1",
      handleProtocols: (protocols) => (protocols.has(MSGPACK) ? MSGPACK : false),
      verifyClient: (info, cb) => {
        const status = options.refuse?.(info.req, server.attempts++) ?? null;
        if (status === null) cb(true);
        else cb(false, status);
      },
    });
    await new Promise<void>((resolve) => wss.once("listening", () => resolve()));
    const { port } = wss.address() as AddressInfo;
    const server: FakeServer = new FakeServer(wss, `ws://127.0.0.1:${port}/ws`);
    wss.on("connection", (ws, req) => {
      const url = new URL(req.url ?? "/", "http://x");
      const auth = req.headers.authorization;
      const token = auth?.startsWith("Bearer ") ? auth.slice(7) : url.searchParams.get("token");
      const conn = new FakeConn(ws, server.conns.length, token, ws.protocol, req.url ?? "");
      server.conns.push(conn);
      if (options.answerPings ?? true) {
        ws.on("message", () => {
          const f = conn.frames[conn.frames.length - 1];
          if (f?.type === "ping") conn.send({ type: "pong", ...(f.ref !== undefined ? { ref: f.ref } : {}), data: {} });
        });
      }
      if (options.autoReady ?? true) {
        conn.send({
          type: "ready",
          data: {
            userId: options.userId ?? "alice",
            connectionId: `conn-${conn.index}`,
            gatewayId: "gw-test",
            heartbeatMs: options.heartbeatMs ?? 25_000,
          },
        });
      }
      for (const w of server.waiters.splice(0)) w();
    });
    return server;
  }

  /** Upgrade attempts so far (refused ones included). */
  get upgradeAttempts(): number {
    return this.attempts;
  }

  /** The connection with this index, waiting for it to arrive. */
  async connection(index: number, timeoutMs = 2000): Promise<FakeConn> {
    const deadline = Date.now() + timeoutMs;
    while (!this.conns[index]) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no connection #${index} within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.conns[index]!;
  }

  async stop(): Promise<void> {
    for (const c of this.wss.clients) c.terminate();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
  }
}
