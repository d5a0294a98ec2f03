//! Line checksums: a CRC32C for every 64-byte line of a region, so that a bit that changes in
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
//! A zero line is stored as 0 (the CRC is XORed with the zero line's CRC), so that a fresh,
//! lazily mapped region has a table of lazily mapped zeros too: a 1 GiB region does not pay
//! 64 MiB of checksums for lines never written.
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

/// Lines a scrubber looks at per [`SCRUB_TICK`]: 256 KiB, about 0.1 ms of CRC32C, so 25 MiB/s
/// of region per node, a pass over a 64 MiB region every 2.6 s.
pub const SCRUB_LINES_PER_TICK: usize = 4096;

/// The CRC32C of a line of zeros: stored values are XORed with it so that zeros map to zero.
const ZERO_LINE: u32 = zero_line_crc();

const fn zero_line_crc() -> u32 {
    // CRC32C (Castagnoli, reflected, init and final XOR 0xffff_ffff) of LINE zero bytes,
    // computed bit by bit at compile time.
    let mut crc = 0xffff_ffffu32;
    let mut byte = 0;
    while byte < LINE {
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
            bit += 1;
        }
        byte += 1;
    }
    !crc
}

/// A line's bytes no longer match its checksum: memory changed outside any transaction or
/// checkpoint. The image must not be trusted, promoted or acknowledged.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error(
    "memory corruption: the 64-byte line at region offset {offset:#x} has CRC32C {found:#010x}, its seal says {expected:#010x}; this copy of the region must not be served or promoted"
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

fn line_crc(line: &[u8]) -> u32 {
    crc32c::crc32c(line) ^ ZERO_LINE
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
            let crc = line_crc(&image[bytes]);
            // Zero lines stay zero: lazily mapped table pages are not touched for them.
            if crc != 0 || self.sums[line].load(Ordering::Relaxed) != 0 {
                self.sums[line].store(crc, Ordering::Relaxed);
            }
        }
    }

    /// Checks the lines overlapping `[offset, offset + len)` against their seals. The caller
    /// must own those lines, or see them quiescent.
    pub fn check_range(&self, image: &[u8], offset: usize, len: usize) -> Result<(), CorruptLine> {
        for (line, bytes) in Self::lines_of(image.len(), offset, len) {
            let found = line_crc(&image[bytes]);
            let expected = self.sums[line].load(Ordering::Relaxed);
            if found != expected {
                return Err(CorruptLine {
                    offset: (line * LINE) as u64,
                    expected: expected ^ ZERO_LINE,
                    found: found ^ ZERO_LINE,
                });
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
    fn zero_line_constant_matches_the_library() {
        assert_eq!(ZERO_LINE, crc32c::crc32c(&[0u8; LINE]));
        assert_eq!(line_crc(&[0u8; LINE]), 0);
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
