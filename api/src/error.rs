//! The API's one error type and its single mapping to the contract: an HTTP
//! status plus the `{"error":{"code","message"}}` envelope. Database and
//! other internal details are logged here and never sent to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chorus_shared::error::{ErrorBody, ErrorCode};

/// Everything that can go wrong in the API service.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(&'static str),
    #[error("request body is larger than 64 KiB")]
    PayloadTooLarge,
    #[error("too many requests, retry in {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("{0}")]
    Unavailable(&'static str),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The contract code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::PayloadTooLarge => ErrorCode::PayloadTooLarge,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::Database(e) if is_unavailable(e) => ErrorCode::Unavailable,
            ApiError::Database(_)
            | ApiError::Migrate(_)
            | ApiError::Io(_)
            | ApiError::Config(_)
            | ApiError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The message a client may see: ours for client errors, a generic one
    /// for server faults (the details go to the log).
    fn public_message(&self) -> String {
        match self.code() {
            ErrorCode::Internal => "internal error".to_owned(),
            ErrorCode::Unavailable if matches!(self, ApiError::Database(_)) => {
                "the database is unavailable, retry shortly".to_owned()
            }
            _ => self.to_string(),
        }
    }

    /// The body and status for this error, shared by the HTTP edge and the
    /// idempotency store (which replays error responses too).
    pub fn body(&self) -> (StatusCode, ErrorBody) {
        let code = self.code();
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, ErrorBody::new(code, self.public_message()))
    }

    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::BadRequest(msg.into())
    }
}

fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.body();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        if let ApiError::Database(_) = self {
            metrics::counter!("chorus_api_database_errors_total").increment(1);
        }
        let mut resp = (status, axum::Json(body)).into_response();
        if let ApiError::RateLimited { retry_after_s } = self
            && let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;
