// ChorusApi: the HTTP API over fetch. Every method throws ChorusError built
// from the error envelope {"error":{"code","message"}} (status and
// Retry-After kept), or ChorusNetworkError when fetch itself fails.
// A 401 asks the token function for a fresh token ("expired") and retries once.

import { ChorusError, ChorusNetworkError, codeForStatus } from "./errors.js";
import type { TokenSource } from "./token.js";
import type {
  CommunityJson,
  ErrorCode,
  HistoryPage,
  Member,
  MembersPage,
  Message,
  Notification,
  NotificationsPage,
  SocketStatus,
} from "./types.js";

export interface ApiOptions {
  /** Base URL, e.g. "http://127.0.0.1:8000"; "" for same origin. */
  apiUrl: string;
  tokens: TokenSource;
  fetch?: typeof fetch;
}

type Query = Record<string, string | number | boolean | undefined | null>;

interface CallOptions {
  query?: Query;
  body?: unknown;
  headers?: Record<string, string>;
}

export class ChorusApi {
  private readonly base: string;
  private readonly fetchImpl: typeof fetch;

  constructor(private readonly options: ApiOptions) {
    this.base = options.apiUrl.replace(/\/+$/, "");
    // Called unbound: browsers' fetch throws "Illegal invocation" as a method of another object.
    this.fetchImpl = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  }

  // ---- communities ----------------------------------------------------------

  async listCommunities(): Promise<CommunityJson[]> {
    const res = await this.call<{ communities: CommunityJson[] }>("GET", "/api/communities");
    return res.communities;
  }

  createCommunity(name: string, isPublic?: boolean): Promise<CommunityJson> {
    return this.call("POST", "/api/communities", { body: isPublic === undefined ? { name } : { name, isPublic } });
  }

  joinCommunity(id: string): Promise<CommunityJson> {
    return this.call("POST", `/api/communities/${enc(id)}/join`);
  }

  members(id: string, page: { limit?: number; after?: string } = {}): Promise<MembersPage> {
    return this.call("GET", `/api/communities/${enc(id)}/members`, { query: page });
  }

  addMember(id: string, userId: string): Promise<Member> {
    return this.call("POST", `/api/communities/${enc(id)}/members`, { body: { userId } });
  }

  removeMember(id: string, userId: string): Promise<void> {
    return this.call("DELETE", `/api/communities/${enc(id)}/members/${enc(userId)}`);
  }

  presence(id: string): Promise<{ online: string[] }> {
    return this.call("GET", `/api/communities/${enc(id)}/presence`);
  }

  // ---- messages -------------------------------------------------------------

  /** A history page: newest first with `before` (or neither), oldest first with `after`. */
  history(communityId: string, page: { before?: number; after?: number; limit?: number } = {}): Promise<HistoryPage> {
    return this.call("GET", "/api/messages-realtime", { query: { communityId, ...page } });
  }

  postMessage(
    communityId: string,
    content: string,
    mentions?: string[],
    options: { idempotencyKey?: string } = {},
  ): Promise<Message> {
    const body = mentions === undefined ? { communityId, content } : { communityId, content, mentions };
    const headers: Record<string, string> = {};
    if (options.idempotencyKey) headers["Idempotency-Key"] = options.idempotencyKey;
    return this.call("POST", "/api/messages-realtime", { body, headers });
  }

  deleteMessage(messageId: string): Promise<void> {
    return this.call("DELETE", `/api/messages-realtime/${enc(messageId)}`);
  }

  // ---- notifications --------------------------------------------------------

  listNotifications(page: { unread?: boolean; limit?: number; before?: string } = {}): Promise<NotificationsPage> {
    return this.call("GET", "/api/notifications-broadcast", { query: page });
  }

  markNotificationRead(id: string): Promise<Notification> {
    return this.call("POST", `/api/notifications-broadcast/${enc(id)}/read`);
  }

  markAllNotificationsRead(): Promise<{ updated: number }> {
    return this.call("POST", "/api/notifications-broadcast/read-all");
  }

  deleteNotification(id: string): Promise<void> {
    return this.call("DELETE", `/api/notifications-broadcast/${enc(id)}`);
  }

  broadcastNotification(n: {
    userId: string;
    type: string;
    title: string;
    message: string;
    data?: Record<string, unknown>;
  }): Promise<Notification> {
    return this.call("POST", "/api/notifications-broadcast", { body: n });
  }

  socketStatus(): Promise<SocketStatus> {
    return this.call("GET", "/api/socket-status");
  }

  // ---- transport ------------------------------------------------------------

  /** One API call; public so apps can reach endpoints this class has no method for. */
  async call<T>(method: string, path: string, options: CallOptions = {}): Promise<T> {
    let url = this.base + path;
    const qs = queryString(options.query);
    if (qs) url += `?${qs}`;
    let res = await this.send(method, url, options, await this.options.tokens.get());
    if (res.status === 401) {
      // The token may have expired since we got it: one retry with a fresh one.
      res = await this.send(method, url, options, await this.options.tokens.fetch("expired"));
    }
    if (res.ok) {
      if (res.status === 204) return undefined as T;
      const text = await res.text();
      return (text ? JSON.parse(text) : undefined) as T;
    }
    throw await errorFromResponse(res);
  }

  private async send(method: string, url: string, options: CallOptions, token: string): Promise<Response> {
    const headers: Record<string, string> = { Accept: "application/json", ...options.headers };
    if (token) headers.Authorization = `Bearer ${token}`;
    const init: RequestInit = { method, headers };
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    try {
      return await this.fetchImpl(url, init);
    } catch (err) {
      throw new ChorusNetworkError(`${method} ${url}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
  }
}

function enc(s: string): string {
  return encodeURIComponent(s);
}

function queryString(query: Query | undefined): string {
  if (!query) return "";
  const parts: string[] = [];
  for (const [k, v] of Object.entries(query)) {
    if (v === undefined || v === null) continue;
    parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`);
  }
  return parts.join("&");
}

/** ChorusError from an error response: the envelope's code when there is one, else the status's. */
export async function errorFromResponse(res: Response): Promise<ChorusError> {
  let code: ErrorCode = codeForStatus(res.status);
  let message = `HTTP ${res.status}`;
  try {
    const body = (await res.json()) as { error?: { code?: unknown; message?: unknown } };
    if (body && typeof body.error?.code === "string") {
      code = body.error.code as ErrorCode;
      if (typeof body.error.message === "string") message = body.error.message;
    }
  } catch {
    /* not JSON: keep the status's code */
  }
  const retryAfter = res.headers.get("Retry-After");
  const retryAfterS = retryAfter !== null && /^\d+$/.test(retryAfter.trim()) ? Number(retryAfter) : undefined;
  return new ChorusError(code, message, { status: res.status, ...(retryAfterS !== undefined ? { retryAfterS } : {}) });
}
