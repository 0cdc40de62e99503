//! The WebSocket opening handshake (RFC 6455 §4.2) on an axum route.
//!
//! Done here rather than by axum's `WebSocketUpgrade` so that the socket's
//! TCP stream comes out bare: the client's frames are read off it
//! (`inbound`) and ours are written to it, with no lock between the two
//! and no buffer kept for either (see [`WebSocket`]). It checks what
//! RFC 6455 §4.2.1 asks of the request line and headers that matter to a
//! server (the method, the `Connection` and `Upgrade` tokens, version 13,
//! a key) and answers as §4.2.2 says, for HTTP/1.1 (the gateway serves no HTTP/2); it does not
//! check the key's form, which only the client's own check relies on.
//!
//! Kept whole past 450 lines, with the two halves of the upgraded stream: what the
//! handshake hands over (the socket, the bytes read past the request
//! head) is exactly what they are made of.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chorus_shared::error::{ErrorBody, ErrorCode};
use futures_util::FutureExt;
use futures_util::future::OptionFuture;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::inbound::FrameReader;

/// How long hyper may take to hand over an answered upgrade (it waits for
/// the request's body, if any, to be read): a client that never sends it
/// must not hold its connection slot, and its token's expiry unchecked,
/// for longer than it may take to send a request head.
const UPGRADE_TIMEOUT: Duration = chorus_shared::http::HEADER_READ_TIMEOUT;

/// An upgraded connection: its TCP stream, shared by the reading side and
/// the writing side.
///
/// The reading side parses and checks the client's frames itself
/// (`inbound`: masking, fragments, UTF-8, size limits). The writing side
/// is written to directly (`frame::Out`, `frame::FrameBytes`): a server
/// frame is a header of a few bytes before the payload the hub
/// encoded once for every recipient, so it goes to the kernel in one
/// `writev`, with no copy into a per-connection buffer, no lock shared
/// with the reader, and no write buffer kept for the connection's life.
/// The stream is shared rather than split into tokio's owned halves
/// because its writes are made by the writer task or, while the writer
/// has nothing to do, by the task that dispatches an event
/// (`handle/queue.rs`): both write through `&TcpStream`.
#[derive(Debug)]
pub struct WebSocket {
    pub(super) read: FrameReader,
    pub(super) write: Arc<TcpStream>,
}

/// The reading side of the stream. Only the reader reads and waits for
/// the socket to be readable; it never writes (the reader queues its
/// answer to a ping to the writer, which also sends the close).
#[derive(Debug)]
pub struct ReadHalf {
    /// What hyper read past the request head (frames a client sent
    /// together with its request), served before the socket and then
    /// freed. Boxed, and made only when there is some: every idle
    /// connection carries this field.
    early: Option<Box<bytes::Bytes>>,
    io: Arc<TcpStream>,
}

impl ReadHalf {
    #[cfg(test)]
    pub(super) fn new(io: Arc<TcpStream>) -> Self {
        ReadHalf { early: None, io }
    }

    /// As after a request whose frames came with it (tests).
    #[cfg(test)]
    pub(super) fn with_early(io: Arc<TcpStream>, early: bytes::Bytes) -> Self {
        ReadHalf {
            early: Some(Box::new(early)),
            io,
        }
    }

    /// What hyper read past the request head, once.
    pub(super) fn take_early(&mut self) -> Option<Box<bytes::Bytes>> {
        self.early.take()
    }

    /// Ready when the socket may have something to read.
    pub(super) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.poll_read_ready(cx)
    }

    /// Reads what the socket holds into `buf`'s room, without waiting
    /// (`WouldBlock` when there is nothing).
    pub(super) fn try_read_buf<B: bytes::BufMut>(&self, buf: &mut B) -> io::Result<usize> {
        self.io.try_read_buf(buf)
    }

    /// Reads what the socket holds without waiting (tests: what is left
    /// unread).
    #[cfg(test)]
    pub(super) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.try_read(buf)
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(early) = self.early.as_mut() {
            let n = early.len().min(buf.remaining());
            buf.put_slice(&early.split_to(n));
            if early.is_empty() {
                self.early = None;
            }
            return Poll::Ready(Ok(()));
        }
        // Only this task waits for the socket to be readable.
        loop {
            std::task::ready!(self.io.poll_read_ready(cx))?;
            match self.io.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The readiness was stale; `try_read` cleared it, so the
                // next poll registers for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// The writer task's side of the stream: waits for the socket to take
/// more, which only the writer does (a dispatcher writes only what the
/// socket takes at once).
#[derive(Debug)]
pub(super) struct WriteHalf(pub(super) Arc<TcpStream>);

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Shuts the stream's writing side (a FIN after the close frame); the
    /// reader goes on reading until the client's close.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

/// The writer's end shuts the writing side however the writer ended (its
/// close timed out, the socket failed), as tokio's owned half did: the
/// client sees the end of the stream while the reader lingers.
impl Drop for WriteHalf {
    fn drop(&mut self) {
        let _ = socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write);
    }
}

/// A valid WebSocket upgrade request, not yet answered.
#[derive(Debug)]
pub struct WsUpgrade {
    key: HeaderValue,
    /// The `Sec-WebSocket-Protocol` header lines as sent (hyper caps a
    /// request's header lines), split into protocols only when one is
    /// selected: no allocation per listed protocol before authentication.
    offered: Vec<HeaderValue>,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket upgrade: a 400 `bad_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAnUpgrade(&'static str);

/// The refusal of a WebSocket version other than 13, which RFC 6455 §4.4
/// answers with the version the server speaks.
const BAD_VERSION: NotAnUpgrade = NotAnUpgrade("expected Sec-WebSocket-Version: 13");

impl fmt::Display for NotAnUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl IntoResponse for NotAnUpgrade {
    fn into_response(self) -> Response {
        let mut r = (
            StatusCode::BAD_REQUEST,
            axum::Json(ErrorBody::new(ErrorCode::BadRequest, self.0)),
        )
            .into_response();
        if self == BAD_VERSION {
            r.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        r
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
            .cloned()
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
        return Err(BAD_VERSION);
    }
    Ok(())
}

impl WsUpgrade {
    /// The first of `ours` (in our order of preference) the client offered.
    pub fn select(&self, ours: &[&'static str]) -> Option<&'static str> {
        select(&self.offered, ours)
    }

    /// Answers 101 Switching Protocols and runs `serve` on the socket in a
    /// task of its own once hyper hands the connection over.
    pub fn on_upgrade<F, Fut>(
        self,
        protocol: Option<&'static str>,
        max_message: usize,
        serve: F,
    ) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        // The handshake's state (hyper's pending upgrade, the limit, and
        // `serve` until called) lives in a boxed future, freed once the
        // connection starts: a task keeps its captures for its whole life,
        // and every idle connection would carry them.
        let opening = Box::pin(async move {
            match tokio::time::timeout(UPGRADE_TIMEOUT, on_upgrade).await {
                Ok(Ok(upgraded)) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                    Ok(parts) => {
                        let stream = Arc::new(parts.io.into_inner());
                        let read = ReadHalf {
                            early: (!parts.read_buf.is_empty()).then(|| Box::new(parts.read_buf)),
                            io: stream.clone(),
                        };
                        Some(serve(WebSocket {
                            read: FrameReader::new(read, max_message),
                            write: stream,
                        }))
                    }
                    Err(_) => {
                        // `chorus_shared::http::serve` hands hyper bare TCP
                        // streams, so every connection (every integration
                        // test's too) comes through the branch above.
                        tracing::error!("an upgraded connection is not a TCP stream");
                        None
                    }
                },
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    None
                }
                Err(_) => {
                    tracing::debug!("upgrade not handed over in time");
                    None
                }
            }
        });
        // A combinator, not an `async` block: one awaiting `opening` and
        // then its output would store the connection's future twice.
        tokio::spawn(opening.then(OptionFuture::from));
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

/// The first of `ours` that the comma-separated header lines `offered`
/// list (tokens trimmed, compared exactly, as RFC 6455 §4.1 says).
fn select(offered: &[HeaderValue], ours: &[&'static str]) -> Option<&'static str> {
    ours.iter().copied().find(|p| {
        offered.iter().any(|line| {
            line.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii() == p.as_bytes())
        })
    })
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

    /// Ours are preferred in our order, wherever the client lists them, on
    /// one header line or several; tokens are whole and case-sensitive.
    #[test]
    fn selects_our_first_protocol_the_client_offers() {
        let ours = ["chorus.msgpack", "chorus.json"];
        let lines = |ls: &[&'static str]| -> Vec<HeaderValue> {
            ls.iter().map(|l| HeaderValue::from_static(l)).collect()
        };
        assert_eq!(select(&lines(&[]), &ours), None);
        assert_eq!(
            select(&lines(&["chorus.json, chorus.msgpack"]), &ours),
            Some("chorus.msgpack")
        );
        assert_eq!(
            select(&lines(&["soap", " chorus.json ,wamp"]), &ours),
            Some("chorus.json")
        );
        assert_eq!(
            select(&lines(&["chorus.jsonx", "Chorus.Json"]), &ours),
            None
        );
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
