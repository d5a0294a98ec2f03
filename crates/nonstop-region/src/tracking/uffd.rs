//! Write tracking by userfaultfd's asynchronous write-protect (Linux >= 6.7).
//!
//! The region is registered for write-protect faults with `UFFD_FEATURE_WP_ASYNC`: the kernel
//! resolves a write to a protected page by itself — no thread waits on the descriptor, the
//! writer pays one minor fault — and marks the page written. `PAGEMAP_SCAN` with
//! `PM_SCAN_WP_MATCHING` then returns the written pages and protects them again in one call,
//! page by page atomically, so a write racing with the scan either is reported now or faults
//! afterwards and is reported next time. `UFFD_FEATURE_WP_UNPOPULATED` makes never-touched
//! pages of the anonymous mapping protected too, so a first write to a page is caught.
//!
//! The region is made resident before it is protected. The kernel protects a never-touched
//! page with a marker in its page table, and `PAGEMAP_SCAN` reads markers on a path twice as
//! slow as present pages (512 MiB: ~270 us against ~140 us per scan, 2026-12-06): a fresh
//! primary scanning at every cut paid a quarter of a core, mostly for its untouched pages. A
//! backup keeps its image resident already, so a promoted one pays nothing more here.

use super::TrackingError;
use linux_raw_sys::general::{
    PAGE_IS_WRITTEN, PM_SCAN_WP_MATCHING, UFFD_API, UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_UNPOPULATED,
    UFFD_USER_MODE_ONLY, UFFDIO_REGISTER_MODE_WP, page_region, pm_scan_arg, uffdio_api, uffdio_range, uffdio_register,
    uffdio_writeprotect,
};
use linux_raw_sys::ioctl::{UFFDIO_API, UFFDIO_REGISTER, UFFDIO_WRITEPROTECT};
use nonstop_proto::PAGE_SIZE;
use rustix::fd::{AsFd, OwnedFd};
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode, Updater, ioctl, opcode};
use std::ffi::c_void;
use std::ops::Range;

/// `PAGEMAP_SCAN` is `_IOWR('f', 16, struct pm_scan_arg)`; linux-raw-sys has the structure but
/// not the request number.
const PAGEMAP_SCAN: Opcode = opcode::read_write::<pm_scan_arg>(b'f', 16);

/// `UFFDIO_WRITEPROTECT_MODE_WP` (`(__u64)1 << 0` in the kernel's header, which bindgen does
/// not carry over).
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;

/// Page ranges asked for per `PAGEMAP_SCAN` call; a scan with more ranges continues where the
/// last call stopped (`walk_end`).
const RANGES_PER_SCAN: usize = 512;

pub(super) struct UffdTracker {
    /// Kept open: closing it would end the registration.
    _uffd: OwnedFd,
    pagemap: std::fs::File,
    start: u64,
    end: u64,
    ranges: Vec<page_region>,
}

impl UffdTracker {
    pub(super) fn start(base: usize, len: usize) -> Result<UffdTracker, TrackingError> {
        let unsupported = |step: &'static str| move |errno: rustix::io::Errno| TrackingError::Uffd { step, errno };
        let flags = rustix::mm::UserfaultfdFlags::CLOEXEC
            | rustix::mm::UserfaultfdFlags::NONBLOCK
            // Without it an unprivileged process is refused (vm.unprivileged_userfaultfd = 0),
            // and only writes from user mode matter: a kernel write into the region (read(2)
            // into it) is not caught — see the module docs of `tracking`.
            | rustix::mm::UserfaultfdFlags::from_bits_retain(UFFD_USER_MODE_ONLY);
        // SAFETY: userfaultfd(2) with valid flags only creates a descriptor.
        let uffd = unsafe { rustix::mm::userfaultfd(flags) }.map_err(unsupported("userfaultfd(2)"))?;
        let wanted = u64::from(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED);
        let mut api = uffdio_api { api: u64::from(UFFD_API), features: wanted, ioctls: 0 };
        // SAFETY: UFFDIO_API takes a `struct uffdio_api`, which it reads and updates.
        unsafe { ioctl(uffd.as_fd(), Updater::<{ UFFDIO_API as Opcode }, _>::new(&mut api)) }
            .map_err(unsupported("UFFDIO_API with WP_ASYNC and WP_UNPOPULATED"))?;
        if api.features & wanted != wanted {
            return Err(TrackingError::Uffd {
                step: "UFFDIO_API with WP_ASYNC and WP_UNPOPULATED",
                errno: rustix::io::Errno::OPNOTSUPP,
            });
        }
        let range = uffdio_range { start: base as u64, len: len as u64 };
        let mut register = uffdio_register { range, mode: u64::from(UFFDIO_REGISTER_MODE_WP), ioctls: 0 };
        // SAFETY: UFFDIO_REGISTER takes a `struct uffdio_register` naming our own mapping.
        unsafe { ioctl(uffd.as_fd(), Updater::<{ UFFDIO_REGISTER as Opcode }, _>::new(&mut register)) }
            .map_err(unsupported("UFFDIO_REGISTER in write-protect mode"))?;
        let mut protect = uffdio_writeprotect { range, mode: UFFDIO_WRITEPROTECT_MODE_WP };
        // SAFETY: UFFDIO_WRITEPROTECT takes a `struct uffdio_writeprotect` naming the range
        // registered above.
        unsafe { ioctl(uffd.as_fd(), Updater::<{ UFFDIO_WRITEPROTECT as Opcode }, _>::new(&mut protect)) }
            .map_err(unsupported("UFFDIO_WRITEPROTECT"))?;
        let pagemap = std::fs::File::open("/proc/self/pagemap").map_err(TrackingError::Pagemap)?;
        let zeroed = page_region { start: 0, end: 0, categories: 0 };
        let mut tracker = UffdTracker {
            _uffd: uffd,
            pagemap,
            start: base as u64,
            end: (base + len) as u64,
            ranges: vec![zeroed; RANGES_PER_SCAN],
        };
        // One scan proves PAGEMAP_SCAN works here before anyone relies on it.
        tracker.collect(std::slice::from_ref(&(0..len / PAGE_SIZE)), &mut Vec::new())?;
        Ok(tracker)
    }

    /// Appends the written pages among `within` (ranges of page indexes from the region's
    /// base, ascending) and protects them again. The kernel walks the page tables of the
    /// ranges asked about, a cost per page whether written or not.
    pub(super) fn collect(&mut self, within: &[Range<usize>], pages: &mut Vec<usize>) -> Result<(), TrackingError> {
        for range in within {
            let at = |page: usize| self.start.saturating_add(page.saturating_mul(PAGE_SIZE) as u64).min(self.end);
            let (mut from, end) = (at(range.start), at(range.end));
            while from < end {
                let mut scan = PagemapScan {
                    arg: pm_scan_arg {
                        size: size_of::<pm_scan_arg>() as u64,
                        flags: u64::from(PM_SCAN_WP_MATCHING),
                        start: from,
                        end,
                        walk_end: 0,
                        vec: self.ranges.as_mut_ptr() as u64,
                        vec_len: self.ranges.len() as u64,
                        max_pages: 0,
                        category_inverted: 0,
                        category_mask: u64::from(PAGE_IS_WRITTEN),
                        category_anyof_mask: 0,
                        return_mask: u64::from(PAGE_IS_WRITTEN),
                    },
                };
                // SAFETY: PAGEMAP_SCAN reads `pm_scan_arg`, writes at most `vec_len` entries to
                // `vec` (our buffer of that many) and updates `walk_end`; the range is our
                // mapping.
                let filled = unsafe { ioctl(self.pagemap.as_fd(), &mut scan) }
                    .map_err(|errno| TrackingError::Uffd { step: "PAGEMAP_SCAN", errno })?;
                for written in &self.ranges[..filled.min(self.ranges.len())] {
                    let first = (written.start - self.start) as usize / PAGE_SIZE;
                    let last = (written.end - self.start) as usize / PAGE_SIZE;
                    pages.extend(first..last);
                }
                if scan.arg.walk_end <= from {
                    break;
                }
                from = scan.arg.walk_end;
            }
        }
        Ok(())
    }
}

/// The `PAGEMAP_SCAN` request: its result is the number of ranges filled in, which rustix's
/// `Updater` would drop.
struct PagemapScan {
    arg: pm_scan_arg,
}

// SAFETY: PAGEMAP_SCAN takes a pointer to `struct pm_scan_arg`, mutates it and user memory it
// names, and returns a non-negative count of filled `page_region` entries.
unsafe impl Ioctl for &mut PagemapScan {
    type Output = usize;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        PAGEMAP_SCAN
    }

    fn as_ptr(&mut self) -> *mut c_void {
        (&raw mut self.arg).cast()
    }

    unsafe fn output_from_ptr(output: IoctlOutput, _: *mut c_void) -> rustix::io::Result<usize> {
        Ok(output.max(0) as usize)
    }
}
