//! Command line and environment configuration of `chorus-api`, following the
//! contract's configuration table. Every default works on one machine's
//! loopback.

use std::net::SocketAddr;
use std::time::Duration;

use chorus_shared::auth::{JwtArgs, Role};
use chorus_shared::config::{DEFAULT_REDIS_URL, LogArgs, parse_duration};

/// Default Postgres URL (the contract's loopback default).
pub const DEFAULT_DATABASE_URL: &str = "postgres://chorus:chorus@127.0.0.1:5432/chorus";

/// Default pool size: enough to keep two cores busy with short
/// transactions, small enough that several API replicas fit under
/// Postgres's default `max_connections` of 100.
pub const DEFAULT_DB_MAX_CONNECTIONS: u32 = 16;

/// Default message writes per user per second (contract default).
pub const DEFAULT_MESSAGE_RATE: f64 = 20.0;
/// Default burst of message writes per user (contract default).
pub const DEFAULT_MESSAGE_BURST: u32 = 40;

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
}

/// Postgres connection settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    /// Postgres connection URL.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Largest number of pooled Postgres connections.
    #[arg(long, env = "CHORUS_DB_MAX_CONNECTIONS", default_value_t = DEFAULT_DB_MAX_CONNECTIONS)]
    pub db_max_connections: u32,
}

/// `chorus-api serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Public HTTP listener.
    #[arg(long, env = "CHORUS_API_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Admin listener: /healthz, /readyz, /metrics.
    #[arg(long, env = "CHORUS_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub db: DbArgs,
    /// Redis backplane URL.
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// Service token gateways present to /internal/* endpoints.
    #[arg(long, env = "CHORUS_INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: String,
    #[command(flatten)]
    pub jwt: JwtArgs,
    /// Message writes per user per second; 0 turns the limit off.
    #[arg(long, env = "CHORUS_MESSAGE_RATE", default_value_t = DEFAULT_MESSAGE_RATE)]
    pub message_rate: f64,
    /// Burst of message writes per user.
    #[arg(long, env = "CHORUS_MESSAGE_BURST", default_value_t = DEFAULT_MESSAGE_BURST)]
    pub message_burst: u32,
    /// Do not run migrations at start.
    #[arg(long, env = "CHORUS_NO_MIGRATE")]
    pub no_migrate: bool,
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
