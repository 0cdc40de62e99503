// Reads a JWT's payload for display only. The app never verifies tokens: the
// API and the gateway do.

export interface TokenInfo {
  userId: string;
  name: string;
  avatar: string | null;
  role: "member" | "official";
  /** Expiry, seconds since the epoch (null when absent). */
  exp: number | null;
}

function base64UrlDecode(s: string): string {
  const b64 = s.replace(/-/g, "+").replace(/_/g, "/");
  const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/** The token's claims, or an Error saying why it is not a readable JWT. */
export function decodeToken(token: string): TokenInfo | Error {
  const parts = token.trim().split(".");
  if (parts.length !== 3 || !parts[1]) return new Error("This is not a JWT (expected three dot-separated parts).");
  let payload: unknown;
  try {
    payload = JSON.parse(base64UrlDecode(parts[1]));
  } catch {
    return new Error("The token's payload is not readable JSON.");
  }
  if (typeof payload !== "object" || payload === null) return new Error("The token's payload is not an object.");
  const p = payload as Record<string, unknown>;
  if (typeof p.sub !== "string" || p.sub === "") return new Error("The token has no `sub` (user id).");
  return {
    userId: p.sub,
    name: typeof p.name === "string" && p.name !== "" ? p.name : p.sub,
    avatar: typeof p.avatar === "string" && p.avatar !== "" ? p.avatar : null,
    role: p.role === "official" ? "official" : "member",
    exp: typeof p.exp === "number" ? p.exp : null,
  };
}

export function isExpired(info: TokenInfo, nowMs = Date.now()): boolean {
  return info.exp !== null && info.exp * 1000 <= nowMs;
}
