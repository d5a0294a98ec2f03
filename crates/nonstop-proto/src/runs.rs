//! Runs: the payload that carries region bytes, for DU diffs and AU streams alike.
//!
//! A payload is a sequence of runs, each an eight-byte header (`offset | len << 40`, little
//! endian: 40-bit offset, 24-bit length) followed by `len` bytes. A payload
//! is validated as a whole before any run is used ([`validate_runs`]): a run that is truncated,
//! empty, or reaches past the end of the region refuses the whole frame.

use crate::frame::MAX_PAYLOAD;
use thiserror::Error;

/// Bytes of a run's header (offset and length).
pub const RUN_HEADER_LEN: usize = 8;

/// Offsets are 40 bits (regions up to 1 TiB), lengths 24 bits (runs up to 16 MiB).
const OFFSET_BITS: u32 = 40;
/// The first offset a run header cannot carry.
pub const MAX_RUN_OFFSET: u64 = 1 << OFFSET_BITS;

/// A run header: `offset | len << 40`, little endian.
fn encode_header(offset: u64, len: usize) -> [u8; RUN_HEADER_LEN] {
    assert!(offset < MAX_RUN_OFFSET && len < 1 << (64 - OFFSET_BITS), "run [{offset}, +{len}) cannot be encoded");
    (offset | (len as u64) << OFFSET_BITS).to_le_bytes()
}

/// The offset and length in a run header.
fn decode_header(header: &[u8]) -> (u64, usize) {
    let word = u64::from_le_bytes(header[..RUN_HEADER_LEN].try_into().expect("8 bytes"));
    (word & (MAX_RUN_OFFSET - 1), (word >> OFFSET_BITS) as usize)
}

/// A new payload starts with room for this much, so that many small runs (AU) do not grow it
/// by repeated reallocation.
const INITIAL_PAYLOAD: usize = 64 << 10;

/// One run: bytes to place at an offset of the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run<'a> {
    /// Offset from the start of the region.
    pub offset: u64,
    /// The bytes.
    pub bytes: &'a [u8],
}

/// Why a runs payload was refused. Nothing of it was applied.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RunsError {
    /// The payload ends inside a run.
    #[error("runs payload truncated at byte {at}: a run header or its bytes are cut off")]
    Truncated {
        /// Where the cut run starts.
        at: usize,
    },
    /// A run with no bytes: never produced by a correct sender.
    #[error("empty run at byte {at} of the payload")]
    Empty {
        /// Where it starts.
        at: usize,
    },
    /// A run outside the region.
    #[error("run [{offset}, +{len}) reaches past the end of the {region_len}-byte region: refused")]
    OutOfRegion {
        /// The run's offset.
        offset: u64,
        /// The run's length.
        len: u64,
        /// The region's length.
        region_len: u64,
    },
}

/// The runs of a payload, each checked against a region of `region_len` bytes as it is
/// reached. Iterating allocates nothing; [`validate_runs`] checks a whole payload first.
pub fn runs(payload: &[u8], region_len: u64) -> RunsIter<'_> {
    RunsIter { payload, region_len, at: 0, failed: false }
}

/// Iterator returned by [`runs`]; it stops after the first error.
#[derive(Clone, Debug)]
pub struct RunsIter<'a> {
    payload: &'a [u8],
    region_len: u64,
    at: usize,
    failed: bool,
}

impl<'a> RunsIter<'a> {
    fn parse(&self, at: usize) -> Result<Run<'a>, RunsError> {
        let header = self.payload.get(at..at + RUN_HEADER_LEN).ok_or(RunsError::Truncated { at })?;
        let (offset, len) = decode_header(header);
        if len == 0 {
            return Err(RunsError::Empty { at });
        }
        let bytes =
            self.payload.get(at + RUN_HEADER_LEN..at + RUN_HEADER_LEN + len).ok_or(RunsError::Truncated { at })?;
        if offset.checked_add(len as u64).is_none_or(|end| end > self.region_len) {
            return Err(RunsError::OutOfRegion { offset, len: len as u64, region_len: self.region_len });
        }
        Ok(Run { offset, bytes })
    }
}

impl<'a> Iterator for RunsIter<'a> {
    type Item = Result<Run<'a>, RunsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.payload.len() {
            return None;
        }
        let result = self.parse(self.at);
        match &result {
            Ok(run) => self.at += RUN_HEADER_LEN + run.bytes.len(),
            Err(_) => self.failed = true,
        }
        Some(result)
    }
}

/// Checks a whole payload against a region of `region_len` bytes; returns the region bytes it
/// carries.
pub fn validate_runs(payload: &[u8], region_len: u64) -> Result<u64, RunsError> {
    runs(payload, region_len).try_fold(0u64, |bytes, run| Ok(bytes + run?.bytes.len() as u64))
}

/// Applies a payload that [`validate_runs`] accepted for a region of `image.len()` bytes:
/// [`apply_validated_runs_checked`] with nothing to check, undo or note.
pub fn apply_validated_runs(payload: &[u8], image: &mut [u8]) {
    let no_check = |_: &[u8], _: usize, _: usize| Ok::<(), std::convert::Infallible>(());
    let Ok(()) = apply_validated_runs_checked(payload, image, None, no_check, |_, _, _| {});
}

/// Applies a payload that [`validate_runs`] accepted for a region of `image.len()` bytes, run
/// by run: `before(image, offset, len)` sees each run's range before it is written (an error
/// stops the apply there, earlier runs written), `after` once it is; with `undo`, a run of the
/// old bytes is appended there first for every run written ([`undo_runs`] plays them back).
///
/// This is the backup's inner loop: one pass for what it does to each run — check the lines
/// against their seals, write, seal again — so each line is read from memory once and is still
/// in cache for the rest. It reads run headers directly and copies the common eight-byte run
/// without a `memcpy` call; indexing stays checked, so a payload that was not validated panics
/// instead of writing out of bounds.
pub fn apply_validated_runs_checked<E>(
    payload: &[u8],
    image: &mut [u8],
    mut undo: Option<&mut Vec<u8>>,
    mut before: impl FnMut(&[u8], usize, usize) -> Result<(), E>,
    mut after: impl FnMut(&[u8], usize, usize),
) -> Result<(), E> {
    let mut at = 0;
    while at < payload.len() {
        let header: [u8; RUN_HEADER_LEN] = payload[at..at + RUN_HEADER_LEN].try_into().expect("8 bytes");
        let (offset, len) = decode_header(&header);
        let offset = offset as usize;
        let bytes = &payload[at + RUN_HEADER_LEN..at + RUN_HEADER_LEN + len];
        before(image, offset, len)?;
        let target = &mut image[offset..offset + len];
        match (<[u8; 8]>::try_from(bytes), undo.as_deref_mut()) {
            (Ok(new), None) => target.copy_from_slice(&new),
            (Ok(new), Some(undo)) => {
                let mut record = [0u8; RUN_HEADER_LEN + 8];
                record[..RUN_HEADER_LEN].copy_from_slice(&header);
                record[RUN_HEADER_LEN..].copy_from_slice(target);
                undo.extend_from_slice(&record);
                target.copy_from_slice(&new);
            }
            (Err(_), None) => target.copy_from_slice(bytes),
            (Err(_), Some(undo)) => {
                undo.extend_from_slice(&header);
                undo.extend_from_slice(target);
                target.copy_from_slice(bytes);
            }
        }
        after(image, offset, len);
        at += RUN_HEADER_LEN + len;
    }
    Ok(())
}

/// Plays back undo records written by [`apply_validated_runs_checked`], newest first, so
/// that overlapping runs unwind to the oldest bytes.
pub fn undo_runs(undo: &[u8], image: &mut [u8]) {
    let mut starts = Vec::new();
    let mut at = 0;
    while at < undo.len() {
        starts.push(at);
        at += RUN_HEADER_LEN + decode_header(&undo[at..]).1;
    }
    for &at in starts.iter().rev() {
        let (offset, len) = decode_header(&undo[at..]);
        let offset = offset as usize;
        image[offset..offset + len].copy_from_slice(&undo[at + RUN_HEADER_LEN..at + RUN_HEADER_LEN + len]);
    }
}

/// Checks a whole payload against a region of `region_len` bytes and returns its runs.
pub fn parse_runs(payload: &[u8], region_len: u64) -> Result<Vec<Run<'_>>, RunsError> {
    runs(payload, region_len).collect()
}

/// Packs runs into payloads of at most [`MAX_PAYLOAD`] bytes, splitting long runs.
#[derive(Debug, Default)]
pub struct RunsBuilder {
    payloads: Vec<Vec<u8>>,
    run_bytes: u64,
    payload_bytes: u64,
    /// Emptied buffers to fill before allocating new ones.
    spares: Vec<Vec<u8>>,
}

impl RunsBuilder {
    /// An empty builder.
    pub fn new() -> RunsBuilder {
        RunsBuilder::default()
    }

    /// An empty builder that fills `spares` (buffers handed back by [`RunsBuilder::into_spares`])
    /// before it allocates. An AU stream is written by the committing thread at a few hundred
    /// bytes per transaction: a fresh allocation per chunk would have it wait for the kernel to
    /// find and zero pages, where a recycled buffer is still mapped and likely still cached.
    pub fn with_spares(spares: Vec<Vec<u8>>) -> RunsBuilder {
        RunsBuilder { spares, ..RunsBuilder::default() }
    }

    /// The payload buffers (and the spares not used), emptied, for a later
    /// [`RunsBuilder::with_spares`].
    pub fn into_spares(self) -> Vec<Vec<u8>> {
        let mut buffers = self.spares;
        buffers.extend(self.payloads.into_iter().map(|mut payload| {
            payload.clear();
            payload
        }));
        buffers
    }

    /// Adds `bytes` to be placed at `offset`. Empty runs are ignored.
    #[inline]
    pub fn push(&mut self, offset: u64, bytes: &[u8]) {
        // The common case under AU: a small run that fits the current payload.
        if let Some(last) = self.payloads.last_mut()
            && !bytes.is_empty()
            && last.len() + RUN_HEADER_LEN + bytes.len() <= last.capacity().min(MAX_PAYLOAD)
        {
            let mut header = [0u8; RUN_HEADER_LEN + 8];
            header[..RUN_HEADER_LEN].copy_from_slice(&encode_header(offset, bytes.len()));
            if let Ok(word) = <[u8; 8]>::try_from(bytes) {
                // An eight-byte run (a counter, a balance) as one fixed-size copy, no memcpy call.
                header[RUN_HEADER_LEN..].copy_from_slice(&word);
                last.extend_from_slice(&header);
            } else {
                last.extend_from_slice(&header[..RUN_HEADER_LEN]);
                last.extend_from_slice(bytes);
            }
            self.run_bytes += bytes.len() as u64;
            self.payload_bytes += (RUN_HEADER_LEN + bytes.len()) as u64;
            return;
        }
        self.push_split(offset, bytes);
    }

    fn push_split(&mut self, mut offset: u64, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = match self.payloads.last() {
                Some(last) if MAX_PAYLOAD - last.len() > RUN_HEADER_LEN => MAX_PAYLOAD - last.len() - RUN_HEADER_LEN,
                _ => {
                    let capacity = (bytes.len() + RUN_HEADER_LEN).clamp(INITIAL_PAYLOAD, MAX_PAYLOAD);
                    let mut payload = self.spares.pop().unwrap_or_default();
                    payload.reserve(capacity);
                    self.payloads.push(payload);
                    MAX_PAYLOAD - RUN_HEADER_LEN
                }
            };
            let take = room.min(bytes.len());
            let payload = self.payloads.last_mut().expect("pushed above");
            payload.extend_from_slice(&encode_header(offset, take));
            payload.extend_from_slice(&bytes[..take]);
            self.run_bytes += take as u64;
            self.payload_bytes += (RUN_HEADER_LEN + take) as u64;
            offset += take as u64;
            bytes = &bytes[take..];
        }
    }

    /// Region bytes added so far (without run headers).
    pub fn run_bytes(&self) -> u64 {
        self.run_bytes
    }

    /// True if nothing was added.
    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }

    /// Wire bytes of all payloads so far.
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    /// The payloads built so far.
    pub fn payloads(&self) -> &[Vec<u8>] {
        &self.payloads
    }

    /// The payloads, each ready to be a [`crate::frame::FrameKind::Runs`] frame.
    pub fn into_payloads(self) -> Vec<Vec<u8>> {
        self.payloads
    }
}

/// Write combining for a stream of runs: drops runs that a later run of the same offset and
/// length overwrites entirely, keeping the survivors in order.
///
/// Applying the result gives the same bytes as applying the input: a dropped run is fully
/// overwritten by its later twin, and anything that overlapped it in between is overwritten
/// there too. Under AU, rows written by every transaction (a branch balance, a history head)
/// collapse to about one run per shipped chunk.
///
/// The table is direct-mapped and small enough to stay in cache: two ranges that share a slot
/// simply both stay (combining is an optimisation; it only ever drops a run when the slot
/// proves a later identical run exists). It is kept between calls, so streaming allocates
/// nothing for it.
///
/// ```
/// use nonstop_proto::runs::{Coalescer, RunsBuilder, parse_runs};
/// let mut runs = RunsBuilder::new();
/// runs.push(0, &1u64.to_le_bytes());
/// runs.push(64, b"x");
/// runs.push(0, &2u64.to_le_bytes());
/// let combined = Coalescer::default().coalesce(&runs);
/// assert_eq!(combined.run_bytes(), 9);
/// let payload = &combined.payloads()[0];
/// assert_eq!(parse_runs(payload, 1024).unwrap()[1].bytes, &2u64.to_le_bytes());
/// ```
#[derive(Debug, Default)]
pub struct Coalescer {
    /// Per slot: (generation, offset, len, index of the last run seen with that range).
    table: Vec<(u32, u64, u32, u32)>,
    generation: u32,
}

const COALESCE_SLOTS: usize = 1 << 13;

impl Coalescer {
    fn slot(offset: u64, len: usize) -> usize {
        let hash = (offset ^ ((len as u64) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (hash >> 51) as usize & (COALESCE_SLOTS - 1)
    }

    /// Returns `runs` without the runs that a later identical-range run overwrites.
    pub fn coalesce(&mut self, runs: &RunsBuilder) -> RunsBuilder {
        if self.table.is_empty() {
            self.table = vec![(0, 0, 0, 0); COALESCE_SLOTS];
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.table.fill((0, 0, 0, 0));
            self.generation = 1;
        }
        let generation = self.generation;
        let every = || {
            runs.payloads()
                .iter()
                .flat_map(|payload| self::runs(payload, u64::MAX))
                .map(|r| r.expect("built by RunsBuilder"))
        };
        for (index, run) in every().enumerate() {
            self.table[Self::slot(run.offset, run.bytes.len())] =
                (generation, run.offset, run.bytes.len() as u32, index as u32);
        }
        let mut out = RunsBuilder::new();
        for (index, run) in every().enumerate() {
            let (seen, offset, len, last) = self.table[Self::slot(run.offset, run.bytes.len())];
            let overwritten_later =
                seen == generation && offset == run.offset && len as usize == run.bytes.len() && last > index as u32;
            if !overwritten_later {
                out.push(run.offset, run.bytes);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn coalesced_runs_apply_to_the_same_image(
            edits in proptest::collection::vec((0usize..64, 1usize..24, any::<u8>()), 1..200),
        ) {
            // Few distinct offsets and lengths, so that many runs repeat and overlap.
            let mut runs = RunsBuilder::new();
            for (at, len, value) in &edits {
                runs.push(*at as u64 * 4, &vec![*value; *len]);
            }
            let mut coalescer = Coalescer::default();
            for _ in 0..2 {
                let combined = coalescer.coalesce(&runs);
                prop_assert!(combined.run_bytes() <= runs.run_bytes());
                let mut expected = vec![0u8; 512];
                let mut got = vec![0u8; 512];
                for payload in runs.payloads() {
                    apply_validated_runs(payload, &mut expected);
                }
                for payload in combined.payloads() {
                    apply_validated_runs(payload, &mut got);
                }
                prop_assert_eq!(&got, &expected);
            }
        }

        #[test]
        fn undo_restores_the_image_after_overlapping_runs(
            initial in proptest::collection::vec(any::<u8>(), 512),
            edits in proptest::collection::vec((0usize..512, proptest::collection::vec(any::<u8>(), 1..40)), 1..30),
        ) {
            let mut runs = RunsBuilder::new();
            let mut expected = initial.clone();
            for (at, bytes) in &edits {
                let n = bytes.len().min(512 - at);
                runs.push(*at as u64, &bytes[..n]);
                expected[*at..at + n].copy_from_slice(&bytes[..n]);
            }
            let mut image = initial.clone();
            let mut undo = Vec::new();
            let (mut seen, mut done) = (Vec::new(), Vec::new());
            for payload in runs.payloads() {
                prop_assert!(validate_runs(payload, 512).is_ok());
                let applied = apply_validated_runs_checked(
                    payload,
                    &mut image,
                    Some(&mut undo),
                    |_, offset, len| {
                        seen.push((offset, len));
                        Ok::<(), ()>(())
                    },
                    |_, offset, len| done.push((offset, len)),
                );
                prop_assert!(applied.is_ok());
            }
            prop_assert_eq!(&image, &expected, "applied like apply_validated_runs");
            let ranges: Vec<(usize, usize)> = runs
                .payloads()
                .iter()
                .flat_map(|payload| parse_runs(payload, 512).unwrap())
                .map(|run| (run.offset as usize, run.bytes.len()))
                .collect();
            prop_assert_eq!(&seen, &ranges, "before sees every run, in order");
            prop_assert_eq!(&done, &ranges, "after sees every run, in order");
            undo_runs(&undo, &mut image);
            prop_assert_eq!(image, initial, "undo restores every byte, overlaps included");
        }

        #[test]
        fn a_refused_run_stops_the_apply_before_it_and_undo_still_restores(
            initial in proptest::collection::vec(any::<u8>(), 512),
            edits in proptest::collection::vec((0usize..500, proptest::collection::vec(any::<u8>(), 1..12)), 1..30),
            stop in 0usize..30,
        ) {
            let mut runs = RunsBuilder::new();
            for (at, bytes) in &edits {
                runs.push(*at as u64, &bytes[..bytes.len().min(512 - at)]);
            }
            let payload = &runs.payloads()[0];
            let parsed = parse_runs(payload, 512).unwrap();
            let mut expected = initial.clone();
            for run in parsed.iter().take(stop) {
                expected[run.offset as usize..][..run.bytes.len()].copy_from_slice(run.bytes);
            }
            let (mut image, mut undo, mut seen) = (initial.clone(), Vec::new(), 0);
            let applied = apply_validated_runs_checked(
                payload,
                &mut image,
                Some(&mut undo),
                |_, _, _| {
                    seen += 1;
                    if seen > stop { Err(seen - 1) } else { Ok(()) }
                },
                |_, _, _| {},
            );
            prop_assert_eq!(applied, if stop < parsed.len() { Err(stop) } else { Ok(()) });
            prop_assert_eq!(&image, &expected, "the runs before the refused one, none after");
            undo_runs(&undo, &mut image);
            prop_assert_eq!(image, initial);
        }
    }

    #[test]
    fn builder_splits_long_runs_and_parser_reassembles() {
        let data: Vec<u8> = (0..(MAX_PAYLOAD * 2 + 100)).map(|i| i as u8).collect();
        let mut builder = RunsBuilder::new();
        builder.push(10, &data);
        builder.push(5, b"abc");
        let payloads = builder.into_payloads();
        assert!(payloads.len() >= 3);
        let mut image = vec![0u8; data.len() + 10];
        for payload in &payloads {
            assert!(payload.len() <= MAX_PAYLOAD);
            for run in parse_runs(payload, image.len() as u64).unwrap() {
                image[run.offset as usize..][..run.bytes.len()].copy_from_slice(run.bytes);
            }
        }
        assert_eq!(&image[10 + 3..], &data[3..]);
        assert_eq!(&image[5..8], b"abc");
    }

    #[test]
    fn bad_runs_are_refused() {
        let mut builder = RunsBuilder::new();
        builder.push(4090, b"0123456789");
        let payload = builder.into_payloads().remove(0);
        assert!(matches!(parse_runs(&payload, 4096), Err(RunsError::OutOfRegion { .. })));
        assert!(matches!(parse_runs(&payload[..15], 1 << 20), Err(RunsError::Truncated { at: 0 })));
        let mut overflow = Vec::new();
        overflow.extend_from_slice(&encode_header(MAX_RUN_OFFSET - 1, 1));
        overflow.push(0);
        assert!(matches!(parse_runs(&overflow, 1 << 39), Err(RunsError::OutOfRegion { .. })));
        let mut empty = Vec::new();
        empty.extend_from_slice(&[0u8; RUN_HEADER_LEN]);
        assert_eq!(parse_runs(&empty, 10), Err(RunsError::Empty { at: 0 }));
    }

    #[test]
    fn a_builder_fills_recycled_buffers_before_allocating() {
        let mut first = RunsBuilder::new();
        first.push(0, &[1; 100]);
        let spares = first.into_spares();
        assert!(spares.len() == 1 && spares[0].is_empty() && spares[0].capacity() >= INITIAL_PAYLOAD);
        let recycled = spares[0].as_ptr();
        let mut second = RunsBuilder::with_spares(spares);
        second.push(8, &[2; 10]);
        assert_eq!(second.payloads()[0].as_ptr(), recycled, "the spare, not a new allocation");
        let runs = parse_runs(&second.payloads()[0], 64).unwrap();
        assert_eq!((runs.len(), runs[0].offset, runs[0].bytes), (1, 8, &[2u8; 10][..]), "nothing of the old stream");
    }
}
