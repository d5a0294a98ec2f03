//! Transparent mode: a region written as ordinary memory, checkpointed by the pages the kernel
//! saw written. Every test runs with both write-tracking modes.

use nonstop_proto::runs::parse_runs;
use nonstop_proto::{CheckpointId, PAGE_SIZE};
use nonstop_region::tracking::TrackingMode;
use nonstop_region::{FirstImages, Mirror, Region};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const LEN: usize = 1 << 20;

/// A tracked mirror at a base of its own; `None` (with a message) where the kernel lacks the
/// mode, except that `NONSTOP_REQUIRE_UFFD=1` makes a missing userfaultfd a failure.
fn tracked(mode: TrackingMode) -> Option<Mirror> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let base = 0x2500_0000_0000 + NEXT.fetch_add(1, Ordering::Relaxed) * (1 << 32);
    match Mirror::tracked(Region::map(base, LEN).unwrap(), Some(mode), CheckpointId(1)) {
        Ok(mirror) => Some(mirror),
        Err(error) if mode == TrackingMode::Uffd && std::env::var_os("NONSTOP_REQUIRE_UFFD").is_none() => {
            eprintln!("SKIPPED for uffd: {error}");
            None
        }
        Err(error) => panic!("{mode}: {error}"),
    }
}

fn apply(image: &mut [u8], runs: &nonstop_proto::runs::RunsBuilder) {
    for payload in runs.payloads() {
        for run in parse_runs(payload, image.len() as u64).unwrap() {
            image[run.offset as usize..][..run.bytes.len()].copy_from_slice(run.bytes);
        }
    }
}

fn same_as_primary(mirror: &Mirror, image: &[u8]) -> bool {
    mirror.quiesced(|region, _| region == image)
}

/// Random writes of 1 to 6000 bytes (so some span pages), some of them writing what is
/// already there (a write the kernel sees that changes nothing).
fn scribble(image: &mut [u8], rng: &mut SmallRng) {
    let len = rng.random_range(1..6000);
    let at = rng.random_range(0..LEN - len);
    if rng.random_bool(0.1) {
        let same = image[at..at + len].to_vec();
        image[at..at + len].copy_from_slice(&same);
    } else {
        rng.fill(&mut image[at..at + len]);
    }
}

#[test]
fn checkpoints_rebuild_the_primary_image_from_diffs_alone() {
    for mode in TrackingMode::ALL {
        let Some(mirror) = tracked(mode) else { continue };
        assert_eq!(mirror.tracking(), Some(mode));
        let mut rng = SmallRng::seed_from_u64(7);
        let mut backup = vec![0u8; LEN];
        for round in 0..50 {
            let mut tickets = Vec::new();
            for _ in 0..rng.random_range(0..20) {
                tickets.push(mirror.update(|image| scribble(image, &mut rng)).1);
            }
            let cut = mirror.cut(false);
            assert!(tickets.iter().all(|t| t.checkpoint == cut.checkpoint), "{mode}: tickets name the cut");
            assert!(cut.changes.run_bytes() as usize <= cut.dirty_blocks * PAGE_SIZE, "{mode}: diffs, not pages");
            apply(&mut backup, &cut.changes);
            assert!(same_as_primary(&mirror, &backup), "{mode}: round {round}");
        }
    }
}

/// A cut with no update since the last one skips asking the kernel; an update that panics
/// after writing must still count as one, or its bytes would reach no backup.
/// Cuts racing updates from two threads: every checkpoint must hold whole updates only, so a
/// cut reads the dirty pages only while it holds the gate. Each update writes one number to two
/// pages half the region apart; a backup rebuilt from the cuts must find both pages of every
/// pair equal after every cut, and the primary's image once the writers stop. (Reading the
/// pages after letting updates in fails at the second cut.)
#[test]
fn checkpoints_cut_while_updates_run_hold_whole_updates() {
    const PAIRS: usize = LEN / PAGE_SIZE / 2;
    for mode in TrackingMode::ALL {
        let Some(mirror) = tracked(mode) else { continue };
        let mut backup = vec![0u8; LEN];
        let stop = AtomicBool::new(false);
        let cuts = std::thread::scope(|scope| {
            for writer in 0..2u64 {
                let (mirror, stop) = (&mirror, &stop);
                scope.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(writer);
                    let mut number = writer << 32;
                    while !stop.load(Ordering::Relaxed) {
                        number += 1;
                        let pair = rng.random_range(0..PAIRS);
                        let at = rng.random_range(0..PAGE_SIZE / 8) * 8;
                        mirror.update(|image| {
                            for page in [pair, pair + PAIRS] {
                                image[page * PAGE_SIZE + at..][..8].copy_from_slice(&number.to_ne_bytes());
                            }
                        });
                    }
                });
            }
            let mut cuts = 0;
            let mut whole = true;
            while cuts < 2_000 && whole {
                apply(&mut backup, &mirror.cut(false).changes);
                cuts += 1;
                let (first, second) = backup.split_at(LEN / 2);
                whole = first == second;
            }
            // The writers stop before any assertion, or a failure would wait for them forever.
            stop.store(true, Ordering::Relaxed);
            assert!(whole, "{mode}: checkpoint {cuts} holds half an update");
            cuts
        });
        apply(&mut backup, &mirror.cut(false).changes);
        assert!(same_as_primary(&mirror, &backup), "{mode}: after {cuts} cuts");
    }
}

#[test]
fn an_update_that_panics_halfway_is_still_checkpointed() {
    for mode in TrackingMode::ALL {
        let Some(mirror) = tracked(mode) else { continue };
        let mut backup = vec![0u8; LEN];
        apply(&mut backup, &mirror.cut(false).changes);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            mirror.update(|image| {
                image[3 * PAGE_SIZE + 5] = 9;
                panic!("the service failed halfway");
            })
        }));
        assert!(panicked.is_err());
        apply(&mut backup, &mirror.cut(false).changes);
        assert!(same_as_primary(&mirror, &backup), "{mode}: the half-done update's write is shipped");
        assert_eq!(mirror.cut(false).changes.run_bytes(), 0, "{mode}: and only once");
    }
}

/// A read or an update that must not block is refused while the region is held against it,
/// and is a read or an update otherwise; reads do not exclude each other.
#[test]
fn reads_and_updates_that_must_not_wait_are_refused_while_the_region_is_held() {
    for mode in TrackingMode::ALL {
        let Some(mirror) = tracked(mode) else { continue };
        let written = mirror.update(|image| image[0] = 5).1;
        assert_eq!(mirror.try_read(|image| image[0]), Some((5, written)), "{mode}");
        let nested = mirror.read(|_| mirror.try_read(|image| image[0]));
        assert_eq!(nested.0, Some((5, written)), "{mode}: reads share the region");
        let (entered, leave) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                mirror.update(|image| {
                    image[0] = 6;
                    entered.wait();
                    leave.wait();
                })
            });
            entered.wait();
            assert_eq!(mirror.try_read(|image| image[0]), None, "{mode}: an update runs");
            leave.wait();
        });
        assert_eq!(mirror.try_read(|image| image[0]).map(|(byte, _)| byte), Some(6), "{mode}");
        // An update that must not wait is refused while a read holds the region, and runs
        // nothing; otherwise it is an update.
        let refused = mirror.read(|_| mirror.try_update(|image| image[0] = 7).is_none()).0;
        assert!(refused, "{mode}: a read holds the region");
        assert_eq!(mirror.read(|image| image[0]).0, 6, "{mode}: the refused update ran nothing");
        let ((), ticket) = mirror.try_update(|image| image[0] = 8).expect("the region is free");
        assert_eq!(mirror.read(|image| image[0]), (8, ticket), "{mode}");
        let mut backup = vec![0u8; LEN];
        apply(&mut backup, &mirror.cut(true).full_image.expect("asked for"));
        assert!(same_as_primary(&mirror, &backup), "{mode}: its write is checkpointed");
    }
}

#[test]
fn a_read_waits_for_the_checkpoint_of_the_last_write_and_no_later() {
    for mode in TrackingMode::ALL {
        let Some(mirror) = tracked(mode) else { continue };
        // Before any write: the first open checkpoint, as if the region's start were a write.
        let (byte, ticket) = mirror.read(|image| image[0]);
        assert_eq!((byte, ticket.checkpoint), (0, CheckpointId(1)));
        let written = mirror.update(|image| image[0] = 7).1;
        let (byte, ticket) = mirror.read(|image| image[0]);
        assert_eq!((byte, ticket), (7, written), "{mode}: a read after a write waits for its checkpoint");
        // Reads among reads wait for nothing newer than the last write, cuts or not.
        let cut = mirror.cut(false);
        assert_eq!(cut.checkpoint, written.checkpoint);
        mirror.cut(false);
        assert_eq!(mirror.read(|_| ()).1, written, "{mode}: no write since: the same, older checkpoint");
        let later = mirror.update(|image| image[1] = 1).1;
        assert!(later.checkpoint > written.checkpoint);
        assert_eq!(mirror.read(|_| ()).1, later, "{mode}");
    }
}

#[test]
fn a_whole_image_covers_every_page_ever_written() {
    for mode in TrackingMode::ALL {
        let Some(mirror) = tracked(mode) else { continue };
        let mut rng = SmallRng::seed_from_u64(8);
        for _ in 0..5 {
            for _ in 0..30 {
                mirror.update(|image| scribble(image, &mut rng));
            }
            mirror.cut(false);
        }
        mirror.update(|image| scribble(image, &mut rng));
        let cut = mirror.cut(true);
        let mut fresh = vec![0u8; LEN];
        apply(&mut fresh, cut.full_image.as_ref().expect("asked for"));
        assert!(same_as_primary(&mirror, &fresh), "{mode}");
    }
}

/// A promoted backup's image, resumed with the backup's record of the pages it wrote: the
/// shadow holds those pages, so the next checkpoint ships only what changed after the
/// promotion, and a whole image for a new backup still covers every page.
#[test]
fn a_promoted_image_is_resumed_from_the_pages_its_backup_wrote() {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    for mode in TrackingMode::ALL {
        let base = 0x2580_0000_0000 + NEXT.fetch_add(1, Ordering::Relaxed) * (1 << 32);
        let mut region = Region::map(base, LEN).unwrap();
        // A backup's image is resident and zeroed in place: every page is populated, so the
        // kernel alone cannot tell which pages hold anything.
        region.populate().unwrap();
        let mut written = nonstop_proto::written::WrittenPages::new(LEN);
        for (page, byte) in [(3usize, 0xa5u8), (70, 0x5a)] {
            region.as_mut_slice()[page * PAGE_SIZE..][..PAGE_SIZE].fill(byte);
            written.mark((page * PAGE_SIZE) as u64, PAGE_SIZE);
        }
        let mirror = match Mirror::tracked_resume(region, Some(mode), CheckpointId(9), written.pages()) {
            Ok(mirror) => mirror,
            Err(error) if mode == TrackingMode::Uffd && std::env::var_os("NONSTOP_REQUIRE_UFFD").is_none() => {
                eprintln!("SKIPPED for uffd: {error}");
                continue;
            }
            Err(error) => panic!("{mode}: {error}"),
        };
        mirror.update(|image| image[3 * PAGE_SIZE + 17] = 0);
        let cut = mirror.cut(false);
        assert_eq!(cut.checkpoint, CheckpointId(9), "{mode}");
        // Diffs go by 8-byte words: had page 3 not been in the shadow, its 4 KiB would ship.
        assert_eq!(cut.changes.run_bytes(), 8, "{mode}: page 3 was in the shadow, only the changed word ships");
        let whole = mirror.cut(true);
        let mut fresh = vec![0u8; LEN];
        apply(&mut fresh, whole.full_image.as_ref().expect("asked for"));
        assert!(same_as_primary(&mirror, &fresh), "{mode}: the whole image covers the backup's pages");
    }
}

/// Pre-copy rounds race updates from two threads; the copied pages plus the finishing delta
/// must be the image.
#[test]
fn precopy_rounds_race_updates_and_lose_no_write() {
    for mode in TrackingMode::ALL {
        let Some(mirror) = tracked(mode) else { continue };
        let stop = AtomicBool::new(false);
        let updates = AtomicUsize::new(0);
        let mut copy = vec![0u8; LEN];
        let mut recopied = 0;
        std::thread::scope(|scope| {
            for seed in 0..2u64 {
                let (mirror, stop, updates) = (&mirror, &stop, &updates);
                scope.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(seed);
                    while !stop.load(Ordering::Relaxed) {
                        mirror.update(|image| scribble(image, &mut rng));
                        updates.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            while updates.load(Ordering::Relaxed) < 200 {
                std::hint::spin_loop();
            }
            mirror.precopy_begin();
            for round in 0..4 {
                let target = updates.load(Ordering::Relaxed) + 100;
                while updates.load(Ordering::Relaxed) < target {
                    std::hint::spin_loop();
                }
                let copied = mirror
                    .precopy_round(round == 0, 8, |runs| {
                        apply(&mut copy, &runs);
                        Ok::<(), ()>(())
                    })
                    .unwrap();
                if round > 0 {
                    recopied += copied;
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert!(recopied > 0, "{mode}: later rounds copy the pages written since the round before");
        let content = mirror.cut_with(FirstImages { finish_precopy: true, ..FirstImages::default() });
        apply(&mut copy, &content.precopy_delta.expect("finishing a pre-copy yields its delta"));
        assert!(same_as_primary(&mirror, &copy), "{mode}: a page lost a write");
    }
}

#[test]
#[should_panic(expected = "write through Mirror::update")]
fn transactions_are_refused_in_transparent_mode() {
    let mirror = tracked(TrackingMode::Mprotect).unwrap();
    let _ = mirror.begin();
}

#[test]
#[should_panic(expected = "needs transparent mode")]
fn updates_are_refused_on_a_mirror_of_declared_writes() {
    let mirror = Mirror::new(Region::map(0x2600_0000_0000, LEN).unwrap(), None, CheckpointId(1));
    mirror.update(|image| image[0] = 1);
}
