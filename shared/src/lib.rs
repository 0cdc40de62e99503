//! `chorus-shared`: everything the API service and the gateways must agree on.
//!
//! Both services are deployed and upgraded independently, so anything that
//! crosses a process boundary lives here exactly once: the public wire types
//! ([`protocol`]), the error codes and their HTTP statuses ([`error`]), token
//! verification ([`auth`]), the backplane event envelope ([`envelope`]), and
//! the configuration and telemetry pieces both binaries share ([`config`],
//! [`telemetry`]).

pub mod auth;
pub mod config;
pub mod envelope;
pub mod error;
pub mod http;
pub mod ids;
pub mod presence;
pub mod protocol;
pub mod ratelimit;
pub mod signal;
pub mod telemetry;
pub mod time_format;
