//! Bytes on the client port: a request is decoded or refused, never a panic or an allocation
//! beyond the message limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nonstop_proto::client::{ClientReply, ClientRequest, read_message};

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    while read_message::<ClientRequest>(&mut input).is_ok() {}
    let mut input = data;
    while read_message::<ClientReply>(&mut input).is_ok() {}
});
