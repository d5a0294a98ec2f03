//! The mirrored region of a primary: transactions in, checkpoints out.

use crate::capture::{Capture, TWIN_BLOCK, TouchedPages};
use crate::locks::RangeLocks;
use crate::mapping::Region;
use crate::tracking::{TrackingError, TrackingMode, WriteExtent};
use crate::transaction::Transaction;
use nonstop_proto::history::rebase_union;
use nonstop_proto::integrity::{CorruptLine, LINE, LineChecksums, Scrubber};
use nonstop_proto::primary::Ticket;
use nonstop_proto::runs::{RunsBuilder, RunsError, runs, validate_runs};
use nonstop_proto::{CheckpointId, PAGE_SIZE, UpdateProtocol};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};
use std::thread::Thread;

/// AU ships its stream once this many bytes are waiting, without waiting for the cut.
pub const STREAM_CHUNK: usize = 256 << 10;

/// AU: commits wait while this many bytes are waiting to be shipped, so that a backup that
/// cannot keep up slows the primary down instead of growing its memory without bound.
pub const STREAM_LIMIT: usize = 32 << 20;

/// Whether a page holds only zeros: word by word without an early exit, which the compiler
/// turns into wide loads at memory speed (pre-copy skips zero pages, and a promotion to
/// transparent mode reads every page of a backup's resident image).
pub(crate) fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(8).fold(0u64, |any, word| any | u64::from_ne_bytes(word.try_into().expect("8 bytes"))) == 0
        && page.chunks_exact(8).remainder().iter().all(|b| *b == 0)
}

/// A value alone on its cache line.
#[derive(Debug)]
#[repr(align(64))]
struct CacheLine<T>(T);

impl<T> std::ops::Deref for CacheLine<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The content of a checkpoint just cut.
#[derive(Debug)]
pub struct CheckpointContent {
    /// Its number.
    pub checkpoint: CheckpointId,
    /// Its changes against the previous checkpoint (DU diffs, or the rest of the AU stream).
    pub changes: RunsBuilder,
    /// The whole image at this checkpoint, if asked for (a backup is attaching).
    pub full_image: Option<RunsBuilder>,
    /// Twin blocks written during the checkpoint (DU; see [`crate::TWIN_BLOCK`]), or pages in
    /// transparent mode.
    pub dirty_blocks: usize,
    /// If a pre-copy was being finished: every page written since its last round, whole, as of
    /// this checkpoint. A pre-copied image plus these is the checkpoint.
    pub precopy_delta: Option<RunsBuilder>,
    /// For each rebase asked for ([`FirstImages::rebases`], in that order): the pages it names
    /// and every page written since the mirror resumed, whole, as of this checkpoint.
    pub rebases: Vec<RunsBuilder>,
}

/// What a cut must produce besides the checkpoint's changes, for backups being attached.
#[derive(Clone, Copy, Debug, Default)]
pub struct FirstImages<'a> {
    /// The whole image, for a backup that starts from nothing.
    pub whole: bool,
    /// End the running pre-copy: the pages written since its last round.
    pub finish_precopy: bool,
    /// Rebases of holders: for each, the pages (sorted) in which its image may differ from the
    /// one this mirror resumed from ([`nonstop_proto::history::ImageHistory::rebase_pages`]).
    pub rebases: &'a [Vec<u32>],
}

/// A region whose writes go through transactions, and which can be cut into checkpoints.
///
/// A checkpoint always falls between transactions: it contains a transaction entirely or not
/// at all. Transactions hold the checkpoint gate shared from [`Mirror::begin`] to commit or
/// abort, and a DU cut (or any cut with a whole image) holds it exclusively. An AU cut needs
/// no gate: it closes the stream under the stream lock, the lock under which every commit
/// appends its ranges and reads its ticket.
///
/// ```
/// use nonstop_region::{Mirror, Region};
/// use nonstop_proto::{CheckpointId, UpdateProtocol};
/// let mirror = Mirror::new(Region::map(0x2300_0000_0000, 1 << 20).unwrap(), Some(UpdateProtocol::Du), CheckpointId(1));
/// let tx = mirror.begin();
/// *tx.write::<u64>(4096).unwrap() = 42;
/// let ticket = tx.commit();
/// let cut = mirror.cut(false);
/// assert_eq!(ticket.checkpoint, cut.checkpoint);
/// assert_eq!(cut.changes.run_bytes(), 8);
/// ```
#[derive(Debug)]
pub struct Mirror {
    region: Region,
    gate: RwLock<()>,
    locks: RangeLocks,
    capture: Capture,
    touched: TouchedPages,
    // Each counter on its own cache line: `open` is written by the replicator at every cut,
    // the others by every transaction; sharing a line would make each transaction miss.
    open: CacheLine<AtomicU64>,
    commits: CacheLine<AtomicU64>,
    /// Transparent mode: the checkpoint the last update ran in (the first open one before any
    /// update), so that a read can wait for no later checkpoint than the writes it saw.
    last_written: AtomicU64,
    next_token: CacheLine<AtomicU64>,
    stream_waker: OnceLock<Thread>,
    commit_wake: AtomicU64,
    /// While a pre-copy runs: pages declared for writing since its last round.
    recopy: TouchedPages,
    /// A mirror that resumed a promoted backup's image: the pages declared for writing since,
    /// in which a rebased holder's image may differ (a mirror that started from zeros uses
    /// `touched`).
    since_resume: Option<TouchedPages>,
    precopy_on: AtomicBool,
    /// A seal per line: checked before a transaction touches a line, sealed at commit.
    seals: Option<LineChecksums>,
    scrubber: Mutex<Scrubber>,
    on_corruption: OnceLock<CorruptionHandler>,
    /// Transparent mode: one [`Mirror::update`] at a time, or any number of reads.
    writer: RwLock<()>,
    /// Transparent mode: an update began since the last cut asked the kernel for written
    /// pages. Set before the update writes, cleared only by a cut holding the gate
    /// exclusively; a cut that finds it clear skips the scan, whose cost grows with the
    /// region's size, not with what was written.
    updated_since_cut: AtomicBool,
    /// Written through [`Mirror::update`], never through transactions.
    transparent: bool,
}

/// What a [`Mirror`] does when a line no longer matches its seal. It must not return: the
/// region is no longer the state the transactions made, so nothing more may be served,
/// replicated or acknowledged from it. The default panics; a node installs one that logs and
/// exits the process, so that a backup holding a verified image takes over (fail-stop).
pub type CorruptionHandler = fn(CorruptLine) -> !;

fn panic_on_corruption(corruption: CorruptLine) -> ! {
    panic!("{corruption}")
}

/// Transactions never get this token: the scrubber's, for the lines it looks at.
const SCRUB_TOKEN: u64 = u64::MAX;

impl Mirror {
    /// Wraps `region`, recording changes for `protocol` (`None`: unreplicated, no capture);
    /// commits join checkpoint `first` until the first cut.
    ///
    /// The region must hold only zeros (a freshly mapped one): its line seals start as those
    /// of zeros, at no cost for lines never written.
    pub fn new(region: Region, protocol: Option<UpdateProtocol>, first: CheckpointId) -> Mirror {
        let seals = LineChecksums::zeroed(region.len());
        Mirror::with_seals(region, protocol, first, Some(seals))
    }

    /// Like [`Mirror::new`], without line seals: nothing guards the region against memory
    /// corruption. Sealing costs a random access to the seal table per line a transaction
    /// touches (about a third of the throughput of an in-process Debit-Credit run over 1 M
    /// accounts, far less than a client's round trip); benchmarks use this to show the cost.
    pub fn unsealed(region: Region, protocol: Option<UpdateProtocol>, first: CheckpointId) -> Mirror {
        Mirror::with_seals(region, protocol, first, None)
    }

    /// Transparent mode: the region is written as ordinary memory through [`Mirror::update`],
    /// and the kernel finds the written pages with `tracking` (the best mode available if
    /// `None`; [`Mirror::tracking`] says which). Checkpoints are DU diffs against a shadow
    /// copy. There are no line seals: undeclared writes cannot keep them.
    ///
    /// The region holds zeros (a freshly mapped one) or the image a promoted backup resumes
    /// from; a whole image sent to a new backup covers all of it.
    ///
    /// ```
    /// use nonstop_region::{Mirror, Region};
    /// use nonstop_proto::CheckpointId;
    /// let mirror = Mirror::tracked(Region::map(0x2300_1000_0000, 1 << 20).unwrap(), None, CheckpointId(1)).unwrap();
    /// let ((), ticket) = mirror.update(|image| image[4096..4104].copy_from_slice(&42u64.to_ne_bytes()));
    /// let cut = mirror.cut(false);
    /// assert_eq!(ticket.checkpoint, cut.checkpoint);
    /// assert_eq!(cut.changes.run_bytes(), 8, "the changed word is shipped, not the page");
    /// ```
    pub fn tracked(
        region: Region,
        tracking: Option<TrackingMode>,
        first: CheckpointId,
    ) -> Result<Mirror, TrackingError> {
        Mirror::tracked_with(region, tracking, first, None)
    }

    /// Transparent mode over a promoted backup's image: like [`Mirror::tracked`], but only the
    /// `written` pages are read to set up the shadow — the backup's record of the pages its
    /// checkpoints wrote ([`nonstop_proto::backup::Backup::written_pages`]); every other page
    /// must be zero. A backup keeps its whole image resident, so without the record a
    /// promotion would read every page of the region (~0.1 s per GiB) while clients wait.
    pub fn tracked_resume(
        region: Region,
        tracking: Option<TrackingMode>,
        first: CheckpointId,
        written: impl IntoIterator<Item = usize>,
    ) -> Result<Mirror, TrackingError> {
        Mirror::tracked_with(region, tracking, first, Some(written.into_iter().collect()))
    }

    fn tracked_with(
        region: Region,
        tracking: Option<TrackingMode>,
        first: CheckpointId,
        written: Option<Vec<usize>>,
    ) -> Result<Mirror, TrackingError> {
        let resumed = written.is_some();
        let (capture, written) = Capture::tracked(&region, tracking, written)?;
        let mut mirror = Mirror { transparent: true, ..Mirror::with_capture(region, capture, first, None) };
        if resumed {
            mirror.since_resume = Some(TouchedPages::new(mirror.region.pages()));
        }
        for page in written {
            mirror.touched.mark(page, page);
        }
        Ok(mirror)
    }

    /// Transparent mode: tells the mirror where updates can write ([`WriteExtent`]), so that a
    /// cut asks the kernel about those pages only: with [`WriteExtent::Heap`] it costs what
    /// the heap has grown to, not the region's length. A write outside the extent would not
    /// be checkpointed, so name every range written other than through the heap. No effect on
    /// other mirrors.
    ///
    /// ```
    /// use nonstop_region::heap::{Heap, RegionVec};
    /// use nonstop_region::tracking::WriteExtent;
    /// use nonstop_region::{Mirror, Region};
    /// use nonstop_proto::CheckpointId;
    /// let region = Region::map(0x2300_4000_0000, 64 << 20).unwrap();
    /// let mirror = Mirror::tracked(region, None, CheckpointId(1))
    ///     .unwrap()
    ///     .with_write_extent(WriteExtent::Heap { heap_len: 64 << 20, also: Vec::new() });
    /// mirror.update(|image| {
    ///     let mut heap = Heap::open(image).unwrap();
    ///     let alloc = heap.allocator();
    ///     heap.root(|| RegionVec::<u8>::new_in(alloc)).unwrap().extend_from_slice(&[7; 3 << 20]);
    /// });
    /// let cut = mirror.cut(false);
    /// assert!(cut.changes.run_bytes() >= 3 << 20, "the arena grew past its first MiB, and the cut saw it");
    /// ```
    pub fn with_write_extent(mut self, extent: WriteExtent) -> Mirror {
        self.capture.set_write_extent(extent);
        self
    }

    /// Transparent mode without replication or tracking: [`Mirror::update`] on a region no
    /// one mirrors (the baseline that transparent mode's cost is measured against).
    pub fn transparent_unreplicated(region: Region, first: CheckpointId) -> Mirror {
        Mirror { transparent: true, ..Mirror::with_capture(region, Capture::Unreplicated, first, None) }
    }

    fn with_seals(
        region: Region,
        protocol: Option<UpdateProtocol>,
        first: CheckpointId,
        seals: Option<LineChecksums>,
    ) -> Mirror {
        let capture = Capture::new(protocol, region.len());
        Mirror::with_capture(region, capture, first, seals)
    }

    fn with_capture(region: Region, capture: Capture, first: CheckpointId, seals: Option<LineChecksums>) -> Mirror {
        let pages = region.pages();
        if let Some(seals) = &seals {
            crate::mapping::advise_huge_pages(seals.table());
        }
        Mirror {
            capture,
            touched: TouchedPages::new(pages),
            region,
            gate: RwLock::new(()),
            locks: RangeLocks::new(),
            open: CacheLine(AtomicU64::new(first.0)),
            commits: CacheLine(AtomicU64::new(0)),
            last_written: AtomicU64::new(first.0),
            next_token: CacheLine(AtomicU64::new(1)),
            stream_waker: OnceLock::new(),
            commit_wake: AtomicU64::new(0),
            recopy: TouchedPages::new(pages),
            since_resume: None,
            precopy_on: AtomicBool::new(false),
            seals,
            scrubber: Mutex::new(Scrubber::new()),
            on_corruption: OnceLock::new(),
            writer: RwLock::new(()),
            updated_since_cut: AtomicBool::new(false),
            transparent: false,
        }
    }

    /// Wraps a region that already holds an image — a promoted backup's, the checkpoint it
    /// resumes from — so that a whole image or a pre-copy sent to a new backup covers all of
    /// it. `seals` are the backup's seals of that image, so every line keeps being checked
    /// across the promotion; `written` are the pages the backup ever wrote (every other page is
    /// zero, and a new backup starts from zeros), so re-protection copies what the service
    /// uses, not the whole region. Costs one bit per page, nothing proportional to the bytes.
    pub fn resume(
        region: Region,
        protocol: Option<UpdateProtocol>,
        first: CheckpointId,
        seals: LineChecksums,
        written: impl IntoIterator<Item = usize>,
    ) -> Mirror {
        assert_eq!(seals.lines(), region.len().div_ceil(LINE), "seals of a region of another size");
        let mut mirror = Mirror::with_seals(region, protocol, first, Some(seals));
        mirror.since_resume = Some(TouchedPages::new(mirror.region.pages()));
        for page in written {
            mirror.touched.mark(page, page);
        }
        mirror
    }

    /// Whether the region is written through [`Mirror::update`] (transparent mode) rather
    /// than transactions.
    pub fn is_transparent(&self) -> bool {
        self.transparent
    }

    /// The write tracking in use, in transparent mode ([`Mirror::tracked`]).
    pub fn tracking(&self) -> Option<TrackingMode> {
        self.capture.tracking()
    }

    /// Transparent mode: runs `f` with the whole region writable as
    /// ordinary memory, and returns its result with the ticket of the checkpoint its writes
    /// join. Updates run one at a time and hold off cuts while they run, so a checkpoint always
    /// falls between two updates.
    ///
    /// # Panics
    ///
    /// On a mirror for declared writes (not made by [`Mirror::tracked`] or
    /// [`Mirror::transparent_unreplicated`]): its checkpoints would miss these writes, and its
    /// transactions could be writing the same bytes. Use [`Mirror::begin`] there.
    pub fn update<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> (R, Ticket) {
        assert!(
            self.transparent,
            "Mirror::update needs transparent mode (Mirror::tracked): this mirror's checkpoints see declared writes only"
        );
        let _gate = self.gate.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _writer = self.writer.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.update_alone(f)
    }

    /// [`Mirror::update`] if it need not wait: `None` while another update, a read or a cut
    /// holds the region (or waits for it), without blocking and without running `f`.
    ///
    /// # Panics
    ///
    /// On a mirror for declared writes, as [`Mirror::update`].
    pub fn try_update<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> Option<(R, Ticket)> {
        assert!(self.transparent, "Mirror::try_update needs transparent mode (Mirror::tracked)");
        let _gate = self.gate.try_read().ok()?;
        let _writer = self.writer.try_write().ok()?;
        Some(self.update_alone(f))
    }

    /// Runs an update; the caller holds the gate shared and the writer lock exclusively.
    fn update_alone<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> (R, Ticket) {
        // Before any write, so that even an update that panics halfway is harvested.
        self.updated_since_cut.store(true, Ordering::Relaxed);
        // SAFETY: the caller's writer lock makes this the only update; `begin` refuses
        // transactions on a transparent mirror, and cuts and quiesced reads wait for the gate
        // the caller holds shared.
        let image = unsafe { std::slice::from_raw_parts_mut(self.region.as_ptr(), self.region.len()) };
        let result = f(image);
        let checkpoint = CheckpointId(self.open.load(Ordering::Acquire));
        self.last_written.fetch_max(checkpoint.0, Ordering::Relaxed);
        let commits = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if commits == self.commit_wake.load(Ordering::Relaxed)
            && let Some(waker) = self.stream_waker.get()
        {
            waker.unpark();
        }
        (result, Ticket { checkpoint })
    }

    /// Transparent mode: reads the region between two updates, so `f` sees one state. Returns
    /// `f`'s result and the ticket an answer drawn from it waits for: the checkpoint the last
    /// update ran in. Once nothing has been written since a cut, that checkpoint is cut and
    /// may already be held, so a read among reads is answered without waiting for another cut.
    ///
    /// # Panics
    ///
    /// On a mirror for declared writes, as [`Mirror::update`].
    pub fn read<R>(&self, f: impl FnOnce(&[u8]) -> R) -> (R, Ticket) {
        assert!(self.transparent, "Mirror::read needs transparent mode (Mirror::tracked)");
        let _gate = self.gate.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _writer = self.writer.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.read_between_updates(f)
    }

    /// [`Mirror::read`] if it need not wait: `None` while an update or a cut holds the region
    /// (or waits for it), without blocking. For a caller that must not block (an I/O thread)
    /// and has a thread to send the read to otherwise.
    ///
    /// # Panics
    ///
    /// On a mirror for declared writes, as [`Mirror::read`].
    pub fn try_read<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Option<(R, Ticket)> {
        assert!(self.transparent, "Mirror::try_read needs transparent mode (Mirror::tracked)");
        let _gate = self.gate.try_read().ok()?;
        let _writer = self.writer.try_read().ok()?;
        Some(self.read_between_updates(f))
    }

    /// Runs a read; the caller holds the gate and the writer lock shared.
    fn read_between_updates<R>(&self, f: impl FnOnce(&[u8]) -> R) -> (R, Ticket) {
        // SAFETY: the caller's shared writer lock keeps every update out while `f` reads, and
        // cuts, other reads and quiesced reads only read the region.
        let image = unsafe { std::slice::from_raw_parts(self.region.as_ptr(), self.region.len()) };
        let result = f(image);
        (result, Ticket { checkpoint: CheckpointId(self.last_written.load(Ordering::Relaxed)) })
    }

    /// Transparent mode: takes the pages the kernel saw written into the capture, the pages
    /// ever written and the pre-copy's set. A tracker that stops working leaves no way to
    /// know what changed, so nothing more may be checkpointed: that is a fail-stop.
    fn harvest(&self) {
        let precopy = self.precopy_on.load(Ordering::Relaxed);
        let harvested = self.capture.harvest(&self.region, |page| {
            self.touched.mark(page, page);
            if let Some(since_resume) = &self.since_resume {
                since_resume.mark(page, page);
            }
            if precopy {
                self.recopy.mark(page, page);
            }
        });
        if let Err(error) = harvested {
            panic!("transparent mode lost track of writes, so the region can no longer be checkpointed: {error}");
        }
    }

    /// Begins a transaction. It holds off checkpoint cuts until it commits or aborts, so a
    /// thread must not begin a second transaction while it holds one.
    ///
    /// # Panics
    ///
    /// In transparent mode ([`Mirror::tracked`]), where [`Mirror::update`] owns the region.
    pub fn begin(&self) -> Transaction<'_> {
        assert!(!self.transparent, "Mirror::begin on a transparent-mode mirror: write through Mirror::update instead");
        self.wait_for_stream_room();
        let gate = self.gate.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        Transaction::new(self, gate, token)
    }

    /// AU backpressure: while [`STREAM_LIMIT`] bytes wait to be shipped, new transactions wait
    /// here, before they take the gate or any lock, so that the replicator can always make
    /// progress (a whole-image cut needs the gate).
    fn wait_for_stream_room(&self) {
        if self.capture.stream_pending() < STREAM_LIMIT {
            return;
        }
        let Some(waker) = self.stream_waker.get() else { return };
        while self.capture.stream_pending() >= STREAM_LIMIT {
            waker.unpark();
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }

    /// The checkpoint commits join now.
    pub fn open_checkpoint(&self) -> CheckpointId {
        CheckpointId(self.open.load(Ordering::Acquire))
    }

    /// Commits since the last cut.
    pub fn commits_in_epoch(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// The update protocol changes are captured for (`None`: unreplicated).
    pub fn protocol(&self) -> Option<UpdateProtocol> {
        self.capture.protocol()
    }

    /// Virtual address of the region.
    pub fn base(&self) -> usize {
        self.region.base()
    }

    /// Length of the region in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Asks that `thread` be unparked whenever the AU stream has [`STREAM_CHUNK`] bytes waiting.
    pub fn set_stream_waker(&self, thread: Thread) {
        let _ = self.stream_waker.set(thread);
    }

    /// Also unpark the stream waker when a checkpoint reaches `commits` commits (an epoch
    /// policy that cuts every N commits); 0 turns this off.
    pub fn set_commit_wake(&self, commits: u64) {
        self.commit_wake.store(commits, Ordering::Relaxed);
    }

    /// AU: gives back the buffers of `runs` (taken by [`Mirror::take_stream`] or a cut) once
    /// they are shipped or copied, for later streams to reuse; committing transactions then
    /// write into memory already mapped instead of faulting in fresh pages.
    pub fn recycle_stream(&self, runs: RunsBuilder) {
        self.capture.recycle(runs);
    }

    /// AU: bytes committed but not yet taken by [`Mirror::take_stream`] or a cut.
    pub fn stream_pending(&self) -> usize {
        self.capture.stream_pending()
    }

    /// AU: takes the runs committed so far into the open checkpoint, to ship before its close.
    /// The caller must ship them before the runs of any later [`Mirror::cut`].
    pub fn take_stream(&self) -> (CheckpointId, RunsBuilder) {
        self.capture.take_stream(&self.open.0)
    }

    /// Cuts the open checkpoint: collects its changes (and, if `full_image`, the whole image)
    /// and opens the next. DU, and any cut with a whole image, first waits for running
    /// transactions to finish and holds new ones off; an AU cut only closes the stream.
    pub fn cut(&self, full_image: bool) -> CheckpointContent {
        self.cut_with(FirstImages { whole: full_image, ..FirstImages::default() })
    }

    /// Like [`Mirror::cut`], producing what `first` asks for backups being attached: a whole
    /// image, the end of the running pre-copy ([`CheckpointContent::precopy_delta`]), rebases
    /// ([`CheckpointContent::rebases`]).
    pub fn cut_with(&self, first: FirstImages<'_>) -> CheckpointContent {
        let copies = first.whole || first.finish_precopy || !first.rebases.is_empty();
        let _exclusive = (copies || self.capture.cut_needs_gate())
            .then(|| self.gate.write().unwrap_or_else(|poisoned| poisoned.into_inner()));
        // A tracked cut holds the gate exclusively (`cut_needs_gate`), so no update runs now;
        // with none since the last cut's harvest, nothing can have been written. (A pre-copy
        // round harvests outside the gate and leaves the flag alone.)
        if self.updated_since_cut.swap(false, Ordering::Relaxed) {
            self.harvest();
        }
        let (checkpoint, changes, dirty_blocks) =
            self.capture.cut(self.region.as_ptr(), &self.open.0, &|offset| self.check_lines(offset, TWIN_BLOCK as u64));
        let full_image = first.whole.then(|| self.copy_pages(self.touched.pages()));
        let precopy_delta = first.finish_precopy.then(|| {
            self.precopy_on.store(false, Ordering::Relaxed);
            self.copy_pages(self.recopy.take())
        });
        let rebases = if first.rebases.is_empty() {
            Vec::new()
        } else {
            let since: Vec<usize> = self.since_resume.as_ref().unwrap_or(&self.touched).pages().collect();
            first.rebases.iter().map(|named| self.copy_pages(rebase_union(named, &since))).collect()
        };
        self.commits.store(0, Ordering::Relaxed);
        CheckpointContent { checkpoint, changes, full_image, dirty_blocks, precopy_delta, rebases }
    }

    /// Whole pages as runs. The caller holds the gate exclusively.
    fn copy_pages(&self, pages: impl IntoIterator<Item = usize>) -> RunsBuilder {
        let mut runs = RunsBuilder::new();
        let bytes = self.region.as_slice();
        for page in pages {
            self.check_lines((page * PAGE_SIZE) as u64, PAGE_SIZE as u64);
            runs.push((page * PAGE_SIZE) as u64, &bytes[page * PAGE_SIZE..(page + 1) * PAGE_SIZE]);
        }
        runs
    }

    /// Starts a pre-copy: from now on, every page declared for writing is remembered until a
    /// round copies it. Only one pre-copy runs at a time.
    pub fn precopy_begin(&self) {
        // Under the gate, so that every transaction that declares a write after this sees the
        // flag: none is between its declare and its commit now.
        let _exclusive = self.gate.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.harvest();
        self.recopy.take();
        self.precopy_on.store(true, Ordering::Relaxed);
    }

    /// Copies one pre-copy round while transactions keep running: the first round every page
    /// ever written that is not zero (the backup starts a pre-copy from a zeroed image), later
    /// rounds the pages written since the round before. Pages are copied `batch` at a time,
    /// each batch with transactions held off (so no page is copied half written), and handed
    /// to `sink`. Returns the pages copied.
    pub fn precopy_round<E>(
        &self,
        first: bool,
        batch: usize,
        mut sink: impl FnMut(RunsBuilder) -> Result<(), E>,
    ) -> Result<usize, E> {
        self.harvest();
        let pages: Vec<usize> = if first {
            self.recopy.take();
            self.touched.pages().collect()
        } else {
            self.recopy.take()
        };
        let mut sent = 0;
        for chunk in pages.chunks(batch.max(1)) {
            let runs = {
                let _exclusive = self.gate.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                let bytes = self.region.as_slice();
                let page = |p: usize| &bytes[p * PAGE_SIZE..(p + 1) * PAGE_SIZE];
                self.copy_pages(chunk.iter().copied().filter(|p| !first || !is_zero(page(*p))))
            };
            sent += runs.run_bytes() as usize / PAGE_SIZE;
            sink(runs)?;
        }
        Ok(sent)
    }

    /// Copies every page that is not zero, `batch` pages at a time with everything held off,
    /// to `sink`: the whole image, for a mirror that does not know which pages were written
    /// (transparent mode without tracking). Costs a read of the whole region. Returns the pages
    /// copied.
    pub fn copy_image<E>(&self, batch: usize, mut sink: impl FnMut(RunsBuilder) -> Result<(), E>) -> Result<usize, E> {
        let pages: Vec<usize> = (0..self.region.pages()).collect();
        let mut sent = 0;
        for chunk in pages.chunks(batch.max(1)) {
            let runs = {
                let _exclusive = self.gate.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                let bytes = self.region.as_slice();
                let zero = |p: usize| is_zero(&bytes[p * PAGE_SIZE..((p + 1) * PAGE_SIZE).min(bytes.len())]);
                self.copy_pages(chunk.iter().copied().filter(|p| !zero(*p)))
            };
            sent += runs.run_bytes() as usize / PAGE_SIZE;
            sink(runs)?;
        }
        Ok(sent)
    }

    /// The first step of taking another replica's state (an actively replicated service's
    /// replica re-integrated by state transfer): every byte becomes zero and every seal that
    /// of a zero line, so that once the donor's pages are installed ([`Mirror::install_runs`])
    /// the image is the donor's alone. Until the transfer ends the image is no state a service
    /// made: the caller serves nothing from it and runs nothing in it meanwhile.
    pub fn clear(&self) {
        let _exclusive = self.gate.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _writer = self.writer.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: with the gate and the writer lock held exclusively, no transaction, update,
        // read, cut or scrub holds a reference into the region, and none can start.
        unsafe { self.region.zero_unaliased() };
        if let Some(seals) = &self.seals {
            seals.clear();
        }
    }

    /// Writes a payload of runs (a donor's pages, in state transfer) into the region, sealing
    /// their lines and recording their pages as written. The payload is checked against the
    /// region first: a bad one changes nothing. Returns the bytes written.
    pub fn install_runs(&self, payload: &[u8]) -> Result<u64, RunsError> {
        let region_len = self.region.len() as u64;
        let bytes = validate_runs(payload, region_len)?;
        let _exclusive = self.gate.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _writer = self.writer.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        for run in runs(payload, region_len) {
            let run = run?;
            let (offset, len) = (run.offset as usize, run.bytes.len());
            {
                // SAFETY: as in `clear`, nothing else holds a reference into the region; this
                // one ends before the seals read it.
                let image = unsafe { std::slice::from_raw_parts_mut(self.region.as_ptr(), self.region.len()) };
                image[offset..offset + len].copy_from_slice(run.bytes);
            }
            self.touched.mark(offset / PAGE_SIZE, (offset + len - 1) / PAGE_SIZE);
            if let Some(seals) = &self.seals {
                seals.seal_range(self.region.as_slice(), offset, len);
            }
        }
        Ok(bytes)
    }

    /// Pages written since the last pre-copy round.
    pub fn precopy_pending(&self) -> usize {
        self.recopy.count()
    }

    /// Abandons a pre-copy (the backup went away).
    pub fn precopy_abort(&self) {
        self.precopy_on.store(false, Ordering::Relaxed);
    }

    /// Runs `f` on the region with every transaction held off, with the last checkpoint cut
    /// (the image a backup must hold once that checkpoint is acknowledged).
    pub fn quiesced<R>(&self, f: impl FnOnce(&[u8], Option<CheckpointId>) -> R) -> R {
        let _exclusive = self.gate.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let open = self.open_checkpoint();
        f(self.region.as_slice(), open.0.checked_sub(1).map(CheckpointId))
    }

    /// Like [`Mirror::quiesced`], after checking every line against its seal (the corruption
    /// handler runs if one does not match): for whole-region reads that answer clients.
    pub fn quiesced_checked<R>(&self, f: impl FnOnce(&[u8], Option<CheckpointId>) -> R) -> R {
        self.quiesced(|image, last| {
            self.check_lines(0, image.len() as u64);
            f(image, last)
        })
    }

    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    pub(crate) fn locks(&self) -> &RangeLocks {
        &self.locks
    }

    /// Installs what to do when corruption is found (once; later calls are ignored).
    pub fn set_corruption_handler(&self, handler: CorruptionHandler) {
        let _ = self.on_corruption.set(handler);
    }

    /// Checks the lines of `[offset, offset + len)` against their seals; on a mismatch, the
    /// corruption handler runs and does not return. The caller must hold the lines (their
    /// range locks, or every transaction held off).
    pub(crate) fn check_lines(&self, offset: u64, len: u64) {
        let Some(seals) = &self.seals else { return };
        if let Err(corruption) = seals.check_range(self.region.as_slice(), offset as usize, len as usize) {
            self.corrupted(corruption);
        }
    }

    /// Moves the seals of a range a committing transaction wrote (it still holds the lines) by
    /// the change from `old`, its undo image.
    pub(crate) fn reseal(&self, offset: u64, old: &[u8]) {
        if let Some(seals) = &self.seals {
            seals.reseal(self.region.as_slice(), offset as usize, old);
        }
    }

    fn corrupted(&self, corruption: CorruptLine) -> ! {
        tracing::error!(%corruption, "region line corrupted in memory");
        (self.on_corruption.get().copied().unwrap_or(panic_on_corruption))(corruption)
    }

    /// Checks the next `lines` lines against their seals, skipping any a transaction holds
    /// (it checked them when it took them, and seals them when it commits) and any met while
    /// the gate is held exclusively (a cut, or a state transfer clearing and refilling the
    /// image: bytes and seals change apart then). Called a slice at a time by a background
    /// thread, it finds corruption in data no transaction touches. Returns how many lines were
    /// checked.
    pub fn scrub(&self, lines: usize) -> usize {
        /// Lines checked per hold of the gate: a cut waits at most this long for a scrub.
        const LINES_PER_HOLD: usize = 64;
        let slice = self.scrubber.lock().unwrap_or_else(|p| p.into_inner()).next_slice(self.len(), lines);
        let mut checked = 0;
        let mut gate = None;
        for line in slice.start / LINE..slice.end.div_ceil(LINE) {
            if line % LINES_PER_HOLD == 0 {
                gate = None;
            }
            if gate.is_none() {
                gate = self.gate.try_read().ok();
            }
            if gate.is_none() || !self.locks.try_line(SCRUB_TOKEN, line as u64) {
                continue;
            }
            let result = self
                .seals
                .as_ref()
                .map_or(Ok(()), |seals| seals.check_range(self.region.as_slice(), line * LINE, LINE));
            self.locks.release_line(SCRUB_TOKEN, line as u64);
            if let Err(corruption) = result {
                self.corrupted(corruption);
            }
            checked += 1;
        }
        checked
    }

    /// Full scrub passes completed.
    pub fn scrub_passes(&self) -> u64 {
        self.scrubber.lock().unwrap_or_else(|p| p.into_inner()).passes()
    }

    pub(crate) fn before_write(&self, offset: u64, len: u64) {
        let first = offset as usize / PAGE_SIZE;
        let last = (offset + len - 1) as usize / PAGE_SIZE;
        self.touched.mark(first, last);
        if let Some(since_resume) = &self.since_resume {
            since_resume.mark(first, last);
        }
        if self.precopy_on.load(Ordering::Relaxed) {
            self.recopy.mark(first, last);
        }
        self.capture.before_write(self.region.as_ptr(), offset, len);
    }

    pub(crate) fn on_commit(&self, ranges: &[(u64, u32)]) -> CheckpointId {
        let outcome = self.capture.on_commit(self.region.as_ptr(), ranges, &self.open.0);
        if let Some(waker) = self.stream_waker.get() {
            // Wake the replicator once, when the stream crosses the chunk size.
            if outcome.before < STREAM_CHUNK && outcome.pending >= STREAM_CHUNK {
                waker.unpark();
            }
        }
        let commits = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if commits == self.commit_wake.load(Ordering::Relaxed)
            && let Some(waker) = self.stream_waker.get()
        {
            waker.unpark();
        }
        outcome.checkpoint
    }
}
