import { describe, expect, it } from "vitest";
import { Backoff, backoffCap } from "../src/backoff.js";

describe("backoff (full jitter)", () => {
  it("doubles from 0.5 s and caps at 20 s", () => {
    const b = new Backoff({}, () => 1); // random() = 1: every delay is its cap
    const delays = Array.from({ length: 9 }, () => b.next());
    expect(delays).toEqual([500, 1000, 2000, 4000, 8000, 16000, 20000, 20000, 20000]);
    expect(b.attempts).toBe(9);
  });

  it("is random() times the cap", () => {
    const values = [0, 0.5, 0.25, 0.1];
    const b = new Backoff({ initialMs: 100, maxMs: 1000 }, () => values.shift()!);
    expect([b.next(), b.next(), b.next(), b.next()]).toEqual([0, 100, 100, 80]);
  });

  it("resets to the first cap", () => {
    const b = new Backoff({}, () => 1);
    b.next();
    b.next();
    b.next();
    b.reset();
    expect(b.attempts).toBe(0);
    expect(b.next()).toBe(500);
  });

  it("never overflows past the cap", () => {
    expect(backoffCap(5000, 500, 20000)).toBe(20000);
  });
});
