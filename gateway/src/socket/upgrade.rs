//! The WebSocket opening handshake (RFC 6455 §4.2) on an axum route.
//!
//! Done here rather than by axum's `WebSocketUpgrade` so that the socket is
//! tokio-tungstenite's own stream: axum's wrapper sends whole messages
//! only, and the writer needs to send a long one as several frames (see
//! `writer::FRAGMENT_BYTES`). The checks and the response are those of
//! RFC 6455 for HTTP/1.1 (the gateway serves no HTTP/2).

use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chorus_shared::error::{ErrorBody, ErrorCode};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// An upgraded connection.
pub type WebSocket = WebSocketStream<TokioIo<Upgraded>>;

/// A valid WebSocket upgrade request, not yet answered.
#[derive(Debug)]
pub struct WsUpgrade {
    key: HeaderValue,
    /// The subprotocols the client offered, in its order.
    offered: Vec<HeaderValue>,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket upgrade: a 400 `bad_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAnUpgrade(&'static str);

impl fmt::Display for NotAnUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl IntoResponse for NotAnUpgrade {
    fn into_response(self) -> Response {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(ErrorBody::new(ErrorCode::BadRequest, self.0)),
        )
            .into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = NotAnUpgrade;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, NotAnUpgrade> {
        check(&parts.method, &parts.headers)?;
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(NotAnUpgrade("missing Sec-WebSocket-Key"))?
            .clone();
        let offered = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|p| HeaderValue::from_bytes(p.trim_ascii()).ok())
            .collect();
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(NotAnUpgrade("this connection cannot be upgraded"))?;
        Ok(WsUpgrade {
            key,
            offered,
            on_upgrade,
        })
    }
}

/// The request-line and header checks of RFC 6455 §4.2.1.
fn check(method: &Method, headers: &HeaderMap) -> Result<(), NotAnUpgrade> {
    if method != Method::GET {
        return Err(NotAnUpgrade("a WebSocket upgrade is a GET"));
    }
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") {
        return Err(NotAnUpgrade("expected Connection: upgrade"));
    }
    if !has_token(header::UPGRADE, "websocket") {
        return Err(NotAnUpgrade("expected Upgrade: websocket"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(NotAnUpgrade("expected Sec-WebSocket-Version: 13"));
    }
    Ok(())
}

impl WsUpgrade {
    /// The first of `ours` (in our order of preference) the client offered.
    pub fn select(&self, ours: &[&'static str]) -> Option<&'static str> {
        ours.iter()
            .copied()
            .find(|p| self.offered.iter().any(|o| o.as_bytes() == p.as_bytes()))
    }

    /// Answers 101 Switching Protocols and runs `serve` on the socket in a
    /// task of its own once hyper hands the connection over.
    pub fn on_upgrade<F, Fut>(
        self,
        protocol: Option<&'static str>,
        config: WebSocketConfig,
        serve: F,
    ) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        // The handshake's state (hyper's pending upgrade, the config, and
        // `serve` until called) lives in a boxed future, freed once the
        // connection starts: a task keeps its captures for its whole life,
        // and every idle connection would carry them.
        let opening = Box::pin(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    let socket =
                        WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                    Some(serve(socket))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    None
                }
            }
        });
        tokio::spawn(async move {
            if let Some(connection) = opening.await {
                connection.await;
            }
        });
        let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let h = r.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(self.key.as_bytes())) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(p) = protocol {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    const GOOD: &[(&str, &str)] = &[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
    ];

    #[test]
    fn accepts_what_browsers_send() {
        assert_eq!(check(&Method::GET, &headers(GOOD)), Ok(()));
    }

    #[test]
    fn refuses_what_is_not_an_upgrade() {
        assert!(check(&Method::POST, &headers(GOOD)).is_err());
        assert!(
            check(&Method::GET, &headers(&GOOD[1..])).is_err(),
            "no Connection"
        );
        assert!(
            check(&Method::GET, &headers(&[GOOD[0], GOOD[2]])).is_err(),
            "no Upgrade"
        );
        assert!(
            check(
                &Method::GET,
                &headers(&[GOOD[0], GOOD[1], ("sec-websocket-version", "8")])
            )
            .is_err(),
            "old version"
        );
        assert!(
            check(
                &Method::GET,
                &headers(&[("connection", "upgraded"), GOOD[1], GOOD[2]])
            )
            .is_err(),
            "a token, not a substring"
        );
    }
}
