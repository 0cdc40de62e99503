//! The gateway's one error type and its single mapping to the contract:
//! an `error` frame with a contract code for command failures. (Close codes
//! are decided where connections end, see `close.rs` and `socket/`.)

use chorus_shared::error::{ErrorCode, ErrorDetail};
use chorus_shared::protocol::{ErrorFrame, ErrorTag};

/// Everything that can go wrong in the gateway.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("too many commands, slow down")]
    RateLimited,
    /// The API refused or failed a request made on the user's behalf; its
    /// code and message pass through unchanged.
    #[error("{message}")]
    Api { code: ErrorCode, message: String },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("backplane: {0}")]
    Backplane(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("i/o: {0}")]
    Io(String),
}

impl From<std::io::Error> for GatewayError {
    fn from(e: std::io::Error) -> Self {
        GatewayError::Io(e.to_string())
    }
}

impl GatewayError {
    pub fn code(&self) -> ErrorCode {
        match self {
            GatewayError::BadRequest(_) => ErrorCode::BadRequest,
            GatewayError::Forbidden(_) => ErrorCode::Forbidden,
            GatewayError::NotFound(_) => ErrorCode::NotFound,
            GatewayError::RateLimited => ErrorCode::RateLimited,
            GatewayError::Api { code, .. } => *code,
            GatewayError::Unavailable(_) | GatewayError::Backplane(_) => ErrorCode::Unavailable,
            GatewayError::Config(_) | GatewayError::Io(_) => ErrorCode::Internal,
        }
    }

    /// The `error` frame for this failure; internal details stay in the log.
    pub fn frame(&self, reference: Option<u64>) -> ErrorFrame {
        let message = match self {
            GatewayError::Unavailable(_) | GatewayError::Backplane(_) => {
                tracing::warn!(error = %self, "command failed");
                "temporarily unavailable, retry shortly".to_owned()
            }
            GatewayError::Config(_) | GatewayError::Io(_) => {
                tracing::error!(error = %self, "command failed");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        ErrorFrame {
            kind: ErrorTag::Error,
            reference,
            error: ErrorDetail {
                code: self.code(),
                message,
            },
        }
    }
}
