//! Test support for the integration tests of `chorus-api` and
//! `chorus-gateway` (a dev-dependency only). The servers under test are
//! real: Postgres and Redis come from `scripts/test` through `DATABASE_URL`
//! and `REDIS_URL`, and a test that must kill Redis owns its own
//! `redis-server` process.

// Test support panics on purpose: a panic is a test failure with a reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chorus_shared::auth::{Role, claims_for, mint_hs256};
use sqlx::Connection;

mod cluster;

pub use cluster::{CLUSTER_NODE_TIMEOUT_MS, RedisCluster};

/// HS256 secret every test server and token uses (at least 32 bytes, as
/// the services require).
pub const SECRET: &str = "chorus-test-secret-0123456789abcdef";
/// Service token of test APIs and gateways (at least 32 characters, as the
/// services require).
pub const INTERNAL_TOKEN: &str = "chorus-test-internal-token-0123456789";
/// Bound for anything a test waits for; never a performance assertion.
pub const WAIT: Duration = Duration::from_secs(20);

/// Logs of the servers a test runs, captured with the test's output (shown
/// when it fails). `RUST_LOG` applies; default `warn`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A URL from the environment `scripts/test` prepares.
pub fn env_url(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with scripts/test"))
}

/// Creates an empty database next to `DATABASE_URL`'s and returns its URL.
pub async fn fresh_database() -> String {
    let admin = env_url("DATABASE_URL");
    let name = format!("chorus_t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to DATABASE_URL");
    sqlx::query(&format!("create database {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let (base, _) = admin
        .rsplit_once('/')
        .expect("DATABASE_URL names a database");
    format!("{base}/{name}")
}

/// A member's token for `sub`, named "`sub` name".
pub fn token(sub: &str) -> String {
    mint_hs256(
        SECRET,
        &claims_for(sub, Some(&format!("{sub} name")), Role::Member, 3600),
    )
    .unwrap()
}

/// An official's token.
pub fn official(sub: &str) -> String {
    mint_hs256(SECRET, &claims_for(sub, None, Role::Official, 3600)).unwrap()
}

/// A user id unique to this run.
pub fn uid(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// First port [`free_port`] hands out: below Linux's default ephemeral
/// range (`ip_local_port_range`, 32768-60999), where the kernel picks the
/// source ports of outgoing connections.
const FIRST_TEST_PORT: u16 = 20_000;
/// How many ports [`free_port`] cycles through (20000-31999).
const TEST_PORTS: u16 = 12_000;

/// A TCP port on 127.0.0.1 for a server a test starts as a process: free
/// when asked, never handed out twice by this test process, and outside
/// the ephemeral range. A port the kernel picked (`bind(0)`) is free only
/// until a test's thousands of outgoing connections take it as a source
/// port, which they can before the server binds it; a port below the
/// range is never taken that way. Each test process starts at its own
/// offset, so two at once rarely meet (and a taken port is skipped).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let offset = u16::try_from(std::process::id() % u32::from(TEST_PORTS)).unwrap_or(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % TEST_PORTS;
        let port = FIRST_TEST_PORT + (offset + n) % TEST_PORTS;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `f` until it is true, up to [`WAIT`].
pub async fn wait_until<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not met within {WAIT:?}");
}

/// The value of the series `name` (without labels, or its first labelled
/// one) in a Prometheus text exposition; `None` when it is not exported.
pub fn metric_value(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            return None;
        }
        rest.rsplit(' ').next()?.trim().parse().ok()
    })
}

/// How many times Redis ran `command`, read from the text of its `INFO
/// commandstats` (0 when it never ran).
pub fn command_calls(commandstats: &str, command: &str) -> u64 {
    let key = format!("cmdstat_{command}:calls=");
    commandstats
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Sends `signal` (`-STOP`, `-CONT`, ...) to process `pid` with kill(1).
pub fn signal(pid: u32, signal: &str) {
    // kill(1) with 0 would signal the test's own process group.
    assert_ne!(pid, 0, "no process to send {signal} to");
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill on PATH")
        .success();
    assert!(ok, "kill {signal} {pid}");
}

/// A `redis-server` owned by one test, on its own port, killed on drop.
#[derive(Debug)]
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    /// Starts a server on `port` and waits until it accepts connections.
    pub async fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let r = OwnRedis {
            port,
            child: Some(child),
        };
        wait_until(|| async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id, for tests that signal it (0 once killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing
    /// answers, like a stalled host.
    pub fn pause(&self) {
        signal(self.pid(), "-STOP");
    }

    /// Thaws a server frozen by [`OwnRedis::pause`].
    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
    }

    /// Kills the server (like a crash: no shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Postgres session advisory lock, held until [`AdvisoryLock::release`]:
/// tests take the outbox publisher's lock to decide when events go out.
#[derive(Debug)]
pub struct AdvisoryLock {
    conn: sqlx::PgConnection,
}

impl AdvisoryLock {
    pub async fn take(db: &str, key: i64) -> AdvisoryLock {
        let mut conn = sqlx::PgConnection::connect(db).await.unwrap();
        sqlx::query("select pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut conn)
            .await
            .unwrap();
        AdvisoryLock { conn }
    }

    /// The locked session, for queries that must see the same state.
    pub fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.conn
    }

    pub async fn release(mut self) {
        sqlx::query("select pg_advisory_unlock_all()")
            .execute(&mut self.conn)
            .await
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_value_reads_only_the_named_series() {
        let text = "# TYPE a_total counter\na_total_more 9\na_total 3\nb{kind=\"x\"} 2.5\n";
        assert_eq!(metric_value(text, "a_total"), Some(3.0), "not a_total_more");
        assert_eq!(metric_value(text, "b"), Some(2.5));
        assert_eq!(metric_value(text, "c"), None);
    }

    #[test]
    fn command_calls_reads_commandstats() {
        let stats = "# Commandstats\r\ncmdstat_ping:calls=7,usec=3,usec_per_call=0.43\r\ncmdstat_publish:calls=12,usec=9\r\n";
        assert_eq!(command_calls(stats, "ping"), 7);
        assert_eq!(command_calls(stats, "publish"), 12);
        assert_eq!(command_calls(stats, "get"), 0);
    }
}
