//! Line seals: a checksum for every 64-byte line of a region, so that a bit that changes in
//! memory behind the program's back (a failing DIMM, a stray write through a wild pointer, an
//! error injector) is caught before it is read, written, replicated or promoted.
//!
//! Frames are covered on the wire by their CRC and MAC; this covers the bytes while they sit in
//! memory. Both ends keep the same table: the primary checks the lines a transaction touches
//! before handing them out and seals the lines it wrote at commit; a backup seals the lines a
//! checkpoint wrote when it applies it. A scrubber on each side walks every line in the
//! background, so that corruption of data nobody touches is found too. A line is 64 bytes
//! because that is the unit transactions lock ([`LINE`] equals the range-lock line), so whoever
//! may write a line is also the only one who may seal it.
//!
//! The checksum is a weighted sum (see `line_sum`): cheap enough for every transaction, and
//! certain to catch any error confined to one 32-bit word, a single flipped bit above all. A
//! zero line sums to 0, so that a fresh, lazily mapped region has a table of lazily mapped zeros
//! too: a 1 GiB region does not pay 64 MiB of checksums for lines never written.
//!
//! ```
//! use nonstop_proto::integrity::LineChecksums;
//! let mut image = vec![0u8; 4096];
//! let sums = LineChecksums::zeroed(image.len());
//! image[100] = 7;
//! assert!(sums.check_range(&image, 64, 64).is_err()); // changed without a seal
//! sums.seal_range(&image, 100, 1);
//! assert!(sums.check_range(&image, 0, 4096).is_ok());
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use thiserror::Error;

/// Bytes covered by one checksum.
pub const LINE: usize = 64;

/// How often a scrubber looks at its next slice.
pub const SCRUB_TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// Lines a scrubber looks at per [`SCRUB_TICK`]: 256 KiB, well under 0.1 ms of summing, so 25 MiB/s
/// of region per node, a pass over a 64 MiB region every 2.6 s.
pub const SCRUB_LINES_PER_TICK: usize = 4096;

/// One odd weight per 32-bit word of a line (odd, so invertible modulo 2^32).
const WEIGHTS: [u32; LINE / 4] = weights();

const fn weights() -> [u32; LINE / 4] {
    let mut weights = [0u32; LINE / 4];
    let mut i = 0;
    while i < LINE / 4 {
        weights[i] = 0x9e37_79b1u32.wrapping_mul(2 * i as u32 + 1) | 1;
        i += 1;
    }
    weights
}

/// A line's bytes no longer match its checksum: memory changed outside any transaction or
/// checkpoint. The image must not be trusted, promoted or acknowledged.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error(
    "memory corruption: the 64-byte line at region offset {offset:#x} sums to {found:#010x}, its seal says {expected:#010x}; this copy of the region must not be served or promoted"
)]
pub struct CorruptLine {
    /// Offset of the line in the region.
    pub offset: u64,
    /// The checksum sealed when the line was last written.
    pub expected: u32,
    /// The checksum of what the line holds now.
    pub found: u32,
}

/// One checksum per [`LINE`] of a region.
///
/// Entries are atomics so that threads that own disjoint lines (transactions holding their
/// range locks) seal them concurrently through a shared reference; ordering comes from
/// whatever gives them the line (the lock), so every access here is relaxed.
#[derive(Debug)]
pub struct LineChecksums {
    sums: Box<[AtomicU32]>,
}

impl Clone for LineChecksums {
    fn clone(&self) -> LineChecksums {
        LineChecksums { sums: self.sums.iter().map(|sum| AtomicU32::new(sum.load(Ordering::Relaxed))).collect() }
    }
}

/// A line's seal: the sum of its 32-bit words, each times its own odd weight, modulo 2^32.
///
/// Sealing sits on every transaction's path, so it must cost a few nanoseconds, not a CRC's
/// call and dependency chain: sixteen independent multiplies the compiler vectorises. It
/// catches every error confined to one 32-bit word — every single-bit flip, every burst of up
/// to 32 aligned bits — since a change `d` of word `i` changes the sum by `d * weight[i]`,
/// which is not zero modulo 2^32 for an odd weight; other errors escape with probability about
/// 2^-32. A line of zeros sums to zero, so lazily mapped zeros need no seals.
fn line_sum(line: &[u8]) -> u32 {
    match <&[u8; LINE]>::try_from(line) {
        Ok(full) => full_line_sum(full),
        Err(_) => {
            // The last line of a region whose length is not a multiple of the line.
            let mut padded = [0u8; LINE];
            padded[..line.len()].copy_from_slice(line);
            full_line_sum(&padded)
        }
    }
}

#[inline]
fn word_of(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

#[inline]
fn full_line_sum(line: &[u8; LINE]) -> u32 {
    let mut sum = 0u32;
    for (word, weight) in line.chunks_exact(4).zip(WEIGHTS) {
        sum = sum.wrapping_add(u32::from_le_bytes(word.try_into().expect("4 bytes")).wrapping_mul(weight));
    }
    sum
}

impl LineChecksums {
    /// The table of a region of `len` bytes that holds only zeros.
    pub fn zeroed(len: usize) -> LineChecksums {
        let lines = len.div_ceil(LINE);
        // SAFETY: AtomicU32 has the size and validity of u32, so all-zero bytes are a valid
        // AtomicU32 holding 0, the stored value of a zero line. Zeroed allocations come from
        // the kernel lazily, which is the point.
        let sums = unsafe { Box::<[AtomicU32]>::new_zeroed_slice(lines).assume_init() };
        LineChecksums { sums }
    }

    /// The table of what `image` holds now.
    pub fn of(image: &[u8]) -> LineChecksums {
        let sums = LineChecksums::zeroed(image.len());
        sums.seal_range(image, 0, image.len());
        sums
    }

    /// The table's memory, for the OS layer to advise (it is read at random, one entry per
    /// line a transaction or a run touches, so it wants huge pages as much as the region).
    pub fn table(&self) -> &[AtomicU32] {
        &self.sums
    }

    /// How many lines the table covers.
    pub fn lines(&self) -> usize {
        self.sums.len()
    }

    /// Every line is zero again (the image was cleared).
    pub fn reset(&mut self) {
        for sum in self.sums.iter_mut() {
            *sum.get_mut() = 0;
        }
    }

    /// [`LineChecksums::reset`] through a shared reference, for a table others may read: the
    /// caller holds off every writer of the image. Entries already zero are not written, so
    /// table pages never touched stay unmapped.
    pub fn clear(&self) {
        for sum in self.sums.iter() {
            if sum.load(Ordering::Relaxed) != 0 {
                sum.store(0, Ordering::Relaxed);
            }
        }
    }

    /// The lines overlapping `[offset, offset + len)`, as byte ranges clipped to the image.
    fn lines_of(image_len: usize, offset: usize, len: usize) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> {
        let first = offset / LINE;
        let end = if len == 0 { first } else { (offset + len).min(image_len).div_ceil(LINE) };
        (first..end).map(move |line| (line, line * LINE..((line + 1) * LINE).min(image_len)))
    }

    /// Records what the lines overlapping `[offset, offset + len)` hold now: they were just
    /// written legitimately. The caller must own those lines (no one else writes them).
    pub fn seal_range(&self, image: &[u8], offset: usize, len: usize) {
        for (line, bytes) in Self::lines_of(image.len(), offset, len) {
            let sum = line_sum(&image[bytes]);
            // Zero lines stay zero: lazily mapped table pages are not touched for them.
            if sum != 0 || self.sums[line].load(Ordering::Relaxed) != 0 {
                self.sums[line].store(sum, Ordering::Relaxed);
            }
        }
    }

    /// Brings the seals up to date after `image[offset..offset + old.len()]`, which held `old`,
    /// was overwritten — without reading whole lines: the sum is linear, so each changed word
    /// adds its change times its weight. The seals must have been right for the old bytes (the
    /// caller checked them); a corrupted byte the write did not cover stays a mismatch, and so
    /// does one it covered (the seal moves by the change from the corrupted value, not from
    /// the sealed one). The caller must own those lines.
    pub fn reseal(&self, image: &[u8], offset: usize, old: &[u8]) {
        let end = offset + old.len();
        let mut word_at = offset / 4 * 4;
        if word_at < offset || end - word_at < 4 {
            self.reseal_partial_word(image, word_at, offset, old);
            word_at += 4;
        }
        // The whole words, read straight from both slices and summed per line: this runs for
        // every range every transaction writes, so one seal update per line, not per word.
        let whole_end = end / 4 * 4;
        if word_at >= whole_end {
            if word_at < end {
                self.reseal_partial_word(image, word_at, offset, old);
            }
            return;
        }
        let new_words = image[word_at..whole_end].chunks_exact(4);
        let old_words = old[word_at - offset..whole_end - offset].chunks_exact(4);
        let mut line = word_at / LINE;
        let mut line_change = 0u32;
        for (at, (new_word, old_word)) in (word_at..).step_by(4).zip(new_words.zip(old_words)) {
            if at / LINE != line {
                self.add_to_seal(line, line_change);
                (line, line_change) = (at / LINE, 0);
            }
            let change = word_of(new_word).wrapping_sub(word_of(old_word));
            line_change = line_change.wrapping_add(change.wrapping_mul(WEIGHTS[at % LINE / 4]));
        }
        self.add_to_seal(line, line_change);
        if whole_end < end {
            self.reseal_partial_word(image, whole_end, offset, old);
        }
    }

    /// [`LineChecksums::reseal`] for the word at `word_at`, which the write of `old.len()`
    /// bytes at `offset` covers only in part (or which the image ends inside).
    #[cold]
    fn reseal_partial_word(&self, image: &[u8], word_at: usize, offset: usize, old: &[u8]) {
        let end = offset + old.len();
        let mut new_word = [0u8; 4];
        let available = image.len().saturating_sub(word_at).min(4);
        new_word[..available].copy_from_slice(&image[word_at..word_at + available]);
        let mut old_word = new_word;
        for (i, byte) in old_word.iter_mut().enumerate() {
            if (offset..end).contains(&(word_at + i)) {
                *byte = old[word_at + i - offset];
            }
        }
        let change = u32::from_le_bytes(new_word).wrapping_sub(u32::from_le_bytes(old_word));
        self.add_to_seal(word_at / LINE, change.wrapping_mul(WEIGHTS[word_at % LINE / 4]));
    }

    #[inline]
    fn add_to_seal(&self, line: usize, change: u32) {
        if change != 0 {
            let sum = &self.sums[line];
            sum.store(sum.load(Ordering::Relaxed).wrapping_add(change), Ordering::Relaxed);
        }
    }

    /// Starts loading the line of `image` at `offset` and its seal into the cache, for a
    /// check or a write soon after: a backup applies runs at random offsets, and a load that
    /// is already on its way when the check reaches it overlaps with the ones before it
    /// instead of waiting its turn. An offset outside the image is ignored.
    #[inline]
    pub fn prefetch(&self, image: &[u8], offset: usize) {
        #[cfg(target_arch = "x86_64")]
        if let (Some(byte), Some(seal)) = (image.get(offset), self.sums.get(offset / LINE)) {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            // SAFETY: a prefetch is a hint that never faults; both addresses lie in live
            // allocations anyway.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>((byte as *const u8).cast());
                _mm_prefetch::<_MM_HINT_T0>((seal as *const AtomicU32).cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (image, offset);
    }

    /// Checks the lines overlapping `[offset, offset + len)` against their seals. The caller
    /// must own those lines, or see them quiescent.
    pub fn check_range(&self, image: &[u8], offset: usize, len: usize) -> Result<(), CorruptLine> {
        for (line, bytes) in Self::lines_of(image.len(), offset, len) {
            let found = line_sum(&image[bytes]);
            let expected = self.sums[line].load(Ordering::Relaxed);
            if found != expected {
                return Err(CorruptLine { offset: (line * LINE) as u64, expected, found });
            }
        }
        Ok(())
    }
}

/// Walks a region's lines round and round, a slice at a time, so that corruption of data no
/// one touches is found within one pass.
#[derive(Debug, Default, Clone)]
pub struct Scrubber {
    next_line: usize,
    passes: u64,
}

impl Scrubber {
    /// A scrubber starting at the first line.
    pub fn new() -> Scrubber {
        Scrubber::default()
    }

    /// Full passes completed.
    pub fn passes(&self) -> u64 {
        self.passes
    }

    /// The next `lines` lines to look at, as a byte range of a region of `region_len` bytes;
    /// wraps to the start after the last line.
    pub fn next_slice(&mut self, region_len: usize, lines: usize) -> std::ops::Range<usize> {
        let total = region_len.div_ceil(LINE);
        if total == 0 {
            return 0..0;
        }
        if self.next_line >= total {
            self.next_line = 0;
            self.passes += 1;
        }
        let first = self.next_line;
        let end = (first + lines.max(1)).min(total);
        self.next_line = end;
        first * LINE..(end * LINE).min(region_len)
    }

    /// Checks the next `lines` lines of an image nobody writes meanwhile.
    pub fn step(&mut self, sums: &LineChecksums, image: &[u8], lines: usize) -> Result<(), CorruptLine> {
        let slice = self.next_slice(image.len(), lines);
        sums.check_range(image, slice.start, slice.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zeros_sum_to_zero_and_every_weight_is_odd() {
        assert_eq!(line_sum(&[0u8; LINE]), 0);
        assert!(WEIGHTS.iter().all(|w| w % 2 == 1));
    }

    #[test]
    fn a_partial_last_line_is_covered() {
        let mut image = vec![0u8; 100];
        let sums = LineChecksums::zeroed(image.len());
        assert_eq!(sums.lines(), 2);
        image[99] = 1;
        let error = sums.check_range(&image, 0, 100).unwrap_err();
        assert_eq!(error.offset, 64);
        sums.seal_range(&image, 99, 1);
        sums.check_range(&image, 0, 100).unwrap();
    }

    #[test]
    fn the_scrubber_wraps_and_counts_passes() {
        let mut scrubber = Scrubber::new();
        assert_eq!(scrubber.next_slice(64 * 5, 2), 0..128);
        assert_eq!(scrubber.next_slice(64 * 5, 2), 128..256);
        assert_eq!(scrubber.next_slice(64 * 5, 2), 256..320);
        assert_eq!(scrubber.passes(), 0);
        assert_eq!(scrubber.next_slice(64 * 5, 2), 0..128);
        assert_eq!(scrubber.passes(), 1);
    }

    proptest! {
        /// Resealing by the change gives the seal of the new line, for any write.
        #[test]
        fn reseal_equals_sealing_afresh(
            before in proptest::collection::vec(any::<u8>(), 200),
            offset in 0usize..200,
            new in proptest::collection::vec(any::<u8>(), 1..64),
        ) {
            let mut image = before.clone();
            let sums = LineChecksums::of(&image);
            let end = (offset + new.len()).min(image.len());
            let old = image[offset..end].to_vec();
            image[offset..end].copy_from_slice(&new[..end - offset]);
            sums.reseal(&image, offset, &old);
            prop_assert_eq!(sums.check_range(&image, 0, image.len()), Ok(()));
            let fresh = LineChecksums::of(&image);
            for line in 0..sums.lines() {
                prop_assert_eq!(sums.sums[line].load(Ordering::Relaxed), fresh.sums[line].load(Ordering::Relaxed));
            }
        }

        /// Any single bit flipped anywhere is found by a pass, at the line that holds it, and
        /// sealing after a legitimate write never raises an alarm.
        #[test]
        fn every_flip_is_found_and_every_seal_is_quiet(
            writes in proptest::collection::vec((0usize..8192, any::<u8>()), 0..64),
            flip in 0usize..8192 * 8,
        ) {
            let mut image = vec![0u8; 8192];
            let sums = LineChecksums::zeroed(image.len());
            for (offset, value) in writes {
                image[offset] = value;
                sums.seal_range(&image, offset, 1);
            }
            let mut scrubber = Scrubber::new();
            for _ in 0..8192 / LINE / 16 {
                prop_assert!(scrubber.step(&sums, &image, 16).is_ok());
            }
            image[flip / 8] ^= 1 << (flip % 8);
            let error = sums.check_range(&image, 0, image.len()).unwrap_err();
            prop_assert_eq!(error.offset as usize, flip / 8 / LINE * LINE);
        }
    }
}
