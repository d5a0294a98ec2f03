//! What a client's call hands a service, as the node's client port passes it on: the client
//! and request numbers and the request's bytes (or a query's) go through the platform's
//! exactly-once handling into the bank service. Every input is applied once or refused, never
//! a panic, and the platform's check and the bank's hold after any sequence of them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nonstop_proto::CheckpointId;
use nonstop_region::{Mirror, Region};
use nonstop_service::{Caller, Hosted};
use nonstop_workloads::bank::Bank;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// One bank for the whole run (a region is mapped at a fixed address once per process).
fn bank() -> &'static (Hosted, Mirror) {
    static BANK: OnceLock<(Hosted, Mirror)> = OnceLock::new();
    BANK.get_or_init(|| {
        let hosted = Hosted::new("bank", Bank::new(1));
        let region = Region::map(0x5e00_0000_0000, hosted.region_len()).expect("the fuzz region maps");
        let mirror = Mirror::new(region, None, CheckpointId(1));
        hosted.init(&mirror).expect("a fresh region holds a bank");
        (hosted, mirror)
    })
}

fuzz_target!(|data: &[u8]| {
    let [kind, client, request, body @ ..] = data else { return };
    let (hosted, mirror) = bank();
    match kind % 3 {
        // Small client and request numbers, so that runs of inputs hit the same client table
        // slots: next requests, retries, stale and skipping ones.
        0 => {
            let caller = Caller { client: u64::from(*client % 16), request: u64::from(*request % 8), lane: 0 };
            let _ = hosted.execute(mirror, caller, 0, body);
        }
        1 => {
            let _ = hosted.query(mirror, body);
        }
        _ => {
            let clients: Vec<u64> = body.iter().map(|&c| u64::from(c % 16)).collect();
            let _ = mirror.quiesced(|image, _| hosted.audit(image, &clients, Some(body)));
        }
    }
    // The whole image's checks cost milliseconds: run them now and then.
    static RUNS: AtomicU64 = AtomicU64::new(0);
    if RUNS.fetch_add(1, Ordering::Relaxed) % 1024 == 0 {
        let check = mirror.quiesced(|image, _| hosted.check(image));
        assert!(check.is_ok(), "{check:?}");
    }
});
