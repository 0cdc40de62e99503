import { decode } from "@msgpack/msgpack";
import { describe, expect, it } from "vitest";
import { jsonCodec, msgpackCodec, MSGPACK_SUBPROTOCOL } from "../src/codec.js";

const frame = {
  type: "new-message",
  data: {
    message: {
      id: "5b1c0a52-1111-4c3c-9e57-000000000001",
      communityId: "c1",
      seq: 42,
      sender: { id: "alice", name: "Alice", avatar: null },
      content: "héllo ✓",
      mentions: ["bob"],
      createdAt: "2026-01-01T00:00:00.000Z",
    },
  },
};

describe("codec", () => {
  it("msgpack round trip: client frames are binary maps without undefined ref", () => {
    const bytes = msgpackCodec.encode({ type: "ping", data: {} });
    expect(bytes).toBeInstanceOf(Uint8Array);
    expect(decode(bytes as Uint8Array)).toEqual({ type: "ping", data: {} });
    const withRef = msgpackCodec.encode({ type: "join-community", ref: 7, data: { communityId: "c1", lastSeq: 3 } });
    expect(decode(withRef as Uint8Array)).toEqual({ type: "join-community", ref: 7, data: { communityId: "c1", lastSeq: 3 } });
  });

  it("msgpack decodes Uint8Array, ArrayBuffer and Buffer the same", () => {
    const bytes = msgpackCodec.encode(frame as never) as Uint8Array;
    const ab = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
    expect(msgpackCodec.decode(bytes)).toEqual(frame);
    expect(msgpackCodec.decode(ab)).toEqual(frame);
    expect(msgpackCodec.decode(Buffer.from(bytes))).toEqual(frame);
    expect(msgpackCodec.protocols).toEqual([MSGPACK_SUBPROTOCOL]);
  });

  it("json round trip and rejection of non-frames", () => {
    expect(jsonCodec.decode(jsonCodec.encode(frame as never))).toEqual(frame);
    expect(jsonCodec.protocols).toEqual([]);
    expect(() => jsonCodec.decode("[1,2]")).toThrow(TypeError);
    expect(() => msgpackCodec.decode("text")).toThrow(TypeError);
  });
});
