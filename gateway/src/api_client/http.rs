//! The real API client, over HTTP. Internal endpoints are on the API's
//! admin listener and use the service token; requests on a user's behalf
//! go to its public listener with the user's own token.

use std::sync::Arc;

use async_trait::async_trait;
use chorus_shared::error::{ErrorBody, ErrorCode};
use chorus_shared::protocol::{
    CommunityAccess, EventsPage, Message, NotificationPage, SendMessage,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::Api;
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
        })
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
        self.internal_get(format!(
            "{}/internal/communities/{community}/access/{user}",
            self.internal_base
        ))
        .await
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
}
