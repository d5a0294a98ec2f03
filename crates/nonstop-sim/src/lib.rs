//! A deterministic simulation of primary-backup replication.
//!
//! The real protocol code — [`Replication`], [`LinkProgress`], [`Backup`], the handshake, frame
//! encoding and decoding, DU diffs and runs — runs against a model region and a network made of
//! frame queues, all driven by one seeded random generator. The network loses, duplicates,
//! reorders and delays frames, cuts connections, and backups crash and come back empty. After
//! every step the simulator checks:
//!
//! * every backup's image is byte for byte the primary's image at the checkpoint the backup
//!   says it holds (never a mix of two checkpoints);
//! * when the held checkpoint advances (replies are released), every backup the primary counts
//!   really holds it;
//! * when the primary crashes, a surviving backup holds every released checkpoint, unless every
//!   backup that held it crashed too (a double failure).
//!
//! With two backups, a primary crash may also promote the backup holding the newest
//! checkpoint: its image and its history become the primary's of a new term, and the other
//! backup is rebased onto it the way the TCP driver does (attach asking what it holds, the
//! pages that differ, staged and applied at the close), through the same faults; the image
//! checks then compare against the new term's checkpoints.
//!
//! [`cluster`] simulates failover on top: three nodes with the real control plane. [`order`]
//! simulates active replication's total order: three replicas in a Raft group of their own.
//!
//! The same seed always produces the same run; a failure names its seed and step.

pub mod cluster;
pub mod order;

use nonstop_proto::auth::{ClusterKey, Initiator, Responder};
use nonstop_proto::backup::{Backup, BackupOutput};
use nonstop_proto::control::{self, AckInfo, Attach, CloseKind, Holding, ImageState};
use nonstop_proto::diff::diff_page;
use nonstop_proto::frame::{FrameKind, FrameReader, FrameWriter};
use nonstop_proto::history::ImageHistory;
use nonstop_proto::primary::{BackupId, LinkProgress, Replication};
use nonstop_proto::runs::{Coalescer, RunsBuilder};
use nonstop_proto::written::WrittenPages;
use nonstop_proto::{CheckpointId, CommitPolicy, Nanos, PAGE_SIZE, Term, UpdateProtocol};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use thiserror::Error;

const BASE: u64 = 0x2000_0000_0000;
const PAGES: usize = 16;
const LEN: usize = PAGES * PAGE_SIZE;

/// A safety property failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("seed {seed}, step {step}: {what}")]
pub struct Violation {
    /// The seed that reproduces it.
    pub seed: u64,
    /// The step at which it was detected.
    pub step: usize,
    /// What went wrong.
    pub what: String,
}

/// What a run did, for coverage: a simulator that never injects a fault proves nothing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SimStats {
    /// Checkpoints cut.
    pub checkpoints: u64,
    /// Checkpoints applied by backups.
    pub applied: u64,
    /// Times the held checkpoint advanced.
    pub releases: u64,
    /// Connections reset (cut, or refused after a corrupted stream).
    pub resets: u64,
    /// Frames lost, duplicated or reordered.
    pub frame_faults: u64,
    /// Backup crashes.
    pub backup_crashes: u64,
    /// Runs that ended with a primary crash.
    pub primary_crashes: u64,
    /// Primary crashes after which a backup was promoted and the run went on.
    pub promotions: u64,
    /// Rebases that sent the pages that differ.
    pub diff_rebases: u64,
    /// Rebases that had to send the whole image.
    pub whole_rebases: u64,
}

impl std::ops::AddAssign for SimStats {
    fn add_assign(&mut self, other: SimStats) {
        self.checkpoints += other.checkpoints;
        self.applied += other.applied;
        self.releases += other.releases;
        self.resets += other.resets;
        self.frame_faults += other.frame_faults;
        self.backup_crashes += other.backup_crashes;
        self.primary_crashes += other.primary_crashes;
        self.promotions += other.promotions;
        self.diff_rebases += other.diff_rebases;
        self.whole_rebases += other.whole_rebases;
    }
}

/// What a link's first checkpoint carries.
#[derive(Clone, Debug, PartialEq, Eq)]
enum First {
    /// Asked what the backup holds; not joined to the stream until the answer arrives.
    AwaitingHolding,
    Whole,
    Rebase {
        from: ImageState,
        pages: Vec<u32>,
    },
}

struct Link {
    id: BackupId,
    /// Until its first checkpoint is sent.
    first: Option<First>,
    progress: LinkProgress,
    to_backup: VecDeque<Vec<u8>>,
    to_primary: VecDeque<Vec<u8>>,
    primary_writer: FrameWriter,
    primary_reader: FrameReader,
    backup_writer: FrameWriter,
    backup_reader: FrameReader,
}

struct SimBackup {
    backup: Backup,
    image: Vec<u8>,
    link: Option<Link>,
    /// Crashed since the primary last released a checkpoint it held.
    crashed: bool,
}

struct Sim {
    seed: u64,
    step: usize,
    rng: SmallRng,
    now: Nanos,
    protocol: UpdateProtocol,
    /// The backups' staging threshold: runs are applied on arrival past it.
    eager_after: usize,
    key: ClusterKey,
    term: Term,
    region: Vec<u8>,
    /// The image at every checkpoint cut, by term and number.
    snapshots: BTreeMap<ImageState, Vec<u8>>,
    /// The image at the last cut (or the one resumed from): what DU diffs against.
    previous: Vec<u8>,
    /// After a promotion: the promoted backup's history and the pages written since.
    resumed: Option<(ImageHistory, WrittenPages)>,
    stream: RunsBuilder,
    coalescer: Coalescer,
    replication: Replication,
    backups: Vec<SimBackup>,
    next_id: u32,
    stats: SimStats,
}

/// What taking one frame off a direction of a link gave.
enum Received {
    /// Nothing was in flight.
    Nothing,
    /// A frame that passed every check.
    Frame(nonstop_proto::frame::Frame),
    /// The reader refused it: the connection must be reset.
    Refused,
    /// A whole encoded frame did not come out as a frame: a bug in the codec.
    Undecodable,
}

fn receive(queue: &mut VecDeque<Vec<u8>>, reader: &mut FrameReader) -> Received {
    let Some(bytes) = queue.pop_front() else { return Received::Nothing };
    reader.push(&bytes);
    match reader.next_frame() {
        Ok(Some(frame)) => Received::Frame(frame),
        Ok(None) => Received::Undecodable,
        Err(_) => Received::Refused,
    }
}

fn frames(mut wire: Vec<u8>) -> Vec<Vec<u8>> {
    // Splits an encoded byte string into its frames (header length field + MAC).
    let mut out = Vec::new();
    while !wire.is_empty() {
        let len = u32::from_le_bytes(wire[8..12].try_into().expect("header")) as usize;
        let total = nonstop_proto::frame::HEADER_LEN + len + nonstop_proto::auth::MAC_LEN;
        let rest = wire.split_off(total);
        out.push(wire);
        wire = rest;
    }
    out
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = SmallRng::seed_from_u64(seed);
        let protocol = if rng.random_bool(0.5) { UpdateProtocol::Du } else { UpdateProtocol::Au };
        let k = rng.random_range(1..=2);
        let eager_after = [0, 1 << 10, 1 << 20][rng.random_range(0..3)];
        let mut key = [0u8; 32];
        rng.fill(&mut key);
        let replication = Replication::new(
            Term(1),
            CommitPolicy::Epoch { interval_us: 1000, max_commits: 0 },
            k,
            CheckpointId(1),
            Nanos(0),
        );
        let backups = (0..k)
            .map(|_| SimBackup {
                backup: Backup::new(BASE, LEN as u64).with_eager_after(eager_after),
                image: vec![0; LEN],
                link: None,
                crashed: false,
            })
            .collect();
        Sim {
            seed,
            step: 0,
            rng,
            now: Nanos(0),
            protocol,
            eager_after,
            key: ClusterKey::from_bytes(key),
            term: Term(1),
            region: vec![0; LEN],
            snapshots: BTreeMap::new(),
            previous: vec![0; LEN],
            resumed: None,
            stream: RunsBuilder::new(),
            coalescer: Coalescer::default(),
            replication,
            backups,
            next_id: 1,
            stats: SimStats::default(),
        }
    }

    fn violation(&self, what: String) -> Violation {
        Violation { seed: self.seed, step: self.step, what }
    }

    fn connect(&mut self, index: usize) {
        let mut nonce = [0u8; 32];
        self.rng.fill(&mut nonce);
        let (initiator, hello) = Initiator::start(self.key.clone(), nonce);
        self.rng.fill(&mut nonce);
        let (responder, answer) = Responder::on_client_hello(self.key.clone(), nonce, &hello).expect("same key");
        let (finish, primary_keys) = initiator.on_server_hello(&answer).expect("same key");
        let backup_keys = responder.on_client_finish(&finish).expect("same key");
        let id = BackupId(self.next_id);
        self.next_id += 1;
        let rebase = self.resumed.as_ref().and_then(|(history, _)| history.current());
        let mut link = Link {
            id,
            first: Some(if rebase.is_some() { First::AwaitingHolding } else { First::Whole }),
            progress: LinkProgress::new(),
            to_backup: VecDeque::new(),
            to_primary: VecDeque::new(),
            primary_writer: FrameWriter::new(primary_keys.send),
            primary_reader: FrameReader::new(primary_keys.recv),
            backup_writer: FrameWriter::new(backup_keys.send),
            backup_reader: FrameReader::new(backup_keys.recv),
        };
        let attach = Attach { region_base: BASE, region_len: LEN as u64, page_size: PAGE_SIZE as u32, rebase };
        let mut wire = Vec::new();
        link.primary_writer.encode(FrameKind::Attach, self.term, CheckpointId(0), &control::encode(&attach), &mut wire);
        link.to_backup.extend(frames(wire));
        // A rebased backup joins once its answer is in, as the TCP driver's does.
        if rebase.is_none() {
            self.replication.add_backup(id);
        }
        self.backups[index].link = Some(link);
    }

    /// The connection of backup `index` dies: both ends notice, in-flight frames are gone.
    fn reset(&mut self, index: usize) -> Result<(), Violation> {
        if let Some(link) = self.backups[index].link.take() {
            self.stats.resets += 1;
            let sim_backup = &mut self.backups[index];
            sim_backup.backup.on_disconnect(&mut sim_backup.image);
            if let Some(held) = self.replication.backup_lost(link.id, self.now) {
                self.released(held)?;
            }
        }
        Ok(())
    }

    fn released(&mut self, held: CheckpointId) -> Result<(), Violation> {
        self.stats.releases += 1;
        for (index, backup) in self.backups.iter_mut().enumerate() {
            let counted = backup.link.as_ref().is_some_and(|l| self.replication.acked(l.id).is_some());
            let holds = backup.backup.held_with_term().is_some_and(|(term, h)| term == self.term && h >= held);
            if counted && !holds {
                return Err(Violation {
                    seed: self.seed,
                    step: self.step,
                    what: format!("released {held} but backup {index} holds {:?}", backup.backup.held_with_term()),
                });
            }
            backup.crashed = false;
        }
        Ok(())
    }

    fn transaction(&mut self) {
        let writes = self.rng.random_range(1..=3);
        for _ in 0..writes {
            let len = self.rng.random_range(1..=300usize);
            let offset = self.rng.random_range(0..LEN - len);
            let value: u8 = self.rng.random();
            self.region[offset..offset + len].fill(value);
            if let Some((_, since)) = &mut self.resumed {
                since.mark(offset as u64, len);
            }
            if self.protocol == UpdateProtocol::Au {
                self.stream.push(offset as u64, &self.region[offset..offset + len]);
            }
        }
    }

    /// AU write combining, as the TCP driver does, on a coin flip so both paths are covered.
    fn maybe_combine(&mut self, runs: RunsBuilder) -> RunsBuilder {
        if self.rng.random_bool(0.5) { self.coalescer.coalesce(&runs) } else { runs }
    }

    fn ship_stream(&mut self) {
        let runs = std::mem::take(&mut self.stream);
        let runs = self.maybe_combine(runs);
        let bytes = runs.run_bytes();
        let payloads = runs.into_payloads();
        let checkpoint = self.replication.open_checkpoint();
        for backup in &mut self.backups {
            let Some(link) = &mut backup.link else { continue };
            if !link.progress.wants_stream() {
                continue;
            }
            let mut wire = Vec::new();
            for payload in &payloads {
                link.primary_writer.encode(FrameKind::Runs, self.term, checkpoint, payload, &mut wire);
            }
            link.progress.streamed(payloads.len(), bytes);
            link.to_backup.extend(frames(wire));
        }
    }

    fn cut(&mut self) {
        self.stats.checkpoints += 1;
        let changes = match self.protocol {
            UpdateProtocol::Au => {
                let runs = std::mem::take(&mut self.stream);
                self.maybe_combine(runs)
            }
            UpdateProtocol::Du => {
                let mut runs = RunsBuilder::new();
                for page in 0..PAGES {
                    let range = page * PAGE_SIZE..(page + 1) * PAGE_SIZE;
                    diff_page(range.start as u64, &self.previous[range.clone()], &self.region[range], &mut runs);
                }
                runs
            }
        };
        let pages = |pages: &mut dyn Iterator<Item = usize>| {
            let mut runs = RunsBuilder::new();
            for page in pages {
                runs.push((page * PAGE_SIZE) as u64, &self.region[page * PAGE_SIZE..(page + 1) * PAGE_SIZE]);
            }
            (runs.run_bytes(), runs.into_payloads())
        };
        let (image_bytes, image) = pages(&mut (0..PAGES));
        let cut = self.replication.cut(self.now);
        let state = ImageState { term: self.term, checkpoint: cut.checkpoint };
        if self.snapshots.insert(state, self.region.clone()).is_some() {
            panic!("{state:?} cut twice");
        }
        self.previous.clone_from(&self.region);
        let change_bytes = changes.run_bytes();
        let changes = changes.into_payloads();
        let since: Vec<usize> = self.resumed.as_ref().map_or(Vec::new(), |(_, since)| since.pages().collect());
        let term = self.term;
        for backup in &mut self.backups {
            let Some(link) = &mut backup.link else { continue };
            if link.first == Some(First::AwaitingHolding) {
                continue;
            }
            let first = link.first.take();
            assert_eq!(first.is_some(), cut.full_image_for.contains(&link.id), "joined links get a first image");
            let rebased;
            let (payloads, bytes, kind) = match first {
                None => (&changes, change_bytes, CloseKind::Changes),
                Some(First::Whole) => (&image, image_bytes, CloseKind::Whole),
                Some(First::Rebase { from, pages: named }) => {
                    let union = nonstop_proto::history::rebase_union(&named, &since);
                    rebased = pages(&mut union.into_iter());
                    (&rebased.1, rebased.0, CloseKind::Rebased { from })
                }
                Some(First::AwaitingHolding) => unreachable!("skipped above"),
            };
            let mut wire = Vec::new();
            for payload in payloads {
                link.primary_writer.encode(FrameKind::Runs, term, cut.checkpoint, payload, &mut wire);
            }
            let close = link.progress.close(payloads.len(), bytes, kind);
            link.primary_writer.encode(FrameKind::Close, term, cut.checkpoint, &control::encode(&close), &mut wire);
            link.to_backup.extend(frames(wire));
        }
    }

    /// Perhaps damages the head of a queue the way a broken network would.
    fn network_fault(&mut self, queue_of: impl Fn(&mut Link) -> &mut VecDeque<Vec<u8>>, index: usize) {
        if !self.rng.random_bool(0.02) {
            return;
        }
        let fault = self.rng.random_range(0..3);
        let Some(link) = &mut self.backups[index].link else {
            return;
        };
        let queue = queue_of(link);
        if queue.is_empty() {
            return;
        }
        self.stats.frame_faults += 1;
        match fault {
            0 => {
                queue.pop_front();
            }
            1 => {
                let copy = queue[0].clone();
                queue.push_front(copy);
            }
            _ if queue.len() >= 2 => queue.swap(0, 1),
            _ => {}
        }
    }

    fn deliver_to_backup(&mut self, index: usize) -> Result<(), Violation> {
        self.network_fault(|link| &mut link.to_backup, index);
        let sim_backup = &mut self.backups[index];
        let Some(link) = &mut sim_backup.link else {
            return Ok(());
        };
        let frame = match receive(&mut link.to_backup, &mut link.backup_reader) {
            Received::Nothing => return Ok(()),
            Received::Frame(frame) => frame,
            Received::Refused => return self.reset(index),
            Received::Undecodable => return Err(self.violation("a whole frame did not decode".into())),
        };
        match sim_backup.backup.on_frame(frame, &mut sim_backup.image) {
            Ok(Some(BackupOutput::Ack(checkpoint))) => {
                self.stats.applied += 1;
                let mut wire = Vec::new();
                let info = control::encode(&AckInfo { apply_ns: 1 });
                link.backup_writer.encode(FrameKind::Ack, self.term, checkpoint, &info, &mut wire);
                link.to_primary.push_back(wire);
                Ok(())
            }
            Ok(Some(BackupOutput::Holding(holding))) => {
                let mut wire = Vec::new();
                link.backup_writer.encode(
                    FrameKind::Holding,
                    self.term,
                    CheckpointId(0),
                    &control::encode(&holding),
                    &mut wire,
                );
                link.to_primary.push_back(wire);
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(_) => self.reset(index),
        }
    }

    fn deliver_to_primary(&mut self, index: usize) -> Result<(), Violation> {
        self.network_fault(|link| &mut link.to_primary, index);
        let Some(link) = &mut self.backups[index].link else {
            return Ok(());
        };
        let frame = match receive(&mut link.to_primary, &mut link.primary_reader) {
            Received::Nothing => return Ok(()),
            Received::Frame(frame) => frame,
            Received::Refused => return self.reset(index),
            Received::Undecodable => return Err(self.violation("a whole ack did not decode".into())),
        };
        let id = link.id;
        if frame.kind == FrameKind::Holding {
            let Ok(holding) = control::decode::<Holding>("holding", &frame.payload) else {
                return Err(self.violation("a correct backup's holding did not decode".into()));
            };
            if link.first != Some(First::AwaitingHolding) {
                return Err(self.violation("a holding the primary did not ask for".into()));
            }
            let (history, _) = self.resumed.as_ref().expect("only a resumed primary asks");
            let cut = self.replication.last_closed().map(|checkpoint| ImageState { term: self.term, checkpoint });
            let first = match history.rebase_pages(&holding, cut, PAGES) {
                Ok(Some(pages)) => {
                    self.stats.diff_rebases += 1;
                    First::Rebase { from: holding.held.expect("pages only for an image held"), pages }
                }
                Ok(None) => {
                    self.stats.whole_rebases += 1;
                    First::Whole
                }
                Err(error) => return Err(self.violation(format!("a correct backup's holding was refused: {error}"))),
            };
            link.first = Some(first);
            self.replication.add_backup(id);
            return Ok(());
        }
        match self.replication.on_ack(id, frame.checkpoint, self.now) {
            Ok(Some(held)) => self.released(held),
            Ok(None) => Ok(()),
            Err(error) => Err(self.violation(format!("a correct backup's ack was refused: {error}"))),
        }
    }

    fn crash_backup(&mut self, index: usize) -> Result<(), Violation> {
        self.stats.backup_crashes += 1;
        self.reset(index)?;
        let backup = &mut self.backups[index];
        backup.backup = Backup::new(BASE, LEN as u64).with_eager_after(self.eager_after);
        backup.image = vec![0; LEN];
        backup.crashed = true;
        Ok(())
    }

    /// The primary crashed: the backup holding the newest checkpoint becomes the primary of
    /// the next term, resuming from its image and history, and the other is attached to be
    /// rebased. Returns false if no backup holds anything to resume from.
    fn promote(&mut self) -> Result<bool, Violation> {
        for index in 0..self.backups.len() {
            if let Some(link) = self.backups[index].link.take() {
                let sim_backup = &mut self.backups[index];
                sim_backup.backup.on_disconnect(&mut sim_backup.image);
                drop(link);
            }
        }
        // Usually the newest image, as the coordinator picks; sometimes any image that holds
        // every released checkpoint (a coordinator working from a stale report), so that the
        // other holder is ahead of the new primary and its own pages must be put back.
        let released = self.replication.held();
        let candidates: Vec<usize> = (0..self.backups.len())
            .filter(|&i| {
                self.backups[i]
                    .backup
                    .held_with_term()
                    .is_some_and(|(term, held)| released.is_none_or(|released| term == self.term && held >= released))
            })
            .collect();
        let held = |i: usize| self.backups[i].backup.held_with_term();
        let best = if self.rng.random_bool(0.7) {
            candidates.iter().copied().max_by_key(|&i| held(i))
        } else {
            candidates.get(self.rng.random_range(0..candidates.len().max(1))).copied()
        };
        let Some(best) = best else { return Ok(false) };
        let promoted = self.backups.remove(best);
        let (term, held) = promoted.backup.held_with_term().expect("filtered above");
        self.stats.promotions += 1;
        self.term = Term(term.0 + 1);
        self.region = promoted.image;
        self.previous.clone_from(&self.region);
        self.stream = RunsBuilder::new();
        let history = promoted.backup.history().clone();
        if history.current() != Some(ImageState { term, checkpoint: held }) {
            return Err(self.violation(format!("promoted backup's history ends at {:?}", history.current())));
        }
        self.resumed = Some((history, WrittenPages::new(LEN)));
        self.replication = Replication::new(
            self.term,
            CommitPolicy::Epoch { interval_us: 1000, max_commits: 0 },
            self.backups.len(),
            held.next(),
            self.now,
        );
        for backup in &mut self.backups {
            backup.crashed = false;
        }
        for index in 0..self.backups.len() {
            self.connect(index);
        }
        Ok(true)
    }

    /// Every backup's image, with the open checkpoint undone as a cut stream would, is exactly
    /// the checkpoint it holds.
    fn check_images(&self) -> Result<(), Violation> {
        let zeros = vec![0; LEN];
        for (index, backup) in self.backups.iter().enumerate() {
            let held = backup.backup.held_with_term().map(|(term, checkpoint)| ImageState { term, checkpoint });
            let expected = match held {
                None => &zeros,
                Some(state) => self
                    .snapshots
                    .get(&state)
                    .ok_or_else(|| self.violation(format!("backup {index} holds {state:?}, which was never cut")))?,
            };
            let image = if backup.backup.checkpoint_open() {
                let (mut machine, mut image) = (backup.backup.clone(), backup.image.clone());
                machine.on_disconnect(&mut image);
                std::borrow::Cow::Owned(image)
            } else {
                std::borrow::Cow::Borrowed(&backup.image)
            };
            if *image != *expected {
                let first = image.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(0);
                return Err(self.violation(format!(
                    "backup {index} image differs from {held:?} at byte {first}: a mix of checkpoints"
                )));
            }
            // A promotion into transparent mode reads only the pages the backup says it wrote.
            let mut written = vec![false; image.len().div_ceil(nonstop_proto::PAGE_SIZE)];
            backup.backup.written_pages().pages().for_each(|page| written[page] = true);
            const ZERO_PAGE: [u8; nonstop_proto::PAGE_SIZE] = [0; nonstop_proto::PAGE_SIZE];
            let unrecorded = image
                .chunks(nonstop_proto::PAGE_SIZE)
                .enumerate()
                .find(|(page, bytes)| !written[*page] && *bytes != &ZERO_PAGE[..bytes.len()]);
            if let Some((page, _)) = unrecorded {
                return Err(self.violation(format!(
                    "backup {index} page {page} holds data its record of written pages leaves out"
                )));
            }
        }
        Ok(())
    }

    fn check_primary_crash(&self) -> Result<(), Violation> {
        let Some(released) = self.replication.held() else {
            return Ok(());
        };
        let best = self
            .backups
            .iter()
            .filter_map(|b| b.backup.held_with_term())
            .filter(|(term, _)| *term == self.term)
            .map(|(_, held)| held)
            .max();
        let all_crashed = self.backups.iter().all(|b| b.crashed);
        if best.is_none_or(|best| best < released) && !all_crashed {
            return Err(self.violation(format!(
                "primary crashed after releasing {released}, but the best surviving backup holds {best:?}: acknowledged commits lost"
            )));
        }
        Ok(())
    }

    fn run(mut self, steps: usize) -> Result<SimStats, Violation> {
        for index in 0..self.backups.len() {
            self.connect(index);
        }
        let crash_primary_at = self.rng.random_bool(0.5).then(|| self.rng.random_range(1..steps));
        let promote = self.backups.len() == 2 && self.rng.random_bool(0.7);
        let mut crash_primary_at = crash_primary_at;
        for step in 0..steps {
            self.step = step;
            self.now = Nanos(self.now.0 + self.rng.random_range(1..200_000));
            if crash_primary_at == Some(step) {
                self.stats.primary_crashes += 1;
                self.check_primary_crash()?;
                if !(promote && self.term == Term(1) && self.promote()?) {
                    return Ok(self.stats);
                }
                // The new primary may crash too, later in the run.
                crash_primary_at = self.rng.random_bool(0.5).then(|| self.rng.random_range(step..steps));
            }
            let index = self.rng.random_range(0..self.backups.len());
            match self.rng.random_range(0..100) {
                0..30 => self.transaction(),
                30..35 if self.protocol == UpdateProtocol::Au => self.ship_stream(),
                35..45 => self.cut(),
                45..70 => self.deliver_to_backup(index)?,
                70..90 => self.deliver_to_primary(index)?,
                90..92 => self.reset(index)?,
                92 => self.crash_backup(index)?,
                _ => {
                    if self.backups[index].link.is_none() {
                        self.connect(index);
                    }
                }
            }
            self.check_images()?;
        }
        Ok(self.stats)
    }
}

/// Runs one seeded simulation of `steps` steps.
///
/// ```
/// let stats = nonstop_sim::run_seed(7, 2000).unwrap();
/// assert!(stats.checkpoints > 0);
/// ```
pub fn run_seed(seed: u64, steps: usize) -> Result<SimStats, Violation> {
    Sim::new(seed).run(steps)
}
