//! Configuration pieces both binaries share. Each service owns its own clap
//! struct and flattens these in, so a variable means the same thing in both.
//!
//! The value parsers here follow the contract's configuration rules:
//! booleans accept `true`/`false` and `1`/`0`, and a value out of its range
//! refuses to start with a message naming the variable (never a panic
//! later). Each parser is built for one variable, so clap's error carries
//! the variable's name:
//!
//! ```ignore
//! #[arg(long, env = "CHORUS_MESSAGE_RATE", value_parser = rate("CHORUS_MESSAGE_RATE"))]
//! ```

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

/// Default Redis backplane URL (the contract's loopback default).
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Whether `REDIS_URL` names a Redis Cluster: `redis-cluster://` (or
/// `valkey-cluster://`), with more seed nodes as `?node=host:port`
/// parameters. On a cluster both
/// services use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7), so a
/// publication reaches only the shard that owns its channel instead of
/// being broadcast to every node; on one Redis, classic pub/sub.
pub fn redis_is_cluster(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(scheme, _)| scheme.ends_with("-cluster"))
}

/// Refuses a `REDIS_URL` this build cannot honour: the TLS schemes
/// (`rediss://`, `rediss-cluster://`...), since no TLS client is built in,
/// and saying so at start beats a connection that never comes up.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    if scheme.starts_with("rediss") || scheme.starts_with("valkeys") {
        return Err(format!(
            "REDIS_URL: {scheme}:// needs TLS, which this build does not include; use redis:// or redis-cluster://"
        ));
    }
    Ok(())
}

/// Slowest accepted non-zero rate (tokens per second): one per 1,000 s.
/// Slower than that a limit is a ban, and the wait a bucket reports
/// (`Retry-After`) must stay a representable duration: a rate like `1e-30`
/// would ask for a wait of 10^30 seconds.
pub const MIN_RATE: f64 = 0.001;
/// Fastest accepted rate: a million per second is beyond what one process
/// serves, so a larger limit never limits; `0` is how to turn one off.
pub const MAX_RATE: f64 = 1_000_000.0;
/// Largest accepted burst: a million requests at once is already no
/// limit, and a bucket holding more only hides a misconfiguration.
pub const MAX_BURST: u32 = 1_000_000;

/// Shortest `CHORUS_INTERNAL_TOKEN`, in characters (contract): a service
/// token any shorter is guessable.
pub const MIN_INTERNAL_TOKEN_CHARS: usize = 32;

/// Log output format (`CHORUS_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging settings.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// `text` or `json`.
    #[arg(long, env = "CHORUS_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// `CHORUS_ALLOWED_ORIGINS` as both services read it: entries trimmed,
/// empty ones dropped, a trailing `/` removed (a browser's `Origin` never
/// has one, a configured URL might).
pub fn allowed_origins(configured: &[String]) -> Vec<String> {
    configured
        .iter()
        .map(|o| o.trim().trim_end_matches('/'))
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether a browser `origin` passes `allowed` (from [`allowed_origins`]):
/// listed, or `*` is listed.
pub fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.iter().any(|a| a == "*" || a == origin)
}

/// Parses `90`, `90s`, `15m`, `1h` or `2d` into a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit in {s:?} (use s, m, h or d)")),
    };
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration too large: {s:?}"))
}

/// A boolean as the contract spells them: `true`/`false` (any case) or
/// `1`/`0`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "1" => Some(true),
        "0" => Some(false),
        t if t.eq_ignore_ascii_case("true") => Some(true),
        t if t.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// A clap value parser for the boolean variable `var`. Use it with
/// `action = ArgAction::Set, num_args = 0..=1, default_missing_value =
/// "true"` so that a bare `--flag` still means true.
pub fn boolean(
    var: &'static str,
) -> impl Fn(&str) -> Result<bool, String> + Clone + Send + Sync + 'static {
    move |s| parse_bool(s).ok_or_else(|| format!("{var} must be true, false, 1 or 0, not {s:?}"))
}

/// A clap value parser for the rate variable `var` (tokens per second):
/// `0` (the limit is off) or a finite number from [`MIN_RATE`] to
/// [`MAX_RATE`].
pub fn rate(
    var: &'static str,
) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |s| {
        let r: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("{var} must be a number, not {s:?}"))?;
        if r == 0.0 || (MIN_RATE..=MAX_RATE).contains(&r) {
            Ok(r)
        } else {
            Err(format!(
                "{var} must be 0 (no limit) or from {MIN_RATE} to {MAX_RATE}, not {s:?}"
            ))
        }
    }
}

/// A clap value parser for the burst variable `var`: 1 to [`MAX_BURST`].
pub fn burst(
    var: &'static str,
) -> impl Fn(&str) -> Result<u32, String> + Clone + Send + Sync + 'static {
    integer(var, 1, MAX_BURST)
}

/// A clap value parser for the integer variable `var`, from `min` to `max`
/// inclusive. A negative number for an unsigned variable is out of range,
/// not a parse error, so the message says what is accepted.
pub fn integer<T>(
    var: &'static str,
    min: T,
    max: T,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: FromStr + PartialOrd + Display + Copy + Send + Sync + 'static,
{
    move |s| {
        s.trim()
            .parse::<T>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| format!("{var} must be an integer from {min} to {max}, not {s:?}"))
    }
}

/// Checks `CHORUS_INTERNAL_TOKEN`: at least [`MIN_INTERNAL_TOKEN_CHARS`]
/// characters (Unicode scalar values), else the service must not start.
pub fn check_internal_token(token: &str) -> Result<(), String> {
    let n = token.chars().count();
    if n < MIN_INTERNAL_TOKEN_CHARS {
        return Err(format!(
            "CHORUS_INTERNAL_TOKEN must be at least {MIN_INTERNAL_TOKEN_CHARS} characters (it has {n})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_trimmed_and_star_admits_any() {
        let list = allowed_origins(&[
            " https://a.example/ ".into(),
            "".into(),
            "http://b:8000".into(),
        ]);
        assert_eq!(list, ["https://a.example", "http://b:8000"]);
        assert!(origin_allowed(&list, "https://a.example"));
        assert!(!origin_allowed(&list, "https://evil.example"));
        assert!(origin_allowed(&["*".into()], "https://evil.example"));
    }

    #[test]
    fn cluster_urls_are_told_by_their_scheme() {
        assert!(redis_is_cluster("redis-cluster://127.0.0.1:7000"));
        assert!(redis_is_cluster(
            "redis-cluster://u:p@a:7000?node=b:7001&node=c:7002"
        ));
        assert!(check_redis_url("redis-cluster://a:7000").is_ok());
        assert!(check_redis_url("redis://a:6379").is_ok());
        assert!(check_redis_url("rediss://a:6379").is_err());
        assert!(check_redis_url("rediss-cluster://a:6379").is_err());
        assert!(redis_is_cluster("valkey-cluster://a:7000"));
        assert!(!redis_is_cluster("redis://127.0.0.1:6379"));
        assert!(!redis_is_cluster("redis-sentinel://a:26379"));
        assert!(!redis_is_cluster("127.0.0.1:6379"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5w").is_err());
    }

    #[test]
    fn booleans_accept_true_false_one_zero() {
        let p = boolean("CHORUS_NO_MIGRATE");
        for (s, v) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("false", false),
            ("False", false),
            ("0", false),
        ] {
            assert_eq!(p(s), Ok(v), "{s}");
        }
        for s in ["yes", "2", "", "on"] {
            let e = p(s).expect_err(s);
            assert!(e.contains("CHORUS_NO_MIGRATE"), "{e}");
        }
    }

    #[test]
    fn rates_are_zero_or_in_range() {
        let p = rate("CHORUS_MESSAGE_RATE");
        assert_eq!(p("0"), Ok(0.0));
        assert_eq!(p("20"), Ok(20.0));
        assert_eq!(p("0.5"), Ok(0.5));
        assert_eq!(p("0.001"), Ok(0.001));
        for s in ["1e-30", "-1", "-0.5", "NaN", "inf", "1e7", "x", ""] {
            let e = p(s).expect_err(s);
            assert!(e.contains("CHORUS_MESSAGE_RATE"), "{e}");
        }
    }

    #[test]
    fn bursts_and_integers_are_in_range() {
        let b = burst("CHORUS_MESSAGE_BURST");
        assert_eq!(b("40"), Ok(40));
        assert_eq!(b("1"), Ok(1));
        for s in ["0", "-5", "1000001", "4294967296", "1.5"] {
            let e = b(s).expect_err(s);
            assert!(e.contains("CHORUS_MESSAGE_BURST"), "{e}");
        }
        let i = integer("CHORUS_JWT_LEEWAY_S", 0u64, 3600);
        assert_eq!(i("0"), Ok(0));
        assert!(
            i("-1")
                .expect_err("negative")
                .contains("CHORUS_JWT_LEEWAY_S")
        );
        assert!(i("3601").is_err());
    }

    #[test]
    fn internal_tokens_need_32_characters() {
        assert!(check_internal_token(&"x".repeat(32)).is_ok());
        let e = check_internal_token(&"x".repeat(31)).expect_err("short");
        assert!(e.contains("CHORUS_INTERNAL_TOKEN"), "{e}");
        assert!(check_internal_token("").is_err());
        // Characters, not bytes: 31 two-byte characters are still short.
        assert!(check_internal_token(&"é".repeat(31)).is_err());
    }
}
