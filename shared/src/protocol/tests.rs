//! Wire shapes checked against the contract's examples.

use super::*;
use crate::error::ErrorDetail;
use serde_json::json;

fn message() -> Message {
    Message {
        id: Uuid::nil(),
        community_id: Uuid::nil(),
        seq: 7,
        sender: Sender {
            id: "alice".into(),
            name: "Alice".into(),
            avatar: None,
        },
        content: "hi".into(),
        mentions: vec!["bob".into()],
        created_at: DateTime::from_timestamp_millis(1_700_000_000_123).expect("valid"),
    }
}

#[test]
fn server_event_has_the_contract_shape() {
    let v = serde_json::to_value(ServerEvent::NewMessage(MessageData { message: message() }))
        .expect("serializes");
    assert_eq!(
        v,
        json!({"type":"new-message","data":{"message":{
            "id":"00000000-0000-0000-0000-000000000000",
            "communityId":"00000000-0000-0000-0000-000000000000",
            "seq":7,"sender":{"id":"alice","name":"Alice","avatar":null},
            "content":"hi","mentions":["bob"],"createdAt":"2023-11-14T22:13:20.123Z"}}})
    );
}

#[test]
fn message_page_emits_only_its_cursor() {
    let page = MessagePage {
        messages: vec![],
        next_before: Some(None),
        next_after: None,
    };
    assert_eq!(
        serde_json::to_value(page).expect("serializes"),
        json!({"messages":[],"nextBefore":null})
    );
}

#[test]
fn ack_and_error_frames() {
    let ack = AckFrame {
        kind: AckTag::Ack,
        reference: 3,
        data: json!({}),
    };
    assert_eq!(
        serde_json::to_value(ack).expect("serializes"),
        json!({"type":"ack","ref":3,"data":{}})
    );
    let err = ErrorFrame {
        kind: ErrorTag::Error,
        reference: None,
        error: ErrorDetail {
            code: crate::error::ErrorCode::BadRequest,
            message: "x".into(),
        },
    };
    assert_eq!(
        serde_json::to_value(err).expect("serializes"),
        json!({"type":"error","error":{"code":"bad_request","message":"x"}})
    );
}
