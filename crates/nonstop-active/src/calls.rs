//! A replica's calls: which a replica answers at once, which wait for the order, and what it
//! proposes. Pure: calls and executions in, answers and proposals out; the node's replica drives
//! it with real connections, the order simulation with simulated clients.
//!
//! A client calls one request at a time and asks every replica, again after a timeout, until
//! enough replicas answered. A replica that executed the request already answers with what it
//! answered then; one that did not waits for the order to deliver it, and proposes it (the
//! order delivers it once, whoever proposed it). A request is known by its client, its number,
//! and how many requests under that number the service refused before ([`RequestId`]).
//!
//! ```
//! use nonstop_active::calls::{Asked, Calls};
//! use nonstop_active::order::Request;
//! let mut calls: Calls<&str> = Calls::new(1 << 20);
//! let request = Request { client: 7, number: 1, refused: 0, body: b"deposit".to_vec() };
//! assert_eq!(calls.ask(request.clone(), "connection 1"), Asked::Wait { wake: true });
//! assert_eq!(calls.take_proposals(usize::MAX), vec![request.clone()]);
//! // The order delivered it and the replica executed it: the caller gets the outcome.
//! let waiters = calls.executed(&request, Ok(b"balance 1".to_vec()));
//! assert_eq!(waiters, vec!["connection 1"]);
//! // A retry is answered at once, with the same outcome.
//! let retried = calls.ask(request, "connection 2");
//! assert_eq!(retried, Asked::Answer { outcome: Ok(b"balance 1".to_vec()), duplicate: true });
//! ```

use crate::order::Request;
use crate::recent::Recent;

/// A client's request as the order tells it from the client's others: its number, and the
/// refusals under that number before it.
pub type RequestId = (u64, u32);

/// What executing a request answered: the service's reply, or its refusal.
pub type Outcome = Result<Vec<u8>, String>;

/// Clients whose last executed request a replica remembers: as many as the order does, and
/// forgotten in the same order (execution follows delivery), so that a replica forgets no
/// client the order still remembers. (One the order remembers would not be delivered again, so
/// a replica that forgot its answer could never answer its retry.)
pub const REMEMBERED: usize = crate::order::ORDER_CLIENTS;

/// Clients whose callers may wait at once.
pub const WAITING: usize = 1 << 16;

/// What a pending request costs beyond its body, for the bound on pending bytes (a request
/// with an empty body is not free).
const REQUEST_OVERHEAD: usize = 64;

/// What becomes of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Asked {
    /// Answered now: the replica executed it already (a retry), or a later one of its client.
    Answer {
        /// What it answered.
        outcome: Outcome,
        /// True if it answers a retry of a request executed before.
        duplicate: bool,
    },
    /// Wait for its execution; it is proposed. `wake`: the first proposal pending, so the
    /// driver must see that proposals are pending.
    Wait {
        /// Whether the driver must be woken to propose.
        wake: bool,
    },
    /// Too many bytes wait to be proposed already: the client asks again later.
    Backlogged,
}

/// What a replica remembers of one client: its last executed request and what it answered,
/// and how many of its requests were applied in all (the platform's client memory for a
/// service that keeps none in a region: an audit compares the count with the client's last
/// number, so a request lost or applied twice shows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remembered {
    /// The last request executed.
    pub request: RequestId,
    /// What it answered.
    pub outcome: Outcome,
    /// Requests executed with a reply (not refused), this one included if it was.
    pub applied: u64,
}

/// Requests delivered and not executed yet past which a replica proposes its calls at once
/// rather than gathering them for its next entry ([`Calls::take_due`]): so far behind, it is
/// catching up, and its callers should not wait for it.
pub const GATHER_BEHIND: u64 = 4096;

/// One replica's calls. `W` is what the driver answers a waiting call through (a channel to a
/// connection; a client's number in a simulation).
#[derive(Debug)]
pub struct Calls<W> {
    /// Requests to propose, and their bytes.
    pending: Vec<Request>,
    pending_bytes: usize,
    /// The most request bytes that may wait to be proposed.
    max_pending_bytes: usize,
    /// Requests executed in all.
    executed_count: u64,
    /// Per client, the last request this replica executed and what it answered, for the
    /// [`REMEMBERED`] clients executed for most recently.
    executed: Recent<u64, Remembered, REMEMBERED>,
    /// Per client, the request callers wait for and their waiters (a client calls one request
    /// at a time: a later request replaces an earlier one's waiters), for the [`WAITING`]
    /// clients that asked most recently (a client whose request never comes, a stale number
    /// say, must not hold its place for ever).
    waiting: Recent<u64, (Request, Vec<W>), WAITING>,
}

impl<W> Calls<W> {
    /// No calls yet; at most `max_pending_bytes` of request bodies wait to be proposed.
    pub fn new(max_pending_bytes: usize) -> Calls<W> {
        Calls {
            pending: Vec::new(),
            pending_bytes: 0,
            max_pending_bytes,
            executed_count: 0,
            executed: Recent::new(),
            waiting: Recent::new(),
        }
    }

    /// A replica re-integrated from another's state at a point of the order: it remembers what
    /// that state's executions answered (`executed`, in order: each client's last counts), so
    /// that it answers a client asking again for a request executed before the transfer, as
    /// the others do; else, with a replica gone, no majority could ever form for it.
    pub fn restored(max_pending_bytes: usize, executed: impl IntoIterator<Item = (u64, Remembered)>) -> Calls<W> {
        let mut calls = Calls::new(max_pending_bytes);
        calls.restore(executed);
        calls
    }

    /// A call of `request` arrives, answered through `waiter` if it must wait. Waiters of an
    /// earlier request of the same client are dropped: their client has moved on.
    pub fn ask(&mut self, request: Request, waiter: W) -> Asked {
        let id = (request.number, request.refused);
        match self.executed.get(&request.client) {
            Some(done) if done.request == id => {
                return Asked::Answer { outcome: done.outcome.clone(), duplicate: true };
            }
            Some(done) if done.request > id => {
                let reason = format!("request {} is older than the last executed ({})", request.number, done.request.0);
                return Asked::Answer { outcome: Err(reason), duplicate: false };
            }
            _ => {}
        }
        if self.pending_bytes + cost(&request) > self.max_pending_bytes {
            return Asked::Backlogged;
        }
        match self.waiting.get_mut(&request.client) {
            Some((waited, waiters)) if id_of(waited) == id => waiters.push(waiter),
            _ => {
                self.waiting.insert(request.client, (request.clone(), vec![waiter]));
            }
        }
        let wake = self.pending.is_empty();
        self.pending_bytes += cost(&request);
        self.pending.push(request);
        Asked::Wait { wake }
    }

    /// The pending requests to propose now, as [`Calls::take_proposals`] takes them, or none
    /// while they may gather: while the replica's executor still has requests the order
    /// delivered (its position `delivered`) and it has not executed (its position `executed`),
    /// 1 to [`GATHER_BEHIND`] of them, calls that arrive wait for the next entry together,
    /// unless `max_bytes` of them wait already. One entry per call gave a
    /// multithreaded service's threads one request at a time: on nodes its replicas answered
    /// 800-880 calls/s with 1 thread or with 10 (chaos, 15 clients, 2026-12-07). The driver
    /// proposes again once its executor has caught up ([`Calls::has_proposals`]).
    pub fn take_due(&mut self, delivered: u64, executed: u64, max_bytes: usize) -> Vec<Request> {
        let backlog = delivered.saturating_sub(executed);
        let gathering = (1..=GATHER_BEHIND).contains(&backlog) && self.pending_bytes < max_bytes;
        if gathering { Vec::new() } else { self.take_proposals(max_bytes) }
    }

    /// Whether requests wait to be proposed.
    pub fn has_proposals(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The pending requests to propose as one log entry: as many as fit in `max_bytes` of
    /// bodies (one at least).
    pub fn take_proposals(&mut self, max_bytes: usize) -> Vec<Request> {
        let mut bytes = 0usize;
        let take = self
            .pending
            .iter()
            .take_while(|r| {
                bytes = bytes.saturating_add(r.body.len());
                bytes <= max_bytes
            })
            .count()
            .clamp(self.pending.len().min(1), self.pending.len());
        let taken: Vec<Request> = self.pending.drain(..take).collect();
        self.pending_bytes -= taken.iter().map(cost).sum::<usize>();
        taken
    }

    /// The replica executed `request` (delivered by the order, in order) with `outcome`: the
    /// waiters its vote goes to.
    pub fn executed(&mut self, request: &Request, outcome: Outcome) -> Vec<W> {
        let id = (request.number, request.refused);
        self.executed_count += 1;
        let waiters = match self.waiting.get(&request.client) {
            Some((waited, _)) if id_of(waited) == id => self.waiting.remove(&request.client).map(|(_, w)| w),
            _ => None,
        };
        let before = self.executed.get(&request.client).map_or(0, |last| last.applied);
        let applied = before + u64::from(outcome.is_ok());
        self.executed.insert(request.client, Remembered { request: id, outcome, applied });
        waiters.unwrap_or_default()
    }

    /// The order's leader changed: proposals made to the old one may be lost with it, so every
    /// request a caller still waits for is proposed again (the order delivers it once). Without
    /// this, a lost proposal waits for its client to ask again, an attempt timeout later.
    /// Returns whether any is pending now.
    pub fn propose_waiting_again(&mut self) -> bool {
        for (request, _) in self.waiting.values() {
            if !self.pending.iter().any(|p| p.client == request.client && id_of(p) == id_of(request)) {
                self.pending_bytes += cost(request);
                self.pending.push(request.clone());
            }
        }
        !self.pending.is_empty()
    }

    /// Drops every waiter (the replica stopped): their callers are answered by the driver.
    pub fn drop_waiters(&mut self) {
        self.waiting.clear();
    }

    /// Requests executed in all.
    pub fn executed_count(&self) -> u64 {
        self.executed_count
    }

    /// What this replica's executions answered each client last, oldest first (what a state
    /// transfer carries to a replica re-integrated from this one's state, for
    /// [`Calls::restored`], which keeps that order for what it forgets first).
    pub fn answered(&self) -> impl Iterator<Item = (u64, &Remembered)> {
        self.executed.iter_by_age().map(|(client, remembered)| (*client, remembered))
    }

    /// What this replica remembers of `client` (`None`: nothing executed for it, or it was
    /// forgotten).
    pub fn remembered(&self, client: u64) -> Option<&Remembered> {
        self.executed.get(&client)
    }

    /// This replica took another's state ([`Calls::restored`]): what it executed and who
    /// waited are replaced (the callers ask again), requests still to propose are kept, and
    /// the count of executions goes on.
    pub fn restore(&mut self, executed: impl IntoIterator<Item = (u64, Remembered)>) {
        self.executed.clear();
        for (client, remembered) in executed {
            self.executed.insert(client, remembered);
        }
        self.waiting.clear();
    }
}

/// What `request` counts for against the bound on pending bytes.
fn cost(request: &Request) -> usize {
    request.body.len() + REQUEST_OVERHEAD
}

/// Which request of its client `request` is.
fn id_of(request: &Request) -> RequestId {
    (request.number, request.refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(client: u64, number: u64, refused: u32, body: &[u8]) -> Request {
        Request { client, number, refused, body: body.to_vec() }
    }

    #[test]
    fn calls_gather_while_the_executor_is_busy_and_go_once_it_is_not() {
        let mut calls: Calls<u64> = Calls::new(usize::MAX);
        for client in 1..=3 {
            calls.ask(request(client, 1, 0, b"abc"), client);
        }
        // Requests delivered and not executed yet: the calls wait for the next entry together.
        assert!(calls.take_due(15, 10, 1 << 20).is_empty() && calls.has_proposals());
        // Unless a whole entry's bytes wait, or the replica is far behind.
        assert_eq!(calls.take_due(15, 10, 6).len(), 2);
        assert_eq!(calls.take_due(GATHER_BEHIND + 11, 10, 1 << 20).len(), 1);
        calls.ask(request(4, 1, 0, b"abc"), 4);
        calls.ask(request(5, 1, 0, b"abc"), 5);
        // Nothing left to execute: all of them, as one entry.
        assert_eq!(calls.take_due(10, 10, 1 << 20).iter().map(|r| r.client).collect::<Vec<_>>(), vec![4, 5]);
        assert!(!calls.has_proposals());
    }

    #[test]
    fn client_ids_cost_bounded_memory() {
        let mut calls: Calls<u64> = Calls::new(usize::MAX);
        // Clients whose requests never come (a stale number): their places are bounded.
        for client in 1..=WAITING as u64 + 5 {
            assert!(matches!(calls.ask(request(client, 9, 0, b""), client), Asked::Wait { .. }));
            calls.take_proposals(usize::MAX);
        }
        assert_eq!(calls.waiting.len(), WAITING);
        // Answers remembered are bounded too, the oldest forgotten first.
        for client in 1..=REMEMBERED as u64 + 5 {
            calls.executed(&request(client, 1, 0, b""), Ok(vec![]));
        }
        assert_eq!(calls.executed.len(), REMEMBERED);
        assert!(matches!(calls.ask(request(1, 1, 0, b""), 1), Asked::Wait { .. }), "client 1 was forgotten");
        let last = REMEMBERED as u64 + 5;
        assert!(matches!(calls.ask(request(last, 1, 0, b""), last), Asked::Answer { duplicate: true, .. }));
        // A request with an empty body still counts against the pending bound.
        let mut small: Calls<u64> = Calls::new(2 * REQUEST_OVERHEAD);
        assert!(matches!(small.ask(request(1, 1, 0, b""), 1), Asked::Wait { .. }));
        assert!(matches!(small.ask(request(2, 1, 0, b""), 2), Asked::Wait { .. }));
        assert_eq!(small.ask(request(3, 1, 0, b""), 3), Asked::Backlogged);
    }

    #[test]
    fn a_refused_request_and_the_next_under_its_number_are_told_apart() {
        let mut calls: Calls<u8> = Calls::new(1 << 20);
        let first = request(1, 1, 0, b"a");
        assert_eq!(calls.ask(first.clone(), 1), Asked::Wait { wake: true });
        assert_eq!(calls.executed(&first, Err("refused".into())), vec![1]);
        // A retry of the refused request gets the refusal; the next request waits.
        let retry = calls.ask(first.clone(), 2);
        assert_eq!(retry, Asked::Answer { outcome: Err("refused".into()), duplicate: true });
        let next = request(1, 1, 1, b"b");
        assert_eq!(calls.take_proposals(usize::MAX), vec![first.clone()]);
        assert_eq!(calls.ask(next.clone(), 3), Asked::Wait { wake: true });
        assert_eq!(calls.executed(&next, Ok(b"ok".to_vec())), vec![3]);
        // The refusal applied nothing; the request after it was applied.
        assert_eq!(calls.remembered(1).map(|r| r.applied), Some(1));
        // The refused one, asked late, is older than what was executed since.
        assert!(
            matches!(calls.ask(first, 4), Asked::Answer { outcome: Err(reason), duplicate: false } if reason.contains("older"))
        );
    }

    #[test]
    fn waiters_of_one_request_are_answered_together_and_a_later_request_replaces_them() {
        let mut calls: Calls<u8> = Calls::new(1 << 20);
        let one = request(1, 1, 0, b"x");
        assert_eq!(calls.ask(one.clone(), 1), Asked::Wait { wake: true });
        assert_eq!(calls.ask(one.clone(), 2), Asked::Wait { wake: false });
        let two = request(1, 2, 0, b"y");
        calls.ask(two.clone(), 3);
        // Request 1 executes, but its waiters were replaced by request 2's.
        assert!(calls.executed(&one, Ok(vec![])).is_empty());
        assert_eq!(calls.executed(&two, Ok(vec![])), vec![3]);
        assert_eq!(calls.executed_count(), 2);
    }

    #[test]
    fn waited_requests_are_proposed_again_for_a_new_leader() {
        let mut calls: Calls<u8> = Calls::new(1 << 20);
        let (one, two) = (request(1, 1, 0, b"x"), request(2, 4, 1, b"y"));
        calls.ask(one.clone(), 1);
        calls.ask(two.clone(), 2);
        assert_eq!(calls.take_proposals(usize::MAX).len(), 2);
        calls.executed(&one, Ok(vec![]));
        // The leader changed: request 1 was executed, request 2 may have been lost.
        assert!(calls.propose_waiting_again());
        assert!(calls.propose_waiting_again(), "not twice in the pending list");
        assert_eq!(calls.take_proposals(usize::MAX), vec![two.clone()]);
        calls.executed(&two, Ok(vec![]));
        assert!(!calls.propose_waiting_again(), "nothing waits any more");
    }

    #[test]
    fn proposals_are_bounded_in_bytes_and_backlog_is_refused() {
        let mut calls: Calls<u8> = Calls::new(3 * (REQUEST_OVERHEAD + 3) + 1);
        for client in 1..=3 {
            assert!(matches!(calls.ask(request(client, 1, 0, &[0; 3]), 0), Asked::Wait { .. }));
        }
        assert_eq!(calls.ask(request(4, 1, 0, &[0; 3]), 0), Asked::Backlogged);
        assert_eq!(calls.take_proposals(6).len(), 2);
        // One at least, even if it alone is over the bound.
        assert_eq!(calls.take_proposals(1).len(), 1);
        assert!(calls.take_proposals(100).is_empty());
        assert!(matches!(calls.ask(request(4, 1, 0, &[0; 9]), 0), Asked::Wait { wake: true }));
    }
}
