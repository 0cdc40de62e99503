// Typing expiry and online tracking, driven frame by frame with fake timers.

import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ChorusApi } from "../src/api.js";
import { Community, type CommunityHost } from "../src/community.js";
import { TokenSource } from "../src/token.js";
import { CID } from "./helpers/fixtures.js";

function host(sent: object[]): CommunityHost {
  return {
    api: new ChorusApi({ apiUrl: "", tokens: new TokenSource("t"), fetch: () => Promise.reject(new Error("no http")) }),
    isOpen: () => true,
    request: <T>(type: string, data: object, onAck?: (d: T) => void) => {
      sent.push({ type, data });
      const ack = { communityId: CID, headSeq: 0, online: ["alice", "bob"], recovered: true, missed: 0 } as T;
      onAck?.(ack);
      return Promise.resolve(ack);
    },
    send: (type, data) => {
      sent.push({ type, data });
      return true;
    },
    retryDelay: () => 0,
    restart: () => undefined,
    resyncRequired: () => {},
    error: () => {},
  };
}

const typing = (userId: string, isTyping: boolean) => ({
  type: "user-typing",
  data: { communityId: CID, userId, name: userId.toUpperCase(), isTyping },
});

describe("typing and presence", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("typing users expire 6 s after their last isTyping:true; isTyping:false removes at once", () => {
    const c = new Community(CID, host([]));
    (c as unknown as { desired: boolean }).desired = true; // joined, without the join round trip
    c._onFrame(typing("bob", true));
    c._onFrame(typing("carol", true));
    expect(c.getSnapshot().typing).toEqual([
      { userId: "bob", name: "BOB" },
      { userId: "carol", name: "CAROL" },
    ]);
    vi.advanceTimersByTime(4000);
    c._onFrame(typing("bob", true)); // renews bob's 6 s
    vi.advanceTimersByTime(2000); // carol's 6 s are up
    expect(c.getSnapshot().typing.map((t) => t.userId)).toEqual(["bob"]);
    vi.advanceTimersByTime(3999);
    expect(c.getSnapshot().typing.map((t) => t.userId)).toEqual(["bob"]);
    vi.advanceTimersByTime(1);
    expect(c.getSnapshot().typing).toEqual([]);
    c._onFrame(typing("dave", true));
    c._onFrame(typing("dave", false));
    expect(c.getSnapshot().typing).toEqual([]);
  });

  it("online comes from the join ack, then user-joined / user-left", async () => {
    const sent: object[] = [];
    const c = new Community(CID, host(sent));
    const joined = c.join().catch(() => {}); // the history page fails (no http): still joined
    await vi.runAllTimersAsync();
    await joined;
    expect(sent[0]).toEqual({ type: "join-community", data: { communityId: CID } });
    expect(c.getSnapshot().online).toEqual(["alice", "bob"]);
    c._onFrame({ type: "user-joined", data: { communityId: CID, userId: "carol", name: "Carol" } });
    c._onFrame({ type: "user-joined", data: { communityId: CID, userId: "carol", name: "Carol" } });
    c._onFrame(typing("bob", true));
    c._onFrame({ type: "user-left", data: { communityId: CID, userId: "bob" } });
    const snap = c.getSnapshot();
    expect(snap.online).toEqual(["alice", "carol"]);
    expect(snap.typing).toEqual([]); // a user who left stops typing
  });

  it("setTyping sends `typing` without ref, throttles repeats of true, and never throws", () => {
    const sent: object[] = [];
    const c = new Community(CID, host(sent));
    c.setTyping(true); // not joined: nothing
    expect(sent).toEqual([]);
    (c as unknown as { joined: boolean }).joined = true;
    c.setTyping(true);
    c.setTyping(true);
    vi.advanceTimersByTime(3000);
    c.setTyping(true);
    c.setTyping(false);
    c.setTyping(false);
    expect(sent).toEqual([
      { type: "typing", data: { communityId: CID, isTyping: true } },
      { type: "typing", data: { communityId: CID, isTyping: true } },
      { type: "typing", data: { communityId: CID, isTyping: false } },
    ]);
  });
});
