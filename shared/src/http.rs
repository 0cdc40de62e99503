//! The HTTP server both services run their public listeners on.
//!
//! axum's own `serve` sets no timer, so a client that trickles a request
//! head (or opens a connection and sends nothing) holds it forever, and
//! graceful shutdown waits for it. Here every connection reads its request
//! head within [`HEADER_READ_TIMEOUT`], which also bounds how long an idle
//! keep-alive connection waits for its next request; connections not yet
//! answered (or upgraded) are counted, and beyond a cap new ones are closed
//! at once; and shutdown waits for in-flight requests at most a grace
//! period, then drops what is left (half-received requests included).
//! Upgraded connections (WebSockets) leave this server's care at the
//! upgrade: their owner drains them.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long a client may take to send a whole request head, and how long
/// an idle keep-alive connection waits for its next one: far above any
/// honest client on a real network, short enough that a trickling client
/// cannot hold a connection (and a file descriptor) for long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after an accept error (out of file descriptors): the condition
/// clears as connections close, and retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Connections the owner holds that this server no longer serves
/// (upgraded WebSockets), counted against the same cap.
pub type OpenCount = Arc<dyn Fn() -> usize + Send + Sync>;

/// How a listener is served.
#[derive(Clone)]
pub struct ServeOptions {
    /// Most connections at once: those being served (request heads not yet
    /// read, requests in flight, idle keep-alives) plus `also_open`; past
    /// it, accepted sockets are closed at once.
    pub max_pending: usize,
    /// Connections that left this server at an upgrade but still hold a
    /// file descriptor.
    pub also_open: Option<OpenCount>,
    /// How long shutdown waits for in-flight requests before dropping them.
    pub shutdown_grace: Duration,
    /// Count of connections being served; shared so a caller can add it
    /// to its own connection count.
    pub pending: Arc<AtomicUsize>,
    /// Set TCP_NODELAY on accepted sockets (small frames, latency first).
    pub nodelay: bool,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("max_pending", &self.max_pending)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish_non_exhaustive()
    }
}

/// What this process can open: its open-file limit, raised to the hard
/// limit first, less `reserve` descriptors kept for everything but client
/// connections (database and Redis pools, logs, the admin listener).
pub fn connection_budget(reserve: u64) -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft))
        .unwrap_or(1024);
    usize::try_from(limit.saturating_sub(reserve).max(1)).unwrap_or(usize::MAX)
}

impl ServeOptions {
    pub fn new(max_pending: usize, shutdown_grace: Duration) -> Self {
        ServeOptions {
            max_pending,
            also_open: None,
            shutdown_grace,
            pending: Arc::new(AtomicUsize::new(0)),
            nodelay: false,
        }
    }
}

/// Decrements the pending count when a connection task ends.
struct PendingGuard(Arc<AtomicUsize>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting, asks every connection to finish its current request, and
/// returns once they have, or after the grace period.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let open = opts.pending.load(Ordering::SeqCst)
                    + opts.also_open.as_ref().map_or(0, |f| f());
                if open >= opts.max_pending {
                    metrics::counter!("chorus_http_connections_refused_total").increment(1);
                    drop(tcp);
                    continue;
                }
                if opts.nodelay {
                    let _ = tcp.set_nodelay(true);
                }
                opts.pending.fetch_add(1, Ordering::SeqCst);
                let guard = PendingGuard(opts.pending.clone());
                conns.spawn(connection(tcp, router.clone(), stop_rx.clone(), guard));
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(opts.shutdown_grace, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            left = conns.len(),
            "dropping connections still unfinished at shutdown"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

/// Serves one connection: HTTP/1 with upgrades, a header-read timeout, and
/// a graceful end when asked.
async fn connection(
    tcp: tokio::net::TcpStream,
    router: Router,
    mut stop: watch::Receiver<bool>,
    _pending: PendingGuard,
) {
    let service = TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
