//! Request metrics stay bounded whatever clients send: 10,000 requests
//! with random methods and paths leave `/metrics` with as many series as
//! the first 1,000 did. A test binary of its own, because the Prometheus
//! recorder is process-global: no other test's requests may add series
//! while this one counts them.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

#[allow(dead_code, unused_imports)]
#[path = "integration/common.rs"]
mod common;

use std::collections::BTreeSet;

use common::*;
use reqwest::Method;

/// Requests in flight at once: enough to keep the server busy, few
/// enough for a shared two-core machine.
const CONCURRENCY: usize = 8;

/// Random bytes, from the UUID generator the tests already use.
fn random() -> [u8; 16] {
    uuid::Uuid::new_v4().into_bytes()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One request of a random method (a standard one or a made-up extension
/// method) to a random path of one of three shapes: unknown, a route with
/// a path parameter, another such route. Each (method, shape) pair always
/// gets the same status, so the label combinations are few and all appear
/// within the first thousand requests, while the raw methods and paths are
/// new every time.
fn random_request(http: &reqwest::Client, base: &str) -> reqwest::RequestBuilder {
    let r = random();
    let method = match r[0] % 9 {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::PUT,
        3 => Method::PATCH,
        4 => Method::DELETE,
        5 => Method::HEAD,
        6 => Method::OPTIONS,
        _ => Method::from_bytes(format!("X{}", hex(&r[1..5])).as_bytes()).unwrap(),
    };
    let path = match r[5] % 3 {
        0 => format!("/{}/{}", hex(&r[6..10]), hex(&r[10..16])),
        1 => format!("/api/communities/{}/members", hex(&r[6..16])),
        _ => format!("/api/messages-realtime/{}", hex(&r[6..16])),
    };
    http.request(method, format!("{base}{path}"))
}

async fn fire(api: &Api, n: usize) {
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, base) = (api.http.clone(), api.url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / CONCURRENCY {
                let resp = random_request(&http, &base).send().await.unwrap();
                assert!(
                    [401, 404, 405].contains(&resp.status().as_u16()),
                    "{}",
                    resp.status()
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The request metrics' lines of `/metrics`.
async fn request_series(api: &Api) -> Vec<String> {
    let body = api
        .http
        .get(format!("{}/metrics", api.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .filter(|l| l.starts_with("chorus_api_request"))
        .map(str::to_owned)
        .collect()
}

/// The values of label `name` in `lines`.
fn label_values(lines: &[String], name: &str) -> BTreeSet<String> {
    let key = format!("{name}=\"");
    lines
        .iter()
        .filter_map(|l| {
            let start = l.find(&key)? + key.len();
            let len = l[start..].find('"')?;
            Some(l[start..start + len].to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_methods_and_paths_do_not_grow_the_metrics() {
    let api = Api::start().await;
    fire(&api, 1_000).await;
    let after_1k = request_series(&api).await;
    fire(&api, 9_000).await;
    let after_10k = request_series(&api).await;
    assert_eq!(
        after_1k.len(),
        after_10k.len(),
        "series added between 1,000 and 10,000 requests"
    );
    assert_eq!(
        label_values(&after_10k, "route"),
        BTreeSet::from(
            [
                "/api/communities/{id}/members",
                "/api/messages-realtime/{id}",
                "unmatched"
            ]
            .map(String::from)
        ),
        "route templates only, never a raw path"
    );
    assert_eq!(
        label_values(&after_10k, "method"),
        BTreeSet::from(
            [
                "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "other"
            ]
            .map(String::from)
        ),
        "a fixed set of methods"
    );
}
