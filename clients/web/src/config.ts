// Where the app finds the API and the gateway, and where it keeps the token.
//
//   (none)                         API same-origin, gateway ws(s)://<host>/ws
//   ?gateway=ws://a/ws,ws://b/ws   gateway list (the next one is tried after a failed attempt)
//   ?api=http://host:port          API base
// Both overrides must name the page's own host (any port): the token goes there.
//   #token=<jwt>                   sign in with this token (kept in sessionStorage, removed from the URL)

export interface AppConfig {
  apiUrl: string;
  gatewayUrls: string[];
}

/**
 * Whether `url` may receive the user's token: only servers on the page's own
 * host (any port). Otherwise a crafted link (`?gateway=wss://evil/ws`) would
 * make a signed-in page hand its token to a stranger.
 */
function onOwnHost(url: string, loc: Location, schemes: string[]): boolean {
  try {
    const u = new URL(url);
    return schemes.includes(u.protocol) && u.hostname === loc.hostname;
  } catch {
    return false;
  }
}

export function readConfig(loc: Location = window.location): AppConfig {
  const q = new URLSearchParams(loc.search);
  const gateway = q.get("gateway");
  const fromQuery = gateway
    ? gateway
        .split(",")
        .map((s) => s.trim())
        .filter((s) => {
          const ok = onOwnHost(s, loc, ["ws:", "wss:"]);
          if (s && !ok) console.warn(`ignoring ?gateway=${s}: not on this page's host`);
          return ok;
        })
    : [];
  const scheme = loc.protocol === "https:" ? "wss" : "ws";
  const gatewayUrls = fromQuery.length > 0 ? fromQuery : [`${scheme}://${loc.host}/ws`];
  let apiUrl = (q.get("api") ?? "").trim().replace(/\/+$/, "");
  if (apiUrl && !onOwnHost(apiUrl, loc, ["http:", "https:"])) {
    console.warn(`ignoring ?api=${apiUrl}: not on this page's host`);
    apiUrl = "";
  }
  return { apiUrl, gatewayUrls };
}

const TOKEN_KEY = "chorus.token";
const COMMUNITY_KEY = "chorus.community";

function storage(): Storage | null {
  try {
    return window.sessionStorage;
  } catch {
    return null; // storage disabled
  }
}

/** The token from `#token=...` (which is then removed from the address bar), else the stored one. */
export function takeInitialToken(): string | null {
  const hash = window.location.hash.replace(/^#/, "");
  if (hash) {
    const params = new URLSearchParams(hash);
    const token = params.get("token");
    if (token) {
      saveToken(token.trim());
      params.delete("token");
      const rest = params.toString();
      const url = window.location.pathname + window.location.search + (rest ? `#${rest}` : "");
      window.history.replaceState(null, "", url);
      return token.trim();
    }
  }
  return storage()?.getItem(TOKEN_KEY) ?? null;
}

export function saveToken(token: string): void {
  storage()?.setItem(TOKEN_KEY, token);
}

export function clearToken(): void {
  storage()?.removeItem(TOKEN_KEY);
  storage()?.removeItem(COMMUNITY_KEY);
}

export function savedCommunity(): string | null {
  const q = new URLSearchParams(window.location.search).get("community");
  return q || (storage()?.getItem(COMMUNITY_KEY) ?? null);
}

export function saveCommunity(id: string | null): void {
  if (id) storage()?.setItem(COMMUNITY_KEY, id);
  else storage()?.removeItem(COMMUNITY_KEY);
}
