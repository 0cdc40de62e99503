//! Per-community sequence numbers: gap-free under concurrency, deletions
//! take a seq, and the internal backfill endpoint returns exactly the
//! committed events.

use std::collections::{BTreeSet, HashSet};

use chorus_shared::envelope::{Envelope, user_channel};
use chorus_shared::protocol::ServerEvent;
use reqwest::Method;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn fifty_concurrent_posters_get_gap_free_unique_seqs() {
    let api = Api::start().await;
    let owner = token(&uid("owner"));
    let c = api.community(&owner, "busy", true).await;
    let users: Vec<String> = (0..50).map(|i| uid(&format!("p{i}"))).collect();
    for u in &users {
        api.add(&owner, &c, u).await;
    }
    const PER_USER: usize = 4;
    let mut tasks = Vec::new();
    for u in &users {
        let (http, url, t, c) = (api.http.clone(), api.url.clone(), token(u), c.clone());
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..PER_USER {
                let r = http
                    .post(format!("{url}/api/messages-realtime"))
                    .bearer_auth(&t)
                    .json(&json!({"communityId": c, "content": format!("msg {i}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                let v: serde_json::Value = r.json().await.unwrap();
                seqs.push(v["seq"].as_i64().unwrap());
            }
            seqs
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        for s in t.await.unwrap() {
            assert!(all.insert(s), "seq {s} handed out twice");
        }
    }
    let n = (users.len() * PER_USER) as i64;
    assert_eq!(all, (1..=n).collect::<BTreeSet<i64>>(), "exactly 1..={n}");
    let list = api.get("/api/communities", &owner).await;
    assert_eq!(list.body["communities"][0]["headSeq"], n);
}

/// Posts of several communities, from members and non-members, arrive
/// together, so the post writer's batches mix communities and outcomes:
/// each community's seqs stay gap-free and each refusal gives its seq back.
#[tokio::test]
async fn batches_mixing_communities_and_refusals_stay_gap_free() {
    const COMMUNITIES: usize = 3;
    const PER_POSTER: usize = 5;
    let api = Api::start().await;
    let owner = token(&uid("owner"));
    let mut communities = Vec::new();
    for i in 0..COMMUNITIES {
        communities.push(api.community(&owner, &format!("mixed{i}"), true).await);
    }
    let members: Vec<String> = (0..12).map(|i| uid(&format!("m{i}"))).collect();
    let outsiders: Vec<String> = (0..6).map(|i| uid(&format!("o{i}"))).collect();
    for c in &communities {
        for m in &members {
            api.add(&owner, c, m).await;
        }
    }
    let mut tasks = Vec::new();
    for (i, u) in members.iter().chain(&outsiders).enumerate() {
        let c = communities[i % COMMUNITIES].clone();
        let (http, url, t) = (api.http.clone(), api.url.clone(), token(u));
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for n in 0..PER_POSTER {
                let r = http
                    .post(format!("{url}/api/messages-realtime"))
                    .bearer_auth(&t)
                    .json(&json!({"communityId": c, "content": format!("msg {n}")}))
                    .send()
                    .await
                    .unwrap();
                answers.push((c.clone(), into_resp(r).await));
            }
            answers
        }));
    }
    let mut seqs: std::collections::HashMap<String, BTreeSet<i64>> = Default::default();
    let mut refused = 0;
    for t in tasks {
        for (c, r) in t.await.unwrap() {
            match r.status {
                201 => {
                    assert_eq!(r.body["communityId"], c.as_str());
                    let seq = r.body["seq"].as_i64().unwrap();
                    assert!(seqs.entry(c).or_default().insert(seq), "seq {seq} twice");
                }
                403 => refused += 1,
                other => panic!("unexpected {other}: {:?}", r.body),
            }
        }
    }
    assert_eq!(refused, outsiders.len() * PER_POSTER);
    for c in &communities {
        let got = seqs.remove(c).unwrap_or_default();
        let n = got.len() as i64;
        assert_eq!(n as usize, members.len() / COMMUNITIES * PER_POSTER);
        assert_eq!(got, (1..=n).collect::<BTreeSet<i64>>(), "exactly 1..={n}");
        let hist = api
            .get(
                &format!("/api/messages-realtime?communityId={c}&limit=100"),
                &owner,
            )
            .await;
        assert_eq!(hist.body["messages"].as_array().unwrap().len() as i64, n);
    }
}

#[tokio::test]
async fn backfill_returns_every_event_after_a_seq_in_order() {
    let api = Api::start().await;
    let alice = token(&uid("alice"));
    let c = api.community(&alice, "backfill", true).await;
    let a = api.send(&alice, &c, "a").await; // 1
    let b = api.send(&alice, &c, "b").await; // 2
    let _c3 = api.send(&alice, &c, "c").await; // 3
    api.delete(
        &format!("/api/messages-realtime/{}", a["id"].as_str().unwrap()),
        &alice,
    )
    .await; // 4
    let d = api.send(&alice, &c, "d").await; // 5
    api.delete(
        &format!("/api/messages-realtime/{}", d["id"].as_str().unwrap()),
        &alice,
    )
    .await; // 6

    // On the admin listener, with the service token.
    let internal = |path: String| {
        let req = api
            .http
            .get(format!("{}{path}", api.admin_url))
            .bearer_auth(INTERNAL_TOKEN);
        async move { into_resp(req.send().await.unwrap()).await }
    };
    let r = internal(format!("/internal/communities/{c}/events?after=1")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["headSeq"], 6);
    let events = r.body["events"].as_array().unwrap();
    let shape: Vec<(i64, &str)> = events
        .iter()
        .map(|e| {
            (
                e["seq"].as_i64().unwrap(),
                e["event"]["type"].as_str().unwrap(),
            )
        })
        .collect();
    // d (seq 5) was created and deleted after seq 1: only its deletion comes.
    assert_eq!(
        shape,
        vec![
            (2, "new-message"),
            (3, "new-message"),
            (4, "message-deleted"),
            (6, "message-deleted")
        ]
    );
    assert_eq!(events[0]["event"]["data"]["message"], b);
    assert_eq!(
        events[2]["event"]["data"],
        json!({"communityId": c, "messageId": a["id"], "seq": 4})
    );

    let r = internal(format!("/internal/communities/{c}/events?after=2&limit=2")).await;
    let seqs: Vec<i64> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 4]);
    let r = internal(format!("/internal/communities/{c}/events?after=6")).await;
    assert_eq!(r.body["events"], json!([]));
    let r = internal(format!(
        "/internal/communities/{}/events",
        uuid::Uuid::new_v4()
    ))
    .await;
    assert_eq!(r.code(), "not_found");

    let r = internal(format!("/internal/communities/{c}/access/nobody")).await;
    assert_eq!(r.body["role"], serde_json::Value::Null);
    assert_eq!(r.body["headSeq"], 6);

    // Without the service token (or with a user token) it is refused.
    let events = format!("/internal/communities/{c}/events");
    let admin = |token: Option<&str>| {
        let mut req = api.http.get(format!("{}{events}", api.admin_url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { into_resp(req.send().await.unwrap()).await }
    };
    for t in [None, Some(alice.as_str()), Some("not-the-token")] {
        let r = admin(t).await;
        assert_eq!((r.status, r.code()), (401, "unauthorized"), "{t:?}");
    }
    // The public listener does not serve it at all, token or not.
    for t in [Some(INTERNAL_TOKEN), Some(alice.as_str()), None] {
        let r = api.call(Method::GET, &events, t, None).await;
        assert_eq!((r.status, r.code()), (404, "not_found"), "{t:?}");
        let r = api
            .call(
                Method::GET,
                &format!("/internal/communities/{c}/access/nobody"),
                t,
                None,
            )
            .await;
        assert_eq!((r.status, r.code()), (404, "not_found"), "{t:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_never_accepted_after_its_senders_removal() {
    const ROUNDS: usize = 60;
    const POSTS_PER_ROUND: usize = 5;
    let api = Api::start().await;
    let owner = token(&uid("owner"));
    let c = api.community(&owner, "racy", true).await;
    // A published outbox row is deleted: a trigger keeps a copy of each
    // one, committed with it, for the check at the end.
    let pool = sqlx::PgPool::connect(&api.database_url).await.unwrap();
    sqlx::raw_sql(
        "create table outbox_copy (id bigint primary key, channel text not null, payload bytea not null);
         create function outbox_copy() returns trigger language plpgsql as $$
         begin insert into outbox_copy values (new.id, new.channel, new.payload); return new; end $$;
         create trigger outbox_copy after insert on outbox for each row execute function outbox_copy();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (mut accepted, mut refused) = (0, 0);
    let mut posters = Vec::new();
    for round in 0..ROUNDS {
        let poster = uid(&format!("poster{round}"));
        api.add(&owner, &c, &poster).await;
        let mut tasks = Vec::new();
        for i in 0..POSTS_PER_ROUND {
            let (http, url, t, c) = (api.http.clone(), api.url.clone(), token(&poster), c.clone());
            tasks.push(tokio::spawn(async move {
                let r = http
                    .post(format!("{url}/api/messages-realtime"))
                    .bearer_auth(&t)
                    .json(&json!({"communityId": c, "content": format!("{round}.{i}")}))
                    .send()
                    .await
                    .unwrap();
                into_resp(r).await
            }));
        }
        let removal = api
            .delete(&format!("/api/communities/{c}/members/{poster}"), &owner)
            .await;
        assert_eq!(removal.status, 204);
        for t in tasks {
            let p = t.await.unwrap();
            match (p.status, p.code()) {
                (201, _) => accepted += 1,
                (403, "forbidden") => refused += 1,
                other => panic!("unexpected answer {other:?}: {:?}", p.body),
            }
        }
        posters.push(poster);
    }
    assert_eq!(accepted + refused, ROUNDS * POSTS_PER_ROUND);

    // In outbox (commit) order, no new-message of a user follows their
    // membership-revoked.
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("select channel, payload from outbox_copy order by id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut revoked = HashSet::new();
    let mut messages = 0;
    for (channel, payload) in rows {
        match Envelope::decode(&payload).unwrap().event {
            ServerEvent::MembershipRevoked(_) => {
                revoked.insert(channel);
            }
            ServerEvent::NewMessage(m) => {
                messages += 1;
                assert!(
                    !revoked.contains(&user_channel(&m.message.sender.id)),
                    "{}'s message {:?} committed after their removal",
                    m.message.sender.id,
                    m.message.content
                );
            }
            _ => {}
        }
    }
    assert_eq!(revoked.len(), ROUNDS);
    assert_eq!(messages, accepted);
}
