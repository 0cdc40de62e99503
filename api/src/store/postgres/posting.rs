//! The fast path of message creation: a post without mentions encoded
//! once (response JSON and backplane envelope, each with a placeholder
//! seq) and created by the post writer (`writer.rs`) in a batch, by one
//! call of `chorus_post_messages_direct`. Refusals map to the contract's errors
//! here; anything this path does not handle goes down the full path in
//! `messages.rs`.

use chorus_shared::envelope::{Envelope, community_channel};
use chorus_shared::protocol::{Message, MessageData, Sender, ServerEvent};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::PgStore;
use super::writer::Post;
use crate::error::ApiError;
use crate::store::NewPost;

/// The seq written where `chorus_post_messages_direct` (and the writer,
/// for the events it publishes itself) splices in the real one.
/// MessagePack encodes it as 0xcf (uint64) and eight bytes beginning with
/// 0x7e: 0xcf is a UTF-8 lead byte that 0x7e cannot follow, so the nine
/// bytes never occur inside a string, and the envelope's other integers
/// (version, timestamp) are small. It occurs exactly where the seq is.
const SEQ_PLACEHOLDER: i64 = 0x7e5e_9000_0000_0001;

/// What `chorus_post_messages_direct` answers instead of a seq for an unknown
/// community, a sender who is not a member, and a key that already has a
/// record (see its migration).
const UNKNOWN_COMMUNITY: i64 = -404;
const NOT_A_MEMBER: i64 = -403;
const KEY_TAKEN: i64 = -409;
/// The key is being created by another batch at this moment.
const KEY_IN_FLIGHT: i64 = -423;

/// Where the placeholder seq's MessagePack encoding occurs in `encoded`.
fn placeholders(encoded: &[u8]) -> Vec<(usize, usize)> {
    let mut marker = [0u8; 9];
    marker[0] = 0xcf;
    marker[1..].copy_from_slice(&SEQ_PLACEHOLDER.to_be_bytes());
    let mut found = Vec::with_capacity(2);
    let mut from = 0;
    while let Some(at) = encoded[from..]
        .windows(marker.len())
        .position(|w| w == marker)
    {
        found.push((from + at, from + at + marker.len()));
        from += at + marker.len();
    }
    found
}

/// Where the placeholder seq is in a message's JSON. The seq comes third,
/// after two UUIDs, so its first occurrence is the field.
fn json_placeholder(json: &str) -> Option<(usize, usize)> {
    let field = format!("\"seq\":{SEQ_PLACEHOLDER}");
    let at = json.find(&field)?;
    Some((at + 6, at + field.len()))
}

impl PgStore {
    /// A post without mentions, through the post writer: `None` sends it
    /// down the full path (see [`MessageStore::post_message`]).
    pub(super) async fn post_batched(&self, new: NewPost<'_>) -> Result<Option<String>, ApiError> {
        let id = Uuid::now_v7();
        // The wire has milliseconds; the row gets the same instant.
        let now = Utc::now();
        let created_at = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
        let message = Message {
            id,
            community_id: new.community_id,
            seq: SEQ_PLACEHOLDER,
            sender: Sender {
                id: new.sender.id.clone(),
                name: new.sender.name.clone(),
                avatar: new.sender.avatar.clone(),
            },
            content: new.content.to_owned(),
            mentions: Vec::new(),
            created_at,
        };
        let json =
            serde_json::to_string(&message).map_err(|e| ApiError::Internal(e.to_string()))?;
        let json_cut = json_placeholder(&json)
            .ok_or_else(|| ApiError::Internal("message JSON without its seq".into()))?;
        let payload = Envelope::new(
            Some(new.community_id),
            Some(SEQ_PLACEHOLDER),
            now.timestamp_millis(),
            ServerEvent::NewMessage(MessageData { message }),
        )
        .encode();
        let [first, second] = placeholders(&payload)[..] else {
            return Err(ApiError::Internal(
                "the envelope does not hold the seq exactly twice".into(),
            ));
        };
        let outcome = self
            .writer
            .write(Post {
                id,
                community_id: new.community_id,
                sender_id: new.sender.id.clone(),
                content: new.content.to_owned(),
                created_at,
                channel: community_channel(&new.community_id),
                payload,
                payload_cuts: [first, second],
                json,
                json_cut,
                key: new.idempotency.map(|(k, h)| (k.to_owned(), h.to_vec())),
            })
            .await;
        let (outcome, post) = outcome?;
        match outcome {
            UNKNOWN_COMMUNITY => Err(ApiError::NotFound("community")),
            NOT_A_MEMBER => Err(ApiError::Forbidden(
                "only members can post in this community",
            )),
            KEY_TAKEN => Ok(None),
            KEY_IN_FLIGHT => Err(ApiError::Conflict(
                "a request with this Idempotency-Key is still in flight",
            )),
            seq => {
                // The writer woke the publisher once for the whole batch.
                metrics::counter!("chorus_api_messages_written_total").increment(1);
                let (head, tail) = (&post.json[..post.json_cut.0], &post.json[post.json_cut.1..]);
                Ok(Some(format!("{head}{seq}{tail}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::writer::splice;
    use super::*;

    fn message(content: &str) -> Message {
        Message {
            id: Uuid::now_v7(),
            community_id: Uuid::now_v7(),
            seq: SEQ_PLACEHOLDER,
            sender: Sender {
                id: "u".into(),
                name: "U".into(),
                avatar: None,
            },
            content: content.into(),
            mentions: Vec::new(),
            created_at: DateTime::from_timestamp_millis(1_800_000_000_123).unwrap_or_default(),
        }
    }

    #[test]
    fn the_spliced_envelope_decodes_with_the_real_seq() {
        // Content that spells the placeholder's digits and its bytes as far
        // as UTF-8 lets it must not be taken for the seq.
        let content = format!("{SEQ_PLACEHOLDER} \u{7e}\u{5e} \"seq\":{SEQ_PLACEHOLDER}");
        let m = message(&content);
        let env = Envelope::new(
            Some(m.community_id),
            Some(SEQ_PLACEHOLDER),
            1_800_000_000_123,
            ServerEvent::NewMessage(MessageData { message: m.clone() }),
        );
        let encoded = env.encode();
        let cuts = placeholders(&encoded);
        assert_eq!(cuts.len(), 2, "envelope seq and message seq");
        for seq in [1, 127, 128, 65_536, i64::from(u32::MAX) + 1, i64::MAX] {
            let decoded = Envelope::decode(&splice(&encoded, &cuts, seq)).expect("decodes");
            assert_eq!(decoded.seq, Some(seq));
            let ServerEvent::NewMessage(data) = decoded.event else {
                panic!("expected new-message")
            };
            assert_eq!(data.message, Message { seq, ..m.clone() });
        }
    }

    #[test]
    fn the_json_is_cut_at_the_seq_field() {
        let m = message(&format!("\"seq\":{SEQ_PLACEHOLDER}"));
        let json = serde_json::to_string(&m).expect("serializes");
        let (head, tail) = json_placeholder(&json).expect("has the seq");
        let spliced = format!("{}42{}", &json[..head], &json[tail..]);
        let want = serde_json::to_string(&Message { seq: 42, ..m }).expect("serializes");
        assert_eq!(spliced, want);
    }
}
