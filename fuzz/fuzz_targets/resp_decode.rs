//! A Redis client's bytes, fuzzer-chosen and cut where the fuzzer says: requests come out or
//! the stream is refused with a protocol error, never a panic; what is held never exceeds what
//! arrived; and every request read, sent again as a multibulk array, reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nonstop_kv::resp::{Decoder, Limits};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else { return };
    let (first, second) = bytes.split_at((cut as usize).min(bytes.len()));
    let limits = Limits { max_bulk_len: 1 << 16, max_arguments: 1 << 10, max_request_bytes: 1 << 20 };
    let mut decoder = Decoder::new(limits);
    let mut requests = Vec::new();
    for piece in [first, second] {
        decoder.push(piece);
        loop {
            match decoder.next_request() {
                Ok(Some(request)) => requests.push(request),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(decoder.buffered() <= bytes.len());
    }
    for request in requests {
        let mut again = format!("*{}\r\n", request.len()).into_bytes();
        for argument in &request {
            again.extend_from_slice(format!("${}\r\n", argument.len()).as_bytes());
            again.extend_from_slice(argument);
            again.extend_from_slice(b"\r\n");
        }
        let mut decoder = Decoder::new(limits);
        decoder.push(&again);
        assert_eq!(decoder.next_request(), Ok(Some(request)));
    }
});
