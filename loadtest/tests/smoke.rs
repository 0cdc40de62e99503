//! A few seconds of every scenario against a real stack (an API and two
//! gateways in this process, on ephemeral ports, with the Postgres and
//! Redis of `scripts/test`), asserting the delivery check: nothing lost,
//! repeated or out of order. Figures are not checked here (shared
//! machines); they are the benchmarks' business.

// Test support panics on purpose: a panic is a test failure with a reason.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chorus_loadtest::client::Proto;
use chorus_loadtest::group::Drive;
use chorus_loadtest::outcome::Outcome;
use chorus_loadtest::scenario::{self, Common, Fault, Placement};
use chorus_testkit::{INTERNAL_TOKEN, OwnRedis, SECRET, env_url, free_port, fresh_database, uid};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Stack {
    api: String,
    gateways: Vec<String>,
    metrics: Vec<String>,
    stops: Vec<oneshot::Sender<()>>,
}

fn stop_future() -> (oneshot::Sender<()>, Stop) {
    let (tx, rx) = oneshot::channel::<()>();
    (
        tx,
        Box::pin(async move {
            let _ = rx.await;
        }),
    )
}

async fn ready(admin: &str) {
    chorus_testkit::wait_until(|| async move {
        reqwest::get(format!("{admin}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// An API and two gateways on `redis`, with rate limits off (one tool
/// speaks for many users).
async fn stack(redis: &str) -> Stack {
    stack_with(redis, 1000).await
}

/// The same with the gateways' recovery window set.
async fn stack_with(redis: &str, recovery_window: i64) -> Stack {
    chorus_testkit::init_logging();
    let db = fresh_database().await;
    let api_args = match chorus_api::config::Cli::try_parse_from([
        "chorus-api",
        "serve",
        "--database-url",
        &db,
        "--redis-url",
        redis,
        "--internal-token",
        INTERNAL_TOKEN,
        "--jwt-secret",
        SECRET,
        "--message-rate",
        "0",
        "--write-rate",
        "0",
    ])
    .unwrap()
    .command
    {
        chorus_api::config::Command::Serve(a) => *a,
        other => panic!("not serve: {other:?}"),
    };
    let (api_l, api_admin) = (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let api = format!("http://{}", api_l.local_addr().unwrap());
    let api_admin_url = format!("http://{}", api_admin.local_addr().unwrap());
    let mut stops = Vec::new();
    let (tx, stop) = stop_future();
    stops.push(tx);
    tokio::spawn(chorus_api::run(
        api_args,
        chorus_api::Listeners {
            api: api_l,
            admin: api_admin,
        },
        stop,
    ));
    ready(&api_admin_url).await;
    let mut gateways = Vec::new();
    let mut metrics = Vec::new();
    for _ in 0..2 {
        let args = chorus_gateway::config::GatewayArgs::try_parse_from([
            "chorus-gateway",
            "--api-url",
            &api,
            "--api-internal-url",
            &api_admin_url,
            "--internal-token",
            INTERNAL_TOKEN,
            "--redis-url",
            redis,
            "--jwt-secret",
            SECRET,
            "--ws-command-rate",
            "0",
            "--gateway-id",
            &uid("lt-gw"),
            "--recovery-window",
            &recovery_window.to_string(),
        ])
        .unwrap();
        let (ws, admin) = (
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
        gateways.push(format!("ws://{}", ws.local_addr().unwrap()));
        let admin_url = format!("http://{}", admin.local_addr().unwrap());
        let (tx, stop) = stop_future();
        stops.push(tx);
        tokio::spawn(chorus_gateway::run(
            args,
            chorus_gateway::Listeners { ws, admin },
            stop,
        ));
        ready(&admin_url).await;
        metrics.push(format!("{admin_url}/metrics"));
    }
    Stack {
        api,
        gateways,
        metrics,
        stops,
    }
}

impl Stack {
    fn common(&self, workers: usize) -> Common {
        let progress = indicatif::MultiProgress::new();
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        Common {
            proto: Proto::Chorus,
            gateways: self.gateways.clone(),
            api: self.api.clone(),
            secret: SECRET.into(),
            watch: Vec::new(),
            workers,
            worker_exe: Some(env!("CARGO_BIN_EXE_chorus-loadtest").into()),
            gateway_metrics: self.metrics.clone(),
            content_len: 100,
            floor: None,
            progress,
            run: uid("r").replace('-', ""),
            targets: false,
            placement: Placement::Spread,
        }
    }

    fn stop(self) {
        for s in self.stops {
            let _ = s.send(());
        }
    }
}

fn assert_clean(o: &Outcome) {
    let v = &o.verdict;
    assert!(
        o.passed() && v.received > 0,
        "{}",
        chorus_loadtest::outcome::table(std::slice::from_ref(o))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connects_everyone_and_counts_their_cost() {
    let s = stack(&env_url("REDIS_URL")).await;
    let c = s.common(0);
    let o = scenario::idle(&c, 30, 5, 0.2).await.unwrap();
    // No traffic: the check is that everyone joined and nothing arrived.
    assert!(
        o.passed(),
        "{}",
        chorus_loadtest::outcome::table(std::slice::from_ref(&o))
    );
    assert_eq!((o.verdict.connections, o.verdict.received), (30, 0));
    assert_eq!(o.figures[0].value, 30.0);
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_in_worker_processes_delivers_everything_in_order() {
    let s = stack(&env_url("REDIS_URL")).await;
    // Two worker processes, from 127.0.0.2 and 127.0.0.3.
    let c = s.common(2);
    let o = scenario::traffic_scenario(&c, "fanout", 60, 30, 20.0, 1.5, None, 9.0, (None, None))
        .await
        .unwrap();
    assert_clean(&o);
    assert_eq!(
        o.verdict.received,
        60 * 30 / 2,
        "every member got every post"
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_with_socket_sends_and_typing_is_clean() {
    let s = stack(&env_url("REDIS_URL")).await;
    let c = s.common(0);
    let drive = Drive {
        send_rate: 10.0,
        typing_rate: 10.0,
        seconds: 1.5,
        content_len: 100,
    };
    let o = scenario::traffic_scenario(
        &c,
        "chat",
        40,
        10,
        20.0,
        1.5,
        Some(drive),
        15.0,
        (None, None),
    )
    .await
    .unwrap();
    assert_clean(&o);
    let typing = o
        .figures
        .iter()
        .find(|f| f.name.starts_with("typing"))
        .unwrap();
    assert!(typing.value > 0.0, "typing reached the other members");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_recovers_everything() {
    let s = stack(&env_url("REDIS_URL")).await;
    let c = s.common(0);
    let o = scenario::storm(&c, 60, 20, 30.0, 3.0).await.unwrap();
    assert_clean(&o);
    assert!(o.verdict.reconnects >= 60, "{:?}", o.verdict);
    s.stop();
}

/// With no recovery window every rejoin that missed anything is answered
/// `recovered: false`, and the clients page the HTTP history: still
/// nothing lost, and the history did the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_beyond_the_recovery_window_recovers_from_history() {
    let s = stack_with(&env_url("REDIS_URL"), 0).await;
    let c = s.common(0);
    // Two rooms at 60 POST/s: each rejoin misses a few events.
    let o = scenario::storm(&c, 40, 20, 60.0, 3.0).await.unwrap();
    assert_clean(&o);
    assert!(o.verdict.from_history > 0, "{:?}", o.verdict);
    assert_eq!(
        o.verdict.replayed, 0,
        "nothing can be replayed: {:?}",
        o.verdict
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_and_soak_steps_are_clean() {
    let s = stack(&env_url("REDIS_URL")).await;
    let c = s.common(0);
    let o = scenario::throughput(&c, 20, 10, 20.0, 20.0, 40.0, 1.0, 1_000.0)
        .await
        .unwrap();
    assert_clean(&o);
    // Whether a rate held is timing, which a shared machine decides (one
    // POST started 10 ms late ends the steps): only that the first step
    // ran and was measured is asserted.
    assert!(
        o.figures
            .iter()
            .any(|f| f.name == "at 20 POST/s offered: POST p99"),
        "{:?}",
        o.figures
    );
    let o = scenario::soak(&c, 20, 10, 10.0, 2.0, 1.0).await.unwrap();
    assert_clean(&o);
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_redis_paused_killed_and_restarted_loses_nothing() {
    let port = free_port();
    let mut redis = OwnRedis::start(port).await;
    let s = stack(&redis.url()).await;
    let c = s.common(0);
    let pid = redis.pid();
    let restart = format!(
        "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --pidfile /tmp/lt-redis-{port}.pid"
    );
    let faults = [
        Fault::parse(&format!("1=kill -STOP {pid}")).unwrap(),
        Fault::parse(&format!("2=kill -CONT {pid}")).unwrap(),
        Fault::parse(&format!("3=kill -9 {pid}")).unwrap(),
        Fault::parse(&format!("3.5={restart}")).unwrap(),
    ];
    let o = scenario::chaos(&c, 30, 10, 20.0, 6.0, &faults)
        .await
        .unwrap();
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "kill $(cat /tmp/lt-redis-{port}.pid); rm -f /tmp/lt-redis-{port}.pid"
        ))
        .status();
    redis.kill();
    assert_clean(&o);
    assert_eq!(o.notes.len(), 4, "{:?}", o.notes);
    s.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
}
