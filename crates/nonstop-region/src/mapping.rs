//! The region's memory: an anonymous mapping at a fixed virtual address.
//!
//! Every node maps a service's region at the same address, so pointers stored inside the region
//! stay valid on a backup after promotion. The mapping is made with `MAP_FIXED_NOREPLACE`: if
//! anything already lives in the range, mapping fails with a clear error instead of silently
//! replacing it.

use nonstop_proto::PAGE_SIZE;
use rustix::mm::{Advice, MapFlags, ProtFlags};
use thiserror::Error;

/// The default base address of a region: 32 TiB, far from where Linux places the executable,
/// the heap, thread stacks and shared libraries on x86-64 and aarch64 (47/48-bit user space).
pub const DEFAULT_REGION_BASE: usize = 0x2000_0000_0000;

/// The largest region nonstop maps (64 GiB).
pub const MAX_REGION_LEN: usize = 64 << 30;

/// A region could not be mapped.
#[derive(Debug, Error)]
pub enum RegionError {
    /// The length is zero, not a multiple of the page size, or too large.
    #[error(
        "invalid region size {len} bytes: it must be a non-zero multiple of {PAGE_SIZE} (4 KiB pages) and at most {MAX_REGION_LEN} bytes (64 GiB)"
    )]
    InvalidSize {
        /// The length asked for.
        len: usize,
    },
    /// The base address is not page-aligned or the range leaves user space.
    #[error(
        "invalid region address {base:#x}: it must be a multiple of {PAGE_SIZE} and base + size must stay below {limit:#x}"
    )]
    InvalidAddress {
        /// The base asked for.
        base: usize,
        /// The end of user space assumed.
        limit: usize,
    },
    /// Something is already mapped in the range.
    #[error(
        "region address range {base:#x}..{end:#x} is already in use in this process: choose another region address (all nodes of a service must use the same one)"
    )]
    AddressTaken {
        /// The base asked for.
        base: usize,
        /// The end of the range.
        end: usize,
    },
    /// The kernel could not give the region memory to hold every page.
    #[error(
        "cannot hold the region's {len} bytes in memory ({source}): a backup keeps its whole image resident; free memory on this node or give the service a smaller region"
    )]
    Populate {
        /// The region's length.
        len: usize,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// The kernel refused the mapping for another reason.
    #[error("mapping the region at {base:#x} ({len} bytes) failed: {source}")]
    Map {
        /// The base asked for.
        base: usize,
        /// The length asked for.
        len: usize,
        /// The kernel's answer.
        source: std::io::Error,
    },
}

/// Top of user space assumed for validation (47-bit, the smallest common layout).
const USER_SPACE_END: usize = 0x7fff_ffff_f000;

/// An anonymous, private, fixed-address mapping, unmapped on drop.
#[derive(Debug)]
pub struct Region {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; access is governed by Rust borrows
// (&/&mut Region) or, in `Mirror`, by the checkpoint gate and the range locks.
unsafe impl Send for Region {}
// SAFETY: see above.
unsafe impl Sync for Region {}

/// `/proc/self/pagemap`: the page is in memory.
pub(crate) const PAGEMAP_PRESENT: u64 = 1 << 63;
/// `/proc/self/pagemap`: the page is in swap.
const PAGEMAP_SWAPPED: u64 = 1 << 62;

impl Region {
    /// Maps `len` bytes of zeroes at exactly `base`.
    ///
    /// ```
    /// use nonstop_region::Region;
    /// let region = Region::map(0x2100_0000_0000, 1 << 20).unwrap();
    /// assert_eq!(region.as_slice()[4096], 0);
    /// assert!(Region::map(0x2100_0000_0000, 4096).is_err(), "the range is taken");
    /// ```
    pub fn map(base: usize, len: usize) -> Result<Region, RegionError> {
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) || len > MAX_REGION_LEN {
            return Err(RegionError::InvalidSize { len });
        }
        if base == 0 || !base.is_multiple_of(PAGE_SIZE) || base.checked_add(len).is_none_or(|end| end > USER_SPACE_END)
        {
            return Err(RegionError::InvalidAddress { base, limit: USER_SPACE_END });
        }
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; we check below that
        // the kernel honoured the address.
        let mapped = unsafe {
            rustix::mm::mmap_anonymous(
                base as *mut _,
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::FIXED_NOREPLACE | MapFlags::NORESERVE,
            )
        };
        match mapped {
            Ok(ptr) if ptr as usize == base => {
                // Transparent huge pages: a region is large and accessed at random, so fewer TLB
                // misses matter. Dirty tracking stays at 4 KiB pages, which is logical, not the
                // hardware page size. Where THP is unavailable this is a harmless no-op.
                // SAFETY: the range is the mapping just created.
                let _ = unsafe { rustix::mm::madvise(ptr, len, Advice::LinuxHugepage) };
                Ok(Region { base: ptr.cast(), len })
            }
            Ok(ptr) => {
                // A kernel older than 4.17 ignores FIXED_NOREPLACE and treats the address as a
                // hint: give the memory back and report the range as unusable.
                // SAFETY: `ptr` is the mapping just created, of `len` bytes, used by no one.
                let _ = unsafe { rustix::mm::munmap(ptr, len) };
                Err(RegionError::AddressTaken { base, end: base + len })
            }
            Err(rustix::io::Errno::EXIST) => Err(RegionError::AddressTaken { base, end: base + len }),
            Err(errno) => Err(RegionError::Map { base, len, source: errno.into() }),
        }
    }

    /// Maps `len` bytes of zeroes wherever the kernel likes: private memory that is never
    /// mirrored (a transparent-mode shadow), so its address does not matter.
    pub(crate) fn map_anywhere(len: usize) -> Result<Region, RegionError> {
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) || len > MAX_REGION_LEN {
            return Err(RegionError::InvalidSize { len });
        }
        // SAFETY: a fresh anonymous mapping at an address the kernel picks replaces nothing.
        let mapped = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        };
        match mapped {
            Ok(ptr) => Ok(Region { base: ptr.cast(), len }),
            Err(errno) => Err(RegionError::Map { base: 0, len, source: errno.into() }),
        }
    }

    /// The pages the kernel holds in memory or swap (from `/proc/self/pagemap`); the others
    /// read as zeros.
    pub(crate) fn populated_pages(&self) -> std::io::Result<Vec<usize>> {
        self.pages_marked(PAGEMAP_PRESENT | PAGEMAP_SWAPPED)
    }

    /// The pages whose `/proc/self/pagemap` entry has any of the bits of `mask`.
    pub(crate) fn pages_marked(&self, mask: u64) -> std::io::Result<Vec<usize>> {
        use std::os::unix::fs::FileExt;
        let pagemap = std::fs::File::open("/proc/self/pagemap")?;
        let first = (self.base as usize / PAGE_SIZE) as u64;
        let mut populated = Vec::new();
        let mut entries = vec![0u8; 8 * 4096];
        for chunk_start in (0..self.pages()).step_by(4096) {
            let count = (self.pages() - chunk_start).min(4096);
            let bytes = &mut entries[..count * 8];
            pagemap.read_exact_at(bytes, (first + chunk_start as u64) * 8)?;
            for (index, entry) in bytes.chunks_exact(8).enumerate() {
                if u64::from_ne_bytes(entry.try_into().expect("8 bytes")) & mask != 0 {
                    populated.push(chunk_start + index);
                }
            }
        }
        Ok(populated)
    }

    /// Asks the kernel to make every page resident, keeping its content
    /// (`MADV_POPULATE_WRITE`, Linux >= 5.14): `EINVAL` from an older kernel.
    pub(crate) fn advise_populate(&self) -> rustix::io::Result<()> {
        // SAFETY: the range is our own mapping; populating changes no content.
        unsafe { rustix::mm::madvise(self.base.cast(), self.len, Advice::LinuxPopulateWrite) }
    }

    /// Makes every page resident now, keeping its content (`MADV_POPULATE_WRITE`, Linux >= 5.14;
    /// on older kernels each page is touched in turn).
    ///
    /// A backup does this with its image: the primary does not send pages that are zero, so
    /// without it the first run to land on each such page would wait for the kernel to
    /// allocate and zero it, inside a checkpoint's apply, while output waits for the
    /// acknowledgement — and a node short of memory would fail there, mid-checkpoint, instead
    /// of here with a clear error.
    pub fn populate(&mut self) -> Result<(), RegionError> {
        match self.advise_populate() {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::INVAL) => {
                // A kernel without MADV_POPULATE_WRITE: write each page's first byte back to
                // itself (`&mut self` excludes every other access, so nothing changes).
                for page in self.as_mut_slice().chunks_exact_mut(PAGE_SIZE) {
                    // SAFETY: a valid, exclusively borrowed byte; volatile so the write stays.
                    unsafe { std::ptr::write_volatile(&mut page[0], std::ptr::read_volatile(&page[0])) };
                }
                Ok(())
            }
            Err(errno) => Err(RegionError::Populate { len: self.len, source: errno.into() }),
        }
    }

    /// Asks for 4 KiB pages only (transparent mode tracks writes per page).
    pub(crate) fn no_huge_pages(&self) {
        // SAFETY: the range is our mapping; the advice changes no content.
        let _ = unsafe { rustix::mm::madvise(self.base.cast(), self.len, Advice::LinuxNoHugepage) };
    }

    /// The virtual address of the first byte.
    pub fn base(&self) -> usize {
        self.base as usize
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a region is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.len / PAGE_SIZE
    }

    /// Raw pointer to the first byte, for the transaction layer.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base
    }

    /// The whole region.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is valid for `len` bytes for the lifetime of `self`.
        unsafe { std::slice::from_raw_parts(self.base, self.len) }
    }

    /// The whole region, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` excludes every other access.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.len) }
    }

    /// Sets every byte to zero and gives the memory back to the kernel (`MADV_DONTNEED` on a
    /// private anonymous mapping), in time independent of how much was written.
    pub fn zero(&mut self) {
        // SAFETY: `&mut self` excludes every other access to the region.
        unsafe { self.zero_unaliased() }
    }

    /// [`Region::zero`] through a shared reference.
    ///
    /// # Safety
    ///
    /// No reference into the region may be alive, and none may be made until this returns (the
    /// caller's locks hold every reader and writer off).
    pub(crate) unsafe fn zero_unaliased(&self) {
        // SAFETY: the range is our own mapping; MADV_DONTNEED on private anonymous memory makes
        // later reads return zeroes, which is what we want.
        let result = unsafe { rustix::mm::madvise(self.base.cast(), self.len, Advice::LinuxDontNeed) };
        if result.is_err() {
            // SAFETY: the caller guarantees no other reference into the region is alive.
            unsafe { std::slice::from_raw_parts_mut(self.base, self.len) }.fill(0);
        }
    }
}

/// Asks for transparent huge pages under a large table read at random (a region's line seals):
/// with 4 KiB pages every access to a cold entry also misses the TLB, and under a hypervisor a
/// TLB miss walks two sets of page tables. Only the 2 MiB-aligned part of the table can get huge
/// pages; a table smaller than that, or a kernel without THP, is left as it is. Call it before
/// the table is first written, so the kernel allocates huge pages at the first fault instead of
/// collapsing small ones later.
pub fn advise_huge_pages<T>(table: &[T]) {
    const HUGE: usize = 2 << 20;
    let start = (table.as_ptr() as usize).next_multiple_of(HUGE);
    let end = (table.as_ptr() as usize + std::mem::size_of_val(table)) / HUGE * HUGE;
    if end > start {
        // SAFETY: the range lies inside the table's own allocation; the advice changes no
        // content, only the page size that backs it.
        let _ = unsafe { rustix::mm::madvise(start as *mut _, end - start, Advice::LinuxHugepage) };
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: we own the mapping and nothing borrows it any more.
        let _ = unsafe { rustix::mm::munmap(self.base.cast(), self.len) };
    }
}

impl nonstop_proto::backup::Image for Region {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
    /// Zeroes in place rather than giving the memory back ([`Region::zero`]): a backup keeps
    /// its image resident ([`Region::populate`]), so that no checkpoint it applies later waits
    /// for the kernel to find and zero a page.
    fn clear(&mut self) {
        self.as_mut_slice().fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_sizes_and_addresses_are_refused() {
        assert!(matches!(Region::map(DEFAULT_REGION_BASE, 0), Err(RegionError::InvalidSize { .. })));
        assert!(matches!(Region::map(DEFAULT_REGION_BASE, 4097), Err(RegionError::InvalidSize { .. })));
        assert!(matches!(
            Region::map(DEFAULT_REGION_BASE, MAX_REGION_LEN + PAGE_SIZE),
            Err(RegionError::InvalidSize { .. })
        ));
        assert!(matches!(Region::map(DEFAULT_REGION_BASE + 1, 4096), Err(RegionError::InvalidAddress { .. })));
        assert!(matches!(Region::map(USER_SPACE_END, 4096), Err(RegionError::InvalidAddress { .. })));
    }

    #[test]
    fn a_populated_region_keeps_its_bytes_holds_every_page_and_clears_in_place() {
        use nonstop_proto::backup::Image;
        let mut region = Region::map(0x2300_0000_0000, 64 * PAGE_SIZE).unwrap();
        region.as_mut_slice()[5 * PAGE_SIZE + 3] = 9;
        assert!(region.populated_pages().unwrap().len() < 64, "written pages only are resident");
        region.populate().unwrap();
        assert_eq!(region.populated_pages().unwrap(), (0..64).collect::<Vec<_>>());
        assert_eq!(region.as_slice()[5 * PAGE_SIZE + 3], 9, "populating changes no byte");
        region.clear();
        assert!(region.as_slice().iter().all(|b| *b == 0));
        assert_eq!(region.populated_pages().unwrap().len(), 64, "a backup's clear keeps the memory");
    }

    #[test]
    fn four_gib_region_maps_and_zeroes() {
        let mut region = Region::map(0x2200_0000_0000, 4 << 30).unwrap();
        let last = region.len() - 1;
        region.as_mut_slice()[last] = 7;
        region.as_mut_slice()[0] = 7;
        region.zero();
        assert_eq!(region.as_slice()[last], 0);
        assert_eq!(region.as_slice()[0], 0);
        let taken = Region::map(0x2200_0000_0000 + (1 << 30), 4096).unwrap_err();
        assert!(matches!(taken, RegionError::AddressTaken { .. }), "{taken}");
        assert!(taken.to_string().contains("already in use"));
    }
}
