// Error classes. ChorusError carries the contract's error code, whether it came
// from an HTTP error envelope or a WebSocket `error` frame.

import type { ErrorCode } from "./types.js";

export class ChorusError extends Error {
  override name = "ChorusError";
  readonly code: ErrorCode;
  /** HTTP status, for errors from the API. */
  readonly status?: number;
  /** Seconds from `Retry-After` (429 `rate_limited`). */
  readonly retryAfterS?: number;

  constructor(code: ErrorCode, message: string, extra: { status?: number; retryAfterS?: number } = {}) {
    super(message);
    this.code = code;
    if (extra.status !== undefined) this.status = extra.status;
    if (extra.retryAfterS !== undefined) this.retryAfterS = extra.retryAfterS;
  }
}

/** A ref'd request got no ack within `requestTimeoutMs`; the ref is forgotten. */
export class ChorusTimeoutError extends Error {
  override name = "ChorusTimeoutError";
}

/**
 * The request could not reach the server: no open connection, the connection
 * closed before the answer, or `fetch` itself failed. Code `unavailable`, no status.
 */
export class ChorusNetworkError extends ChorusError {
  override name = "ChorusNetworkError";
  constructor(message: string, options?: { cause?: unknown }) {
    super("unavailable", message);
    if (options?.cause !== undefined) (this as { cause?: unknown }).cause = options.cause;
  }
}

const STATUS_CODES: Record<number, ErrorCode> = {
  400: "bad_request",
  401: "unauthorized",
  403: "forbidden",
  404: "not_found",
  405: "bad_request",
  409: "conflict",
  413: "payload_too_large",
  429: "rate_limited",
  503: "unavailable",
};

/** The code for an HTTP status whose body is not an error envelope (a proxy's page, say). */
export function codeForStatus(status: number): ErrorCode {
  return STATUS_CODES[status] ?? (status >= 500 ? "internal" : "bad_request");
}
