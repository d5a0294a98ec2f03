//! Transactions and checkpoint cuts on a real fixed-address region.

use nonstop_proto::runs::parse_runs;
use nonstop_proto::{CheckpointId, UpdateProtocol};
use nonstop_region::{CheckpointContent, FirstImages, Mirror, Region, TxError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};

const LEN: usize = 1 << 20;

fn mirror(base: usize, protocol: Option<UpdateProtocol>) -> Mirror {
    Mirror::new(Region::map(base, LEN).unwrap(), protocol, CheckpointId(1))
}

fn apply(image: &mut [u8], content: &CheckpointContent) {
    let runs = content.full_image.as_ref().unwrap_or(&content.changes);
    for payload in runs.payloads() {
        for run in parse_runs(payload, image.len() as u64).unwrap() {
            image[run.offset as usize..][..run.bytes.len()].copy_from_slice(run.bytes);
        }
    }
}

#[test]
fn abort_restores_the_undo_image() {
    let mirror = mirror(0x2400_0000_0000, Some(UpdateProtocol::Du));
    let tx = mirror.begin();
    *tx.write::<u64>(0).unwrap() = 5;
    tx.commit();
    let tx = mirror.begin();
    *tx.write::<u64>(0).unwrap() = 6;
    tx.write_bytes(100, 10).unwrap().fill(9);
    tx.abort();
    let tx = mirror.begin();
    assert_eq!(tx.read::<u64>(0).unwrap(), 5);
    let mut out = [1u8; 10];
    tx.read_bytes(100, &mut out).unwrap();
    assert_eq!(out, [0; 10]);
    drop(tx);
    // The aborted write leaves no trace in the checkpoint either.
    let cut = mirror.cut(false);
    let mut image = vec![0u8; LEN];
    apply(&mut image, &cut);
    assert_eq!(u64::from_ne_bytes(image[..8].try_into().unwrap()), 5);
    assert!(image[100..110].iter().all(|&b| b == 0));
}

#[test]
fn bad_ranges_are_refused() {
    let mirror = mirror(0x2410_0000_0000, Some(UpdateProtocol::Au));
    let tx = mirror.begin();
    assert!(matches!(tx.write::<u64>(LEN as u64 - 4), Err(TxError::OutOfRegion { .. })));
    assert!(matches!(tx.write::<u64>(u64::MAX - 2), Err(TxError::OutOfRegion { .. })));
    assert!(matches!(tx.write::<u64>(3), Err(TxError::Misaligned { .. })));
    let _held = tx.write::<u64>(64).unwrap();
    assert!(matches!(tx.write_bytes(60, 8), Err(TxError::Overlap { .. })));
    assert!(matches!(tx.read::<u32>(68), Err(TxError::Overlap { .. })));
}

#[test]
fn another_transaction_on_locked_bytes_conflicts() {
    let mirror = mirror(0x2420_0000_0000, None);
    std::thread::scope(|scope| {
        let tx = mirror.begin();
        *tx.write::<u64>(0).unwrap() = 1;
        scope
            .spawn(|| {
                let other = mirror.begin();
                assert!(matches!(other.write::<u64>(0), Err(TxError::Conflict { .. })));
                assert!(other.write::<u64>(4096).is_ok(), "disjoint data is free");
            })
            .join()
            .unwrap();
        tx.commit();
    });
}

/// Threads move money between slots while checkpoints are cut and applied to a backup image:
/// every checkpoint image must conserve the total, i.e. contain whole transactions only.
fn transfers_against_cuts(base: usize, protocol: UpdateProtocol) {
    const SLOTS: u64 = 4096;
    const TOTAL: u64 = SLOTS * 100;
    let mirror = mirror(base, Some(protocol));
    let init = mirror.begin();
    for slot in 0..SLOTS {
        *init.write::<u64>(slot * 64).unwrap() = 100;
    }
    init.commit();
    let mut image = vec![0u8; LEN];
    apply(&mut image, &mirror.cut(true));
    let stop = AtomicBool::new(false);
    let sum = |image: &[u8]| -> u64 {
        (0..SLOTS).map(|s| u64::from_ne_bytes(image[(s * 64) as usize..][..8].try_into().unwrap())).sum()
    };
    std::thread::scope(|scope| {
        for seed in 0..3u64 {
            let (mirror, stop) = (&mirror, &stop);
            scope.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(seed);
                while !stop.load(Ordering::Relaxed) {
                    let (a, b) = (rng.random_range(0..SLOTS), rng.random_range(0..SLOTS));
                    if a == b {
                        continue;
                    }
                    let tx = mirror.begin();
                    let result = (|| {
                        let from = tx.write::<u64>(a * 64)?;
                        let to = tx.write::<u64>(b * 64)?;
                        let amount = (*from).min(7);
                        *from -= amount;
                        *to += amount;
                        Ok::<_, TxError>(())
                    })();
                    match result {
                        Ok(()) => {
                            tx.commit();
                        }
                        Err(TxError::Conflict { .. }) => tx.abort(),
                        Err(other) => panic!("{other}"),
                    }
                }
            });
        }
        for _ in 0..300 {
            let cut = mirror.cut(false);
            apply(&mut image, &cut);
            assert_eq!(sum(&image), TOTAL, "checkpoint {} is not a consistent cut", cut.checkpoint.0);
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        stop.store(true, Ordering::Relaxed);
    });
    apply(&mut image, &mirror.cut(false));
    mirror.quiesced(|bytes, _| assert_eq!(bytes, &image[..], "backup image equals the primary"));
}

#[test]
fn du_checkpoints_are_consistent_cuts_under_concurrent_transactions() {
    transfers_against_cuts(0x2430_0000_0000, UpdateProtocol::Du);
}

#[test]
fn au_checkpoints_are_consistent_cuts_under_concurrent_transactions() {
    transfers_against_cuts(0x2440_0000_0000, UpdateProtocol::Au);
}

/// AU backpressure must never hold the gate: a replicator that needs the gate for a whole-image
/// cut (a backup attaching) while the stream is over its limit must still make progress.
#[test]
fn au_backpressure_leaves_the_gate_to_a_whole_image_cut() {
    use nonstop_region::STREAM_LIMIT;
    use std::sync::Arc;
    use std::time::Duration;
    let mirror = Arc::new(Mirror::new(
        Region::map(0x2450_0000_0000, 64 << 20).unwrap(),
        Some(UpdateProtocol::Au),
        CheckpointId(1),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let replicator = {
        let (mirror, stop) = (mirror.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::park_timeout(Duration::from_millis(1));
                if mirror.stream_pending() >= STREAM_LIMIT {
                    // What attaching a backup does: a cut with the whole image, under the gate.
                    let content = mirror.cut(true);
                    assert!(content.full_image.is_some());
                }
            }
        })
    };
    mirror.set_stream_waker(replicator.thread().clone());
    let (done, finished) = std::sync::mpsc::channel();
    let writer = {
        let mirror = mirror.clone();
        std::thread::spawn(move || {
            for i in 0..3 * (STREAM_LIMIT >> 20) as u64 {
                let tx = mirror.begin();
                tx.write_bytes((i % 60) << 20, 1 << 20).unwrap().fill(i as u8);
                tx.commit();
            }
            done.send(()).unwrap();
        })
    };
    let result = finished.recv_timeout(Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    assert!(result.is_ok(), "a commit waiting for stream room blocked the replicator's cut");
    writer.join().unwrap();
    replicator.join().unwrap();
}

/// Adds to random words of the region until `stop`, counting commits in `progress` (conflicts
/// are aborted and retried elsewhere); returns the commits.
fn random_writes(mirror: &Mirror, worker: u64, stop: &AtomicBool, progress: &std::sync::atomic::AtomicU64) -> u64 {
    let mut rng = SmallRng::seed_from_u64(worker);
    let mut commits = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let slot = rng.random_range(0..(LEN as u64 / 8));
        let tx = mirror.begin();
        match tx.write::<u64>(slot * 8) {
            Ok(value) => {
                *value = value.wrapping_add(rng.random::<u64>() | 1);
                tx.commit();
                commits += 1;
                progress.fetch_add(1, Ordering::Relaxed);
            }
            Err(TxError::Conflict { .. }) => tx.abort(),
            Err(other) => panic!("{other}"),
        }
    }
    commits
}

/// Writers race pre-copy rounds; whatever a round copied half way through their writes, the
/// pre-copied image plus the final delta is exactly the region at the finishing cut.
fn precopy_against_writers(base: usize, protocol: UpdateProtocol) {
    let mirror = mirror(base, Some(protocol));
    let stop = AtomicBool::new(false);
    let mut image = vec![0u8; LEN];
    let copy_into = |image: &mut Vec<u8>, runs: nonstop_proto::runs::RunsBuilder| {
        for payload in runs.payloads() {
            for run in parse_runs(payload, LEN as u64).unwrap() {
                image[run.offset as usize..][..run.bytes.len()].copy_from_slice(run.bytes);
            }
        }
    };
    let mut written = 0u64;
    let progress = std::sync::atomic::AtomicU64::new(0);
    let wait_for = |commits: u64| {
        while progress.load(Ordering::Relaxed) < commits {
            std::hint::spin_loop();
        }
    };
    std::thread::scope(|scope| {
        let writers: Vec<_> = (0..2u64)
            .map(|worker| {
                let (mirror, stop, progress) = (&mirror, &stop, &progress);
                scope.spawn(move || random_writes(mirror, worker, stop, progress))
            })
            .collect();
        wait_for(2000);
        mirror.precopy_begin();
        for round in 0..4u64 {
            wait_for(2000 * (round + 2));
            mirror
                .precopy_round(round == 0, 8, |runs| {
                    copy_into(&mut image, runs);
                    Ok::<(), ()>(())
                })
                .unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        written = writers.into_iter().map(|w| w.join().unwrap()).sum();
    });
    assert!(written > 0, "the writers raced the rounds");
    let content = mirror.cut_with(FirstImages { finish_precopy: true, ..FirstImages::default() });
    copy_into(&mut image, content.precopy_delta.expect("finishing a pre-copy yields its delta"));
    mirror.quiesced(|region, _| {
        for page in 0..LEN / 4096 {
            assert!(image[page * 4096..][..4096] == region[page * 4096..][..4096], "page {page} lost a write");
        }
    });
}

#[test]
fn precopy_rounds_race_writers_and_lose_no_write_au() {
    precopy_against_writers(0x2460_0000_0000, UpdateProtocol::Au);
}

#[test]
fn precopy_rounds_race_writers_and_lose_no_write_du() {
    precopy_against_writers(0x2470_0000_0000, UpdateProtocol::Du);
}

/// A promoted backup's mirror rebases another holder while writers run: the holder's image (the
/// one resumed from) plus the rebase is exactly the region at that cut, so the checkpoints
/// after it apply on top. A transaction that declared a page before the cut and commits after
/// it lands in the next checkpoint's changes, not in a hole between the two.
fn rebase_against_writers(base: usize, protocol: UpdateProtocol) {
    let region = Region::map(base, LEN).unwrap();
    let seals = nonstop_proto::integrity::LineChecksums::zeroed(LEN);
    let mirror = Mirror::resume(region, Some(protocol), CheckpointId(10), seals, []);
    let stop = AtomicBool::new(false);
    let mut holder = vec![0u8; LEN];
    let apply = |image: &mut Vec<u8>, runs: &nonstop_proto::runs::RunsBuilder| {
        for payload in runs.payloads() {
            for run in parse_runs(payload, LEN as u64).unwrap() {
                image[run.offset as usize..][..run.bytes.len()].copy_from_slice(run.bytes);
            }
        }
    };
    let progress = std::sync::atomic::AtomicU64::new(0);
    let wait_for = |commits: u64| {
        while progress.load(Ordering::Relaxed) < commits {
            std::hint::spin_loop();
        }
    };
    let rebase = std::thread::scope(|scope| {
        for worker in 0..2u64 {
            let (mirror, stop, progress) = (&mirror, &stop, &progress);
            scope.spawn(move || random_writes(mirror, worker, stop, progress));
        }
        wait_for(5000);
        // A page the holder may differ in besides those written since the resume.
        let named = [vec![3u32]];
        let content = mirror.cut_with(FirstImages { rebases: &named, ..FirstImages::default() });
        apply(&mut holder, &content.rebases[0]);
        wait_for(progress.load(Ordering::Relaxed) + 5000);
        stop.store(true, Ordering::Relaxed);
        content
    });
    assert_eq!(rebase.rebases.len(), 1);
    let covers = |page: u64| {
        rebase.rebases[0].payloads().iter().any(|p| {
            parse_runs(p, LEN as u64)
                .unwrap()
                .iter()
                .any(|run| (run.offset..run.offset + run.bytes.len() as u64).contains(&(page * 4096)))
        })
    };
    assert!(covers(3), "the named page is sent");
    let pages = rebase.rebases[0].run_bytes() / 4096;
    assert!(pages > 10 && pages <= LEN as u64 / 4096, "the pages written since the resume, each once: {pages}");
    let content = mirror.cut(false);
    apply(&mut holder, &content.changes);
    mirror.quiesced(|region, last| {
        assert_eq!(last, Some(content.checkpoint));
        let differs = (0..LEN / 4096).find(|page| holder[page * 4096..][..4096] != region[page * 4096..][..4096]);
        assert_eq!(differs, None, "the rebased holder plus the next checkpoint is the region");
    });
}

#[test]
fn rebase_races_writers_and_lands_on_the_checkpoint_au() {
    rebase_against_writers(0x2480_0000_0000, UpdateProtocol::Au);
}

#[test]
fn rebase_races_writers_and_lands_on_the_checkpoint_du() {
    rebase_against_writers(0x2490_0000_0000, UpdateProtocol::Du);
}

/// State transfer between two replicas' mirrors: the donor's pages, pre-copied while it ran
/// and completed by the pages written since, replace whatever the receiver held; the seals
/// follow, and transactions go on there as on the donor.
#[test]
fn a_transferred_image_replaces_the_receivers_and_keeps_its_seals() {
    let donor = mirror(0x24a0_0000_0000, None);
    let receiver = mirror(0x24b0_0000_0000, None);
    let write = |mirror: &Mirror, offset: u64, value: u64| {
        let tx = mirror.begin();
        *tx.write::<u64>(offset).unwrap() = value;
        tx.commit();
    };
    for slot in 0..64u64 {
        write(&donor, slot * 4096 + 8, slot + 1);
    }
    // The receiver executed things the donor never did (it went its own way before it fell
    // behind): none of them may survive the transfer.
    write(&receiver, 200 * 4096, 7);
    write(&receiver, 3 * 4096 + 16, 9);
    let mut payloads = Vec::new();
    let mut keep = |runs: nonstop_proto::runs::RunsBuilder| {
        payloads.extend(runs.into_payloads());
        Ok::<_, ()>(())
    };
    donor.precopy_begin();
    donor.precopy_round(true, 8, &mut keep).unwrap();
    write(&donor, 5 * 4096 + 8, 1000);
    write(&donor, 100 * 4096, 1001);
    donor.precopy_round(false, 8, &mut keep).unwrap();
    donor.precopy_abort();
    receiver.clear();
    for payload in &payloads {
        receiver.install_runs(payload).unwrap();
    }
    let image = |mirror: &Mirror| mirror.quiesced_checked(|image, _| image.to_vec());
    assert!(image(&donor) == image(&receiver), "the receiver holds the donor's image");
    // A bad payload is refused whole and changes nothing.
    let mut bad = payloads[0].clone();
    bad.truncate(bad.len() - 1);
    assert!(receiver.install_runs(&bad).is_err());
    assert!(image(&donor) == image(&receiver));
    // The receiver goes on: its seals are those of the donor's bytes (a stale seal would stop
    // this transaction as corruption), and it can become a donor in turn.
    write(&receiver, 5 * 4096 + 8, 2000);
    write(&donor, 5 * 4096 + 8, 2000);
    let mut copied = vec![0u8; LEN];
    receiver
        .copy_image(16, |runs| {
            for payload in runs.payloads() {
                for run in parse_runs(payload, LEN as u64).unwrap() {
                    copied[run.offset as usize..][..run.bytes.len()].copy_from_slice(run.bytes);
                }
            }
            Ok::<_, ()>(())
        })
        .unwrap();
    assert!(copied == image(&donor), "a whole copy of the receiver is the donor's image");
}
