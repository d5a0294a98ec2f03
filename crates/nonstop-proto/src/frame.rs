//! The replication wire format.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "NSF1"
//!      4     1  kind (FrameKind)
//!      5     3  reserved, must be zero
//!      8     4  payload length, little endian, at most MAX_PAYLOAD
//!     12     4  CRC32C of the header (this field as zero) and the payload
//!     16     8  term of the sending primary
//!     24     8  checkpoint the frame belongs to
//!     32     8  sequence number, per connection and direction, from 0
//!     40     n  payload
//!   40+n    16  MAC: keyed BLAKE3 (session key) of header and payload, truncated
//! ```
//!
//! The CRC catches corruption cheaply and tells it apart from forgery; the MAC authenticates
//! the sender and, through the sequence number, forbids replay, loss and reordering within a
//! connection. Any failed check poisons the [`FrameReader`]: the connection must be closed, and
//! no byte of the bad frame reaches the caller.

use crate::auth::{MAC_LEN, MacKey};
use crate::{CheckpointId, Term};
use thiserror::Error;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

const FRAME_MAGIC: [u8; 4] = *b"NSF1";

/// The largest payload a frame may carry (1 MiB). Larger transfers are split.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Length of the fixed frame header.
pub const HEADER_LEN: usize = std::mem::size_of::<FrameHeader>();

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Primary to backup: the region this primary serves ([`crate::control::Attach`]).
    Attach = 1,
    /// Primary to backup: runs of the checkpoint being built ([`crate::runs`]); or, in a state
    /// transfer, pages of a donor replica's image ([`crate::transfer`]).
    Runs = 2,
    /// Primary to backup: the checkpoint is complete ([`crate::control::Close`]).
    Close = 3,
    /// Backup to primary: the backup holds the checkpoint named in the header.
    Ack = 4,
    /// Backup to primary: the backup refuses the primary ([`crate::control::Refusal`]).
    Refuse = 5,
    /// Primary to backup: report a digest of the image ([`crate::control::VerifyRequest`]).
    VerifyRequest = 6,
    /// Backup to primary: the digest and check result ([`crate::control::VerifyReply`]).
    VerifyReply = 7,
    /// Either way: echo the payload (round-trip measurements).
    Ping = 8,
    /// Either way: the echo of a ping.
    Pong = 9,
    /// Between node agents: a control-plane message (Raft, heartbeat report).
    Control = 10,
    /// Primary to an attaching backup: runs of a pre-copy round, written straight into the
    /// image while the primary keeps serving; the first checkpoint then completes it.
    PreCopy = 11,
    /// Backup to primary: what the image holds, answering an attach that asks for a rebase
    /// ([`crate::control::Holding`]).
    Holding = 12,
    /// Operator to node and back, on the control port: a request or its reply
    /// ([`crate::operator`]).
    Operator = 13,
    /// Between an active service's replicas, on the control port: a state transfer's request,
    /// answers and end ([`crate::transfer`]); its pages travel in `Runs` frames.
    Transfer = 14,
    /// Between node agents: the next part of a control-plane message longer than one frame;
    /// the `Control` frame after its parts ends it ([`crate::parts`]).
    ControlPart = 15,
}

impl FrameKind {
    /// The kind a header's kind byte names, if any.
    pub fn from_u8(value: u8) -> Option<FrameKind> {
        use FrameKind::*;
        Some(match value {
            1 => Attach,
            2 => Runs,
            3 => Close,
            4 => Ack,
            5 => Refuse,
            6 => VerifyRequest,
            7 => VerifyReply,
            8 => Ping,
            9 => Pong,
            10 => Control,
            11 => PreCopy,
            12 => Holding,
            13 => Operator,
            14 => Transfer,
            15 => ControlPart,
            _ => return None,
        })
    }
}

/// The fixed frame header as it lies on the wire.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct FrameHeader {
    magic: [u8; 4],
    kind: u8,
    reserved: [u8; 3],
    payload_len: U32,
    crc32c: U32,
    term: U64,
    checkpoint: U64,
    seq: U64,
}

const CRC_FIELD: std::ops::Range<usize> = 12..16;

/// A frame that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: FrameKind,
    /// The sender's term.
    pub term: Term,
    /// The checkpoint it belongs to.
    pub checkpoint: CheckpointId,
    /// Its sequence number on this connection.
    pub seq: u64,
    /// The payload, at most [`MAX_PAYLOAD`] bytes.
    pub payload: Vec<u8>,
}

/// Why a byte stream was refused. The connection must be closed; nothing was delivered.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Not the start of a nonstop frame: the stream is corrupt or not ours.
    #[error("bad frame magic {0:02x?}: the stream is corrupt or the peer is not nonstop")]
    BadMagic([u8; 4]),
    /// A kind this version does not know.
    #[error("unknown frame kind {0}: the peer runs an incompatible nonstop version")]
    UnknownKind(u8),
    /// Reserved header bytes are set.
    #[error("reserved header bytes are not zero: the stream is corrupt")]
    ReservedNotZero,
    /// The announced payload is longer than any valid frame.
    #[error("frame announces a {len}-byte payload, more than the {max}-byte limit: refused")]
    Oversized {
        /// The announced length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The CRC does not match: bits changed on the way.
    #[error(
        "frame CRC32C mismatch (header says {expected:#010x}, content gives {computed:#010x}): corrupted in transit"
    )]
    BadCrc {
        /// The CRC in the header.
        expected: u32,
        /// The CRC of what arrived.
        computed: u32,
    },
    /// The MAC does not match: not sent by the authenticated peer.
    #[error("frame MAC mismatch: the frame was not sent by the authenticated peer")]
    BadMac,
    /// A frame was lost, repeated or reordered.
    #[error("frame sequence number {got}, expected {expected}: frames were lost, repeated or reordered")]
    OutOfSequence {
        /// The sequence number expected next.
        expected: u64,
        /// The one that arrived.
        got: u64,
    },
    /// An earlier error already condemned this stream.
    #[error("the stream already failed a check; close the connection")]
    Poisoned,
}

/// Encodes frames for one direction of one connection.
#[derive(Debug)]
pub struct FrameWriter {
    key: MacKey,
    next_seq: u64,
}

impl FrameWriter {
    /// A writer whose frames are MACed with `key` and numbered from 0.
    pub fn new(key: MacKey) -> FrameWriter {
        FrameWriter { key, next_seq: 0 }
    }

    /// Appends one encoded frame to `out`.
    ///
    /// # Panics
    /// If `payload` is longer than [`MAX_PAYLOAD`]: callers split large transfers, so a longer
    /// payload is a bug in this process, not bad input.
    pub fn encode(&mut self, kind: FrameKind, term: Term, checkpoint: CheckpointId, payload: &[u8], out: &mut Vec<u8>) {
        let (header, mac) = self.seal(kind, term, checkpoint, payload);
        out.extend_from_slice(&header);
        out.extend_from_slice(payload);
        out.extend_from_slice(&mac);
    }

    /// The header and MAC of the next frame, for a payload the caller sends between them
    /// (vectored I/O, no copy of the payload).
    ///
    /// # Panics
    /// As [`FrameWriter::encode`].
    pub fn seal(
        &mut self,
        kind: FrameKind,
        term: Term,
        checkpoint: CheckpointId,
        payload: &[u8],
    ) -> ([u8; HEADER_LEN], [u8; MAC_LEN]) {
        assert!(payload.len() <= MAX_PAYLOAD, "payload of {} bytes exceeds MAX_PAYLOAD", payload.len());
        let mut header = FrameHeader {
            magic: FRAME_MAGIC,
            kind: kind as u8,
            reserved: [0; 3],
            payload_len: U32::new(payload.len() as u32),
            crc32c: U32::new(0),
            term: U64::new(term.0),
            checkpoint: U64::new(checkpoint.0),
            seq: U64::new(self.next_seq),
        };
        self.next_seq += 1;
        let crc = crc32c::crc32c_append(crc32c::crc32c(header.as_bytes()), payload);
        header.crc32c = U32::new(crc);
        let mac = self.key.mac(header.as_bytes(), payload);
        let mut bytes = [0u8; HEADER_LEN];
        bytes.copy_from_slice(header.as_bytes());
        (bytes, mac)
    }
}

/// Decodes frames from one direction of one connection, incrementally: feed bytes as they
/// arrive with [`FrameReader::push`], take frames with [`FrameReader::next_frame`].
#[derive(Debug)]
pub struct FrameReader {
    key: MacKey,
    next_seq: u64,
    /// Always initialised to its full length; `start..end` holds received, undecoded bytes.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    poisoned: bool,
}

/// How much room [`FrameReader::read_buffer`] offers at least.
const READ_CHUNK: usize = 256 << 10;

impl FrameReader {
    /// A reader that checks MACs with `key` and expects sequence numbers from 0.
    pub fn new(key: MacKey) -> FrameReader {
        FrameReader { key, next_seq: 0, buf: Vec::new(), start: 0, end: 0, poisoned: false }
    }

    /// Room for at least `want` more received bytes, to read into directly (no extra copy);
    /// report how many arrived with [`FrameReader::filled`].
    pub fn read_buffer(&mut self, want: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > MAX_PAYLOAD || self.buf.len() - self.end < want {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < want {
            self.buf.resize(self.end + want, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written into the slice [`FrameReader::read_buffer`] gave.
    pub fn filled(&mut self, n: usize) {
        assert!(self.end + n <= self.buf.len(), "filled more than the read buffer holds");
        self.end += n;
    }

    /// Appends bytes received from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.read_buffer(bytes.len().max(1))[..bytes.len()].copy_from_slice(bytes);
        self.filled(bytes.len());
    }

    /// A read buffer of the usual size (see [`FrameReader::read_buffer`]).
    pub fn read_chunk(&mut self) -> &mut [u8] {
        self.read_buffer(READ_CHUNK)
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the reason the stream is
    /// refused. After an error every later call fails with [`FrameError::Poisoned`].
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.poisoned {
            return Err(FrameError::Poisoned);
        }
        match self.decode() {
            Err(error) => {
                self.poisoned = true;
                Err(error)
            }
            ok => ok,
        }
    }

    fn decode(&mut self) -> Result<Option<Frame>, FrameError> {
        let available = &self.buf[self.start..self.end];
        let Some(header_bytes) = available.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let header = FrameHeader::read_from_bytes(header_bytes).expect("exact header length");
        if header.magic != FRAME_MAGIC {
            return Err(FrameError::BadMagic(header.magic));
        }
        let kind = FrameKind::from_u8(header.kind).ok_or(FrameError::UnknownKind(header.kind))?;
        if header.reserved != [0; 3] {
            return Err(FrameError::ReservedNotZero);
        }
        let payload_len = header.payload_len.get() as usize;
        if payload_len > MAX_PAYLOAD {
            return Err(FrameError::Oversized { len: payload_len as u64, max: MAX_PAYLOAD as u64 });
        }
        let total = HEADER_LEN + payload_len + MAC_LEN;
        if available.len() < total {
            return Ok(None);
        }
        let payload = &available[HEADER_LEN..HEADER_LEN + payload_len];
        let mac = &available[HEADER_LEN + payload_len..total];
        let mut zeroed = [0u8; HEADER_LEN];
        zeroed.copy_from_slice(header_bytes);
        zeroed[CRC_FIELD].fill(0);
        let computed = crc32c::crc32c_append(crc32c::crc32c(&zeroed), payload);
        if computed != header.crc32c.get() {
            return Err(FrameError::BadCrc { expected: header.crc32c.get(), computed });
        }
        if !self.key.verify(header_bytes, payload, mac) {
            return Err(FrameError::BadMac);
        }
        let seq = header.seq.get();
        if seq != self.next_seq {
            return Err(FrameError::OutOfSequence { expected: self.next_seq, got: seq });
        }
        self.next_seq += 1;
        let frame = Frame {
            kind,
            term: Term(header.term.get()),
            checkpoint: CheckpointId(header.checkpoint.get()),
            seq,
            payload: payload.to_vec(),
        };
        self.start += total;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (FrameWriter, FrameReader) {
        let key = MacKey::from_bytes([9; 32]);
        (FrameWriter::new(key.clone()), FrameReader::new(key))
    }

    fn one_frame(payload: &[u8]) -> Vec<u8> {
        let (mut writer, _) = pair();
        let mut out = Vec::new();
        writer.encode(FrameKind::Runs, Term(3), CheckpointId(5), payload, &mut out);
        out
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let (mut writer, mut reader) = pair();
        let mut wire = Vec::new();
        writer.encode(FrameKind::Runs, Term(3), CheckpointId(5), b"hello", &mut wire);
        writer.encode(FrameKind::Close, Term(3), CheckpointId(5), b"", &mut wire);
        let mut frames = Vec::new();
        for byte in &wire {
            reader.push(std::slice::from_ref(byte));
            while let Some(frame) = reader.next_frame().unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].payload, b"hello");
        assert_eq!(frames[0].term, Term(3));
        assert_eq!(frames[1].kind, FrameKind::Close);
        assert_eq!(reader.buffered(), 0);
    }

    fn refuse(wire: &[u8]) -> FrameError {
        let (_, mut reader) = pair();
        reader.push(wire);
        let error = reader.next_frame().unwrap_err();
        assert_eq!(reader.next_frame().unwrap_err(), FrameError::Poisoned);
        error
    }

    #[test]
    fn every_header_check_refuses() {
        let good = one_frame(b"payload");
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(refuse(&bad), FrameError::BadMagic(_)));
        let mut bad = good.clone();
        bad[4] = 200;
        assert_eq!(refuse(&bad), FrameError::UnknownKind(200));
        let mut bad = good.clone();
        bad[6] = 1;
        assert_eq!(refuse(&bad), FrameError::ReservedNotZero);
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(refuse(&bad[..HEADER_LEN]), FrameError::Oversized { .. }));
        let mut bad = good.clone();
        bad[HEADER_LEN] ^= 1;
        assert!(matches!(refuse(&bad), FrameError::BadCrc { .. }));
    }

    #[test]
    fn forged_frame_with_valid_crc_fails_the_mac() {
        let mut forger = FrameWriter::new(MacKey::from_bytes([1; 32]));
        let mut wire = Vec::new();
        forger.encode(FrameKind::Runs, Term(3), CheckpointId(5), b"evil", &mut wire);
        assert_eq!(refuse(&wire), FrameError::BadMac);
    }

    #[test]
    fn replayed_frame_is_out_of_sequence() {
        let (_, mut reader) = pair();
        let wire = one_frame(b"x");
        reader.push(&wire);
        reader.push(&wire);
        assert!(reader.next_frame().unwrap().is_some());
        assert_eq!(reader.next_frame().unwrap_err(), FrameError::OutOfSequence { expected: 1, got: 0 });
    }
}
