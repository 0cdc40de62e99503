//! Test harness: fresh databases, in-process API servers, HTTP helpers,
//! Redis subscribers.

use std::net::SocketAddr;
use std::time::Duration;

use chorus_api::config::{DbArgs, ServeArgs};
use chorus_api::error::ApiError;
use chorus_shared::auth::JwtArgs;
use chorus_shared::config::{LogArgs, LogFormat};
use chorus_shared::envelope::Envelope;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use serde_json::Value as Json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use chorus_testkit::{
    INTERNAL_TOKEN, SECRET, WAIT, env_url, fresh_database, official, token, uid,
};

/// Options for a test API.
#[derive(Debug, Clone)]
pub struct Opts {
    pub message_rate: f64,
    pub message_burst: u32,
    pub write_rate: f64,
    pub write_burst: u32,
    pub redis_url: String,
    pub database_url: Option<String>,
    /// `CHORUS_ALLOWED_ORIGINS`.
    pub allowed_origins: Vec<String>,
    /// `CHORUS_WEB_DIR`.
    pub web_dir: Option<std::path::PathBuf>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            message_rate: 0.0,
            message_burst: 40,
            write_rate: 0.0,
            write_burst: 100,
            redis_url: env_url("REDIS_URL"),
            database_url: None,
            allowed_origins: Vec::new(),
            web_dir: None,
        }
    }
}

/// Settings of a test API over `database_url`.
pub fn serve_args(opts: &Opts, database_url: &str) -> ServeArgs {
    ServeArgs {
        addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        db: DbArgs {
            database_url: database_url.to_owned(),
            db_max_connections: 20,
        },
        redis_url: opts.redis_url.clone(),
        internal_token: INTERNAL_TOKEN.into(),
        jwt: JwtArgs::with_secret(SECRET),
        message_rate: opts.message_rate,
        message_burst: opts.message_burst,
        write_rate: opts.write_rate,
        write_burst: opts.write_burst,
        no_migrate: false,
        post_linger_ms: chorus_api::config::DEFAULT_POST_LINGER_MS,
        worker_threads: chorus_api::config::DEFAULT_API_WORKER_THREADS,
        allowed_origins: opts.allowed_origins.clone(),
        web_dir: opts.web_dir.clone(),
        log: LogArgs {
            log_format: LogFormat::Text,
        },
    }
}

/// An in-process API server.
pub struct Api {
    pub url: String,
    pub admin_url: String,
    pub database_url: String,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ApiError>>>,
}

/// An HTTP response, body parsed as JSON (`Null` when empty).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Json,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    /// The contract error code of an error response.
    pub fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error envelope>")
    }
}

impl Api {
    pub async fn start() -> Api {
        Api::start_with(Opts::default()).await
    }

    pub async fn start_with(opts: Opts) -> Api {
        chorus_testkit::init_logging();
        let database_url = match opts.database_url.clone() {
            Some(u) => u,
            None => fresh_database().await,
        };
        let args = serve_args(&opts, &database_url);
        let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (url, admin_url) = (
            base(api.local_addr().unwrap()),
            base(admin.local_addr().unwrap()),
        );
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(chorus_api::run(
            args,
            chorus_api::Listeners { api, admin },
            async move {
                let _ = rx.await;
            },
        ));
        let api = Api {
            url,
            admin_url,
            database_url,
            http: reqwest::Client::new(),
            stop: Some(tx),
            task: Some(task),
        };
        // Ready once migrations ran and the listener serves.
        for _ in 0..200 {
            if let Ok(r) = api
                .http
                .get(format!("{}/readyz", api.admin_url))
                .send()
                .await
                && r.status() == 200
            {
                return api;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("test API did not become ready");
    }

    /// Triggers graceful shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), ApiError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => t.await.expect("api task panicked"),
            None => Ok(()),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Json>,
    ) -> Resp {
        let mut req = self.http.request(method, format!("{}{}", self.url, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        into_resp(req.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: Json) -> Resp {
        self.call(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        self.call(reqwest::Method::DELETE, path, Some(token), None)
            .await
    }

    /// Creates a community owned by `token`'s user; returns its id.
    pub async fn community(&self, token: &str, name: &str, public: bool) -> String {
        let r = self
            .post(
                "/api/communities",
                token,
                serde_json::json!({"name": name, "isPublic": public}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.body["id"].as_str().unwrap().to_owned()
    }

    /// Adds `user` to the community as its owner `owner`.
    pub async fn add(&self, owner: &str, community: &str, user: &str) {
        let r = self
            .post(
                &format!("/api/communities/{community}/members"),
                owner,
                serde_json::json!({"userId": user}),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }

    /// Posts a message mentioning `user` (the full path: a notification
    /// is written with it); returns the created message JSON.
    pub async fn send_mentioning(&self, token: &str, community: &str, user: &str) -> Json {
        let r = self
            .post(
                "/api/messages-realtime",
                token,
                serde_json::json!({"communityId": community, "content": "hi @bob", "mentions": [user]}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.body
    }

    /// Posts a message; returns the created message JSON.
    pub async fn send(&self, token: &str, community: &str, content: &str) -> Json {
        let r = self
            .post(
                "/api/messages-realtime",
                token,
                serde_json::json!({"communityId": community, "content": content}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.body
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub async fn into_resp(r: reqwest::Response) -> Resp {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.expect("body read");
    let body = if bytes.is_empty() {
        Json::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&bytes).into()))
    };
    Resp {
        status,
        body,
        headers,
    }
}

fn base(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// A Redis subscriber on `channels`, resubscribing after reconnects.
pub struct Sub {
    /// Held so the subscription lives as long as the `Sub`.
    _client: SubscriberClient,
    rx: tokio::sync::broadcast::Receiver<fred::types::Message>,
}

impl Sub {
    pub async fn new(redis_url: &str, channels: &[String]) -> Sub {
        Sub::start(redis_url, channels, false).await
    }

    /// A sharded subscriber (`SSUBSCRIBE`) on one Redis Cluster node's own
    /// channels, over a plain connection to that node.
    pub async fn sharded(node_url: &str, channels: &[String]) -> Sub {
        Sub::start(node_url, channels, true).await
    }

    async fn start(redis_url: &str, channels: &[String], sharded: bool) -> Sub {
        let config = Config::from_url(redis_url).unwrap();
        let client = Builder::from_config(config)
            .with_performance_config(|p| p.broadcast_channel_capacity = 100_000)
            .set_policy(ReconnectPolicy::new_constant(0, 100))
            .build_subscriber_client()
            .unwrap();
        client.init().await.expect("redis connect");
        drop(client.manage_subscriptions());
        let rx = client.message_rx();
        if sharded {
            client.ssubscribe(channels.to_vec()).await
        } else {
            client.subscribe(channels.to_vec()).await
        }
        .expect("subscribe");
        Sub {
            _client: client,
            rx,
        }
    }

    /// The next envelope, decoded, with its channel.
    pub async fn next(&mut self) -> (String, Envelope) {
        let msg = tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("an event within the wait")
            .expect("subscriber open");
        let bytes = msg.value.as_bytes().expect("binary payload").to_vec();
        (
            msg.channel.to_string(),
            Envelope::decode(&bytes).expect("decodes"),
        )
    }
}
