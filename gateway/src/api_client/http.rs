//! The real API client, over HTTP. Internal endpoints are on the API's
//! admin listener and use the service token; requests on a user's behalf
//! go to its public listener with the user's own token.

use std::sync::Arc;

use async_trait::async_trait;
use chorus_shared::error::{ErrorBody, ErrorCode};
use chorus_shared::protocol::{
    AccessChecks, AccessResults, CommunityAccess, EventsPage, Message, NotificationPage,
    SendMessage,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::Api;
use super::batch::{self, AccessBatch};
use crate::error::GatewayError;

/// Requests to the API in flight at once from one gateway. Enough to keep
/// the API's two cores busy; beyond it requests queue in the gateway rather
/// than opening a connection each (a 20,000-client rejoin would otherwise
/// open thousands).
const MAX_IN_FLIGHT: usize = 64;

/// Timeout of one call to the API.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long an idle connection to the API is kept for reuse: below the
/// API's 10 s keep-alive (`chorus_shared::http::HEADER_READ_TIMEOUT`), so
/// the gateway never sends a request on a connection the API is closing.
const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest wait for a free request slot: past it the command fails with
/// `unavailable` instead of queueing behind a flood (one user's thousands
/// of joins must not starve everyone's commands). Half the request
/// timeout, so a slot normally frees within it.
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// HTTP client of the API; cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpApi {
    http: reqwest::Client,
    /// The public listener (`CHORUS_API_URL`).
    base: String,
    /// The admin listener (`CHORUS_API_INTERNAL_URL`).
    internal_base: String,
    internal_token: String,
    /// Bounds requests in flight: a reconnect storm queues here instead of
    /// opening thousands of connections to the API.
    permits: Arc<Semaphore>,
    /// Join access checks waiting for the next batch.
    access: Arc<AccessBatch>,
}

impl HttpApi {
    pub fn new(
        base: &str,
        internal_base: &str,
        internal_token: &str,
    ) -> Result<Self, GatewayError> {
        Self::with_slots(base, internal_base, internal_token, MAX_IN_FLIGHT)
    }

    /// A client with `slots` requests in flight at most.
    fn with_slots(
        base: &str,
        internal_base: &str,
        internal_token: &str,
        slots: usize,
    ) -> Result<Self, GatewayError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(slots)
            .build()
            .map_err(|e| GatewayError::Config(format!("http client: {e}")))?;
        Ok(HttpApi {
            http,
            base: base.trim_end_matches('/').to_owned(),
            internal_base: internal_base.trim_end_matches('/').to_owned(),
            internal_token: internal_token.to_owned(),
            permits: Arc::new(Semaphore::new(slots)),
            access: Arc::default(),
        })
    }

    /// Sends queued access checks in batches until the queue is empty.
    async fn send_access_checks(self) {
        loop {
            let waiting = self.access.next();
            if waiting.is_empty() {
                return;
            }
            let body = AccessChecks {
                checks: waiting.iter().map(|w| w.check.clone()).collect(),
            };
            let results = async {
                let _permit = self.permit().await?;
                let answer: AccessResults = read(
                    self.http
                        .post(format!("{}/internal/access", self.internal_base))
                        .bearer_auth(&self.internal_token)
                        .json(&body)
                        .send()
                        .await,
                )
                .await?;
                Ok(answer.results)
            }
            .await;
            batch::answer(waiting, results);
        }
    }

    /// A GET on an internal endpoint with the service token.
    async fn internal_get<T: DeserializeOwned>(&self, url: String) -> Result<T, GatewayError> {
        let _permit = self.permit().await?;
        read(
            self.http
                .get(url)
                .bearer_auth(&self.internal_token)
                .send()
                .await,
        )
        .await
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, GatewayError> {
        match tokio::time::timeout(SLOT_WAIT, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(GatewayError::Unavailable("api client closed".into())),
            Err(_) => {
                metrics::counter!("chorus_gateway_api_busy_total").increment(1);
                Err(GatewayError::Unavailable("api busy".into()))
            }
        }
    }
}

#[async_trait]
impl Api for HttpApi {
    async fn access(&self, community: Uuid, user: &str) -> Result<CommunityAccess, GatewayError> {
        let (answer, start) = self.access.enqueue(community, user);
        if start {
            tokio::spawn(self.clone().send_access_checks());
        }
        // Bounded like a single request was (slot wait plus request), even
        // behind a backlog of batches.
        match tokio::time::timeout(SLOT_WAIT + REQUEST_TIMEOUT, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(GatewayError::Unavailable("access check dropped".into())),
            Err(_) => Err(GatewayError::Unavailable("access check timed out".into())),
        }
    }

    async fn events(
        &self,
        community: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<EventsPage, GatewayError> {
        self.internal_get(format!(
            "{}/internal/communities/{community}/events?after={after}&limit={limit}",
            self.internal_base
        ))
        .await
    }

    async fn send_message(
        &self,
        user_token: &str,
        body: &SendMessage,
    ) -> Result<Message, GatewayError> {
        let url = format!("{}/api/messages-realtime", self.base);
        let _permit = self.permit().await?;
        read(
            self.http
                .post(url)
                .bearer_auth(user_token)
                .json(body)
                .send()
                .await,
        )
        .await
    }

    async fn delete_message(&self, user_token: &str, id: Uuid) -> Result<(), GatewayError> {
        let url = format!("{}/api/messages-realtime/{id}", self.base);
        let _permit = self.permit().await?;
        let resp = self.http.delete(url).bearer_auth(user_token).send().await;
        match resp {
            Ok(r) if r.status() == StatusCode::NO_CONTENT => Ok(()),
            other => read::<serde_json::Value>(other).await.map(|_| ()),
        }
    }

    async fn unread_count(&self, user_token: &str) -> Result<i64, GatewayError> {
        let url = format!(
            "{}/api/notifications-broadcast?unread=true&limit=1",
            self.base
        );
        let _permit = self.permit().await?;
        let page: NotificationPage =
            read(self.http.get(url).bearer_auth(user_token).send().await).await?;
        Ok(page.unread_count)
    }
}

/// Decodes a success body, or passes the API's error code through.
async fn read<T: DeserializeOwned>(
    resp: reqwest::Result<reqwest::Response>,
) -> Result<T, GatewayError> {
    let resp = resp.map_err(|e| GatewayError::Unavailable(format!("api request: {e}")))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| GatewayError::Unavailable(format!("api response: {e}")))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes)
            .map_err(|e| GatewayError::Unavailable(format!("api response body: {e}")));
    }
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) if body.error.code != ErrorCode::Internal => Err(GatewayError::Api {
            code: body.error.code,
            message: body.error.message,
        }),
        _ if status.is_server_error() => {
            Err(GatewayError::Unavailable(format!("api answered {status}")))
        }
        _ => Err(GatewayError::Api {
            code: ErrorCode::from_http_status(status.as_u16()),
            message: format!("api answered {status}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With every slot held by a request the API never answers, the next
    /// call gives up after the slot wait, before the first one times out.
    #[tokio::test(start_paused = true)]
    async fn a_call_waits_for_a_slot_a_bounded_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let api = HttpApi::with_slots(&base, &base, "t", 1).expect("client");
        let first = {
            let api = api.clone();
            tokio::spawn(async move { api.unread_count("u").await })
        };
        while api.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let started = tokio::time::Instant::now();
        let second = api.unread_count("u").await;
        assert!(
            matches!(&second, Err(GatewayError::Unavailable(m)) if m == "api busy"),
            "{second:?}"
        );
        assert_eq!(
            started.elapsed(),
            SLOT_WAIT,
            "virtual time: exactly the slot wait"
        );
        assert!(!first.is_finished(), "the first call still holds its slot");
        first.abort();
        silent.abort();
    }

    /// Joins that arrive while a check is in flight go together: 200
    /// concurrent checks reach the API in a handful of requests, each
    /// answered with its own result.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_access_checks_share_requests() {
        use axum::routing::post;
        use chorus_shared::protocol::{AccessChecks, AccessResults};
        use std::sync::atomic::{AtomicUsize, Ordering};

        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        let app = axum::Router::new().route(
            "/internal/access",
            post(move |axum::Json(body): axum::Json<AccessChecks>| {
                let seen = seen.clone();
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    // A slow API: more checks queue behind this one.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    axum::Json(AccessResults {
                        results: body
                            .checks
                            .into_iter()
                            .map(|c| {
                                (c.user_id != "ghost").then_some(CommunityAccess {
                                    community_id: c.community_id,
                                    is_public: true,
                                    head_seq: c.user_id.len() as i64,
                                    role: None,
                                })
                            })
                            .collect(),
                    })
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let api = HttpApi::new(&base, &base, "t").expect("client");
        let community = Uuid::new_v4();
        let checks = (0..200).map(|i| {
            let api = api.clone();
            async move {
                let user = if i == 7 {
                    "ghost".to_owned()
                } else {
                    "u".repeat(i % 5 + 1)
                };
                (i, api.access(community, &user).await)
            }
        });
        for (i, r) in futures_util::future::join_all(checks).await {
            if i == 7 {
                assert!(
                    matches!(
                        r,
                        Err(GatewayError::Api {
                            code: ErrorCode::NotFound,
                            ..
                        })
                    ),
                    "{r:?}"
                );
            } else {
                let a = r.expect("answered");
                assert_eq!(
                    (a.community_id, a.head_seq),
                    (community, (i % 5 + 1) as i64)
                );
            }
        }
        let n = requests.load(Ordering::SeqCst);
        assert!((1..=20).contains(&n), "200 checks in {n} requests");
        server.abort();
    }
}
