//! Raft messages from an authenticated peer, fuzzer-chosen: each is built from fuzzer bytes
//! field by field (type, sender, term, index, commit, entries), so that most of them decode and
//! reach Raft, then encoded and stepped into node 1 of a three-node control plane, which ticks
//! and applies what committed. A message that does not fit is refused; none may panic the node.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nonstop_control::log::MemoryLog;
use nonstop_control::{ControlConfig, ControlNode, NodeId};
use protobuf::Message as _;
use raft::eraftpb::{Entry, Message, MessageType};

fn message(bytes: &[u8]) -> Message {
    let byte = |i: usize| bytes.get(i).copied().unwrap_or(0) as u64;
    let mut message = Message::default();
    message.set_msg_type(<MessageType as protobuf::ProtobufEnum>::from_i32(byte(0) as i32 % 20).unwrap_or_default());
    message.from = 2 + byte(1) % 2;
    message.to = 1;
    message.term = byte(2) % 8;
    message.log_term = byte(3) % 8;
    message.index = byte(4) % 16;
    message.commit = byte(5) % 16;
    message.reject = byte(6) % 2 == 1;
    message.reject_hint = byte(7) % 16;
    let entries = (byte(8) % 4) as usize;
    message.entries = (0..entries)
        .map(|e| {
            let mut entry = Entry {
                index: message.index + 1 + e as u64,
                term: byte(9 + e) % 8,
                data: bytes.get(12..).unwrap_or(&[]).to_vec().into(),
                ..Default::default()
            };
            if byte(9 + e) >= 0xf0 {
                entry.set_entry_type(raft::eraftpb::EntryType::EntryConfChange);
            }
            entry
        })
        .collect::<Vec<_>>()
        .into();
    if message.get_msg_type() == MessageType::MsgSnapshot {
        // A snapshot that passes the node's own checks (this cluster's voters, a cluster state
        // as data), so that what raft-rs does with its metadata is fuzzed.
        let snapshot = message.mut_snapshot();
        snapshot.data = postcard::to_stdvec(&nonstop_control::ClusterState::default()).expect("encodes").into();
        let metadata = snapshot.mut_metadata();
        metadata.index = byte(10) % 16;
        metadata.term = byte(11) % 8;
        metadata.set_conf_state(raft::eraftpb::ConfState::from((vec![1, 2, 3], vec![])));
    }
    message
}

fuzz_target!(|data: &[u8]| {
    let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
    let Ok(mut node) = ControlNode::new(ControlConfig::new(NodeId(1), voters), Box::new(MemoryLog::default())) else {
        return;
    };
    for chunk in data.chunks(16) {
        let built = message(chunk);
        let bytes = built.write_to_bytes().expect("a message encodes");
        let _ = node.step(&bytes);
        node.tick();
        if let Err(error) = node.poll() {
            // The agent stops on a failed poll; so does this run (what it reports is checked).
            assert!(!error.to_string().is_empty());
            return;
        }
    }
    // Raw bytes too: the decoder itself.
    let _ = node.step(data);
});
