//! Checkpoint capture: what each update protocol records while transactions run, and what it
//! hands over when a checkpoint is cut.
//!
//! * DU keeps twins (Christodoulopoulou et al., PPoPP 2006): at the first write to a page in a
//!   checkpoint, the page's old content is saved, and at the cut each dirty page is diffed against its twin. Since writes
//!   are declared, the twin is kept per [`TWIN_BLOCK`]-byte block of the page that is written,
//!   not for the whole page: an 8-byte balance update copies one 64-byte line, not 4 KiB.
//! * AU appends each committed range to a stream the replicator ships as it grows; the cut
//!   only closes it.
//! * Tracked (transparent mode) is DU without declarations: the kernel reports written pages
//!   ([`crate::tracking`]), too late to copy a twin before the first write, so a shadow copy
//!   of the region stands in for every twin: each dirty page is diffed against its shadow
//!   page, which then takes the page's new content. The shadow costs as much memory as the
//!   pages ever written.

use crate::mapping::Region;
use crate::tracking::{TrackingError, TrackingMode, WriteExtent, WriteTracker};
use nonstop_proto::PAGE_SIZE;
use nonstop_proto::runs::RunsBuilder;
use nonstop_proto::{CheckpointId, UpdateProtocol, diff::diff_range};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

/// DU twins are kept per block of this many bytes: one sealed line, so that a dirty block's
/// seal is checked before it is diffed.
pub const TWIN_BLOCK: usize = nonstop_proto::integrity::LINE;

type Block = [u8; TWIN_BLOCK];

const CLEAN: u8 = 0;
const TWINNING: u8 = 1;
const DIRTY: u8 = 2;

/// `len` states, all [`CLEAN`], from zeroed memory: the kernel maps it lazily, so a large
/// region does not pay for states of blocks never written.
fn zeroed_states(len: usize) -> Box<[AtomicU8]> {
    const { assert!(CLEAN == 0) };
    // SAFETY: AtomicU8 has the size and validity of u8, so all-zero bytes are a valid
    // AtomicU8 holding 0, which is CLEAN.
    unsafe { Box::<[AtomicU8]>::new_zeroed_slice(len).assume_init() }
}

/// Twins of the blocks written since the last cut; the vector keeps its capacity across cuts.
#[derive(Debug, Default)]
struct Twins {
    dirty: Vec<(u32, Block)>,
}

#[derive(Debug)]
pub(crate) struct DuCapture {
    block_state: Box<[AtomicU8]>,
    twins: Mutex<Twins>,
}

#[derive(Debug)]
pub(crate) struct AuCapture {
    stream: Mutex<RunsBuilder>,
    pending: AtomicUsize,
    /// Stream buffers the replicator is done with, for the next stream to fill.
    spares: Mutex<Vec<Vec<u8>>>,
}

/// Stream buffers kept for reuse at most (each up to a frame's payload).
const SPARE_BUFFERS: usize = 16;

#[derive(Debug)]
pub(crate) struct TrackedCapture {
    mode: TrackingMode,
    tracker: Mutex<Scanner>,
    /// The region as of the last cut, in a mapping of its own (at any address).
    shadow: Region,
    /// Pages the tracker reported since the last cut.
    dirty: TouchedPages,
}

/// The write tracker and where it looks.
#[derive(Debug)]
struct Scanner {
    tracker: WriteTracker,
    extent: WriteExtent,
    /// The furthest heap page looked at so far ([`WriteExtent::pages`]).
    reach: usize,
}

/// What a protocol records between cuts.
#[derive(Debug)]
pub(crate) enum Capture {
    Unreplicated,
    Du(DuCapture),
    Au(AuCapture),
    Tracked(TrackedCapture),
}

impl Capture {
    pub(crate) fn new(protocol: Option<UpdateProtocol>, region_len: usize) -> Capture {
        match protocol {
            None => Capture::Unreplicated,
            Some(UpdateProtocol::Du) => Capture::Du(DuCapture {
                block_state: zeroed_states(region_len.div_ceil(TWIN_BLOCK)),
                twins: Mutex::new(Twins::default()),
            }),
            Some(UpdateProtocol::Au) => Capture::Au(AuCapture {
                stream: Mutex::new(RunsBuilder::new()),
                pending: AtomicUsize::new(0),
                spares: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Transparent mode: writes to `region` are found by `mode` (the best available if
    /// `None`). The shadow starts as a copy of the region (nothing to copy while it is zeros);
    /// also returns the pages that are not zeros. `written`, if known, names every page that
    /// may hold anything but zeros (a promoted backup's record); otherwise the pages the
    /// kernel holds are read.
    pub(crate) fn tracked(
        region: &Region,
        mode: Option<TrackingMode>,
        written: Option<Vec<usize>>,
    ) -> Result<(Capture, Vec<usize>), TrackingError> {
        let mut shadow = Region::map_anywhere(region.len()).map_err(|error| TrackingError::Shadow(Box::new(error)))?;
        // Only pages the kernel holds can hold anything but zeros; reading the others would
        // fault each one in (a promotion would pay ~1 us per page of the whole region). A
        // backup keeps its whole image resident, so its own record is narrower still.
        let mut written =
            written.unwrap_or_else(|| region.populated_pages().unwrap_or_else(|_| (0..region.pages()).collect()));
        written.retain(|&page| {
            if page >= region.pages() {
                return false; // a record for a longer image: nothing of it lies here
            }
            let bytes = &region.as_slice()[page * PAGE_SIZE..][..PAGE_SIZE];
            let nonzero = !crate::mirror::is_zero(bytes);
            if nonzero {
                shadow.as_mut_slice()[page * PAGE_SIZE..][..PAGE_SIZE].copy_from_slice(bytes);
            }
            nonzero
        });
        let tracker = WriteTracker::start(region, mode)?;
        tracing::info!(mode = %tracker.mode(), "transparent mode: writes found by the kernel");
        let capture = Capture::Tracked(TrackedCapture {
            mode: tracker.mode(),
            tracker: Mutex::new(Scanner { tracker, extent: WriteExtent::Whole, reach: 0 }),
            shadow,
            dirty: TouchedPages::new(region.pages()),
        });
        Ok((capture, written))
    }

    /// Transparent mode: where updates can write from now on (anywhere until this is called).
    pub(crate) fn set_write_extent(&mut self, extent: WriteExtent) {
        if let Capture::Tracked(tracked) = self {
            tracked.tracker.get_mut().expect("tracker lock").extent = extent;
        }
    }

    /// The write tracking in use, in transparent mode.
    pub(crate) fn tracking(&self) -> Option<TrackingMode> {
        match self {
            Capture::Tracked(tracked) => Some(tracked.mode),
            _ => None,
        }
    }

    /// Transparent mode: asks the kernel which pages were written since the last harvest,
    /// remembers them for the cut and hands each to `mark`. Other modes learn of writes as
    /// they are declared and do nothing here.
    /// Only the pages `region`'s updates can have written are asked about
    /// ([`Capture::set_write_extent`]).
    pub(crate) fn harvest(&self, region: &Region, mut mark: impl FnMut(usize)) -> Result<(), TrackingError> {
        let Capture::Tracked(tracked) = self else { return Ok(()) };
        let mut pages = Vec::new();
        {
            let mut scanner = tracked.tracker.lock().expect("tracker lock");
            let Scanner { tracker, extent, reach } = &mut *scanner;
            tracker.collect_within(&extent.pages(region, reach), &mut pages)?;
        }
        for page in pages {
            tracked.dirty.mark(page, page);
            mark(page);
        }
        Ok(())
    }

    pub(crate) fn protocol(&self) -> Option<UpdateProtocol> {
        match self {
            Capture::Unreplicated => None,
            Capture::Du(_) | Capture::Tracked(_) => Some(UpdateProtocol::Du),
            Capture::Au(_) => Some(UpdateProtocol::Au),
        }
    }

    /// Called when a transaction declares a write to `[offset, offset + len)` of `region`,
    /// before any byte changes.
    pub(crate) fn before_write(&self, region: *const u8, offset: u64, len: u64) {
        let Capture::Du(du) = self else {
            debug_assert!(!matches!(self, Capture::Tracked(_)), "declared writes in transparent mode");
            return;
        };
        let first = offset as usize / TWIN_BLOCK;
        let last = (offset + len - 1) as usize / TWIN_BLOCK;
        for block in first..=last {
            let state = &du.block_state[block];
            if state.load(Ordering::Acquire) == DIRTY {
                continue;
            }
            match state.compare_exchange(CLEAN, TWINNING, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => {
                    // SAFETY: the block lies inside the region; no transaction writes to it yet,
                    // since every writer must first see it DIRTY.
                    let current = unsafe { std::slice::from_raw_parts(region.add(block * TWIN_BLOCK), TWIN_BLOCK) };
                    let twin: Block = current.try_into().expect("one block");
                    du.twins.lock().expect("twin lock").dirty.push((block as u32, twin));
                    state.store(DIRTY, Ordering::Release);
                }
                Err(_) => {
                    while state.load(Ordering::Acquire) != DIRTY {
                        std::hint::spin_loop();
                    }
                }
            }
        }
    }

    /// Called at commit with the ranges the transaction declared. Returns the checkpoint the
    /// commit joins (`open`) and the bytes waiting in the AU stream before and after.
    ///
    /// Under AU the open checkpoint is read under the stream lock, the same lock a cut takes to
    /// close the stream: a commit's runs and its ticket always name the same checkpoint.
    pub(crate) fn on_commit(&self, region: *const u8, ranges: &[(u64, u32)], open: &AtomicU64) -> CommitOutcome {
        let Capture::Au(au) = self else {
            return CommitOutcome { checkpoint: CheckpointId(open.load(Ordering::Acquire)), before: 0, pending: 0 };
        };
        let mut stream = au.stream.lock().expect("stream lock");
        let before = stream.payload_bytes() as usize;
        for &(offset, len) in ranges {
            // SAFETY: the range was bounds-checked when declared and is still locked by the
            // committing transaction.
            let bytes = unsafe { std::slice::from_raw_parts(region.add(offset as usize), len as usize) };
            stream.push(offset, bytes);
        }
        let pending = stream.payload_bytes() as usize;
        au.pending.store(pending, Ordering::Relaxed);
        CommitOutcome { checkpoint: CheckpointId(open.load(Ordering::Acquire)), before, pending }
    }

    /// AU: takes what was streamed so far into the open checkpoint, and names it. The caller
    /// must ship these runs before the checkpoint's close.
    pub(crate) fn take_stream(&self, open: &AtomicU64) -> (CheckpointId, RunsBuilder) {
        match self {
            Capture::Au(au) => {
                let next = au.next_stream();
                let mut stream = au.stream.lock().expect("stream lock");
                au.pending.store(0, Ordering::Relaxed);
                (CheckpointId(open.load(Ordering::Acquire)), std::mem::replace(&mut *stream, next))
            }
            _ => (CheckpointId(open.load(Ordering::Acquire)), RunsBuilder::new()),
        }
    }

    /// AU: takes back the buffers of a stream the replicator has read, so that the next
    /// streams fill them instead of fresh memory. Other protocols drop them.
    pub(crate) fn recycle(&self, runs: RunsBuilder) {
        if let Capture::Au(au) = self {
            let mut spares = au.spares.lock().expect("spares lock");
            let room = SPARE_BUFFERS.saturating_sub(spares.len());
            spares.extend(runs.into_spares().into_iter().take(room));
        }
    }

    pub(crate) fn stream_pending(&self) -> usize {
        match self {
            Capture::Au(au) => au.pending.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Whether a cut needs transactions held off. AU does not: its stream holds copies made at
    /// commit, so closing it under the stream lock is already a cut between transactions.
    pub(crate) fn cut_needs_gate(&self) -> bool {
        // Tracked cuts need it too: they diff pages writers could be changing.
        !matches!(self, Capture::Au(_))
    }

    /// Closes the open checkpoint: returns its number, its changes and the number of dirty
    /// pages, and opens the next. DU and unreplicated cuts must hold the checkpoint gate.
    /// `check_block` checks a dirty block's seal before it is diffed (it does not return if
    /// the block is corrupt), so corruption is never shipped as a change.
    pub(crate) fn cut(
        &self,
        region: *const u8,
        open: &AtomicU64,
        check_block: &dyn Fn(u64),
    ) -> (CheckpointId, RunsBuilder, usize) {
        match self {
            Capture::Unreplicated => (CheckpointId(open.fetch_add(1, Ordering::AcqRel)), RunsBuilder::new(), 0),
            Capture::Au(au) => {
                let next = au.next_stream();
                let mut stream = au.stream.lock().expect("stream lock");
                au.pending.store(0, Ordering::Relaxed);
                let checkpoint = CheckpointId(open.fetch_add(1, Ordering::AcqRel));
                (checkpoint, std::mem::replace(&mut *stream, next), 0)
            }
            Capture::Du(du) => {
                let mut runs = RunsBuilder::new();
                let mut twins = du.twins.lock().expect("twin lock");
                let blocks = twins.dirty.len();
                for (block, twin) in twins.dirty.drain(..) {
                    let offset = block as usize * TWIN_BLOCK;
                    check_block(offset as u64);
                    // SAFETY: inside the region; the checkpoint gate excludes writers.
                    let current = unsafe { std::slice::from_raw_parts(region.add(offset), TWIN_BLOCK) };
                    diff_range(offset as u64, &twin, current, &mut runs);
                    du.block_state[block as usize].store(CLEAN, Ordering::Relaxed);
                }
                (CheckpointId(open.fetch_add(1, Ordering::AcqRel)), runs, blocks)
            }
            Capture::Tracked(tracked) => {
                // The caller harvested under the gate just before: `dirty` holds every page
                // written in this checkpoint.
                let mut runs = RunsBuilder::new();
                let pages = tracked.dirty.take();
                let shadow = tracked.shadow.as_ptr();
                for &page in &pages {
                    let offset = page * PAGE_SIZE;
                    // SAFETY: both mappings are `PAGE_SIZE`-aligned and as long as the region;
                    // the gate excludes writers to the region, and only cuts touch the shadow
                    // (under the gate too).
                    let (old, current) = unsafe {
                        (
                            std::slice::from_raw_parts_mut(shadow.add(offset), PAGE_SIZE),
                            std::slice::from_raw_parts(region.add(offset), PAGE_SIZE),
                        )
                    };
                    diff_range(offset as u64, old, current, &mut runs);
                    old.copy_from_slice(current);
                }
                (CheckpointId(open.fetch_add(1, Ordering::AcqRel)), runs, pages.len())
            }
        }
    }
}

impl AuCapture {
    /// An empty stream over the spare buffers (taken before the stream lock, so that a
    /// committing transaction never waits on the spares' lock).
    fn next_stream(&self) -> RunsBuilder {
        RunsBuilder::with_spares(std::mem::take(&mut *self.spares.lock().expect("spares lock")))
    }
}

/// What a commit joined.
pub(crate) struct CommitOutcome {
    /// The checkpoint the commit is part of.
    pub(crate) checkpoint: CheckpointId,
    /// AU bytes waiting before this commit.
    pub(crate) before: usize,
    /// AU bytes waiting after it.
    pub(crate) pending: usize,
}

/// One bit per page: has the page ever been written? A whole image sends only these.
#[derive(Debug)]
pub(crate) struct TouchedPages {
    words: Box<[AtomicU64]>,
}

impl TouchedPages {
    pub(crate) fn new(pages: usize) -> TouchedPages {
        TouchedPages { words: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect() }
    }

    pub(crate) fn mark(&self, first_page: usize, last_page: usize) {
        for page in first_page..=last_page {
            let bit = 1u64 << (page % 64);
            let word = &self.words[page / 64];
            if word.load(Ordering::Relaxed) & bit == 0 {
                word.fetch_or(bit, Ordering::Relaxed);
            }
        }
    }

    /// The marked pages, clearing them (a page marked again meanwhile is reported next time).
    pub(crate) fn take(&self) -> Vec<usize> {
        let mut pages = Vec::new();
        for (index, word) in self.words.iter().enumerate() {
            if word.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                pages.push(index * 64 + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        }
        pages
    }

    /// The words, for a signal handler that marks pages through a raw pointer (it must not
    /// outlive `self`).
    pub(crate) fn words_ptr(&self) -> *const AtomicU64 {
        self.words.as_ptr()
    }

    /// How many pages are marked.
    pub(crate) fn count(&self) -> usize {
        self.words.iter().map(|w| w.load(Ordering::Relaxed).count_ones() as usize).sum()
    }

    pub(crate) fn pages(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(index, word)| {
            let mut bits = word.load(Ordering::Relaxed);
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(index * 64 + bit)
            })
        })
    }
}
