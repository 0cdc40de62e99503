//! Faults of gateways: killed, frozen and draining gateways, reconnect
//! storms, trickling clients. Redis's faults are in `redis_faults.rs`,
//! slow consumers in `slow_consumers.rs`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use chorus_testkit::free_port;
use tokio::net::TcpStream;

use crate::common::*;

/// Presence heartbeat TTL of the gateway processes that tests kill or
/// freeze: short, so survivors reap them within seconds, and long enough
/// that a loaded machine's scheduling does not lapse a healthy one.
const SHORT_LIVENESS_MS: &str = "1500";

/// A gateway as a real process, so it can be killed like one (also used
/// behind HAProxy in `haproxy.rs`).
pub(crate) struct GatewayProcess {
    pub(crate) child: Child,
    /// `ws://127.0.0.1:<port>/ws`
    pub(crate) url: String,
    /// `http://127.0.0.1:<admin port>`
    pub(crate) admin: String,
}

impl GatewayProcess {
    async fn metric(&self, name: &str) -> f64 {
        self.metric_opt(name)
            .await
            .unwrap_or_else(|| panic!("metric {name} not exported"))
    }

    /// A metric's value, `None` while it was never recorded.
    pub(crate) async fn metric_opt(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        chorus_testkit::metric_value(&text, name)
    }

    async fn start(api: &Service, redis_url: &str) -> GatewayProcess {
        GatewayProcess::start_with(api, redis_url, &[]).await
    }

    /// A gateway on the shared Redis whose presence heartbeat lives
    /// [`SHORT_LIVENESS_MS`], so its death is noticed in seconds.
    async fn start_short_lived(api: &Service) -> GatewayProcess {
        GatewayProcess::start_with(
            api,
            &env_url("REDIS_URL"),
            &[("CHORUS_PRESENCE_LIVENESS_MS", SHORT_LIVENESS_MS)],
        )
        .await
    }

    /// Sends `kill`'s `signal` (`-STOP`, `-CONT`) to the process.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal}");
    }

    pub(crate) async fn start_with(
        api: &Service,
        redis_url: &str,
        env: &[(&str, &str)],
    ) -> GatewayProcess {
        let (port, admin) = (free_port(), free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_chorus-gateway"))
            .envs(env.iter().copied())
            .env("CHORUS_GATEWAY_ADDR", format!("127.0.0.1:{port}"))
            .env("CHORUS_ADMIN_ADDR", format!("127.0.0.1:{admin}"))
            .env("CHORUS_API_URL", &api.url)
            .env("CHORUS_API_INTERNAL_URL", &api.admin_url)
            .env("CHORUS_INTERNAL_TOKEN", INTERNAL_TOKEN)
            .env("CHORUS_JWT_SECRET", SECRET)
            .env("REDIS_URL", redis_url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("gateway binary");
        let ready = format!("http://127.0.0.1:{admin}/readyz");
        let deadline = tokio::time::Instant::now() + WAIT;
        while !reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) {
            if let Some(status) = child.try_wait().expect("gateway status") {
                panic!("the gateway exited before it was ready ({status}); its log is above");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway was not ready within {WAIT:?}; its log is above"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        GatewayProcess {
            child,
            url: format!("ws://127.0.0.1:{port}/ws"),
            admin: format!("http://127.0.0.1:{admin}"),
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_killed_gateways_clients_resume_elsewhere_and_its_presence_is_reaped() {
    let cl = Cluster::start().await;
    let (alice, bob) = (uid("alice"), uid("bob"));
    let c = cl.community(&alice, &[&bob]).await;
    // The default heartbeat: bob is back elsewhere long before it lapses.
    let mut doomed_gw = GatewayProcess::start(&cl.api, &env_url("REDIS_URL")).await;
    let mut watcher = Client::connect(&cl.gw1.url, &token(&alice)).await;
    watcher.join(&c, None).await;
    let mut b = Client::connect(&doomed_gw.url, &token(&bob)).await;
    b.join(&c, None).await;
    watcher.event_of("user-joined").await;
    for i in 1..=3 {
        cl.post(&alice, &c, &format!("m{i}")).await;
    }
    let seen = b.seqs_until(3).await;
    let last_seen = *seen.last().unwrap();

    doomed_gw.child.kill().unwrap();
    doomed_gw.child.wait().unwrap();
    b.closed().await;
    for i in 4..=8 {
        cl.post(&alice, &c, &format!("while reconnecting {i}"))
            .await;
    }
    let mut b = Client::connect(&cl.gw2.url, &token(&bob)).await;
    let r = b
        .send(
            "join-community",
            json!({"communityId": c, "lastSeq": last_seen}),
        )
        .await;
    let mut got = Vec::new();
    let ack = loop {
        let f = b.frame().await;
        if f["type"] == "ack" && f["ref"] == r {
            break f["data"].clone();
        }
        if f["type"] == "new-message" {
            got.push(f["data"]["message"]["seq"].as_i64().unwrap());
        }
    };
    assert_eq!(
        got,
        (4..=8).collect::<Vec<_>>(),
        "nothing lost, nothing repeated"
    );
    assert_eq!(
        (ack["recovered"].clone(), ack["missed"].clone()),
        (json!(true), json!(5))
    );
    cl.post(&alice, &c, "live").await;
    assert_eq!(b.seqs_until(9).await, vec![9]);
    // Bob is back through gw2, so no user-left: presence stays right.
    // A user only on the dead gateway goes offline once its heartbeat
    // lapses and a survivor reaps it.
    let carol = uid("carol");
    let (s, _) = cl
        .call(
            reqwest::Method::POST,
            &format!("/api/communities/{c}/join"),
            &token(&carol),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 200);
    let mut doomed_gw = GatewayProcess::start_short_lived(&cl.api).await;
    let mut carol_ws = Client::connect(&doomed_gw.url, &token(&carol)).await;
    carol_ws.join(&c, None).await;
    let j = watcher.event_of("user-joined").await;
    assert_eq!(j["data"]["userId"], carol.as_str());
    doomed_gw.child.kill().unwrap();
    doomed_gw.child.wait().unwrap();
    // Its heartbeat's TTL plus a survivor's reaping interval, plus slack
    // for a loaded machine.
    watcher.wait = Duration::from_secs(30);
    let left = watcher.event_of("user-left").await;
    assert_eq!(left["data"]["userId"], carol.as_str());
    cl.post(&alice, &c, "after the reaping").await;
    let before = watcher.events_before_message("after the reaping").await;
    assert!(
        before.iter().all(|e| e["type"] != "user-left"),
        "announced once, and bob was never gone: {before:?}"
    );
}

#[tokio::test]
async fn a_gateway_cut_off_past_its_heartbeat_announces_its_users_again() {
    let cl = Cluster::start().await;
    let (alice, bob) = (uid("alice"), uid("bob"));
    let c = cl.community(&alice, &[&bob]).await;
    let gw = GatewayProcess::start_short_lived(&cl.api).await;
    let mut watcher = Client::connect(&cl.gw1.url, &token(&alice)).await;
    watcher.join(&c, None).await;
    let mut b = Client::connect(&gw.url, &token(&bob)).await;
    b.join(&c, None).await;
    assert_eq!(
        watcher.event_of("user-joined").await["data"]["userId"],
        bob.as_str()
    );
    // Frozen past its heartbeat's TTL: the survivors take it for dead and
    // reap its users.
    gw.signal("-STOP");
    watcher.wait = Duration::from_secs(30);
    let left = watcher.event_of("user-left").await;
    assert_eq!(left["data"]["userId"], bob.as_str());
    // Alive again, it finds its heartbeat gone and writes its users anew
    // under a new incarnation: bob is announced back, once.
    gw.signal("-CONT");
    let back = watcher.event_of("user-joined").await;
    assert_eq!(back["data"]["userId"], bob.as_str());
    cl.post(&alice, &c, "after the renewal").await;
    let before = watcher.events_before_message("after the renewal").await;
    assert!(
        before
            .iter()
            .all(|e| e["type"] != "user-left" && e["type"] != "user-joined"),
        "{before:?}"
    );
    b.next_is_message("after the renewal").await;
    let online = cl.online(&alice, &c).await;
    let mut both = vec![alice.clone(), bob.clone()];
    both.sort();
    assert_eq!(online, json!(both));
}

#[tokio::test]
async fn draining_sends_reconnect_then_1012() {
    let cl = Cluster::start().await;
    let alice = uid("alice");
    let mut a = Client::connect(&cl.gw2.url, &token(&alice)).await;
    let mut b = Client::connect(&cl.gw2.url, &token(&alice)).await;
    let admin = cl.gw2.admin_url.clone();
    let stopping = tokio::spawn(cl.gw2.stop());
    for c in [&mut a, &mut b] {
        let r = c.event_of("reconnect").await;
        assert_eq!(r["data"]["reason"], "draining");
        assert!(r["data"]["afterMs"].as_u64().is_some());
        let f = c.closed().await.expect("close frame");
        assert_eq!(u16::from(f.code), 1012);
    }
    stopping.await.unwrap();
    assert!(
        reqwest::get(format!("{admin}/readyz")).await.is_err(),
        "admin closed after exit"
    );
}

#[tokio::test]
async fn a_reconnect_storm_costs_the_api_one_backfill_per_community() {
    let cl = Cluster::start().await;
    let alice = uid("alice");
    let c = cl.community(&alice, &[]).await;
    for i in 1..=60 {
        cl.post(&alice, &c, &format!("m{i}")).await;
    }
    let gw = GatewayProcess::start(&cl.api, &env_url("REDIS_URL")).await;
    let mut joins = Vec::new();
    for i in 0..30i64 {
        let (url, t, c) = (gw.url.clone(), token(&alice), c.clone());
        joins.push(tokio::spawn(async move {
            let mut client = Client::connect(&url, &t).await;
            let last = 20 + i;
            let ack = client.join(&c, Some(last)).await;
            assert_eq!(
                (ack["recovered"].clone(), ack["missed"].clone()),
                (json!(true), json!(60 - last))
            );
            client
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    let requests = gw.metric("chorus_gateway_backfill_requests_total").await;
    assert!(
        (1.0..=4.0).contains(&requests),
        "30 rejoins cost {requests} backfill requests"
    );
}

/// Clients that trickle a request head hold nothing for long: a real client
/// still connects past 2,000 of them, and SIGTERM still drains and exits
/// (without a header-read timeout and a bounded shutdown it waits for them
/// forever).
#[tokio::test]
async fn trickling_clients_neither_block_others_nor_the_drain() {
    use tokio::io::AsyncWriteExt;
    let cl = Cluster::start().await;
    let alice = uid("alice");
    let c = cl.community(&alice, &[]).await;
    let gp = GatewayProcess::start_with(
        &cl.api,
        &env_url("REDIS_URL"),
        &[("CHORUS_DRAIN_SECONDS", "1")],
    )
    .await;
    let addr = gp
        .url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_owned();
    let mut tricklers = Vec::new();
    for _ in 0..2000 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        tricklers.push(s);
    }
    let mut a = Client::connect(&gp.url, &token(&alice)).await;
    a.join(&c, None).await;
    // A trickler is closed by the header-read timeout (10 s).
    let ended = tokio::time::timeout(WAIT, async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 512];
        loop {
            match tricklers[0].read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the header-read timeout closed a trickler");

    let pid = gp.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    assert_eq!(a.event_of("reconnect").await["type"], "reconnect");
    let close = a.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1012);
    let mut gp = gp;
    let exited = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = gp.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    })
    .await
    .unwrap();
    assert!(exited.is_some(), "the drained gateway exited");
    drop(tricklers);
}

/// The per-event series (deliveries, frames out by type, the event's lag
/// on arrival and at its first socket write) count what a gateway process
/// of its own delivered: their handles are made once, and must record into
/// the recorder the process serves `/metrics` from.
#[tokio::test]
async fn a_delivery_is_counted_in_the_per_event_series() {
    let cl = Cluster::start().await;
    let alice = uid("alice");
    let bob = uid("bob");
    let c = cl.community(&alice, &[&bob]).await;
    let gw = GatewayProcess::start(&cl.api, &env_url("REDIS_URL")).await;
    let mut a = Client::connect(&gw.url, &token(&alice)).await;
    let mut b = Client::connect(&gw.url, &token(&bob)).await;
    a.join(&c, None).await;
    b.join(&c, None).await;
    cl.post(&alice, &c, "counted").await;
    a.events_before_message("counted").await;
    b.next_is_message("counted").await;
    let out = gw
        .metric(r#"chorus_gateway_frames_out_total{type="new-message"}"#)
        .await;
    assert_eq!(out, 2.0, "one new-message frame to each client");
    let deliveries = gw.metric("chorus_gateway_deliveries_total").await;
    assert!(deliveries >= 2.0, "{deliveries} deliveries");
    for lag in [
        "chorus_gateway_event_lag_seconds_count",
        "chorus_gateway_delivery_lag_seconds_count",
    ] {
        let n = gw.metric(lag).await;
        assert!(n >= 1.0, "{lag} = {n}");
    }
}
