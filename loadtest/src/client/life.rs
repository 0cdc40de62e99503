//! One connection's life, whatever the protocol: connect, join, read
//! until told otherwise; after the server closes it (or fails), reconnect
//! to the next gateway with backoff and rejoin; after a storm, drop the
//! socket like a network failure and rejoin at once. The protocols
//! ([`super::chorus`], [`super::socketio`]) only supply a [`Session`]'s
//! connect, join and read loop.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::{ClientSpec, ConnState, Control, Env, Proto, Shared, backoff};

/// Failed connects in a row after which a connection that never joined
/// gives up (and counts as failed): the servers are refusing it.
const MAX_FIRST_ATTEMPTS: u32 = 3;

/// What a group asks one connection to send.
#[derive(Debug, Clone)]
pub enum Op {
    /// `send-message` (Chorus) or nothing (peers have no such command).
    Send {
        community: String,
        content: String,
    },
    Typing {
        community: String,
        on: bool,
    },
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connect: {0}")]
    Connect(String),
    /// The server closed the socket: its close code and reason, or
    /// nothing when the stream ended without a close frame.
    #[error("closed by the server{}", close_text(.0))]
    Closed(Option<(u16, String)>),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

fn close_text(close: &Option<(u16, String)>) -> String {
    match close {
        Some((code, reason)) if reason.is_empty() => format!(" with {code}"),
        Some((code, reason)) => format!(" with {code} ({reason})"),
        None => " without a close frame".into(),
    }
}

impl ConnError {
    /// The end of a stream, from what the socket read last.
    pub fn closed(frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> Self {
        ConnError::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
    }

    /// The error's kind without per-connection detail (a refused join's
    /// frame), to count alike errors together in a report.
    pub fn kind(&self) -> String {
        match self {
            ConnError::Protocol(e) if e.starts_with("join refused") => "join refused".into(),
            e => e.to_string(),
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for ConnError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        ConnError::Connect(e.to_string())
    }
}

/// How a session ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Quit,
    Storm,
}

/// What one session (one socket's life) works with.
#[derive(Debug)]
pub struct Session<'a> {
    pub env: &'a Env,
    pub spec: &'a ClientSpec,
    pub gateway: usize,
    pub state: &'a Arc<Mutex<ConnState>>,
    pub shared: &'a Arc<Shared>,
    pub control: &'a mut watch::Receiver<Control>,
    pub ops: &'a mut mpsc::Receiver<Op>,
    /// The storm generation this connection last saw.
    pub storm: &'a mut u64,
}

impl Session<'_> {
    /// The URL of this session's gateway with `path` appended.
    pub fn url(&self, path: &str) -> String {
        let base = &self.env.ws_urls[self.gateway % self.env.ws_urls.len()];
        format!("{}{path}", base.trim_end_matches('/'))
    }

    /// Records the connect's duration (TCP, upgrade, first frame).
    pub fn connected(&self, started: Instant) {
        self.shared
            .stats()
            .connect
            .record(started.elapsed().as_micros() as u64);
    }

    /// Every community joined: counted live, and as a rejoin after a storm.
    pub fn joined(&self) {
        let stormed = {
            let mut st = lock(self.state);
            st.joined = true;
            std::mem::take(&mut st.stormed)
        };
        self.shared.joined.fetch_add(1, Ordering::Relaxed);
        if stormed {
            self.shared.rejoined.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What a change of the group's control means for this session.
    pub fn control_changed(
        &mut self,
        changed: Result<(), watch::error::RecvError>,
    ) -> Option<Exit> {
        let c = *self.control.borrow();
        if changed.is_err() || c.quit {
            return Some(Exit::Quit);
        }
        if c.storm != *self.storm {
            *self.storm = c.storm;
            return Some(Exit::Storm);
        }
        None
    }
}

pub fn lock(state: &Mutex<ConnState>) -> std::sync::MutexGuard<'_, ConnState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// One connection's life, until the group says quit.
pub async fn run(
    env: Env,
    spec: ClientSpec,
    state: Arc<Mutex<ConnState>>,
    shared: Arc<Shared>,
    mut control: watch::Receiver<Control>,
    mut ops: mpsc::Receiver<Op>,
) {
    let mut gateway = spec.gateway;
    let mut attempt = 0u32;
    let mut storm = control.borrow().storm;
    loop {
        let mut s = Session {
            env: &env,
            spec: &spec,
            gateway,
            state: &state,
            shared: &shared,
            control: &mut control,
            ops: &mut ops,
            storm: &mut storm,
        };
        let r = match env.proto {
            Proto::Chorus => super::chorus::session(&mut s).await,
            Proto::Socketio => super::socketio::session(&mut s).await,
        };
        if std::mem::replace(&mut lock(&state).joined, false) {
            shared.joined.fetch_sub(1, Ordering::Relaxed);
        }
        match r {
            Ok(Exit::Quit) => return,
            Ok(Exit::Storm) => {
                lock(&state).stormed = true;
                attempt = 0;
            }
            Err(e) => {
                if control.borrow().quit {
                    return;
                }
                shared.reconnect_reason(e.kind());
                {
                    let mut st = lock(&state);
                    if st.rooms.is_empty() && attempt >= MAX_FIRST_ATTEMPTS {
                        st.failed = Some(e.to_string());
                        return;
                    }
                }
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                // Another gateway, as a load balancer would pick.
                gateway += 1;
            }
        }
        lock(&state).reconnects += 1;
    }
}
