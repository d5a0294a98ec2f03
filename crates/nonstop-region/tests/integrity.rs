//! Memory corrupted behind the program's back — here, a bit flipped through a raw pointer, as
//! an error injector or a failing DIMM would — is never read, written or shipped by the mirror:
//! a transaction that touches the line, the DU cut, or the scrubber finds it first.

use nonstop_proto::integrity::LINE;
use nonstop_proto::{CheckpointId, UpdateProtocol};
use nonstop_region::{Mirror, Region};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::panic::{AssertUnwindSafe, catch_unwind};

const LEN: usize = 1 << 20;

fn mirror(base: usize, protocol: UpdateProtocol) -> Mirror {
    Mirror::new(Region::map(base, LEN).unwrap(), Some(protocol), CheckpointId(1))
}

/// Flips one bit of the region, bypassing every API: what the tests inject.
fn flip(mirror: &Mirror, offset: usize, bit: u8) {
    assert!(offset < mirror.len());
    // SAFETY: inside the mapped region; no transaction runs while the tests flip.
    unsafe { *(mirror.base() as *mut u8).add(offset) ^= 1 << bit };
}

/// The corruption message the default handler panics with, if `f` found corruption.
fn corruption(f: impl FnOnce()) -> Option<String> {
    let outcome = catch_unwind(AssertUnwindSafe(f));
    outcome.err().map(|panic| {
        panic.downcast_ref::<String>().cloned().unwrap_or_else(|| panic.downcast_ref::<&str>().unwrap().to_string())
    })
}

fn scrub_pass(mirror: &Mirror) {
    let passes = mirror.scrub_passes();
    while mirror.scrub_passes() == passes {
        mirror.scrub(1000);
    }
}

#[test]
fn committed_and_aborted_writes_leave_every_seal_right() {
    for (base, protocol) in [(0x2500_0000_0000, UpdateProtocol::Du), (0x2510_0000_0000, UpdateProtocol::Au)] {
        let mirror = mirror(base, protocol);
        let mut rng = SmallRng::seed_from_u64(7);
        for round in 0..2000u64 {
            let tx = mirror.begin();
            let offset = rng.random_range(0..LEN as u64 / 8) * 8;
            *tx.write::<u64>(offset).unwrap() = round;
            let len = rng.random_range(1..300);
            let at = rng.random_range(0..(LEN - len) as u64);
            if let Ok(bytes) = tx.write_bytes(at, len) {
                bytes.fill(round as u8);
            }
            if round % 3 == 0 {
                tx.abort();
            } else {
                tx.commit();
            }
            if round % 100 == 0 {
                mirror.cut(round % 500 == 0);
            }
        }
        assert_eq!(corruption(|| scrub_pass(&mirror)), None, "{protocol:?}: a legitimate write raised an alarm");
    }
}

#[test]
fn the_scrubber_finds_a_flip_in_data_no_one_touches() {
    let mirror = mirror(0x2520_0000_0000, UpdateProtocol::Du);
    let tx = mirror.begin();
    tx.write_bytes(4096, 4096).unwrap().fill(0xab);
    tx.commit();
    scrub_pass(&mirror);
    flip(&mirror, 4096 + 130, 3);
    let message = corruption(|| scrub_pass(&mirror)).expect("the flip went unnoticed");
    assert!(message.contains("memory corruption") && message.contains(&format!("{:#x}", 4096 + 128)), "{message}");
    // Free space is sealed too: a flip in a line never written is found as well.
    let mirror2 = self::mirror(0x2530_0000_0000, UpdateProtocol::Au);
    flip(&mirror2, LEN - 1, 7);
    assert!(corruption(|| scrub_pass(&mirror2)).is_some());
}

#[test]
fn a_transaction_never_reads_or_writes_a_corrupted_line() {
    let mirror = mirror(0x2540_0000_0000, UpdateProtocol::Au);
    let tx = mirror.begin();
    *tx.write::<u64>(64 * 10).unwrap() = 42;
    tx.commit();
    flip(&mirror, 64 * 10 + 60, 0); // same line, another field
    assert!(corruption(|| drop(mirror.begin().read::<u64>(64 * 10))).is_some(), "read a corrupted line");
    assert!(corruption(|| drop(mirror.begin().write::<u64>(64 * 10 + 8).map(|v| *v = 1))).is_some());
    flip(&mirror, 64 * 10 + 60, 0);
    assert_eq!(mirror.begin().read::<u64>(64 * 10).unwrap(), 42, "the line is whole again");
}

#[test]
fn a_du_cut_never_ships_a_corrupted_dirty_block() {
    let mirror = mirror(0x2550_0000_0000, UpdateProtocol::Du);
    let tx = mirror.begin();
    *tx.write::<u64>(LINE as u64 * 3).unwrap() = 7;
    tx.commit();
    flip(&mirror, LINE * 3 + 9, 1);
    assert!(corruption(|| drop(mirror.cut(false))).is_some(), "a corrupted block was diffed and shipped");
}

#[test]
fn a_transaction_may_write_beside_its_own_uncommitted_bytes() {
    let mirror = mirror(0x2560_0000_0000, UpdateProtocol::Du);
    let tx = mirror.begin();
    *tx.write::<u64>(0).unwrap() = 1;
    *tx.write::<u64>(56).unwrap() = 2; // same line as the first
    tx.write_bytes(64, 200).unwrap().fill(3); // starts in the next line, spans four
    *tx.write::<u64>(264).unwrap() = 4; // shares the span's last line
    assert_eq!(tx.read::<u32>(272).unwrap(), 0, "reads beside its own writes too");
    tx.commit();
    assert_eq!(corruption(|| scrub_pass(&mirror)), None);
}
