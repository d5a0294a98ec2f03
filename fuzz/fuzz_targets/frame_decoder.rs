//! Raw bytes from a replication connection, delivered in fuzzer-chosen pieces, into the frame
//! reader: it must return frames, ask for more, or refuse the stream — never panic, and never
//! deliver anything after refusing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nonstop_proto::auth::MacKey;
use nonstop_proto::frame::FrameReader;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else { return };
    let mut reader = FrameReader::new(MacKey::from_bytes([7; 32]));
    let piece = (split as usize).max(1);
    let mut refused = false;
    for chunk in bytes.chunks(piece) {
        reader.push(chunk);
        loop {
            match reader.next_frame() {
                Ok(Some(_)) => assert!(!refused, "a frame after the stream was refused"),
                Ok(None) => break,
                Err(_) => {
                    refused = true;
                    break;
                }
            }
        }
    }
});
