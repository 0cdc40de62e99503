// Every HTTP call the SDK makes is an operation of the API's OpenAPI
// document (api/openapi.json, generated from the Rust handlers), with the
// query parameters that operation declares, and every documented
// operation has an SDK method.

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { ChorusApi } from "../src/index.js";
import { TokenSource } from "../src/token.js";
import { fakeFetch, json } from "./helpers/fixtures.js";

interface Operation {
  parameters?: { name: string; in: string }[];
}
const doc = JSON.parse(readFileSync(fileURLToPath(new URL("../../../api/openapi.json", import.meta.url)), "utf8")) as {
  paths: Record<string, Record<string, Operation>>;
};

/** The documented operation a concrete request matches, e.g. `DELETE /api/messages-realtime/{id}`. */
function operationOf(method: string, pathname: string): [string, Operation] | undefined {
  for (const [template, ops] of Object.entries(doc.paths)) {
    const re = new RegExp(`^${template.replace(/\{[^}]+\}/g, "[^/]+")}$`);
    const op = ops[method.toLowerCase()];
    if (op && re.test(pathname)) return [`${method} ${template}`, op];
  }
  return undefined;
}

describe("the SDK and the OpenAPI document", () => {
  it("calls only documented operations, with documented query parameters, and covers them all", async () => {
    const f = fakeFetch((call) => (call.method === "DELETE" ? json(204) : json(200, {})));
    const api = new ChorusApi({ apiUrl: "http://api.test", tokens: new TokenSource("t"), fetch: f.fetch });
    const id = "11111111-1111-4111-8111-111111111111";
    await api.listCommunities().catch(() => undefined);
    await api.createCommunity("general", true);
    await api.joinCommunity(id);
    await api.members(id, { limit: 10, after: "bob" });
    await api.addMember(id, "bob");
    await api.removeMember(id, "bob");
    await api.presence(id);
    await api.history(id, { before: 10, limit: 5 });
    await api.history(id, { after: 3 });
    await api.postMessage(id, "hi", ["bob"], { idempotencyKey: "k" });
    await api.deleteMessage(id);
    await api.listNotifications({ unread: true, limit: 5, before: id });
    await api.markNotificationRead(id);
    await api.markAllNotificationsRead();
    await api.deleteNotification(id);
    await api.broadcastNotification({ userId: "bob", type: "mention", title: "t", message: "m" });
    await api.socketStatus();

    const seen = new Set<string>();
    for (const call of f.calls) {
      const found = operationOf(call.method, call.url.pathname);
      expect(found, `${call.line} is not in api/openapi.json`).toBeDefined();
      const [name, op] = found!;
      seen.add(name);
      const declared = new Set((op.parameters ?? []).filter((p) => p.in === "query").map((p) => p.name));
      for (const key of call.url.searchParams.keys()) {
        expect(declared.has(key), `${call.line}: query parameter ${key} is not declared`).toBe(true);
      }
    }
    const documented = Object.entries(doc.paths).flatMap(([p, ops]) =>
      Object.keys(ops).map((m) => `${m.toUpperCase()} ${p}`),
    );
    // The document itself is public and needs no SDK method.
    expect([...seen].sort()).toEqual(documented.filter((o) => o !== "GET /api/openapi.json").sort());
  });
});
