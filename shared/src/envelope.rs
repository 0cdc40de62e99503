//! The backplane envelope: what the API publishes on Redis and gateways
//! decode. MessagePack (rmp-serde) with named fields and human-readable
//! values (UUIDs and timestamps as strings), so the event inside is the same
//! map a client receives and a gateway can forward it without reshaping.
//!
//! Compatibility rule for rolling deploys: adding a field is compatible
//! (unknown fields are ignored, missing optional ones default); anything else
//! bumps [`ENVELOPE_VERSION`], and a reader skips envelopes newer than it
//! understands instead of misreading them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::protocol::ServerEvent;

/// The envelope format this build writes and the newest it reads.
pub const ENVELOPE_VERSION: u16 = 1;

/// Prefix of the channels carrying one community's events.
pub const COMMUNITY_CHANNEL_PREFIX: &str = "chorus:community:";
/// Prefix of the channels carrying one user's events.
pub const USER_CHANNEL_PREFIX: &str = "chorus:user:";

/// Redis channel carrying one community's events. The id is a hash tag,
/// the same as the community's presence keys
/// (`chorus_shared::presence`), so on Redis Cluster the channel, its
/// sharded subscribers and the community's presence live on one shard.
pub fn community_channel(community_id: &Uuid) -> String {
    format!("{COMMUNITY_CHANNEL_PREFIX}{{{community_id}}}")
}

/// Redis channel carrying one user's events (notifications, revocations),
/// the user id as its hash tag.
pub fn user_channel(user_id: &str) -> String {
    format!("{USER_CHANNEL_PREFIX}{{{user_id}}}")
}

/// The community whose channel `channel` is, if it is a community channel.
pub fn community_of_channel(channel: &str) -> Option<Uuid> {
    channel
        .strip_prefix(COMMUNITY_CHANNEL_PREFIX)?
        .strip_prefix('{')?
        .strip_suffix('}')?
        .parse()
        .ok()
}

/// The user whose channel `channel` is, if it is a user channel.
pub fn user_of_channel(channel: &str) -> Option<&str> {
    channel
        .strip_prefix(USER_CHANNEL_PREFIX)?
        .strip_prefix('{')?
        .strip_suffix('}')
}

/// One event on the backplane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Format version, see [`ENVELOPE_VERSION`].
    pub v: u16,
    /// The community whose sequence this event belongs to, if any.
    #[serde(default)]
    pub community_id: Option<Uuid>,
    /// The event's per-community sequence number (`new-message` and
    /// `message-deleted`); `None` for unsequenced events.
    #[serde(default)]
    pub seq: Option<i64>,
    /// When the change committed, in milliseconds since the Unix epoch; lets
    /// gateways measure end-to-end delivery latency.
    #[serde(default)]
    pub ts_ms: i64,
    /// The event, shaped exactly like the server frame clients receive.
    pub event: ServerEvent,
}

/// Why an envelope could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope version {0} is newer than this build understands")]
    TooNew(u16),
    #[error("malformed envelope: {0}")]
    Malformed(String),
}

#[derive(Deserialize)]
struct VersionProbe {
    v: u16,
}

impl Envelope {
    /// A current-version envelope.
    pub fn new(
        community_id: Option<Uuid>,
        seq: Option<i64>,
        ts_ms: i64,
        event: ServerEvent,
    ) -> Self {
        Envelope {
            v: ENVELOPE_VERSION,
            community_id,
            seq,
            ts_ms,
            event,
        }
    }

    /// Encodes to MessagePack.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(256);
        let mut ser = rmp_serde::Serializer::new(&mut buf)
            .with_struct_map()
            .with_human_readable();
        // Serializing plain data into a Vec cannot fail: no I/O, no
        // non-string map keys, no unrepresentable values.
        if let Err(e) = self.serialize(&mut ser) {
            unreachable!("envelope serialization failed: {e}");
        }
        buf
    }

    /// Decodes from MessagePack, refusing versions newer than this build.
    ///
    /// One pass over the bytes when they decode (every gateway decodes
    /// every event of its rooms); only an envelope that does not is read
    /// again for its version, to tell a newer writer's event (`TooNew`)
    /// from damage (`Malformed`).
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes).with_human_readable();
        let failure = match Envelope::deserialize(&mut de) {
            Ok(e) if e.v > ENVELOPE_VERSION => return Err(EnvelopeError::TooNew(e.v)),
            Ok(e) => return Ok(e),
            Err(e) => e,
        };
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes).with_human_readable();
        match VersionProbe::deserialize(&mut de) {
            Ok(probe) if probe.v > ENVELOPE_VERSION => Err(EnvelopeError::TooNew(probe.v)),
            _ => Err(EnvelopeError::Malformed(failure.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MembershipRevoked, MessageDeleted};

    #[test]
    fn channels_carry_their_id_as_a_hash_tag() {
        let c = Uuid::nil();
        assert_eq!(community_channel(&c), format!("chorus:community:{{{c}}}"));
        assert_eq!(user_channel("u1"), "chorus:user:{u1}");
        assert_eq!(user_of_channel(&user_channel("u1")), Some("u1"));
        // A user id may hold braces; it still comes back whole.
        assert_eq!(user_of_channel(&user_channel("a}b{")), Some("a}b{"));
        assert_eq!(user_of_channel(&community_channel(&c)), None);
        assert_eq!(community_of_channel(&community_channel(&c)), Some(c));
        assert_eq!(community_of_channel(&user_channel("u1")), None);
        assert_eq!(user_of_channel("chorus:user:u1"), None);
    }

    #[test]
    fn round_trips() {
        let e = Envelope::new(
            Some(Uuid::now_v7()),
            Some(42),
            1_700_000_000_000,
            ServerEvent::MessageDeleted(MessageDeleted {
                community_id: Uuid::now_v7(),
                message_id: Uuid::now_v7(),
                seq: 42,
            }),
        );
        assert_eq!(Envelope::decode(&e.encode()).expect("decodes"), e);
    }

    #[test]
    fn uuids_travel_as_strings() {
        let id = Uuid::now_v7();
        let e = Envelope::new(
            None,
            None,
            0,
            ServerEvent::MembershipRevoked(MembershipRevoked { community_id: id }),
        );
        let bytes = e.encode();
        let text = id.to_string();
        assert!(bytes.windows(text.len()).any(|w| w == text.as_bytes()));
    }

    #[test]
    fn refuses_newer_versions_and_garbage() {
        let mut e = Envelope::new(
            None,
            None,
            0,
            ServerEvent::MembershipRevoked(MembershipRevoked {
                community_id: Uuid::nil(),
            }),
        );
        e.v = ENVELOPE_VERSION + 1;
        assert!(matches!(
            Envelope::decode(&e.encode()),
            Err(EnvelopeError::TooNew(_))
        ));
        // A newer writer's event this build cannot read is still "too new";
        // the same from this version is damage.
        #[derive(Serialize)]
        struct Unknown {
            v: u16,
            event: std::collections::BTreeMap<&'static str, &'static str>,
        }
        let unknown_event = |v| {
            let mut bytes = Vec::new();
            let mut ser = rmp_serde::Serializer::new(&mut bytes).with_struct_map();
            let e = Unknown {
                v,
                event: [("type", "from-the-future")].into(),
            };
            e.serialize(&mut ser).expect("serializes");
            bytes
        };
        assert!(matches!(
            Envelope::decode(&unknown_event(ENVELOPE_VERSION + 1)),
            Err(EnvelopeError::TooNew(v)) if v == ENVELOPE_VERSION + 1
        ));
        assert!(matches!(
            Envelope::decode(&unknown_event(ENVELOPE_VERSION)),
            Err(EnvelopeError::Malformed(_))
        ));
        assert!(matches!(
            Envelope::decode(b"\xc1junk"),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn tolerates_unknown_fields_from_newer_minor_writers() {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Future<'a> {
            v: u16,
            ts_ms: i64,
            trace_id: &'a str,
            event: ServerEvent,
        }
        let f = Future {
            v: ENVELOPE_VERSION,
            ts_ms: 5,
            trace_id: "abc",
            event: ServerEvent::MembershipRevoked(MembershipRevoked {
                community_id: Uuid::nil(),
            }),
        };
        let mut buf = Vec::new();
        f.serialize(
            &mut rmp_serde::Serializer::new(&mut buf)
                .with_struct_map()
                .with_human_readable(),
        )
        .expect("serializes");
        let e = Envelope::decode(&buf).expect("decodes");
        assert_eq!(e.ts_ms, 5);
        assert_eq!(e.seq, None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Any bytes from the backplane: an envelope or an error, never
            /// a panic.
            #[test]
            fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = Envelope::decode(&bytes);
            }

            /// A real envelope with bytes flipped or cut: still no panic.
            #[test]
            fn damaged_envelopes_fail_cleanly(
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
                cut in any::<prop::sample::Index>(),
            ) {
                let event = ServerEvent::MembershipRevoked(crate::protocol::MembershipRevoked {
                    community_id: Uuid::nil(),
                });
                let mut bytes = Envelope::new(Some(Uuid::nil()), Some(7), 1, event).encode();
                for (i, b) in flips {
                    let at = i.index(bytes.len());
                    bytes[at] ^= b;
                }
                bytes.truncate(cut.index(bytes.len() + 1));
                let _ = Envelope::decode(&bytes);
            }
        }
    }
}
