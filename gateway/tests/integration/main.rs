//! End-to-end tests of the gateways: a real API, two (or more) real
//! gateways, real Postgres and Redis (from `scripts/test`), and real
//! WebSocket clients.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

mod cluster;

mod connection;
mod delivery;
mod faults;
mod haproxy;
mod idle;
mod in_process;
mod limits;
mod presence;
mod redis_faults;
mod slow_consumers;
