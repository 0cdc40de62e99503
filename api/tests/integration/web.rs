//! What the public listener serves besides the contract: its OpenAPI
//! document, a built web front end (`CHORUS_WEB_DIR`) and CORS for
//! `CHORUS_ALLOWED_ORIGINS`.

use crate::common::*;

#[tokio::test]
async fn openapi_document_is_served_without_a_token_and_matches_the_committed_one() {
    let api = Api::start().await;
    let r = api
        .http
        .get(format!("{}/api/openapi.json", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let served: serde_json::Value = r.json().await.unwrap();
    let committed: serde_json::Value =
        serde_json::from_str(include_str!("../../openapi.json")).unwrap();
    assert_eq!(served, committed);
}

#[tokio::test]
async fn web_dir_is_served_outside_api_and_api_paths_keep_the_contract() {
    let dir = std::env::temp_dir().join(uid("chorus-web"));
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(
        dir.join("index.html"),
        "<!doctype html><title>chorus</title>",
    )
    .unwrap();
    std::fs::write(dir.join("assets/app.js"), "console.log(1)").unwrap();
    std::fs::write(dir.parent().unwrap().join("secret.txt"), "outside").unwrap();
    let api = Api::start_with(Opts {
        web_dir: Some(dir.clone()),
        ..Opts::default()
    })
    .await;
    let get = |path: &str| api.http.get(format!("{}{path}", api.url)).send();

    let index = get("/").await.unwrap();
    assert_eq!(index.status(), 200);
    let csp = index.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(index.headers()["x-content-type-options"], "nosniff");
    assert_eq!(index.headers()["referrer-policy"], "no-referrer");
    assert!(
        index
            .text()
            .await
            .unwrap()
            .contains("<title>chorus</title>")
    );
    let js = get("/assets/app.js").await.unwrap();
    assert_eq!(js.status(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    // Client-side routes get the app; nothing outside the directory leaks.
    let deep = get("/communities/some-id").await.unwrap();
    assert!(deep.text().await.unwrap().contains("<title>chorus</title>"));
    // Sent raw: an HTTP client library would resolve the dot-segments itself.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(api.url.trim_start_matches("http://"))
            .await
            .unwrap();
        s.write_all(b"GET /../secret.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let raw = String::from_utf8_lossy(&raw);
        assert!(raw.starts_with("HTTP/1.1 "), "{raw}");
        assert!(!raw.contains("outside"), "{raw}");
    }
    let escape = get("/assets/..%2f..%2fsecret.txt").await.unwrap();
    assert!(!escape.text().await.unwrap().contains("outside"));

    // The contract's API is untouched: unknown API paths are its 404.
    let alice = token(&uid("alice"));
    let r = api.get("/api/no-such-thing", &alice).await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = api.get("/api/communities", &alice).await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("content-security-policy").is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_web_dir_without_index_html_refuses_to_start() {
    let dir = std::env::temp_dir().join(uid("chorus-empty-web"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut args = serve_args(&Opts::default(), "postgres://127.0.0.1:1/none");
    args.no_migrate = true;
    args.web_dir = Some(dir.clone());
    let listeners = chorus_api::Listeners {
        api: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let e = chorus_api::run(args, listeners, std::future::ready(()))
        .await
        .expect_err("refuses");
    assert!(e.to_string().contains("CHORUS_WEB_DIR"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn cors_answers_allowed_origins_only() {
    let api = Api::start_with(Opts {
        allowed_origins: vec!["http://app.example".into()],
        ..Opts::default()
    })
    .await;
    let preflight = |origin: &'static str| {
        api.http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/api/messages-realtime", api.url),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key",
            )
            .send()
    };
    let ok = preflight("http://app.example").await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    let allowed = ok.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("idempotency-key"), "{allowed}");
    let other = preflight("http://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // A real request from an allowed origin carries the header; the API's
    // answer itself is unchanged.
    let alice = token(&uid("alice"));
    let r = api
        .http
        .get(format!("{}/api/communities", api.url))
        .header("origin", "http://app.example")
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://app.example"
    );

    // Without configuration there is no CORS at all.
    let plain = Api::start().await;
    let r = plain
        .http
        .get(format!("{}/api/communities", plain.url))
        .header("origin", "http://app.example")
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}
