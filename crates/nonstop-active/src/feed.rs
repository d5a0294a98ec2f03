//! What a replica executes of what its order group delivers, and how it catches up by state
//! transfer when the group could not give it every entry.
//!
//! Normally a replica executes every delivered entry, in order: each starts at the position
//! (count of requests delivered before it) where the one before ended. A replica that fell
//! behind the group's compacted log is sent the order's state instead of the entries it
//! missed ([`crate::order::Order`] as a Raft snapshot): its service state is now behind the
//! order, and nothing it holds can rebuild it. It must take a live replica's state, copied at a
//! point of the order at least as far as the snapshot's, and then execute what follows that
//! point. Meanwhile the order goes on, so the entries delivered after the snapshot are kept
//! until the state arrives; those the transferred state already covers are dropped then, and so
//! are any that arrive later still (the donor may be ahead of this replica's log).
//!
//! [`Feed`] is that bookkeeping and nothing else, so that the node's executor and the
//! deterministic simulator run the same code.
//!
//! ```
//! use nonstop_active::feed::Feed;
//! use nonstop_active::order::{Delivered, Request};
//! let entry = |first: u64, requests: u64| Delivered {
//!     index: first + 1,
//!     first,
//!     requests: (0..requests).map(|n| Request { client: 1, number: first + n + 1, refused: 0, body: vec![] }).collect(),
//!     turned_away: vec![],
//!     time_ms: 0,
//!     digests: vec![],
//!     closes: None,
//!     leads: vec![],
//!     grant_leader: None,
//! };
//! let mut feed = Feed::new(1 << 20);
//! assert_eq!(feed.delivered(entry(0, 2)).unwrap().len(), 1);
//! // Fell behind: the snapshot ended at position 10; entries after it wait for the state.
//! feed.restored(10);
//! assert!(feed.delivered(entry(10, 3)).unwrap().is_empty());
//! assert!(feed.delivered(entry(13, 1)).unwrap().is_empty());
//! // A donor's state at position 13 arrives: only the entry after it is left to execute.
//! let rest = feed.transferred(13).unwrap();
//! assert_eq!(rest.iter().map(|e| e.first).collect::<Vec<_>>(), vec![13]);
//! assert!(feed.is_following());
//! ```

use crate::order::Delivered;
use std::collections::VecDeque;
use thiserror::Error;

/// Why a replica's state no longer follows the order.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FeedError {
    /// An entry does not start where the executed ones ended: an entry was lost between the
    /// group and the executor.
    #[error("an entry starts at position {got} of the order, where {expected} was next")]
    Gap {
        /// The position the next entry should start at.
        expected: u64,
        /// Where it starts.
        got: u64,
    },
    /// A transferred state ends inside an entry: the donor did not stop between two entries.
    #[error("a transferred state at position {position} ends inside the entry from {first} to {end}")]
    Inside {
        /// The transferred state's position.
        position: u64,
        /// The entry's first position.
        first: u64,
        /// The entry's end.
        end: u64,
    },
    /// A transferred state is older than the snapshot: the entries between are gone.
    #[error("a transferred state at position {position} is behind the order's snapshot at {from}")]
    Behind {
        /// The transferred state's position.
        position: u64,
        /// The snapshot's position.
        from: u64,
    },
    /// A transferred state arrived while none was awaited.
    #[error("a transferred state arrived while the replica was following the order")]
    Unasked,
}

/// What a buffered request costs beyond its body, for the bound.
const REQUEST_OVERHEAD: usize = 32;

/// Where a replica's execution stands against the order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tracking {
    /// Executing every entry: the next starts at `next`. Entries that end at or before
    /// `transferred` were covered by a transferred state, and are skipped.
    Following { next: u64, transferred: u64 },
    /// Waiting for a state at position `from` or later; the entries since, in order.
    Awaiting { from: u64, buffered: VecDeque<Delivered>, bytes: usize },
}

/// One replica's feed of entries to its executor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feed {
    tracking: Tracking,
    /// The most request bytes buffered while awaiting a transfer.
    max_buffered_bytes: usize,
}

impl Feed {
    /// A replica executing from the start of the order. At most `max_buffered_bytes` of
    /// requests wait for a state transfer; past that they are dropped, and the state awaited
    /// must cover them ([`Feed::awaiting_from`] moves on).
    pub fn new(max_buffered_bytes: usize) -> Feed {
        Feed { tracking: Tracking::Following { next: 0, transferred: 0 }, max_buffered_bytes }
    }

    /// True when the replica's state follows the order (not awaiting a transfer).
    pub fn is_following(&self) -> bool {
        matches!(self.tracking, Tracking::Following { .. })
    }

    /// The position a transferred state must reach at least, while one is awaited.
    pub fn awaiting_from(&self) -> Option<u64> {
        match self.tracking {
            Tracking::Awaiting { from, .. } => Some(from),
            Tracking::Following { .. } => None,
        }
    }

    /// The position of the next request to execute, once following.
    pub fn next(&self) -> Option<u64> {
        match self.tracking {
            Tracking::Following { next, .. } => Some(next),
            Tracking::Awaiting { .. } => None,
        }
    }

    /// The group replaced the order's state by a snapshot ending at position `from`: the
    /// replica's state must be transferred. Entries buffered for an earlier transfer are
    /// dropped (the snapshot covers them).
    pub fn restored(&mut self, from: u64) {
        self.tracking = Tracking::Awaiting { from, buffered: VecDeque::new(), bytes: 0 };
    }

    /// The group delivered `entry`: the entries to execute now (none while awaiting a
    /// transfer, or for an entry a transferred state covers).
    pub fn delivered(&mut self, entry: Delivered) -> Result<Vec<Delivered>, FeedError> {
        let end = entry.first + entry.requests.len() as u64;
        match &mut self.tracking {
            Tracking::Following { transferred, .. } if end <= *transferred && entry.first < *transferred => Ok(vec![]),
            Tracking::Following { next, .. } => {
                if entry.first != *next {
                    return Err(FeedError::Gap { expected: *next, got: entry.first });
                }
                *next = end;
                Ok(vec![entry])
            }
            Tracking::Awaiting { from, buffered, bytes } => {
                let expected = buffered.back().map_or(*from, |last| last.first + last.requests.len() as u64);
                if entry.first != expected {
                    return Err(FeedError::Gap { expected, got: entry.first });
                }
                *bytes += entry.requests.iter().map(|r| r.body.len() + REQUEST_OVERHEAD).sum::<usize>();
                if *bytes > self.max_buffered_bytes {
                    // The transfer is slow for the order's pace: rather than keep more, the
                    // replica asks for a state past these entries (one that covers them).
                    self.tracking = Tracking::Awaiting { from: end, buffered: VecDeque::new(), bytes: 0 };
                    return Ok(vec![]);
                }
                buffered.push_back(entry);
                Ok(vec![])
            }
        }
    }

    /// A live replica's state at `position` (between two entries) is installed: the buffered
    /// entries after it, to execute now. Entries the state covers that the group has not
    /// delivered here yet are skipped when they come.
    pub fn transferred(&mut self, position: u64) -> Result<Vec<Delivered>, FeedError> {
        let Tracking::Awaiting { from, buffered, .. } = &mut self.tracking else { return Err(FeedError::Unasked) };
        if position < *from {
            return Err(FeedError::Behind { position, from: *from });
        }
        let mut rest = Vec::new();
        let mut next = position;
        for entry in buffered.drain(..) {
            let end = entry.first + entry.requests.len() as u64;
            if end <= position && !(entry.first == position && end == position) {
                continue;
            }
            if entry.first < position {
                return Err(FeedError::Inside { position, first: entry.first, end });
            }
            next = end;
            rest.push(entry);
        }
        self.tracking = Tracking::Following { next, transferred: position };
        Ok(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::Request;

    fn entry(first: u64, requests: u64) -> Delivered {
        let requests =
            (0..requests).map(|n| Request { client: 1, number: first + n + 1, refused: 0, body: vec![0; 8] }).collect();
        Delivered {
            index: first + 1,
            first,
            requests,
            turned_away: vec![],
            time_ms: 0,
            digests: vec![],
            closes: None,
            leads: vec![],
            grant_leader: None,
        }
    }

    fn firsts(entries: &[Delivered]) -> Vec<u64> {
        entries.iter().map(|e| e.first).collect()
    }

    #[test]
    fn following_executes_every_entry_and_refuses_a_gap() {
        let mut feed = Feed::new(1 << 20);
        assert_eq!(firsts(&feed.delivered(entry(0, 2)).unwrap()), vec![0]);
        // An entry that delivered nothing still comes, at the same position.
        assert_eq!(firsts(&feed.delivered(entry(2, 0)).unwrap()), vec![2]);
        assert_eq!(feed.delivered(entry(3, 1)), Err(FeedError::Gap { expected: 2, got: 3 }));
        assert_eq!(feed.transferred(2), Err(FeedError::Unasked));
    }

    #[test]
    fn a_transfer_behind_the_snapshot_or_inside_an_entry_is_refused() {
        let mut feed = Feed::new(1 << 20);
        feed.restored(10);
        assert_eq!(feed.transferred(9), Err(FeedError::Behind { position: 9, from: 10 }));
        feed.restored(10);
        feed.delivered(entry(10, 4)).unwrap();
        assert_eq!(feed.transferred(12), Err(FeedError::Inside { position: 12, first: 10, end: 14 }));
    }

    #[test]
    fn a_donor_ahead_of_this_log_covers_entries_still_to_come() {
        let mut feed = Feed::new(1 << 20);
        feed.restored(10);
        feed.delivered(entry(10, 2)).unwrap();
        // The donor executed up to 15; this replica's log has reached 12.
        assert!(feed.transferred(15).unwrap().is_empty());
        assert!(feed.delivered(entry(12, 3)).unwrap().is_empty(), "covered by the state");
        assert_eq!(firsts(&feed.delivered(entry(15, 1)).unwrap()), vec![15]);
        assert_eq!(feed.next(), Some(16));
    }

    #[test]
    fn empty_entries_at_the_transfer_point_are_kept_and_a_new_snapshot_starts_over() {
        let mut feed = Feed::new(1 << 20);
        feed.restored(10);
        feed.delivered(entry(10, 0)).unwrap();
        feed.delivered(entry(10, 1)).unwrap();
        feed.restored(30);
        assert_eq!(feed.awaiting_from(), Some(30));
        assert_eq!(feed.delivered(entry(11, 1)), Err(FeedError::Gap { expected: 30, got: 11 }));
        feed.delivered(entry(30, 0)).unwrap();
        feed.delivered(entry(30, 2)).unwrap();
        assert_eq!(firsts(&feed.transferred(30).unwrap()), vec![30, 30]);
    }

    #[test]
    fn entries_past_the_bound_are_dropped_and_the_state_must_cover_them() {
        let mut feed = Feed::new(100);
        feed.restored(0);
        feed.delivered(entry(0, 2)).unwrap();
        assert_eq!(feed.awaiting_from(), Some(0));
        feed.delivered(entry(2, 1)).unwrap();
        assert_eq!(feed.awaiting_from(), Some(3), "a state from before the dropped entries is no use");
        assert_eq!(feed.transferred(2), Err(FeedError::Behind { position: 2, from: 3 }));
        feed.delivered(entry(3, 1)).unwrap();
        assert_eq!(firsts(&feed.transferred(3).unwrap()), vec![3]);
    }
}
