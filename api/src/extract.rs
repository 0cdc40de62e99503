//! Request extractors that turn every kind of bad input into the contract's
//! error codes instead of axum's plain-text rejections: bearer auth (with
//! the profile upsert), JSON bodies (413 over the limit, 400 when
//! malformed), query parameters, and the service token of `/internal/*`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chorus_shared::auth::{AuthError, AuthUser, bearer_token};
use chorus_shared::ids::parse_uuid;
use chorus_shared::protocol::MAX_PAGE_LIMIT;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// An authenticated user whose profile has been recorded.
#[derive(Debug)]
pub struct Authed(pub AuthUser);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or_else(|| ApiError::Unauthorized(AuthError::Missing.to_string()))?;
        let user = state
            .verifier()
            .verify(token)
            .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
        state.remember_profile(&user).await?;
        Ok(Authed(user))
    }
}

/// A JSON request body.
#[derive(Debug)]
pub struct Body<T> {
    pub value: T,
}

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let raw = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::bad_request(format!("could not read the body: {e}"))
            }
        })?;
        let value = serde_json::from_slice(&raw)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        Ok(Body { value })
    }
}

/// Query parameters as strings; handlers parse what they need.
#[derive(Debug)]
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(map) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
        Ok(Params(map))
    }
}

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// An integer parameter, `bad_request` when not an integer.
    pub fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::bad_request(format!("{name} must be an integer")))
            })
            .transpose()
    }

    /// `limit`, 1-100, `default` when absent.
    pub fn limit(&self, default: i64) -> Result<i64, ApiError> {
        self.limit_up_to(default, MAX_PAGE_LIMIT)
    }

    /// `limit`, 1-`max`, `default` when absent.
    pub fn limit_up_to(&self, default: i64, max: i64) -> Result<i64, ApiError> {
        match self.int("limit")? {
            None => Ok(default),
            Some(l) if (1..=max).contains(&l) => Ok(l),
            Some(_) => Err(ApiError::bad_request(format!(
                "limit must be between 1 and {max}"
            ))),
        }
    }

    /// A boolean flag: `true`/`1` or `false`/`0`.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false" | "0") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(_) => Err(ApiError::bad_request(format!(
                "{name} must be true or false"
            ))),
        }
    }
}

/// Parses an id the contract says is a UUID: anything else is `not_found`.
pub fn parse_id(s: &str, what: &'static str) -> Result<Uuid, ApiError> {
    parse_uuid(s).ok_or(ApiError::NotFound(what))
}

/// Admits callers presenting `CHORUS_INTERNAL_TOKEN`.
#[derive(Debug)]
pub struct Internal;

impl FromRequestParts<AppState> for Internal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ok = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .is_some_and(|t| state.is_internal_token(t));
        if ok {
            Ok(Internal)
        } else {
            Err(ApiError::Unauthorized("service token required".into()))
        }
    }
}
