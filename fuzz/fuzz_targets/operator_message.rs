//! An operator frame's payload, fuzzer-chosen (it arrives only after the cluster-key
//! handshake, but a key holder can still send anything): a request or reply decodes or is
//! refused, never a panic or an allocation past the message limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nonstop_proto::operator::{OperatorReply, OperatorRequest, decode};

fuzz_target!(|data: &[u8]| {
    let _ = decode::<OperatorRequest>(data);
    let _ = decode::<OperatorReply>(data);
});
