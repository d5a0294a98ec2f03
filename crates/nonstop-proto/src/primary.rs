//! The primary's replication bookkeeping: checkpoint numbers, acknowledgements, output commit.
//!
//! [`Replication`] decides nothing about bytes; it says which checkpoint a commit joins, when
//! the next checkpoint is due under the [`CommitPolicy`], which backups need a whole image, and
//! which checkpoint every backup holds — the point up to which replies may be released.

use crate::control::{Close, CloseKind};
use crate::{CheckpointId, CommitPolicy, Nanos, Term};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use thiserror::Error;

/// Identifies one backup connection of a primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupId(pub u32);

/// Returned by a commit: the reply to that transaction may leave once every backup holds
/// `checkpoint`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket {
    /// The checkpoint that contains the transaction.
    pub checkpoint: CheckpointId,
}

/// An acknowledgement that contradicts what the primary sent.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AckError {
    /// From a backup this primary does not know.
    #[error("acknowledgement from unknown backup {0:?}")]
    UnknownBackup(BackupId),
    /// For a checkpoint that was never closed.
    #[error("backup {backup:?} acknowledged checkpoint {acked} but only {closed:?} was closed: the backup is faulty")]
    FromTheFuture {
        /// The backup.
        backup: BackupId,
        /// What it acknowledged.
        acked: u64,
        /// The last closed checkpoint.
        closed: Option<u64>,
    },
    /// Not after the previous acknowledgement, or before the backup's first image.
    #[error("backup {backup:?} acknowledged checkpoint {acked} out of order (expected {expected})")]
    OutOfOrder {
        /// The backup.
        backup: BackupId,
        /// What it acknowledged.
        acked: u64,
        /// The checkpoint expected next from it.
        expected: u64,
    },
}

#[derive(Clone, Debug)]
struct BackupProgress {
    /// The checkpoint whose whole image this backup receives first; `None` until the next cut.
    first: Option<CheckpointId>,
    acked: Option<CheckpointId>,
    /// Since when the backup owes an acknowledgement and has not made progress (`None`: it
    /// owes nothing).
    waiting_since: Option<Nanos>,
}

/// A checkpoint just cut by [`Replication::cut`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Its number.
    pub checkpoint: CheckpointId,
    /// Backups that must receive the whole image at this checkpoint instead of its changes.
    pub full_image_for: Vec<BackupId>,
    /// The held checkpoint, if cutting advanced it (no backups required, or a lease that
    /// releases what is cut): the driver must publish it like an acknowledgement's.
    pub held: Option<CheckpointId>,
}

/// What one backup connection has been sent of the open checkpoint.
///
/// Under AU, runs of the open checkpoint are streamed before its close; the close must count
/// them, and a backup still waiting for its first whole image must receive none of them (the
/// image will contain them).
///
/// ```
/// use nonstop_proto::primary::LinkProgress;
/// use nonstop_proto::control::CloseKind;
/// let mut link = LinkProgress::new();
/// assert!(!link.wants_stream());
/// let close = link.close(1, 4096, CloseKind::Whole);
/// assert!(close.kind == CloseKind::Whole && link.wants_stream());
/// link.streamed(2, 100);
/// let close = link.close(1, 10, CloseKind::Changes);
/// assert_eq!((close.runs_frames, close.run_bytes), (3, 110));
/// ```
#[derive(Clone, Debug)]
pub struct LinkProgress {
    awaiting_image: bool,
    streamed_frames: u32,
    streamed_bytes: u64,
}

impl Default for LinkProgress {
    fn default() -> Self {
        LinkProgress::new()
    }
}

impl LinkProgress {
    /// A new connection: it waits for a whole image.
    pub fn new() -> LinkProgress {
        LinkProgress { awaiting_image: true, streamed_frames: 0, streamed_bytes: 0 }
    }

    /// Whether streamed runs of the open checkpoint go to this backup.
    pub fn wants_stream(&self) -> bool {
        !self.awaiting_image
    }

    /// Records `frames` runs frames carrying `bytes` region bytes streamed to this backup.
    pub fn streamed(&mut self, frames: usize, bytes: u64) {
        debug_assert!(self.wants_stream());
        self.streamed_frames += frames as u32;
        self.streamed_bytes += bytes;
    }

    /// The close of the open checkpoint after `frames` more runs frames of `bytes` bytes; a
    /// first checkpoint (a whole image, a completed pre-copy, a rebase) counts only those, and
    /// opens the stream to this backup. Resets the counts for the next checkpoint.
    pub fn close(&mut self, frames: usize, bytes: u64, kind: CloseKind) -> Close {
        let close = if kind.is_first() {
            Close { runs_frames: frames as u32, run_bytes: bytes, kind }
        } else {
            Close { runs_frames: self.streamed_frames + frames as u32, run_bytes: self.streamed_bytes + bytes, kind }
        };
        self.awaiting_image &= !kind.is_first();
        self.streamed_frames = 0;
        self.streamed_bytes = 0;
        close
    }
}

/// How a primary brings a newly attached backup to its checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AttachPayload {
    /// A spare: pages are copied while transactions run (iterative pre-copy), then a
    /// checkpoint completes them. The backup's image stops being a checkpoint at the first
    /// round, which costs nothing when it held no copy anyone counts on.
    #[default]
    PreCopy,
    /// A holder whose image must stay a checkpoint until the new one is whole (after a
    /// promotion it may be the last copy of released replies): the primary asks what it holds,
    /// and the first checkpoint carries the pages in which the two images can differ
    /// ([`crate::history::ImageHistory::rebase_pages`]), or the whole image if that is not
    /// known; the backup stages them and applies them at the close, or not at all.
    Rebase,
}

/// Pages copied per pre-copy batch (transactions are held off while a batch is copied).
pub const PRECOPY_BATCH_PAGES: usize = 64;

/// The decisions of an iterative pre-copy: after each round, whether to copy again the pages
/// written meanwhile or to let the next checkpoint complete the image.
///
/// ```
/// use nonstop_proto::primary::PreCopyRounds;
/// let mut rounds = PreCopyRounds::default();
/// assert!(rounds.another_round(10_000), "much left, shrinking");
/// assert!(rounds.another_round(3_000));
/// assert!(!rounds.another_round(3_000), "no longer shrinking: the write rate matches the copy rate");
/// assert!(!PreCopyRounds::default().another_round(100), "little left: the checkpoint carries it");
/// ```
#[derive(Clone, Debug, Default)]
pub struct PreCopyRounds {
    rounds: u32,
    last_pending: Option<usize>,
}

impl PreCopyRounds {
    /// Pre-copy ends once at most this many pages wait to be copied again.
    pub const FINAL_PAGES: usize = 256;
    /// Pre-copy ends after this many rounds, converged or not.
    pub const MAX_ROUNDS: u32 = 8;

    /// A round just ended with `pending` pages written since it began: whether to run another.
    /// Stop when what is left is small, when it stops shrinking, or after enough rounds.
    pub fn another_round(&mut self, pending: usize) -> bool {
        self.rounds += 1;
        let shrinking = self.last_pending.is_none_or(|last| pending < last);
        self.last_pending = Some(pending);
        pending > Self::FINAL_PAGES && shrinking && self.rounds < Self::MAX_ROUNDS
    }

    /// Rounds run so far.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }
}

/// Whether the control plane's record lets output leave at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protection {
    /// The record names at least the service's minimum of backups: output leaves once every
    /// required backup holds it.
    #[default]
    Enough,
    /// The record names fewer backups than the service's minimum (after a failover or a lost
    /// backup): replies are held, whatever the backups acknowledge, until enough are back.
    TooFew,
}

/// How many recent held-advances are remembered for [`Replication::held_at`].
const HELD_LOG_LIMIT: usize = 1 << 16;

/// The primary's replication state machine.
#[derive(Debug)]
pub struct Replication {
    term: Term,
    policy: CommitPolicy,
    required_backups: usize,
    first: CheckpointId,
    open: CheckpointId,
    backups: BTreeMap<BackupId, BackupProgress>,
    /// When set, exactly these backups must hold a checkpoint (the control plane's record),
    /// instead of any `required_backups` of them.
    required_set: Option<BTreeSet<BackupId>>,
    /// Whether the record names enough backups for output to leave.
    protection: Protection,
    /// With an empty required set: output may leave until this time (the control plane's
    /// lease); without one, an unprotected primary releases nothing.
    lease_until: Option<Nanos>,
    held: Option<CheckpointId>,
    held_log: VecDeque<(CheckpointId, Nanos)>,
    epoch_started: Nanos,
}

impl Replication {
    /// A primary in `term` whose first checkpoint will be `first`; replies wait for
    /// `required_backups` backups (0: unreplicated, replies are held at once).
    pub fn new(
        term: Term,
        policy: CommitPolicy,
        required_backups: usize,
        first: CheckpointId,
        now: Nanos,
    ) -> Replication {
        Replication {
            term,
            policy,
            required_backups,
            first,
            open: first,
            backups: BTreeMap::new(),
            required_set: None,
            protection: Protection::Enough,
            lease_until: None,
            held: None,
            held_log: VecDeque::new(),
            epoch_started: now,
        }
    }

    /// The primary's term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The commit policy.
    pub fn policy(&self) -> CommitPolicy {
        self.policy
    }

    /// The checkpoint that commits join now.
    pub fn open_checkpoint(&self) -> CheckpointId {
        self.open
    }

    /// The last checkpoint cut, if any.
    pub fn last_closed(&self) -> Option<CheckpointId> {
        (self.open > self.first).then(|| CheckpointId(self.open.0 - 1))
    }

    /// When the open checkpoint is due under an epoch policy (`None` under sync).
    pub fn deadline(&self) -> Option<Nanos> {
        match self.policy {
            CommitPolicy::Sync => None,
            CommitPolicy::Epoch { interval_us, .. } => Some(self.epoch_started.plus_us(interval_us)),
        }
    }

    /// Whether the open checkpoint, holding `commits` commits so far, should be cut now.
    pub fn cut_due(&self, now: Nanos, commits: u64) -> bool {
        match self.policy {
            CommitPolicy::Sync => commits > 0 || self.attaching(),
            CommitPolicy::Epoch { interval_us, max_commits } => {
                now >= self.epoch_started.plus_us(interval_us) || (max_commits > 0 && commits >= max_commits)
            }
        }
    }

    /// Whether a backup waits for its first whole image.
    pub fn attaching(&self) -> bool {
        self.backups.values().any(|b| b.first.is_none())
    }

    /// Registers a new backup; it receives a whole image at the next cut.
    pub fn add_backup(&mut self, id: BackupId) {
        self.backups.insert(id, BackupProgress { first: None, acked: None, waiting_since: None });
    }

    /// Makes exactly `backups` the ones whose acknowledgement releases output, as the control
    /// plane recorded them; other links (spares catching up) are followed but not waited for.
    /// From then on output also needs a lease ([`Replication::set_lease`]); an empty set
    /// releases what is cut while the lease lasts.
    pub fn set_required(&mut self, backups: BTreeSet<BackupId>, now: Nanos) -> Option<CheckpointId> {
        self.set_required_with(backups, Protection::Enough, now)
    }

    /// Like [`Replication::set_required`], with whether the record names enough backups for
    /// output to leave at all: with [`Protection::TooFew`] nothing more is released.
    pub fn set_required_with(
        &mut self,
        backups: BTreeSet<BackupId>,
        protection: Protection,
        now: Nanos,
    ) -> Option<CheckpointId> {
        self.required_set = Some(backups);
        self.protection = protection;
        self.advance_held(now)
    }

    /// With an empty required set, output may leave until `until` (`None`: revoked). Returns
    /// the new held checkpoint if the lease releases checkpoints already cut.
    pub fn set_lease(&mut self, until: Option<Nanos>, now: Nanos) -> Option<CheckpointId> {
        self.lease_until = until;
        self.advance_held(now)
    }

    /// Forgets a backup whose connection failed. Returns the new held checkpoint if forgetting
    /// the slowest backup lets it advance.
    pub fn backup_lost(&mut self, id: BackupId, now: Nanos) -> Option<CheckpointId> {
        self.backups.remove(&id);
        self.advance_held(now)
    }

    /// The last checkpoint `id` acknowledged.
    pub fn acked(&self, id: BackupId) -> Option<CheckpointId> {
        self.backups.get(&id).and_then(|b| b.acked)
    }

    /// Backups currently following.
    pub fn backup_count(&self) -> usize {
        self.backups.len()
    }

    /// Closes the open checkpoint and opens the next.
    pub fn cut(&mut self, now: Nanos) -> Cut {
        let checkpoint = self.open;
        self.open = checkpoint.next();
        self.epoch_started = now;
        let mut full_image_for = Vec::new();
        for (id, progress) in &mut self.backups {
            if progress.first.is_none() {
                progress.first = Some(checkpoint);
                full_image_for.push(*id);
            }
            // A backup that owed nothing owes this checkpoint from now on.
            progress.waiting_since.get_or_insert(now);
        }
        let held = if self.required_set.is_none() && self.required_backups == 0 {
            self.set_held(checkpoint, now);
            Some(checkpoint)
        } else {
            self.advance_held(now)
        };
        Cut { checkpoint, full_image_for, held }
    }

    /// A backup says it holds `checkpoint`. Returns the new held checkpoint if it advanced.
    pub fn on_ack(
        &mut self,
        id: BackupId,
        checkpoint: CheckpointId,
        now: Nanos,
    ) -> Result<Option<CheckpointId>, AckError> {
        let closed = self.last_closed();
        let progress = self.backups.get_mut(&id).ok_or(AckError::UnknownBackup(id))?;
        if closed.is_none_or(|closed| checkpoint > closed) {
            return Err(AckError::FromTheFuture { backup: id, acked: checkpoint.0, closed: closed.map(|c| c.0) });
        }
        let expected = match (progress.acked, progress.first) {
            (Some(acked), _) => acked.next(),
            (None, Some(first)) => first,
            (None, None) => {
                return Err(AckError::OutOfOrder { backup: id, acked: checkpoint.0, expected: self.open.0 });
            }
        };
        if checkpoint != expected {
            return Err(AckError::OutOfOrder { backup: id, acked: checkpoint.0, expected: expected.0 });
        }
        progress.acked = Some(checkpoint);
        progress.waiting_since = (checkpoint < closed.expect("checked above")).then_some(now);
        Ok(self.advance_held(now))
    }

    /// Backups that owe an acknowledgement and made no progress for `limit`: their link is as
    /// good as dead (a cut-off backup's TCP connection can stay open for minutes), and a
    /// primary that waits on them releases nothing. A backup still receiving its first, whole
    /// image is not silent: the image may take longer than the limit to cross (the attach has
    /// a deadline of its own).
    pub fn silent_backups(&self, now: Nanos, limit: Duration) -> Vec<BackupId> {
        let limit = limit.as_nanos() as u64;
        self.backups
            .iter()
            .filter(|(_, b)| b.acked.is_some())
            .filter(|(_, b)| b.waiting_since.is_some_and(|since| now.0.saturating_sub(since.0) >= limit))
            .map(|(id, _)| *id)
            .collect()
    }

    fn advance_held(&mut self, now: Nanos) -> Option<CheckpointId> {
        let all_hold = match &self.required_set {
            Some(set) => {
                // Under a control plane, output leaves only while the lease lasts: a primary
                // that was paused or cut off past it may already be deposed, and must not
                // release even what its backups acknowledged before.
                if self.lease_until.is_none_or(|until| now >= until) || self.protection == Protection::TooFew {
                    return None;
                }
                if set.is_empty() {
                    // Unprotected: what was cut may leave.
                    self.last_closed()?
                } else {
                    set.iter().map(|id| self.backups.get(id).and_then(|b| b.acked)).min().flatten()?
                }
            }
            None => {
                if self.backups.len() < self.required_backups || self.backups.is_empty() {
                    return None;
                }
                self.backups.values().map(|b| b.acked).min().flatten()?
            }
        };
        if self.held.is_some_and(|held| held >= all_hold) {
            return None;
        }
        self.set_held(all_hold, now);
        Some(all_hold)
    }

    fn set_held(&mut self, checkpoint: CheckpointId, now: Nanos) {
        self.held = Some(checkpoint);
        if self.held_log.len() == HELD_LOG_LIMIT {
            self.held_log.pop_front();
        }
        self.held_log.push_back((checkpoint, now));
    }

    /// The highest checkpoint every required backup holds: replies of commits up to it may leave.
    pub fn held(&self) -> Option<CheckpointId> {
        self.held
    }

    /// Whether the reply of `ticket` may leave.
    pub fn is_held(&self, ticket: Ticket) -> bool {
        self.held.is_some_and(|held| held >= ticket.checkpoint)
    }

    /// When `checkpoint` became held, if it did recently enough to be remembered.
    pub fn held_at(&self, checkpoint: CheckpointId) -> Option<Nanos> {
        let index = self.held_log.partition_point(|(held, _)| *held < checkpoint);
        self.held_log.get(index).map(|(_, at)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: CommitPolicy = CommitPolicy::Epoch { interval_us: 1000, max_commits: 0 };

    #[test]
    fn a_required_set_waits_for_its_members_only_and_a_lost_member_stalls_output() {
        let mut r = Replication::new(Term(1), EPOCH, 0, CheckpointId(1), Nanos(0));
        r.set_lease(Some(Nanos(1_000)), Nanos(0));
        r.add_backup(BackupId(1));
        r.add_backup(BackupId(2));
        assert_eq!(r.set_required([BackupId(1)].into(), Nanos(0)), None);
        let first = r.cut(Nanos(1)).checkpoint;
        assert_eq!(r.held(), None, "a required set never releases at the cut");
        r.on_ack(BackupId(2), first, Nanos(2)).unwrap();
        assert_eq!(r.held(), None, "the spare's ack does not count");
        assert_eq!(r.on_ack(BackupId(1), first, Nanos(3)).unwrap(), Some(first));
        let second = r.cut(Nanos(4)).checkpoint;
        assert_eq!(r.backup_lost(BackupId(1), Nanos(5)), None);
        r.on_ack(BackupId(2), second, Nanos(6)).unwrap();
        assert_eq!(r.held(), Some(first), "losing a required backup stalls output until the set changes");
    }

    #[test]
    fn too_few_backups_in_the_record_hold_output_whatever_is_acknowledged() {
        let mut r = Replication::new(Term(2), EPOCH, 0, CheckpointId(1), Nanos(0));
        r.set_lease(Some(Nanos(1_000)), Nanos(0));
        r.add_backup(BackupId(1));
        r.set_required_with([BackupId(1)].into(), Protection::TooFew, Nanos(0));
        let first = r.cut(Nanos(1)).checkpoint;
        assert_eq!(r.on_ack(BackupId(1), first, Nanos(2)).unwrap(), None, "the joining backup holds it, alone");
        assert_eq!(r.set_required_with(BTreeSet::new(), Protection::TooFew, Nanos(3)), None, "nor alone");
        let released = r.set_required_with([BackupId(1)].into(), Protection::Enough, Nanos(4));
        assert_eq!(released, Some(first), "the record names it now");
    }

    #[test]
    fn a_backup_is_silent_only_while_it_owes_an_ack_and_makes_no_progress() {
        let limit = Duration::from_nanos(100);
        let mut r = Replication::new(Term(1), EPOCH, 1, CheckpointId(1), Nanos(0));
        r.add_backup(BackupId(1));
        assert!(r.silent_backups(Nanos(10_000), limit).is_empty(), "owing nothing, an idle backup is fine");
        let first = r.cut(Nanos(10_000)).checkpoint;
        assert!(r.silent_backups(Nanos(10_099), limit).is_empty(), "the clock starts at the cut, not at the last ack");
        assert!(r.silent_backups(Nanos(10_500), limit).is_empty(), "its first, whole image may take longer than that");
        let second = r.cut(Nanos(10_050)).checkpoint;
        r.on_ack(BackupId(1), first, Nanos(10_090)).unwrap();
        assert!(r.silent_backups(Nanos(10_150), limit).is_empty(), "an ack is progress");
        assert_eq!(r.silent_backups(Nanos(10_190), limit), vec![BackupId(1)], "still owing, silent past the limit");
        r.on_ack(BackupId(1), second, Nanos(10_200)).unwrap();
        assert!(r.silent_backups(Nanos(99_999), limit).is_empty(), "caught up: owes nothing");
    }

    #[test]
    fn acknowledgements_release_nothing_once_the_lease_ran_out() {
        let mut r = Replication::new(Term(1), EPOCH, 0, CheckpointId(1), Nanos(0));
        r.set_lease(Some(Nanos(100)), Nanos(0));
        r.add_backup(BackupId(1));
        r.set_required([BackupId(1)].into(), Nanos(0));
        let first = r.cut(Nanos(1)).checkpoint;
        assert_eq!(r.on_ack(BackupId(1), first, Nanos(2)).unwrap(), Some(first));
        let second = r.cut(Nanos(3)).checkpoint;
        // A pause: the acknowledgement is processed after the lease ended.
        assert_eq!(r.on_ack(BackupId(1), second, Nanos(150)).unwrap(), None);
        assert_eq!(r.held(), Some(first));
        assert_eq!(r.set_lease(Some(Nanos(400)), Nanos(160)), Some(second), "a new lease releases it");
    }

    #[test]
    fn an_unprotected_primary_releases_only_under_its_lease() {
        let mut r = Replication::new(Term(2), EPOCH, 0, CheckpointId(1), Nanos(0));
        r.set_required(BTreeSet::new(), Nanos(0));
        let first = r.cut(Nanos(1)).checkpoint;
        assert_eq!(r.held(), None, "no lease, no output");
        assert_eq!(r.set_lease(Some(Nanos(100)), Nanos(2)), Some(first));
        let cut = r.cut(Nanos(50));
        assert_eq!(cut.held, Some(cut.checkpoint), "the cut says held moved, for the driver to publish");
        let second = cut.checkpoint;
        assert_eq!(r.held(), Some(second));
        r.cut(Nanos(100));
        assert_eq!(r.held(), Some(second), "an expired lease releases nothing");
    }

    #[test]
    fn held_waits_for_every_backup_and_never_regresses() {
        let mut r = Replication::new(Term(1), EPOCH, 2, CheckpointId(1), Nanos(0));
        r.add_backup(BackupId(1));
        r.add_backup(BackupId(2));
        let ticket = Ticket { checkpoint: r.open_checkpoint() };
        let cut = r.cut(Nanos(10));
        assert_eq!(cut.checkpoint, CheckpointId(1));
        assert_eq!(cut.full_image_for, vec![BackupId(1), BackupId(2)]);
        assert_eq!(r.on_ack(BackupId(1), CheckpointId(1), Nanos(20)).unwrap(), None);
        assert!(!r.is_held(ticket));
        assert_eq!(r.on_ack(BackupId(2), CheckpointId(1), Nanos(30)).unwrap(), Some(CheckpointId(1)));
        assert!(r.is_held(ticket));
        assert_eq!(r.held_at(CheckpointId(1)), Some(Nanos(30)));
        // A third backup joins: held stays where it was until the newcomer catches up.
        r.add_backup(BackupId(3));
        r.cut(Nanos(40));
        r.on_ack(BackupId(1), CheckpointId(2), Nanos(41)).unwrap();
        r.on_ack(BackupId(2), CheckpointId(2), Nanos(42)).unwrap();
        assert_eq!(r.held(), Some(CheckpointId(1)));
        assert_eq!(r.on_ack(BackupId(3), CheckpointId(2), Nanos(43)).unwrap(), Some(CheckpointId(2)));
    }

    #[test]
    fn losing_the_last_backup_stops_output() {
        let mut r = Replication::new(Term(1), CommitPolicy::Sync, 1, CheckpointId(1), Nanos(0));
        r.add_backup(BackupId(1));
        r.cut(Nanos(1));
        assert_eq!(r.backup_lost(BackupId(1), Nanos(2)), None);
        let ticket = Ticket { checkpoint: r.open_checkpoint() };
        r.cut(Nanos(3));
        assert!(!r.is_held(ticket));
    }

    #[test]
    fn bad_acks_are_refused() {
        let mut r = Replication::new(Term(1), EPOCH, 1, CheckpointId(1), Nanos(0));
        r.add_backup(BackupId(1));
        assert!(matches!(r.on_ack(BackupId(1), CheckpointId(1), Nanos(0)), Err(AckError::FromTheFuture { .. })));
        r.cut(Nanos(1));
        r.cut(Nanos(2));
        assert!(matches!(r.on_ack(BackupId(1), CheckpointId(2), Nanos(3)), Err(AckError::OutOfOrder { .. })));
        assert!(matches!(r.on_ack(BackupId(9), CheckpointId(1), Nanos(3)), Err(AckError::UnknownBackup(_))));
        r.on_ack(BackupId(1), CheckpointId(1), Nanos(3)).unwrap();
        assert!(matches!(r.on_ack(BackupId(1), CheckpointId(1), Nanos(3)), Err(AckError::OutOfOrder { .. })));
    }

    #[test]
    fn epoch_deadline_and_commit_limit() {
        let policy = CommitPolicy::Epoch { interval_us: 100, max_commits: 2 };
        let mut r = Replication::new(Term(1), policy, 0, CheckpointId(1), Nanos(0));
        assert!(!r.cut_due(Nanos(99_999), 1));
        assert!(r.cut_due(Nanos(100_000), 0));
        assert!(r.cut_due(Nanos(0), 2));
        let ticket = Ticket { checkpoint: r.open_checkpoint() };
        r.cut(Nanos(5));
        assert!(r.is_held(ticket), "with no backups required, a cut is held at once");
    }
}
