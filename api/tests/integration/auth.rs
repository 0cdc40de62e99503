//! Token checks on every request and profile upserts from claims.

use chorus_shared::auth::{Claims, Role, claims_for, mint_hs256, now_s};
use reqwest::Method;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn missing_bad_expired_and_unsigned_tokens_are_401_with_the_envelope() {
    let api = Api::start().await;
    let r = api.call(Method::GET, "/api/communities", None, None).await;
    assert_eq!((r.status, r.code()), (401, "unauthorized"));

    let wrong = mint_hs256(
        "not-the-secret",
        &claims_for("alice", None, Role::Member, 60),
    )
    .unwrap();
    let mut expired = claims_for("alice", None, Role::Member, 0);
    expired.exp = now_s() - 3600;
    let expired = mint_hs256(SECRET, &expired).unwrap();
    // {"alg":"none","typ":"JWT"} . {"sub":"alice","exp":4102444800} (year 2100), unsigned.
    let unsigned =
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.";
    let bad_sub = mint_hs256(SECRET, &claims_for("not valid!", None, Role::Member, 60)).unwrap();
    for t in [
        wrong.as_str(),
        expired.as_str(),
        unsigned,
        "garbage",
        bad_sub.as_str(),
    ] {
        let r = api.get("/api/communities", t).await;
        assert_eq!((r.status, r.code()), (401, "unauthorized"), "token {t}");
    }
}

#[tokio::test]
async fn profiles_follow_the_latest_token() {
    let api = Api::start().await;
    let alice = uid("alice");
    let c = api.community(&token(&alice), "profiles", true).await;
    let members = api
        .get(&format!("/api/communities/{c}/members"), &token(&alice))
        .await;
    assert_eq!(members.body["members"][0]["name"], format!("{alice} name"));
    assert_eq!(members.body["members"][0]["role"], "owner");

    let mut claims: Claims = claims_for(&alice, Some("Alice Renamed"), Role::Member, 600);
    claims.avatar = Some("https://example.test/a.png".into());
    let renamed = mint_hs256(SECRET, &claims).unwrap();
    let m = api.send(&renamed, &c, "hello").await;
    assert_eq!(
        m["sender"],
        json!({"id": alice, "name": "Alice Renamed", "avatar": "https://example.test/a.png"})
    );
    let members = api
        .get(&format!("/api/communities/{c}/members"), &renamed)
        .await;
    assert_eq!(members.body["members"][0]["name"], "Alice Renamed");
    assert_eq!(
        members.body["members"][0]["avatar"],
        "https://example.test/a.png"
    );

    // A token without a name falls back to the id.
    let mut bare = claims_for(&alice, None, Role::Member, 600);
    bare.role = None;
    let bare = mint_hs256(SECRET, &bare).unwrap();
    let m = api.send(&bare, &c, "again").await;
    assert_eq!(m["sender"]["name"], alice.as_str());
}
