//! `chorus-loadtest`: Chorus's own load and fault tool.
//!
//! It drives a running deployment from outside, the way clients do
//! (WebSocket connections, HTTP POSTs), over several worker processes and
//! 127.0.0.x source addresses when one process's open files would not do;
//! it verifies every delivery (each committed seq once, in order, per
//! connection and community) rather than only timing it; and it attributes
//! CPU and memory to every server process from `/proc`, next to the
//! kernel's floor for one frame write measured in the same run. The same
//! scenarios speak the Socket.IO protocol of the peers in
//! `../shared/peers`, so Chorus and the service it replaces are measured
//! side by side.
//!
//! Layout: [`client`] (one connection, either protocol), [`group`] (the
//! connections of one process), [`fleet`] (groups in this or worker
//! processes), [`setup`] and [`poster`] (the world and the traffic, through
//! the API), [`procs`] and [`floor`] (costs), [`scenario`] (the runs) and
//! [`outcome`] (figures, table, JSON, HTML).

pub mod cli;
pub mod client;
pub mod compare;
pub mod fleet;
pub mod floor;
pub mod group;
pub mod hist;
pub mod outcome;
pub mod poster;
pub mod procs;
pub mod scenario;
pub mod setup;
