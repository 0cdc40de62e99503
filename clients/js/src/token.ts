// The token source shared by the socket and the HTTP API: asks the app's
// token function when a connection starts (or the token expired) and keeps
// the last token so HTTP calls don't call the app on every request.

export type TokenReason = "initial" | "reconnect" | "expired";
export type TokenProvider = string | ((ctx: { reason: TokenReason }) => string | Promise<string>);

export class TokenSource {
  private current: string | null = null;
  private inflight: Promise<string> | null = null;

  constructor(private readonly provider: TokenProvider) {}

  /** A fresh token from the provider (a string provider always gives itself). */
  async fetch(reason: TokenReason): Promise<string> {
    if (typeof this.provider === "string") return (this.current = this.provider);
    // Concurrent callers (a reconnect and an HTTP 401 at once) share one call.
    if (!this.inflight) {
      const p = Promise.resolve()
        .then(() => (this.provider as Exclude<TokenProvider, string>)({ reason }))
        .then((t) => {
          if (typeof t !== "string" || t === "") throw new TypeError("token function returned no token");
          this.current = t;
          return t;
        });
      this.inflight = p;
      const clear = () => {
        if (this.inflight === p) this.inflight = null;
      };
      p.then(clear, clear);
    }
    return this.inflight;
  }

  /** The last token, or a first one. */
  async get(): Promise<string> {
    return this.current ?? this.fetch("initial");
  }
}
