//! Communities and membership: the authorization matrix of member,
//! non-member, owner and official on every community endpoint.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn create_list_and_validate_names() {
    let api = Api::start().await;
    let alice = token(&uid("alice"));
    let r = api
        .post(
            "/api/communities",
            &alice,
            json!({"name": "  Rustaceans  "}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["name"], "Rustaceans");
    assert_eq!(r.body["isPublic"], true);
    assert_eq!(r.body["headSeq"], 0);
    assert!(r.body["createdAt"].as_str().unwrap().ends_with('Z'));
    let id = r.body["id"].as_str().unwrap().to_owned();
    let private = api.community(&alice, "Secret", false).await;

    let list = api.get("/api/communities", &alice).await;
    assert_eq!(list.status, 200);
    let ids: Vec<&str> = list.body["communities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&id.as_str()) && ids.contains(&private.as_str()));
    let other = api.get("/api/communities", &token(&uid("bob"))).await;
    assert_eq!(other.body, json!({"communities": []}));

    for bad in [
        json!({"name": "   "}),
        json!({"name": ""}),
        json!({"name": "x".repeat(101)}),
        json!({}),
        json!({"name": 5}),
        json!({"name": "ok", "isPublic": "yes"}),
    ] {
        let r = api.post("/api/communities", &alice, bad.clone()).await;
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{bad}");
    }
    let r = api
        .post("/api/communities", &alice, json!({"name": "é".repeat(100)}))
        .await;
    assert_eq!(r.status, 201, "100 scalar values are fine");
    let r = api
        .call(Method::POST, "/api/communities", Some(&alice), None)
        .await;
    assert_eq!(r.code(), "bad_request");
}

#[tokio::test]
async fn joining_public_private_and_as_official() {
    let api = Api::start().await;
    let owner = token(&uid("owner"));
    let public = api.community(&owner, "public", true).await;
    let private = api.community(&owner, "private", false).await;
    let bob = token(&uid("bob"));

    let r = api
        .post(&format!("/api/communities/{public}/join"), &bob, json!({}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["id"], public.as_str());
    let again = api
        .post(&format!("/api/communities/{public}/join"), &bob, json!({}))
        .await;
    assert_eq!(again.status, 200, "joining again is a no-op");

    let r = api
        .post(&format!("/api/communities/{private}/join"), &bob, json!({}))
        .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    let r = api
        .post(
            &format!("/api/communities/{private}/join"),
            &official(&uid("mod")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "officials join private communities");

    let unknown = uuid::Uuid::new_v4();
    let r = api
        .post(&format!("/api/communities/{unknown}/join"), &bob, json!({}))
        .await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = api
        .post("/api/communities/not-a-uuid/join", &bob, json!({}))
        .await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
}

#[tokio::test]
async fn member_management_matrix() {
    let api = Api::start().await;
    let (owner_id, member_id, outsider_id, mod_id) =
        (uid("owner"), uid("member"), uid("outsider"), uid("mod"));
    let (owner, member, outsider, moderator) = (
        token(&owner_id),
        token(&member_id),
        token(&outsider_id),
        official(&mod_id),
    );
    let c = api.community(&owner, "team", false).await;
    let members_path = format!("/api/communities/{c}/members");

    // Owner adds a user never seen before: named after the id until their token says otherwise.
    let r = api
        .post(&members_path, &owner, json!({"userId": member_id}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        json!({"userId": member_id, "name": member_id, "avatar": null, "role": "member"})
    );
    let r = api
        .post(&members_path, &owner, json!({"userId": member_id}))
        .await;
    assert_eq!(r.status, 200, "adding an existing member is a no-op");
    // Members and outsiders may not add; officials may.
    for t in [&member, &outsider] {
        let r = api
            .post(&members_path, t, json!({"userId": uid("x")}))
            .await;
        assert_eq!((r.status, r.code()), (403, "forbidden"));
    }
    let extra = uid("extra");
    assert_eq!(
        api.post(&members_path, &moderator, json!({"userId": extra}))
            .await
            .status,
        200
    );
    for bad in [
        json!({"userId": "bad id"}),
        json!({"userId": ""}),
        json!({"userId": 7}),
        json!({}),
    ] {
        let r = api.post(&members_path, &owner, bad.clone()).await;
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{bad}");
    }

    // Listing: members and officials, not outsiders.
    let r = api.get(&members_path, &member).await;
    assert_eq!(r.status, 200);
    let ids: Vec<&str> = r.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["userId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(
        ids.contains(&owner_id.as_str())
            && ids.contains(&member_id.as_str())
            && ids.contains(&extra.as_str())
    );
    assert_eq!(api.get(&members_path, &moderator).await.status, 200);
    assert_eq!(api.get(&members_path, &outsider).await.code(), "forbidden");

    // Removal: a member may not remove others (403 even for non-members),
    // the owner and officials may; self-removal is allowed; absent is 404.
    let r = api
        .delete(&format!("{members_path}/{extra}"), &member)
        .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    let r = api
        .delete(&format!("{members_path}/{}", uid("ghost")), &member)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (403, "forbidden"),
        "403 before 404 for callers who may not remove others"
    );
    let r = api
        .delete(&format!("{members_path}/{}", uid("ghost")), &owner)
        .await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    assert_eq!(
        api.delete(&format!("{members_path}/{extra}"), &moderator)
            .await
            .status,
        204
    );
    assert_eq!(
        api.delete(&format!("{members_path}/{member_id}"), &member)
            .await
            .status,
        204
    );
    assert_eq!(
        api.get(&members_path, &member).await.code(),
        "forbidden",
        "gone after leaving"
    );
    // The owner may leave; the community stays and officials still see it.
    assert_eq!(
        api.delete(&format!("{members_path}/{owner_id}"), &owner)
            .await
            .status,
        204
    );
    let r = api.get(&members_path, &moderator).await;
    assert_eq!(r.body["members"], json!([]));

    let unknown = uuid::Uuid::new_v4();
    for (m, p) in [
        (Method::GET, format!("/api/communities/{unknown}/members")),
        (Method::GET, "/api/communities/zzz/members".to_owned()),
        (
            Method::DELETE,
            format!("/api/communities/{unknown}/members/{member_id}"),
        ),
    ] {
        let r = api.call(m, &p, Some(&owner), None).await;
        assert_eq!((r.status, r.code()), (404, "not_found"), "{p}");
    }
}

#[tokio::test]
async fn members_are_paged_by_user_id() {
    let api = Api::start().await;
    let owner_id = uid("owner");
    let owner = token(&owner_id);
    let c = api.community(&owner, "paged", true).await;
    let p = uid("m");
    // Every character class of a user id, so the order is seen to be
    // bytewise: - 0 A Z _ a b.
    let mut ids: Vec<String> = ["b", "A", "a", "_", "-", "0", "Z"]
        .iter()
        .map(|s| format!("{p}.{s}"))
        .collect();
    for id in &ids {
        api.add(&owner, &c, id).await;
    }
    ids.push(owner_id.clone());
    ids.sort();
    let path = format!("/api/communities/{c}/members");

    let all = api.get(&path, &owner).await;
    assert_eq!(all.status, 200);
    assert_eq!(
        all.body["nextAfter"],
        Value::Null,
        "everything fits the default page"
    );
    assert_eq!(user_ids(&all.body), ids);

    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &after {
            Some(a) => format!("{path}?limit=3&after={a}"),
            None => format!("{path}?limit=3"),
        };
        let r = api.get(&q, &owner).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        pages += 1;
        let page = user_ids(&r.body);
        assert!(page.len() <= 3);
        paged.extend(page);
        match r.body["nextAfter"].as_str() {
            Some(next) => {
                assert_eq!(Some(next), paged.last().map(String::as_str));
                after = Some(next.to_owned());
            }
            None => break,
        }
    }
    assert_eq!((paged, pages), (ids.clone(), 3), "8 members in pages of 3");
    // A page that ends exactly at the last member says there is no more.
    let r = api
        .get(&format!("{path}?limit=4&after={}", ids[3]), &owner)
        .await;
    assert_eq!(user_ids(&r.body), ids[4..].to_vec());
    assert_eq!(r.body["nextAfter"], Value::Null);
    // `after` need not be a member: the page starts after it.
    let r = api.get(&format!("{path}?after={p}.Zz"), &owner).await;
    assert_eq!(user_ids(&r.body)[0], format!("{p}._"));
    assert_eq!(
        api.get(&format!("{path}?limit=1000"), &owner).await.status,
        200
    );

    for q in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=x",
        "after=bad%20id",
        "after=",
    ] {
        let r = api.get(&format!("{path}?{q}"), &owner).await;
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{q}");
    }
}

fn user_ids(body: &Value) -> Vec<String> {
    body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["userId"].as_str().unwrap().to_owned())
        .collect()
}

/// `POST /internal/access` (the gateways' batched join check) answers each
/// check in order, with what the single check would say: the role of a
/// member, none for a non-member, `null` for an unknown community or a
/// user id that is not one; too many checks are refused.
#[tokio::test]
async fn batched_access_checks_answer_in_order() {
    let api = Api::start().await;
    let (alice, bob) = (uid("alice"), uid("bob"));
    let c = api.community(&token(&alice), "batch", false).await;
    api.add(&token(&alice), &c, &bob).await;
    let check = |body: Value| {
        let req = api
            .http
            .post(format!("{}/internal/access", api.admin_url))
            .bearer_auth(INTERNAL_TOKEN)
            .json(&body);
        async move { into_resp(req.send().await.unwrap()).await }
    };
    let unknown = uuid::Uuid::new_v4().to_string();
    // More calls than Postgres plans for their arguments before it
    // settles on a generic plan: the answers stay the same.
    for _ in 0..8 {
        let r = check(json!({"checks": [
            {"communityId": c, "userId": bob},
            {"communityId": c, "userId": "stranger"},
            {"communityId": unknown, "userId": alice},
            {"communityId": c, "userId": "not a user id"},
            {"communityId": c, "userId": alice},
        ]}))
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let results = r.body["results"].as_array().unwrap();
        assert_eq!(results.len(), 5);
        assert_eq!(results[0]["role"], "member");
        assert_eq!(results[0]["communityId"], c.as_str());
        assert_eq!(results[0]["isPublic"], false);
        assert_eq!(results[1]["role"], Value::Null);
        assert_eq!(results[1]["headSeq"], 0);
        assert_eq!(results[2], Value::Null);
        assert_eq!(results[3], Value::Null);
        assert_eq!(results[4]["role"], "owner");
    }

    let r = check(json!({"checks": []})).await;
    assert_eq!(r.body, json!({"results": []}));
    let too_many: Vec<Value> = (0..=chorus_shared::protocol::MAX_ACCESS_CHECKS)
        .map(|_| json!({"communityId": c, "userId": bob}))
        .collect();
    let r = check(json!({ "checks": too_many })).await;
    assert_eq!((r.status, r.code()), (400, "bad_request"));
    // Gateways only: a user token is refused.
    let r = api
        .http
        .post(format!("{}/internal/access", api.admin_url))
        .bearer_auth(token(&bob))
        .json(&json!({"checks": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
