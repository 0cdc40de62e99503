// Socket lifecycle against the scripted gateway: refs and timeouts, heartbeat,
// and the reconnect policy per close code.

import { afterEach, describe, expect, it, vi } from "vitest";
import { ChorusError, ChorusNetworkError, ChorusTimeoutError, type ChorusClient, type ReconnectInfo } from "../src/index.js";
import { FakeServer } from "./helpers/fakeServer.js";
import { makeClient } from "./helpers/fixtures.js";

let servers: FakeServer[] = [];
let clients: ChorusClient[] = [];

async function server(options: Parameters<typeof FakeServer.start>[0] = {}): Promise<FakeServer> {
  const s = await FakeServer.start(options);
  servers.push(s);
  return s;
}
function client(s: FakeServer, options: Parameters<typeof makeClient>[1] = {}): ChorusClient {
  const c = makeClient(s, options);
  clients.push(c);
  return c;
}
function recordReconnects(c: ChorusClient): ReconnectInfo[] {
  const out: ReconnectInfo[] = [];
  c.on("reconnecting", (info) => out.push(info));
  return out;
}

afterEach(async () => {
  for (const c of clients) c.close();
  await Promise.all(servers.map((s) => s.stop()));
  servers = [];
  clients = [];
});

describe("connection", () => {
  it("connects with the token, goes open on ready, and close() ends with 1000 and no reconnect", async () => {
    const s = await server();
    const c = client(s);
    const states: string[] = [];
    c.on("state", (st) => states.push(st));
    const ready = new Promise((resolve) => c.on("ready", resolve));
    c.connect();
    c.connect(); // idempotent
    const conn = await s.connection(0);
    await ready;
    expect(conn.token).toBe("token-1");
    expect(c.state).toBe("open");
    expect(c.userId).toBe("alice");
    c.close();
    expect((await conn.closed).code).toBe(1000);
    await new Promise((r) => setTimeout(r, 60));
    expect(s.conns).toHaveLength(1);
    expect(states).toEqual(["connecting", "open", "closed"]);
    expect(c.state).toBe("closed");
  });

  it("matches acks and errors by ref; a request never acked rejects with ChorusTimeoutError and is forgotten", async () => {
    const s = await server();
    const c = client(s, { requestTimeoutMs: 80 });
    c.connect();
    const conn = await s.connection(0);
    await vi.waitFor(() => expect(c.state).toBe("open"));

    const a = c.request("subscribe-notifications", {});
    const b = c.request("join-community", { communityId: "nope" });
    const silent = c.request("leave-community", { communityId: "x" });
    const fa = await conn.next();
    const fb = await conn.next();
    const fs = await conn.next();
    expect([fa.ref, fb.ref, fs.ref]).toEqual([1, 2, 3]);
    // Answers out of order still find their request.
    conn.send({ type: "error", ref: fb.ref, error: { code: "not_found", message: "no such community" } });
    conn.ack(fa.ref, { unreadCount: 3 });
    await expect(a).resolves.toEqual({ unreadCount: 3 });
    const err = await b.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ChorusError);
    expect((err as ChorusError).code).toBe("not_found");

    const started = Date.now();
    await expect(silent).rejects.toBeInstanceOf(ChorusTimeoutError);
    expect(Date.now() - started).toBeGreaterThanOrEqual(60);
    const connection = (c as unknown as { connection: { pendingCount: number } }).connection;
    expect(connection.pendingCount).toBe(0);
    // A late ack for the forgotten ref is ignored, and the connection stays usable.
    conn.ack(fs.ref, {});
    const d = c.request("subscribe-notifications", {});
    conn.ack((await conn.next()).ref, { unreadCount: 0 });
    await expect(d).resolves.toEqual({ unreadCount: 0 });
    expect(s.conns).toHaveLength(1);
  });

  it("requests in flight reject with ChorusNetworkError when the socket closes; states go reconnecting then open", async () => {
    const s = await server();
    const c = client(s);
    const states: string[] = [];
    c.on("state", (st) => states.push(st));
    c.connect();
    const conn0 = await s.connection(0);
    await vi.waitFor(() => expect(c.state).toBe("open"));
    const inflight = c.request("subscribe-notifications", {});
    await conn0.next();
    conn0.close(1011);
    await expect(inflight).rejects.toBeInstanceOf(ChorusNetworkError);
    await s.connection(1);
    await vi.waitFor(() => expect(c.state).toBe("open"));
    expect(states).toEqual(["connecting", "open", "reconnecting", "open"]);
  });

  it("a 1012 without a reconnect frame backs off like any drop", async () => {
    const s = await server();
    const c = client(s);
    const reconnects = recordReconnects(c);
    c.connect();
    const conn0 = await s.connection(0);
    await vi.waitFor(() => expect(c.state).toBe("open"));
    conn0.close(1012);
    await s.connection(1);
    expect(reconnects.map((r) => [r.code, r.cause, r.delayMs])).toEqual([[1012, "backoff", 5]]);
  });

  it("a 4008 (closed for flooding) waits at least 5 s before reconnecting", async () => {
    const s = await server();
    const c = client(s);
    const reconnects = recordReconnects(c);
    c.connect();
    const conn0 = await s.connection(0);
    await vi.waitFor(() => expect(c.state).toBe("open"));
    conn0.close(4008);
    await vi.waitFor(() => expect(reconnects).toHaveLength(1));
    // makeClient's jitter is 0.5: 5 s × 1.5, whatever the (tiny) backoff says.
    expect(reconnects.map((r) => [r.code, r.delayMs])).toEqual([[4008, 7_500]]);
    expect(s.conns).toHaveLength(1);
  });

  it("pings every heartbeatMs and stays up while pongs come back", async () => {
    const s = await server({ heartbeatMs: 30 });
    const c = client(s);
    c.connect();
    const conn = await s.connection(0);
    await new Promise((r) => setTimeout(r, 200));
    const pings = conn.frames.filter((f) => f.type === "ping");
    expect(pings.length).toBeGreaterThanOrEqual(3); // ~6; slack for a loaded machine
    expect(pings.length).toBeLessThanOrEqual(7);
    expect(pings[0]).toEqual({ type: "ping", data: {} });
    expect(s.conns).toHaveLength(1);
    expect(c.state).toBe("open");
  });

  it("reconnects when the server goes silent for 2×heartbeatMs", async () => {
    const s = await server({ heartbeatMs: 40, answerPings: false });
    const c = client(s);
    const reconnects = recordReconnects(c);
    c.connect();
    const conn0 = await s.connection(0);
    const readyAt = Date.now();
    await s.connection(1);
    const gone = Date.now() - readyAt;
    expect(gone).toBeGreaterThanOrEqual(80);
    expect(gone).toBeLessThan(1000);
    expect(conn0.frames.filter((f) => f.type === "ping").length).toBeGreaterThanOrEqual(1);
    expect(reconnects[0]).toMatchObject({ code: 1006, cause: "backoff", delayMs: 5 });
  });

  it("reconnect {afterMs} + 1012: waits afterMs plus jitter and does not grow the backoff", async () => {
    const s = await server();
    const c = client(s);
    const reconnects = recordReconnects(c);
    c.connect();
    const conn0 = await s.connection(0);
    await vi.waitFor(() => expect(c.state).toBe("open"));
    const t0 = Date.now();
    conn0.send({ type: "reconnect", data: { reason: "draining", afterMs: 60 } });
    conn0.close(1012, "draining");
    const conn1 = await s.connection(1);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(85); // 60 + 0.5×60
    await vi.waitFor(() => expect(c.state).toBe("open"));
    conn1.close(1011);
    const conn2 = await s.connection(2);
    await vi.waitFor(() => expect(c.state).toBe("open"));
    conn2.close(4009);
    await s.connection(3);
    expect(reconnects.map((r) => [r.code, r.cause, r.delayMs])).toEqual([
      [1012, "draining", 90],
      [1011, "backoff", 5], // first backoff step: the drain did not count
      [4009, "backoff", 10],
    ]);
  });

  it("backoff doubles up to maxMs over repeated failures and resets once a connection stayed open stableMs", async () => {
    const s = await server();
    const c = client(s, { random: () => 1, backoff: { initialMs: 10, maxMs: 40, stableMs: 150 } });
    const reconnects = recordReconnects(c);
    c.connect();
    for (let i = 0; i < 4; i++) {
      const conn = await s.connection(i);
      await vi.waitFor(() => expect(c.state).toBe("open"));
      conn.close(1011);
    }
    const stable = await s.connection(4);
    await vi.waitFor(() => expect(c.state).toBe("open"));
    await new Promise((r) => setTimeout(r, 200));
    stable.close(1011);
    await s.connection(5);
    expect(reconnects.map((r) => r.delayMs)).toEqual([10, 20, 40, 40, 10]);
  });

  it("1008 asks the token function for reason expired, and the next connection uses the new token", async () => {
    const s = await server();
    const reasons: string[] = [];
    const c = client(s, {
      token: async ({ reason }) => {
        reasons.push(reason);
        return `tok-${reasons.length}`;
      },
    });
    c.connect();
    const conn0 = await s.connection(0);
    expect(conn0.token).toBe("tok-1");
    await vi.waitFor(() => expect(c.state).toBe("open"));
    conn0.close(1008, "token expired");
    const conn1 = await s.connection(1);
    expect(conn1.token).toBe("tok-2");
    await vi.waitFor(() => expect(c.state).toBe("open"));
    conn1.close(1011);
    const conn2 = await s.connection(2);
    expect(conn2.token).toBe("tok-3");
    expect(reasons).toEqual(["initial", "expired", "reconnect"]);
  });

  it("three failed upgrades in a row (a 401 the browser cannot see) ask for a fresh token", async () => {
    const s = await server({ refuse: (_req, attempt) => (attempt < 3 ? 401 : null) });
    const reasons: string[] = [];
    const c = client(s, {
      token: ({ reason }) => {
        reasons.push(reason);
        return `tok-${reasons.length}`;
      },
    });
    const states: string[] = [];
    c.on("state", (st) => states.push(st));
    c.connect();
    const conn = await s.connection(0);
    expect(conn.token).toBe("tok-4");
    expect(reasons).toEqual(["initial", "reconnect", "reconnect", "expired"]);
    await vi.waitFor(() => expect(c.state).toBe("open"));
    expect(states).toEqual(["connecting", "open"]);
  });

  it("tries the next gateway URL after a failed attempt", async () => {
    const down = await server({ refuse: () => 503 });
    const up = await server();
    const c = client(up, { gatewayUrl: [down.url, up.url] });
    c.connect();
    await up.connection(0);
    await vi.waitFor(() => expect(c.state).toBe("open"));
    expect(down.upgradeAttempts).toBe(1);
  });

  it("without a WebSocket option uses the global one, else imports `ws` (Node), and authenticates either way", async () => {
    const s = await server();
    const c = client(s, { WebSocket: undefined });
    c.connect();
    const conn = await s.connection(0);
    await vi.waitFor(() => expect(c.state).toBe("open"));
    expect(conn.token).toBe("token-1");
    if (!(globalThis as { WebSocket?: unknown }).WebSocket) expect(conn.url).toBe("/ws"); // `ws`: header, not query
  });

  it("sends the token as ?token= when the WebSocket cannot send headers (browsers)", async () => {
    const s = await server();
    const { WebSocket: NodeWs } = await import("ws");
    // A constructor without ping(): looks like a browser WebSocket.
    const BrowserLike = function (url: string, protocols?: string | string[]) {
      return new NodeWs(url, protocols);
    } as unknown as typeof NodeWs;
    const c = client(s, { WebSocket: BrowserLike, token: "a b&c" });
    c.connect();
    const conn = await s.connection(0);
    expect(conn.url).toBe("/ws?token=a%20b%26c");
    expect(conn.token).toBe("a b&c");
  });
});
