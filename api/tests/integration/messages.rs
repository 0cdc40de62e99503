//! Messages: validation, membership, history pages, deletion rights,
//! mentions, limits and malformed input.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn posting_validates_content_and_membership() {
    let api = Api::start().await;
    let (alice_id, bob_id) = (uid("alice"), uid("bob"));
    let (alice, bob) = (token(&alice_id), token(&bob_id));
    let c = api.community(&alice, "general", true).await;

    let r = api
        .post(
            "/api/messages-realtime",
            &alice,
            json!({"communityId": c, "content": "  hello  "}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["content"], "hello", "content is stored trimmed");
    assert_eq!(r.body["seq"], 1);
    assert_eq!(r.body["communityId"], c.as_str());
    assert_eq!(r.body["mentions"], json!([]));
    assert_eq!(r.body["sender"]["id"], alice_id.as_str());
    let created = r.body["createdAt"].as_str().unwrap();
    assert_eq!(
        created.len(),
        "2026-01-01T00:00:00.000Z".len(),
        "RFC 3339 with milliseconds: {created}"
    );

    for bad in [
        json!({"communityId": c, "content": "   "}),
        json!({"communityId": c, "content": "x".repeat(4001)}),
        json!({"communityId": c}),
        json!({"communityId": 12, "content": "hi"}),
        json!({"communityId": c, "content": 5}),
        json!({"communityId": c, "content": "hi", "mentions": "bob"}),
        json!({"communityId": c, "content": "hi", "mentions": [1]}),
    ] {
        let r = api
            .post("/api/messages-realtime", &alice, bad.clone())
            .await;
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{bad}");
    }
    let r = api
        .post(
            "/api/messages-realtime",
            &alice,
            json!({"communityId": c, "content": "é".repeat(4000)}),
        )
        .await;
    assert_eq!(r.status, 201, "4000 scalar values are fine");

    let r = api
        .post(
            "/api/messages-realtime",
            &bob,
            json!({"communityId": c, "content": "hi"}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (403, "forbidden"),
        "non-members cannot post"
    );
    let r = api
        .post(
            "/api/messages-realtime",
            &official(&uid("mod")),
            json!({"communityId": c, "content": "hi"}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (403, "forbidden"),
        "posting needs membership, also for officials"
    );
    for id in [uuid::Uuid::new_v4().to_string(), "nope".to_owned()] {
        let r = api
            .post(
                "/api/messages-realtime",
                &alice,
                json!({"communityId": id, "content": "hi"}),
            )
            .await;
        assert_eq!((r.status, r.code()), (404, "not_found"));
    }
}

#[tokio::test]
async fn history_pages_backwards_and_forwards_without_deleted() {
    let api = Api::start().await;
    let alice = token(&uid("alice"));
    let c = api.community(&alice, "history", true).await;
    let mut ids = Vec::new();
    for i in 1..=7 {
        ids.push(
            api.send(&alice, &c, &format!("m{i}")).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Delete m4 (seq 4); the deletion takes seq 8.
    assert_eq!(
        api.delete(&format!("/api/messages-realtime/{}", ids[3]), &alice)
            .await
            .status,
        204
    );

    let seqs = |v: &Value| -> Vec<i64> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect()
    };
    let p1 = api
        .get(
            &format!("/api/messages-realtime?communityId={c}&limit=3"),
            &alice,
        )
        .await;
    assert_eq!(p1.status, 200);
    assert_eq!(seqs(&p1.body), vec![7, 6, 5]);
    assert_eq!(p1.body["nextBefore"], 5);
    assert!(p1.body.get("nextAfter").is_none());
    let p2 = api
        .get(
            &format!("/api/messages-realtime?communityId={c}&limit=3&before=5"),
            &alice,
        )
        .await;
    assert_eq!(seqs(&p2.body), vec![3, 2, 1]);
    assert_eq!(
        p2.body["nextBefore"],
        Value::Null,
        "the oldest page says there is no more"
    );
    let all = api
        .get(&format!("/api/messages-realtime?communityId={c}"), &alice)
        .await;
    assert_eq!(seqs(&all.body), vec![7, 6, 5, 3, 2, 1]);
    assert_eq!(all.body["nextBefore"], Value::Null);

    let f1 = api
        .get(
            &format!("/api/messages-realtime?communityId={c}&after=0&limit=4"),
            &alice,
        )
        .await;
    assert_eq!(seqs(&f1.body), vec![1, 2, 3, 5]);
    assert_eq!(f1.body["nextAfter"], 5);
    let f2 = api
        .get(
            &format!("/api/messages-realtime?communityId={c}&after=5&limit=4"),
            &alice,
        )
        .await;
    assert_eq!(seqs(&f2.body), vec![6, 7]);
    assert_eq!(f2.body["nextAfter"], Value::Null);

    for q in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "before=x",
        "before=3&after=1",
        "after=-1",
    ] {
        let r = api
            .get(
                &format!("/api/messages-realtime?communityId={c}&{q}"),
                &alice,
            )
            .await;
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{q}");
    }
    let r = api.get("/api/messages-realtime", &alice).await;
    assert_eq!(r.code(), "bad_request", "communityId is required");
    let r = api
        .get("/api/messages-realtime?communityId=1234", &alice)
        .await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = api
        .get(
            &format!("/api/messages-realtime?communityId={c}"),
            &token(&uid("outsider")),
        )
        .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    let r = api
        .get(
            &format!("/api/messages-realtime?communityId={c}&limit=100"),
            &official(&uid("mod")),
        )
        .await;
    assert_eq!(r.status, 200, "officials read any community");
}

#[tokio::test]
async fn deletion_by_sender_or_official_only() {
    let api = Api::start().await;
    let (alice_id, bob_id) = (uid("alice"), uid("bob"));
    let (alice, bob) = (token(&alice_id), token(&bob_id));
    let c = api.community(&alice, "moderated", true).await;
    api.add(&alice, &c, &bob_id).await;
    let m1 = api.send(&bob, &c, "bob's").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let m2 = api.send(&bob, &c, "bob's second").await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = api
        .delete(&format!("/api/messages-realtime/{m1}"), &alice)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (403, "forbidden"),
        "the community owner is not a moderator"
    );
    assert_eq!(
        api.delete(&format!("/api/messages-realtime/{m1}"), &bob)
            .await
            .status,
        204
    );
    let r = api
        .delete(&format!("/api/messages-realtime/{m1}"), &bob)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (404, "not_found"),
        "deleting a deleted message"
    );
    assert_eq!(
        api.delete(
            &format!("/api/messages-realtime/{m2}"),
            &official(&uid("mod"))
        )
        .await
        .status,
        204
    );
    for id in [uuid::Uuid::new_v4().to_string(), "123".to_owned()] {
        let r = api
            .delete(&format!("/api/messages-realtime/{id}"), &bob)
            .await;
        assert_eq!((r.status, r.code()), (404, "not_found"));
    }
    let community = api.get("/api/communities", &alice).await;
    assert_eq!(
        community.body["communities"][0]["headSeq"], 4,
        "two messages and two deletions"
    );
}

#[tokio::test]
async fn mentions_keep_members_and_notify_them() {
    let api = Api::start().await;
    let (alice_id, bob_id, carol_id, outsider_id) =
        (uid("alice"), uid("bob"), uid("carol"), uid("out"));
    let alice = token(&alice_id);
    let c = api.community(&alice, "mentions", true).await;
    api.add(&alice, &c, &bob_id).await;
    api.add(&alice, &c, &carol_id).await;

    let r = api
        .post(
            "/api/messages-realtime",
            &alice,
            json!({"communityId": c, "content": "hey @bob @carol", "mentions": [bob_id, outsider_id, carol_id, bob_id, alice_id]}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        r.body["mentions"],
        json!([bob_id, carol_id, alice_id]),
        "non-members dropped, duplicates merged"
    );
    let message_id = r.body["id"].as_str().unwrap();

    for user in [&bob_id, &carol_id] {
        let n = api.get("/api/notifications-broadcast", &token(user)).await;
        assert_eq!(n.body["unreadCount"], 1);
        let note = &n.body["notifications"][0];
        assert_eq!(note["type"], "mention");
        assert_eq!(note["userId"], user.as_str());
        assert_eq!(note["read"], false);
        assert_eq!(note["data"]["messageId"], message_id);
        assert_eq!(note["data"]["communityId"], c.as_str());
        assert!(note["message"].as_str().unwrap().contains("hey"));
    }
    for user in [&alice_id, &outsider_id] {
        let n = api.get("/api/notifications-broadcast", &token(user)).await;
        assert_eq!(
            n.body["unreadCount"], 0,
            "no notification for the sender or non-members"
        );
    }
    let many: Vec<String> = (0..51).map(|i| format!("u{i}")).collect();
    let r = api
        .post(
            "/api/messages-realtime",
            &alice,
            json!({"communityId": c, "content": "x", "mentions": many}),
        )
        .await;
    assert_eq!(r.code(), "bad_request");
    let fifty: Vec<String> = (0..50).map(|i| format!("u{}", i % 5)).collect();
    let r = api
        .post(
            "/api/messages-realtime",
            &alice,
            json!({"communityId": c, "content": "x", "mentions": fifty}),
        )
        .await;
    assert_eq!(r.status, 201, "50 entries, duplicates included, are fine");
}

#[tokio::test]
async fn an_over_long_mention_list_is_refused_whatever_its_duplicates() {
    let api = Api::start().await;
    let alice = token(&uid("alice"));
    let c = api.community(&alice, "mentions", true).await;
    // A body just under 64 KiB of ~12k short mentions of ten users: ten
    // distinct users, but far more than 50 entries.
    let base = format!(r#"{{"communityId":"{c}","content":"x","mentions":[]}}"#);
    let entries = (64 * 1024 - base.len()) / r#""u0","#.len();
    let list: Vec<String> = (0..entries).map(|i| format!(r#""u{}""#, i % 10)).collect();
    let body = base.replace("[]", &format!("[{}]", list.join(",")));
    assert!(
        body.len() <= 64 * 1024 && entries > 12_000,
        "{} {entries}",
        body.len()
    );
    let r = into_resp(
        api.http
            .post(format!("{}/api/messages-realtime", api.url))
            .bearer_auth(&alice)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((r.status, r.code()), (400, "bad_request"), "{:?}", r.body);
}

#[tokio::test]
async fn body_limits_malformed_json_and_unknown_routes() {
    let api = Api::start().await;
    let alice = token(&uid("alice"));
    let c = api.community(&alice, "limits", true).await;
    let send_raw = |body: String| {
        let req = api
            .http
            .post(format!("{}/api/messages-realtime", api.url))
            .bearer_auth(&alice)
            .header("content-type", "application/json")
            .body(body);
        async move { into_resp(req.send().await.unwrap()).await }
    };
    let base = format!(r#"{{"communityId":"{c}","content":"padded"}}"#);
    let limit = 64 * 1024;
    let exact = format!("{base}{}", " ".repeat(limit - base.len()));
    assert_eq!(exact.len(), limit);
    assert_eq!(
        send_raw(exact).await.status,
        201,
        "a body of exactly 64 KiB is accepted"
    );
    let over = format!("{base}{}", " ".repeat(limit + 1 - base.len()));
    let r = send_raw(over).await;
    assert_eq!((r.status, r.code()), (413, "payload_too_large"));

    for body in ["{", "[]", "null", "\"x\"", "{\"communityId\":", "\u{0}"] {
        let r = send_raw(body.to_owned()).await;
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{body:?}");
    }
    let r = api
        .call(Method::GET, "/api/nothing-here", Some(&alice), None)
        .await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = api
        .call(Method::PUT, "/api/communities", Some(&alice), None)
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.code(), "bad_request");
}

/// Slowest configurable refill, so a burst test does not depend on how long
/// its requests take: within the test no token comes back.
const NO_REFILL: f64 = 0.001;

#[tokio::test]
async fn messages_and_other_writes_draw_from_separate_buckets() {
    let api = Api::start_with(Opts {
        message_rate: NO_REFILL,
        message_burst: 40,
        write_rate: NO_REFILL,
        write_burst: 100,
        ..Opts::default()
    })
    .await;
    let (owner_id, bob_id) = (uid("owner"), uid("bob"));
    let owner = token(&owner_id);
    let c = api.community(&owner, "big", true).await; // write 1
    // 51 members in a burst: more than the message burst, no 429.
    for i in 0..51 {
        api.add(&owner, &c, &format!("m{i}-{owner_id}")).await; // writes 2-52
    }
    // Other kinds of write share the bucket: 48 more are the 100th.
    for i in 0..48 {
        let r = api
            .post(
                "/api/notifications-broadcast",
                &owner,
                json!({"userId": owner_id, "type": "t", "title": format!("{i}"), "message": ""}),
            )
            .await;
        assert_eq!(r.status, 201, "write {}: {:?}", 53 + i, r.body);
    }
    let r = api
        .post(
            &format!("/api/communities/{c}/members"),
            &owner,
            json!({"userId": "late"}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (429, "rate_limited"),
        "the 101st other write"
    );
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "whole seconds: {retry}");
    for (method, path) in [
        (
            Method::POST,
            "/api/notifications-broadcast/read-all".to_owned(),
        ),
        (Method::POST, "/api/communities".to_owned()),
        (
            Method::DELETE,
            format!("/api/communities/{c}/members/m0-{owner_id}"),
        ),
    ] {
        let r = api
            .call(method, &path, Some(&owner), Some(json!({"name": "x"})))
            .await;
        assert_eq!(r.code(), "rate_limited", "{path}");
    }

    // Messages have their own bucket: 40, then 429.
    for i in 0..40 {
        api.send(&owner, &c, &format!("{i}")).await;
    }
    let r = api
        .post(
            "/api/messages-realtime",
            &owner,
            json!({"communityId": c, "content": "41st"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"));
    assert!(r.headers.contains_key("retry-after"));
    // Reads are never limited; another user has their own buckets.
    assert_eq!(api.get("/api/communities", &owner).await.status, 200);
    let bob = token(&bob_id);
    let r = api
        .post(&format!("/api/communities/{c}/join"), &bob, json!({}))
        .await;
    assert_eq!(r.status, 200);
    api.send(&bob, &c, "bob").await;
}
