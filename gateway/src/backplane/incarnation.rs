//! This gateway's presence incarnation: the name its presence entries are
//! written under, and whether it can still be trusted to be alive. Both
//! backplanes keep one, so the rules exist once.
//!
//! An incarnation is alive while its heartbeat key exists; once the key is
//! gone a survivor may reap its entries at any moment, so nothing is ever
//! written under it again (the heartbeat renews the key only if it still
//! exists). Writes are also refused once the last confirmed heartbeat is
//! older than [`Liveness::trusted_for`]: the key may be about to expire
//! unseen. A refused or failed write makes the incarnation doubtful; the
//! presence upkeep then starts a new one, adds every local user again
//! under it and retires the old one, which is reaped like a dead gateway's.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use uuid::Uuid;

use crate::config::Liveness;
use crate::error::GatewayError;

use crate::sync::lock;

struct Current {
    name: Arc<str>,
    /// When the last heartbeat found alive was sent.
    confirmed: Instant,
    /// The heartbeat found the key gone: dead for good.
    lapsed: bool,
    /// Communities added to the incarnation's index.
    indexed: HashSet<Uuid>,
}

#[derive(Default)]
struct State {
    current: Option<Current>,
    /// A write failed or was refused: its outcome in Redis is unknown.
    doubtful: bool,
    /// Withdrawn (clean exit): no more writes.
    closed: bool,
}

/// The incarnation state of one gateway's backplane.
pub(super) struct Incarnation {
    gateway_id: Arc<str>,
    liveness: Liveness,
    state: Mutex<State>,
    /// Held while an incarnation is registered, so that concurrent first
    /// writes register one.
    registering: tokio::sync::Mutex<()>,
}

impl Incarnation {
    pub(super) fn new(gateway_id: &str, liveness: Liveness) -> Self {
        Incarnation {
            gateway_id: Arc::from(gateway_id),
            liveness,
            state: Mutex::new(State::default()),
            registering: tokio::sync::Mutex::new(()),
        }
    }

    pub(super) fn liveness(&self) -> Liveness {
        self.liveness
    }

    /// The current incarnation if writes may go to it.
    fn usable(&self) -> Result<Option<Arc<str>>, GatewayError> {
        let st = lock(&self.state);
        if st.closed {
            return Err(GatewayError::Backplane("presence withdrawn".into()));
        }
        match &st.current {
            None => Ok(None),
            Some(c) if !c.lapsed && c.confirmed.elapsed() < self.liveness.trusted_for() => {
                Ok(Some(c.name.clone()))
            }
            Some(_) => Err(GatewayError::Backplane(
                "presence heartbeat lapsed or unconfirmed; renewing".into(),
            )),
        }
    }

    /// The incarnation to write under, registered first (by `register`)
    /// if there is none yet.
    pub(super) async fn writable<F, Fut>(&self, register: F) -> Result<Arc<str>, GatewayError>
    where
        F: FnOnce(Arc<str>) -> Fut,
        Fut: Future<Output = Result<(), GatewayError>>,
    {
        let refused = |e| {
            self.doubt();
            e
        };
        if let Some(name) = self.usable().map_err(refused)? {
            return Ok(name);
        }
        let _registering = self.registering.lock().await;
        if let Some(name) = self.usable().map_err(refused)? {
            return Ok(name);
        }
        let name = self.fresh_name();
        let sent = Instant::now();
        register(name.clone()).await.map_err(refused)?;
        self.switch(name.clone(), sent);
        Ok(name)
    }

    /// Starts a new incarnation through `register`; returns the old one.
    pub(super) async fn renew<F, Fut>(&self, register: F) -> Result<Option<Arc<str>>, GatewayError>
    where
        F: FnOnce(Arc<str>) -> Fut,
        Fut: Future<Output = Result<(), GatewayError>>,
    {
        let _registering = self.registering.lock().await;
        if lock(&self.state).closed {
            return Err(GatewayError::Backplane("presence withdrawn".into()));
        }
        let name = self.fresh_name();
        let sent = Instant::now();
        register(name.clone()).await?;
        Ok(self.switch(name, sent))
    }

    fn switch(&self, name: Arc<str>, sent: Instant) -> Option<Arc<str>> {
        let mut st = lock(&self.state);
        st.doubtful = false;
        st.current
            .replace(Current {
                name,
                confirmed: sent,
                lapsed: false,
                indexed: HashSet::new(),
            })
            .map(|old| old.name)
    }

    /// A never-used name: the gateway id and 64 random bits.
    fn fresh_name(&self) -> Arc<str> {
        let (random, _) = Uuid::new_v4().as_u64_pair();
        Arc::from(format!("{}#{random:016x}", self.gateway_id).as_str())
    }

    /// A write's outcome is unknown: renew at the next upkeep.
    pub(super) fn doubt(&self) {
        lock(&self.state).doubtful = true;
    }

    pub(super) fn needs_renewal(&self) -> bool {
        let st = lock(&self.state);
        if st.closed {
            return false;
        }
        st.doubtful
            || st
                .current
                .as_ref()
                .is_some_and(|c| c.lapsed || c.confirmed.elapsed() >= self.liveness.trusted_for())
    }

    /// The incarnation whose heartbeat to renew (alive as far as known).
    pub(super) fn heartbeat(&self) -> Option<Arc<str>> {
        let st = lock(&self.state);
        st.current
            .as_ref()
            .filter(|c| !c.lapsed && !st.closed)
            .map(|c| c.name.clone())
    }

    /// The heartbeat sent at `sent` found `name` alive.
    pub(super) fn confirmed(&self, name: &str, sent: Instant) {
        if let Some(c) = lock(&self.state).current.as_mut()
            && *c.name == *name
            && sent > c.confirmed
        {
            c.confirmed = sent;
        }
    }

    /// The heartbeat found `name`'s key gone.
    pub(super) fn lapsed(&self, name: &str) {
        if let Some(c) = lock(&self.state).current.as_mut()
            && *c.name == *name
        {
            c.lapsed = true;
        }
    }

    /// Whether `community` still has to be added to `name`'s index.
    pub(super) fn unindexed(&self, name: &str, community: Uuid) -> bool {
        lock(&self.state)
            .current
            .as_ref()
            .is_some_and(|c| *c.name == *name && !c.indexed.contains(&community))
    }

    /// `community` is in `name`'s index.
    pub(super) fn indexed(&self, name: &str, community: Uuid) {
        if let Some(c) = lock(&self.state).current.as_mut()
            && *c.name == *name
        {
            c.indexed.insert(community);
        }
    }

    /// Refuses every later write; returns the incarnation to remove.
    pub(super) fn close(&self) -> Option<Arc<str>> {
        let mut st = lock(&self.state);
        st.closed = true;
        st.current.as_ref().map(|c| c.name.clone())
    }

    pub(super) fn gateway_id(&self) -> &str {
        &self.gateway_id
    }
}
