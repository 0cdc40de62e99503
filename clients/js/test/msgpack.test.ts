// The chorus.v1.msgpack subprotocol end to end: binary frames both ways.

import { afterEach, describe, expect, it, vi } from "vitest";
import type { ChorusClient } from "../src/index.js";
import { FakeServer, MSGPACK } from "./helpers/fakeServer.js";
import { CID, fakeFetch, historyPages, makeClient, msg, seqs } from "./helpers/fixtures.js";

let server: FakeServer | null = null;
let client: ChorusClient | null = null;
afterEach(async () => {
  client?.close();
  await server?.stop();
  server = client = null;
});

describe("msgpack encoding", () => {
  it("offers chorus.v1.msgpack and speaks binary MessagePack frames both ways", async () => {
    server = await FakeServer.start();
    const f = fakeFetch((call) => historyPages([msg(1)], call.url));
    client = makeClient(server, { encoding: "msgpack", fetch: f.fetch });
    const community = client.community(CID);
    const joined = community.join();
    client.connect();
    const conn = await server.connection(0);
    expect(conn.protocol).toBe(MSGPACK);
    const join = await conn.next("join-community");
    expect((join as { binary?: boolean }).binary).toBe(true);
    expect(join).toEqual({ type: "join-community", ref: 1, data: { communityId: CID } });
    conn.ack(join.ref, { communityId: CID, headSeq: 1, online: ["alice"], recovered: true, missed: 0 });
    await joined;
    conn.send({ type: "new-message", data: { message: msg(2) } });
    await vi.waitFor(() => expect(seqs(community.getSnapshot().messages)).toEqual([1, 2]));
    expect(community.getSnapshot().messages[1]).toEqual(msg(2));
  });
});
