//! [`Gateway`]: the state every request and connection shares, as one
//! cheap clonable handle. It owns the services the gateway uses (the API
//! client, the backplane) and hands them to the layers that need them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use chorus_shared::auth::JwtVerifier;
use chorus_shared::protocol::GatewayStatus;
use chrono::{DateTime, Utc};

use crate::api_client::Api;
use crate::backplane::Backplane;
use crate::hub::Hub;
use crate::socket::SocketConfig;

/// What the gateway checks at the upgrade and when draining.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Browser origins allowed to connect (empty: any).
    pub allowed_origins: Vec<String>,
    /// Frames a connection may have queued before a 4009 close.
    pub outbound_queue: usize,
    /// Seconds to spread reconnect closes over when draining.
    pub drain_seconds: u64,
    /// Most open connections: WebSockets plus connections not yet
    /// upgraded.
    pub max_connections: usize,
    /// Most connections per user (0: no cap).
    pub max_connections_per_user: u32,
    /// Most communities one connection may be in.
    pub max_joins: usize,
    /// Connections the HTTP server is serving (not yet upgraded).
    pub pending: Arc<AtomicUsize>,
}

struct Inner {
    id: String,
    hub: Hub,
    api: Arc<dyn Api>,
    backplane: Arc<dyn Backplane>,
    verifier: JwtVerifier,
    admission: Admission,
    socket: Arc<SocketConfig>,
    draining: AtomicBool,
    started_at: DateTime<Utc>,
}

/// Shared gateway state; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("id", &self.inner.id)
            .field("hub", &self.inner.hub)
            .finish_non_exhaustive()
    }
}

/// Everything a [`Gateway`] is made of.
#[derive(Debug)]
pub struct Parts {
    pub id: String,
    pub hub: Hub,
    pub api: Arc<dyn Api>,
    pub backplane: Arc<dyn Backplane>,
    pub verifier: JwtVerifier,
    pub admission: Admission,
    pub socket: SocketConfig,
}

impl Gateway {
    pub fn new(parts: Parts) -> Self {
        Gateway {
            inner: Arc::new(Inner {
                id: parts.id,
                hub: parts.hub,
                api: parts.api,
                backplane: parts.backplane,
                verifier: parts.verifier,
                admission: parts.admission,
                socket: Arc::new(parts.socket),
                draining: AtomicBool::new(false),
                started_at: Utc::now(),
            }),
        }
    }

    /// This gateway's id in the registry.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub fn api(&self) -> &dyn Api {
        self.inner.api.as_ref()
    }

    pub fn backplane(&self) -> &dyn Backplane {
        self.inner.backplane.as_ref()
    }

    pub fn verifier(&self) -> &JwtVerifier {
        &self.inner.verifier
    }

    pub fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    pub fn socket_config(&self) -> &Arc<SocketConfig> {
        &self.inner.socket
    }

    /// Stops admitting connections; `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Ready for new clients: not draining, the backplane delivers, and
    /// no room has been unable to repair its sequence for long.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.inner.backplane.is_live() && !self.hub().is_repair_stalled()
    }

    /// Whether one more connection would exceed the cap. The asking
    /// connection is itself among the pending ones.
    pub fn is_full(&self) -> bool {
        let pending = self.inner.admission.pending.load(Ordering::SeqCst);
        self.hub().connections() + pending.saturating_sub(1) >= self.inner.admission.max_connections
    }

    /// The registry report for `/api/socket-status`.
    pub fn status(&self) -> GatewayStatus {
        GatewayStatus {
            id: self.inner.id.clone(),
            connections: self.hub().connections() as u64,
            started_at: self.inner.started_at,
        }
    }
}
