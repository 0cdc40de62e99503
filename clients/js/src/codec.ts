// Frame encodings. JSON text frames by default; with the subprotocol
// `chorus.v1.msgpack` both directions are binary MessagePack holding the same maps.

import { decode as mpDecode, encode as mpEncode } from "@msgpack/msgpack";
import type { ClientFrame, ServerFrame } from "./types.js";

export const MSGPACK_SUBPROTOCOL = "chorus.v1.msgpack";
export const JSON_SUBPROTOCOL = "chorus.v1.json";

export interface Codec {
  readonly name: "json" | "msgpack";
  /** Subprotocols to offer on the upgrade (none for JSON: it is the default). */
  readonly protocols: string[];
  encode(frame: ClientFrame): string | Uint8Array;
  /** Decodes a received WebSocket message (string, ArrayBuffer, typed array or Node Buffer). */
  decode(data: unknown): ServerFrame;
}

function toBytes(data: unknown): Uint8Array {
  if (data instanceof Uint8Array) return data; // Node Buffer is a Uint8Array too
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (Array.isArray(data)) return toBytes(concat(data as Uint8Array[])); // ws "fragments" binaryType
  throw new TypeError("unsupported WebSocket message payload");
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

function checkFrame(value: unknown): ServerFrame {
  if (typeof value !== "object" || value === null || typeof (value as { type?: unknown }).type !== "string") {
    throw new TypeError("frame is not an object with a string `type`");
  }
  return value as ServerFrame;
}

export const jsonCodec: Codec = {
  name: "json",
  protocols: [],
  encode: (frame) => JSON.stringify(frame),
  decode: (data) => {
    const text = typeof data === "string" ? data : new TextDecoder().decode(toBytes(data));
    return checkFrame(JSON.parse(text));
  },
};

export const msgpackCodec: Codec = {
  name: "msgpack",
  protocols: [MSGPACK_SUBPROTOCOL],
  // `ignoreUndefined` keeps an absent `ref` absent instead of a nil the server would reject.
  encode: (frame) => mpEncode(frame, { ignoreUndefined: true }),
  decode: (data) => {
    if (typeof data === "string") throw new TypeError("text frame on a msgpack connection");
    return checkFrame(mpDecode(toBytes(data)));
  },
};

export function codecFor(encoding: "json" | "msgpack" | undefined): Codec {
  return encoding === "msgpack" ? msgpackCodec : jsonCodec;
}
