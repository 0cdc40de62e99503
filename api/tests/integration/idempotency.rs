//! `Idempotency-Key` on message POSTs.

use serde_json::json;

use crate::common::*;

async fn post_keyed(api: &Api, token: &str, key: &str, body: serde_json::Value) -> Resp {
    let req = api
        .http
        .post(format!("{}/api/messages-realtime", api.url))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&body);
    into_resp(req.send().await.unwrap()).await
}

#[tokio::test]
async fn retries_replay_the_first_response_and_create_nothing() {
    let api = Api::start().await;
    let (alice_id, bob_id) = (uid("alice"), uid("bob"));
    let (alice, bob) = (token(&alice_id), token(&bob_id));
    let c = api.community(&alice, "idem", true).await;
    let body = json!({"communityId": c, "content": "once"});

    let first = post_keyed(&api, &alice, "k-1", body.clone()).await;
    assert_eq!(first.status, 201);
    let retry = post_keyed(&api, &alice, "k-1", body.clone()).await;
    assert_eq!(retry.status, 201);
    assert_eq!(retry.body, first.body, "same status and body");
    let hist = api
        .get(&format!("/api/messages-realtime?communityId={c}"), &alice)
        .await;
    assert_eq!(
        hist.body["messages"].as_array().unwrap().len(),
        1,
        "created once"
    );

    // Same key, different body: conflict. Keys are per user.
    let r = post_keyed(
        &api,
        &alice,
        "k-1",
        json!({"communityId": c, "content": "twice"}),
    )
    .await;
    assert_eq!((r.status, r.code()), (409, "conflict"));
    api.post(&format!("/api/communities/{c}/join"), &bob, json!({}))
        .await;
    let r = post_keyed(&api, &bob, "k-1", body.clone()).await;
    assert_eq!(r.status, 201);
    assert_ne!(r.body["id"], first.body["id"]);

    // A client error is replayed too, and does not create anything later.
    let bad = json!({"communityId": c, "content": "   "});
    let r = post_keyed(&api, &alice, "k-bad", bad.clone()).await;
    assert_eq!(r.code(), "bad_request");
    let r2 = post_keyed(&api, &alice, "k-bad", bad).await;
    assert_eq!((r2.status, r2.body.clone()), (400, r.body));

    let r = post_keyed(&api, &alice, &"k".repeat(256), body).await;
    assert_eq!(r.code(), "bad_request", "overlong keys are refused");
}

#[tokio::test]
async fn a_key_still_in_flight_is_a_conflict() {
    let api = Api::start().await;
    let alice_id = uid("alice");
    let alice = token(&alice_id);
    let c = api.community(&alice, "inflight", true).await;
    let body = json!({"communityId": c, "content": "slow"});
    // Simulate a first request that is still running: its record exists
    // without a response. (Holding a real request open mid-transaction is
    // not possible from outside the process.)
    let hash = {
        use sha2::Digest;
        let canonical = serde_json::to_vec(&chorus_shared::protocol::SendMessage {
            community_id: c.clone(),
            content: "slow".into(),
            mentions: None,
        })
        .unwrap();
        sha2::Sha256::digest(&canonical).to_vec()
    };
    let pool = sqlx::PgPool::connect(&api.database_url).await.unwrap();
    sqlx::query(
        "insert into idempotency_keys (user_id, key, request_hash) values ($1, 'busy', $2)",
    )
    .bind(&alice_id)
    .bind(&hash)
    .execute(&pool)
    .await
    .unwrap();
    let r = post_keyed(&api, &alice, "busy", body.clone()).await;
    assert_eq!((r.status, r.code()), (409, "conflict"));
    // An abandoned in-flight record (its process died) is taken over.
    sqlx::query(
        "update idempotency_keys set created_at = now() - interval '2 minutes' where key = 'busy'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let r = post_keyed(&api, &alice, "busy", body).await;
    assert_eq!(r.status, 201);
}

#[tokio::test]
async fn concurrent_retries_create_one_message() {
    let api = Api::start().await;
    let alice = token(&uid("alice"));
    let c = api.community(&alice, "race", true).await;
    let body = json!({"communityId": c, "content": "race"});
    let results = futures_join(&api, &alice, &body).await;
    let created: Vec<&Resp> = results.iter().filter(|r| r.status == 201).collect();
    assert!(!created.is_empty());
    assert!(
        results.iter().all(|r| r.status == 201 || r.status == 409),
        "201 or in-flight 409 only"
    );
    let ids: std::collections::HashSet<&str> = created
        .iter()
        .map(|r| r.body["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "every 201 is the same message");
    let hist = api
        .get(&format!("/api/messages-realtime?communityId={c}"), &alice)
        .await;
    assert_eq!(hist.body["messages"].as_array().unwrap().len(), 1);
}

async fn futures_join(api: &Api, token: &str, body: &serde_json::Value) -> Vec<Resp> {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let req = api
            .http
            .post(format!("{}/api/messages-realtime", api.url))
            .bearer_auth(token)
            .header("Idempotency-Key", "same")
            .json(body);
        tasks.push(tokio::spawn(async move {
            into_resp(req.send().await.unwrap()).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_refused_post_without_mentions_is_replayed_as_refused() {
    let api = Api::start().await;
    let (alice_id, bob_id) = (uid("alice"), uid("bob"));
    let (alice, bob) = (token(&alice_id), token(&bob_id));
    let c = api.community(&alice, "refused", true).await;
    let body = json!({"communityId": c, "content": "not yet"});
    // The one-statement path refuses a non-member; the refusal is recorded.
    let first = post_keyed(&api, &bob, "k-403", body.clone()).await;
    assert_eq!((first.status, first.code()), (403, "forbidden"));
    api.post(&format!("/api/communities/{c}/join"), &bob, json!({}))
        .await;
    let retry = post_keyed(&api, &bob, "k-403", body.clone()).await;
    assert_eq!((retry.status, retry.body), (403, first.body), "replayed");
    // A fresh key now creates the message, at the seq the refusal gave back.
    let created = post_keyed(&api, &bob, "k-201", body).await;
    assert_eq!(created.status, 201);
    assert_eq!(created.body["seq"], 1);
    let unknown = json!({"communityId": uuid::Uuid::now_v7(), "content": "where"});
    let r = post_keyed(&api, &bob, "k-404", unknown.clone()).await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r2 = post_keyed(&api, &bob, "k-404", unknown).await;
    assert_eq!((r2.status, r2.body), (404, r.body));
}

/// A post on the fast path whose key another batch is creating at this
/// moment (its advisory lock on (user, key) taken, as that batch's
/// transaction holds it) is in flight: 409, nothing created, the seq given
/// back; once the lock is gone the same request goes through.
#[tokio::test]
async fn a_key_being_created_by_another_batch_is_in_flight() {
    use sqlx::Connection;
    let api = Api::start().await;
    let alice = uid("alice");
    let t = token(&alice);
    let c = api.community(&t, "inflight", true).await;
    let mut other = sqlx::PgConnection::connect(&api.database_url)
        .await
        .unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query("select pg_advisory_xact_lock(hashtext($1), hashtext($2))")
        .bind(&alice)
        .bind("k-busy")
        .execute(&mut *tx)
        .await
        .unwrap();
    let body = json!({"communityId": c, "content": "hello"});
    let r = post_keyed(&api, &t, "k-busy", body.clone()).await;
    assert_eq!((r.status, r.code()), (409, "conflict"), "{:?}", r.body);
    tx.rollback().await.unwrap();
    let r = post_keyed(&api, &t, "k-busy", body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["seq"], 1, "the refused attempt gave its seq back");
}
