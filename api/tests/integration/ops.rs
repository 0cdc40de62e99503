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
