//! The cost of capture on the commit path, without a network: a Debit-Credit-shaped transaction
//! (three 8-byte balances, a counter, a 50-byte record) committed unreplicated, under AU and
//! under DU, with a checkpoint cut (and its runs dropped) every 2,500 commits, as at 1 ms epochs.
//!
//! `cargo bench -p nonstop-region --bench commit`

use criterion::{Criterion, criterion_group, criterion_main};
use nonstop_proto::{CheckpointId, UpdateProtocol};
use nonstop_region::{Mirror, Region};
use std::hint::black_box;

const LEN: usize = 128 << 20;
const ACCOUNTS: u64 = 1_000_000;

fn transaction(mirror: &Mirror, i: u64) {
    let account = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) % ACCOUNTS;
    let tx = mirror.begin();
    for at in [4096 + (i % 100) * 104, 16384 + (i % 10) * 104, (1 << 20) + account * 104] {
        let balance = tx.write::<u64>(at).expect("in region");
        *balance = balance.wrapping_add(7);
    }
    let head = tx.write::<u64>(64).expect("in region");
    *head += 1;
    let record = (120 << 20) + (*head % 40_000) * 56;
    tx.write_bytes(record, 50).expect("in region").fill(i as u8);
    black_box(tx.commit());
}

fn commit_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("debit_credit_shaped_commit");
    for (name, protocol, base) in [
        ("unreplicated", None, 0x2b00_0000_0000usize),
        ("au", Some(UpdateProtocol::Au), 0x2c00_0000_0000),
        ("du", Some(UpdateProtocol::Du), 0x2d00_0000_0000),
    ] {
        let mirror = Mirror::new(Region::map(base, LEN).expect("free range"), protocol, CheckpointId(1));
        let mut i = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                transaction(&mirror, i);
                i += 1;
                if i.is_multiple_of(2500) {
                    // As the replicator does once it has combined a stream's runs.
                    mirror.recycle_stream(black_box(mirror.cut(false)).changes);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, commit_path);
criterion_main!(benches);
