//! Micro-benchmarks of what a gateway does for every event it fans out,
//! in isolation from sockets and the network: the envelope's decode, the
//! frame's encode (once per event and encoding), and the hub's dispatch of
//! a sequenced event to the local members of a room. `cargo bench -p
//! chorus-gateway` prints nanoseconds per operation, the median of several
//! samples with their range; BENCHMARKS.md keeps the figures. The whole
//! path, sockets and all, is measured from outside by `loadtest/`.
//!
//! No benchmark framework: a fixed number of operations per sample, timed
//! with the monotonic clock, is enough to compare two builds on one
//! machine and keeps the dependency tree as it is.

#![expect(
    clippy::print_stdout,
    reason = "a benchmark reports on standard output"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus_gateway::api_client::{Api, MemoryApi};
use chorus_gateway::backplane::{Backplane, BackplaneSink, MemoryBackplane, MemoryBus};
use chorus_gateway::codec::{Encoding, SharedFrame};
use chorus_gateway::handle::{ConnHandle, OutboundRx};
use chorus_gateway::hub::{Hub, HubConfig};
use chorus_shared::envelope::{Envelope, community_channel};
use chorus_shared::protocol::{Message, MessageData, Sender, ServerEvent};
use uuid::Uuid;

/// Samples per benchmark; the median is reported.
const SAMPLES: usize = 9;

/// Events a dispatch sample sends before the queues are drained: fewer
/// than a queue holds, so no connection counts as a slow consumer.
const EVENTS_PER_SAMPLE: usize = 400;

/// Each connection's queue in the dispatch benchmark.
const QUEUE: usize = 512;

fn main() {
    let community = Uuid::now_v7();
    let sample = envelope(community, 1);
    println!("new-message envelope: {} bytes", sample.len());

    report("envelope decode", 20_000, |n| {
        for _ in 0..n {
            black_box(Envelope::decode(black_box(&sample)).ok());
        }
    });
    for (name, encoding) in [
        ("frame encode, JSON", Encoding::Json),
        ("frame encode, MessagePack", Encoding::Msgpack),
    ] {
        let event = new_message(community, 1);
        report(name, 20_000, |n| {
            let frames: Vec<_> = (0..n)
                .map(|_| SharedFrame::committed_at(event.clone(), 1))
                .collect();
            let start = Instant::now();
            for f in &frames {
                black_box(f.get(encoding));
            }
            start.elapsed()
        });
    }

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => panic!("a runtime: {e}"),
    };
    for members in [10, 500] {
        runtime.block_on(dispatch(members));
    }
}

/// The hub's dispatch of one sequenced event to `members` joined local
/// connections, per delivery: decode, room order, one queue push and
/// writer wake-up per member (here nobody waits, so no task is woken).
async fn dispatch(members: usize) {
    let api = MemoryApi::new();
    let backplane = MemoryBackplane::new(MemoryBus::new(), "gw-bench");
    let hub = Hub::new(
        backplane.clone(),
        api.clone(),
        HubConfig {
            recovery_window: 1000,
            presence_limit: 10_000,
            presence_grace: Duration::from_secs(5),
            mass_loss_per_second: 0,
        },
    );
    backplane.start(Arc::new(hub.clone()));
    let room = api.create_community("owner");
    let mut queues: Vec<(Arc<ConnHandle>, OutboundRx)> = Vec::with_capacity(members);
    for i in 0..members {
        let user = format!("user{i}");
        api.add_member(room, &user);
        let expiry = tokio::time::Instant::now() + Duration::from_secs(3600);
        let (conn, rx) = ConnHandle::new(i as u64 + 1, &user, &user, Encoding::Json, QUEUE, expiry);
        let Some(slot) = hub.reserve(&user, 0) else {
            panic!("no cap")
        };
        if let Err(e) = hub.connect(&conn, slot).await {
            panic!("connect: {e}");
        }
        let prepared = match hub.prepare(room).await {
            Ok(p) => p,
            Err(e) => panic!("subscribe: {e}"),
        };
        let checked_at = hub.revocation_epoch();
        let head = match api.access(room, &user).await {
            Ok(a) => a.head_seq,
            Err(e) => panic!("access: {e}"),
        };
        if let Err(e) = hub
            .join(room, head, &conn, None, checked_at, Some(&prepared))
            .await
        {
            panic!("join: {e}");
        }
        queues.push((conn, rx));
    }
    // Joins announced themselves; let that settle, and start from empty
    // queues.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for (_, rx) in &mut queues {
        while rx.try_recv().is_ok() {}
    }
    let channel = community_channel(&room);
    let mut seq = 0_i64;
    report(
        &format!("dispatch to a room of {members}, per delivery"),
        0,
        |_| {
            let payloads: Vec<Bytes> = (0..EVENTS_PER_SAMPLE)
                .map(|_| {
                    seq += 1;
                    Bytes::from(envelope(room, seq))
                })
                .collect();
            let start = Instant::now();
            for p in payloads {
                hub.on_message(&channel, p);
            }
            let took = start.elapsed();
            for (_, rx) in &mut queues {
                let mut got = 0;
                while rx.try_recv().is_ok() {
                    got += 1;
                }
                assert_eq!(got, EVENTS_PER_SAMPLE, "every event reached every member");
            }
            took / (members * EVENTS_PER_SAMPLE) as u32
        },
    );
}

/// The envelope of [`new_message`], as the API publishes it.
fn envelope(community: Uuid, seq: i64) -> Vec<u8> {
    Envelope::new(Some(community), Some(seq), 1, new_message(community, seq)).encode()
}

/// A `new-message` of 100 characters, as the load tool posts.
fn new_message(community: Uuid, seq: i64) -> ServerEvent {
    ServerEvent::NewMessage(MessageData {
        message: Message {
            id: Uuid::now_v7(),
            community_id: community,
            seq,
            sender: Sender {
                id: "user-0123456789".into(),
                name: "User 0123456789".into(),
                avatar: None,
            },
            content: "x".repeat(100),
            mentions: Vec::new(),
            created_at: chrono::Utc::now(),
        },
    })
}

/// Runs `SAMPLES` samples of `run` and prints the median time per
/// operation with the range. `run` gets the operations per sample (`ops`;
/// 0 when it decides itself) and returns the time of one operation, or
/// of all `ops` of them when `ops` is not 0.
fn report<R: IntoTiming>(name: &str, ops: u32, mut run: impl FnMut(u32) -> R) {
    let mut per_op: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            let t = run(ops).into_timing(start.elapsed());
            t.as_nanos() as f64 / f64::from(ops.max(1))
        })
        .collect();
    per_op.sort_by(f64::total_cmp);
    println!(
        "{name:45} {:8.0} ns  ({:.0}-{:.0})",
        per_op[SAMPLES / 2],
        per_op[0],
        per_op[SAMPLES - 1]
    );
}

/// What a sample returns: nothing (the whole call is timed) or its own
/// timing.
trait IntoTiming {
    fn into_timing(self, whole: Duration) -> Duration;
}

impl IntoTiming for () {
    fn into_timing(self, whole: Duration) -> Duration {
        whole
    }
}

impl IntoTiming for Duration {
    fn into_timing(self, _whole: Duration) -> Duration {
        self
    }
}
