// The web chat's URL overrides (clients/web/src/config.ts): a gateway or API
// named in the page's query receives the user's token, so only servers on
// the page's own host are taken; anything else falls back to the defaults.

import { describe, expect, it } from "vitest";
import { readConfig } from "../../../web/src/config.js";

function at(url: string): Location {
  const u = new URL(url);
  return { protocol: u.protocol, host: u.host, hostname: u.hostname, search: u.search } as Location;
}

describe("web chat configuration", () => {
  it("defaults to the page's own origin", () => {
    expect(readConfig(at("https://chat.example/"))).toEqual({ apiUrl: "", gatewayUrls: ["wss://chat.example/ws"] });
  });

  it("takes gateways and an API on the page's host, any port", () => {
    const c = readConfig(at("http://127.0.0.1:8080/?gateway=ws://127.0.0.1:8081/ws,ws://127.0.0.1:8082/ws&api=http://127.0.0.1:9000/"));
    expect(c).toEqual({ apiUrl: "http://127.0.0.1:9000", gatewayUrls: ["ws://127.0.0.1:8081/ws", "ws://127.0.0.1:8082/ws"] });
  });

  it("ignores servers on other hosts and other schemes: a crafted link gets no token", () => {
    const c = readConfig(
      at("https://chat.example/?gateway=wss://evil.example/ws,javascript:alert(1),wss://chat.example:8443/ws&api=https://evil.example"),
    );
    expect(c).toEqual({ apiUrl: "", gatewayUrls: ["wss://chat.example:8443/ws"] });
    const none = readConfig(at("https://chat.example/?gateway=wss://evil.example/ws"));
    expect(none.gatewayUrls).toEqual(["wss://chat.example/ws"]);
  });
});
