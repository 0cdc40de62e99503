//! Shared request state: one cheap clonable handle over everything handlers
//! need. Locks here guard plain maps and are never held across `.await`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chorus_shared::auth::{AuthUser, JwtVerifier};
use chorus_shared::ratelimit::{self, Limit};

use crate::error::ApiError;
use crate::live::LiveState;
use crate::store::Store;

/// Users whose last-written profile is remembered, so an unchanged profile
/// costs no database write. 100k entries of ~100 bytes is ~10 MiB; past it
/// the cache starts over (one extra write per active user, no harm).
pub const PROFILE_CACHE_ENTRIES: usize = 100_000;

/// Users with a live bucket, per bucket kind. Idle (full) buckets are
/// dropped when the map reaches this size, bounding memory under many
/// users: 100k entries of ~80 bytes (the user's id and 8 bytes of bucket)
/// is ~8 MiB.
pub const RATE_LIMIT_ENTRIES: usize = 100_000;

/// The two per-user write buckets of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// Message creation (`CHORUS_MESSAGE_RATE`/`_BURST`).
    Message,
    /// Every other write (`CHORUS_WRITE_RATE`/`_BURST`).
    Write,
}

impl Bucket {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Bucket::Message => "message",
            Bucket::Write => "write",
        }
    }
}

/// One bucket kind's setting: tokens per second (0: no limit) and burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSetting {
    pub rate: f64,
    pub burst: u32,
}

/// Handle to the API's shared state.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

struct Inner {
    store: Arc<dyn Store>,
    live: LiveState,
    verifier: JwtVerifier,
    internal_token: String,
    profiles: Mutex<HashMap<String, (String, Option<String>)>>,
    messages: UserRateLimiter,
    writes: UserRateLimiter,
    draining: AtomicBool,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        live: LiveState,
        verifier: JwtVerifier,
        internal_token: String,
        messages: RateSetting,
        writes: RateSetting,
    ) -> Self {
        AppState {
            inner: Arc::new(Inner {
                store,
                live,
                verifier,
                internal_token,
                profiles: Mutex::new(HashMap::new()),
                messages: UserRateLimiter::new(messages),
                writes: UserRateLimiter::new(writes),
                draining: AtomicBool::new(false),
            }),
        }
    }

    pub fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    pub fn live(&self) -> &LiveState {
        &self.inner.live
    }

    pub fn verifier(&self) -> &JwtVerifier {
        &self.inner.verifier
    }

    /// Constant-time comparison with the configured service token.
    pub fn is_internal_token(&self, presented: &str) -> bool {
        let expected = self.inner.internal_token.as_bytes();
        let presented = presented.as_bytes();
        expected.len() == presented.len()
            && expected
                .iter()
                .zip(presented)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Writes the user's profile unless this process already wrote exactly
    /// this profile.
    pub async fn remember_profile(&self, user: &AuthUser) -> Result<(), ApiError> {
        let fresh = {
            let profiles = self
                .inner
                .profiles
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            profiles
                .get(&user.id)
                .is_some_and(|(n, a)| *n == user.name && *a == user.avatar)
        };
        if fresh {
            return Ok(());
        }
        self.store()
            .upsert_user(&user.id, &user.name, user.avatar.as_deref())
            .await?;
        let mut profiles = self
            .inner
            .profiles
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if profiles.len() >= PROFILE_CACHE_ENTRIES {
            profiles.clear();
        }
        profiles.insert(user.id.clone(), (user.name.clone(), user.avatar.clone()));
        Ok(())
    }

    /// Takes one token from `user_id`'s `bucket`, or `rate_limited` with
    /// the wait rounded up to whole seconds.
    pub fn check_rate(&self, bucket: Bucket, user_id: &str) -> Result<(), ApiError> {
        let limiter = match bucket {
            Bucket::Message => &self.inner.messages,
            Bucket::Write => &self.inner.writes,
        };
        limiter.check(user_id, Instant::now()).map_err(|wait| {
            metrics::counter!("chorus_api_rate_limited_total", "bucket" => bucket.label())
                .increment(1);
            ApiError::RateLimited {
                retry_after_s: wait
                    .as_secs()
                    .saturating_add(u64::from(wait.subsec_nanos() > 0)),
            }
        })
    }
}

/// Per-user token buckets of one kind.
struct UserRateLimiter {
    limit: Limit,
    /// The origin of the buckets' clock.
    origin: Instant,
    buckets: Mutex<HashMap<String, ratelimit::Bucket>>,
}

impl UserRateLimiter {
    fn new(setting: RateSetting) -> Self {
        UserRateLimiter {
            limit: Limit::new(setting.rate, setting.burst),
            origin: Instant::now(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn check(&self, user_id: &str, now: Instant) -> Result<(), Duration> {
        if self.limit.is_unlimited() {
            return Ok(());
        }
        let now = now.saturating_duration_since(self.origin);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= RATE_LIMIT_ENTRIES && !buckets.contains_key(user_id) {
            buckets.retain(|_, b| !b.is_full(now));
        }
        buckets
            .entry(user_id.to_owned())
            .or_insert(ratelimit::Bucket::FULL)
            .try_take(&self.limit, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_is_per_user_and_reports_wait() {
        let l = UserRateLimiter::new(RateSetting {
            rate: 1.0,
            burst: 2,
        });
        let t = Instant::now();
        assert!(l.check("a", t).is_ok());
        assert!(l.check("a", t).is_ok());
        let wait = l.check("a", t).expect_err("limited");
        assert!(wait <= Duration::from_secs(1));
        assert!(l.check("b", t).is_ok());
        assert!(l.check("a", t + Duration::from_secs(1)).is_ok());
    }
}
