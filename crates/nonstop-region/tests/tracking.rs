//! Write tracking: both kernel mechanisms pass the same tests — exactly the written pages are
//! reported, once each, and writes racing with collections are never lost.

use nonstop_proto::PAGE_SIZE;
use nonstop_region::Region;
use nonstop_region::tracking::{TrackingMode, WriteTracker};
use proptest::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A region base of its own per call, so tests running in parallel never collide.
fn fresh_region(pages: usize) -> Region {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed);
    Region::map(0x2400_0000_0000 + slot * (1 << 32), pages * PAGE_SIZE).unwrap()
}

/// Starts `mode` on `region`; `None` (with a message) where the kernel lacks it, except that
/// `NONSTOP_REQUIRE_UFFD=1` makes a missing userfaultfd a failure.
fn tracker(region: &Region, mode: TrackingMode) -> Option<WriteTracker> {
    match WriteTracker::start(region, Some(mode)) {
        Ok(tracker) => Some(tracker),
        Err(error) if mode == TrackingMode::Uffd && std::env::var_os("NONSTOP_REQUIRE_UFFD").is_none() => {
            eprintln!("SKIPPED for uffd: {error}");
            None
        }
        Err(error) => panic!("{mode} tracking: {error}"),
    }
}

fn collected(tracker: &mut WriteTracker) -> Vec<usize> {
    let mut pages = Vec::new();
    tracker.collect(&mut pages).unwrap();
    pages
}

#[test]
fn exactly_the_written_pages_are_reported_once() {
    for mode in TrackingMode::ALL {
        let mut region = fresh_region(512);
        region.as_mut_slice()[9 * PAGE_SIZE] = 1; // before tracking: not reported
        let Some(mut tracker) = tracker(&region, mode) else { continue };
        assert_eq!(tracker.mode(), mode);
        assert!(collected(&mut tracker).is_empty(), "{mode}: nothing written yet");
        let bytes = region.as_mut_slice();
        for page in [0, 5, 6, 100, 511] {
            bytes[page * PAGE_SIZE + page % PAGE_SIZE] = 0xA5;
        }
        bytes[6 * PAGE_SIZE + 4000] = 2; // twice to one page
        let read: u64 = bytes.iter().step_by(PAGE_SIZE).map(|b| u64::from(*b)).sum(); // reads are not writes
        assert!(read > 0);
        assert_eq!(collected(&mut tracker), [0, 5, 6, 100, 511], "{mode}");
        assert!(collected(&mut tracker).is_empty(), "{mode}: reported once");
        region.as_mut_slice()[5 * PAGE_SIZE + 1] = 3;
        assert_eq!(collected(&mut tracker), [5], "{mode}: protected again after a collection");
    }
}

#[test]
fn a_dropped_tracker_leaves_the_region_writable_and_untracked() {
    for mode in TrackingMode::ALL {
        let mut region = fresh_region(16);
        let Some(tracker) = tracker(&region, mode) else { continue };
        drop(tracker);
        region.as_mut_slice()[3 * PAGE_SIZE] = 1;
        // A new tracker sees only what is written after it started.
        let Some(mut tracker) = self::tracker(&region, mode) else { continue };
        assert!(collected(&mut tracker).is_empty(), "{mode}");
    }
}

/// Writers change random pages while the collector copies every reported page into a
/// shadow. Once the writers stop and a last collection is copied, the shadow must equal the
/// region: a write reported neither by the collection it raced nor by a later one would be
/// missing from the shadow.
#[test]
fn writes_racing_with_collections_are_never_lost() {
    const PAGES: usize = 256;
    for mode in TrackingMode::ALL {
        let region = fresh_region(PAGES);
        let Some(mut tracker) = tracker(&region, mode) else { continue };
        let mut shadow = vec![0u8; PAGES * PAGE_SIZE];
        let stop = AtomicBool::new(false);
        let base = region.as_ptr() as usize;
        let mut collections = 0;
        std::thread::scope(|scope| {
            for writer in 0..3u64 {
                let stop = &stop;
                scope.spawn(move || {
                    let mut state = writer.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    let mut value = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        value += 1;
                        // Each writer owns every third word, so writes never overlap.
                        let word = (state as usize % (PAGES * PAGE_SIZE / 24)) * 3 + writer as usize;
                        // SAFETY: inside the region; no other thread writes this word, and the
                        // collector only reads (a racy read is re-read at the next collection).
                        unsafe { std::ptr::write_volatile((base as *mut u64).add(word), value) };
                    }
                });
            }
            let started = std::time::Instant::now();
            let mut pages = Vec::new();
            while started.elapsed() < std::time::Duration::from_millis(400) {
                pages.clear();
                tracker.collect(&mut pages).unwrap();
                copy_pages(base, &pages, &mut shadow);
                collections += 1;
            }
            stop.store(true, Ordering::Relaxed);
        });
        let mut pages = Vec::new();
        tracker.collect(&mut pages).unwrap();
        copy_pages(base, &pages, &mut shadow);
        assert!(collections > 10, "{mode}: only {collections} collections");
        let differing = (0..PAGES)
            .filter(|page| {
                shadow[page * PAGE_SIZE..][..PAGE_SIZE] != region.as_slice()[page * PAGE_SIZE..][..PAGE_SIZE]
            })
            .count();
        assert_eq!(differing, 0, "{mode}: pages written but never reported after {collections} collections");
    }
}

fn copy_pages(base: usize, pages: &[usize], shadow: &mut [u8]) {
    for &page in pages {
        // SAFETY: the page lies inside the region; writers may be changing words of it, which
        // volatile reads tolerate (the page is reported again if they do).
        for word in 0..PAGE_SIZE / 8 {
            let at = page * PAGE_SIZE + word * 8;
            let value = unsafe { std::ptr::read_volatile((base + at) as *const u64) };
            shadow[at..at + 8].copy_from_slice(&value.to_ne_bytes());
        }
    }
}

#[test]
fn modes_parse_from_their_names() {
    for mode in TrackingMode::ALL {
        assert_eq!(mode.name().parse::<TrackingMode>(), Ok(mode));
    }
    let error = "soft-dirty".parse::<TrackingMode>().unwrap_err();
    assert!(error.contains("uffd or mprotect"), "{error}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn any_set_of_writes_is_reported_exactly(writes in proptest::collection::vec((0usize..64, 0usize..PAGE_SIZE), 0..40)) {
        for mode in TrackingMode::ALL {
            let mut region = fresh_region(64);
            let Some(mut tracker) = tracker(&region, mode) else { continue };
            for (page, offset) in &writes {
                region.as_mut_slice()[page * PAGE_SIZE + offset] ^= 0xFF;
            }
            let mut expected: Vec<usize> = writes.iter().map(|(page, _)| *page).collect();
            expected.sort_unstable();
            expected.dedup();
            prop_assert_eq!(collected(&mut tracker), expected, "{}", mode);
        }
    }
}
