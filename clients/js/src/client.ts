// ChorusClient: ties the connection, the communities, the notifications and
// the HTTP API together, and routes server frames to their community.

import { ChorusApi } from "./api.js";
import { Backoff, backoffCap, type BackoffOptions } from "./backoff.js";
import { Community, type CommunityHost } from "./community.js";
import { Connection, type ReconnectInfo } from "./connection.js";
import { Emitter } from "./emitter.js";
import { Notifications } from "./notifications.js";
import { TokenSource, type TokenProvider } from "./token.js";
import type { ConnectionState, NotificationData, ReadyData, ServerFrame } from "./types.js";

export interface ChorusOptions {
  /** ws(s)://host/ws. Several URLs: the next one is tried after a failed attempt. */
  gatewayUrl: string | string[];
  /** Base of the HTTP API, e.g. "http://127.0.0.1:8000"; "" means same origin. Paths /api/... are appended. */
  apiUrl: string;
  /** A token, or a function asked for one on every connect; reason "expired" after a 1008 close or a 401. */
  token: TokenProvider;
  /** Frame encoding; "msgpack" offers the `chorus.v1.msgpack` subprotocol. Default "json". */
  encoding?: "json" | "msgpack";
  /** A ref'd request rejects with ChorusTimeoutError after this long (default 10 000). */
  requestTimeoutMs?: number;
  /** Full-jitter backoff: initialMs 500, maxMs 20 000, stableMs 10 000. */
  backoff?: BackoffOptions;
  /** WebSocket constructor override (tests, Node without a global WebSocket). */
  WebSocket?: unknown;
  /** fetch override (tests). */
  fetch?: typeof fetch;
  /** Random source for jitter (tests: deterministic). */
  random?: () => number;
}

export interface ClientEvents {
  state: ConnectionState;
  ready: ReadyData;
  /** Non-fatal problems (for logging). */
  error: Error;
  /** A gap could not be filled: the app must reload that community. */
  "resync-required": { communityId: string };
  /** A reconnect was scheduled (for "reconnecting in N s" UIs and tests). */
  reconnecting: ReconnectInfo;
}

export class ChorusClient {
  readonly api: ChorusApi;
  private readonly connection: Connection;
  private readonly communities = new Map<string, Community>();
  private notif: Notifications | null = null;
  private readonly emitter: Emitter<ClientEvents>;
  private readonly random: () => number;
  private _userId: string | null = null;
  private readonly host: CommunityHost;

  constructor(options: ChorusOptions) {
    const urls = Array.isArray(options.gatewayUrl) ? options.gatewayUrl : [options.gatewayUrl];
    if (urls.length === 0) throw new TypeError("gatewayUrl: at least one URL");
    this.random = options.random ?? Math.random;
    // No onError here: a throwing "error" listener must not loop back into "error".
    this.emitter = new Emitter<ClientEvents>();
    const tokens = new TokenSource(options.token);
    const backoff = new Backoff(options.backoff, this.random);
    this.api = new ChorusApi({ apiUrl: options.apiUrl, tokens, ...(options.fetch ? { fetch: options.fetch } : {}) });
    this.connection = new Connection(
      {
        urls,
        tokens,
        encoding: options.encoding ?? "json",
        requestTimeoutMs: options.requestTimeoutMs ?? 10_000,
        backoff,
        random: this.random,
        WebSocket: options.WebSocket,
      },
      {
        onState: (state) => this.emitter.emit("state", state),
        onReady: (ready) => this.onReady(ready),
        onFrame: (frame) => this.route(frame),
        onDisconnected: () => {
          for (const c of this.communities.values()) c._onDisconnected();
        },
        onReconnectScheduled: (info) => this.emitter.emit("reconnecting", info),
        onError: (err) => this.error(err),
      },
    );
    this.host = {
      api: this.api,
      isOpen: () => this.connection.state === "open",
      restart: (reason) => this.connection.restart(reason),
      request: (type, data, onAck) => this.connection.request(type, data, onAck),
      send: (type, data) => this.connection.send(type, data),
      retryDelay: (attempt) => this.random() * backoffCap(attempt, backoff.initialMs, backoff.maxMs),
      resyncRequired: (communityId) => this.emitter.emit("resync-required", { communityId }),
      error: (err) => this.error(err),
    };
  }

  get state(): ConnectionState {
    return this.connection.state;
  }

  /** The user id from the last `ready`. */
  get userId(): string | null {
    return this._userId;
  }

  /** Starts connecting and keeps reconnecting until close(). Idempotent. */
  connect(): void {
    this.connection.start();
  }

  /** Final: closes with 1000, no reconnect; state "closed". */
  close(): void {
    this.connection.stop();
    for (const c of this.communities.values()) c._onClosed();
  }

  on<K extends keyof ClientEvents>(event: K, fn: (payload: ClientEvents[K]) => void): () => void {
    return this.emitter.on(event, fn);
  }

  /** Get-or-create the handle of one community (does not join by itself). */
  community(communityId: string): Community {
    let c = this.communities.get(communityId);
    if (!c) this.communities.set(communityId, (c = new Community(communityId, this.host)));
    return c;
  }

  /** The user's notifications; subscribes over the socket from now on. */
  notifications(): Notifications {
    if (!this.notif) {
      this.notif = new Notifications(this.host);
      if (this.connection.state === "open") void this.notif._onConnected();
    }
    return this.notif;
  }

  /** A raw command with a ref; resolves with the ack's data, rejects with ChorusError / ChorusTimeoutError. */
  request<T = unknown>(type: string, data: object): Promise<T> {
    return this.connection.request<T>(type, data);
  }

  private onReady(ready: ReadyData): void {
    this._userId = ready.userId;
    this.emitter.emit("ready", ready);
    for (const c of this.communities.values()) c._onConnected();
    if (this.notif) void this.notif._onConnected();
  }

  private route(frame: ServerFrame): void {
    const data = frame.data as Record<string, unknown> | undefined;
    if (frame.type === "notification") {
      this.notif?._onNotification((data as unknown as NotificationData).notification);
      return;
    }
    const communityId =
      frame.type === "new-message"
        ? (data?.message as { communityId?: string } | undefined)?.communityId
        : (data?.communityId as string | undefined);
    if (typeof communityId !== "string") return;
    this.communities.get(communityId)?._onFrame(frame);
  }

  private error(err: unknown): void {
    this.emitter.emit("error", err instanceof Error ? err : new Error(String(err)));
  }
}
