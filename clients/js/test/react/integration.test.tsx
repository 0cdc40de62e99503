// @vitest-environment jsdom
// The React components on the real ChorusClient: a fake gateway (a real
// WebSocket server in this process) and a scripted fetch.
import { act, cleanup, fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";
import type { ChorusClient, Message } from "../../src/index";
import { ChorusProvider, NotificationCenter, RealtimeChat } from "../../src/react/index";
import { FakeServer } from "../helpers/fakeServer";
import { CID, fakeFetch, historyPages, json, makeClient, msg, note } from "../helpers/fixtures";

let server: FakeServer | null = null;
let client: ChorusClient | null = null;
afterEach(async () => {
  cleanup();
  client?.close();
  await server?.stop();
  server = client = null;
});

describe("components on the real client", () => {
  it("joins, shows history and live events, sends with mentions, deletes, and counts notifications", async () => {
    server = await FakeServer.start();
    const history = [msg(1), msg(2)];
    let posted: Message | null = null;
    const f = fakeFetch((call) => {
      const p = call.url.pathname;
      if (p === "/api/messages-realtime" && call.method === "GET") return historyPages(history, call.url);
      if (p === "/api/messages-realtime" && call.method === "POST") {
        const body = call.body as { content: string; mentions?: string[] };
        posted = { ...msg(4), id: "m4", sender: { id: "alice", name: "Alice", avatar: null }, content: body.content, mentions: body.mentions ?? [] };
        return json(201, posted);
      }
      if (p.startsWith("/api/messages-realtime/") && call.method === "DELETE") return json(204);
      if (p === "/api/notifications-broadcast") return json(200, { notifications: [note("n1")], unreadCount: 1, nextBefore: null });
      return json(404, { error: { code: "not_found", message: p } });
    });
    client = makeClient(server, { fetch: f.fetch });
    client.connect();
    render(
      <ChorusProvider client={client}>
        <NotificationCenter />
        <RealtimeChat communityId={CID} title="General" />
      </ChorusProvider>,
    );
    const conn = await server.connection(0);
    const join = await conn.next("join-community");
    expect(join.data).toEqual({ communityId: CID });
    conn.ack(join.ref, { communityId: CID, headSeq: 2, online: ["alice", "bob"], recovered: true, missed: 0 });

    const log = await screen.findByRole("log", { name: "Messages" });
    await waitFor(() => expect(within(log).getAllByTestId("message")).toHaveLength(2));
    expect(screen.getByTestId("connection-dot").getAttribute("data-state")).toBe("open");
    expect(screen.getByText("2 online")).toBeTruthy();

    // live message and typing from bob
    conn.send({ type: "new-message", data: { message: msg(3) } });
    conn.send({ type: "user-typing", data: { communityId: CID, userId: "bob", name: "Bob", isTyping: true } });
    await waitFor(() => expect(within(log).getAllByTestId("message").map((e) => e.getAttribute("data-seq"))).toEqual(["1", "2", "3"]));
    await waitFor(() => expect(screen.getByTestId("typing-indicator").textContent).toContain("Bob is typing"));
    conn.send({ type: "user-typing", data: { communityId: CID, userId: "bob", name: "Bob", isTyping: false } });
    await waitFor(() => expect(screen.getByTestId("typing-indicator").textContent).toBe(""));

    // typing goes out over the socket, the message over HTTP with its mentions
    const input = screen.getByRole("textbox", { name: "Message" });
    fireEvent.change(input, { target: { value: "hi @bob" } });
    const typing = await conn.next("typing");
    expect(typing.data).toEqual({ communityId: CID, isTyping: true });
    fireEvent.keyDown(input, { key: "Enter" });
    await waitFor(() => expect(within(log).getAllByTestId("message")).toHaveLength(4));
    expect(f.calls.find((c) => c.method === "POST")!.body).toEqual({ communityId: CID, content: "hi @bob", mentions: ["bob"] });
    expect((await conn.next("typing")).data).toEqual({ communityId: CID, isTyping: false });

    // delete our own message, after confirming
    const own = within(log).getAllByTestId("message").find((e) => e.getAttribute("data-message-id") === "m4")!;
    fireEvent.click(within(own).getByRole("button", { name: "Delete message" }));
    await act(async () => {
      fireEvent.click(within(screen.getByRole("dialog")).getByRole("button", { name: "Delete" }));
    });
    expect(f.calls.some((c) => c.method === "DELETE" && c.url.pathname === "/api/messages-realtime/m4")).toBe(true);
    await waitFor(() => expect(within(log).getAllByTestId("message")).toHaveLength(3));

    // notifications: the subscription's count, then a live one
    // (sent at connect, before the join: next() has gone past it, so look it up)
    const sub = conn.commands.find((c) => c.type === "subscribe-notifications")!;
    conn.ack(sub.ref, { unreadCount: 1 });
    const bell = screen.getByRole("button", { name: "Notifications" });
    await waitFor(() => expect(bell.getAttribute("data-unread")).toBe("1"));
    conn.send({ type: "notification", data: { notification: note("n2") } });
    await waitFor(() => expect(screen.getByTestId("unread-badge").textContent).toBe("2"));

    // unmounting leaves the community
    cleanup();
    const leave = await conn.next("leave-community");
    expect(leave.data).toEqual({ communityId: CID });
  });
});
