//! Publishing through the outbox: every committed event reaches Redis, in
//! seq order, decodable, also across a Redis outage and an API restart.

use chorus_api::outbox::{OUTBOX_LOCK_KEY, OutboxSource, OutboxStore};
use chorus_shared::envelope::{community_channel, user_channel};
use chorus_shared::protocol::ServerEvent;
use chorus_testkit::{AdvisoryLock, OwnRedis, free_port};
use futures_util::StreamExt;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn every_event_is_published_once_and_decodes() {
    let api = Api::start().await;
    let (alice_id, bob_id) = (uid("alice"), uid("bob"));
    let (alice, bob) = (token(&alice_id), token(&bob_id));
    let c = api.community(&alice, "published", true).await;
    api.add(&alice, &c, &bob_id).await;
    let cid: uuid::Uuid = c.parse().unwrap();
    let mut sub = Sub::new(
        &env_url("REDIS_URL"),
        &[community_channel(&cid), user_channel(&bob_id)],
    )
    .await;

    let m1 = api.send_mentioning(&alice, &c, &bob_id).await;
    let mut got = [sub.next().await, sub.next().await];
    got.sort_by_key(|(ch, _)| ch.starts_with("chorus:user:"));
    let (ch, env) = &got[0];
    assert_eq!(ch, &community_channel(&cid));
    assert_eq!((env.community_id, env.seq), (Some(cid), Some(1)));
    let ServerEvent::NewMessage(data) = &env.event else {
        panic!("expected new-message, got {:?}", env.event)
    };
    assert_eq!(
        serde_json::to_value(&data.message).unwrap(),
        m1,
        "the event carries the API's response"
    );
    let (ch, env) = &got[1];
    assert_eq!(ch, &user_channel(&bob_id));
    let ServerEvent::Notification(n) = &env.event else {
        panic!("expected notification")
    };
    assert_eq!(n.notification.kind, "mention");

    api.delete(
        &format!("/api/messages-realtime/{}", m1["id"].as_str().unwrap()),
        &bob,
    )
    .await;
    // Bob may not delete Alice's message: nothing is published for a refused write.
    let m2 = api.send(&alice, &c, "second").await;
    api.delete(
        &format!("/api/messages-realtime/{}", m2["id"].as_str().unwrap()),
        &alice,
    )
    .await;
    let (_, e) = sub.next().await;
    assert_eq!(e.seq, Some(2));
    assert!(matches!(e.event, ServerEvent::NewMessage(_)));
    let (_, e) = sub.next().await;
    assert_eq!(e.seq, Some(3));
    let ServerEvent::MessageDeleted(d) = &e.event else {
        panic!("expected message-deleted")
    };
    assert_eq!(d.message_id.to_string(), m2["id"].as_str().unwrap());

    let r = api
        .post(
            "/api/notifications-broadcast",
            &bob,
            json!({"userId": bob_id, "type": "t", "title": "x", "message": "y"}),
        )
        .await;
    assert_eq!(r.status, 201);
    let (ch, e) = sub.next().await;
    assert_eq!(ch, user_channel(&bob_id));
    assert!(matches!(e.event, ServerEvent::Notification(_)));

    assert_eq!(
        api.delete(&format!("/api/communities/{c}/members/{bob_id}"), &alice)
            .await
            .status,
        204
    );
    let (ch, e) = sub.next().await;
    assert_eq!(ch, user_channel(&bob_id));
    let ServerEvent::MembershipRevoked(rev) = &e.event else {
        panic!("expected membership-revoked")
    };
    assert_eq!(rev.community_id, cid);
    // Nothing else was published: a marker sent afterwards is next.
    let r = api
        .post(
            "/api/notifications-broadcast",
            &bob,
            json!({"userId": bob_id, "type": "t", "title": "marker", "message": "y"}),
        )
        .await;
    assert_eq!(r.status, 201);
    let (_, e) = sub.next().await;
    let ServerEvent::Notification(n) = &e.event else {
        panic!("expected the marker next, got {:?}", e.event)
    };
    assert_eq!(n.notification.title, "marker");

    // Each published event's row is deleted: by the publisher (the
    // mention, the deletion, the notifications, the revocation) and by the
    // writers (the plain post, whose mark goes alone when no batch follows).
    let pool = sqlx::PgPool::connect(&api.database_url).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left: i64 = sqlx::query_scalar("select count(*) from outbox")
            .fetch_one(&pool)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} published rows left in the outbox"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_outage_and_api_restart_lose_nothing() {
    let port = free_port();
    let mut redis = OwnRedis::start(port).await;
    let opts = Opts {
        redis_url: redis.url(),
        ..Opts::default()
    };
    let api = Api::start_with(opts.clone()).await;
    let alice = token(&uid("alice"));
    let c = api.community(&alice, "outage", true).await;
    let cid: uuid::Uuid = c.parse().unwrap();
    let channel = community_channel(&cid);
    let mut sub = Sub::new(&redis.url(), std::slice::from_ref(&channel)).await;
    for i in 1..=3 {
        api.send(&alice, &c, &format!("before {i}")).await;
    }
    for want in 1..=3 {
        assert_eq!(sub.next().await.1.seq, Some(want));
    }

    // Redis dies: writes still succeed, events queue.
    redis.kill();
    drop(sub);
    for i in 4..=10 {
        api.send(&alice, &c, &format!("during {i}")).await;
    }
    // Redis returns; the same API publishes the backlog in seq order.
    let lock = AdvisoryLock::take(&api.database_url, OUTBOX_LOCK_KEY).await;
    let mut redis = OwnRedis::start(port).await;
    let mut sub = Sub::new(&redis.url(), std::slice::from_ref(&channel)).await;
    lock.release().await;
    expect_seqs(&mut sub, 4, 10).await;

    // Redis dies again and the API restarts while it is down: the new
    // process publishes what the old one could not.
    redis.kill();
    drop(sub);
    for i in 11..=15 {
        api.send(&alice, &c, &format!("orphaned {i}")).await;
    }
    let db = api.database_url.clone();
    api.stop()
        .await
        .expect("clean shutdown even with Redis away");
    let lock = AdvisoryLock::take(&db, OUTBOX_LOCK_KEY).await;
    let redis = OwnRedis::start(port).await;
    let api = Api::start_with(Opts {
        database_url: Some(db.clone()),
        ..opts
    })
    .await;
    let mut sub = Sub::new(&redis.url(), std::slice::from_ref(&channel)).await;
    lock.release().await;
    expect_seqs(&mut sub, 11, 15).await;
    api.send(&alice, &c, "after").await;
    expect_seqs(&mut sub, 16, 16).await;
    // Everything is marked in the end (the last post marks its event
    // shortly after publishing it itself).
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    wait_until_published(&pool, &channel).await;
}

/// A post publishes itself right after its commit, without the outbox
/// publisher, but only when nothing earlier on its channel is unpublished:
/// behind an event the publisher has not published yet, posts wait for it
/// and keep their order.
#[tokio::test]
async fn posts_publish_themselves_only_behind_published_events() {
    let api = Api::start().await;
    let (alice_id, bob_id) = (uid("alice"), uid("bob"));
    let alice = token(&alice_id);
    let a = api.community(&alice, "behind", true).await;
    api.add(&alice, &a, &bob_id).await;
    let b = api.community(&alice, "free", true).await;
    let (a_ch, b_ch) = (
        community_channel(&a.parse().unwrap()),
        community_channel(&b.parse().unwrap()),
    );
    let mut sub = Sub::new(&env_url("REDIS_URL"), &[a_ch.clone(), b_ch.clone()]).await;
    let pool = sqlx::PgPool::connect(&api.database_url).await.unwrap();

    // The publisher is locked out from here on.
    let lock = AdvisoryLock::take(&api.database_url, OUTBOX_LOCK_KEY).await;
    api.send(&alice, &b, "needs no publisher").await;
    let (ch, e) = sub.next().await;
    assert_eq!((ch.as_str(), e.seq), (b_ch.as_str(), Some(1)));

    // A post with a mention takes the full path, which leaves its event to
    // the publisher; the plain posts behind it must wait for it.
    api.send_mentioning(&alice, &a, &bob_id).await;
    api.send(&alice, &a, "behind the mention").await;
    api.send(&alice, &a, "behind it too").await;

    // Once b's first event is marked, b's next post is clean again and
    // goes out at once: it is the next thing published, none of a's came.
    wait_until_published(&pool, &b_ch).await;
    api.send(&alice, &b, "marker").await;
    let (ch, e) = sub.next().await;
    assert_eq!((ch.as_str(), e.seq), (b_ch.as_str(), Some(2)), "{e:?}");

    lock.release().await;
    expect_seqs(&mut sub, 1, 3).await;
    wait_until_published(&pool, &a_ch).await;
    wait_until_published(&pool, &b_ch).await;
}

/// Concurrent posts in one community, some taking the full path (a
/// mention) and most publishing themselves, reach Redis gap-free and in
/// seq order.
#[tokio::test]
async fn both_paths_together_keep_a_communitys_order() {
    const SENDERS: usize = 8;
    const POSTS: usize = 40;
    let api = std::sync::Arc::new(Api::start().await);
    let (alice_id, bob_id) = (uid("alice"), uid("bob"));
    let alice = token(&alice_id);
    let c = api.community(&alice, "both paths", true).await;
    api.add(&alice, &c, &bob_id).await;
    let channel = community_channel(&c.parse().unwrap());
    let mut sub = Sub::new(&env_url("REDIS_URL"), std::slice::from_ref(&channel)).await;
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (api, alice, c, bob_id) = (api.clone(), alice.clone(), c.clone(), bob_id.clone());
            tokio::spawn(async move {
                for i in 0..POSTS {
                    let mentions = if (s + i) % 5 == 0 {
                        json!([bob_id])
                    } else {
                        json!([])
                    };
                    let r = api
                        .post(
                            "/api/messages-realtime",
                            &alice,
                            json!({"communityId": c, "content": format!("{s}/{i} @bob"), "mentions": mentions}),
                        )
                        .await;
                    assert_eq!(r.status, 201, "{:?}", r.body);
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    expect_seqs(&mut sub, 1, (SENDERS * POSTS) as i64).await;
    let pool = sqlx::PgPool::connect(&api.database_url).await.unwrap();
    wait_until_published(&pool, &channel).await;
}

/// Waits until every outbox row of `channel` is marked published.
async fn wait_until_published(pool: &sqlx::PgPool, channel: &str) {
    for _ in 0..1000 {
        let pending: i64 = sqlx::query_scalar(
            "select count(*) from outbox where published_at is null and channel = $1",
        )
        .bind(channel)
        .fetch_one(pool)
        .await
        .unwrap();
        if pending == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{channel}: outbox rows still unpublished after 10 s");
}

/// Reads until every seq in `from..=to` was seen. Publication is at least
/// once, so a seq may repeat, but only one already seen: each new seq must
/// be exactly the next one (no gap, no reordering).
async fn expect_seqs(sub: &mut Sub, from: i64, to: i64) {
    let mut next = from;
    while next <= to {
        let (_, e) = sub.next().await;
        let seq = e.seq.expect("sequenced");
        assert!(
            seq <= next,
            "seq {seq} arrived while {next} was still missing"
        );
        if seq == next {
            next += 1;
        }
    }
}

/// On a Redis Cluster (three primaries, no replicas) a frozen shard holds
/// back only its own channels: with a backlog there larger than a whole
/// publishing batch, another shard's community keeps receiving while it is
/// away, and the frozen shard's events follow, in order, once it is back.
#[tokio::test]
async fn on_a_cluster_one_shard_away_delays_only_its_channels() {
    let rc = chorus_testkit::RedisCluster::start(3, 0).await;
    let api = Api::start_with(Opts {
        redis_url: rc.url(),
        ..Opts::default()
    })
    .await;
    let alice = token(&uid("alice"));
    // Two communities whose channels live on different shards.
    let shard_of = |c: &str| rc.primary_of(&community_channel(&c.parse().unwrap()));
    let away = api.community(&alice, "away", true).await;
    let mut other = api.community(&alice, "other", true).await;
    while shard_of(&other) == shard_of(&away) {
        other = api.community(&alice, "other", true).await;
    }
    let (away_port, other_port) = (shard_of(&away), shard_of(&other));
    let channel = |c: &str| community_channel(&c.parse().unwrap());
    let mut away_sub =
        Sub::sharded(&format!("redis://127.0.0.1:{away_port}"), &[channel(&away)]).await;
    let mut other_sub = Sub::sharded(
        &format!("redis://127.0.0.1:{other_port}"),
        &[channel(&other)],
    )
    .await;

    rc.pause(away_port);
    // More than one publishing batch waits for the frozen shard: whole
    // batches of its events come back refused.
    let backlog = chorus_api::outbox::OUTBOX_BATCH + 20;
    let posts = (0..backlog).map(|i| {
        let (api, alice, away) = (&api, &alice, &away);
        async move { api.send(alice, away, &format!("held {i}")).await }
    });
    futures_util::stream::iter(posts)
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    // Each post of the other community arrives while the shard is still
    // frozen. A publication slower than its timeout on this busy machine
    // is sent again (at least once), so a seq already seen may repeat;
    // none may be skipped.
    for seq in 1..=3 {
        api.send(&alice, &other, &format!("flows {seq}")).await;
        expect_seqs(&mut other_sub, seq, seq).await;
    }
    rc.resume(away_port);
    // Every retry while frozen sent the channel again from its first
    // unpublished event, so repeats come (at least once; gateways drop
    // them by seq); what matters is that no event is skipped.
    let mut seq = 0;
    while seq < backlog {
        let (_, e) = away_sub.next().await;
        let got = e.seq.unwrap();
        if got > seq {
            assert_eq!(got, seq + 1, "no event skipped");
            seq = got;
        }
    }
}

/// A post writer marking the events it published never waits for another
/// session: a row another session holds (another replica's publisher
/// marking it) is skipped, and the call returns while that session still
/// holds it. The next call marks it once it is free.
#[tokio::test]
async fn marking_skips_rows_another_session_holds() {
    let api = Api::start().await;
    let pool = sqlx::PgPool::connect(&api.database_url).await.unwrap();
    // The publisher is locked out: the row is only ever marked by the calls below.
    let lock = AdvisoryLock::take(&api.database_url, OUTBOX_LOCK_KEY).await;
    let id: i64 = sqlx::query_scalar(
        "insert into outbox (channel, payload) values ('chorus:marking-test', '\\x00') returning id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // A mark deletes the row.
    let published = || async {
        sqlx::query_scalar::<_, bool>("select not exists (select 1 from outbox where id = $1)")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    // A batch of no posts that only marks `id`; waiting for a lock would
    // fail it after 5 s instead of hanging the test.
    let mark = |id: i64| {
        let pool = &pool;
        async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("set local lock_timeout = '5s'")
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query(
            "select seqs from chorus_post_messages_direct(array[$1::bigint], '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}')",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .expect("marking does not wait for a held row");
            tx.commit().await.unwrap();
        }
    };

    let mut holder = pool.begin().await.unwrap();
    sqlx::query("select id from outbox where id = $1 for update")
        .bind(id)
        .execute(&mut *holder)
        .await
        .unwrap();
    mark(id).await;
    assert!(!published().await, "a held row is skipped");
    holder.rollback().await.unwrap();
    mark(id).await;
    assert!(published().await, "marked once free");

    // A row an API process of the previous version marked (by update,
    // during a rolling upgrade) is left to the purge: the mark above
    // deletes only unpublished rows.
    let insert = |published_at: Option<chrono::DateTime<chrono::Utc>>| {
        sqlx::query_scalar::<_, i64>(
            "insert into outbox (channel, payload, published_at) values ('chorus:marking-test', '\\x00', $1) returning id",
        )
        .bind(published_at)
        .fetch_one(&pool)
    };
    let old_mark = insert(Some(chrono::Utc::now())).await.unwrap();
    let unpublished = insert(None).await.unwrap();
    let left = || async {
        sqlx::query_scalar::<_, i64>("select id from outbox where id = any($1) order by id")
            .bind(vec![old_mark, unpublished])
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    mark(old_mark).await;
    assert_eq!(left().await, [old_mark, unpublished]);
    OutboxStore::new(pool.clone(), None)
        .purge_expired()
        .await
        .unwrap();
    assert_eq!(
        left().await,
        [unpublished],
        "the purge deletes the old version's marked rows, and only those"
    );
    lock.release().await;
}
