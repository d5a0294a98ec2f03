//! Recoverable-memory transactions in the style of Rio Vista and RVM.
//!
//! A transaction declares every range before it writes it: [`Transaction::write`] takes the
//! range's locks, saves its undo image, lets the update protocol note the pages, and only then
//! returns a typed `&mut` to the bytes. Writing to the region any other way is impossible from
//! safe code, so a forgotten declaration cannot happen. [`Transaction::commit`] makes the writes
//! part of the open checkpoint; dropping or [`Transaction::abort`]ing restores the undo images.
//!
//! Every line a transaction reads or writes is checked against its seal
//! ([`nonstop_proto::integrity`]) once it holds the line's lock, and the lines it wrote are
//! sealed at commit, still under the lock: a byte corrupted in memory is never read, written
//! around, or shipped as a change.

use crate::locks::{Conflict, LINE};
use crate::mirror::Mirror;
use nonstop_proto::primary::Ticket;
use std::cell::RefCell;
use std::sync::RwLockReadGuard;
use thiserror::Error;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Why a read or write was refused. The transaction is unchanged and may go on or abort.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TxError {
    /// The range reaches past the region.
    #[error("range [{offset}, +{len}) reaches past the end of the {region_len}-byte region")]
    OutOfRegion {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// The region's length.
        region_len: u64,
    },
    /// The offset is not aligned for the type.
    #[error("offset {offset} is not aligned to {align} bytes for the requested type")]
    Misaligned {
        /// Offset asked for.
        offset: u64,
        /// Alignment of the type.
        align: usize,
    },
    /// The range overlaps one this transaction already declared for writing.
    #[error(
        "range [{offset}, +{len}) overlaps a range this transaction already declared: use the reference you already hold"
    )]
    Overlap {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
    },
    /// Another transaction holds part of the range: abort and retry.
    #[error("range [{offset}, +{len}) is locked by another transaction: abort and retry")]
    Conflict {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
    },
}

/// Checks a range asked for: inside a region of `region_len` bytes at `base`, aligned to
/// `align` there, and disjoint from every range in `declared` (whose references are out).
pub(crate) fn check_range(
    base: usize,
    region_len: u64,
    declared: &[(u64, u32)],
    offset: u64,
    len: u64,
    align: usize,
) -> Result<(), TxError> {
    // One range is at most 4 GiB: its length is recorded in 32 bits.
    if len == 0 || len > u64::from(u32::MAX) || offset.checked_add(len).is_none_or(|end| end > region_len) {
        return Err(TxError::OutOfRegion { offset, len, region_len });
    }
    if !(base as u64 + offset).is_multiple_of(align as u64) {
        return Err(TxError::Misaligned { offset, align });
    }
    if declared.iter().any(|&(o, l)| offset < o + u64::from(l) && o < offset + len) {
        return Err(TxError::Overlap { offset, len });
    }
    Ok(())
}

#[derive(Debug, Default)]
struct TxState {
    stripes: Vec<u32>,
    declared: Vec<(u64, u32)>,
    /// Undo records, packed: offset u64, length u32, old bytes.
    undo: Vec<u8>,
}

thread_local! {
    static SPARE_STATE: RefCell<Option<TxState>> = const { RefCell::new(None) };
}

/// A transaction on a [`Mirror`]. Dropping it without commit aborts it.
#[derive(Debug)]
pub struct Transaction<'m> {
    mirror: &'m Mirror,
    _gate: RwLockReadGuard<'m, ()>,
    token: u64,
    state: RefCell<TxState>,
    finished: bool,
}

impl<'m> Transaction<'m> {
    pub(crate) fn new(mirror: &'m Mirror, gate: RwLockReadGuard<'m, ()>, token: u64) -> Transaction<'m> {
        let state = SPARE_STATE.with(|spare| spare.borrow_mut().take()).unwrap_or_default();
        Transaction { mirror, _gate: gate, token, state: RefCell::new(state), finished: false }
    }

    /// Checks a range asked for, and returns the part of it whose line seals must be checked:
    /// a line this transaction already wrote part of holds its uncommitted bytes, which it
    /// seals at commit. Ranges never overlap, so only the range's first and last lines can be
    /// shared with one declared before.
    fn check(&self, offset: u64, len: u64, align: usize) -> Result<std::ops::Range<u64>, TxError> {
        let state = self.state.borrow();
        check_range(self.mirror.base(), self.mirror.len() as u64, &state.declared, offset, len, align)?;
        let (first_line, last_line) = (offset / LINE, (offset + len - 1) / LINE);
        let (mut first_shared, mut last_shared) = (false, false);
        for &(o, l) in &state.declared {
            let lines = o / LINE..=(o + l as u64 - 1) / LINE;
            first_shared |= lines.contains(&first_line);
            last_shared |= lines.contains(&last_line);
        }
        let start = if first_shared { (first_line + 1) * LINE } else { first_line * LINE };
        let end = if last_shared { last_line * LINE } else { (last_line + 1) * LINE };
        Ok(start..end.max(start))
    }

    fn lock(&self, offset: u64, len: u64) -> Result<(), TxError> {
        let mut state = self.state.borrow_mut();
        self.mirror
            .locks()
            .acquire(self.token, offset, len, &mut state.stripes)
            .map_err(|Conflict| TxError::Conflict { offset, len })
    }

    /// Declares `[offset, offset + size_of::<T>())` for writing and returns it as a `T`.
    ///
    /// `T` must accept any bit pattern ([`FromBytes`]), since a backup's image is made of bytes.
    #[allow(clippy::mut_from_ref)] // Each call hands out a distinct, locked, non-overlapping range.
    pub fn write<T: FromBytes + IntoBytes + KnownLayout + Immutable>(&self, offset: u64) -> Result<&mut T, TxError> {
        let len = std::mem::size_of::<T>() as u64;
        let bytes = self.declare(offset, len, std::mem::align_of::<T>())?;
        Ok(T::mut_from_bytes(bytes).expect("size and alignment checked by declare"))
    }

    /// Declares `[offset, offset + len)` for writing and returns it as bytes.
    #[allow(clippy::mut_from_ref)] // Each call hands out a distinct, locked, non-overlapping range.
    pub fn write_bytes(&self, offset: u64, len: usize) -> Result<&mut [u8], TxError> {
        self.declare(offset, len as u64, 1)
    }

    #[allow(clippy::mut_from_ref)]
    fn declare(&self, offset: u64, len: u64, align: usize) -> Result<&mut [u8], TxError> {
        let sealed = self.check(offset, len, align)?;
        self.lock(offset, len)?;
        self.mirror.check_lines(sealed.start, sealed.end - sealed.start);
        self.mirror.before_write(offset, len);
        // SAFETY: the range is inside the region (checked), locked against every other
        // transaction (range locks), and disjoint from every other range this transaction
        // handed out (overlap check), so this is the only reference to these bytes.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(self.mirror.region().as_ptr().add(offset as usize), len as usize) };
        let mut state = self.state.borrow_mut();
        let mut record = [0u8; 20];
        record[..8].copy_from_slice(&offset.to_le_bytes());
        record[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        if let Ok(word) = <[u8; 8]>::try_from(&*bytes) {
            // The common eight-byte field as one fixed-size copy.
            record[12..].copy_from_slice(&word);
            state.undo.extend_from_slice(&record);
        } else {
            state.undo.extend_from_slice(&record[..12]);
            state.undo.extend_from_slice(bytes);
        }
        state.declared.push((offset, len as u32));
        Ok(bytes)
    }

    /// Reads a `T` at `offset` (a copy). The range is locked until the transaction ends, so
    /// what was read cannot change under it. Ranges declared for writing are read through the
    /// reference [`Transaction::write`] returned.
    pub fn read<T: FromBytes + KnownLayout + Immutable>(&self, offset: u64) -> Result<T, TxError> {
        let len = std::mem::size_of::<T>() as u64;
        let sealed = self.check(offset, len, 1)?;
        self.lock(offset, len)?;
        self.mirror.check_lines(sealed.start, sealed.end - sealed.start);
        // SAFETY: inside the region and locked: no transaction writes these bytes meanwhile.
        let bytes =
            unsafe { std::slice::from_raw_parts(self.mirror.region().as_ptr().add(offset as usize), len as usize) };
        Ok(T::read_from_bytes(bytes).expect("length is size_of::<T>()"))
    }

    /// Reads `out.len()` bytes at `offset`.
    pub fn read_bytes(&self, offset: u64, out: &mut [u8]) -> Result<(), TxError> {
        let len = out.len() as u64;
        let sealed = self.check(offset, len, 1)?;
        self.lock(offset, len)?;
        self.mirror.check_lines(sealed.start, sealed.end - sealed.start);
        // SAFETY: as in `read`.
        let bytes =
            unsafe { std::slice::from_raw_parts(self.mirror.region().as_ptr().add(offset as usize), len as usize) };
        out.copy_from_slice(bytes);
        Ok(())
    }

    /// Commits: the writes become part of the open checkpoint. The returned ticket says which;
    /// a reply caused by this transaction may leave once every backup holds it.
    pub fn commit(mut self) -> Ticket {
        // Sealed while still locked: no one sees the lines between the writes and the seals.
        // The undo images say what each range held, so the seals move by the change alone.
        for (offset, old) in undo_records(&self.state.borrow().undo) {
            self.mirror.reseal(offset, old);
        }
        let checkpoint = self.mirror.on_commit(&self.state.borrow().declared);
        self.finished = true;
        Ticket { checkpoint }
    }

    /// Aborts: every declared range gets its undo image back.
    pub fn abort(self) {
        // Drop does the work.
    }

    fn roll_back(&self) {
        let state = self.state.borrow();
        let records: Vec<(u64, &[u8])> = undo_records(&state.undo).collect();
        // Newest first, so that overlapping images (never produced today) would still unwind.
        for (offset, old) in records.into_iter().rev() {
            // SAFETY: the range was declared by this transaction and is still locked by it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    old.as_ptr(),
                    self.mirror.region().as_ptr().add(offset as usize),
                    old.len(),
                );
            }
        }
    }
}

/// The undo records of a transaction, oldest first: each range's offset and old bytes.
fn undo_records(undo: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = undo.get(at..at + 12)?;
        let offset = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(header[8..].try_into().expect("4 bytes")) as usize;
        let old = &undo[at + 12..at + 12 + len];
        at += 12 + len;
        Some((offset, old))
    })
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.roll_back();
        }
        let mut state = std::mem::take(&mut *self.state.borrow_mut());
        self.mirror.locks().release(self.token, &mut state.stripes);
        state.declared.clear();
        state.undo.clear();
        SPARE_STATE.with(|spare| *spare.borrow_mut() = Some(state));
    }
}

impl crate::RegionWrite for Transaction<'_> {
    fn write<T: FromBytes + IntoBytes + KnownLayout + Immutable>(&self, offset: u64) -> Result<&mut T, TxError> {
        Transaction::write(self, offset)
    }

    fn read<T: FromBytes + KnownLayout + Immutable>(&self, offset: u64) -> Result<T, TxError> {
        Transaction::read(self, offset)
    }

    fn write_bytes(&self, offset: u64, len: usize) -> Result<&mut [u8], TxError> {
        Transaction::write_bytes(self, offset, len)
    }

    fn read_bytes(&self, offset: u64, out: &mut [u8]) -> Result<(), TxError> {
        Transaction::read_bytes(self, offset, out)
    }
}
