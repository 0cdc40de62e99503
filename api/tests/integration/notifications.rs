//! The notification center.

use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn create_list_read_and_delete() {
    let api = Api::start().await;
    let (alice_id, bob_id) = (uid("alice"), uid("bob"));
    let (alice, bob) = (token(&alice_id), token(&bob_id));
    let moderator = official(&uid("mod"));

    let r = api
        .post("/api/notifications-broadcast", &alice, json!({"userId": alice_id, "type": "reminder", "title": "t", "message": "m", "data": {"k": [1, 2]}}))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["type"], "reminder");
    assert_eq!(r.body["data"], json!({"k": [1, 2]}));
    assert_eq!(r.body["read"], false);
    let r = api
        .post(
            "/api/notifications-broadcast",
            &alice,
            json!({"userId": bob_id, "type": "x", "title": "t", "message": "m"}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (403, "forbidden"),
        "only to yourself unless official"
    );
    let never_seen = uid("new");
    let r = api
        .post(
            "/api/notifications-broadcast",
            &moderator,
            json!({"userId": never_seen, "type": "x", "title": "t", "message": "m"}),
        )
        .await;
    assert_eq!(
        r.status, 201,
        "officials notify anyone, even users not seen yet"
    );
    assert_eq!(r.body["data"], json!({}));

    for bad in [
        json!({"userId": alice_id, "type": "", "title": "t", "message": "m"}),
        json!({"userId": alice_id, "type": "x".repeat(33), "title": "t", "message": "m"}),
        json!({"userId": alice_id, "type": "x", "title": "t".repeat(201), "message": "m"}),
        json!({"userId": alice_id, "type": "x", "title": "t", "message": "m".repeat(2001)}),
        json!({"userId": alice_id, "type": "x", "title": "t", "message": "m", "data": [1]}),
        json!({"userId": alice_id, "type": "x", "title": "t", "message": "m", "data": {"big": "x".repeat(8200)}}),
        json!({"userId": alice_id, "type": "x", "title": "t"}),
        json!({"userId": "bad user", "type": "x", "title": "t", "message": "m"}),
    ] {
        let r = api
            .post("/api/notifications-broadcast", &alice, bad.clone())
            .await;
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{bad}");
    }

    // Bob gets five; page through them newest first.
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = api
            .post(
                "/api/notifications-broadcast",
                &moderator,
                json!({"userId": bob_id, "type": "n", "title": format!("t{i}"), "message": "m"}),
            )
            .await;
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let titles = |v: &Value| -> Vec<String> {
        v["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["title"].as_str().unwrap().to_owned())
            .collect()
    };
    let p1 = api.get("/api/notifications-broadcast?limit=2", &bob).await;
    assert_eq!(titles(&p1.body), vec!["t4", "t3"]);
    assert_eq!(p1.body["unreadCount"], 5);
    let cursor = p1.body["nextBefore"].as_str().unwrap().to_owned();
    assert_eq!(cursor, ids[3]);
    let p2 = api
        .get(
            &format!("/api/notifications-broadcast?limit=2&before={cursor}"),
            &bob,
        )
        .await;
    assert_eq!(titles(&p2.body), vec!["t2", "t1"]);
    let p3 = api
        .get(
            &format!(
                "/api/notifications-broadcast?limit=2&before={}",
                p2.body["nextBefore"].as_str().unwrap()
            ),
            &bob,
        )
        .await;
    assert_eq!(titles(&p3.body), vec!["t0"]);
    assert_eq!(p3.body["nextBefore"], Value::Null);

    // Mark one read; unread filter and count follow.
    let r = api
        .post(
            &format!("/api/notifications-broadcast/{}/read", ids[4]),
            &bob,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["read"], true);
    let unread = api
        .get("/api/notifications-broadcast?unread=true", &bob)
        .await;
    assert_eq!(titles(&unread.body), vec!["t3", "t2", "t1", "t0"]);
    assert_eq!(unread.body["unreadCount"], 4);

    // Someone else's notification is not found, for every verb.
    let r = api
        .post(
            &format!("/api/notifications-broadcast/{}/read", ids[0]),
            &alice,
            json!({}),
        )
        .await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = api
        .delete(&format!("/api/notifications-broadcast/{}", ids[0]), &alice)
        .await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = api
        .get(
            &format!("/api/notifications-broadcast?before={}", ids[0]),
            &alice,
        )
        .await;
    assert_eq!((r.status, r.code()), (404, "not_found"), "unknown cursor");
    for path in [
        "/api/notifications-broadcast/nope/read",
        "/api/notifications-broadcast?before=nope",
    ] {
        let r = if path.ends_with("/read") {
            api.post(path, &bob, json!({})).await
        } else {
            api.get(path, &bob).await
        };
        assert_eq!((r.status, r.code()), (404, "not_found"), "{path}");
    }
    for q in ["limit=0", "limit=101", "limit=x", "unread=maybe"] {
        let r = api
            .get(&format!("/api/notifications-broadcast?{q}"), &bob)
            .await;
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{q}");
    }

    let r = api
        .post("/api/notifications-broadcast/read-all", &bob, json!({}))
        .await;
    assert_eq!(r.body, json!({"updated": 4}));
    assert_eq!(
        api.get("/api/notifications-broadcast", &bob).await.body["unreadCount"],
        0
    );
    assert_eq!(
        api.delete(&format!("/api/notifications-broadcast/{}", ids[0]), &bob)
            .await
            .status,
        204
    );
    assert_eq!(
        api.delete(&format!("/api/notifications-broadcast/{}", ids[0]), &bob)
            .await
            .status,
        404
    );
    let all = api.get("/api/notifications-broadcast", &bob).await;
    assert_eq!(all.body["notifications"].as_array().unwrap().len(), 4);
}
