// Test fixtures: messages, a scriptable fake fetch and a client wired to a FakeServer.

import { WebSocket } from "ws";
import { ChorusClient, type ChorusOptions } from "../../src/index.js";
import type { Message, Notification } from "../../src/types.js";
import type { FakeServer } from "./fakeServer.js";

export const CID = "11111111-1111-4111-8111-111111111111";

export function msg(seq: number, communityId = CID): Message {
  return {
    id: `m${seq}`,
    communityId,
    seq,
    sender: { id: "bob", name: "Bob", avatar: null },
    content: `message ${seq}`,
    mentions: [],
    createdAt: new Date(Date.UTC(2026, 0, 1, 0, 0, seq)).toISOString(),
  };
}

export function note(id: string, read = false): Notification {
  return {
    id,
    userId: "alice",
    type: "mention",
    title: `title ${id}`,
    message: "hi",
    data: null,
    read,
    createdAt: "2026-01-01T00:00:00.000Z",
  };
}

export interface FetchCall {
  method: string;
  url: URL;
  /** path + query, e.g. "GET /api/messages-realtime?communityId=..&after=3&limit=100" */
  line: string;
  headers: Record<string, string>;
  body: unknown;
}

export type FetchHandler = (call: FetchCall) => Response | Promise<Response>;

export function json(status: number, body?: unknown, headers: Record<string, string> = {}): Response {
  if (status === 204) return new Response(null, { status });
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });
}

export function errorBody(status: number, code: string, message = code, headers: Record<string, string> = {}): Response {
  return json(status, { error: { code, message } }, headers);
}

/** A fetch that records every call and answers with `handler`. */
export function fakeFetch(handler: FetchHandler): { fetch: typeof fetch; calls: FetchCall[] } {
  const calls: FetchCall[] = [];
  const fetchImpl = (async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = new URL(String(input));
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries((init?.headers as Record<string, string>) ?? {})) headers[k.toLowerCase()] = v;
    const call: FetchCall = {
      method: init?.method ?? "GET",
      url,
      line: `${init?.method ?? "GET"} ${url.pathname}${url.search}`,
      headers,
      body: typeof init?.body === "string" ? JSON.parse(init.body) : undefined,
    };
    calls.push(call);
    return handler(call);
  }) as typeof fetch;
  return { fetch: fetchImpl, calls };
}

/** A client on the fake server: small backoff, deterministic jitter (0.5), Node's `ws`. */
export function makeClient(server: FakeServer, options: Partial<ChorusOptions> = {}): ChorusClient {
  return new ChorusClient({
    gatewayUrl: server.url,
    apiUrl: "http://api.test",
    token: "token-1",
    WebSocket,
    backoff: { initialMs: 10, maxMs: 40, stableMs: 10_000 },
    random: () => 0.5,
    requestTimeoutMs: 1000,
    ...options,
  });
}

/** History handler: newest page `before`, oldest-first page `after`, from a fixed list. */
export function historyPages(all: Message[], url: URL): Response {
  const limit = Number(url.searchParams.get("limit") ?? 50);
  const before = url.searchParams.get("before");
  const after = url.searchParams.get("after");
  if (after !== null) {
    const page = all.filter((m) => m.seq > Number(after)).sort((a, b) => a.seq - b.seq);
    const slice = page.slice(0, limit);
    return json(200, { messages: slice, nextAfter: page.length > limit ? slice[slice.length - 1]!.seq : null });
  }
  const page = all.filter((m) => before === null || m.seq < Number(before)).sort((a, b) => b.seq - a.seq);
  const slice = page.slice(0, limit);
  return json(200, { messages: slice, nextBefore: page.length > limit ? slice[slice.length - 1]!.seq : null });
}

export function seqs(messages: Message[]): number[] {
  return messages.map((m) => m.seq);
}
