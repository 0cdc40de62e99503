// One logical gateway connection across many sockets: connects with a token,
// waits for `ready`, matches requests to acks by `ref` (with a timeout),
// pings every heartbeatMs, treats 2×heartbeatMs of silence as a dead socket,
// and reconnects by the contract's close codes:
//   1000 after our own close(): stop.
//   `reconnect {afterMs}` + 1012 (draining): wait afterMs plus jitter, no backoff growth.
//   1008 (token expired / policy): ask the token function for reason "expired", back off.
//   4008 (closed for flooding): back off, and wait at least 5 s.
//   anything else (1006 network, 1011, 4009, a 1000 from the server): back off.
// A browser cannot see the HTTP status of a refused upgrade (a 401 looks like
// any failed connection), so 3 failures in a row before `ready` also ask for
// a fresh token.

import { Backoff } from "./backoff.js";
import { codecFor, jsonCodec, msgpackCodec, MSGPACK_SUBPROTOCOL, type Codec } from "./codec.js";
import { ChorusError, ChorusNetworkError, ChorusTimeoutError } from "./errors.js";
import type { TokenReason, TokenSource } from "./token.js";
import type { ConnectionState, ReadyData, ReconnectData, ServerFrame } from "./types.js";

/** The contract's close code for a connection closed for flooding. */
const CLOSE_RATE_LIMITED = 4008;
/** Least wait after a 4008 close (plus up to as much again of jitter). */
const RATE_LIMITED_MIN_DELAY_MS = 5_000;

/** The part of the WebSocket API we use (browser, undici and `ws` all have it). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  binaryType: string;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
export type WebSocketCtor = new (url: string, protocols?: string | string[], options?: unknown) => WebSocketLike;

export interface ReconnectInfo {
  /** Delay before the next attempt. */
  delayMs: number;
  /** Close code of the socket that ended (0 when it never opened: token or constructor failure). */
  code: number;
  /** Consecutive failed attempts (backoff attempt counter) after this one. */
  attempt: number;
  cause: "draining" | "expired" | "backoff";
}

export interface ConnectionHandlers {
  onState(state: ConnectionState): void;
  onReady(ready: ReadyData): void;
  /** Every server push that is not ready / ack / error-with-ref / pong / reconnect. */
  onFrame(frame: ServerFrame): void;
  onDisconnected(): void;
  onReconnectScheduled(info: ReconnectInfo): void;
  onError(err: Error): void;
}

export interface ConnectionOptions {
  urls: string[];
  tokens: TokenSource;
  encoding: "json" | "msgpack";
  requestTimeoutMs: number;
  backoff: Backoff;
  random: () => number;
  WebSocket?: unknown;
}

interface Pending {
  resolve(data: unknown): void;
  reject(err: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

/** Close code a client may send for its own reasons (3000-4999); never sent by the server. */
const CLIENT_ABORT = 4000;
/** How many failures before `ready` make us suspect the token (a hidden 401). */
const FAILURES_BEFORE_TOKEN_REFRESH = 3;

// A module name in a variable keeps browser bundlers from trying to bundle `ws`.
const WS_MODULE = "ws";

async function resolveWebSocket(override: unknown): Promise<{ ctor: WebSocketCtor; nodeWs: boolean }> {
  let ctor = (override ?? (globalThis as { WebSocket?: unknown }).WebSocket) as WebSocketCtor | undefined;
  if (!ctor) {
    const mod = (await import(/* @vite-ignore */ /* webpackIgnore: true */ WS_MODULE)) as {
      default?: WebSocketCtor;
      WebSocket?: WebSocketCtor;
    };
    ctor = mod.default ?? mod.WebSocket;
    if (!ctor) throw new Error("no WebSocket: pass options.WebSocket or install the `ws` package");
  }
  // The `ws` package (Node) can send headers; its sockets have a ping() method.
  const nodeWs = typeof (ctor as { prototype?: { ping?: unknown } }).prototype?.ping === "function";
  return { ctor, nodeWs };
}

export class Connection {
  private _state: ConnectionState = "idle";
  private _ready: ReadyData | null = null;
  private ws: WebSocketLike | null = null;
  private codec: Codec = jsonCodec;
  private nextRef = 1;
  private readonly pending = new Map<number, Pending>();
  private stopped = false;
  private generation = 0;
  private urlIndex = 0;
  private failuresBeforeReady = 0;
  /** Whether any socket reached `ready`: before that we are "connecting", after it "reconnecting". */
  private everReady = false;
  private tokenReason: TokenReason = "initial";
  private drainAfterMs: number | null = null;
  private lastRx = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private readyTimer: ReturnType<typeof setTimeout> | undefined;
  private stableTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private watchdogTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly options: ConnectionOptions,
    private readonly handlers: ConnectionHandlers,
  ) {}

  get state(): ConnectionState {
    return this._state;
  }
  get ready(): ReadyData | null {
    return this._ready;
  }
  /** Requests waiting for their ack (tests, diagnostics). */
  get pendingCount(): number {
    return this.pending.size;
  }

  start(): void {
    if (this._state !== "idle") return;
    this.setState("connecting");
    void this.openSocket();
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.generation++;
    clearTimeout(this.reconnectTimer);
    const ws = this.ws;
    this.teardown();
    if (ws) {
      detach(ws);
      try {
        ws.close(1000, "client closed");
      } catch {
        /* already closing */
      }
    }
    this.rejectAll(new ChorusNetworkError("client closed"));
    this.setState("closed");
  }

  /**
   * A command with a ref; resolves with the ack's data. `onAck` runs
   * synchronously when the ack is read, before any later frame is handled
   * (a promise continuation may run only after the frames that followed the
   * ack in the same TCP read).
   */
  request<T = unknown>(type: string, data: object, onAck?: (data: T) => void): Promise<T> {
    const ws = this.ws;
    if (!ws || !this._ready) return Promise.reject(new ChorusNetworkError(`not connected (${type})`));
    const ref = this.nextRef++;
    const timeoutMs = this.options.requestTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        reject(new ChorusTimeoutError(`${type} (ref ${ref}) got no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      const settle = onAck
        ? (d: unknown) => {
            onAck(d as T);
            resolve(d as T);
          }
        : (resolve as (d: unknown) => void);
      this.pending.set(ref, { resolve: settle, reject, timer });
      try {
        ws.send(this.codec.encode({ type, ref, data }));
      } catch (err) {
        clearTimeout(timer);
        this.pending.delete(ref);
        reject(new ChorusNetworkError(`send failed (${type})`, { cause: err }));
      }
    });
  }

  /** A command without a ref (fire and forget); false when not connected. */
  send(type: string, data: object): boolean {
    const ws = this.ws;
    if (!ws || !this._ready) return false;
    try {
      ws.send(this.codec.encode({ type, data }));
      return true;
    } catch {
      return false;
    }
  }

  // ---- lifecycle ------------------------------------------------------------

  private setState(state: ConnectionState): void {
    if (this._state === state) return;
    this._state = state;
    this.handlers.onState(state);
  }

  private async openSocket(): Promise<void> {
    const gen = ++this.generation;
    const urls = this.options.urls;
    const url = urls[this.urlIndex % urls.length]!;
    let token: string;
    let ws: WebSocketLike;
    try {
      token = await this.options.tokens.fetch(this.tokenReason);
      const { ctor, nodeWs } = await resolveWebSocket(this.options.WebSocket);
      if (this.stopped || gen !== this.generation) return;
      const protocols = codecFor(this.options.encoding).protocols;
      if (nodeWs) {
        // Keeps the token out of URLs (and access logs) where headers are possible.
        ws = new ctor(url, protocols, { headers: { Authorization: `Bearer ${token}` } });
      } else {
        const sep = url.includes("?") ? "&" : "?";
        ws = protocols.length
          ? new ctor(`${url}${sep}token=${encodeURIComponent(token)}`, protocols)
          : new ctor(`${url}${sep}token=${encodeURIComponent(token)}`);
      }
    } catch (err) {
      if (this.stopped || gen !== this.generation) return;
      // The URL (and so the message) may carry the token: never pass it on.
      const text = (err instanceof Error ? err.message : String(err)).replace(/token=[^&\s"']*/g, "token=…");
      this.handlers.onError(new Error(text));
      this.scheduleReconnect(0, false);
      return;
    }
    this.ws = ws;
    this.codec = jsonCodec;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      if (ws !== this.ws) return;
      // The server may decline msgpack; then it speaks JSON and so do we.
      this.codec = ws.protocol === MSGPACK_SUBPROTOCOL ? msgpackCodec : jsonCodec;
    };
    ws.onmessage = (ev) => this.onMessage(ws, ev.data);
    ws.onclose = (ev) => this.onClose(ws, ev.code);
    ws.onerror = () => {
      /* a close event follows; nothing to do here */
    };
    // No `ready` in time: the attempt failed (a stuck proxy, a half-open socket).
    this.readyTimer = setTimeout(() => this.abort(ws, "no ready"), this.options.requestTimeoutMs);
  }

  private onMessage(ws: WebSocketLike, raw: unknown): void {
    if (ws !== this.ws) return;
    this.lastRx = Date.now();
    let frame: ServerFrame;
    try {
      // Decode by payload kind, not by the negotiated codec: robust either way.
      frame = typeof raw === "string" ? jsonCodec.decode(raw) : msgpackCodec.decode(raw);
    } catch (err) {
      this.handlers.onError(new Error(`undecodable frame: ${(err as Error).message}`));
      return;
    }
    switch (frame.type) {
      case "ready":
        this.onReady(ws, frame.data as ReadyData);
        return;
      case "ack":
      case "pong": {
        const p = frame.ref !== undefined ? this.pending.get(frame.ref) : undefined;
        if (p) {
          this.pending.delete(frame.ref!);
          clearTimeout(p.timer);
          p.resolve(frame.data ?? {});
        }
        return;
      }
      case "error": {
        const e = frame.error ?? { code: "internal" as const, message: "error frame without error" };
        const err = new ChorusError(e.code, e.message);
        const p = frame.ref !== undefined ? this.pending.get(frame.ref) : undefined;
        if (p) {
          this.pending.delete(frame.ref!);
          clearTimeout(p.timer);
          p.reject(err);
        } else {
          this.handlers.onError(err);
        }
        return;
      }
      case "reconnect":
        this.drainAfterMs = Math.max(0, Number((frame.data as ReconnectData | undefined)?.afterMs) || 0);
        return;
      default:
        this.handlers.onFrame(frame);
    }
  }

  private onReady(ws: WebSocketLike, ready: ReadyData): void {
    if (this._ready) return; // one `ready` per socket; a second one would leak timers
    clearTimeout(this.readyTimer);
    this._ready = ready;
    this.everReady = true;
    this.failuresBeforeReady = 0;
    this.tokenReason = "reconnect";
    const hb = ready.heartbeatMs > 0 ? ready.heartbeatMs : 25_000;
    // A `ping` frame every heartbeatMs keeps the server's idle timer (60 s of
    // client silence) satisfied and draws a `pong`, so a healthy server is
    // never silent for 2×heartbeatMs.
    this.pingTimer = setInterval(() => {
      if (ws !== this.ws) return;
      try {
        ws.send(this.codec.encode({ type: "ping", data: {} }));
      } catch {
        /* closing: the close event follows */
      }
    }, hb);
    const watch = (waitMs: number) => {
      this.watchdogTimer = setTimeout(() => {
        if (ws !== this.ws) return;
        const silent = Date.now() - this.lastRx;
        if (silent >= 2 * hb) this.abort(ws, "heartbeat timeout");
        else watch(2 * hb - silent);
      }, waitMs);
    };
    watch(2 * hb);
    this.stableTimer = setTimeout(() => this.options.backoff.reset(), this.options.backoff.stableMs);
    this.setState("open");
    this.handlers.onReady(ready);
  }

  /**
   * Drops the current socket and reconnects as after a network loss: for a
   * request whose outcome is unknown (a join that timed out), starting over
   * from known state is the only safe way on.
   */
  restart(reason: string): void {
    if (this.ws) this.abort(this.ws, reason);
  }

  /** Drop a socket we gave up on, without waiting for its close handshake. */
  private abort(ws: WebSocketLike, reason: string): void {
    if (ws !== this.ws) return;
    detach(ws);
    try {
      ws.close(CLIENT_ABORT, reason);
    } catch {
      /* ignore */
    }
    this.onClose(ws, 1006);
  }

  private onClose(ws: WebSocketLike, code: number): void {
    if (ws !== this.ws) return;
    const wasReady = this._ready !== null;
    this.teardown();
    this.rejectAll(new ChorusNetworkError(`connection closed (${code})`));
    if (this.stopped) return;
    this.handlers.onDisconnected();
    if (this.drainAfterMs !== null || code === 1012) {
      this.urlIndex++; // that gateway is going away
      const after = this.drainAfterMs;
      this.drainAfterMs = null;
      if (after !== null) {
        const delayMs = after + this.options.random() * after;
        this.setState("reconnecting");
        this.handlers.onReconnectScheduled({ delayMs, code, attempt: this.options.backoff.attempts, cause: "draining" });
        this.reconnectTimer = setTimeout(() => void this.openSocket(), delayMs);
        return;
      }
    }
    if (code === 1008) this.tokenReason = "expired";
    this.scheduleReconnect(code, wasReady);
  }

  private scheduleReconnect(code: number, wasReady: boolean): void {
    if (this.tokenReason === "initial") this.tokenReason = "reconnect";
    if (!wasReady) {
      this.urlIndex++; // "the next URL is tried after a failed attempt"
      if (++this.failuresBeforeReady >= FAILURES_BEFORE_TOKEN_REFRESH) {
        this.failuresBeforeReady = 0;
        this.tokenReason = "expired";
      }
    }
    let delayMs = this.options.backoff.next();
    if (code === CLOSE_RATE_LIMITED) {
      // Closed for flooding: coming straight back would only flood again.
      delayMs = Math.max(delayMs, RATE_LIMITED_MIN_DELAY_MS * (1 + this.options.random()));
    }
    this.setState(this.everReady ? "reconnecting" : "connecting");
    this.handlers.onReconnectScheduled({
      delayMs,
      code,
      attempt: this.options.backoff.attempts,
      cause: this.tokenReason === "expired" ? "expired" : "backoff",
    });
    this.reconnectTimer = setTimeout(() => void this.openSocket(), delayMs);
  }

  private teardown(): void {
    clearTimeout(this.readyTimer);
    clearTimeout(this.stableTimer);
    clearTimeout(this.watchdogTimer);
    clearInterval(this.pingTimer);
    this.ws = null;
    this._ready = null;
  }

  private rejectAll(err: Error): void {
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
  }
}

function detach(ws: WebSocketLike): void {
  ws.onopen = ws.onmessage = null;
  ws.onclose = null;
  // Keep an error listener: Node's `ws` throws an 'error' nobody listens to
  // (closing a socket that is still connecting emits one).
  ws.onerror = () => {};
}
