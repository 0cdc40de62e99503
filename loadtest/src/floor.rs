//! The kernel floor, measured in the same run as the scenarios: CPU of one
//! un-batched write of a frame-sized buffer to a loopback TCP socket (what
//! a server pays at least per delivered frame if it never batches). The
//! writes go round-robin over many connections, as a fan-out's do, so each
//! one touches a socket that is cold in the cache and wakes its reader.
//! Per-delivery costs are reported as a ratio to it, which is steadier
//! across days and machines than microseconds.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use serde::Serialize;

use crate::procs::thread_cpu_s;

/// Writes per measurement: about a second of CPU on this machine, enough
/// for the 10 ms tick of `/proc` CPU accounting to be under 1 %.
const WRITES: usize = 200_000;
/// Connections written to in turn: a room's worth.
const SOCKETS: usize = 256;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Floor {
    /// Frame size written, bytes.
    pub bytes: usize,
    /// Writer-thread CPU per write, µs.
    pub write_us: f64,
    /// Reader-thread CPU per frame, µs (for reference).
    pub read_us: f64,
}

/// Measures the floor for `bytes`-byte frames.
pub fn measure(bytes: usize) -> std::io::Result<Floor> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut writers = Vec::with_capacity(SOCKETS);
    let mut readers = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS {
        let w = TcpStream::connect(addr)?;
        w.set_nodelay(true)?;
        let (r, _) = listener.accept()?;
        writers.push(w);
        readers.push(r);
    }
    let reader = thread::spawn(move || -> std::io::Result<f64> {
        let start = thread_cpu_s();
        let mut buf = vec![0u8; bytes];
        for i in 0..WRITES {
            readers[i % SOCKETS].read_exact(&mut buf)?;
        }
        Ok(thread_cpu_s() - start)
    });
    let frame = vec![b'x'; bytes];
    let start = thread_cpu_s();
    for i in 0..WRITES {
        writers[i % SOCKETS].write_all(&frame)?;
    }
    let write_s = thread_cpu_s() - start;
    let read_s = reader
        .join()
        .map_err(|_| std::io::Error::other("floor reader panicked"))??;
    Ok(Floor {
        bytes,
        write_us: write_s * 1e6 / WRITES as f64,
        read_us: read_s * 1e6 / WRITES as f64,
    })
}
