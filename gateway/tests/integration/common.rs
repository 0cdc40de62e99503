//! Test harness: an in-process API and gateways on ephemeral ports, and a
//! WebSocket client that speaks the contract in JSON or MessagePack. Kept
//! in one file: every test module imports it whole (`use
//! crate::common::*`), and its pieces (services, cluster, client) are
//! used together by nearly every test.

use std::collections::VecDeque;
use std::time::Duration;

use chorus_api::config::{DbArgs, ServeArgs};
use chorus_gateway::config::GatewayArgs;
use chorus_shared::auth::JwtArgs;
use chorus_shared::config::{LogArgs, LogFormat};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use chorus_testkit::{
    INTERNAL_TOKEN, SECRET, WAIT, env_url, fresh_database, official, token, uid, wait_until,
};

/// A running service started in-process, stopped through its shutdown future.
pub struct Service {
    pub url: String,
    pub admin_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Service {
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// The text of this service's `/metrics`. In-process services share
    /// the test process's one recorder: read differences, not totals.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn ready(&self) -> bool {
        reqwest::get(format!("{}/readyz", self.admin_url))
            .await
            .is_ok_and(|r| r.status() == 200)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn listeners() -> (TcpListener, TcpListener) {
    (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
}

pub async fn start_api(database_url: &str, redis_url: &str) -> Service {
    start_api_with_web(database_url, redis_url, None).await
}

/// An API that also serves a web front end from `web_dir`.
pub async fn start_api_with_web(
    database_url: &str,
    redis_url: &str,
    web_dir: Option<std::path::PathBuf>,
) -> Service {
    chorus_testkit::init_logging();
    let args = ServeArgs {
        addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        db: DbArgs {
            database_url: database_url.to_owned(),
            db_max_connections: 20,
        },
        redis_url: redis_url.to_owned(),
        internal_token: INTERNAL_TOKEN.into(),
        jwt: JwtArgs::with_secret(SECRET),
        message_rate: 0.0,
        message_burst: 40,
        write_rate: 0.0,
        write_burst: 100,
        no_migrate: false,
        post_linger_ms: chorus_api::config::DEFAULT_POST_LINGER_MS,
        worker_threads: chorus_api::config::DEFAULT_API_WORKER_THREADS,
        allowed_origins: Vec::new(),
        web_dir,
        log: LogArgs {
            log_format: LogFormat::Text,
        },
    };
    let (api, admin) = listeners().await;
    let url = format!("http://{}", api.local_addr().unwrap());
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    spawn_service(url, admin_url, move |stop| async move {
        chorus_api::run(args, chorus_api::Listeners { api, admin }, stop)
            .await
            .map_err(|e| e.to_string())
    })
    .await
}

/// Runs a service's `run` future in a task, with a shutdown future that a
/// [`Service`] resolves, and waits until it reports ready.
async fn spawn_service<F, Fut>(url: String, admin_url: String, run: F) -> Service
where
    F: FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let (tx, rx) = oneshot::channel::<()>();
    let fut = run(Box::pin(async move {
        let _ = rx.await;
    }));
    let task = tokio::spawn(async move {
        if let Err(e) = fut.await {
            panic!("service failed: {e}");
        }
    });
    let s = Service {
        url,
        admin_url,
        stop: Some(tx),
        task: Some(task),
    };
    wait_until(|| s.ready()).await;
    s
}

/// Gateway settings a test may change.
#[derive(Debug, Clone)]
pub struct GwOpts {
    pub redis_url: String,
    pub recovery_window: i64,
    pub command_rate: f64,
    pub outbound_queue: usize,
    pub drain_seconds: u64,
    pub leeway_s: u64,
    pub allowed_origins: Vec<String>,
    pub presence_limit: u64,
    pub heartbeat: Duration,
    pub idle_timeout: Duration,
    pub max_connections: Option<u64>,
    pub max_connections_per_user: u32,
    pub max_joins: usize,
    pub presence_grace_ms: u64,
    pub mass_loss_per_second: u32,
}

impl GwOpts {
    pub fn new(redis_url: &str) -> Self {
        GwOpts {
            redis_url: redis_url.to_owned(),
            recovery_window: 1000,
            command_rate: 20.0,
            outbound_queue: 256,
            drain_seconds: 1,
            leeway_s: 30,
            allowed_origins: Vec::new(),
            presence_limit: 10_000,
            heartbeat: chorus_gateway::config::DEFAULT_HEARTBEAT,
            idle_timeout: chorus_gateway::config::DEFAULT_IDLE_TIMEOUT,
            max_connections: None,
            max_connections_per_user: chorus_gateway::config::DEFAULT_MAX_CONNECTIONS_PER_USER,
            max_joins: chorus_gateway::config::DEFAULT_MAX_JOINS_PER_CONNECTION,
            presence_grace_ms: chorus_gateway::config::DEFAULT_PRESENCE_GRACE_MS,
            mass_loss_per_second: chorus_gateway::config::DEFAULT_MASS_LOSS_PER_SECOND,
        }
    }
}

pub async fn start_gateway(api: &Service, opts: GwOpts) -> Service {
    let args = gateway_args(&api.url, &api.admin_url, opts);
    let (ws, admin) = listeners().await;
    let url = format!("ws://{}/ws", ws.local_addr().unwrap());
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    spawn_service(url, admin_url, move |stop| async move {
        chorus_gateway::run(args, chorus_gateway::Listeners { ws, admin }, stop)
            .await
            .map_err(|e| e.to_string())
    })
    .await
}

/// A gateway on the given services (in-process ones, say), no API or
/// Redis of its own.
pub async fn start_gateway_on(services: chorus_gateway::Services, opts: GwOpts) -> Service {
    let args = gateway_args("http://127.0.0.1:9", "http://127.0.0.1:9", opts);
    let (ws, admin) = listeners().await;
    let url = format!("ws://{}/ws", ws.local_addr().unwrap());
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    spawn_service(url, admin_url, move |stop| async move {
        chorus_gateway::run_with(
            args,
            services,
            chorus_gateway::Listeners { ws, admin },
            stop,
        )
        .await
        .map_err(|e| e.to_string())
    })
    .await
}

fn gateway_args(api_url: &str, api_internal_url: &str, opts: GwOpts) -> GatewayArgs {
    let mut jwt = JwtArgs::with_secret(SECRET);
    jwt.jwt_leeway_s = opts.leeway_s;
    GatewayArgs {
        addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        api_url: api_url.to_owned(),
        api_internal_url: api_internal_url.to_owned(),
        internal_token: INTERNAL_TOKEN.into(),
        redis_url: opts.redis_url,
        gateway_id: Some(uid("gw")),
        allowed_origins: opts.allowed_origins,
        recovery_window: opts.recovery_window,
        drain_seconds: opts.drain_seconds,
        ws_command_rate: opts.command_rate,
        ws_command_burst: 40,
        presence_broadcast_limit: opts.presence_limit,
        outbound_queue: opts.outbound_queue,
        max_connections: opts.max_connections,
        max_connections_per_user: opts.max_connections_per_user,
        heartbeat: opts.heartbeat,
        idle_timeout: opts.idle_timeout,
        max_joins: opts.max_joins,
        presence_liveness_ms: 15_000,
        presence_grace_ms: opts.presence_grace_ms,
        mass_loss_per_second: opts.mass_loss_per_second,
        jwt,
        log: LogArgs {
            log_format: LogFormat::Text,
        },
    }
}

/// An API, two gateways and a fresh database on the shared Redis.
pub struct Cluster {
    pub db: String,
    pub api: Service,
    pub gw1: Service,
    pub gw2: Service,
    pub http: reqwest::Client,
}

impl Cluster {
    pub async fn start() -> Cluster {
        Cluster::start_with(GwOpts::new(&env_url("REDIS_URL"))).await
    }

    pub async fn start_with(opts: GwOpts) -> Cluster {
        let api_redis = opts.redis_url.clone();
        Cluster::start_on(&api_redis, opts).await
    }

    /// The API on `api_redis`, the gateways on `opts.redis_url` (the same
    /// server under another Redis user, say).
    pub async fn start_on(api_redis: &str, opts: GwOpts) -> Cluster {
        let db = fresh_database().await;
        let api = start_api(&db, api_redis).await;
        let gw1 = start_gateway(&api, opts.clone()).await;
        let gw2 = start_gateway(&api, opts).await;
        Cluster {
            db,
            api,
            gw1,
            gw2,
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api.url))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The community's online list as `user` reads it over HTTP.
    pub async fn online(&self, user: &str, community: &str) -> Value {
        let (s, p) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/communities/{community}/presence"),
                &token(user),
                None,
            )
            .await;
        assert_eq!(s, 200, "{p}");
        p["online"].clone()
    }

    /// A community owned by `owner` with `members` added; returns its id.
    pub async fn community(&self, owner: &str, members: &[&str]) -> String {
        let (s, c) = self
            .call(
                reqwest::Method::POST,
                "/api/communities",
                &token(owner),
                Some(json!({"name": "room"})),
            )
            .await;
        assert_eq!(s, 201);
        let id = c["id"].as_str().unwrap().to_owned();
        for m in members {
            let (s, _) = self
                .call(
                    reqwest::Method::POST,
                    &format!("/api/communities/{id}/members"),
                    &token(owner),
                    Some(json!({"userId": m})),
                )
                .await;
            assert_eq!(s, 200);
        }
        id
    }

    pub async fn post(&self, user: &str, community: &str, content: &str) -> Value {
        let (s, m) = self
            .call(
                reqwest::Method::POST,
                "/api/messages-realtime",
                &token(user),
                Some(json!({"communityId": community, "content": content})),
            )
            .await;
        assert_eq!(s, 201, "{m}");
        m
    }

    /// Each of `posters` posts `each` messages to `community`, one after
    /// the other, all posters at once; returns once every post is answered
    /// 201.
    pub async fn post_concurrently(&self, community: &str, posters: &[String], each: usize) {
        let mut tasks = Vec::new();
        for p in posters {
            let (http, url, t, c) = (
                self.http.clone(),
                self.api.url.clone(),
                token(p),
                community.to_owned(),
            );
            tasks.push(tokio::spawn(async move {
                for i in 0..each {
                    let r = http
                        .post(format!("{url}/api/messages-realtime"))
                        .bearer_auth(&t)
                        .json(&json!({"communityId": c, "content": format!("m{i}")}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 201);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
}

/// A contract-speaking WebSocket client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub msgpack: bool,
    next_ref: u64,
    buffered: VecDeque<Value>,
    pub ready: Value,
    /// How long a read waits for a frame.
    pub wait: Duration,
}

pub enum Enc {
    Json,
    Msgpack,
}

impl Client {
    pub async fn connect(url: &str, token: &str) -> Client {
        Client::connect_with(url, token, Enc::Json, None)
            .await
            .unwrap()
    }

    /// Connects; `Err(status)` when the upgrade is refused.
    pub async fn connect_with(
        url: &str,
        token: &str,
        enc: Enc,
        origin: Option<&str>,
    ) -> Result<Client, u16> {
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        if let Enc::Msgpack = enc {
            req.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static("chorus.v1.msgpack"),
            );
        }
        if let Some(o) = origin {
            req.headers_mut()
                .insert("origin", HeaderValue::from_str(o).unwrap());
        }
        Client::open(req, matches!(enc, Enc::Msgpack)).await
    }

    pub async fn open(
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
        msgpack: bool,
    ) -> Result<Client, u16> {
        let (ws, _) = match tokio_tungstenite::connect_async(req).await {
            Ok(x) => x,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                return Err(resp.status().as_u16());
            }
            Err(e) => panic!("connect failed: {e}"),
        };
        let mut c = Client {
            ws,
            msgpack,
            next_ref: 1,
            buffered: VecDeque::new(),
            ready: Value::Null,
            wait: WAIT,
        };
        let ready = c.next_frame().await;
        assert_eq!(ready["type"], "ready", "first frame is ready: {ready}");
        c.ready = ready;
        Ok(c)
    }

    fn encode(&self, v: &Value) -> Message {
        if self.msgpack {
            let mut buf = Vec::new();
            serde::Serialize::serialize(
                v,
                &mut rmp_serde::Serializer::new(&mut buf).with_struct_map(),
            )
            .unwrap();
            Message::Binary(buf.into())
        } else {
            Message::Text(v.to_string().into())
        }
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// Sends a command without waiting; returns its ref.
    pub async fn send(&mut self, kind: &str, data: Value) -> u64 {
        let r = self.next_ref;
        self.next_ref += 1;
        let frame = json!({"type": kind, "ref": r, "data": data});
        let m = self.encode(&frame);
        self.ws.send(m).await.unwrap();
        r
    }

    /// Sends a command and returns its answer (ack or error), keeping any
    /// other frames for `next_event`.
    pub async fn request(&mut self, kind: &str, data: Value) -> Value {
        let r = self.send(kind, data).await;
        self.answer(r).await
    }

    /// Waits for the answer to `r`.
    pub async fn answer(&mut self, r: u64) -> Value {
        loop {
            let f = self.read().await;
            if f["ref"] == r && matches!(f["type"].as_str(), Some("ack" | "error" | "pong")) {
                return f;
            }
            self.buffered.push_back(f);
        }
    }

    /// Sends a command and expects an ack; returns its data.
    pub async fn ok(&mut self, kind: &str, data: Value) -> Value {
        let a = self.request(kind, data).await;
        assert_eq!(a["type"], "ack", "{kind} acked: {a}");
        a["data"].clone()
    }

    async fn read(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(self.wait, self.ws.next())
                .await
                .expect("a frame within the wait")
                .expect("connection open")
                .expect("frame read");
            match m {
                Message::Text(t) => {
                    assert!(!self.msgpack, "text frame on a msgpack connection");
                    return serde_json::from_str(t.as_str()).unwrap();
                }
                Message::Binary(b) => {
                    assert!(self.msgpack, "binary frame on a JSON connection");
                    return rmp_serde::from_slice(&b).unwrap();
                }
                Message::Close(f) => panic!("connection closed: {f:?}"),
                _ => {}
            }
        }
    }

    async fn next_frame(&mut self) -> Value {
        match self.buffered.pop_front() {
            Some(f) => f,
            None => self.read().await,
        }
    }

    /// The next frame of any kind.
    pub async fn frame(&mut self) -> Value {
        self.next_frame().await
    }

    /// The next frame that is not an answer to a command.
    pub async fn next_event(&mut self) -> Value {
        loop {
            let f = self.next_frame().await;
            if !matches!(f["type"].as_str(), Some("ack" | "error" | "pong")) {
                return f;
            }
        }
    }

    /// The next event of type `kind`, skipping others.
    pub async fn event_of(&mut self, kind: &str) -> Value {
        loop {
            let f = self.next_event().await;
            if f["type"] == kind {
                return f;
            }
        }
    }

    /// Reads events up to the `new-message` with `content` (a marker sent
    /// after whatever must not arrive) and returns the events before it:
    /// an absence proven by order, not by waiting.
    pub async fn events_before_message(&mut self, content: &str) -> Vec<Value> {
        let mut before = Vec::new();
        loop {
            let e = self.next_event().await;
            if e["type"] == "new-message" && e["data"]["message"]["content"] == content {
                return before;
            }
            before.push(e);
        }
    }

    /// Asserts that the next event is the `new-message` with `content`.
    pub async fn next_is_message(&mut self, content: &str) {
        let e = self.next_event().await;
        assert_eq!(
            (e["type"].as_str(), e["data"]["message"]["content"].as_str()),
            (Some("new-message"), Some(content)),
            "expected the marker next, got {e}"
        );
    }

    /// Reads for `d`, answering pings; panics if anything but pings (or
    /// pongs) arrives, a close included.
    pub async fn reads_pings_for(&mut self, d: Duration) -> usize {
        let until = tokio::time::Instant::now() + d;
        let mut pings = 0;
        loop {
            match tokio::time::timeout_at(until, self.ws.next()).await {
                Err(_) => return pings,
                Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
                Ok(Some(Ok(Message::Pong(_)))) => {}
                Ok(other) => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Reads until the server closes; returns the close frame.
    /// Sends a WebSocket ping with `payload` and reads to its pong (the
    /// frames before it are kept for the next reads); the pong's payload.
    pub async fn ws_ping(&mut self, payload: &[u8]) -> Vec<u8> {
        self.ws
            .send(Message::Ping(payload.to_vec().into()))
            .await
            .expect("ping sent");
        loop {
            let m = tokio::time::timeout(self.wait, self.ws.next())
                .await
                .expect("a frame within the wait")
                .expect("connection open")
                .expect("frame read");
            match m {
                Message::Pong(p) => return p.to_vec(),
                Message::Text(t) => self
                    .buffered
                    .push_back(serde_json::from_str(t.as_str()).unwrap()),
                Message::Binary(b) => self.buffered.push_back(rmp_serde::from_slice(&b).unwrap()),
                Message::Close(f) => panic!("connection closed: {f:?}"),
                _ => {}
            }
        }
    }

    pub async fn closed(&mut self) -> Option<CloseFrame> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("closed within the wait")
            {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Reads until the server closes, counting its WebSocket pings.
    pub async fn pings_until_closed(&mut self) -> (usize, Option<CloseFrame>) {
        let until = tokio::time::Instant::now() + WAIT;
        let mut pings = 0;
        loop {
            match tokio::time::timeout_at(until, self.ws.next())
                .await
                .expect("closed within the wait")
            {
                Some(Ok(Message::Close(f))) => return (pings, f),
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (pings, None),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Let the server see the close.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while self.ws.next().await.is_some() {}
        })
        .await;
    }

    /// Joins a community and returns the ack data.
    pub async fn join(&mut self, community: &str, last_seq: Option<i64>) -> Value {
        let mut data = json!({"communityId": community});
        if let Some(l) = last_seq {
            data["lastSeq"] = json!(l);
        }
        self.ok("join-community", data).await
    }

    /// Reads sequenced events until `seq` and returns their seqs in order.
    pub async fn seqs_until(&mut self, seq: i64) -> Vec<i64> {
        let mut out = Vec::new();
        loop {
            let e = self.next_event().await;
            let s = match e["type"].as_str() {
                Some("new-message") => e["data"]["message"]["seq"].as_i64().unwrap(),
                Some("message-deleted") => e["data"]["seq"].as_i64().unwrap(),
                _ => continue,
            };
            out.push(s);
            if s >= seq {
                return out;
            }
        }
    }
}

/// Publishes `payload` on `channel` of the shared Redis (`REDIS_URL`),
/// for tests that play the API's outbox themselves: `SPUBLISH` on a Redis
/// Cluster, `PUBLISH` on one Redis, as the services do.
pub async fn publish_raw(channel: String, payload: Vec<u8>) {
    use fred::prelude::{ClientLike, PubsubInterface};
    let url = env_url("REDIS_URL");
    let redis = fred::prelude::Client::new(
        fred::prelude::Config::from_url(&url).unwrap(),
        None,
        None,
        None,
    );
    redis.init().await.unwrap();
    let _: () = if chorus_shared::config::redis_is_cluster(&url) {
        redis.spublish(channel, payload).await.unwrap()
    } else {
        redis.publish(channel, payload).await.unwrap()
    };
    redis.quit().await.unwrap();
}
