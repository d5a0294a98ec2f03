//! A node's Raft log file with fuzzer-chosen bytes: its records are decoded (a torn tail cut
//! off, corruption refused), and what decodes is replayed into a control-plane node that then
//! ticks and applies what committed. The node starts or refuses with an error that says what
//! is wrong with the log — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nonstop_control::log::{MemoryLog, RaftLog, decode_records};
use nonstop_control::{ControlConfig, ControlNode, NodeId};

fuzz_target!(|data: &[u8]| {
    let Ok((records, _good)) = decode_records(data) else { return };
    let mut log = MemoryLog::default();
    log.append(&records).expect("a memory log appends");
    let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
    match ControlNode::new(ControlConfig::new(NodeId(1), voters), Box::new(log)) {
        Ok(mut node) => {
            for _ in 0..30 {
                node.tick();
                let _ = node.poll();
            }
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
