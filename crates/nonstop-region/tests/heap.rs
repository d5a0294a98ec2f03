//! Ordinary collections in the region: built on a transparent-mode primary, rebuilt on a
//! "backup" from checkpoint diffs alone, and used again after a promotion at the same address.

use nonstop_proto::CheckpointId;
use nonstop_proto::runs::parse_runs;
use nonstop_region::heap::{
    FixedState, Heap, HeapError, RegionAlloc, RegionHashMap, RegionOrderedMap, RegionVec, ordered_key, stray_pointers,
};
use nonstop_region::tracking::{TrackingMode, WriteExtent};
use nonstop_region::{Mirror, Region};
use std::collections::BTreeMap;

const LEN: usize = 8 << 20;

/// A service's state as plain Rust values.
struct Accounts {
    balances: RegionHashMap<u64, i64>,
    history: RegionVec<(u64, i64)>,
    names: RegionHashMap<u64, RegionVec<u8>>,
    /// The same balances in account order (where a `BTreeMap` would be).
    ordered: RegionOrderedMap<[u8; 8], i64>,
}

impl Accounts {
    fn new(alloc: RegionAlloc) -> Accounts {
        Accounts {
            balances: RegionHashMap::with_hasher_in(FixedState::default(), alloc),
            history: RegionVec::new_in(alloc),
            names: RegionHashMap::with_hasher_in(FixedState::default(), alloc),
            ordered: RegionOrderedMap::new_in(alloc),
        }
    }

    fn transfer(&mut self, alloc: RegionAlloc, account: u64, delta: i64) {
        *self.balances.entry(account).or_insert(0) += delta;
        let balance = self.balances[&account];
        self.ordered.insert(ordered_key(account), balance);
        self.history.push((account, delta));
        if !self.names.contains_key(&account) {
            let mut name = RegionVec::new_in(alloc);
            name.extend_from_slice(format!("account-{account}").as_bytes());
            self.names.insert(account, name);
        }
    }
}

fn apply(image: &mut [u8], runs: &nonstop_proto::runs::RunsBuilder) {
    for payload in runs.payloads() {
        for run in parse_runs(payload, image.len() as u64).unwrap() {
            image[run.offset as usize..][..run.bytes.len()].copy_from_slice(run.bytes);
        }
    }
}

fn with_accounts<R>(mirror: &Mirror, f: impl FnOnce(&mut Accounts, RegionAlloc) -> R) -> R {
    mirror
        .update(|image| {
            let mut heap = Heap::open(image).unwrap();
            let alloc = heap.allocator();
            f(heap.root(|| Accounts::new(alloc)).unwrap(), alloc)
        })
        .0
}

#[test]
fn collections_are_rebuilt_by_a_backup_and_used_after_a_promotion() {
    for (index, mode) in TrackingMode::ALL.into_iter().enumerate() {
        let base = 0x2700_0000_0000 + index * (1 << 32);
        let primary = match Mirror::tracked(Region::map(base, LEN).unwrap(), Some(mode), CheckpointId(1)) {
            Ok(mirror) => mirror,
            Err(error) if mode == TrackingMode::Uffd && std::env::var_os("NONSTOP_REQUIRE_UFFD").is_none() => {
                eprintln!("SKIPPED for uffd: {error}");
                continue;
            }
            Err(error) => panic!("{error}"),
        };
        let mut expected: BTreeMap<u64, i64> = BTreeMap::new();
        // The ordered map drops zero balances at every tenth round.
        let mut expected_ordered: BTreeMap<u64, i64> = BTreeMap::new();
        let mut backup = vec![0u8; LEN];
        let mut state = 1u64;
        for round in 0..40 {
            for _ in 0..200 {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let (account, delta) = ((state >> 33) % 5000, (state >> 20) as i64 % 1000 - 500);
                *expected.entry(account).or_insert(0) += delta;
                expected_ordered.insert(account, expected[&account]);
                with_accounts(&primary, |accounts, alloc| accounts.transfer(alloc, account, delta));
            }
            if round % 10 == 9 {
                // Deletes free memory that later inserts reuse (the ordered map's nodes too:
                // a balance of exactly zero leaves it).
                with_accounts(&primary, |accounts, _| {
                    let zero: Vec<[u8; 8]> =
                        accounts.ordered.iter().filter(|(_, b)| **b == 0).map(|(k, _)| *k).collect();
                    for key in &zero {
                        accounts.ordered.remove(key);
                    }
                });
                expected_ordered.retain(|_, balance| *balance != 0);
                let gone: Vec<u64> = expected.keys().copied().filter(|a| a % 7 == round as u64 % 7).collect();
                with_accounts(&primary, |accounts, _| gone.iter().for_each(|a| drop(accounts.names.remove(a))));
            }
            apply(&mut backup, &primary.cut(false).changes);
        }
        let strays = primary.quiesced(|image, _| stray_pointers(image, 10)).unwrap();
        assert!(strays.is_empty(), "{mode}: region values point out of the region: {strays:?}");
        drop(primary);

        // Promotion: the backup's image at the same address, and the service carries on.
        let mut region = Region::map(base, LEN).unwrap();
        region.as_mut_slice().copy_from_slice(&backup);
        let promoted = Mirror::tracked(region, Some(mode), CheckpointId(100)).unwrap();
        with_accounts(&promoted, |accounts, alloc| {
            let found: BTreeMap<u64, i64> = accounts.balances.iter().map(|(a, b)| (*a, *b)).collect();
            assert_eq!(found, expected, "{mode}: balances after promotion");
            let in_order: Vec<(u64, i64)> =
                accounts.ordered.iter().map(|(key, balance)| (u64::from_be_bytes(*key), *balance)).collect();
            let want: Vec<(u64, i64)> = expected_ordered.iter().map(|(a, b)| (*a, *b)).collect();
            assert_eq!(in_order, want, "{mode}: in key order");
            let some: Vec<u64> = accounts
                .ordered
                .range(ordered_key(1000)..ordered_key(1100))
                .map(|(key, _)| u64::from_be_bytes(*key))
                .collect();
            assert_eq!(
                some,
                expected_ordered.range(1000..1100).map(|(a, _)| *a).collect::<Vec<_>>(),
                "{mode}: a range"
            );
            assert_eq!(accounts.history.len(), 8000, "{mode}");
            // Names were removed at rounds 9, 19, 29 and 39: accounts = 2, 5, 1, 4 (mod 7).
            for account in expected.keys().filter(|a| [0, 3, 6].contains(&(*a % 7))) {
                let name = accounts.names.get(account).map(|n| n.as_slice());
                assert_eq!(name, Some(format!("account-{account}").as_bytes()), "{mode}");
            }
            for account in 0..100 {
                accounts.transfer(alloc, 10_000 + account, 1);
            }
            assert_eq!(accounts.names.get(&10_042).map(|n| n.as_slice()), Some(&b"account-10042"[..]));
        });
    }
}

#[test]
fn a_root_of_another_type_is_refused() {
    let mirror = Mirror::transparent_unreplicated(Region::map(0x2800_0000_0000, LEN).unwrap(), CheckpointId(1));
    mirror.update(|image| {
        let mut heap = Heap::open(image).unwrap();
        *heap.root(|| 5u64).unwrap() += 1;
    });
    let refused = mirror.update(|image| Heap::open(image).unwrap().root(|| 5u32).map(|_| ()).unwrap_err()).0;
    assert!(matches!(refused, HeapError::RootType { asked: "u32" }), "{refused}");
    let found = mirror.update(|image| *Heap::open(image).unwrap().root(|| 0u64).unwrap()).0;
    assert_eq!(found, 6);
}

#[test]
fn the_heap_counts_what_it_holds() {
    let mirror = Mirror::transparent_unreplicated(Region::map(0x2a00_0000_0000, LEN).unwrap(), CheckpointId(1));
    let usage = |mirror: &Mirror| {
        mirror
            .read(|image| {
                let root = Heap::root_in::<RegionVec<u64>>(image).unwrap().unwrap();
                root.allocator().usage()
            })
            .0
    };
    mirror.update(|image| {
        let mut heap = Heap::open(image).unwrap();
        let alloc = heap.allocator();
        let values = heap.root(|| RegionVec::<u64>::new_in(alloc)).unwrap();
        values.extend_from_slice(&[1, 2, 3]);
    });
    let first = usage(&mirror);
    assert_eq!(first.allocations, 2, "the root and the vector's buffer");
    assert!(first.allocated_bytes >= 3 * 8 && first.arena_bytes > LEN / 2, "{first:?}");
    mirror.update(|image| {
        Heap::open(image).unwrap().root::<RegionVec<u64>>(|| unreachable!()).unwrap().reserve_exact(1000)
    });
    let grown = usage(&mirror);
    assert!(grown.allocated_bytes >= first.allocated_bytes + 997 * 8, "{grown:?}");
    mirror.update(|image| {
        let mut heap = Heap::open(image).unwrap();
        let alloc = heap.allocator();
        *heap.root::<RegionVec<u64>>(|| unreachable!()).unwrap() = RegionVec::new_in(alloc);
    });
    assert_eq!(usage(&mirror).allocations, 1, "the buffer freed");
}

#[test]
fn a_region_holding_something_else_is_not_taken_for_a_heap() {
    let mirror = Mirror::transparent_unreplicated(Region::map(0x2900_0000_0000, LEN).unwrap(), CheckpointId(1));
    mirror.update(|image| image[0] = 0x42);
    let refused = mirror.update(|image| Heap::open(image).map(|_| ()).unwrap_err()).0;
    assert!(matches!(refused, HeapError::NotAHeap { .. }), "{refused}");
    assert!(refused.to_string().contains("region of its own"));
}

/// The common mistake: a `std` collection in the region keeps its buffer on the process heap.
#[test]
fn a_std_vec_in_the_region_is_found_as_a_stray_pointer() {
    struct Mistake {
        log: Vec<u64>,
    }
    let mirror = Mirror::transparent_unreplicated(Region::map(0x2a00_0000_0000, LEN).unwrap(), CheckpointId(1));
    mirror.update(|image| {
        let mut heap = Heap::open(image).unwrap();
        heap.root(|| Mistake { log: Vec::new() }).unwrap().log.extend(0..1000);
    });
    let strays = mirror.quiesced(|image, _| stray_pointers(image, 10)).unwrap();
    assert_eq!(strays.len(), 1, "the Vec's buffer pointer: {strays:?}");
    // Leave the process heap as it was: the root is never dropped otherwise.
    mirror.update(|image| {
        std::mem::take(&mut Heap::open(image).unwrap().root(|| Mistake { log: Vec::new() }).unwrap().log)
    });
}

/// A header from a damaged image never hands out a reference outside the heap.
#[test]
fn a_root_address_outside_the_arena_is_refused() {
    let mirror = Mirror::transparent_unreplicated(Region::map(0x2c00_0000_0000, LEN).unwrap(), CheckpointId(1));
    mirror.update(|image| {
        *Heap::open(image).unwrap().root(|| 5u64).unwrap() += 1;
        // The root's address is the header's third word.
        image[16..24].copy_from_slice(&(0x2c00_0000_0000usize + LEN).to_ne_bytes());
    });
    let refused = mirror.update(|image| Heap::open(image).unwrap().root(|| 0u64).map(|_| ()).unwrap_err()).0;
    assert!(matches!(refused, HeapError::RootOutside { .. }), "{refused}");
}

/// Blobs of many sizes, made, changed, grown and freed at random.
type Blobs = RegionVec<RegionVec<u8>>;

/// One update's worth of random work on the blobs.
fn churn(blobs: &mut Blobs, alloc: RegionAlloc, state: &mut u64) {
    let mut next = |bound: u64| {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*state >> 33) % bound.max(1)
    };
    for _ in 0..8 {
        match next(10) {
            0..=4 => {
                // Mostly small, now and then up to 256 KiB: talc splits and merges all sizes.
                let bits = 4 + next(15);
                let len = 1 + next(1 << bits) as usize;
                let mut blob = RegionVec::with_capacity_in(len, alloc);
                blob.resize(len, next(256) as u8);
                blobs.push(blob);
            }
            5 | 6 if !blobs.is_empty() => {
                let count = blobs.len() as u64;
                let gone = next(count) as usize;
                blobs.swap_remove(gone);
            }
            7 if !blobs.is_empty() => {
                let count = blobs.len() as u64;
                let grown = next(count) as usize;
                let more = next(4096) as usize;
                blobs[grown].extend(std::iter::repeat_n(0xa5, more));
            }
            _ if !blobs.is_empty() => {
                let count = blobs.len() as u64;
                let blob = &mut blobs[next(count) as usize];
                if !blob.is_empty() {
                    let at = next(blob.len() as u64) as usize;
                    blob[at] ^= 0x5a;
                }
            }
            _ => {}
        }
    }
}

/// A cut that asks the kernel only about the heap's arena and the ranges named beside it
/// (`WriteExtent::Heap`) still finds every write, while the arena grows from its first MiB to
/// tens of MiB: a backup rebuilt from the cuts alone equals the primary after every cut. A
/// write outside the extent is missed, which shows that the comparison would catch a heap
/// that wrote past the end it publishes.
#[test]
fn cuts_bounded_by_the_heap_see_every_write_as_the_arena_grows() {
    const REGION: usize = 64 << 20;
    const HEAP: usize = 48 << 20;
    const TABLE: std::ops::Range<usize> = (56 << 20)..(60 << 20);
    for (index, mode) in TrackingMode::ALL.into_iter().enumerate() {
        let base = 0x2d00_0000_0000 + index * (1 << 32);
        let extent = WriteExtent::Heap { heap_len: HEAP, also: vec![TABLE] };
        let primary = match Mirror::tracked(Region::map(base, REGION).unwrap(), Some(mode), CheckpointId(1)) {
            Ok(mirror) => mirror.with_write_extent(extent),
            Err(error) if mode == TrackingMode::Uffd && std::env::var_os("NONSTOP_REQUIRE_UFFD").is_none() => {
                eprintln!("SKIPPED for uffd: {error}");
                continue;
            }
            Err(error) => panic!("{error}"),
        };
        let mut backup = vec![0u8; REGION];
        let mut state = 7u64 + index as u64;
        let mut most = 0;
        for round in 0..600 {
            primary.update(|image| {
                let (heap_part, rest) = image.split_at_mut(HEAP);
                let mut heap = Heap::open(heap_part).unwrap();
                let alloc = heap.allocator();
                churn(heap.root(|| Blobs::new_in(alloc)).unwrap(), alloc, &mut state);
                most = most.max(alloc.usage().allocated_bytes);
                // The "client table": written directly, in the range named beside the heap.
                rest[TABLE.start - HEAP + (round * 4099) % TABLE.len()] = round as u8 | 1;
            });
            apply(&mut backup, &primary.cut(false).changes);
            if round % 50 == 49 {
                let same = primary.quiesced(|image, _| image == backup.as_slice());
                assert!(same, "{mode}: the backup differs from the primary after round {round}");
            }
        }
        assert!(most > 8 << 20, "{mode}: the arena grew well past its first MiB ({most} bytes at most)");
        primary.update(|image| image[HEAP + 4096] = 1);
        apply(&mut backup, &primary.cut(false).changes);
        let missed = primary.quiesced(|image, _| image[HEAP + 4096] != backup[HEAP + 4096]);
        assert_eq!(missed, mode == TrackingMode::Uffd, "{mode}: a write outside the extent");
    }
}

/// The arena grows as allocations need it, up to the heap's length and no further: the last
/// allocation that does not fit fails as any allocation would, and nothing before it is lost.
#[test]
fn the_arena_grows_to_the_heaps_length_and_no_further() {
    const HEAP: usize = 16 << 20;
    let mirror = Mirror::transparent_unreplicated(Region::map(0x2f00_0000_0000, HEAP).unwrap(), CheckpointId(1));
    let (held, refused) = mirror
        .update(|image| {
            let mut heap = Heap::open(image).unwrap();
            let alloc = heap.allocator();
            let blobs = heap.root(|| Blobs::new_in(alloc)).unwrap();
            blobs.reserve(1 << 16);
            loop {
                let mut blob = RegionVec::new_in(alloc);
                if blob.try_reserve_exact(100_000).is_err() {
                    break (blobs.len(), alloc.usage());
                }
                blob.resize(100_000, blobs.len() as u8);
                blobs.push(blob);
            }
        })
        .0;
    assert!(refused.allocated_bytes > HEAP - HEAP / 20, "most of the heap is used before it is full: {refused:?}");
    let intact = mirror
        .read(|image| {
            let blobs = Heap::root_in::<Blobs>(image).unwrap().unwrap();
            blobs.iter().enumerate().all(|(i, blob)| blob.len() == 100_000 && blob.iter().all(|b| *b == i as u8))
        })
        .0;
    assert!(held > 100 && intact, "{held} blobs, intact: {intact}");
}

/// The allocator's growth record is read from the image like everything else in it: one that
/// a damaged image left pointing past the region must not grow the arena over the memory
/// next to it. The heap refuses to grow instead (allocations fail, as in a full region), and
/// the memory after the region stays untouched.
#[test]
fn a_damaged_growth_record_does_not_grow_the_arena_past_the_region() {
    const HEAP: usize = 8 << 20;
    const BASE: usize = 0x2f80_0000_0000;
    let mirror = Mirror::transparent_unreplicated(Region::map(BASE, HEAP).unwrap(), CheckpointId(1));
    let neighbour = Region::map(BASE + HEAP, 4 * HEAP).unwrap();
    let held = mirror
        .update(|image| {
            let mut heap = Heap::open(image).unwrap();
            let alloc = heap.allocator();
            heap.root(|| Blobs::new_in(alloc)).unwrap().reserve(64);
            // The record's limit (the region's end, as an address) is in the header, before
            // the arena; the damage moves it 24 MiB further.
            let limit = (BASE + HEAP).to_ne_bytes();
            let at = (0..4096 - 8).step_by(8).filter(|&i| image[i..i + 8] == limit).collect::<Vec<_>>();
            assert_eq!(at.len(), 1, "the limit appears once in the header: {at:?}");
            image[at[0]..at[0] + 8].copy_from_slice(&(BASE + 4 * HEAP).to_ne_bytes());
            let mut heap = Heap::open(image).unwrap();
            let alloc = heap.allocator();
            let blobs = heap.root(|| Blobs::new_in(alloc)).unwrap();
            // Far more than the region holds: the arena would grow past its end to fit them.
            for i in 0..200 {
                let mut blob = RegionVec::new_in(alloc);
                if blob.try_reserve_exact(100_000).is_err() {
                    break;
                }
                blob.resize(100_000, i as u8);
                blobs.push(blob);
            }
            blobs.len()
        })
        .0;
    assert!(neighbour.as_slice().iter().all(|b| *b == 0), "the memory after the region was written");
    assert!((1..12).contains(&held), "{held} blobs of 100 KB fit in the arena the heap had (1 MiB)");
    let intact = mirror
        .read(|image| {
            let blobs = Heap::root_in::<Blobs>(image).unwrap().unwrap();
            blobs.iter().enumerate().all(|(i, blob)| blob.iter().all(|b| *b == i as u8))
        })
        .0;
    assert!(intact, "the blobs made before the refusal are intact");
}
