//! The raw round trip of the replication transport: authenticated Ping/Pong frames.

use crate::conn::{self, ConnError};
use hdrhistogram::Histogram;
use nonstop_proto::auth::ClusterKey;
use nonstop_proto::frame::FrameKind;
use nonstop_proto::{CheckpointId, Term};
use std::net::SocketAddr;
use std::time::Instant;

/// Sends `count` pings of `payload_len` bytes to a backup at `addr`, one at a time, and
/// returns the round-trip times in nanoseconds.
pub fn measure(
    addr: SocketAddr,
    key: &ClusterKey,
    count: usize,
    payload_len: usize,
) -> Result<Histogram<u64>, ConnError> {
    let (mut sender, mut receiver) = conn::connect(addr, key, &Default::default())?;
    let payload = vec![0x5au8; payload_len];
    let mut histogram = Histogram::new(3).expect("valid precision");
    for _ in 0..count {
        let started = Instant::now();
        sender.send(FrameKind::Ping, Term(0), CheckpointId(0), &payload)?;
        loop {
            let frame = receiver.recv()?;
            if frame.kind == FrameKind::Pong {
                break;
            }
        }
        let _ = histogram.record(started.elapsed().as_nanos() as u64);
    }
    sender.shutdown();
    Ok(histogram)
}
