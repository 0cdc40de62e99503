//! Through the real load balancer: HAProxy with `deploy/haproxy/haproxy.cfg`
//! in front of an API and two gateway processes, one public URL for all.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use chorus_testkit::free_port;

use crate::common::*;
use crate::faults::GatewayProcess;

/// Where Debian's `haproxy` package puts the binary. CI installs it
/// (`chorus_install_services`); without it this test fails, never skips.
const HAPROXY: &str = "/usr/sbin/haproxy";

/// A private HAProxy process running the shipped config, owned by the test
/// and killed when dropped.
struct Haproxy {
    child: Child,
    /// `http://127.0.0.1:<port>`: the one public URL.
    url: String,
    /// `ws://127.0.0.1:<port>/ws`
    ws_url: String,
    /// The stats page in CSV.
    stats_csv: String,
}

/// `host:port` of an `http://` or `ws://` URL.
fn host_port(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap();
    rest.split('/').next().unwrap().to_owned()
}

fn port_of(url: &str) -> String {
    host_port(url).rsplit(':').next().unwrap().to_owned()
}

impl Haproxy {
    fn start(api: &Service, gw1: &GatewayProcess, gw2: &GatewayProcess) -> Haproxy {
        Haproxy::start_with(api, gw1, gw2, false)
    }

    /// With `web`, HAProxy routes every other path to the API's web front
    /// end (`CHORUS_LB_WEB=1`, as `scripts/run` does).
    fn start_with(api: &Service, gw1: &GatewayProcess, gw2: &GatewayProcess, web: bool) -> Haproxy {
        assert!(
            Path::new(HAPROXY).exists(),
            "{HAPROXY} is missing: install Debian's haproxy package (scripts/services.sh's \
             chorus_install_services does)"
        );
        let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/haproxy/haproxy.cfg");
        let (port, admin) = (free_port(), free_port());
        let child = Command::new(HAPROXY)
            // Foreground (-db), so the test owns the process and kills it.
            .args(["-db", "-f", cfg])
            .env("CHORUS_LB_ADDR", format!("127.0.0.1:{port}"))
            .env("CHORUS_LB_ADMIN_ADDR", format!("127.0.0.1:{admin}"))
            .env("CHORUS_LB_API_ADDR", host_port(&api.url))
            .env("CHORUS_LB_API_ADMIN_PORT", port_of(&api.admin_url))
            .env("CHORUS_LB_GATEWAY1_ADDR", host_port(&gw1.url))
            .env("CHORUS_LB_GATEWAY1_ADMIN_PORT", port_of(&gw1.admin))
            .env("CHORUS_LB_GATEWAY2_ADDR", host_port(&gw2.url))
            .env("CHORUS_LB_GATEWAY2_ADMIN_PORT", port_of(&gw2.admin))
            .env("CHORUS_LB_WEB", if web { "1" } else { "0" })
            .stdout(Stdio::null())
            .spawn()
            .expect("haproxy starts");
        Haproxy {
            child,
            url: format!("http://127.0.0.1:{port}"),
            ws_url: format!("ws://127.0.0.1:{port}/ws"),
            stats_csv: format!("http://127.0.0.1:{admin}/stats;csv"),
        }
    }

    /// Each of `paths` (asked with the service token, which must not
    /// help) is answered by HAProxy itself with the contract's 404, never
    /// forwarded (the services word theirs differently).
    async fn assert_not_routed(&self, http: &reqwest::Client, paths: &[&str]) {
        for path in paths {
            let r = http
                .get(format!("{}{path}", self.url))
                .header("authorization", format!("Bearer {INTERNAL_TOKEN}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "{path} is not routed");
            let body: Value = r.json().await.unwrap();
            assert_eq!(
                body,
                json!({"error": {"code": "not_found", "message": "no such path"}}),
                "{path}"
            );
        }
    }

    /// HAProxy's own view of a server: `UP`, `DOWN`, ... (`None` while
    /// the stats page does not answer).
    async fn status(&self, backend: &str, server: &str) -> Option<String> {
        let csv = reqwest::get(&self.stats_csv)
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let col = header.iter().position(|h| *h == "status")?;
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&backend) && f.get(1) == Some(&server))
            .and_then(|f| f.get(col).map(|s| (*s).to_owned()))
    }

    async fn is(&self, backend: &str, server: &str, status: &str) -> bool {
        self.status(backend, server).await.as_deref() == Some(status)
    }

    /// A request to the API through the load balancer.
    async fn call(&self, method: reqwest::Method, path: &str, user: &str, body: Value) -> Value {
        let r = reqwest::Client::new()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token(user))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!((200..300).contains(&status), "{path}: {status} {v}");
        v
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway_of(c: &Client) -> String {
    c.ready["data"]["gatewayId"].as_str().unwrap().to_owned()
}

/// What HAProxy routes and what it answers itself.
#[tokio::test]
async fn haproxy_routes_ws_and_api_and_nothing_else() {
    let db = fresh_database().await;
    let redis = env_url("REDIS_URL");
    let api = start_api(&db, &redis).await;
    let gw1 = GatewayProcess::start_with(&api, &redis, &[]).await;
    let gw2 = GatewayProcess::start_with(&api, &redis, &[]).await;
    let lb = Haproxy::start(&api, &gw1, &gw2);
    wait_until(|| async { lb.is("api", "api1", "UP").await }).await;
    let http = reqwest::Client::new();
    lb.assert_not_routed(
        &http,
        &[
            "/internal/memberships",
            "/metrics",
            "/readyz",
            "/healthz",
            "/",
            "/ws/x",
        ],
    )
    .await;
    // Dot-segments are refused before routing (sent raw: an HTTP client
    // library would resolve them itself).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(host_port(&lb.url))
            .await
            .unwrap();
        s.write_all(
            b"GET /api/../internal/memberships HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut head))
            .await
            .unwrap()
            .unwrap();
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        assert!(head.contains("no such path"), "{head}");
    }
    // /api/* reaches the API (an unauthenticated request is the API's 401).
    let r = http
        .get(format!("{}/api/communities", lb.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// With the web front end on (`CHORUS_LB_WEB=1`), every other path reaches
/// the API's web files, and still nothing operational is routed.
#[tokio::test]
async fn haproxy_with_the_web_front_end_routes_pages_but_never_admin_paths() {
    let db = fresh_database().await;
    let redis = env_url("REDIS_URL");
    let web = std::env::temp_dir().join(uid("lb-web"));
    std::fs::create_dir_all(&web).unwrap();
    std::fs::write(web.join("index.html"), "<title>chorus web</title>").unwrap();
    let api = start_api_with_web(&db, &redis, Some(web.clone())).await;
    let gw1 = GatewayProcess::start_with(&api, &redis, &[]).await;
    let gw2 = GatewayProcess::start_with(&api, &redis, &[]).await;
    let lb = Haproxy::start_with(&api, &gw1, &gw2, true);
    wait_until(|| async { lb.is("api", "api1", "UP").await }).await;
    let http = reqwest::Client::new();
    for path in ["/", "/index.html", "/some/page"] {
        let r = http.get(format!("{}{path}", lb.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.text().await.unwrap().contains("chorus web"), "{path}");
    }
    lb.assert_not_routed(
        &http,
        &[
            "/internal",
            "/internal/memberships",
            "/metrics",
            "/readyz",
            "/healthz",
        ],
    )
    .await;
    let r = http
        .get(format!("{}/api/communities", lb.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    std::fs::remove_dir_all(&web).unwrap();
}

/// Clients spread over both gateways through one URL; a SIGTERM'd gateway
/// is taken out of rotation at once (HAProxy marks it DOWN while it is
/// still draining), its clients come back through the same URL to the
/// other gateway and lose nothing while messages keep coming, and every
/// new connection lands on the survivor.
#[tokio::test]
async fn through_haproxy_a_draining_gateways_clients_move_over_and_lose_nothing() {
    const CLIENTS: usize = 20;
    let db = fresh_database().await;
    let redis = env_url("REDIS_URL");
    let api = start_api(&db, &redis).await;
    let (id_a, id_b) = (uid("gw-a"), uid("gw-b"));
    // Drains spread over 4 s: long enough that HAProxy's verdict (within a
    // second) provably comes while gateway A is still running.
    let drain = ("CHORUS_DRAIN_SECONDS", "4");
    let gw_a =
        GatewayProcess::start_with(&api, &redis, &[("CHORUS_GATEWAY_ID", &id_a), drain]).await;
    let gw_b =
        GatewayProcess::start_with(&api, &redis, &[("CHORUS_GATEWAY_ID", &id_b), drain]).await;
    let lb = Haproxy::start(&api, &gw_a, &gw_b);
    wait_until(|| async {
        lb.is("api", "api1", "UP").await
            && lb.is("gateways", "gw1", "UP").await
            && lb.is("gateways", "gw2", "UP").await
    })
    .await;

    // A community with CLIENTS members, made through the load balancer.
    let owner = uid("owner");
    let users: Vec<String> = (0..CLIENTS).map(|i| uid(&format!("u{i}"))).collect();
    let c = lb
        .call(
            reqwest::Method::POST,
            "/api/communities",
            &owner,
            json!({"name": "lb"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for u in &users {
        lb.call(
            reqwest::Method::POST,
            &format!("/api/communities/{c}/members"),
            &owner,
            json!({"userId": u}),
        )
        .await;
    }

    // (a) One URL, both gateways used (leastconn alternates).
    let mut clients = Vec::new();
    for u in &users {
        clients.push(Client::connect(&lb.ws_url, &token(u)).await);
    }
    let used: BTreeSet<String> = clients.iter().map(gateway_of).collect();
    assert_eq!(
        used,
        BTreeSet::from([id_a.clone(), id_b.clone()]),
        "both gateways serve clients of the one URL"
    );

    // (b) Everyone joins; messages posted through /api reach them all.
    for cl in clients.iter_mut() {
        cl.join(&c, None).await;
    }
    for i in 1..=5 {
        lb.call(
            reqwest::Method::POST,
            "/api/messages-realtime",
            &owner,
            json!({"communityId": c, "content": format!("before {i}")}),
        )
        .await;
    }
    let mut seen: Vec<Vec<i64>> = Vec::new();
    for cl in clients.iter_mut() {
        let s = cl.seqs_until(5).await;
        assert_eq!(s, (1..=5).collect::<Vec<_>>());
        seen.push(s);
    }

    // Messages keep coming through the load balancer from here on.
    let stop = Arc::new(AtomicBool::new(false));
    let poster = {
        let (stop, url, c, owner) = (stop.clone(), lb.url.clone(), c.clone(), owner.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut last = 5;
            while !stop.load(Ordering::SeqCst) {
                let r = http
                    .post(format!("{url}/api/messages-realtime"))
                    .bearer_auth(token(&owner))
                    .json(&json!({"communityId": c, "content": "during"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                let m: Value = r.json().await.unwrap();
                last = m["seq"].as_i64().unwrap();
                // Pacing, not an assertion: a steady stream, not a flood.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            last
        })
    };

    // (c) SIGTERM gateway A.
    let pid = gw_a.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    // (d) HAProxy takes it out of rotation while it is still draining: its
    // `/readyz` says 503 at once, one failed check marks it DOWN.
    wait_until(|| async { lb.is("gateways", "gw1", "DOWN").await }).await;
    assert!(
        reqwest::get(format!("{}/healthz", gw_a.admin))
            .await
            .is_ok_and(|r| r.status() == 200),
        "marked DOWN while gateway A still runs (drains for 4 s), not because it exited"
    );
    assert!(lb.is("gateways", "gw2", "UP").await);

    // A's clients: `reconnect`, 1012, then back through the same URL onto
    // B, rejoining with the last seq they saw.
    let mut moved = 0;
    for (cl, seen) in clients.iter_mut().zip(seen.iter_mut()) {
        if gateway_of(cl) != id_a {
            continue;
        }
        let reconnect = loop {
            let e = cl.next_event().await;
            match e["type"].as_str() {
                Some("new-message") => seen.push(e["data"]["message"]["seq"].as_i64().unwrap()),
                Some("reconnect") => break e,
                _ => {}
            }
        };
        assert_eq!(reconnect["data"]["reason"], "draining");
        assert!(reconnect["data"]["afterMs"].as_u64().is_some());
        let close = cl.closed().await.expect("a close frame");
        assert_eq!(u16::from(close.code), 1012);

        let user = cl.ready["data"]["userId"].as_str().unwrap().to_owned();
        let mut again = Client::connect(&lb.ws_url, &token(&user)).await;
        assert_eq!(gateway_of(&again), id_b, "reconnected onto the survivor");
        let last = *seen.last().unwrap();
        let ack = again.join(&c, Some(last)).await;
        assert_eq!(ack["recovered"], true, "{ack}");
        *cl = again;
        moved += 1;
    }
    assert!(moved > 0, "gateway A had clients");

    // (d) Every new connection lands on the survivor.
    for _ in 0..10 {
        let late = Client::connect(&lb.ws_url, &token(&uid("late"))).await;
        assert_eq!(
            gateway_of(&late),
            id_b,
            "a new connection avoids the draining gateway"
        );
    }

    // Nothing lost: every client saw every seq once, in order.
    stop.store(true, Ordering::SeqCst);
    let last = poster.await.unwrap();
    assert!(last > 5);
    for (i, (cl, seen)) in clients.iter_mut().zip(seen.iter_mut()).enumerate() {
        if *seen.last().unwrap() < last {
            seen.extend(cl.seqs_until(last).await);
        }
        assert_eq!(
            *seen,
            (1..=last).collect::<Vec<_>>(),
            "client {i} ({}) saw every seq once, in order",
            gateway_of(cl)
        );
    }
}
