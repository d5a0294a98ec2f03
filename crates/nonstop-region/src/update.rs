//! One piece of service code for both ways of writing the region: declared ranges in a
//! [`crate::Transaction`], or plain writes in transparent mode that the kernel watches.

use crate::transaction::{TxError, check_range};
use std::cell::RefCell;
use std::marker::PhantomData;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Typed reads and writes of the region at offsets, by a [`crate::Transaction`] (which
/// declares, locks and can undo each range) or by an [`Update`] in transparent mode (which
/// only checks bounds: the kernel finds what was written). A workload written against this
/// trait runs in either mode.
pub trait RegionWrite {
    /// `[offset, offset + size_of::<T>())` as a `T` to write. Ranges handed out by one
    /// transaction or update never overlap.
    #[allow(clippy::mut_from_ref)] // Each call hands out a distinct, non-overlapping range.
    fn write<T: FromBytes + IntoBytes + KnownLayout + Immutable>(&self, offset: u64) -> Result<&mut T, TxError>;

    /// A copy of the `T` at `offset` (ranges handed out for writing are read through their
    /// reference).
    fn read<T: FromBytes + KnownLayout + Immutable>(&self, offset: u64) -> Result<T, TxError>;

    /// `[offset, offset + len)` as bytes to write, under the same rules as [`RegionWrite::write`].
    #[allow(clippy::mut_from_ref)] // Each call hands out a distinct, non-overlapping range.
    fn write_bytes(&self, offset: u64, len: usize) -> Result<&mut [u8], TxError>;

    /// Copies `out.len()` bytes from `offset` into `out`.
    fn read_bytes(&self, offset: u64, out: &mut [u8]) -> Result<(), TxError>;
}

/// Writes to the region inside [`crate::Mirror::update`], by offset, with the bounds,
/// alignment and overlap checks of a transaction and none of its declarations.
///
/// ```
/// use nonstop_region::{Mirror, Region, RegionWrite, Update};
/// use nonstop_proto::CheckpointId;
/// let mirror = Mirror::tracked(Region::map(0x2300_3000_0000, 1 << 20).unwrap(), None, CheckpointId(1)).unwrap();
/// mirror.update(|image| {
///     let update = Update::new(image);
///     *update.write::<u64>(4096).unwrap() += 1;
///     assert!(update.write::<u64>(4100).is_err(), "overlaps the range above");
/// });
/// ```
pub struct Update<'a> {
    base: *mut u8,
    len: usize,
    handed_out: RefCell<Vec<(u64, u32)>>,
    _image: PhantomData<&'a mut [u8]>,
}

impl<'a> Update<'a> {
    /// Writes to `image`, the whole region as [`crate::Mirror::update`] hands it over.
    pub fn new(image: &'a mut [u8]) -> Update<'a> {
        Update { base: image.as_mut_ptr(), len: image.len(), handed_out: RefCell::new(Vec::new()), _image: PhantomData }
    }

    fn range(&self, offset: u64, len: u64, align: usize) -> Result<*mut u8, TxError> {
        check_range(self.base as usize, self.len as u64, &self.handed_out.borrow(), offset, len, align)?;
        // SAFETY: `check_range` put the range inside the image.
        Ok(unsafe { self.base.add(offset as usize) })
    }
}

impl RegionWrite for Update<'_> {
    fn write<T: FromBytes + IntoBytes + KnownLayout + Immutable>(&self, offset: u64) -> Result<&mut T, TxError> {
        let len = size_of::<T>() as u64;
        let at = self.range(offset, len, align_of::<T>())?;
        self.handed_out.borrow_mut().push((offset, len as u32));
        // SAFETY: inside the image this update borrows exclusively for 'a, and disjoint from
        // every other range it handed out: this is the only reference to these bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(at, len as usize) };
        Ok(T::mut_from_bytes(bytes).expect("size and alignment checked"))
    }

    fn read<T: FromBytes + KnownLayout + Immutable>(&self, offset: u64) -> Result<T, TxError> {
        let len = size_of::<T>() as u64;
        let at = self.range(offset, len, 1)?;
        // SAFETY: inside the image, and no reference handed out for writing covers it.
        let bytes = unsafe { std::slice::from_raw_parts(at, len as usize) };
        Ok(T::read_from_bytes(bytes).expect("length is size_of::<T>()"))
    }

    fn write_bytes(&self, offset: u64, len: usize) -> Result<&mut [u8], TxError> {
        let at = self.range(offset, len as u64, 1)?;
        self.handed_out.borrow_mut().push((offset, len as u32));
        // SAFETY: as in `write`: inside the image, disjoint from every range handed out.
        Ok(unsafe { std::slice::from_raw_parts_mut(at, len) })
    }

    fn read_bytes(&self, offset: u64, out: &mut [u8]) -> Result<(), TxError> {
        let at = self.range(offset, out.len() as u64, 1)?;
        // SAFETY: as in `read`.
        out.copy_from_slice(unsafe { std::slice::from_raw_parts(at, out.len()) });
        Ok(())
    }
}
