//! The primary's replicator: ships checkpoints of a [`Mirror`] to its backups and tells when
//! a commit's reply may leave.
//!
//! Threads: one reader per backup (acknowledgements, verify replies); under the epoch policy,
//! one replicator that cuts a checkpoint every interval and, for AU, ships the stream as it
//! grows; under the sync policy the thread waiting for its ticket cuts and sends itself, so a
//! commit costs one round trip and no thread hand-off. Cuts and sends are serialised by the
//! link lock, which is what keeps every backup's frames of checkpoint `n` before its close.

use crate::conn::{self, ConnError, FrameReceiver, FrameSender};
use crate::detections::Detections;
use crate::fault;
use hdrhistogram::Histogram;
use nonstop_proto::auth::ClusterKey;
use nonstop_proto::control::{
    self, AckInfo, Attach, CloseKind, Holding, ImageState, Refusal, VerifyReply, VerifyRequest,
};
use nonstop_proto::frame::FrameKind;
use nonstop_proto::history::ImageHistory;
use nonstop_proto::primary::{
    AttachPayload, BackupId, LinkProgress, PRECOPY_BATCH_PAGES, PreCopyRounds, Protection, Replication, Ticket,
};
use nonstop_proto::runs::{Coalescer, RunsBuilder};
use nonstop_proto::{CheckpointId, CommitPolicy, Nanos, PAGE_SIZE, Term, UpdateProtocol};
use nonstop_region::{FirstImages, Mirror, STREAM_CHUNK};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long a waiter spins on the held checkpoint before it sleeps: a wake-up costs more than
/// a loopback round trip on a small machine (see BRIEF), so short waits are cheaper spun.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(30);

/// Replication settings of a primary.
#[derive(Clone, Debug)]
pub struct PrimaryConfig {
    /// The primary's term; backups refuse older ones.
    pub term: Term,
    /// When checkpoints are cut.
    pub policy: CommitPolicy,
    /// Backups that must hold a checkpoint before its replies leave.
    pub required_backups: usize,
    /// The cluster key backups authenticate with.
    pub key: ClusterKey,
}

/// Something went wrong on the primary's side of replication.
#[derive(Debug, Error)]
pub enum PrimaryError {
    /// Connecting to or talking with a backup failed.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// A backup refused to follow.
    #[error("backup {peer} refused this primary: {reason}")]
    Refused {
        /// The backup.
        peer: String,
        /// Its reason.
        reason: String,
    },
    /// A wait ran out of time.
    #[error("timed out after {0:?} waiting for the backups; is a backup stalled or gone?")]
    Timeout(Duration),
    /// Fewer backups than required are connected, so no reply may leave.
    #[error("only {connected} of {required} required backups are connected: replies are held until one is attached")]
    Unprotected {
        /// Backups connected.
        connected: usize,
        /// Backups required.
        required: usize,
    },
}

/// Replication statistics since start.
#[derive(Debug, Clone)]
pub struct ReplicationStats {
    /// Checkpoints cut.
    pub checkpoints: u64,
    /// Region bytes in checkpoint changes (DU diffs or AU runs), whole images excluded.
    pub change_bytes: u64,
    /// Twin blocks diffed (DU).
    pub dirty_blocks: u64,
    /// Nanoseconds backups spent applying a checkpoint, as they reported.
    pub apply_ns: Histogram<u64>,
    /// Nanoseconds a cut held transactions off.
    pub cut_ns: Histogram<u64>,
}

impl ReplicationStats {
    fn new() -> ReplicationStats {
        ReplicationStats {
            checkpoints: 0,
            change_bytes: 0,
            dirty_blocks: 0,
            apply_ns: Histogram::new(3).expect("valid precision"),
            cut_ns: Histogram::new(3).expect("valid precision"),
        }
    }
}

struct Link {
    id: BackupId,
    sender: FrameSender,
    alive: Arc<AtomicBool>,
    progress: LinkProgress,
    /// What its first checkpoint carries, until that is sent.
    first: Option<FirstCheckpoint>,
    reader: Option<JoinHandle<()>>,
}

/// What a newly attached backup's first checkpoint carries.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FirstCheckpoint {
    /// The whole image: the backup holds nothing this primary can build on.
    Whole,
    /// The pages written since the last pre-copy round, which complete the pre-copied image.
    CompletePreCopy,
    /// The pages in which the backup's image, `from`, can differ from this checkpoint: `pages`
    /// and every page written since the mirror resumed.
    Rebase {
        /// What the backup holds.
        from: ImageState,
        /// Pages its image may differ in from the one the mirror resumed from.
        pages: Vec<u32>,
    },
}

/// How bringing a backup up to date went, for the log.
#[derive(Default)]
struct PreCopyReport {
    rounds: u32,
    pages: u64,
}

struct Shared {
    mirror: Arc<Mirror>,
    config: PrimaryConfig,
    clock: Instant,
    replication: Guarded,
    links: Mutex<Vec<Link>>,
    /// Held checkpoint + 1 (0: none yet), readable without a lock.
    held: AtomicU64,
    held_lock: Mutex<()>,
    held_changed: Condvar,
    waiters: AtomicUsize,
    /// Told whenever a hold may have ended (see [`Primary::set_hold_listener`]).
    hold_listener: std::sync::OnceLock<HoldListener>,
    verify_replies: Mutex<HashMap<BackupId, Result<VerifyReply, String>>>,
    verify_changed: Condvar,
    stats: Mutex<ReplicationStats>,
    stop: AtomicBool,
    next_backup: AtomicU32,
    /// Used under the link lock only.
    coalescer: Mutex<Coalescer>,
    /// Held while a backup is pre-copied.
    precopy: Mutex<()>,
    /// Bytes of the last checkpoints, for backups' lag.
    recent: Mutex<RecentCheckpoints>,
    /// The connected backups as last read under the link lock: what
    /// [`Primary::connected_backups`] answers while a cut holds that lock.
    connected: Mutex<Vec<(BackupId, Option<CheckpointId>)>>,
    /// A backup silent this long (ns) while it owes an acknowledgement is dropped (0: never).
    silence_limit_ns: AtomicU64,
    /// The node's fault points, if it has any.
    faults: std::sync::OnceLock<Arc<fault::FaultPoints>>,
    /// Where refused handshakes and frames of its backup links are counted.
    detections: std::sync::OnceLock<Arc<Detections>>,
    /// The history of the image the mirror resumed from, if it resumed a promoted backup's:
    /// holders of an older image are rebased with the pages that differ.
    resumed: Option<ImageHistory>,
    /// Attaching backups' answers to a rebase's attach.
    holdings: Mutex<HashMap<BackupId, Holding>>,
}

/// Checkpoints remembered for lag reports.
const RECENT_CHECKPOINTS: usize = 4096;

#[derive(Default)]
struct RecentCheckpoints {
    /// (checkpoint, region bytes it changed)
    checkpoints: std::collections::VecDeque<(CheckpointId, u64)>,
    /// AU bytes streamed into the open checkpoint so far.
    streamed: u64,
}

/// How far a backup is behind the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupLag {
    /// The backup.
    pub backup: BackupId,
    /// The last checkpoint it acknowledged.
    pub acked: Option<CheckpointId>,
    /// Checkpoints cut but not yet acknowledged by it.
    pub checkpoints: u64,
    /// Region bytes of those checkpoints (as far as remembered).
    pub bytes: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The replication state machine behind its lock, with the number of backups it follows
/// readable without the lock: every reply that waits for a checkpoint asks whether enough
/// backups are left to hold it, and must not queue behind a cut for the answer. The count is
/// stored each time a guard is released, before the lock is, so no change to the replication
/// (a backup added or lost, or any later kind) leaves it stale, and a waiter woken after a
/// change reads the new count.
struct Guarded {
    replication: Mutex<Replication>,
    following: AtomicUsize,
}

impl Guarded {
    fn lock(&self) -> ReplicationGuard<'_> {
        ReplicationGuard { replication: lock(&self.replication), following: &self.following }
    }

    /// Backups following, as of the last guard released.
    fn following(&self) -> usize {
        self.following.load(Ordering::Acquire)
    }
}

struct ReplicationGuard<'a> {
    replication: MutexGuard<'a, Replication>,
    following: &'a AtomicUsize,
}

impl std::ops::Deref for ReplicationGuard<'_> {
    type Target = Replication;
    fn deref(&self) -> &Replication {
        &self.replication
    }
}

impl std::ops::DerefMut for ReplicationGuard<'_> {
    fn deref_mut(&mut self) -> &mut Replication {
        &mut self.replication
    }
}

impl Drop for ReplicationGuard<'_> {
    fn drop(&mut self) {
        let count = self.replication.backup_count();
        // Stored only when it changed: readers on other cores keep the line cached.
        if self.following.load(Ordering::Relaxed) != count {
            self.following.store(count, Ordering::Release);
        }
    }
}

/// Where one reply stands in output commit ([`Primary::hold_state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldState {
    /// Every required backup holds its checkpoint: it may leave.
    Held,
    /// Its checkpoint is on its way to the backups.
    Pending,
    /// Fewer backups than required are connected: it is held until one is attached.
    Unprotected {
        /// Backups connected.
        connected: usize,
        /// Backups required.
        required: usize,
    },
}

/// What [`Primary::set_hold_listener`] calls.
pub type HoldListener = Box<dyn Fn() + Send + Sync>;

/// A primary replicating one [`Mirror`].
pub struct Primary {
    shared: Arc<Shared>,
    replicator: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Primary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primary").field("config", &self.shared.config).finish()
    }
}

impl Primary {
    /// Starts replicating `mirror`, whose open checkpoint must be the first to cut.
    pub fn start(mirror: Arc<Mirror>, config: PrimaryConfig) -> Primary {
        Primary::start_with(mirror, config, None)
    }

    /// Like [`Primary::start`], for a mirror that resumed a promoted backup's image: `history`
    /// is that backup's ([`nonstop_proto::backup::Backup::history`]), whose current state is
    /// the image resumed from. A holder attached with [`AttachPayload::Rebase`] is then sent
    /// the pages that differ from what it holds instead of the whole image, when the two
    /// histories meet.
    pub fn start_resumed(mirror: Arc<Mirror>, config: PrimaryConfig, history: ImageHistory) -> Primary {
        Primary::start_with(mirror, config, Some(history).filter(|h| h.current().is_some()))
    }

    fn start_with(mirror: Arc<Mirror>, config: PrimaryConfig, resumed: Option<ImageHistory>) -> Primary {
        let clock = Instant::now();
        let replication =
            Replication::new(config.term, config.policy, config.required_backups, mirror.open_checkpoint(), Nanos(0));
        let shared = Arc::new(Shared {
            mirror,
            config,
            clock,
            replication: Guarded { replication: Mutex::new(replication), following: AtomicUsize::new(0) },
            links: Mutex::new(Vec::new()),
            held: AtomicU64::new(0),
            held_lock: Mutex::new(()),
            held_changed: Condvar::new(),
            waiters: AtomicUsize::new(0),
            hold_listener: std::sync::OnceLock::new(),
            verify_replies: Mutex::new(HashMap::new()),
            verify_changed: Condvar::new(),
            stats: Mutex::new(ReplicationStats::new()),
            stop: AtomicBool::new(false),
            next_backup: AtomicU32::new(1),
            coalescer: Mutex::new(Coalescer::default()),
            precopy: Mutex::new(()),
            recent: Mutex::new(RecentCheckpoints::default()),
            connected: Mutex::new(Vec::new()),
            silence_limit_ns: AtomicU64::new(0),
            faults: std::sync::OnceLock::new(),
            detections: std::sync::OnceLock::new(),
            resumed,
            holdings: Mutex::new(HashMap::new()),
        });
        let replicator = matches!(shared.config.policy, CommitPolicy::Epoch { .. }).then(|| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("nonstop-replicator".into())
                .spawn(move || shared.run_epochs())
                .expect("spawn replicator thread")
        });
        if let Some(handle) = &replicator {
            shared.mirror.set_stream_waker(handle.thread().clone());
            if let CommitPolicy::Epoch { max_commits, .. } = shared.config.policy {
                shared.mirror.set_commit_wake(max_commits);
            }
        }
        Primary { shared, replicator }
    }

    /// Checks `faults` inside checkpoints from now on (`nonstop chaos kill`); set once.
    pub fn set_fault_points(&self, faults: Arc<fault::FaultPoints>) {
        let _ = self.shared.faults.set(faults);
    }

    /// Counts refusals on its backup links in `detections` (the node's); set once, before
    /// the first attach (until then a counter of its own is used).
    pub fn set_detections(&self, detections: Arc<Detections>) {
        let _ = self.shared.detections.set(detections);
    }

    /// The mirror being replicated.
    pub fn mirror(&self) -> &Arc<Mirror> {
        &self.shared.mirror
    }

    /// Connects a backup and brings it up to date while transactions keep running (iterative
    /// pre-copy: the pages ever written, then the pages written meanwhile, round after round),
    /// then joins it to the checkpoint stream: the next checkpoint carries the pages written
    /// since the last round, which complete its image. Returns once it holds that checkpoint.
    pub fn attach_backup(&self, addr: SocketAddr, timeout: Duration) -> Result<BackupId, PrimaryError> {
        self.attach_backup_with(addr, AttachPayload::PreCopy, timeout)
    }

    /// Like [`Primary::attach_backup`], choosing how the backup is brought up to date: with
    /// [`AttachPayload::Rebase`] no pre-copy runs; the primary asks what the backup holds, and
    /// the next checkpoint carries the pages that differ (or, if the two images share no
    /// remembered state, the whole image), which the backup applies at its close or not at
    /// all, so its old image stays a checkpoint until then (transactions wait while the pages
    /// are copied).
    pub fn attach_backup_with(
        &self,
        addr: SocketAddr,
        payload: AttachPayload,
        timeout: Duration,
    ) -> Result<BackupId, PrimaryError> {
        let shared = &self.shared;
        let started = Instant::now();
        let detections = shared.detections.get_or_init(Arc::default);
        let (mut sender, receiver) = conn::connect(addr, &shared.config.key, detections)?;
        let resumed = shared.resumed.as_ref().and_then(ImageHistory::current);
        let rebase = resumed.filter(|_| payload == AttachPayload::Rebase);
        let attach = Attach {
            region_base: shared.mirror.base() as u64,
            region_len: shared.mirror.len() as u64,
            page_size: PAGE_SIZE as u32,
            rebase,
        };
        sender.send(FrameKind::Attach, shared.config.term, CheckpointId(0), &control::encode(&attach))?;
        let id = BackupId(shared.next_backup.fetch_add(1, Ordering::Relaxed));
        let alive = Arc::new(AtomicBool::new(true));
        let reader = {
            let (shared, alive) = (self.shared.clone(), alive.clone());
            std::thread::Builder::new()
                .name(format!("nonstop-acks-{}", id.0))
                .spawn(move || shared.read_backup(id, receiver, alive))
                .expect("spawn ack reader")
        };
        let (report, first) = match (payload, rebase) {
            (AttachPayload::PreCopy, _) => (self.precopy(&mut sender)?, FirstCheckpoint::CompletePreCopy),
            (AttachPayload::Rebase, None) => (PreCopyReport::default(), FirstCheckpoint::Whole),
            (AttachPayload::Rebase, Some(_)) => {
                let first = self.rebase_basis(id, &alive, timeout).inspect_err(|_| sender.shutdown())?;
                (PreCopyReport::default(), first)
            }
        };
        let (kind, timeout) = match &first {
            FirstCheckpoint::Whole => ("whole image", timeout),
            FirstCheckpoint::CompletePreCopy => ("pre-copy", timeout),
            // A few pages: acknowledged within a round trip and a cut, or the holder is stuck.
            FirstCheckpoint::Rebase { .. } => ("pages that differ", self.answer_timeout(timeout)),
        };
        let first = {
            let mut links = lock(&shared.links);
            shared.replication.lock().add_backup(id);
            links.push(Link {
                id,
                sender,
                alive,
                progress: LinkProgress::new(),
                first: Some(first),
                reader: Some(reader),
            });
            shared.cut_and_send(&mut links)
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(acked) = shared.replication.lock().acked(id) {
                if acked >= first {
                    tracing::info!(
                        backup = id.0,
                        %addr,
                        ?payload,
                        sent = kind,
                        checkpoint = first.0,
                        rounds = report.rounds,
                        pages = report.pages,
                        ms = started.elapsed().as_millis() as u64,
                        "backup attached and holds the image"
                    );
                    return Ok(id);
                }
            } else if !lock(&shared.links).iter().any(|l| l.id == id && l.alive.load(Ordering::Relaxed)) {
                let reason = self.refusal(id).unwrap_or_else(|| "connection closed".into());
                return Err(PrimaryError::Refused { peer: addr.to_string(), reason });
            }
            if Instant::now() > deadline {
                // End the session: a backup that never acknowledged must not linger as a
                // follower, nor keep its server from the next attach.
                let mut links = lock(&shared.links);
                links.iter().filter(|l| l.id == id).for_each(|l| l.alive.store(false, Ordering::Relaxed));
                shared.prune(&mut links);
                return Err(PrimaryError::Timeout(timeout));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// How long to wait for something a backup answers within a round trip (its `Holding`, the
    /// acknowledgement of a rebase of a few pages): `timeout`, cut to the silence limit if one
    /// is set. A holder paused or cut off is then given up like a backup that owes an
    /// acknowledgement, so that it does not hold the re-protection of the others off for the
    /// whole attach timeout.
    fn answer_timeout(&self, timeout: Duration) -> Duration {
        let limit = Duration::from_nanos(self.shared.silence_limit_ns.load(Ordering::Relaxed));
        if limit.is_zero() { timeout } else { timeout.min(limit) }
    }

    /// Waits for a rebased backup's [`Holding`] and decides what its first checkpoint carries.
    fn rebase_basis(
        &self,
        id: BackupId,
        alive: &AtomicBool,
        timeout: Duration,
    ) -> Result<FirstCheckpoint, PrimaryError> {
        let shared = &self.shared;
        let timeout = self.answer_timeout(timeout);
        let deadline = Instant::now() + timeout;
        let history = shared.resumed.as_ref().expect("a rebase is only asked for by a resumed mirror");
        let holding = loop {
            if let Some(holding) = lock(&shared.holdings).remove(&id) {
                break holding;
            }
            if !alive.load(Ordering::Relaxed) {
                let reason = self.refusal(id).unwrap_or_else(|| "connection closed".into());
                return Err(PrimaryError::Refused { peer: format!("backup {}", id.0), reason });
            }
            if Instant::now() > deadline {
                return Err(PrimaryError::Timeout(timeout));
            }
            std::thread::sleep(Duration::from_micros(50));
        };
        let pages = shared.mirror.len().div_ceil(PAGE_SIZE);
        let cut = shared
            .replication
            .lock()
            .last_closed()
            .map(|checkpoint| ImageState { term: shared.config.term, checkpoint });
        match history.rebase_pages(&holding, cut, pages) {
            Ok(Some(pages)) => {
                let from = holding.held.expect("pages are only known for an image held");
                Ok(FirstCheckpoint::Rebase { from, pages })
            }
            Ok(None) => {
                tracing::info!(backup = id.0, held = ?holding.held, "holder shares no remembered state: sending the whole image");
                Ok(FirstCheckpoint::Whole)
            }
            Err(error) => Err(PrimaryError::Refused { peer: format!("backup {}", id.0), reason: error.to_string() }),
        }
    }

    /// Iterative pre-copy of the pages ever written to a newly connected backup.
    fn precopy(&self, sender: &mut FrameSender) -> Result<PreCopyReport, PrimaryError> {
        let shared = &self.shared;
        // One pre-copy at a time: the mirror keeps one set of pages to copy again.
        let _precopy = lock(&shared.precopy);
        let mut report = PreCopyReport::default();
        shared.mirror.precopy_begin();
        let rounds = (|| -> Result<(), ConnError> {
            let term = shared.config.term;
            // An empty first frame: the backup zeroes its image, so zero pages need not travel.
            sender.send(FrameKind::PreCopy, term, CheckpointId(0), &[])?;
            let mut rounds = PreCopyRounds::default();
            loop {
                let first = rounds.rounds() == 0;
                let pages = shared.mirror.precopy_round(first, PRECOPY_BATCH_PAGES, |runs| {
                    let payloads = runs.into_payloads();
                    let frames = payloads.iter().map(|p| (FrameKind::PreCopy, term, CheckpointId(0), p.as_slice()));
                    sender.send_batch(frames)
                })?;
                report.pages += pages as u64;
                let another = rounds.another_round(shared.mirror.precopy_pending());
                report.rounds = rounds.rounds();
                if !another {
                    return Ok(());
                }
            }
        })();
        if let Err(error) = rounds {
            shared.mirror.precopy_abort();
            sender.shutdown();
            return Err(error.into());
        }
        Ok(report)
    }

    fn refusal(&self, id: BackupId) -> Option<String> {
        lock(&self.shared.verify_replies).get(&id).and_then(|r| r.as_ref().err().cloned())
    }

    /// Whether the reply of `ticket` may leave: every required backup holds its checkpoint.
    pub fn is_held(&self, ticket: Ticket) -> bool {
        self.shared.held.load(Ordering::Acquire) > ticket.checkpoint.0
    }

    /// Drops a backup's link once it owes an acknowledgement and has been silent for `limit`
    /// (`None`: never). A backup cut off by the network can keep its TCP connection open for
    /// minutes; without a limit the primary would wait on it, releasing nothing, as long.
    pub fn set_silence_limit(&self, limit: Option<Duration>) {
        let nanos = limit.map_or(0, |l| (l.as_nanos() as u64).max(1));
        self.shared.silence_limit_ns.store(nanos, Ordering::Relaxed);
    }

    /// The highest checkpoint every required backup holds.
    pub fn held(&self) -> Option<CheckpointId> {
        self.shared.held.load(Ordering::Acquire).checked_sub(1).map(CheckpointId)
    }

    /// When `checkpoint` became held, if recently.
    pub fn held_at(&self, checkpoint: CheckpointId) -> Option<Instant> {
        self.shared.replication.lock().held_at(checkpoint).map(|at| self.shared.clock + Duration::from_nanos(at.0))
    }

    /// Starts what `ticket` waits for: under the sync policy this cuts and sends its
    /// checkpoint (unless a later cut already holds it); under epochs the replicator does.
    pub fn request_held(&self, ticket: Ticket) {
        let shared = &self.shared;
        if shared.config.policy == CommitPolicy::Sync && !self.is_held(ticket) {
            let mut links = lock(&shared.links);
            let closed = shared.replication.lock().last_closed();
            if closed.is_none_or(|closed| closed < ticket.checkpoint) {
                shared.cut_and_send(&mut links);
            }
        }
    }

    /// Where the reply of `ticket` stands now, without waiting.
    pub fn hold_state(&self, ticket: Ticket) -> HoldState {
        if self.is_held(ticket) {
            return HoldState::Held;
        }
        let connected = self.backup_count();
        let required = self.shared.config.required_backups;
        if connected < required {
            return HoldState::Unprotected { connected, required };
        }
        HoldState::Pending
    }

    /// Calls `listener` whenever a [`Primary::hold_state`] may have changed (a checkpoint became
    /// held, a backup was lost), from the thread that changed it: it must only wake someone.
    /// Set once; this is how an asynchronous server waits for output commit without a thread
    /// per reply.
    pub fn set_hold_listener(&self, listener: HoldListener) {
        let _ = self.shared.hold_listener.set(listener);
    }

    /// Waits until the reply of `ticket` may leave. Under the sync policy this cuts and sends
    /// the checkpoint itself (one round trip); under epochs it waits for the replicator.
    pub fn wait_held(&self, ticket: Ticket, timeout: Duration) -> Result<(), PrimaryError> {
        let shared = &self.shared;
        if self.is_held(ticket) {
            return Ok(());
        }
        self.request_held(ticket);
        let started = Instant::now();
        while started.elapsed() < SPIN_BEFORE_SLEEP {
            if self.is_held(ticket) {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        shared.waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = lock(&shared.held_lock);
        let result = loop {
            match self.hold_state(ticket) {
                HoldState::Held => break Ok(()),
                HoldState::Unprotected { connected, required } => {
                    break Err(PrimaryError::Unprotected { connected, required });
                }
                HoldState::Pending => {}
            }
            let waited = started.elapsed();
            if waited >= timeout {
                break Err(PrimaryError::Timeout(timeout));
            }
            guard = shared
                .held_changed
                .wait_timeout(guard, (timeout - waited).min(Duration::from_millis(50)))
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        };
        shared.waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Cuts a checkpoint now (whatever the policy) and returns its number.
    pub fn checkpoint_now(&self) -> CheckpointId {
        let mut links = lock(&self.shared.links);
        self.shared.cut_and_send(&mut links)
    }

    /// Asks every backup for a digest of its image's first `len` bytes and, if `check` names
    /// a workload, for that workload's consistency check on the image.
    pub fn verify_backups(
        &self,
        len: u64,
        check: Option<&str>,
        timeout: Duration,
    ) -> Result<Vec<(BackupId, VerifyReply)>, PrimaryError> {
        let shared = &self.shared;
        let request = control::encode(&VerifyRequest { len, check: check.map(str::to_string) });
        let ids: Vec<BackupId> = {
            let mut links = lock(&shared.links);
            lock(&shared.verify_replies).clear();
            for link in links.iter_mut() {
                link.sender.send(FrameKind::VerifyRequest, shared.config.term, CheckpointId(0), &request)?;
            }
            links.iter().map(|l| l.id).collect()
        };
        let deadline = Instant::now() + timeout;
        let mut replies = lock(&shared.verify_replies);
        loop {
            if ids.iter().all(|id| replies.contains_key(id)) {
                return ids
                    .iter()
                    .map(|id| match replies.remove(id).expect("checked above") {
                        Ok(reply) => Ok((*id, reply)),
                        Err(reason) => Err(PrimaryError::Refused { peer: format!("backup {}", id.0), reason }),
                    })
                    .collect();
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PrimaryError::Timeout(timeout));
            }
            replies = shared.verify_changed.wait_timeout(replies, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Statistics since start.
    pub fn stats(&self) -> ReplicationStats {
        lock(&self.shared.stats).clone()
    }

    /// Makes exactly `backups` the ones whose acknowledgement releases output (the control
    /// plane's record); other attached backups are followed but not waited for.
    pub fn set_required(&self, backups: BTreeSet<BackupId>) {
        self.set_required_with(backups, Protection::Enough);
    }

    /// Like [`Primary::set_required`], with whether the record names enough backups for
    /// output to leave at all ([`Protection::TooFew`] holds every reply).
    pub fn set_required_with(&self, backups: BTreeSet<BackupId>, protection: Protection) {
        let now = self.shared.now();
        // Bound first: an `if let` would hold the replication lock into `publish_held`, which
        // takes the held lock — the reverse of a waiter's order.
        let advanced = self.shared.replication.lock().set_required_with(backups, protection, now);
        if let Some(held) = advanced {
            self.shared.publish_held(held);
        }
    }

    /// With no required backup, lets output leave until `until` (`None` revokes the lease).
    pub fn set_lease(&self, until: Option<Instant>) {
        let shared = &self.shared;
        let until = until.map(|until| Nanos(until.saturating_duration_since(shared.clock).as_nanos() as u64));
        let now = shared.now();
        let advanced = shared.replication.lock().set_lease(until, now);
        if let Some(held) = advanced {
            shared.publish_held(held);
        }
    }

    /// The backups whose connection is up, with the last checkpoint each acknowledged.
    ///
    /// Never waits for a cut: a cut holds the link lock while it diffs and sends a checkpoint,
    /// which for a large one takes long enough that a node's control loop, asking every
    /// heartbeat, would miss its heartbeats and be declared dead. While the lock is held, the
    /// last answer read under it is given again, as if it had been asked a moment earlier.
    pub fn connected_backups(&self) -> Vec<(BackupId, Option<CheckpointId>)> {
        let links = match self.shared.links.try_lock() {
            Ok(links) => links,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return lock(&self.shared.connected).clone(),
        };
        let replication = self.shared.replication.lock();
        let connected: Vec<_> = links
            .iter()
            .filter(|link| link.alive.load(Ordering::Relaxed))
            .map(|link| (link.id, replication.acked(link.id)))
            .collect();
        lock(&self.shared.connected).clone_from(&connected);
        connected
    }

    /// How far each connected backup is behind.
    pub fn backup_lag(&self) -> Vec<BackupLag> {
        // Lock order: links, then replication, then recent (as in a cut); never hold `recent`
        // while taking the others.
        let connected = self.connected_backups();
        let closed = self.shared.replication.lock().last_closed();
        let recent = lock(&self.shared.recent);
        connected
            .into_iter()
            .map(|(backup, acked)| {
                let behind = |c: &CheckpointId| acked.is_none_or(|a| *c > a);
                let checkpoints = match (closed, acked) {
                    (Some(closed), Some(acked)) => closed.0.saturating_sub(acked.0),
                    (Some(_), None) => recent.checkpoints.iter().filter(|(c, _)| behind(c)).count() as u64,
                    (None, _) => 0,
                };
                let bytes = recent.checkpoints.iter().filter(|(c, _)| behind(c)).map(|(_, b)| b).sum();
                BackupLag { backup, acked, checkpoints, bytes }
            })
            .collect()
    }

    /// Backups currently following.
    pub fn backup_count(&self) -> usize {
        self.shared.replication.following()
    }

    /// Stops replicating and closes every backup connection.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(replicator) = self.replicator.take() {
            replicator.thread().unpark();
            let _ = replicator.join();
        }
        let readers: Vec<JoinHandle<()>> = {
            let mut links = lock(&self.shared.links);
            links
                .iter_mut()
                .filter_map(|link| {
                    link.sender.shutdown();
                    link.reader.take()
                })
                .collect()
        };
        for reader in readers {
            let _ = reader.join();
        }
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn now(&self) -> Nanos {
        Nanos(self.clock.elapsed().as_nanos() as u64)
    }

    /// Ends the links of backups silent past the limit while they owe an acknowledgement.
    fn drop_silent(&self) {
        let limit = self.silence_limit_ns.load(Ordering::Relaxed);
        if limit == 0 {
            return;
        }
        let silent = self.replication.lock().silent_backups(self.now(), Duration::from_nanos(limit));
        if silent.is_empty() {
            return;
        }
        let mut links = lock(&self.links);
        for link in links.iter().filter(|l| silent.contains(&l.id)) {
            tracing::warn!(
                backup = link.id.0,
                limit_ms = limit / 1_000_000,
                "backup silent past the limit: dropping its link"
            );
            link.alive.store(false, Ordering::Relaxed);
        }
        self.prune(&mut links);
    }

    fn run_epochs(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            self.drop_silent();
            let now = self.now();
            let (due, deadline) = {
                let replication = self.replication.lock();
                (replication.cut_due(now, self.mirror.commits_in_epoch()), replication.deadline())
            };
            if due {
                let mut links = lock(&self.links);
                self.cut_and_send(&mut links);
                continue;
            }
            if self.mirror.stream_pending() >= STREAM_CHUNK {
                let mut links = lock(&self.links);
                self.stream(&mut links);
                continue;
            }
            let wait = deadline.map_or(Duration::from_millis(10), |d| Duration::from_nanos(d.0.saturating_sub(now.0)));
            std::thread::park_timeout(wait.min(Duration::from_millis(10)));
        }
    }

    /// AU: ships what was committed so far into the open checkpoint.
    fn stream(&self, links: &mut Vec<Link>) {
        let (checkpoint, runs) = self.mirror.take_stream();
        let runs = self.combine(runs);
        let run_bytes = runs.run_bytes();
        let payloads = runs.into_payloads();
        let term = self.config.term;
        for link in links.iter_mut().filter(|l| l.progress.wants_stream()) {
            link.progress.streamed(payloads.len(), run_bytes);
            let frames = payloads.iter().map(|payload| (FrameKind::Runs, term, checkpoint, payload.as_slice()));
            if let Err(error) = link.sender.send_batch(frames) {
                tracing::warn!(backup = link.id.0, %error, "send failed");
                link.alive.store(false, Ordering::Relaxed);
            }
        }
        lock(&self.stats).change_bytes += run_bytes;
        lock(&self.recent).streamed += run_bytes;
        self.prune(links);
    }

    /// AU write combining: a run overwritten later in the same shipment is not sent. DU runs
    /// are diffs of distinct pages and never repeat, so they go as they are.
    fn combine(&self, runs: RunsBuilder) -> RunsBuilder {
        if self.mirror.protocol() == Some(UpdateProtocol::Au) && !runs.is_empty() {
            let combined = lock(&self.coalescer).coalesce(&runs);
            self.mirror.recycle_stream(runs);
            combined
        } else {
            runs
        }
    }

    /// Cuts the open checkpoint and sends it to every backup; returns its number.
    fn cut_and_send(&self, links: &mut Vec<Link>) -> CheckpointId {
        // Every link with a first checkpoint to send joined under this lock, so the
        // replication's cut names it in `full_image_for`.
        let firsts = || links.iter().filter_map(|l| l.first.as_ref());
        let whole = firsts().any(|f| *f == FirstCheckpoint::Whole);
        let finish_precopy = firsts().any(|f| *f == FirstCheckpoint::CompletePreCopy);
        let rebases: Vec<Vec<u32>> = firsts()
            .filter_map(|first| match first {
                FirstCheckpoint::Rebase { pages, .. } => Some(pages.clone()),
                _ => None,
            })
            .collect();
        let started = Instant::now();
        let content = self.mirror.cut_with(FirstImages { whole, finish_precopy, rebases: &rebases });
        let cut_ns = started.elapsed().as_nanos() as u64;
        let cut = self.replication.lock().cut(self.now());
        assert_eq!(cut.checkpoint, content.checkpoint, "mirror and replication cut in lockstep");
        if let Some(held) = cut.held {
            self.publish_held(held);
        }
        let changes = self.combine(content.changes);
        let change_bytes = changes.run_bytes();
        let changes = changes.into_payloads();
        let image_bytes = content.full_image.as_ref().map_or(0, |image| image.run_bytes());
        let image = content.full_image.map(|image| image.into_payloads());
        let delta_bytes = content.precopy_delta.as_ref().map_or(0, |delta| delta.run_bytes());
        let delta = content.precopy_delta.map(|delta| delta.into_payloads());
        let rebased: Vec<(u64, Vec<Vec<u8>>)> =
            content.rebases.into_iter().map(|runs| (runs.run_bytes(), runs.into_payloads())).collect();
        let mut next_rebase = rebased.iter();
        for link in links.iter_mut() {
            let first = link.first.take();
            debug_assert!(first.is_none() || cut.full_image_for.contains(&link.id), "joined under the link lock");
            let (payloads, bytes, kind) = match (first, &image, &delta) {
                (Some(FirstCheckpoint::CompletePreCopy), _, Some(delta)) => (delta, delta_bytes, CloseKind::PreCopied),
                (Some(FirstCheckpoint::Whole), Some(image), _) => (image, image_bytes, CloseKind::Whole),
                (Some(FirstCheckpoint::Rebase { from, .. }), _, _) => {
                    let (bytes, payloads) = next_rebase.next().expect("one rebase cut per rebased link");
                    tracing::info!(
                        backup = link.id.0,
                        pages = bytes / PAGE_SIZE as u64,
                        "rebasing a holder with the pages that differ"
                    );
                    (payloads, *bytes, CloseKind::Rebased { from })
                }
                (Some(first), _, _) => unreachable!("the cut was asked for {first:?}"),
                (None, _, _) => (&changes, change_bytes, CloseKind::Changes),
            };
            let close = control::encode(&link.progress.close(payloads.len(), bytes, kind));
            let (term, checkpoint) = (self.config.term, cut.checkpoint);
            let runs = payloads.iter().map(|payload| (FrameKind::Runs, term, checkpoint, payload.as_slice()));
            let closing = std::iter::once((FrameKind::Close, term, checkpoint, close.as_slice()));
            let sent = if let Some(faults) = self.faults.get().filter(|f| f.armed()) {
                // Split so that a fault point can land between the frames of a checkpoint.
                let mut runs = runs;
                let first = runs.next();
                let none_yet = first.is_none();
                link.sender
                    .send_batch(first)
                    .and_then(|()| {
                        if !none_yet {
                            faults.reached(fault::FaultPoint::AfterSomeRuns);
                        }
                        link.sender.send_batch(runs)
                    })
                    .and_then(|()| {
                        faults.reached(fault::FaultPoint::BeforeClose);
                        link.sender.send_batch(closing)
                    })
            } else {
                link.sender.send_batch(runs.chain(closing))
            };
            if let Err(error) = sent {
                tracing::warn!(backup = link.id.0, %error, "send failed");
                link.alive.store(false, Ordering::Relaxed);
            }
        }
        {
            let mut stats = lock(&self.stats);
            stats.checkpoints += 1;
            stats.change_bytes += change_bytes;
            let mut recent = lock(&self.recent);
            let bytes = std::mem::take(&mut recent.streamed) + change_bytes;
            if recent.checkpoints.len() == RECENT_CHECKPOINTS {
                recent.checkpoints.pop_front();
            }
            recent.checkpoints.push_back((cut.checkpoint, bytes));
            stats.dirty_blocks += content.dirty_blocks as u64;
            let _ = stats.cut_ns.record(cut_ns.max(1));
        }
        self.prune(links);
        cut.checkpoint
    }

    fn prune(&self, links: &mut Vec<Link>) {
        let now = self.now();
        links.retain_mut(|link| {
            if link.alive.load(Ordering::Relaxed) {
                return true;
            }
            link.sender.shutdown();
            let advanced = self.replication.lock().backup_lost(link.id, now);
            if let Some(held) = advanced {
                self.publish_held(held);
            }
            false
        });
    }

    fn publish_held(&self, held: CheckpointId) {
        self.held.fetch_max(held.0 + 1, Ordering::AcqRel);
        self.hold_changed();
    }

    /// Wakes whoever waits on a hold: blocked [`Primary::wait_held`] callers and the listener.
    fn hold_changed(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = lock(&self.held_lock);
            self.held_changed.notify_all();
        }
        if let Some(listener) = self.hold_listener.get() {
            listener();
        }
    }

    fn read_backup(&self, id: BackupId, mut receiver: FrameReceiver, alive: Arc<AtomicBool>) {
        let outcome: Result<(), String> = loop {
            let frame = match receiver.recv() {
                Ok(frame) => frame,
                Err(error) => break Err(error.to_string()),
            };
            match frame.kind {
                FrameKind::Ack => {
                    if let Some(faults) = self.faults.get() {
                        faults.reached(fault::FaultPoint::AckArrived);
                    }
                    let info: AckInfo = match control::decode("ack", &frame.payload) {
                        Ok(info) => info,
                        Err(error) => break Err(error.to_string()),
                    };
                    let _ = lock(&self.stats).apply_ns.record(info.apply_ns.max(1));
                    let result = self.replication.lock().on_ack(id, frame.checkpoint, self.now());
                    match result {
                        Ok(Some(held)) => self.publish_held(held),
                        Ok(None) => {}
                        Err(error) => break Err(error.to_string()),
                    }
                }
                FrameKind::VerifyReply => {
                    let reply =
                        control::decode::<VerifyReply>("verify reply", &frame.payload).map_err(|e| e.to_string());
                    lock(&self.verify_replies).insert(id, reply);
                    self.verify_changed.notify_all();
                }
                FrameKind::Refuse => {
                    let reason = control::decode::<Refusal>("refusal", &frame.payload)
                        .map(|r| r.reason)
                        .unwrap_or_else(|e| e.to_string());
                    break Err(reason);
                }
                FrameKind::Pong => {}
                FrameKind::Holding => match control::decode::<Holding>("holding", &frame.payload) {
                    Ok(holding) => {
                        lock(&self.holdings).insert(id, holding);
                    }
                    Err(error) => break Err(error.to_string()),
                },
                other => break Err(format!("unexpected {other:?} frame from a backup")),
            }
        };
        alive.store(false, Ordering::Relaxed);
        lock(&self.holdings).remove(&id);
        if let Err(reason) = outcome {
            if !self.stop.load(Ordering::Relaxed) {
                tracing::warn!(backup = id.0, %reason, "backup connection ended");
            }
            lock(&self.verify_replies).insert(id, Err(reason));
            self.verify_changed.notify_all();
        }
        let advanced = self.replication.lock().backup_lost(id, self.now());
        if let Some(held) = advanced {
            self.publish_held(held);
        }
        // Even if nothing became held, a waiter may now be unprotected.
        self.hold_changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_proto::auth::ClusterKey;
    use nonstop_proto::{CommitPolicy, Term, UpdateProtocol};
    use nonstop_region::Region;

    /// A node's control loop asks for the connected backups every heartbeat; a cut that holds
    /// the link lock for long (a large checkpoint being diffed and sent) must not hold it up,
    /// or the node misses its heartbeats and its peers fail it over.
    #[test]
    fn the_connected_backups_are_answered_while_a_cut_holds_the_links() {
        let region = Region::map(0x2f00_0000_0000, 1 << 20).unwrap();
        let mirror = Arc::new(Mirror::new(region, Some(UpdateProtocol::Au), CheckpointId(1)));
        let config = PrimaryConfig {
            term: Term(1),
            policy: CommitPolicy::Epoch { interval_us: 1000, max_commits: 0 },
            required_backups: 0,
            key: ClusterKey::from_bytes([7; 32]),
        };
        let primary = Primary::start(mirror, config);
        assert_eq!(primary.connected_backups(), Vec::new());
        let (held, release) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let shared = primary.shared.clone();
        let cut = std::thread::spawn(move || {
            let _links = lock(&shared.links);
            held.0.send(()).unwrap();
            let _ = release.1.recv_timeout(Duration::from_secs(10));
        });
        held.1.recv().unwrap();
        let asked = Instant::now();
        assert_eq!(primary.connected_backups(), Vec::new(), "the last answer read under the lock");
        assert!(asked.elapsed() < Duration::from_secs(5), "answered without waiting for the cut");
        release.0.send(()).unwrap();
        cut.join().unwrap();
        primary.shutdown();
    }

    /// Replies read the number of following backups without the replication's lock: whatever
    /// changes the backups through the lock, the count they read follows it once it is let go.
    #[test]
    fn the_count_read_without_the_lock_follows_every_change_to_the_backups() {
        let policy = CommitPolicy::Epoch { interval_us: 1000, max_commits: 0 };
        let replication = Replication::new(Term(1), policy, 1, CheckpointId(1), Nanos(0));
        let guarded = Guarded { replication: Mutex::new(replication), following: AtomicUsize::new(0) };
        guarded.lock().add_backup(BackupId(1));
        guarded.lock().add_backup(BackupId(2));
        assert_eq!(guarded.following(), 2);
        {
            let mut replication = guarded.lock();
            replication.backup_lost(BackupId(1), Nanos(5));
            assert_eq!(guarded.following(), 2, "published when the guard is let go, not before");
        }
        assert_eq!(guarded.following(), 1);
        guarded.lock().backup_lost(BackupId(2), Nanos(6));
        assert_eq!(guarded.following(), 0);
    }
}
