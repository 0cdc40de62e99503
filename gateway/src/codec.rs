//! Wire encodings: JSON text frames, or MessagePack binary frames for
//! clients that asked for `chorus.v1.msgpack`. Server events are encoded at
//! most once per encoding ([`SharedFrame`]) and the same bytes are queued to
//! every recipient.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use chorus_shared::protocol::ServerEvent;
use serde::Serialize;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::error::GatewayError;

pub(crate) mod frame;

/// Subprotocol selecting MessagePack.
pub const MSGPACK_PROTOCOL: &str = "chorus.v1.msgpack";
/// Subprotocol naming the default JSON encoding explicitly.
pub const JSON_PROTOCOL: &str = "chorus.v1.json";

/// A server event as queued to connections: shared by every recipient,
/// encoded at most once per wire encoding.
pub type Frame = Arc<SharedFrame<ServerEvent>>;

/// A connection's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Msgpack,
}

impl Encoding {
    /// The metric label of this encoding.
    pub fn label(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Msgpack => "msgpack",
        }
    }

    /// Encodes one value as a frame of this encoding.
    pub fn encode<T: Serialize>(self, value: &T) -> Message {
        match self {
            Encoding::Json => match serde_json::to_string(value) {
                Ok(s) => Message::Text(Utf8Bytes::from(s)),
                Err(e) => unreachable!("wire types serialize to JSON: {e}"),
            },
            Encoding::Msgpack => {
                let mut buf = Vec::with_capacity(128);
                let mut ser = rmp_serde::Serializer::new(&mut buf)
                    .with_struct_map()
                    .with_human_readable();
                if let Err(e) = value.serialize(&mut ser) {
                    unreachable!("wire types serialize to MessagePack: {e}");
                }
                Message::Binary(Bytes::from(buf))
            }
        }
    }
}

/// A server frame as queued to connections: one pointer per queue entry.
#[derive(Debug)]
pub enum SharedFrame<T> {
    /// An event for many connections, encoded lazily, once per encoding,
    /// then shared by all of them.
    Event {
        value: T,
        json: OnceLock<Message>,
        msgpack: OnceLock<Message>,
        /// When the event committed (Unix ms; 0 if unknown), and whether
        /// its delivery lag was recorded (once per event, at its first
        /// socket write).
        committed_ms: i64,
        lag_taken: AtomicBool,
    },
    /// A frame for one connection (ready, acks, errors), already encoded in
    /// that connection's encoding.
    Encoded(Message),
}

impl<T: Serialize> SharedFrame<T> {
    pub fn new(value: T) -> Self {
        Self::committed_at(value, 0)
    }

    /// An event that committed at `committed_ms` (Unix ms), for the
    /// end-to-end delivery lag.
    pub fn committed_at(value: T, committed_ms: i64) -> Self {
        SharedFrame::Event {
            value,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
            committed_ms,
            lag_taken: AtomicBool::new(false),
        }
    }

    /// Called after a socket write of this frame: the first write of an
    /// event records its commit-to-socket lag
    /// (`chorus_gateway_delivery_lag_seconds`); later ones cost a load.
    pub fn written(&self) {
        if let SharedFrame::Event {
            committed_ms,
            lag_taken,
            ..
        } = self
            && *committed_ms > 0
            && !lag_taken.load(Ordering::Relaxed)
            && !lag_taken.swap(true, Ordering::Relaxed)
        {
            let lag_ms = chrono::Utc::now().timestamp_millis() - committed_ms;
            crate::series::hot()
                .delivery_lag
                .record(lag_ms.max(0) as f64 / 1000.0);
        }
    }

    /// The event this frame carries; `None` for a connection's own frame.
    pub fn event(&self) -> Option<&T> {
        match self {
            SharedFrame::Event { value, .. } => Some(value),
            SharedFrame::Encoded(_) => None,
        }
    }

    /// The frame for `enc`: a reference-count bump after the first call.
    pub fn get(&self, enc: Encoding) -> Message {
        match self {
            SharedFrame::Event {
                value,
                json,
                msgpack,
                ..
            } => {
                let cell = match enc {
                    Encoding::Json => json,
                    Encoding::Msgpack => msgpack,
                };
                cell.get_or_init(|| enc.encode(value)).clone()
            }
            SharedFrame::Encoded(message) => message.clone(),
        }
    }
}

/// A client frame as read off the wire, before its type is interpreted.
#[derive(Debug)]
pub struct RawFrame {
    pub kind: String,
    pub reference: Option<u64>,
    pub data: serde_json::Value,
}

/// Why a client frame could not be read; carries the `ref` when readable.
#[derive(Debug)]
pub struct FrameError {
    pub reference: Option<u64>,
    pub error: GatewayError,
}

/// Reads a client frame: a map with a string `type`, an optional u64
/// `ref` and an optional `data` map.
pub fn decode_client(enc: Encoding, bytes: &[u8]) -> Result<RawFrame, FrameError> {
    let value: serde_json::Value = match enc {
        Encoding::Json => {
            serde_json::from_slice(bytes).map_err(|e| bad(None, format!("invalid JSON: {e}")))?
        }
        Encoding::Msgpack => {
            let mut de = rmp_serde::Deserializer::from_read_ref(bytes).with_human_readable();
            serde::Deserialize::deserialize(&mut de)
                .map_err(|e| bad(None, format!("invalid MessagePack: {e}")))?
        }
    };
    let serde_json::Value::Object(mut map) = value else {
        return Err(bad(None, "a frame must be a map".into()));
    };
    let reference = match map.remove("ref") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| bad(None, "ref must be an unsigned integer".into()))?,
        ),
    };
    let kind = match map.remove("type") {
        Some(serde_json::Value::String(s)) => s,
        _ => return Err(bad(reference, "type must be a string".into())),
    };
    let data = match map.remove("data") {
        None | Some(serde_json::Value::Null) => serde_json::Value::Object(serde_json::Map::new()),
        Some(v @ serde_json::Value::Object(_)) => v,
        Some(_) => return Err(bad(reference, "data must be a map".into())),
    };
    Ok(RawFrame {
        kind,
        reference,
        data,
    })
}

fn bad(reference: Option<u64>, msg: String) -> FrameError {
    FrameError {
        reference,
        error: GatewayError::BadRequest(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_frames() {
        let f = decode_client(Encoding::Json, br#"{"type":"ping","ref":7}"#).expect("ok");
        assert_eq!((f.kind.as_str(), f.reference), ("ping", Some(7)));
        assert_eq!(f.data, json!({}));
        let e = decode_client(Encoding::Json, br#"{"type":5,"ref":3}"#).expect_err("bad type");
        assert_eq!(e.reference, Some(3));
        let e = decode_client(Encoding::Json, br#"{"type":"x","ref":-1}"#).expect_err("bad ref");
        assert_eq!(e.reference, None);
        assert!(decode_client(Encoding::Json, b"[1]").is_err());
        assert!(decode_client(Encoding::Json, b"{").is_err());
        assert!(decode_client(Encoding::Json, br#"{"type":"x","data":[]}"#).is_err());
    }

    #[test]
    fn msgpack_round_trip() {
        let bytes = match Encoding::Msgpack
            .encode(&json!({"type": "typing", "ref": 2, "data": {"isTyping": true}}))
        {
            Message::Binary(b) => b,
            other => panic!("expected binary, got {other:?}"),
        };
        let f = decode_client(Encoding::Msgpack, &bytes).expect("ok");
        assert_eq!((f.kind.as_str(), f.reference), ("typing", Some(2)));
        assert_eq!(f.data, json!({"isTyping": true}));
        assert!(decode_client(Encoding::Msgpack, b"\xc1").is_err());
    }

    #[test]
    fn shared_frames_encode_once_per_encoding() {
        let f = SharedFrame::new(json!({"type": "x", "data": {}}));
        let (a, b) = (f.get(Encoding::Json), f.get(Encoding::Json));
        match (a, b) {
            (Message::Text(a), Message::Text(b)) => assert_eq!(
                a.as_str().as_ptr(),
                b.as_str().as_ptr(),
                "same bytes shared"
            ),
            other => panic!("expected text frames, got {other:?}"),
        }
        assert!(matches!(f.get(Encoding::Msgpack), Message::Binary(_)));
        assert!(f.event().is_some());
    }

    #[test]
    fn a_connections_own_frame_is_sent_as_encoded() {
        let f: SharedFrame<serde_json::Value> = SharedFrame::Encoded(Message::Text("{}".into()));
        assert!(f.event().is_none());
        match f.get(Encoding::Json) {
            Message::Text(t) => assert_eq!(t.as_str(), "{}"),
            other => panic!("expected the text frame, got {other:?}"),
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Any JSON value, a few levels deep.
        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(serde_json::Value::from),
                ".{0,12}".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(3, 24, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6)
                        .prop_map(serde_json::Value::from),
                    proptest::collection::btree_map("[a-z]{0,6}", inner, 0..6)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Any bytes, in either encoding: a frame or an error, never a
            /// panic.
            #[test]
            fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = decode_client(Encoding::Json, &bytes);
                let _ = decode_client(Encoding::Msgpack, &bytes);
            }

            /// Any JSON value, sent as JSON or MessagePack: decoded exactly
            /// when it is a map with a string `type`, an unsigned `ref` and
            /// a map (or no) `data`.
            #[test]
            fn any_json_value_decodes_only_when_well_formed(v in json_value()) {
                let well_formed = v.as_object().is_some_and(|m| {
                    m.get("type").is_some_and(serde_json::Value::is_string)
                        && m.get("ref").is_none_or(|r| r.is_null() || r.is_u64())
                        && m.get("data").is_none_or(|d| d.is_null() || d.is_object())
                });
                let json = serde_json::to_vec(&v).expect("serializes");
                prop_assert_eq!(decode_client(Encoding::Json, &json).is_ok(), well_formed);
                let packed = match Encoding::Msgpack.encode(&v) {
                    Message::Binary(b) => b,
                    other => panic!("expected binary, got {other:?}"),
                };
                prop_assert_eq!(decode_client(Encoding::Msgpack, &packed).is_ok(), well_formed);
            }
        }
    }
}
