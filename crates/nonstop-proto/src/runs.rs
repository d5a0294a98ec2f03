//! Runs: the payload that carries region bytes, for DU diffs and AU streams alike.
//!
//! A payload is a sequence of runs, each `offset: u64 LE | len: u32 LE | len bytes`. A payload
//! is validated as a whole before any run is used ([`validate_runs`]): a run that is truncated,
//! empty, or reaches past the end of the region refuses the whole frame.

use crate::frame::MAX_PAYLOAD;
use thiserror::Error;

/// Bytes of a run's header (offset and length).
pub const RUN_HEADER_LEN: usize = 12;

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
        let offset = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(header[8..].try_into().expect("4 bytes")) as usize;
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

/// Applies a payload that [`validate_runs`] accepted for a region of `image.len()` bytes.
///
/// This is the backup's inner loop, so it reads run headers directly and copies the common
/// eight-byte run without a `memcpy` call; indexing stays checked, so a payload that was not
/// validated panics instead of writing out of bounds.
pub fn apply_validated_runs(payload: &[u8], image: &mut [u8]) {
    let mut at = 0;
    while at < payload.len() {
        let offset = u64::from_le_bytes(payload[at..at + 8].try_into().expect("8 bytes")) as usize;
        let len = u32::from_le_bytes(payload[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
        let bytes = &payload[at + RUN_HEADER_LEN..at + RUN_HEADER_LEN + len];
        if len == 8 {
            let word: [u8; 8] = bytes.try_into().expect("8 bytes");
            image[offset..offset + 8].copy_from_slice(&word);
        } else {
            image[offset..offset + len].copy_from_slice(bytes);
        }
        at += RUN_HEADER_LEN + len;
    }
}

/// Applies a validated payload like [`apply_validated_runs`], first appending to `undo` a run
/// of the old bytes for every run applied; [`undo_runs`] plays them back.
pub fn apply_validated_runs_with_undo(payload: &[u8], image: &mut [u8], undo: &mut Vec<u8>) {
    let mut at = 0;
    while at < payload.len() {
        let header: [u8; RUN_HEADER_LEN] = payload[at..at + RUN_HEADER_LEN].try_into().expect("12 bytes");
        let offset = u64::from_le_bytes(header[..8].try_into().expect("8 bytes")) as usize;
        let len = u32::from_le_bytes(header[8..].try_into().expect("4 bytes")) as usize;
        let bytes = &payload[at + RUN_HEADER_LEN..at + RUN_HEADER_LEN + len];
        let target = &mut image[offset..offset + len];
        if let (Ok(new), Ok(old)) = (<[u8; 8]>::try_from(bytes), <[u8; 8]>::try_from(&*target)) {
            let mut record = [0u8; RUN_HEADER_LEN + 8];
            record[..RUN_HEADER_LEN].copy_from_slice(&header);
            record[RUN_HEADER_LEN..].copy_from_slice(&old);
            undo.extend_from_slice(&record);
            target.copy_from_slice(&new);
        } else {
            undo.extend_from_slice(&header);
            undo.extend_from_slice(target);
            target.copy_from_slice(bytes);
        }
        at += RUN_HEADER_LEN + len;
    }
}

/// Plays back undo records written by [`apply_validated_runs_with_undo`], newest first, so
/// that overlapping runs unwind to the oldest bytes.
pub fn undo_runs(undo: &[u8], image: &mut [u8]) {
    let mut starts = Vec::new();
    let mut at = 0;
    while at < undo.len() {
        starts.push(at);
        at += RUN_HEADER_LEN + u32::from_le_bytes(undo[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
    }
    for &at in starts.iter().rev() {
        let offset = u64::from_le_bytes(undo[at..at + 8].try_into().expect("8 bytes")) as usize;
        let len = u32::from_le_bytes(undo[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
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
}

impl RunsBuilder {
    /// An empty builder.
    pub fn new() -> RunsBuilder {
        RunsBuilder::default()
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
            header[..8].copy_from_slice(&offset.to_le_bytes());
            header[8..12].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
            if let Ok(word) = <[u8; 8]>::try_from(bytes) {
                // An eight-byte run (a counter, a balance) as one fixed-size copy, no memcpy call.
                header[12..].copy_from_slice(&word);
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
                    self.payloads
                        .push(Vec::with_capacity((bytes.len() + RUN_HEADER_LEN).clamp(INITIAL_PAYLOAD, MAX_PAYLOAD)));
                    MAX_PAYLOAD - RUN_HEADER_LEN
                }
            };
            let take = room.min(bytes.len());
            let payload = self.payloads.last_mut().expect("pushed above");
            payload.extend_from_slice(&offset.to_le_bytes());
            payload.extend_from_slice(&(take as u32).to_le_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;

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
        overflow.extend_from_slice(&u64::MAX.to_le_bytes());
        overflow.extend_from_slice(&1u32.to_le_bytes());
        overflow.push(0);
        assert!(matches!(parse_runs(&overflow, u64::MAX), Err(RunsError::OutOfRegion { .. })));
        let mut empty = Vec::new();
        empty.extend_from_slice(&0u64.to_le_bytes());
        empty.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(parse_runs(&empty, 10), Err(RunsError::Empty { at: 0 }));
    }
}
