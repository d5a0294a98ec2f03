//! DU's page diff: the runs in which a dirty page differs from its twin.
//!
//! Pages are compared eight bytes at a time; differing words closer than [`MERGE_GAP`] bytes
//! are sent as one run, because a run header (12 bytes) costs more than a few unchanged bytes.

use crate::PAGE_SIZE;
use crate::runs::RunsBuilder;

/// Unchanged stretches shorter than this are sent inside a run rather than splitting it.
pub const MERGE_GAP: usize = 16;

const WORD: usize = 8;

const BLOCK: usize = 64;

fn word(bytes: &[u8]) -> u64 {
    u64::from_ne_bytes(bytes.try_into().expect("8 bytes"))
}

/// Appends to `out` the runs that turn `twin` into `current`, for the page at region offset
/// `page_offset`. Returns the number of region bytes in those runs.
///
/// # Panics
/// If either slice is not exactly one page: twins and pages are page-sized by construction.
///
/// ```
/// use nonstop_proto::{PAGE_SIZE, diff::diff_page, runs::{RunsBuilder, parse_runs}};
/// let twin = vec![0u8; PAGE_SIZE];
/// let mut page = twin.clone();
/// page[100..104].copy_from_slice(b"abcd");
/// let mut runs = RunsBuilder::new();
/// diff_page(8192, &twin, &page, &mut runs);
/// let payload = runs.into_payloads().remove(0);
/// let runs = parse_runs(&payload, 1 << 20).unwrap();
/// assert_eq!(runs.len(), 1);
/// assert!(runs[0].offset <= 8192 + 100 && runs[0].bytes.len() <= 8);
/// ```
pub fn diff_page(page_offset: u64, twin: &[u8], current: &[u8], out: &mut RunsBuilder) -> usize {
    assert_eq!(twin.len(), PAGE_SIZE);
    diff_range(page_offset, twin, current, out)
}

/// Like [`diff_page`] for any part of a page whose length is a multiple of 64 bytes (DU keeps
/// twins of smaller blocks than a page; see `nonstop-region`).
///
/// # Panics
/// If the slices differ in length or are not a multiple of 64 bytes long.
pub fn diff_range(range_offset: u64, twin: &[u8], current: &[u8], out: &mut RunsBuilder) -> usize {
    assert_eq!(twin.len(), current.len());
    assert_eq!(twin.len() % BLOCK, 0, "diff ranges are whole 64-byte blocks");
    let page_offset = range_offset;
    let mut sent = 0;
    // The open run, in words: [start, end).
    let mut open: Option<(usize, usize)> = None;
    let mut flush = |run: (usize, usize), out: &mut RunsBuilder| {
        let (from, to) = (run.0 * WORD, run.1 * WORD);
        out.push(page_offset + from as u64, &current[from..to]);
        sent += to - from;
    };
    for (block, (old, new)) in twin.chunks_exact(BLOCK).zip(current.chunks_exact(BLOCK)).enumerate() {
        // Most blocks of a dirty page are unchanged: test a whole block without branches
        // (the compiler turns this into a few vector instructions) before looking at words.
        let differs =
            old.chunks_exact(WORD).zip(new.chunks_exact(WORD)).fold(0u64, |acc, (a, b)| acc | (word(a) ^ word(b)));
        if differs == 0 {
            continue;
        }
        for (index, (a, b)) in old.chunks_exact(WORD).zip(new.chunks_exact(WORD)).enumerate() {
            if word(a) == word(b) {
                continue;
            }
            let at = block * (BLOCK / WORD) + index;
            open = match open {
                Some((start, end)) if (at - end) * WORD < MERGE_GAP => Some((start, at + 1)),
                Some(run) => {
                    flush(run, out);
                    Some((at, at + 1))
                }
                None => Some((at, at + 1)),
            };
        }
    }
    if let Some(run) = open {
        flush(run, out);
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::parse_runs;
    use proptest::prelude::*;

    fn apply(image: &mut [u8], payloads: &[Vec<u8>]) {
        for payload in payloads {
            for run in parse_runs(payload, image.len() as u64).unwrap() {
                image[run.offset as usize..][..run.bytes.len()].copy_from_slice(run.bytes);
            }
        }
    }

    proptest! {
        #[test]
        fn apply_of_diff_turns_twin_into_page(
            seed in proptest::collection::vec(any::<u8>(), PAGE_SIZE),
            edits in proptest::collection::vec((0..PAGE_SIZE, proptest::collection::vec(any::<u8>(), 1..64)), 0..40),
        ) {
            let twin = seed;
            let mut page = twin.clone();
            for (at, bytes) in edits {
                let n = bytes.len().min(PAGE_SIZE - at);
                page[at..at + n].copy_from_slice(&bytes[..n]);
            }
            let mut runs = RunsBuilder::new();
            let sent = diff_page(PAGE_SIZE as u64, &twin, &page, &mut runs);
            prop_assert!(sent <= PAGE_SIZE);
            prop_assert_eq!(sent == 0, twin == page);
            let mut image = vec![0u8; 3 * PAGE_SIZE];
            image[PAGE_SIZE..2 * PAGE_SIZE].copy_from_slice(&twin);
            apply(&mut image, &runs.into_payloads());
            prop_assert_eq!(&image[PAGE_SIZE..2 * PAGE_SIZE], &page[..]);
            prop_assert!(image[..PAGE_SIZE].iter().chain(&image[2 * PAGE_SIZE..]).all(|&b| b == 0));
        }
    }

    #[test]
    fn whole_page_change_is_one_run() {
        let twin = vec![0u8; PAGE_SIZE];
        let page = vec![1u8; PAGE_SIZE];
        let mut runs = RunsBuilder::new();
        assert_eq!(diff_page(0, &twin, &page, &mut runs), PAGE_SIZE);
        let payload = runs.into_payloads().remove(0);
        assert_eq!(parse_runs(&payload, PAGE_SIZE as u64).unwrap().len(), 1);
    }
}
