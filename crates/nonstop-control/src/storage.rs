//! The Raft log in memory, with compaction behind a snapshot of the cluster state.
//!
//! raft-rs's `MemStorage` keeps every entry and its snapshots carry no data, so a log that
//! grows with every lease grant would grow forever. [`ControlStorage`] keeps the entries after
//! the last snapshot, and a bounded tail of those before it; the snapshot carries the
//! [`ClusterState`](crate::ClusterState) at its index (a few hundred bytes), which is what a
//! follower receives once it lags past the tail. The tail is why a follower a few entries
//! behind at a compaction (a lost message, a short pause) is sent those entries rather than
//! the whole state: for an active service's order, a snapshot means a state transfer of the
//! service's state (etcd keeps such a tail for the same reason).

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[derive(Default)]
struct Inner {
    hard_state: HardState,
    conf_state: ConfState,
    /// The last snapshot: index, term, configuration and the cluster state as data.
    snapshot: Snapshot,
    /// Entries after `base`, contiguous: the tail kept behind the snapshot, then those after it.
    entries: Vec<Entry>,
    /// Index and term of the entry just before `entries[0]`: the snapshot's, or the last entry
    /// a compaction dropped ([`ControlStorage::compact`]). Never past the snapshot's index.
    base: (u64, u64),
    /// A peer asked for the snapshot was not among its members (it joined after it was taken):
    /// the next compaction must not wait for its usual count of entries.
    snapshot_wanted: bool,
}

impl Inner {
    fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn last_index(&self) -> u64 {
        self.base.0 + self.entries.len() as u64
    }

    /// The entry at `index`, if it is kept.
    fn entry(&self, index: u64) -> Option<&Entry> {
        let offset = index.checked_sub(self.base.0 + 1)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }
}

/// Shared handle to the node's in-memory Raft log (cloned into the `RawNode`).
#[derive(Clone, Default)]
pub struct ControlStorage {
    inner: Arc<RwLock<Inner>>,
}

impl ControlStorage {
    /// An empty log with the voters `voters`.
    pub fn new(voters: Vec<u64>) -> ControlStorage {
        let storage = ControlStorage::default();
        storage.write().conf_state = ConfState::from((voters.clone(), vec![]));
        storage.write().snapshot.mut_metadata().set_conf_state(ConfState::from((voters, vec![])));
        storage
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends entries, replacing any from the first one's index on.
    pub fn append(&self, entries: &[Entry]) -> Result<(), String> {
        let Some(first) = entries.first() else { return Ok(()) };
        let mut inner = self.write();
        let (snapshot_index, last) = (inner.snapshot_index(), inner.last_index());
        // Entries up to the snapshot are applied: none replaces them.
        if first.index <= snapshot_index || first.index > last + 1 {
            return Err(format!("entries from index {} do not follow the log ({snapshot_index}, {last}]", first.index));
        }
        if entries.windows(2).any(|pair| pair[1].index != pair[0].index + 1) {
            return Err("entries are not contiguous".into());
        }
        let keep = (first.index - inner.base.0 - 1) as usize;
        inner.entries.truncate(keep);
        inner.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Sets the hard state.
    pub fn set_hard_state(&self, hard_state: HardState) {
        self.write().hard_state = hard_state;
    }

    /// Raises the commit index.
    pub fn set_commit(&self, commit: u64) -> HardState {
        let mut inner = self.write();
        inner.hard_state.commit = inner.hard_state.commit.max(commit);
        inner.hard_state.clone()
    }

    /// The members as a membership change made them; later snapshots record them.
    pub fn set_conf_state(&self, conf_state: ConfState) {
        self.write().conf_state = conf_state;
    }

    /// Replaces the log by `snapshot` (a leader's, or this node's own at restart).
    pub fn apply_snapshot(&self, snapshot: Snapshot) {
        let mut inner = self.write();
        let metadata = snapshot.get_metadata();
        inner.hard_state.commit = inner.hard_state.commit.max(metadata.index);
        inner.hard_state.term = inner.hard_state.term.max(metadata.term);
        inner.conf_state = metadata.get_conf_state().clone();
        // Entries after the snapshot that agree with it could be kept; a snapshot only comes
        // when they are missing, so none are.
        inner.entries.clear();
        inner.base = (metadata.index, metadata.term);
        inner.snapshot = snapshot;
    }

    /// Takes `data` (the cluster state at `index`, applied) as the snapshot that stands for the
    /// entries up to `index`, and drops those entries but the last `catch_up` of them, which a
    /// follower a little behind is still sent. Returns the snapshot.
    pub fn compact(&self, index: u64, data: Vec<u8>, catch_up: u64) -> Option<Snapshot> {
        let mut inner = self.write();
        let snapshot_index = inner.snapshot_index();
        if index <= snapshot_index || index > inner.last_index() {
            return None;
        }
        let term = inner.entry(index)?.term;
        let mut snapshot = Snapshot { data: data.into(), ..Default::default() };
        let metadata = snapshot.mut_metadata();
        metadata.index = index;
        metadata.term = term;
        metadata.set_conf_state(inner.conf_state.clone());
        let base = index.saturating_sub(catch_up);
        if let Some(term) = inner.entry(base).map(|entry| entry.term) {
            let dropped = (base - inner.base.0) as usize;
            inner.entries.drain(..dropped);
            inner.base = (base, term);
        }
        inner.snapshot = snapshot.clone();
        inner.snapshot_wanted = false;
        Some(snapshot)
    }

    /// Whether a peer needs a snapshot newer than the last one ([`raft::Storage::snapshot`]):
    /// compact at the next chance.
    pub fn snapshot_wanted(&self) -> bool {
        self.read().snapshot_wanted
    }

    /// The snapshot, the hard state and the entries after the snapshot (not the tail kept
    /// behind it: a restarted node needs none), for rewriting the durable log.
    pub fn contents(&self) -> (Snapshot, HardState, Vec<Entry>) {
        let inner = self.read();
        let after = (inner.snapshot_index() - inner.base.0) as usize;
        (inner.snapshot.clone(), inner.hard_state.clone(), inner.entries[after..].to_vec())
    }

    /// Index of the last snapshot.
    pub fn snapshot_index(&self) -> u64 {
        self.read().snapshot_index()
    }
}

impl raft::Storage for ControlStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let inner = self.read();
        Ok(RaftState { hard_state: inner.hard_state.clone(), conf_state: inner.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let inner = self.read();
        let base = inner.base.0;
        if low <= base {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > inner.last_index() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let from = (low - base - 1) as usize;
        let to = (high - base - 1) as usize;
        let mut entries = inner.entries[from..to].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let inner = self.read();
        if index == inner.base.0 {
            return Ok(inner.base.1);
        }
        if index < inner.base.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        inner.entry(index).map(|entry| entry.term).ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read().base.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read().last_index())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let mut inner = self.write();
        let conf = inner.snapshot.get_metadata().get_conf_state();
        let members = [&conf.voters, &conf.learners, &conf.voters_outgoing, &conf.learners_next];
        // A peer restores only a snapshot whose members include it (raft-rs ignores any other,
        // and the peer would be sent it again for ever): one that joined after the last
        // compaction waits for the next, which comes at once.
        if !members.iter().any(|ids| ids.contains(&to)) {
            inner.snapshot_wanted = true;
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        if inner.snapshot_index() >= request_index {
            Ok(inner.snapshot.clone())
        } else {
            Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, ..Default::default() }
    }

    #[test]
    fn compaction_keeps_terms_at_the_boundary_and_refuses_gaps() {
        let storage = ControlStorage::new(vec![1, 2, 3]);
        storage.append(&[entry(1, 1), entry(2, 1), entry(3, 2), entry(4, 2)]).unwrap();
        assert!(storage.append(&[entry(7, 2)]).is_err(), "a gap is refused");
        let snapshot = storage.compact(3, b"state".to_vec(), 0).unwrap();
        assert_eq!((snapshot.get_metadata().index, snapshot.get_metadata().term), (3, 2));
        assert_eq!(storage.first_index().unwrap(), 4);
        assert_eq!(storage.term(3).unwrap(), 2, "the term before the first entry stays known");
        assert!(storage.term(2).is_err());
        assert!(storage.entries(3, 5, None, GetEntriesContext::empty(false)).is_err());
        assert_eq!(storage.entries(4, 5, None, GetEntriesContext::empty(false)).unwrap().len(), 1);
        assert_eq!(&storage.snapshot(3, 2).unwrap().data[..], b"state");
        // Overwriting the tail after a compaction.
        storage.append(&[entry(4, 3), entry(5, 3)]).unwrap();
        assert_eq!(storage.last_index().unwrap(), 5);
        assert_eq!(storage.term(4).unwrap(), 3);
        // A peer that joined after the snapshot was taken waits for the next one, at once.
        assert!(storage.snapshot(3, 9).is_err());
        assert!(storage.snapshot_wanted());
        storage.set_conf_state(ConfState::from((vec![1, 2, 3], vec![9])));
        storage.compact(5, b"later".to_vec(), 0).unwrap();
        assert!(!storage.snapshot_wanted());
        assert_eq!(&storage.snapshot(5, 9).unwrap().data[..], b"later");
    }

    #[test]
    fn a_compaction_keeps_a_tail_for_followers_a_little_behind() {
        let storage = ControlStorage::new(vec![1, 2, 3]);
        let log: Vec<Entry> = (1..=10).map(|index| entry(index, 1 + index / 5)).collect();
        storage.append(&log).unwrap();
        let snapshot = storage.compact(8, b"state".to_vec(), 3).unwrap();
        assert_eq!((snapshot.get_metadata().index, snapshot.get_metadata().term), (8, 2));
        // Entries 6 to 10 are still sent; 5 and before only by the snapshot.
        assert_eq!(storage.first_index().unwrap(), 6);
        assert_eq!(storage.term(5).unwrap(), 2, "the term before the tail's first entry stays known");
        assert!(storage.term(4).is_err());
        let sent = storage.entries(6, 11, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(sent.iter().map(|e| e.index).collect::<Vec<_>>(), vec![6, 7, 8, 9, 10]);
        assert!(storage.entries(5, 11, None, GetEntriesContext::empty(false)).is_err());
        assert_eq!(&storage.snapshot(5, 2).unwrap().data[..], b"state");
        // Applied entries are never replaced, tail or not; those after the snapshot may be.
        assert!(storage.append(&[entry(7, 3)]).is_err());
        storage.append(&[entry(9, 3)]).unwrap();
        assert_eq!((storage.last_index().unwrap(), storage.term(9).unwrap()), (9, 3));
        // A restarted node needs the entries after its snapshot only.
        let (_, _, after) = storage.contents();
        assert_eq!(after.iter().map(|e| e.index).collect::<Vec<_>>(), vec![9]);
        // A tail longer than the log drops nothing; the next compaction moves it on.
        storage.compact(9, b"later".to_vec(), 100).unwrap();
        assert_eq!(storage.first_index().unwrap(), 6);
        assert!(storage.compact(9, b"again".to_vec(), 1).is_none(), "the snapshot stands there already");
        // A leader's snapshot replaces the log, tail included.
        let mut newer = Snapshot::default();
        newer.mut_metadata().index = 20;
        newer.mut_metadata().term = 4;
        storage.apply_snapshot(newer);
        assert_eq!((storage.first_index().unwrap(), storage.term(20).unwrap()), (21, 4));
        assert!(storage.term(9).is_err());
    }
}
