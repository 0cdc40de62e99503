// Reconnect delays: "full jitter" exponential backoff. The n-th consecutive
// failure waits random() * min(maxMs, initialMs * 2^n), so a fleet of clients
// that lost the same gateway spreads its reconnects instead of stampeding.

export interface BackoffOptions {
  /** Cap of the first delay (default 500 ms). */
  initialMs?: number;
  /** Largest cap (default 20 s). */
  maxMs?: number;
  /** The attempt counter resets once a connection stayed open this long (default 10 s). */
  stableMs?: number;
}

export const DEFAULT_BACKOFF = { initialMs: 500, maxMs: 20_000, stableMs: 10_000 } as const;

/** The delay cap of attempt `attempt` (0-based): min(maxMs, initialMs * 2^attempt). */
export function backoffCap(attempt: number, initialMs: number, maxMs: number): number {
  // 2^attempt overflows to Infinity for huge attempts; min() still caps it.
  return Math.min(maxMs, initialMs * 2 ** attempt);
}

export class Backoff {
  readonly initialMs: number;
  readonly maxMs: number;
  readonly stableMs: number;
  private attempt = 0;

  constructor(options: BackoffOptions = {}, private readonly random: () => number = Math.random) {
    this.initialMs = options.initialMs ?? DEFAULT_BACKOFF.initialMs;
    this.maxMs = options.maxMs ?? DEFAULT_BACKOFF.maxMs;
    this.stableMs = options.stableMs ?? DEFAULT_BACKOFF.stableMs;
  }

  /** Consecutive failures so far. */
  get attempts(): number {
    return this.attempt;
  }

  /** The delay before the next attempt; grows the attempt counter. */
  next(): number {
    const delay = this.random() * backoffCap(this.attempt, this.initialMs, this.maxMs);
    this.attempt++;
    return delay;
  }

  reset(): void {
    this.attempt = 0;
  }
}
