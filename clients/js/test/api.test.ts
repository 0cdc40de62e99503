// ChorusApi over a fake fetch: request shapes, the error envelope, 401 retry.

import { describe, expect, it } from "vitest";
import { ChorusApi, ChorusError, ChorusNetworkError } from "../src/index.js";
import { TokenSource } from "../src/token.js";
import { errorBody, fakeFetch, json, msg } from "./helpers/fixtures.js";

function api(handler: Parameters<typeof fakeFetch>[0], token: ConstructorParameters<typeof TokenSource>[0] = "tok") {
  const f = fakeFetch(handler);
  return { api: new ChorusApi({ apiUrl: "http://api.test/", tokens: new TokenSource(token), fetch: f.fetch }), calls: f.calls };
}

describe("ChorusApi", () => {
  it("turns the error envelope into ChorusError with code, status and retryAfterS", async () => {
    const { api: a } = api(() => errorBody(429, "rate_limited", "slow down", { "Retry-After": "3" }));
    const err = await a.postMessage("c", "hi").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ChorusError);
    expect(err).toMatchObject({ code: "rate_limited", status: 429, retryAfterS: 3, message: "slow down" });
  });

  it("falls back to the status's code when the body is not an envelope", async () => {
    const { api: a } = api(() => new Response("<html>bad gateway</html>", { status: 502 }));
    const err = (await a.listCommunities().catch((e: unknown) => e)) as ChorusError;
    expect(err).toMatchObject({ code: "internal", status: 502 });
    expect(err.retryAfterS).toBeUndefined();
    const { api: b } = api(() => new Response("", { status: 404 }));
    await expect(b.presence("x")).rejects.toMatchObject({ code: "not_found", status: 404 });
  });

  it("a failing fetch is a ChorusNetworkError (code unavailable, no status)", async () => {
    const { api: a } = api(() => {
      throw new TypeError("fetch failed");
    });
    const err = await a.socketStatus().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ChorusNetworkError);
    expect(err).toMatchObject({ code: "unavailable", status: undefined });
  });

  it("sends bearer token, JSON body, idempotency key and query; 204 gives undefined", async () => {
    const { api: a, calls } = api((call) =>
      call.method === "DELETE" ? json(204) : call.method === "POST" ? json(201, msg(1)) : json(200, { messages: [], nextBefore: null }),
    );
    await a.postMessage("c1", "hello", ["bob"], { idempotencyKey: "k-1" });
    await a.history("c1", { before: 10, limit: 5 });
    expect(await a.deleteMessage("m/1")).toBeUndefined();
    await a.members("c1", { after: "bob" });
    expect(calls.map((c) => c.line)).toEqual([
      "POST /api/messages-realtime",
      "GET /api/messages-realtime?communityId=c1&before=10&limit=5",
      "DELETE /api/messages-realtime/m%2F1",
      "GET /api/communities/c1/members?after=bob",
    ]);
    expect(calls[0]!.headers).toMatchObject({
      authorization: "Bearer tok",
      "content-type": "application/json",
      "idempotency-key": "k-1",
    });
    expect(calls[0]!.body).toEqual({ communityId: "c1", content: "hello", mentions: ["bob"] });
    expect(calls[1]!.body).toBeUndefined();
  });

  it("a 401 asks the token function for an expired-token refresh and retries once", async () => {
    const reasons: string[] = [];
    const { api: a, calls } = api(
      (call) => (call.headers.authorization === "Bearer fresh" ? json(200, { communities: [] }) : errorBody(401, "unauthorized")),
      ({ reason }) => {
        reasons.push(reason);
        return reasons.length === 1 ? "stale" : "fresh";
      },
    );
    expect(await a.listCommunities()).toEqual([]);
    expect(reasons).toEqual(["initial", "expired"]);
    expect(calls.map((c) => c.headers.authorization)).toEqual(["Bearer stale", "Bearer fresh"]);
    // Still 401 with the fresh token: the error surfaces, no loop.
    const { api: b, calls: bCalls } = api(() => errorBody(401, "unauthorized", "token expired"));
    await expect(b.listCommunities()).rejects.toMatchObject({ code: "unauthorized", status: 401 });
    expect(bCalls).toHaveLength(2);
  });
});
