//! A replica's course through the order: what it executes, when it must take a live
//! replica's state, what it proposes of its outcomes, and whether it may answer.
//!
//! A replica follows the order entry by entry ([`Feed`]), digests its outcomes window by
//! window ([`Outcomes`]) and judges everyone's digests ([`Judge`]). Those three must act
//! together, in one sequence: a replica found dissenting stops executing at once, stops
//! digesting, forgets what it queued to propose and asks for a state from where it stands; a
//! state that arrives resumes digesting from the next window and puts the replica on
//! probation; a replica answers only while its state follows the order and is proven.
//! Under LSA it also decides how each batch's mutexes are taken: led, or following the grant
//! leader's acquisitions once the order carries them ([`crate::loose`]).
//! [`Course`] is that sequence, pure: events and the driver's clock in, [`Event`]s out. The
//! node's executor and the deterministic simulator (`nonstop sim --kind order`) drive this
//! very code; each adds only what is its own (executing the service, sending, timers).
//!
//! A driver's loop:
//!
//! ```
//! use nonstop_active::course::{Course, Event, Standing};
//! use nonstop_active::order::{Delivered, Request};
//! use nonstop_control::NodeId;
//!
//! let mut course = Course::founder(NodeId(1), &[1, 2, 3], 1 << 20);
//! let request = Request { client: 7, number: 1, refused: 0, body: b"+1".to_vec() };
//! let entry = Delivered {
//!     index: 1,
//!     first: 0,
//!     requests: vec![request],
//!     turned_away: vec![],
//!     time_ms: 10,
//!     digests: vec![],
//!     closes: Some(0),
//!     leads: vec![],
//!     grant_leader: None,
//! };
//! course.delivered(entry).unwrap();
//! let mut proposed = Vec::new();
//! while let Some(next) = course.next_entry() {
//!     for _request in &next.entry.requests {
//!         // The driver executes the request on the service and answers who waits.
//!         course.executed(&Ok(b"1".to_vec()));
//!     }
//!     course.entry_executed();
//!     while let Some(event) = course.poll_event() {
//!         if let Event::Propose(digest) = event {
//!             proposed.push(digest);
//!         }
//!     }
//! }
//! assert_eq!(proposed.len(), 1, "window 0 closed: its digest goes into the order");
//! assert_eq!(course.standing(), Standing::Serving);
//! ```

use crate::calls::Outcome;
use crate::dissent::{Digest, Dissent, Finding, Judge, Outcomes, StateVerdict};
use crate::feed::{Feed, FeedError};
#[cfg(test)]
use crate::loose::LEAD_RETRY_MS;
use crate::loose::{Answer, Heard, Loose};
use crate::order::{Delivered, Lead};
use crate::schedule::Grant;
use nonstop_control::NodeId;
use std::collections::VecDeque;

pub use crate::loose::Acquisitions;

/// Whether a replica may answer, as its course decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Its state follows the order and is its own or proven: it answers.
    Serving,
    /// It awaits a live replica's state (it fell behind the order's compacted log, or its
    /// outcomes differed from the majority's), or, as a new member, has executed nothing yet.
    CatchingUp,
    /// It took a state and proves it against a replica other than its donor.
    Proving,
    /// The state it took and `against`'s replica digested a window differently: its donor and
    /// that replica disagree, one replica of three cannot tell which is right, and it stays
    /// out.
    Refuted {
        /// The replica it disagrees with.
        against: NodeId,
    },
}

/// Why a replica must take a live replica's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behind {
    /// The order's log was compacted past it (it was given the order's snapshot), or a state
    /// it took was already older than a newer snapshot.
    Log,
    /// A majority's digest of `window` contradicts its own: its state is wrong.
    Dissented {
        /// The window.
        window: u64,
    },
    /// LSA: it led batch `batch` and the order will never grant it the acquisitions its
    /// threads made (another member claimed the lead first): its state is not the order's.
    Overruled {
        /// The batch.
        batch: u64,
    },
    /// LSA: its threads could not make the grant leader's acquisitions for batch `batch` (its
    /// state or the leader's is wrong), and the batch is half executed.
    Unfollowed {
        /// The batch.
        batch: u64,
    },
}

/// What the driver must do or report, in the order the course decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Take a live replica's state at position `from` of the order or later, then call
    /// [`Course::transferred`]. Until then the replica executes and answers nothing: the calls
    /// that wait on it will not be answered by it (drop them: their callers ask the others),
    /// and digests it queued but has not proposed no longer stand (drop them).
    NeedState {
        /// The position the state must reach at least.
        from: u64,
        /// Why.
        why: Behind,
    },
    /// Propose `digest` with the replica's next batch ([`crate::dissent::propose_later`]).
    Propose(Digest),
    /// LSA: propose `lead` (a led batch's acquisitions) with the replica's next batch.
    ProposeLead(Lead),
    /// LSA: the order granted batch `batch`, which this replica led, the acquisitions its
    /// threads made: answer the requests it held for the batch now (record each as executed,
    /// send each to whoever waits).
    Granted {
        /// The batch's first position.
        batch: u64,
        /// The batch's requests and their outcomes, in order.
        answers: Vec<Answer>,
    },
    /// Another replica dissents from the majority: report it (it takes a state itself).
    Reported(Dissent),
    /// The verdict on the state taken: cleared (proven, or with nobody to prove it against
    /// for [`crate::dissent::PROBATION_MS`]), the replica answers again; refuted, it stays out.
    Probation(StateVerdict),
}

/// How a transferred state was taken ([`Course::transferred`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// It is the replica's state now: install what its donor answered, and execute on.
    Installed,
    /// It is older than a snapshot that came meanwhile: a newer one is asked for
    /// ([`Event::NeedState`]).
    Stale {
        /// The state's position.
        position: u64,
        /// Where the newer one must start at least.
        from: u64,
    },
}

/// Why a replica donates no state ([`Course::donation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoDonation {
    /// It awaits a state itself.
    #[error("it is taking a state itself")]
    TakingState,
    /// The state it took is not proven yet.
    #[error("the state it took is not proven yet")]
    Unproven,
    /// LSA: batches it led wait for the order's grant; no other replica may follow its state
    /// yet.
    #[error("batches it led wait for the order to grant them")]
    Ungranted,
    /// It has not executed as far as the state asked for.
    #[error("it stands at position {position}, behind the state asked for")]
    Behind {
        /// Where it stands.
        position: u64,
    },
}

/// An entry to execute ([`Course::next_entry`]), and how its threads take mutexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Next {
    /// The entry.
    pub entry: Delivered,
    /// How its batch's mutexes are taken.
    pub acquisitions: Acquisitions,
}

/// An entry handed out to execute ([`Course::next_entry`]) and not reported executed yet.
#[derive(Clone, Copy, Debug)]
struct Executing {
    /// Its [`Delivered::closes`].
    closes: Option<u64>,
    /// Its first position, and whether this replica leads its acquisitions (LSA).
    batch: u64,
    leading: bool,
}

/// One replica's course through the order (see the module's documentation).
#[derive(Clone, Debug)]
pub struct Course {
    feed: Feed,
    outcomes: Outcomes,
    judge: Judge,
    /// A new member that has executed nothing yet: its state is the service's initial one,
    /// not the order's, until it executes from the order's start or takes a state.
    fresh: bool,
    /// Entries delivered and not executed yet, in order.
    ready: VecDeque<Delivered>,
    /// The entry handed out last, while it executes: the window it closes, if it does.
    executing: Option<Executing>,
    events: VecDeque<Event>,
    /// LSA: the acquisitions the order carries ([`Course::loose`]).
    loose: Option<Loose>,
}

impl Course {
    /// Replica `me` (a member id) of a group on `replicas` (node ids) that founded the order:
    /// its state is the order's from the start. At most `max_buffered_bytes` of requests wait
    /// for a state transfer ([`Feed::new`]).
    pub fn founder(me: NodeId, replicas: &[u64], max_buffered_bytes: usize) -> Course {
        Course {
            feed: Feed::new(max_buffered_bytes),
            outcomes: Outcomes::new(),
            judge: Judge::new(me, replicas),
            fresh: false,
            ready: VecDeque::new(),
            executing: None,
            events: VecDeque::new(),
            loose: None,
        }
    }

    /// The same course for a replica under LSA: each batch is led (as grant leader) or waits
    /// for the grant leader's acquisitions in the order ([`crate::loose`]); a led batch's
    /// acquisitions are proposed in parts of at most `grants_per_part` (a node:
    /// [`crate::order::MAX_GRANTS`]).
    pub fn loose(self, grants_per_part: usize) -> Course {
        Course { loose: Some(Loose::new(self.judge.member(), grants_per_part)), ..self }
    }

    /// LSA: the member that claimed the lead of the acquisitions last, as far as this replica
    /// has heard (`None` before any claim, and for other schedulers).
    pub fn grant_leader(&self) -> Option<NodeId> {
        self.loose.as_ref().and_then(Loose::leader)
    }

    /// Replica `me` joining a running group as a new member: it answers nothing until it has
    /// executed from the order's start or taken a live replica's state.
    pub fn new_member(me: NodeId, replicas: &[u64], max_buffered_bytes: usize) -> Course {
        Course { fresh: true, ..Course::founder(me, replicas, max_buffered_bytes) }
    }

    /// The replica's member id.
    pub fn member(&self) -> NodeId {
        self.judge.member()
    }

    /// Whether it may answer.
    pub fn standing(&self) -> Standing {
        if !self.feed.is_following() {
            return Standing::CatchingUp;
        }
        if let Some(against) = self.judge.refuted_by() {
            return Standing::Refuted { against };
        }
        if self.judge.on_probation() {
            return Standing::Proving;
        }
        if self.fresh {
            return Standing::CatchingUp;
        }
        Standing::Serving
    }

    /// The position of the next request it executes, once every entry handed out is executed
    /// (`None` while it awaits a state): where a state it donates stands. Entries waiting for
    /// their acquisitions (LSA) are not executed yet: the state stands before them.
    pub fn position(&self) -> Option<u64> {
        let next = self.feed.next()?;
        Some(self.ready.front().map_or(next, |entry| entry.first))
    }

    /// Where a state it donates now would stand, if it may donate one that reaches `from`.
    pub fn donation(&self, from: u64) -> Result<u64, NoDonation> {
        let Some(position) = self.position() else { return Err(NoDonation::TakingState) };
        if self.judge.on_probation() {
            // Its state would spread before anyone could find it wrong.
            return Err(NoDonation::Unproven);
        }
        if self.loose.as_ref().is_some_and(Loose::awaits_grants) {
            // Its state holds acquisitions the others may not follow yet.
            return Err(NoDonation::Ungranted);
        }
        if position < from {
            return Err(NoDonation::Behind { position });
        }
        Ok(position)
    }

    /// The position a state it awaits must reach at least.
    pub fn awaiting_from(&self) -> Option<u64> {
        self.feed.awaiting_from()
    }

    /// The order delivered `delivered`: its digests are judged, and its requests will be
    /// handed out by [`Course::next_entry`] (unless the replica awaits a state). An error means
    /// the replica's state no longer follows the order: stop it.
    pub fn delivered(&mut self, delivered: Delivered) -> Result<(), FeedError> {
        for digest in &delivered.digests {
            if let Some(finding) = self.judge.seen(digest) {
                self.found(finding);
            }
        }
        let next = self.position().or(self.feed.awaiting_from()).unwrap_or(0);
        if let Some(loose) = &mut self.loose {
            for heard in loose.delivered(&delivered.leads, delivered.grant_leader, next) {
                match heard {
                    Heard::Granted { batch, answers } => self.events.push_back(Event::Granted { batch, answers }),
                    Heard::Overruled { batch } => self.need_state_here(Behind::Overruled { batch }),
                }
            }
        }
        let entries = self.feed.delivered(delivered)?;
        self.ready.extend(entries);
        Ok(())
    }

    /// The order's state was replaced by a snapshot ending at position `from` (the replica fell
    /// behind the compacted log): its service state is behind, and it needs a live replica's.
    /// `digests` are the snapshot's [`Order::recent_digests`](crate::order::Order::recent_digests):
    /// a donor they show contradicted does not prove the state it gives.
    pub fn restored<'a>(&mut self, from: u64, digests: impl IntoIterator<Item = &'a Digest>) {
        self.judge.recall(digests);
        self.need_state(from, Behind::Log);
    }

    /// A live replica's state at `position` of the order (between two entries), from member
    /// `donor`, was installed at `now_ms` on the driver's clock. If it is recent enough the
    /// replica executes on from there, on probation until another replica than the donor
    /// proves it; else a newer state is asked for. An error means it does not fit the order
    /// (it ends inside an entry, or none was awaited): stop the replica.
    pub fn transferred(&mut self, position: u64, donor: NodeId, now_ms: u64) -> Result<Taken, FeedError> {
        let rest = match self.feed.transferred(position) {
            Ok(rest) => rest,
            Err(FeedError::Behind { position, from }) => {
                // Still awaiting from `from`, with the entries delivered since kept: only ask
                // again (restoring the feed would drop them, and the next entry would not
                // follow).
                self.events.push_back(Event::NeedState { from, why: Behind::Log });
                return Ok(Taken::Stale { position, from });
            }
            Err(other) => return Err(other),
        };
        self.fresh = false;
        self.outcomes.resume();
        if let Some(finding) = self.judge.probation(donor, now_ms) {
            self.found(finding);
        }
        if let Some(loose) = &mut self.loose {
            // Orphans are proposed on the clock from here.
            let _ = loose.replaced(position);
        }
        self.ready.extend(rest);
        Ok(Taken::Installed)
    }

    /// The driver's clock: a replica on probation with nothing to prove its state against for
    /// [`crate::dissent::PROBATION_MS`] is cleared unproven.
    pub fn tick(&mut self, now_ms: u64) {
        if let Some(finding) = self.judge.clear_unproven(now_ms) {
            self.found(finding);
        }
        if let Some(loose) = &mut self.loose {
            self.events.extend(loose.due(now_ms).into_iter().map(Event::ProposeLead));
        }
    }

    /// The next entry to execute: execute its requests in order as [`Next::acquisitions`]
    /// says, pass each outcome to [`Course::executed`] (and, leading, the acquisitions made to
    /// [`Course::led`]), then call [`Course::entry_executed`]. `None` once none is left, the
    /// replica stopped following the order (what was handed out before stays executed), or,
    /// under LSA, the next batch waits for its acquisitions.
    pub fn next_entry(&mut self) -> Option<Next> {
        debug_assert!(self.executing.is_none(), "an entry handed out was not reported executed");
        let front = self.ready.front()?;
        let acquisitions = match &mut self.loose {
            Some(loose) if !front.requests.is_empty() => {
                // A replica found wrong leads nothing: it awaits a state (and then has no
                // entries), or stays out.
                let may_lead = self.judge.refuted_by().is_none();
                loose.acquisitions(front.first, may_lead)?
            }
            _ => Acquisitions::Scheduled,
        };
        let entry = self.ready.pop_front()?;
        let leading = acquisitions == Acquisitions::Lead;
        self.executing = Some(Executing { closes: entry.closes, batch: entry.first, leading });
        Some(Next { entry, acquisitions })
    }

    /// LSA: the batch handed out to lead was executed, its threads taking `acquisitions`, in
    /// order, and answering `answers` (each request and its outcome, not yet recorded or sent).
    /// Call before [`Course::entry_executed`]. The course holds the answers and hands them back
    /// with [`Event::Granted`]; they are dropped if the order never grants the batch.
    pub fn led(&mut self, acquisitions: Vec<Grant>, answers: Vec<Answer>, now_ms: u64) {
        let (Some(loose), Some(Executing { batch, leading: true, .. })) = (&mut self.loose, self.executing) else {
            debug_assert!(false, "led without a batch handed out to lead");
            return;
        };
        self.events.extend(loose.led(batch, acquisitions, answers, now_ms).into_iter().map(Event::ProposeLead));
    }

    /// LSA: the batch handed out to follow could not be: its threads did not make the grant
    /// leader's acquisitions, and it is half executed. The replica takes a live replica's
    /// state ([`Event::NeedState`]).
    pub fn unfollowed(&mut self) {
        let Some(Executing { batch, .. }) = self.executing.take() else {
            debug_assert!(false, "unfollowed without a batch handed out");
            return;
        };
        // The batch is half executed: the state must reach past it.
        self.need_state_here(Behind::Unfollowed { batch });
    }

    /// The entry being executed answered its next request with `outcome` (the service's reply
    /// or refusal: what the replica answers).
    pub fn executed(&mut self, outcome: &Outcome) {
        self.outcomes.executed(outcome);
    }

    /// The entry handed out last is executed. If it closes a window the replica executed whole,
    /// its digest is judged and, unless the replica is on probation (a wrong state copied would
    /// agree with its donor's), proposed.
    pub fn entry_executed(&mut self) {
        let Some(Executing { closes, .. }) = self.executing.take() else {
            debug_assert!(false, "entry_executed without an entry handed out");
            return;
        };
        self.fresh = false;
        let Some((window, hash)) = closes.and_then(|window| self.outcomes.closed(window)) else { return };
        let since = self.outcomes.since();
        if !self.judge.on_probation() {
            self.events.push_back(Event::Propose(Digest { member: self.judge.member(), window, hash, since }));
        }
        if let Some(finding) = self.judge.mine(window, hash, since) {
            self.found(finding);
        }
    }

    /// What the driver must do or report next.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn found(&mut self, finding: Finding) {
        let event = match finding {
            Finding::Dissent(Dissent { me: true, window, .. }) => {
                // Awaiting a state already: the one it takes replaces what was contradicted.
                return self.need_state_here(Behind::Dissented { window });
            }
            Finding::Dissent(dissent) => Event::Reported(dissent),
            Finding::Probation(verdict) => Event::Probation(verdict),
        };
        self.events.push_back(event);
    }

    /// Its own state is wrong, or holds what the order will not take: it needs a live
    /// replica's from where it stands ([`Course::position`]; nothing if it awaits one already).
    /// The entries handed to it and not executed yet are kept to execute after a state that
    /// stands before them: under LSA they may wait for acquisitions only this replica would
    /// have led, and the others cannot go past them to donate a state that covers them.
    fn need_state_here(&mut self, why: Behind) {
        let Some(from) = self.position() else { return };
        let waiting: Vec<Delivered> = self.ready.drain(..).collect();
        self.need_state(from, why);
        for entry in waiting {
            // They follow `from` in order, as they followed each other; kept within the
            // feed's bound like any entry delivered while it awaits.
            let kept = self.feed.delivered(entry);
            debug_assert!(kept.is_ok(), "{kept:?}");
        }
    }

    /// Its state must be replaced from position `from` on: entries handed to it but not
    /// executed are dropped (the state taken covers them: `from` is past them), its digest of
    /// the open window is void, and the digests it queued no longer stand.
    fn need_state(&mut self, from: u64, why: Behind) {
        if !matches!(why, Behind::Log) {
            self.judge.disown();
        }
        self.feed.restored(from);
        self.outcomes.suspend();
        self.ready.clear();
        self.events.retain(|event| !matches!(event, Event::Propose(_) | Event::ProposeLead(_) | Event::Granted { .. }));
        self.events.push_back(Event::NeedState { from, why });
        if let Some(loose) = &mut self.loose {
            // The others wait for these to reach the state this replica must take.
            self.events.extend(loose.replaced(from).into_iter().map(Event::ProposeLead));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dissent::Proof;
    use crate::membership::member_id;
    use crate::order::Request;

    const REPLICAS: [u64; 3] = [1, 2, 3];

    fn entry(first: u64, requests: u64, closes: Option<u64>, digests: Vec<Digest>) -> Delivered {
        let requests = (0..requests)
            .map(|n| Request { client: 1, number: first + n + 1, refused: 0, body: vec![n as u8] })
            .collect();
        Delivered {
            index: first + 1,
            first,
            requests,
            turned_away: vec![],
            time_ms: first,
            digests,
            closes,
            leads: vec![],
            grant_leader: None,
        }
    }

    /// Executes what the course hands out, each request answering `answer`; returns the
    /// positions executed and the events, in order.
    fn run(course: &mut Course, answer: &[u8]) -> (Vec<u64>, Vec<Event>) {
        let (mut executed, mut events) = (Vec::new(), Vec::new());
        loop {
            events.extend(std::iter::from_fn(|| course.poll_event()));
            let Some(Next { entry, .. }) = course.next_entry() else { break };
            for request in &entry.requests {
                // `entry` numbers each request by its position, from 1.
                executed.push(request.number - 1);
                course.executed(&Ok(answer.to_vec()));
            }
            course.entry_executed();
        }
        (executed, events)
    }

    /// The digest replica `node` proposes of window `window` after answering `answer` to each
    /// of `requests` requests.
    fn digest_of(node: u64, window: u64, requests: u64, answer: &[u8]) -> Digest {
        let mut outcomes = Outcomes::new();
        for _ in 0..requests {
            outcomes.executed(&Ok(answer.to_vec()));
        }
        let (window, hash) = outcomes.closed(window).expect("a window with requests");
        Digest { member: member_id(node, 0), window, hash, since: 0 }
    }

    #[test]
    fn a_founder_serves_and_proposes_each_window_it_executed() {
        let mut course = Course::founder(member_id(1, 0), &REPLICAS, 1 << 20);
        course.delivered(entry(0, 2, None, vec![])).unwrap();
        course.delivered(entry(2, 1, Some(0), vec![])).unwrap();
        let (executed, events) = run(&mut course, b"ok");
        assert_eq!(executed, vec![0, 1, 2]);
        assert_eq!(events, vec![Event::Propose(digest_of(1, 0, 3, b"ok"))]);
        assert_eq!(course.standing(), Standing::Serving);
        assert_eq!(course.position(), Some(3));
    }

    #[test]
    fn a_dissenter_stops_at_once_drops_its_proposals_and_asks_for_a_state_past_what_it_was_handed() {
        let mut course = Course::founder(member_id(3, 0), &REPLICAS, 1 << 20);
        // Window 0 closes after the first entry; the two others' digests of it come with the
        // second, which also closes window 1.
        course.delivered(entry(0, 2, Some(0), vec![])).unwrap();
        let (_, events) = run(&mut course, b"wrong");
        assert!(matches!(events[..], [Event::Propose(_)]));
        let majority = vec![digest_of(1, 0, 2, b"right"), digest_of(2, 0, 2, b"right")];
        course.delivered(entry(2, 1, Some(1), majority)).unwrap();
        // A third entry waits behind the second.
        course.delivered(entry(3, 1, None, vec![])).unwrap();
        let (executed, events) = run(&mut course, b"wrong");
        assert!(executed.is_empty(), "a replica found wrong executes nothing more: {executed:?}");
        // Found as the second entry came, before it was handed out: a state from there on.
        assert_eq!(events, vec![Event::NeedState { from: 2, why: Behind::Dissented { window: 0 } }]);
        assert_eq!(course.standing(), Standing::CatchingUp);
        // Entries delivered meanwhile wait for the state; a state at 4 takes it on from there.
        course.delivered(entry(4, 1, Some(2), vec![])).unwrap();
        assert_eq!(run(&mut course, b"right").0, Vec::<u64>::new());
        assert_eq!(course.transferred(4, member_id(1, 0), 100), Ok(Taken::Installed));
        assert_eq!(course.standing(), Standing::Proving);
        let (executed, events) = run(&mut course, b"right");
        assert_eq!(executed, vec![4]);
        assert!(events.is_empty(), "window 2 began before the state came: no digest, {events:?}");
    }

    #[test]
    fn a_state_taken_is_proven_by_a_replica_other_than_its_donor() {
        let mut course = Course::founder(member_id(3, 0), &REPLICAS, 1 << 20);
        course.restored(0, &[]);
        assert_eq!(run(&mut course, b"x").1, vec![Event::NeedState { from: 0, why: Behind::Log }]);
        assert_eq!(course.transferred(0, member_id(1, 0), 0), Ok(Taken::Installed));
        // The state may have come inside window 0: digesting starts with window 1.
        course.delivered(entry(0, 1, Some(0), vec![])).unwrap();
        course.delivered(entry(1, 1, Some(1), vec![])).unwrap();
        let (_, events) = run(&mut course, b"v");
        assert!(events.is_empty(), "no digest proposed on probation: {events:?}");
        // The donor's agreement proves nothing; the third replica's does.
        course.delivered(entry(2, 0, None, vec![digest_of(1, 1, 1, b"v")])).unwrap();
        assert_eq!(course.standing(), Standing::Proving);
        course.delivered(entry(2, 0, None, vec![digest_of(2, 1, 1, b"v")])).unwrap();
        let (_, events) = run(&mut course, b"v");
        let cleared = Event::Probation(StateVerdict::Cleared { proof: Some(Proof { window: 1, by: member_id(2, 0) }) });
        assert_eq!(events, vec![cleared]);
        assert_eq!(course.standing(), Standing::Serving);
    }

    #[test]
    fn a_refuted_state_stays_out_and_the_clock_does_not_clear_it() {
        let mut course = Course::founder(member_id(3, 0), &REPLICAS, 1 << 20);
        course.restored(0, &[]);
        course.transferred(0, member_id(1, 0), 0).unwrap();
        course.delivered(entry(0, 1, Some(0), vec![])).unwrap();
        course.delivered(entry(1, 1, Some(1), vec![digest_of(2, 1, 1, b"other")])).unwrap();
        let (_, events) = run(&mut course, b"mine");
        let against = member_id(2, 0);
        assert!(events.contains(&Event::Probation(StateVerdict::Refuted { window: 1, against })), "{events:?}");
        assert_eq!(course.standing(), Standing::Refuted { against });
        course.tick(u64::MAX);
        assert_eq!(course.poll_event(), None);
        assert_eq!(course.standing(), Standing::Refuted { against });
    }

    #[test]
    fn with_nobody_to_prove_it_against_the_clock_clears_a_state_taken() {
        let mut course = Course::founder(member_id(3, 0), &REPLICAS, 1 << 20);
        course.restored(0, &[]);
        course.transferred(0, member_id(1, 0), 1_000).unwrap();
        course.tick(1_000 + crate::dissent::PROBATION_MS - 1);
        assert_eq!(course.standing(), Standing::Proving);
        course.tick(1_000 + crate::dissent::PROBATION_MS);
        let events: Vec<Event> = std::iter::from_fn(|| course.poll_event()).collect();
        assert!(events.ends_with(&[Event::Probation(StateVerdict::Cleared { proof: None })]), "{events:?}");
        assert_eq!(course.standing(), Standing::Serving);
    }

    #[test]
    fn a_state_older_than_a_newer_snapshot_is_asked_for_again() {
        let mut course = Course::founder(member_id(3, 0), &REPLICAS, 1 << 20);
        course.restored(5, &[]);
        course.restored(9, &[]);
        let _ = run(&mut course, b"");
        assert_eq!(course.transferred(5, member_id(1, 0), 0), Ok(Taken::Stale { position: 5, from: 9 }));
        assert_eq!(course.poll_event(), Some(Event::NeedState { from: 9, why: Behind::Log }));
        assert_eq!(course.standing(), Standing::CatchingUp);
        assert_eq!(course.transferred(9, member_id(1, 0), 0), Ok(Taken::Installed));
    }

    #[test]
    fn only_a_replica_following_the_order_with_a_proven_state_donates() {
        let mut course = Course::founder(member_id(1, 0), &REPLICAS, 1 << 20);
        course.delivered(entry(0, 3, None, vec![])).unwrap();
        let _ = run(&mut course, b"x");
        assert_eq!(course.donation(3), Ok(3));
        assert_eq!(course.donation(4), Err(NoDonation::Behind { position: 3 }));
        course.restored(5, &[]);
        assert_eq!(course.donation(0), Err(NoDonation::TakingState));
        course.transferred(5, member_id(2, 0), 0).unwrap();
        assert_eq!(course.donation(5), Err(NoDonation::Unproven));
    }

    #[test]
    fn entries_kept_while_awaiting_survive_a_stale_state() {
        let mut course = Course::founder(member_id(3, 0), &REPLICAS, 1 << 20);
        course.restored(5, &[]);
        course.restored(9, &[]);
        course.delivered(entry(9, 2, None, vec![])).unwrap();
        let _ = run(&mut course, b"");
        assert!(matches!(course.transferred(5, member_id(1, 0), 0), Ok(Taken::Stale { .. })));
        // The entry after those kept still follows them, and a state at 9 executes both.
        course.delivered(entry(11, 1, None, vec![])).unwrap();
        assert_eq!(course.transferred(9, member_id(1, 0), 0), Ok(Taken::Installed));
        assert_eq!(run(&mut course, b"x").0, vec![9, 10, 11]);
    }

    #[test]
    fn a_new_member_answers_only_once_it_executed_from_the_start() {
        let mut course = Course::new_member(member_id(3, 1), &REPLICAS, 1 << 20);
        assert_eq!(course.standing(), Standing::CatchingUp);
        course.delivered(entry(0, 1, None, vec![])).unwrap();
        assert_eq!(course.standing(), Standing::CatchingUp, "handed out, not executed");
        let _ = run(&mut course, b"x");
        assert_eq!(course.standing(), Standing::Serving);
    }

    #[test]
    fn another_replicas_dissent_is_reported_and_changes_nothing_here() {
        let mut course = Course::founder(member_id(1, 0), &REPLICAS, 1 << 20);
        course.delivered(entry(0, 1, Some(0), vec![])).unwrap();
        let _ = run(&mut course, b"right");
        course.delivered(entry(1, 1, None, vec![digest_of(2, 0, 1, b"right"), digest_of(3, 0, 1, b"wrong")])).unwrap();
        let (executed, events) = run(&mut course, b"right");
        assert_eq!(executed, vec![1]);
        let dissenter = member_id(3, 0);
        assert_eq!(events, vec![Event::Reported(Dissent { dissenter, window: 0, me: false })]);
        assert_eq!(course.standing(), Standing::Serving);
    }

    /// An entry of `requests` requests from position `first`, after which `leader` leads the
    /// acquisitions, carrying `leads`.
    fn loose_entry(first: u64, requests: u64, leads: Vec<Lead>, leader: u64) -> Delivered {
        Delivered { leads, grant_leader: Some(member_id(leader, 0)), ..entry(first, requests, None, vec![]) }
    }

    /// Member `member`'s `execution` of batch `batch`: one acquisition, by thread `thread`.
    fn grants(member: u64, batch: u64, execution: u64, thread: u16) -> Lead {
        use crate::schedule::{MutexId, ThreadId};
        let acquisitions = vec![(MutexId(0), ThreadId(thread))];
        Lead::Grants { member: member_id(member, 0), batch, execution, from: 0, total: 1, acquisitions }
    }

    fn acquired(thread: u16) -> Vec<Grant> {
        use crate::schedule::{MutexId, ThreadId};
        vec![(MutexId(0), ThreadId(thread))]
    }

    fn events(course: &mut Course) -> Vec<Event> {
        std::iter::from_fn(|| course.poll_event()).collect()
    }

    #[test]
    fn an_lsa_follower_waits_for_its_batchs_acquisitions_and_its_state_stands_before_it() {
        let mut course = Course::founder(member_id(2, 0), &REPLICAS, 1 << 20).loose(1);
        course.delivered(loose_entry(0, 2, vec![], 1)).unwrap();
        assert_eq!(course.next_entry(), None, "another member leads, and the batch has no acquisitions yet");
        // What it donates now stands before the waiting batch, which it has not executed.
        assert_eq!((course.position(), course.donation(0)), (Some(0), Ok(0)));
        assert_eq!(course.donation(1), Err(NoDonation::Behind { position: 0 }));
        course.delivered(loose_entry(2, 0, vec![grants(1, 0, 1, 1)], 1)).unwrap();
        let next = course.next_entry().expect("granted");
        assert_eq!((next.entry.first, next.acquisitions), (0, Acquisitions::Follow(acquired(1))));
        course.executed(&Ok(vec![]));
        course.executed(&Ok(vec![]));
        course.entry_executed();
        // An entry without requests is no batch: nothing to wait for.
        assert_eq!(course.next_entry().map(|next| next.acquisitions), Some(Acquisitions::Scheduled));
        course.entry_executed();
        assert_eq!(course.donation(2), Ok(2));
    }

    #[test]
    fn an_lsa_leader_holds_its_batch_until_granted_and_is_overruled_by_a_new_leader() {
        let mut course = Course::founder(member_id(1, 0), &REPLICAS, 1 << 20).loose(1);
        course.delivered(loose_entry(0, 1, vec![], 1)).unwrap();
        let next = course.next_entry().unwrap();
        assert_eq!(next.acquisitions, Acquisitions::Lead);
        course.executed(&Ok(vec![]));
        let answers: Vec<Answer> =
            next.entry.requests.into_iter().map(|request| (request, Ok(b"7".to_vec()))).collect();
        course.led(acquired(3), answers.clone(), 10);
        course.entry_executed();
        assert_eq!(events(&mut course), vec![Event::ProposeLead(grants(1, 0, 1, 3))]);
        assert_eq!(course.donation(0), Err(NoDonation::Ungranted), "its state holds acquisitions nobody follows yet");
        // Not granted in time: proposed again.
        course.tick(10 + LEAD_RETRY_MS);
        assert_eq!(events(&mut course), vec![Event::ProposeLead(grants(1, 0, 1, 3))]);
        course.delivered(loose_entry(1, 1, vec![grants(1, 0, 1, 3)], 1)).unwrap();
        assert_eq!(events(&mut course), vec![Event::Granted { batch: 0, answers }], "held until granted");
        assert_eq!(course.donation(1), Ok(1));
        // It leads the next batch; member 2 claims the lead before its acquisitions are in.
        assert_eq!(course.next_entry().unwrap().acquisitions, Acquisitions::Lead);
        course.executed(&Ok(vec![]));
        course.led(acquired(0), vec![], 20);
        course.entry_executed();
        let _ = events(&mut course);
        course
            .delivered(loose_entry(
                2,
                1,
                vec![Lead::Claim { member: member_id(2, 0), after: Some(member_id(1, 0)) }],
                2,
            ))
            .unwrap();
        assert_eq!(events(&mut course), vec![Event::NeedState { from: 2, why: Behind::Overruled { batch: 1 } }]);
        assert_eq!(course.next_entry(), None);
    }

    #[test]
    fn an_lsa_leader_whose_acquisitions_lose_to_others_takes_a_state() {
        let mut course = Course::founder(member_id(1, 0), &REPLICAS, 1 << 20).loose(1);
        course.delivered(loose_entry(0, 1, vec![], 1)).unwrap();
        let _ = course.next_entry().unwrap();
        course.executed(&Ok(vec![]));
        course.led(acquired(3), vec![], 0);
        course.entry_executed();
        let _ = events(&mut course);
        course.delivered(loose_entry(1, 0, vec![grants(1, 0, 9, 2)], 1)).unwrap();
        assert_eq!(events(&mut course), vec![Event::NeedState { from: 1, why: Behind::Overruled { batch: 0 } }]);
    }

    #[test]
    fn an_lsa_replica_that_missed_a_claim_in_a_snapshot_learns_the_leader_from_the_order() {
        let mut course = Course::founder(member_id(2, 0), &REPLICAS, 1 << 20).loose(1);
        course
            .delivered(loose_entry(
                0,
                0,
                vec![Lead::Claim { member: member_id(2, 0), after: Some(member_id(1, 0)) }],
                2,
            ))
            .unwrap();
        assert_eq!(course.grant_leader(), Some(member_id(2, 0)));
        let _ = course.next_entry();
        course.entry_executed();
        // Member 3 claimed inside a snapshot this replica was given: no claim among the leads.
        course.delivered(loose_entry(0, 1, vec![], 3)).unwrap();
        assert_eq!(course.grant_leader(), Some(member_id(3, 0)));
        assert_eq!(course.next_entry(), None, "it no longer leads");
    }

    #[test]
    fn an_lsa_follower_that_cannot_follow_takes_a_state_past_the_batch() {
        let mut course = Course::founder(member_id(2, 0), &REPLICAS, 1 << 20).loose(1);
        course.delivered(loose_entry(0, 2, vec![], 1)).unwrap();
        course.delivered(loose_entry(2, 0, vec![grants(1, 0, 1, 1)], 1)).unwrap();
        let _ = course.next_entry().unwrap();
        course.unfollowed();
        assert_eq!(events(&mut course), vec![Event::NeedState { from: 2, why: Behind::Unfollowed { batch: 0 } }]);
        assert_eq!(course.standing(), Standing::CatchingUp);
    }

    #[test]
    fn an_lsa_leader_that_must_take_a_state_still_proposes_what_it_led_while_it_leads() {
        let mut course = Course::founder(member_id(1, 0), &REPLICAS, 1 << 20).loose(1);
        course.delivered(loose_entry(0, 1, vec![], 1)).unwrap();
        course.delivered(loose_entry(1, 1, vec![], 1)).unwrap();
        for thread in [3, 2] {
            let _ = course.next_entry().unwrap();
            course.executed(&Ok(vec![]));
            course.led(acquired(thread), vec![], 0);
            course.entry_executed();
        }
        let _ = events(&mut course);
        // Found wrong (here: behind the log) with two batches led and not granted: the others
        // need their acquisitions to reach position 2, where its state must come from.
        course.restored(2, &[]);
        assert_eq!(
            events(&mut course),
            vec![
                Event::NeedState { from: 2, why: Behind::Log },
                Event::ProposeLead(grants(1, 0, 1, 3)),
                Event::ProposeLead(grants(1, 1, 2, 2)),
            ]
        );
        course.delivered(loose_entry(2, 0, vec![grants(1, 0, 1, 3)], 1)).unwrap();
        course.tick(LEAD_RETRY_MS);
        assert_eq!(events(&mut course), vec![Event::ProposeLead(grants(1, 1, 2, 2))], "batch 0 was granted");
        // Once another member leads, nothing of it is proposed any more.
        course.delivered(loose_entry(2, 0, vec![], 2)).unwrap();
        course.tick(2 * LEAD_RETRY_MS);
        assert_eq!(events(&mut course), vec![]);
    }

    #[test]
    fn an_lsa_batch_with_many_acquisitions_is_granted_part_by_part() {
        use crate::schedule::{MutexId, ThreadId};
        let made: Vec<Grant> = (0..5).map(|n| (MutexId(n), ThreadId(n as u16 % 2))).collect();
        let parts = |from| Lead::parts(member_id(1, 0), 0, 1, &made, from, 2);
        let proposed = |from| parts(from).into_iter().map(Event::ProposeLead).collect::<Vec<_>>();
        let mut leader = Course::founder(member_id(1, 0), &REPLICAS, 1 << 20).loose(2);
        let mut follower = Course::founder(member_id(2, 0), &REPLICAS, 1 << 20).loose(2);
        for course in [&mut leader, &mut follower] {
            course.delivered(loose_entry(0, 1, vec![], 1)).unwrap();
        }
        let next = leader.next_entry().unwrap();
        leader.executed(&Ok(vec![]));
        let answers: Vec<Answer> = next.entry.requests.into_iter().map(|request| (request, Ok(vec![]))).collect();
        leader.led(made.clone(), answers.clone(), 0);
        leader.entry_executed();
        assert_eq!(events(&mut leader), proposed(0), "three parts: 2, 2 and 1 acquisitions");
        // The order takes the first part; the rest were lost: only they are proposed again.
        let first = loose_entry(1, 0, parts(0)[..1].to_vec(), 1);
        for course in [&mut leader, &mut follower] {
            course.delivered(first.clone()).unwrap();
        }
        assert_eq!(events(&mut leader), vec![], "not granted before its last part");
        assert_eq!(follower.next_entry(), None, "nothing to follow yet");
        leader.tick(LEAD_RETRY_MS);
        assert_eq!(events(&mut leader), proposed(2));
        let rest = loose_entry(1, 0, parts(2), 1);
        for course in [&mut leader, &mut follower] {
            course.delivered(rest.clone()).unwrap();
        }
        assert_eq!(events(&mut leader), vec![Event::Granted { batch: 0, answers }]);
        assert_eq!(follower.next_entry().unwrap().acquisitions, Acquisitions::Follow(made));
    }

    #[test]
    fn a_dissenter_asks_for_a_state_from_where_it_stands_and_keeps_what_it_did_not_execute() {
        let mut course = Course::founder(member_id(3, 0), &REPLICAS, 1 << 20);
        course.delivered(entry(0, 2, Some(0), vec![])).unwrap();
        let _ = run(&mut course, b"wrong");
        // Handed out, not executed yet (under LSA it may wait for acquisitions only this replica
        // would lead).
        course.delivered(entry(2, 1, None, vec![])).unwrap();
        let majority = vec![digest_of(1, 0, 2, b"right"), digest_of(2, 0, 2, b"right")];
        course.delivered(entry(3, 1, None, majority)).unwrap();
        let events: Vec<Event> = std::iter::from_fn(|| course.poll_event()).collect();
        assert!(events.contains(&Event::NeedState { from: 2, why: Behind::Dissented { window: 0 } }), "{events:?}");
        // A state at 2, where its own stands, is enough: the entries after it are kept.
        assert_eq!(course.transferred(2, member_id(1, 0), 0), Ok(Taken::Installed));
        assert_eq!(run(&mut course, b"right").0, vec![2, 3]);
    }
}
