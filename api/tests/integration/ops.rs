//! The admin listener and graceful shutdown.

use crate::common::*;

#[tokio::test]
async fn health_readiness_metrics_and_shutdown() {
    let api = Api::start().await;
    let alice = token(&uid("alice"));
    let c = api.community(&alice, "ops", true).await;
    api.send(&alice, &c, "counted").await;

    let get = |p: &str| api.http.get(format!("{}{p}", api.admin_url)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(metrics.contains("chorus_api_requests_total"), "{metrics}");
    assert!(metrics.contains("route=\"/api/messages-realtime\""));
    // The admin endpoints are not on the public listener.
    let r = api
        .http
        .get(format!("{}/metrics", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let url = api.url.clone();
    api.stop().await.expect("graceful shutdown");
    assert!(
        reqwest::get(format!("{url}/api/communities"))
            .await
            .is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn short_secrets_and_service_tokens_refuse_to_start() {
    let listeners = || async {
        chorus_api::Listeners {
            api: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            admin: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    };
    // Nothing is touched before the checks: no database is needed.
    let mut short_secret = serve_args(&Opts::default(), "postgres://127.0.0.1:1/none");
    short_secret.no_migrate = true;
    let mut short_token = short_secret.clone();
    short_secret.jwt = chorus_shared::auth::JwtArgs::with_secret("x".repeat(31));
    short_token.internal_token = "y".repeat(31);
    for (args, var) in [
        (short_secret, "CHORUS_JWT_SECRET"),
        (short_token, "CHORUS_INTERNAL_TOKEN"),
    ] {
        // Were the value accepted, `run` would serve and stop at once: Ok.
        let r = chorus_api::run(args, listeners().await, std::future::ready(())).await;
        match r {
            Err(e @ chorus_api::error::ApiError::Config(_)) => {
                assert!(e.to_string().contains(var), "{e}");
            }
            other => panic!("{var}: expected a configuration error, got {other:?}"),
        }
    }
}

/// Clients trickling request heads neither lock others out nor hold up
/// shutdown (axum's own server has no header-read timeout and waits for
/// them forever).
#[tokio::test]
async fn trickling_clients_neither_block_others_nor_shutdown() {
    use tokio::io::AsyncWriteExt;
    let api = Api::start().await;
    let addr = api.url.trim_start_matches("http://").to_owned();
    let mut tricklers = Vec::new();
    for _ in 0..2000 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /api/communities HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        tricklers.push(s);
    }
    let alice = token(&uid("alice"));
    api.community(&alice, "still served", true).await;
    tokio::time::timeout(WAIT, api.stop())
        .await
        .expect("shutdown does not wait for half-received requests")
        .expect("graceful shutdown");
    drop(tricklers);
}
