//! Write tracking without declared ranges: the kernel reports which pages were written.
//!
//! Transparent mode lets a service write its region like ordinary memory — a `HashMap` in
//! it, say — instead of declaring every range. A [`WriteTracker`] finds the pages written
//! since its last [`WriteTracker::collect`] and protects them again, with one of two kernel
//! mechanisms chosen at run time ([`TrackingMode`]):
//!
//! * [`TrackingMode::Uffd`]: userfaultfd asynchronous write-protect with `PAGEMAP_SCAN`
//!   (Linux >= 6.7). The region is made resident when tracking starts. A first write to a
//!   page costs one minor fault resolved in the kernel; a collection is one system call per
//!   512 written ranges.
//! * [`TrackingMode::Mprotect`]: read-only pages and a SIGSEGV handler, on any Linux. A first
//!   write costs a signal delivery and an `mprotect` call.
//!
//! Either way a page written while a collection runs is reported by this collection or the
//! next, never neither, and a caller that reads the reported pages after `collect` returns
//! sees every write made before they were protected again.
//!
//! What is not caught: writes by the kernel on the process's behalf (`read(2)` into the
//! region, say). Under userfaultfd they are not reported; under `mprotect` they fail with
//! `EFAULT`. Read into a buffer outside the region and copy it in.

mod mprotect;
mod uffd;

use nonstop_proto::PAGE_SIZE;
use std::ops::Range;
use thiserror::Error;

/// Where the updates of a transparent-mode region can write: what a cut asks the kernel about.
///
/// ```
/// use nonstop_region::tracking::WriteExtent;
/// // A service whose state is a heap over the first 480 MiB, and a table written directly.
/// let extent = WriteExtent::Heap { heap_len: 480 << 20, also: vec![(480 << 20)..(490 << 20)] };
/// assert_ne!(extent, WriteExtent::Whole);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WriteExtent {
    /// Anywhere in the region.
    #[default]
    Whole,
    /// A heap ([`crate::heap::Heap`]) at the region's base owns its first `heap_len` bytes,
    /// and updates write them through the heap only, so nothing lands past the heap's arena
    /// (which only grows); `also` names the other byte ranges updates write.
    Heap {
        /// Bytes from the region's base that the heap owns.
        heap_len: usize,
        /// Byte ranges written otherwise.
        also: Vec<Range<usize>>,
    },
}

impl WriteExtent {
    /// The pages of `region` updates can have written, as ascending, disjoint ranges of page
    /// indexes; `reach` is the furthest heap page an earlier call returned, which is kept
    /// (the arena only grows, so this holds to that even if the header were overwritten).
    pub(crate) fn pages(&self, region: &crate::Region, reach: &mut usize) -> Vec<Range<usize>> {
        let pages = region.pages();
        match self {
            WriteExtent::Whole => std::iter::once(0..pages).collect(),
            WriteExtent::Heap { heap_len, also } => {
                let heap_end = crate::heap::written_end(region, *heap_len).div_ceil(PAGE_SIZE);
                *reach = (*reach).max(heap_end).min(pages);
                let mut ranges: Vec<Range<usize>> = std::iter::once(0..*reach)
                    .chain(also.iter().map(|r| (r.start / PAGE_SIZE).min(pages)..r.end.div_ceil(PAGE_SIZE).min(pages)))
                    .filter(|r| !r.is_empty())
                    .collect();
                ranges.sort_by_key(|r| r.start);
                let mut merged: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
                for range in ranges {
                    match merged.last_mut() {
                        Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                        _ => merged.push(range),
                    }
                }
                merged
            }
        }
    }
}

/// How writes to a region are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrackingMode {
    /// userfaultfd asynchronous write-protect and `PAGEMAP_SCAN` (Linux >= 6.7).
    Uffd,
    /// `mprotect` and a SIGSEGV handler (any Linux).
    Mprotect,
}

impl TrackingMode {
    /// Every mode, best first.
    pub const ALL: [TrackingMode; 2] = [TrackingMode::Uffd, TrackingMode::Mprotect];

    /// The mode's name in configs, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            TrackingMode::Uffd => "uffd",
            TrackingMode::Mprotect => "mprotect",
        }
    }
}

impl std::fmt::Display for TrackingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for TrackingMode {
    type Err = String;

    fn from_str(name: &str) -> Result<TrackingMode, String> {
        TrackingMode::ALL
            .into_iter()
            .find(|mode| mode.name() == name)
            .ok_or_else(|| format!("unknown write tracking {name:?}: use uffd or mprotect"))
    }
}

/// Write tracking could not start or collect.
#[derive(Debug, Error)]
pub enum TrackingError {
    /// A userfaultfd step failed: the kernel is older than 6.7, or userfaultfd is disabled.
    #[error(
        "userfaultfd write tracking is unavailable here ({step} failed: {errno}); it needs Linux >= 6.7 with CONFIG_USERFAULTFD and CONFIG_PTE_MARKER_UFFD_WP: use tracking = \"mprotect\" instead"
    )]
    Uffd {
        /// What was being done.
        step: &'static str,
        /// The kernel's answer.
        errno: rustix::io::Errno,
    },
    /// The region could not be made resident for userfaultfd write tracking.
    #[error(
        "making the region's {len} bytes resident for write tracking failed ({errno}): give the node more memory or the service a smaller region"
    )]
    Populate {
        /// The region's length.
        len: usize,
        /// The kernel's answer.
        errno: rustix::io::Errno,
    },
    /// `/proc/self/pagemap` could not be opened.
    #[error("cannot open /proc/self/pagemap for userfaultfd write tracking ({0}): is /proc mounted?")]
    Pagemap(#[source] std::io::Error),
    /// `mprotect` on the region failed.
    #[error("mprotect write tracking failed to protect the region: {errno}")]
    Mprotect {
        /// The kernel's answer.
        errno: rustix::io::Errno,
    },
    /// The SIGSEGV handler could not be installed.
    #[error("installing the SIGSEGV handler for mprotect write tracking failed: {errno}")]
    SignalHandler {
        /// The kernel's answer.
        errno: rustix::io::Errno,
    },
    /// Too many regions are tracked by `mprotect` in this process.
    #[error("at most {limit} regions can be tracked with mprotect in one process: drop a tracker first")]
    TooManyRegions {
        /// The limit.
        limit: usize,
    },
    /// The shadow copy transparent mode diffs against could not be mapped.
    #[error("mapping the shadow copy of the region for transparent mode failed: {0}")]
    Shadow(#[source] Box<crate::RegionError>),
    /// Neither mode works here.
    #[error("no write tracking works on this machine: userfaultfd: {uffd}; mprotect: {mprotect}")]
    NoneAvailable {
        /// Why userfaultfd failed.
        uffd: Box<TrackingError>,
        /// Why mprotect failed.
        mprotect: Box<TrackingError>,
    },
}

/// Whether `mode` works here, tried on a scratch page: for checking a configuration before
/// anything depends on it.
pub fn probe(mode: TrackingMode) -> Result<(), TrackingError> {
    let scratch = crate::Region::map_anywhere(nonstop_proto::PAGE_SIZE)
        .map_err(|error| TrackingError::Shadow(Box::new(error)))?;
    WriteTracker::start(&scratch, Some(mode)).map(drop)
}

enum Tracker {
    Uffd(uffd::UffdTracker),
    Mprotect(mprotect::MprotectTracker),
}

/// Finds the pages of one region written since the last collection.
///
/// ```
/// use nonstop_region::Region;
/// use nonstop_region::tracking::WriteTracker;
/// let mut region = Region::map(0x2300_0000_0000, 1 << 20).unwrap();
/// let mut tracker = WriteTracker::start(&region, None).unwrap();
/// region.as_mut_slice()[3 * 4096 + 7] = 1;
/// let mut pages = Vec::new();
/// tracker.collect(&mut pages).unwrap();
/// assert_eq!(pages, [3]);
/// ```
pub struct WriteTracker {
    mode: TrackingMode,
    tracker: Tracker,
}

impl WriteTracker {
    /// Starts tracking `region` with `mode`, or with the best mode that works here if `None`.
    /// Every page counts as clean from now on. Drop the tracker before the region.
    pub fn start(region: &crate::Region, mode: Option<TrackingMode>) -> Result<WriteTracker, TrackingError> {
        // Huge pages would make the kernel report (and a cut diff) 2 MiB per first write.
        region.no_huge_pages();
        let (base, len) = (region.base(), region.len());
        let start = |mode| -> Result<WriteTracker, TrackingError> {
            let tracker = match mode {
                TrackingMode::Uffd => {
                    // Resident first: see the uffd module on never-touched pages.
                    region.advise_populate().map_err(|errno| TrackingError::Populate { len, errno })?;
                    Tracker::Uffd(uffd::UffdTracker::start(base, len)?)
                }
                TrackingMode::Mprotect => Tracker::Mprotect(mprotect::MprotectTracker::start(base, len)?),
            };
            Ok(WriteTracker { mode, tracker })
        };
        match mode {
            Some(mode) => start(mode),
            None => start(TrackingMode::Uffd).or_else(|uffd| {
                tracing::info!(%uffd, "userfaultfd write tracking unavailable; falling back to mprotect");
                start(TrackingMode::Mprotect).map_err(|mprotect| TrackingError::NoneAvailable {
                    uffd: Box::new(uffd),
                    mprotect: Box::new(mprotect),
                })
            }),
        }
    }

    /// The mode in use.
    pub fn mode(&self) -> TrackingMode {
        self.mode
    }

    /// Appends the pages written since the last collection (indexes from the region's base,
    /// ascending) and protects them again.
    pub fn collect(&mut self, pages: &mut Vec<usize>) -> Result<(), TrackingError> {
        self.collect_within(std::slice::from_ref(&(0..usize::MAX)), pages)
    }

    /// Like [`WriteTracker::collect`], when writes can have landed only on the pages `within`
    /// (ranges of page indexes, ascending; see [`WriteExtent`]). Under userfaultfd only those
    /// pages are looked at, which is what a collection costs; a write elsewhere would be
    /// found by the first collection that looks there. `mprotect` learns of writes as they
    /// fault, and reports them all.
    pub fn collect_within(&mut self, within: &[Range<usize>], pages: &mut Vec<usize>) -> Result<(), TrackingError> {
        match &mut self.tracker {
            Tracker::Uffd(tracker) => tracker.collect(within, pages),
            Tracker::Mprotect(tracker) => tracker.collect(pages),
        }
    }
}

impl std::fmt::Debug for WriteTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTracker").field("mode", &self.mode).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of `region`'s pages are present in memory (a protected, never-touched page is
    /// a marker: not present).
    fn present_pages(region: &crate::Region) -> usize {
        region.pages_marked(crate::mapping::PAGEMAP_PRESENT).unwrap().len()
    }

    /// A never-touched page would be protected by a marker that every collection reads on the
    /// kernel's slow path: userfaultfd tracking starts on a resident region.
    #[test]
    fn userfaultfd_tracking_makes_the_region_resident_first() {
        let region = crate::Region::map_anywhere(256 * nonstop_proto::PAGE_SIZE).unwrap();
        assert_eq!(present_pages(&region), 0, "a fresh mapping holds no page");
        match WriteTracker::start(&region, Some(TrackingMode::Uffd)) {
            Ok(_tracker) => assert_eq!(present_pages(&region), 256),
            Err(error) if std::env::var_os("NONSTOP_REQUIRE_UFFD").is_none() => eprintln!("SKIPPED: {error}"),
            Err(error) => panic!("uffd tracking: {error}"),
        }
    }
}
