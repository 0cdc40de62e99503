// Notifications: socket subscription and live frames, HTTP list and updates.

import { afterEach, describe, expect, it, vi } from "vitest";
import type { ChorusClient } from "../src/index.js";
import { FakeServer } from "./helpers/fakeServer.js";
import { errorBody, fakeFetch, json, makeClient, note } from "./helpers/fixtures.js";

let server: FakeServer | null = null;
let client: ChorusClient | null = null;
afterEach(async () => {
  client?.close();
  await server?.stop();
  server = client = null;
});

describe("notifications", () => {
  it("subscribes on every connection, prepends live notifications and applies read/delete after the HTTP call", async () => {
    server = await FakeServer.start();
    let failDelete = false;
    const f = fakeFetch((call) => {
      if (call.method === "GET") return json(200, { notifications: [note("n2"), note("n1", true)], unreadCount: 1, nextBefore: null });
      if (call.method === "DELETE") return failDelete ? errorBody(404, "not_found") : json(204);
      if (call.url.pathname.endsWith("/read-all")) return json(200, { updated: 2 });
      return json(200, { ...note("n3"), read: true });
    });
    client = makeClient(server, { fetch: f.fetch });
    const n = client.notifications();
    client.connect();
    const conn = await server.connection(0);
    const sub = await conn.next("subscribe-notifications");
    expect(sub.data).toEqual({});
    conn.ack(sub.ref, { unreadCount: 5 });
    conn.send({ type: "notification", data: { notification: note("n9") } }); // right behind the ack
    await vi.waitFor(() => expect(n.getSnapshot().unreadCount).toBe(6));

    await n.refresh();
    expect(n.getSnapshot()).toMatchObject({ loaded: true, unreadCount: 1 });
    conn.send({ type: "notification", data: { notification: note("n3") } });
    conn.send({ type: "notification", data: { notification: note("n3") } }); // same id twice: once
    await vi.waitFor(() => expect(n.getSnapshot().items.map((x) => x.id)).toEqual(["n3", "n2", "n1"]));
    expect(n.getSnapshot().unreadCount).toBe(2);

    await n.markRead("n3");
    expect(n.getSnapshot().unreadCount).toBe(1);
    expect(n.getSnapshot().items[0]!.read).toBe(true);
    await n.markRead("n3"); // already read: no double decrement
    expect(n.getSnapshot().unreadCount).toBe(1);

    failDelete = true;
    await expect(n.remove("n2")).rejects.toMatchObject({ code: "not_found" });
    expect(n.getSnapshot().items).toHaveLength(3); // unchanged when the call failed
    failDelete = false;
    await n.remove("n2");
    expect(n.getSnapshot()).toMatchObject({ unreadCount: 0 });
    expect(n.getSnapshot().items.map((x) => x.id)).toEqual(["n3", "n1"]);

    conn.send({ type: "notification", data: { notification: note("n4") } });
    await vi.waitFor(() => expect(n.getSnapshot().unreadCount).toBe(1));
    await n.markAllRead();
    expect(n.getSnapshot().unreadCount).toBe(0);
    expect(n.getSnapshot().items.every((x) => x.read)).toBe(true);
    expect(f.calls.map((c) => c.line)).toEqual([
      "GET /api/notifications-broadcast?limit=20",
      "POST /api/notifications-broadcast/n3/read",
      "POST /api/notifications-broadcast/n3/read",
      "DELETE /api/notifications-broadcast/n2",
      "DELETE /api/notifications-broadcast/n2",
      "POST /api/notifications-broadcast/read-all",
    ]);

    // After a reconnect: subscribe again and reload the list (frames were missed).
    conn.close(1011);
    const conn1 = await server.connection(1);
    const sub1 = await conn1.next("subscribe-notifications");
    conn1.ack(sub1.ref, { unreadCount: 1 });
    await vi.waitFor(() => expect(f.calls).toHaveLength(7));
    expect(f.calls[6]!.line).toBe("GET /api/notifications-broadcast?limit=20");
  });

  it("a notification that arrives while refresh() reads its page is kept and counted", async () => {
    server = await FakeServer.start();
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    const f = fakeFetch(async () => {
      await gate; // the page was built before n5 was created
      return json(200, { notifications: [note("n1")], unreadCount: 1, nextBefore: null });
    });
    client = makeClient(server, { fetch: f.fetch });
    const n = client.notifications();
    client.connect();
    const conn = await server.connection(0);
    const sub = await conn.next("subscribe-notifications");
    conn.ack(sub.ref, { unreadCount: 1 });
    const refreshed = n.refresh();
    await vi.waitFor(() => expect(f.calls).toHaveLength(1));
    conn.send({ type: "notification", data: { notification: note("n5") } });
    await vi.waitFor(() => expect(n.getSnapshot().unreadCount).toBe(2));
    release();
    await refreshed;
    expect(n.getSnapshot().items.map((x) => x.id)).toEqual(["n5", "n1"]);
    expect(n.getSnapshot().unreadCount).toBe(2);
  });
});
