// Gap-free delivery per community against the scripted gateway and a fake
// HTTP API: first join + history merge, replay-then-live across a reconnect,
// recovered:false gap filling, resync, revocation, idempotent sends.

import { afterEach, describe, expect, it, vi } from "vitest";
import { ChorusError, type ChorusClient, type Message } from "../src/index.js";
import { MAX_HELD_MESSAGES } from "../src/community.js";
import { FakeServer, type FakeConn } from "./helpers/fakeServer.js";
import { CID, errorBody, fakeFetch, historyPages, json, makeClient, msg, seqs, type FetchHandler } from "./helpers/fixtures.js";

let server: FakeServer | null = null;
let client: ChorusClient | null = null;

afterEach(async () => {
  client?.close();
  await server?.stop();
  server = client = null;
});

async function setup(handler: FetchHandler) {
  server = await FakeServer.start();
  const f = fakeFetch(handler);
  client = makeClient(server, { fetch: f.fetch });
  client.connect();
  return { s: server, c: client, calls: f.calls };
}

/** Answers a join-community on `conn` and returns the frame it answered. */
async function answerJoin(conn: FakeConn, ack: { headSeq: number; recovered?: boolean; missed?: number; online?: string[] }) {
  const f = await conn.next("join-community");
  conn.ack(f.ref, { communityId: CID, online: ["alice"], recovered: true, missed: 0, ...ack });
  return f;
}

const newMessage = (m: Message) => ({ type: "new-message", data: { message: m } });
const deleted = (id: string, seq: number) => ({ type: "message-deleted", data: { communityId: CID, messageId: id, seq } });

describe("community", () => {
  it("first join: no lastSeq, the newest page merged with live events that arrived meanwhile; loadOlder pages before the oldest", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const all = [1, 2, 3, 4, 5].map((n) => msg(n));
    const { s, c, calls } = await setup(async (call) => {
      if (call.url.searchParams.get("before") === null) await gate; // the first page waits for the live event
      return historyPages(all, call.url);
    });
    const community = c.community(CID);
    const joined = community.join();
    const conn = await s.connection(0);
    const f = await answerJoin(conn, { headSeq: 5, online: ["alice", "bob"] });
    expect(f.data).toEqual({ communityId: CID });
    conn.send(newMessage(msg(6)));
    await vi.waitFor(() => expect(seqs(community.getSnapshot().messages)).toEqual([6]));
    release();
    await joined;
    let snap = community.getSnapshot();
    expect(seqs(snap.messages)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(snap).toMatchObject({ joined: true, headSeq: 6, online: ["alice", "bob"], hasOlder: false });
    expect(calls.map((x) => x.line)).toEqual([`GET /api/messages-realtime?communityId=${CID}&limit=50`]);
    expect(community.getSnapshot()).toBe(snap); // stable until something changes
  });

  it("a first join whose history page was cut short by a reconnect loads it after the rejoin", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let gets = 0;
    const { s, c, calls } = await setup(async (call) => {
      if (++gets === 1) await gate; // answered only after the socket dropped
      return historyPages([1, 2].map((n) => msg(n)), call.url);
    });
    const community = c.community(CID);
    const joined = community.join();
    const conn0 = await s.connection(0);
    await answerJoin(conn0, { headSeq: 2 });
    await vi.waitFor(() => expect(calls).toHaveLength(1));
    conn0.close(1011);
    const conn1 = await s.connection(1);
    release();
    const rejoin = await answerJoin(conn1, { headSeq: 2 });
    expect(rejoin.data).toEqual({ communityId: CID, lastSeq: 2 });
    await joined;
    expect(seqs(community.getSnapshot().messages)).toEqual([1, 2]);
    expect(calls.map((x) => x.url.search)).toEqual([`?communityId=${CID}&limit=50`, `?communityId=${CID}&limit=50`]);
  });

  it("loadOlder pages with before=<oldest seq> and reports hasOlder", async () => {
    const all = Array.from({ length: 7 }, (_, i) => msg(i + 1));
    const { s, c, calls } = await setup((call) => {
      const limit = Number(call.url.searchParams.get("limit"));
      if (limit === 50) return json(200, { messages: [msg(7), msg(6), msg(5)], nextBefore: 5 });
      return historyPages(all, call.url);
    });
    const community = c.community(CID);
    const joined = community.join();
    await answerJoin(await s.connection(0), { headSeq: 7 });
    await joined;
    expect(community.getSnapshot().hasOlder).toBe(true);
    await community.loadOlder(2);
    expect(seqs(community.getSnapshot().messages)).toEqual([3, 4, 5, 6, 7]);
    expect(community.getSnapshot().hasOlder).toBe(true);
    await community.loadOlder(2);
    expect(seqs(community.getSnapshot().messages)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(community.getSnapshot().hasOlder).toBe(false);
    expect(calls.slice(1).map((x) => x.url.search)).toEqual([
      `?communityId=${CID}&before=5&limit=2`,
      `?communityId=${CID}&before=3&limit=2`,
    ]);
  });

  it("rejoins with lastSeq after a reconnect: replay before the ack, then live, duplicates dropped", async () => {
    const { s, c } = await setup((call) => historyPages([1, 2, 3].map((n) => msg(n)), call.url));
    const community = c.community(CID);
    const seen: number[] = [];
    const deletions: number[] = [];
    community.on("message", (m) => seen.push(m.seq));
    community.on("message-deleted", (d) => deletions.push(d.seq));
    const joined = community.join();
    const conn0 = await s.connection(0);
    await answerJoin(conn0, { headSeq: 3 });
    await joined;
    conn0.send(newMessage(msg(4)));
    await vi.waitFor(() => expect(community.getSnapshot().headSeq).toBe(4));
    conn0.close(1011);

    const conn1 = await s.connection(1);
    const rejoin = await conn1.next("join-community");
    expect(rejoin.data).toEqual({ communityId: CID, lastSeq: 4 });
    conn1.send(newMessage(msg(3))); // overlap: already applied
    conn1.send(newMessage(msg(5)));
    conn1.send(deleted("m2", 6));
    conn1.send(deleted("m2", 6)); // a duplicate at exactly lastSeq
    conn1.ack(rejoin.ref, { communityId: CID, headSeq: 6, online: ["alice"], recovered: true, missed: 2 });
    conn1.send(newMessage(msg(7)));
    conn1.send(newMessage(msg(7))); // a duplicate live frame
    conn1.send(deleted("m9", 10)); // seq 8 and 9 skipped: message 9 was created and deleted, not a loss
    await vi.waitFor(() => expect(community.getSnapshot().headSeq).toBe(10));
    const snap = community.getSnapshot();
    expect(seqs(snap.messages)).toEqual([1, 3, 4, 5, 7]);
    expect(snap.joined).toBe(true);
    expect(seen).toEqual([4, 5, 7]);
    expect(deletions).toEqual([6, 10]);
  });

  it("recovered:false: pages history after lastSeq, drops a message deleted in the gap, then applies the held live events", async () => {
    // Server truth after the gap: m2 deleted (seq 4), m5..m7 created, m8 after the ack, m6 deleted live (seq 9).
    let world = [1, 2, 3].map((n) => msg(n));
    const { s, c, calls } = await setup((call) => {
      const after = call.url.searchParams.get("after");
      if (after !== null) {
        // Two pages to follow nextAfter (the client always asks limit=100).
        if (after === "3") return json(200, { messages: [msg(5)], nextAfter: 5 });
        return json(200, { messages: [msg(6), msg(7), msg(8)], nextAfter: null });
      }
      return historyPages(world, call.url);
    });
    const community = c.community(CID);
    const seen: number[] = [];
    community.on("message", (m) => seen.push(m.seq));
    const joined = community.join();
    const conn0 = await s.connection(0);
    await answerJoin(conn0, { headSeq: 3 });
    await joined;
    expect(seqs(community.getSnapshot().messages)).toEqual([1, 2, 3]);
    conn0.close(1011);

    world = [1, 3, 5, 6, 7, 8].map((n) => msg(n));
    const conn1 = await s.connection(1);
    const rejoin = await conn1.next("join-community");
    expect(rejoin.data).toEqual({ communityId: CID, lastSeq: 3 });
    conn1.ack(rejoin.ref, { communityId: CID, headSeq: 7, online: ["alice"], recovered: false, missed: 4 });
    conn1.send(newMessage(msg(8)));
    conn1.send(deleted("m6", 9));
    await vi.waitFor(() => expect(community.getSnapshot().headSeq).toBe(9));
    expect(seqs(community.getSnapshot().messages)).toEqual([1, 3, 5, 7, 8]);
    expect(calls.slice(1).map((x) => x.url.search)).toEqual([
      `?communityId=${CID}&after=3&limit=100`,
      `?communityId=${CID}&after=5&limit=100`,
      `?communityId=${CID}&before=4&limit=100`,
    ]);
    expect(seen).toEqual([5, 6, 7, 8]);
  });

  it("recovered:false: our own sent message (known from HTTP only) deleted in the gap disappears too", async () => {
    const { s, c, calls } = await setup((call) => {
      if (call.method === "POST") return json(201, msg(2));
      if (call.url.searchParams.get("after") !== null) return json(200, { messages: [], nextAfter: null });
      return historyPages([msg(1)], call.url);
    });
    const community = c.community(CID);
    const joined = community.join();
    const conn0 = await s.connection(0);
    await answerJoin(conn0, { headSeq: 1 });
    await joined;
    await community.sendMessage("mine");
    expect(community.getSnapshot()).toMatchObject({ headSeq: 1 }); // HTTP never moves headSeq
    expect(seqs(community.getSnapshot().messages)).toEqual([1, 2]);
    conn0.close(1011); // the echo never came
    const conn1 = await s.connection(1);
    const rejoin = await answerJoin(conn1, { headSeq: 3, recovered: false, missed: 2 });
    expect(rejoin.data).toEqual({ communityId: CID, lastSeq: 1 });
    await vi.waitFor(() => expect(community.getSnapshot().headSeq).toBe(3));
    expect(seqs(community.getSnapshot().messages)).toEqual([1]);
    expect(calls.slice(2).map((x) => x.url.search)).toEqual([
      `?communityId=${CID}&after=1&limit=100`,
      `?communityId=${CID}&before=2&limit=100`,
    ]);
  });

  it("a join that times out starts over on a new connection, which rejoins from the same lastSeq", async () => {
    server = await FakeServer.start();
    const f = fakeFetch((call) => historyPages([1, 2, 3].map((n) => msg(n)), call.url));
    client = makeClient(server, { requestTimeoutMs: 80, fetch: f.fetch });
    client.connect();
    const community = client.community(CID);
    const joined = community.join();
    const conn0 = await server.connection(0);
    await answerJoin(conn0, { headSeq: 3 });
    await joined;
    await vi.waitFor(() => expect(seqs(community.getSnapshot().messages)).toEqual([1, 2, 3]));
    conn0.close(1011);

    // The rejoin is never answered: its outcome is unknown (a late
    // `recovered: false` ack followed by live events would skip the gap), so
    // the client drops that socket rather than asking again on it.
    const conn1 = await server.connection(1);
    expect((await conn1.next("join-community")).data).toEqual({ communityId: CID, lastSeq: 3 });
    const conn2 = await server.connection(2);
    const rejoin = await conn2.next("join-community");
    expect(rejoin.data).toEqual({ communityId: CID, lastSeq: 3 });
    conn2.send(newMessage(msg(4)));
    conn2.ack(rejoin.ref, { communityId: CID, headSeq: 4, online: ["alice"], recovered: true, missed: 1 });
    conn2.send(newMessage(msg(5)));
    await vi.waitFor(() => expect(community.getSnapshot().headSeq).toBe(5));
    expect(seqs(community.getSnapshot().messages)).toEqual([1, 2, 3, 4, 5]);
  });

  it("keeps a window of the newest MAX_HELD_MESSAGES as live messages arrive; the oldest go and hasOlder turns true", async () => {
    const { s, c } = await setup((call) => historyPages([], call.url));
    const community = c.community(CID);
    const joined = community.join();
    const conn = await s.connection(0);
    await answerJoin(conn, { headSeq: 0 });
    await joined;
    for (let seq = 1; seq <= MAX_HELD_MESSAGES + 5; seq++) conn.send(newMessage(msg(seq)));
    await vi.waitFor(() => expect(community.getSnapshot().headSeq).toBe(MAX_HELD_MESSAGES + 5));
    const snap = community.getSnapshot();
    expect(snap.messages).toHaveLength(MAX_HELD_MESSAGES);
    expect(snap.messages[0]!.seq).toBe(6);
    expect(snap.hasOlder).toBe(true);
  });

  it("recovered:false with the history refused (403) emits resync-required and clears the community", async () => {
    let refuse = false;
    const { s, c } = await setup((call) =>
      refuse ? errorBody(403, "forbidden") : historyPages([1, 2].map((n) => msg(n)), call.url),
    );
    const community = c.community(CID);
    const resync: unknown[] = [];
    c.on("resync-required", (e) => resync.push(e));
    const joined = community.join();
    const conn0 = await s.connection(0);
    await answerJoin(conn0, { headSeq: 2 });
    await joined;
    refuse = true;
    conn0.close(1011);
    const conn1 = await s.connection(1);
    await answerJoin(conn1, { headSeq: 5000, recovered: false, missed: 4998 });
    await vi.waitFor(() => expect(resync).toEqual([{ communityId: CID }]));
    expect(community.getSnapshot()).toMatchObject({ messages: [], headSeq: 0 });
  });

  it("membership-revoked: not joined any more and not rejoined after a reconnect", async () => {
    const { s, c } = await setup((call) => historyPages([], call.url));
    const community = c.community(CID);
    const revoked: unknown[] = [];
    community.on("membership-revoked", (e) => revoked.push(e));
    const joined = community.join();
    const conn0 = await s.connection(0);
    await answerJoin(conn0, { headSeq: 0 });
    await joined;
    conn0.send({ type: "membership-revoked", data: { communityId: CID } });
    await vi.waitFor(() => expect(community.getSnapshot().joined).toBe(false));
    expect(revoked).toEqual([{ communityId: CID }]);
    conn0.close(1011);
    const conn1 = await s.connection(1);
    await vi.waitFor(() => expect(c.state).toBe("open"));
    await new Promise((r) => setTimeout(r, 50));
    expect(conn1.commands).toEqual([]);
  });

  it("leave() sends leave-community, ignores the community's frames and does not rejoin after a reconnect", async () => {
    const { s, c } = await setup((call) => historyPages([msg(1)], call.url));
    const community = c.community(CID);
    const joined = community.join();
    const conn0 = await s.connection(0);
    await answerJoin(conn0, { headSeq: 1 });
    await joined;
    const left = community.leave();
    const leave = await conn0.next("leave-community");
    expect(leave.data).toEqual({ communityId: CID });
    conn0.send(newMessage(msg(2))); // before the leave's ack
    conn0.ack(leave.ref);
    await left;
    expect(community.getSnapshot()).toMatchObject({ joined: false, headSeq: 1 });
    expect(seqs(community.getSnapshot().messages)).toEqual([1]); // kept for a later join
    conn0.close(1011);
    const conn1 = await s.connection(1);
    await vi.waitFor(() => expect(c.state).toBe("open"));
    await new Promise((r) => setTimeout(r, 50));
    expect(conn1.commands).toEqual([]);
    // Joining again catches up from the messages held.
    const again = community.join();
    const rejoin = await conn1.next("join-community");
    expect(rejoin.data).toEqual({ communityId: CID, lastSeq: 1 });
    conn1.send(newMessage(msg(2)));
    conn1.ack(rejoin.ref, { communityId: CID, headSeq: 2, online: ["alice"], recovered: true, missed: 1 });
    await again;
    expect(seqs(community.getSnapshot().messages)).toEqual([1, 2]);
  });

  it("a refused join rejects with the server's ChorusError and is not retried", async () => {
    const { s, c } = await setup(() => json(500));
    const community = c.community(CID);
    const joined = community.join();
    const conn = await s.connection(0);
    const f = await conn.next("join-community");
    conn.send({ type: "error", ref: f.ref, error: { code: "forbidden", message: "not a member" } });
    await expect(joined).rejects.toMatchObject({ code: "forbidden" });
    expect(community.getSnapshot().joined).toBe(false);
  });

  it("sendMessage retries with the same Idempotency-Key on a network error and a 503, and the echo does not duplicate", async () => {
    let posts = 0;
    const { s, c, calls } = await setup((call) => {
      if (call.method === "POST") {
        posts++;
        if (posts === 1) throw new TypeError("fetch failed");
        if (posts === 2) return errorBody(503, "unavailable");
        return json(201, msg(4));
      }
      return historyPages([1, 2, 3].map((n) => msg(n)), call.url);
    });
    const community = c.community(CID);
    const seen: number[] = [];
    community.on("message", (m) => seen.push(m.seq));
    const joined = community.join();
    const conn = await s.connection(0);
    await answerJoin(conn, { headSeq: 3 });
    await joined;
    const sent = await community.sendMessage("hello", ["bob"]);
    expect(sent.seq).toBe(4);
    const postCalls = calls.filter((x) => x.method === "POST");
    expect(postCalls).toHaveLength(3);
    const key = postCalls[0]!.headers["idempotency-key"];
    expect(key).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(postCalls.map((x) => x.headers["idempotency-key"])).toEqual([key, key, key]);
    expect(postCalls[0]!.body).toEqual({ communityId: CID, content: "hello", mentions: ["bob"] });
    conn.send(newMessage(msg(4))); // the echo
    await vi.waitFor(() => expect(community.getSnapshot().headSeq).toBe(4));
    expect(seqs(community.getSnapshot().messages)).toEqual([1, 2, 3, 4]);
    expect(seen).toEqual([4]);
  });

  it("sendMessage never retries a 4xx", async () => {
    const { calls, c } = await setup(() => errorBody(400, "bad_request", "content must be 1-4000 characters"));
    const err = await c.community(CID).sendMessage("").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ChorusError);
    expect(err).toMatchObject({ code: "bad_request", status: 400 });
    expect(calls).toHaveLength(1);
  });
});
