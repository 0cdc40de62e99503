//! Command line and environment configuration of `chorus-api`, following the
//! contract's configuration table. Every default works on one machine's
//! loopback.

use std::net::SocketAddr;
use std::time::Duration;

use chorus_shared::auth::{JwtArgs, Role};
use chorus_shared::config::{
    DEFAULT_REDIS_URL, LogArgs, boolean, burst, integer, parse_duration, rate,
};

/// Default Postgres URL (the contract's loopback default).
pub const DEFAULT_DATABASE_URL: &str = "postgres://chorus:chorus@127.0.0.1:5432/chorus";

/// Default pool size: enough to keep two cores busy with short
/// transactions, small enough that several API replicas fit under
/// Postgres's default `max_connections` of 100.
pub const DEFAULT_DB_MAX_CONNECTIONS: u32 = 16;
/// Largest accepted pool size: ten times Postgres's default
/// `max_connections`; more connections than that only queue inside
/// Postgres.
pub const MAX_DB_MAX_CONNECTIONS: u32 = 1000;

/// Default longest the post writer waits, after the first post of a
/// batch, for more (`CHORUS_POST_LINGER_MS`, in milliseconds): none. Since
/// posts publish themselves (no publisher pass per batch), a batch of one
/// costs the write path about what the Rust peer's single insert and
/// publish cost, and latency is the peer's. Waiting 4 ms at 500 posts a
/// second makes batches of two or three and takes about 20 % off the write
/// path's CPU per POST, for about 3 ms of latency (BENCHMARKS.md, "Posts
/// that publish themselves"). A linger only applies while posts arrive
/// closer together than it (a smoothed gap); under load batches grow by
/// themselves either way.
pub const DEFAULT_POST_LINGER_MS: u64 = 0;
/// Longest accepted linger: past a few milliseconds batches stop growing
/// (a commit takes about that long) and only latency grows.
pub const MAX_POST_LINGER_MS: u64 = 50;

/// Default worker threads of the API's runtime (`CHORUS_API_WORKER_THREADS`):
/// one. An API request is short and mostly waits on Postgres and Redis;
/// what costs is its hand-offs (the handler, the post writer, the
/// publication, the database's and Redis's replies), and on two threads
/// most of them woke the other thread: at 500 POST/s one thread spent 14-17 %
/// less CPU per POST with the same latency, and held 5,000 POST/s like two
/// (BENCHMARKS.md, "The API on one thread"). An API scales by replicas.
pub const DEFAULT_API_WORKER_THREADS: usize = 1;
/// Most worker threads accepted: past the cores a machine has, more
/// threads only take turns.
pub const MAX_API_WORKER_THREADS: usize = 256;

/// Default message creations per user per second (contract default).
pub const DEFAULT_MESSAGE_RATE: f64 = 20.0;
/// Default burst of message creations per user (contract default).
pub const DEFAULT_MESSAGE_BURST: u32 = 40;
/// Default other writes per user per second (contract default).
pub const DEFAULT_WRITE_RATE: f64 = 50.0;
/// Default burst of other writes per user (contract default).
pub const DEFAULT_WRITE_BURST: u32 = 100;

#[derive(Debug, clap::Parser)]
#[command(name = "chorus-api", version, about = "Chorus API service")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the HTTP API (and its outbox publisher).
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations and exit.
    Migrate(DbArgs),
    /// Print a signed HS256 user token for development.
    Token(TokenArgs),
    /// Print the public API's OpenAPI 3.1 document (committed as
    /// `api/openapi.json`).
    Openapi,
}

/// Postgres connection settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    /// Postgres connection URL.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Largest number of pooled Postgres connections (1-1000).
    #[arg(
        long,
        env = "CHORUS_DB_MAX_CONNECTIONS",
        default_value_t = DEFAULT_DB_MAX_CONNECTIONS,
        value_parser = integer("CHORUS_DB_MAX_CONNECTIONS", 1, MAX_DB_MAX_CONNECTIONS)
    )]
    pub db_max_connections: u32,
}

/// `chorus-api serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Public HTTP listener.
    #[arg(long, env = "CHORUS_API_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Admin listener: /healthz, /readyz, /metrics and the gateways'
    /// /internal/* (cluster-internal, never routed publicly).
    #[arg(long, env = "CHORUS_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub db: DbArgs,
    /// Redis backplane: `redis://host:port` for one Redis, or
    /// `redis-cluster://host:port?node=host:port&...` for a Redis Cluster
    /// (sharded pub/sub).
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// Service token gateways present to /internal/* endpoints.
    #[arg(long, env = "CHORUS_INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: String,
    #[command(flatten)]
    pub jwt: JwtArgs,
    /// Message creations per user per second; 0 turns the limit off.
    #[arg(
        long,
        env = "CHORUS_MESSAGE_RATE",
        default_value_t = DEFAULT_MESSAGE_RATE,
        value_parser = rate("CHORUS_MESSAGE_RATE")
    )]
    pub message_rate: f64,
    /// Burst of message creations per user.
    #[arg(
        long,
        env = "CHORUS_MESSAGE_BURST",
        default_value_t = DEFAULT_MESSAGE_BURST,
        value_parser = burst("CHORUS_MESSAGE_BURST")
    )]
    pub message_burst: u32,
    /// Other writes (communities, members, joins, deletions,
    /// notifications) per user per second; 0 turns the limit off.
    #[arg(
        long,
        env = "CHORUS_WRITE_RATE",
        default_value_t = DEFAULT_WRITE_RATE,
        value_parser = rate("CHORUS_WRITE_RATE")
    )]
    pub write_rate: f64,
    /// Burst of other writes per user.
    #[arg(
        long,
        env = "CHORUS_WRITE_BURST",
        default_value_t = DEFAULT_WRITE_BURST,
        value_parser = burst("CHORUS_WRITE_BURST")
    )]
    pub write_burst: u32,
    /// Do not run migrations at start (`true`/`false`/`1`/`0`; a bare flag
    /// means true).
    #[arg(
        long,
        env = "CHORUS_NO_MIGRATE",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = boolean("CHORUS_NO_MIGRATE")
    )]
    pub no_migrate: bool,
    /// Longest the post writer waits for more posts to commit together, in
    /// milliseconds (0-50; it waits only while posts arrive closer together
    /// than this): 0 for the lowest latency, more for less CPU per post.
    #[arg(
        long,
        env = "CHORUS_POST_LINGER_MS",
        default_value_t = DEFAULT_POST_LINGER_MS,
        value_parser = integer("CHORUS_POST_LINGER_MS", 0, MAX_POST_LINGER_MS)
    )]
    pub post_linger_ms: u64,
    /// Worker threads of the runtime (0-256): 1 by default (an API
    /// scales by replicas; see `DEFAULT_API_WORKER_THREADS`), 0 for one
    /// per CPU (tokio's default, which `TOKIO_WORKER_THREADS` sets).
    #[arg(
        long,
        env = "CHORUS_API_WORKER_THREADS",
        default_value_t = DEFAULT_API_WORKER_THREADS,
        value_parser = integer("CHORUS_API_WORKER_THREADS", 0, MAX_API_WORKER_THREADS)
    )]
    pub worker_threads: usize,
    /// Comma-separated browser origins that may call the API from another
    /// origin (CORS); `*` for any. Unset: same-origin pages only.
    #[arg(long, env = "CHORUS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Directory of a built web front end to serve at `/` (every path
    /// outside `/api`). Unset: none.
    #[arg(long, env = "CHORUS_WEB_DIR")]
    pub web_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub log: LogArgs,
}

/// `chorus-api token`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    pub sub: String,
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// `member` or `official`.
    #[arg(long, value_enum, default_value = "member")]
    pub role: TokenRole,
    /// Lifetime, e.g. `3600`, `90m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// HS256 secret to sign with.
    #[arg(long, env = "CHORUS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
}

/// Roles `chorus-api token` can mint.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TokenRole {
    Member,
    Official,
}

impl From<TokenRole> for Role {
    fn from(r: TokenRole) -> Role {
        match r {
            TokenRole::Member => Role::Member,
            TokenRole::Official => Role::Official,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `chorus-api serve` with the required values plus `extra`.
    fn serve(extra: &[&str]) -> Result<ServeArgs, clap::Error> {
        let mut argv = vec![
            "chorus-api",
            "serve",
            "--internal-token",
            "t",
            "--jwt-secret",
            "s",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Serve(args) => Ok(*args),
            _ => unreachable!("serve parses as serve"),
        }
    }

    #[test]
    fn defaults_follow_the_contract() {
        let a = serve(&[]).expect("parses");
        assert_eq!((a.message_rate, a.message_burst), (20.0, 40));
        assert_eq!((a.write_rate, a.write_burst), (50.0, 100));
        assert!(!a.no_migrate);
        assert_eq!(a.db.db_max_connections, DEFAULT_DB_MAX_CONNECTIONS);
        assert_eq!(a.jwt.jwt_leeway_s, 30);
        assert_eq!(a.post_linger_ms, DEFAULT_POST_LINGER_MS);
        assert_eq!(a.worker_threads, 1);
    }

    #[test]
    fn booleans_take_true_false_one_zero_and_a_bare_flag() {
        for (flag, v) in [
            ("--no-migrate", true),
            ("--no-migrate=1", true),
            ("--no-migrate=true", true),
            ("--no-migrate=0", false),
            ("--no-migrate=false", false),
        ] {
            assert_eq!(serve(&[flag]).expect(flag).no_migrate, v, "{flag}");
        }
        let e = serve(&["--no-migrate=yes"]).expect_err("yes is not a boolean");
        assert!(e.to_string().contains("CHORUS_NO_MIGRATE"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_refused_naming_the_variable() {
        for (flag, var) in [
            ("--message-rate=1e-30", "CHORUS_MESSAGE_RATE"),
            ("--message-rate=-1", "CHORUS_MESSAGE_RATE"),
            ("--message-burst=-5", "CHORUS_MESSAGE_BURST"),
            ("--message-burst=0", "CHORUS_MESSAGE_BURST"),
            ("--write-rate=NaN", "CHORUS_WRITE_RATE"),
            ("--write-burst=99999999999", "CHORUS_WRITE_BURST"),
            ("--db-max-connections=0", "CHORUS_DB_MAX_CONNECTIONS"),
            ("--post-linger-ms=51", "CHORUS_POST_LINGER_MS"),
            ("--post-linger-ms=-1", "CHORUS_POST_LINGER_MS"),
            ("--worker-threads=257", "CHORUS_API_WORKER_THREADS"),
            ("--worker-threads=-1", "CHORUS_API_WORKER_THREADS"),
            ("--jwt-leeway-s=-30", "CHORUS_JWT_LEEWAY_S"),
            ("--jwt-leeway-s=86400", "CHORUS_JWT_LEEWAY_S"),
        ] {
            let e = serve(&[flag]).expect_err(flag);
            assert!(e.to_string().contains(var), "{flag}: {e}");
        }
        let a = serve(&["--message-rate=0", "--write-rate=0"]).expect("0 turns limits off");
        assert_eq!((a.message_rate, a.write_rate), (0.0, 0.0));
    }
}
