//! A control frame's payload from an authenticated peer, fuzzer-chosen: decoded or refused,
//! and a decoded heartbeat report folded into a coordinator — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nonstop_control::NodeId;
use nonstop_control::coordinator::Coordinator;
use nonstop_node::peers::{Body, decode_peer_message};
use nonstop_proto::Nanos;

fuzz_target!(|data: &[u8]| {
    let Ok((from, body)) = decode_peer_message(data) else { return };
    let voters = [NodeId(1), NodeId(2), NodeId(3)];
    let mut coordinator = Coordinator::new(NodeId(1), &voters, &[], 200_000_000, 400_000_000);
    if let Body::Report(report) = body {
        coordinator.on_report(from, report, Nanos(1));
    }
});
