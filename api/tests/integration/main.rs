//! Integration tests of the API against real Postgres and Redis (started by
//! `scripts/test`, which exports `DATABASE_URL` and `REDIS_URL`). Each test
//! runs its own in-process API on ephemeral ports over a fresh database.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

mod auth;
mod communities;
mod idempotency;
mod messages;
mod notifications;
mod ops;
mod outbox;
mod presence;
mod sequencing;
mod web;
