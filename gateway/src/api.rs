//! The gateway's client of the API: gateways never touch Postgres, so
//! membership, backfill and writes go through the API. Internal endpoints
//! use the service token; writes made over a socket use the user's own
//! token, so the API applies exactly the rules and rate limits of HTTP.

use chorus_shared::error::{ErrorBody, ErrorCode};
use chorus_shared::protocol::{
    CommunityAccess, EventsPage, Message, NotificationPage, SendMessage,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::{API_TIMEOUT, DEFAULT_API_CONCURRENCY};
use crate::error::GatewayError;

/// Handle to the API; cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    internal_token: String,
    /// Bounds requests in flight: a reconnect storm queues here instead of
    /// opening thousands of connections to the API.
    permits: Arc<Semaphore>,
}

impl ApiClient {
    pub fn new(base: &str, internal_token: &str) -> Result<Self, GatewayError> {
        let http = reqwest::Client::builder()
            .timeout(API_TIMEOUT)
            .pool_max_idle_per_host(DEFAULT_API_CONCURRENCY)
            .build()
            .map_err(|e| GatewayError::Config(format!("http client: {e}")))?;
        Ok(ApiClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            internal_token: internal_token.to_owned(),
            permits: Arc::new(Semaphore::new(DEFAULT_API_CONCURRENCY)),
        })
    }

    /// Community existence, head and the user's role (`not_found` if unknown).
    pub async fn access(
        &self,
        community: Uuid,
        user: &str,
    ) -> Result<CommunityAccess, GatewayError> {
        self.internal_get(format!(
            "{}/internal/communities/{community}/access/{user}",
            self.base
        ))
        .await
    }

    /// Sequenced events after `after`, oldest first.
    pub async fn events(
        &self,
        community: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<EventsPage, GatewayError> {
        self.internal_get(format!(
            "{}/internal/communities/{community}/events?after={after}&limit={limit}",
            self.base
        ))
        .await
    }

    /// `send-message` on the user's behalf.
    pub async fn send_message(
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

    /// `delete-message` on the user's behalf.
    pub async fn delete_message(&self, user_token: &str, id: Uuid) -> Result<(), GatewayError> {
        let url = format!("{}/api/messages-realtime/{id}", self.base);
        let _permit = self.permit().await?;
        let resp = self.http.delete(url).bearer_auth(user_token).send().await;
        match resp {
            Ok(r) if r.status() == StatusCode::NO_CONTENT => Ok(()),
            other => read::<serde_json::Value>(other).await.map(|_| ()),
        }
    }

    /// The user's unread notification count.
    pub async fn unread_count(&self, user_token: &str) -> Result<i64, GatewayError> {
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

impl ApiClient {
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
        self.permits
            .acquire()
            .await
            .map_err(|_| GatewayError::Unavailable("api client closed".into()))
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
