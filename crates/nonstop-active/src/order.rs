//! The total order of an actively replicated service's requests: what its Raft group (the
//! replicas themselves, a [`nonstop_control::RaftNode`] of [`Order`]) agrees on, entry by entry.
//!
//! A client numbers its requests 1, 2, 3, … and sends one at a time, again after a timeout or
//! to another replica until it has its replies; so the same request may be proposed twice, by
//! two replicas or in two terms. Each log entry is a batch of requests, and applying it delivers
//! each request whose number follows the last one delivered for its client: every replica
//! delivers the same requests, in the same order, each once. A retry of a request delivered
//! already, or a request that skips numbers, is delivered nothing.
//!
//! A request the service refused leaves its number to the client's next request (as in
//! passive replication), which says how many were refused under it: so the next request is
//! delivered under the same number, and a late copy of the refused one is not.
//!
//! Under LSA (an order made with [`Order::loose`]) entries also carry who leads the mutex
//! acquisitions and what the leader's threads took ([`Lead`]): one replica, the grant leader,
//! executes each batch with its threads taking mutexes as they come and proposes what they
//! took; every other replica takes them in that order. The order accepts a batch's
//! acquisitions once, from the member that claimed the lead last, for the oldest batch not
//! granted yet: so every replica follows the same acquisitions, and a leader deposed while its
//! acquisitions were on their way sees them refused (its state then is not the order's, and it
//! takes a live replica's).
//!
//! Each entry also carries the proposer's clock, and the order's time is the latest clock any
//! entry carried: replicas must not read their own clocks (a client table that expires idle
//! clients would then expire different ones on different replicas), so they all read this.
//!
//! ```
//! use nonstop_active::order::{Batch, Order, Request};
//! use nonstop_control::Replicated;
//! let mut order = Order::default();
//! let request = |client, number| Request { client, number, refused: 0, body: vec![] };
//! let first = order.apply(1, Batch { time_ms: 1_000, requests: vec![request(7, 1), request(8, 1)], ..Batch::default() });
//! assert_eq!((first.first, first.requests.len(), first.time_ms), (0, 2, 1_000));
//! // A retry of client 7's request 1 comes in a later entry with its request 2, proposed by a
//! // replica whose clock is behind: the order's time does not go back.
//! let second = order.apply(2, Batch { time_ms: 990, requests: vec![request(7, 1), request(7, 2)], ..Batch::default() });
//! assert_eq!((second.first, second.requests, second.time_ms), (2, vec![request(7, 2)], 1_000));
//! ```

use crate::dissent::{Digest, KEPT_DISPUTES, KEPT_WINDOWS, MAX_DIGESTS};
use crate::membership::node_of;
use crate::recent::Recent;
use crate::schedule::Grant;
use nonstop_control::{NodeId, Replicated};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Clients whose last delivered request the order remembers, so that no number of client ids
/// grows the group's state without bound.
///
/// When it holds this many, a new client takes the place of the one delivered to longest ago
/// if that one has been idle for [`CLIENT_EXPIRY_MS`] of order time; else the new client's
/// requests are not delivered until one has: every replica refuses them alike
/// ([`TURNED_AWAY`]), as a full client table does in passive replication. Forgetting a client
/// that may still retry would be unsafe: a late copy of a request the service refused,
/// delivered after the client reused the number, would be applied in its place.
pub const ORDER_CLIENTS: usize = 1 << 16;

/// Why a new client's request is refused while the order remembers as many clients as it may.
pub const TURNED_AWAY: &str =
    "the service remembers as many clients as it may, none idle long enough to be forgotten; call again later";

/// How long a client must have had no request delivered before the order may forget it, in
/// milliseconds of order time: far longer than a client retries one request.
pub const CLIENT_EXPIRY_MS: u64 = 10 * 60 * 1000;

/// Milliseconds of order time after which the order closes a window of outcomes that holds a
/// request (at the end of the first entry applied once they have passed, whatever it carries:
/// a stalled group's retries and digests still close the window its stall began in): each
/// replica then digests the outcomes of the window and proposes the digest
/// ([`crate::dissent`]).
pub const WINDOW_MS: u64 = 10;

/// Digests of one window the order keeps ([`Order::recent_digests`]): one per replica of
/// groups of up to 8; more of a window (a member proposing it twice) are not kept.
pub const DIGESTS_PER_WINDOW: usize = 8;

/// Acquisitions one entry may carry in all ([`Lead::Grants`]); an entry with more is refused
/// as a proposal. A batch whose threads took more travels in parts ([`Lead::parts`]), as
/// many entries as it takes ([`next_leads`]).
pub const MAX_GRANTS: usize = 1 << 16;

/// An LSA group's word on the mutex acquisitions, carried by an entry (see the module's
/// documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lead {
    /// `member` leads the acquisitions of every batch not granted yet, from this entry on,
    /// in place of `after` (proposed by the replica of the group's leader). It stands only if
    /// `after` still leads them when it is applied: a claim made on a stale view (two
    /// claimants at once, or one claim proposed twice) must not depose a leader nobody saw.
    Claim {
        /// The new grant leader.
        member: NodeId,
        /// The grant leader the claimant saw (`None`: none yet).
        after: Option<NodeId>,
    },
    /// Part of what `member`'s threads took, in order, executing the batch whose first request
    /// is at position `batch` of the order: its acquisitions from `from` on. The order grants
    /// the batch once it has accepted all `total` of them, part after part, of one execution.
    Grants {
        /// The grant leader that executed the batch.
        member: NodeId,
        /// The batch's first request's position.
        batch: u64,
        /// Which of the member's executions as grant leader made them (it numbers them): a
        /// member that led a batch again after it took a state made other acquisitions, and
        /// parts of the two must not mix.
        execution: u64,
        /// How many of the execution's acquisitions earlier parts carry.
        from: u64,
        /// How many acquisitions the execution made in all.
        total: u64,
        /// The acquisitions from `from` on, in the order they were made.
        acquisitions: Vec<Grant>,
    },
}

impl Lead {
    /// The member that proposed it.
    pub fn member(&self) -> NodeId {
        match self {
            Lead::Claim { member, .. } | Lead::Grants { member, .. } => *member,
        }
    }

    /// The acquisitions `member`'s `execution` of batch `batch` made, from `from` on, as
    /// [`Lead::Grants`] of at most `per_part` acquisitions each (at least one part, however
    /// few).
    pub fn parts(
        member: NodeId,
        batch: u64,
        execution: u64,
        acquisitions: &[Grant],
        from: u64,
        per_part: usize,
    ) -> Vec<Lead> {
        let total = acquisitions.len() as u64;
        let rest = &acquisitions[(from as usize).min(acquisitions.len())..];
        let part = |offset: usize, chunk: &[Grant]| Lead::Grants {
            member,
            batch,
            execution,
            from: from + offset as u64,
            total,
            acquisitions: chunk.to_vec(),
        };
        if rest.is_empty() {
            return vec![part(0, rest)];
        }
        rest.chunks(per_part.max(1)).enumerate().map(|(n, chunk)| part(n * per_part.max(1), chunk)).collect()
    }

    /// The acquisitions it carries.
    fn grants(&self) -> usize {
        match self {
            Lead::Grants { acquisitions, .. } => acquisitions.len(),
            Lead::Claim { .. } => 0,
        }
    }
}

/// The leads waiting in `pending` that one entry carries, oldest first: as many as fit
/// [`MAX_GRANTS`] acquisitions, and at least one. The rest stay for the next entries.
pub fn next_leads(pending: &mut Vec<Lead>) -> Vec<Lead> {
    let mut grants = 0;
    let fit = pending
        .iter()
        .position(|lead| {
            grants += lead.grants();
            grants > MAX_GRANTS
        })
        .unwrap_or(pending.len())
        .max(1)
        .min(pending.len());
    let rest = pending.split_off(fit);
    std::mem::replace(pending, rest)
}

/// One client request, as proposed to the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The client (each numbers its own requests).
    pub client: u64,
    /// The request's number: 1 for the client's first, then one more each time.
    pub number: u64,
    /// How many requests under this number the service refused before it.
    pub refused: u32,
    /// The service's bytes.
    pub body: Vec<u8>,
}

/// One log entry: requests in the order the proposer took them, its clock, and its digests.
///
/// The fields are encoded in this order, the digests and leads before the requests, so that a
/// leader checks an entry's digests and leads (forwarded by a member, or its own) without
/// decoding its requests ([`Replicated::check_proposal`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The proposer's clock, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The proposer's digests of windows of outcomes it executed ([`crate::dissent`]).
    pub digests: Vec<Digest>,
    /// The proposer's claim of the lead and its acquisitions (LSA only).
    pub leads: Vec<Lead>,
    /// The requests.
    pub requests: Vec<Request>,
}

/// What a replica delivers from one committed entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The entry's log index.
    pub index: u64,
    /// The position in the whole order of the first request delivered here (the count of
    /// requests delivered before it).
    pub first: u64,
    /// The entry's requests delivered for the first time, in order.
    pub requests: Vec<Request>,
    /// Requests that would have been delivered but for a new client finding the order full
    /// ([`ORDER_CLIENTS`], none expired): every replica refuses them alike ([`TURNED_AWAY`]),
    /// so that their callers hear why instead of waiting out their deadline.
    pub turned_away: Vec<Request>,
    /// The order's time once the entry is applied: the latest clock of any entry so far, what
    /// every replica uses as "now" for these requests.
    pub time_ms: u64,
    /// The entry's digests of outcomes, for every replica to compare ([`crate::dissent`]).
    pub digests: Vec<Digest>,
    /// The window of outcomes this entry closes, if it does: the window's requests are those
    /// delivered since the last close, this entry's included.
    pub closes: Option<u64>,
    /// The entry's leads the order accepted (LSA only): a claim of the lead, or the grant
    /// leader's acquisitions for the oldest batch not granted before. Applied before the
    /// entry's own requests, which form a batch granted later.
    pub leads: Vec<Lead>,
    /// The member that claimed the lead of the acquisitions last, once the entry is applied
    /// (LSA only): what a replica that missed the claim (it came inside a snapshot) learns it
    /// from.
    pub grant_leader: Option<NodeId>,
}

/// What the group has delivered, the state every replica holds alike.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The last log index applied.
    applied: u64,
    /// Requests delivered in all.
    delivered: u64,
    /// Each client's last request delivered: its number, refusals before it and the order's
    /// time then; at most [`ORDER_CLIENTS`] clients, those delivered to most recently.
    last: Recent<u64, (u64, u32, u64), ORDER_CLIENTS>,
    /// Requests of new clients refused because the order held [`ORDER_CLIENTS`] clients, none
    /// expired.
    turned_away: u64,
    /// The latest clock of any entry applied.
    time_ms: u64,
    /// The open window of outcomes: its number, the order's time when it opened, and the
    /// requests delivered in it.
    window: u64,
    window_opened_ms: u64,
    window_requests: u64,
    /// Under LSA: who leads the acquisitions, and which batches await them.
    loose: Option<Granting>,
    /// Digests delivered, by window: those of the newest [`KEPT_WINDOWS`] windows, and of up to
    /// [`KEPT_DISPUTES`] older ones whose digests differ. Part of a snapshot, so that a
    /// replica that fell behind the compacted log still knows what the replicas digested
    /// meanwhile, and that two of them disagreed (order seed 165 with two faults: the
    /// disagreement was older than the window count when the replica took a state).
    digested: BTreeMap<u64, Vec<Digest>>,
    /// Each node's newest digest (of its newest incarnation, of its latest window), at most
    /// [`DIGESTS_PER_WINDOW`] nodes: it says since when the replica holds the state it holds
    /// ([`Digest::since`]), which decides whether an old dispute still concerns that state
    /// (order-lsa seed 906: a replica that had re-integrated after a dispute, and whose later
    /// digests had aged out, read as a party to it).
    newest: BTreeMap<u64, Digest>,
}

/// An LSA order's grant leader and the batches it has not granted yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Granting {
    /// The member that claimed the lead last.
    leader: Option<NodeId>,
    /// The first positions of batches delivered whose acquisitions were not, oldest first: at
    /// most one per client the order remembers, since a client waits for its reply (and so
    /// for its batch's acquisitions) before its next request.
    ungranted: VecDeque<u64>,
    /// The oldest ungranted batch's acquisitions accepted so far, if some parts of them were.
    granting: Option<Parts>,
}

/// The parts of one execution's acquisitions the order accepted so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Parts {
    execution: u64,
    accepted: u64,
    total: u64,
}

impl Order {
    /// The order of a service whose replicas run under LSA: entries' acquisitions ([`Lead`])
    /// are accepted, each batch's once, from its grant leader.
    pub fn loose() -> Order {
        Order { loose: Some(Granting::default()), ..Order::default() }
    }

    /// Whether it orders acquisitions too ([`Order::loose`]).
    pub fn is_loose(&self) -> bool {
        self.loose.is_some()
    }

    /// The member that claimed the lead of the acquisitions last (LSA only).
    pub fn grant_leader(&self) -> Option<NodeId> {
        self.loose.as_ref().and_then(|loose| loose.leader)
    }

    /// The leads of an entry that stand: every claim, and the grant leader's next part of the
    /// acquisitions of the oldest batch not granted yet (a copy proposed again, a deposed
    /// leader's, or a part of another execution than the one begun, is dropped). None unless
    /// the order is loose.
    fn lead(&mut self, leads: Vec<Lead>) -> Vec<Lead> {
        let Some(loose) = &mut self.loose else { return Vec::new() };
        leads
            .into_iter()
            .filter(|lead| match lead {
                Lead::Claim { member, after } => {
                    let stands = loose.leader == *after;
                    if stands {
                        loose.leader = Some(*member);
                        // The new leader's acquisitions begin afresh.
                        loose.granting = None;
                    }
                    stands
                }
                Lead::Grants { member, batch, execution, from, total, acquisitions } => {
                    let next = match loose.granting {
                        None => *from == 0,
                        Some(parts) => parts == Parts { execution: *execution, accepted: *from, total: *total },
                    };
                    let stands = next && loose.leader == Some(*member) && loose.ungranted.front() == Some(batch);
                    if stands {
                        let accepted = from + acquisitions.len() as u64;
                        loose.granting =
                            (accepted < *total).then_some(Parts { execution: *execution, accepted, total: *total });
                        if loose.granting.is_none() {
                            loose.ungranted.pop_front();
                        }
                    }
                    stands
                }
            })
            .collect()
    }

    /// The digests of recent windows and of older disputed ones, by window: what a replica
    /// given the order's snapshot in place of the entries that carried them judges its donor
    /// by ([`crate::course::Course::restored`]).
    pub fn recent_digests(&self) -> impl Iterator<Item = &Digest> {
        self.newest.values().chain(self.digested.values().flatten())
    }

    fn remember(&mut self, digests: &[Digest]) {
        if digests.is_empty() {
            return;
        }
        for digest in digests {
            let node = node_of(digest.member);
            let room = self.newest.len() < DIGESTS_PER_WINDOW;
            match self.newest.get_mut(&node) {
                Some(held) if (digest.member.0, digest.window) > (held.member.0, held.window) => *held = *digest,
                Some(_) => {}
                None if room => {
                    self.newest.insert(node, *digest);
                }
                None => {}
            }
            let held = self.digested.entry(digest.window).or_default();
            if held.len() < DIGESTS_PER_WINDOW {
                held.push(*digest);
            }
        }
        let newest = self.digested.keys().next_back().copied().unwrap_or(0);
        let disputed = |held: &Vec<Digest>| held.iter().any(|digest| digest.hash != held[0].hash);
        // `newest` is the greatest key: no window number, however large a member made it, wraps.
        self.digested.retain(|window, held| newest - window < KEPT_WINDOWS as u64 || disputed(held));
        while self.digested.len() > KEPT_WINDOWS + KEPT_DISPUTES {
            self.digested.pop_first();
        }
    }

    /// Requests delivered in all.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// The last request number delivered for `client` (0: none).
    pub fn last_delivered(&self, client: u64) -> u64 {
        self.last.get(&client).map_or(0, |last| last.0)
    }

    /// Requests of new clients refused because the order held as many clients as it may, none
    /// idle long enough to be forgotten.
    pub fn turned_away(&self) -> u64 {
        self.turned_away
    }

    /// Whether `client` is remembered, or may be: there is room, or the client delivered to
    /// longest ago has expired.
    fn has_room_for(&self, client: u64) -> bool {
        self.last.get(&client).is_some()
            || !self.last.is_full()
            || self.last.oldest().is_some_and(|(_, (_, _, at))| self.time_ms.saturating_sub(*at) >= CLIENT_EXPIRY_MS)
    }

    /// Whether `request` is its client's next: the number after the last one delivered, or
    /// the last number again after more refusals (the client's next request after a refused
    /// one).
    fn follows(&self, request: &Request) -> bool {
        let (number, refused, _) = self.last.get(&request.client).copied().unwrap_or((0, 0, 0));
        match request.number.checked_sub(number) {
            Some(1) => true,
            Some(0) => number > 0 && request.refused > refused,
            _ => false,
        }
    }
}

impl Replicated for Order {
    type Command = Batch;
    type Applied = Delivered;

    fn apply(&mut self, index: u64, batch: Batch) -> Delivered {
        self.applied = index;
        self.time_ms = self.time_ms.max(batch.time_ms);
        let leads = self.lead(batch.leads);
        self.remember(&batch.digests);
        let first = self.delivered;
        let mut requests = Vec::new();
        let mut turned_away = Vec::new();
        for request in batch.requests {
            // Only a delivery is remembered: requests delivered nothing leave no trace.
            if !self.follows(&request) {
                continue;
            }
            if !self.has_room_for(request.client) {
                self.turned_away += 1;
                turned_away.push(request);
                continue;
            }
            self.last.insert(request.client, (request.number, request.refused, self.time_ms));
            self.delivered += 1;
            requests.push(request);
        }
        self.window_requests += requests.len() as u64;
        if let Some(loose) = self.loose.as_mut().filter(|_| !requests.is_empty()) {
            loose.ungranted.push_back(first);
        }
        let closes = (self.window_requests > 0 && self.time_ms.saturating_sub(self.window_opened_ms) >= WINDOW_MS)
            .then(|| {
                let closed = self.window;
                (self.window, self.window_opened_ms, self.window_requests) = (closed + 1, self.time_ms, 0);
                closed
            });
        Delivered {
            index,
            first,
            requests,
            turned_away,
            time_ms: self.time_ms,
            digests: batch.digests,
            closes,
            leads,
            grant_leader: self.grant_leader(),
        }
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    /// A replica's entry, forwarded to the leader or proposed by the leader itself, carries its
    /// own digests and leads only (another replica's digest would be counted for that one by
    /// every [`crate::dissent::Judge`], another's claim would depose the grant leader), and not
    /// too many.
    fn check_proposal(encoded: &[u8], proposer: NodeId) -> Result<(), String> {
        let ((_time_ms, digests, leads), _) = postcard::take_from_bytes::<(u64, Vec<Digest>, Vec<Lead>)>(encoded)
            .map_err(|error| format!("not an entry of the order: {error}"))?;
        if digests.len() > MAX_DIGESTS {
            return Err(format!("{} digests in one entry, more than {MAX_DIGESTS}", digests.len()));
        }
        if let Some(forged) = digests.iter().find(|digest| digest.member != proposer) {
            return Err(format!("a digest in the name of member {}, from member {}", forged.member.0, proposer.0));
        }
        // A state held since a later window would make every dispute about this member moot.
        if let Some(ahead) = digests.iter().find(|digest| digest.since > digest.window) {
            return Err(format!("a digest of window {} by a state held since window {}", ahead.window, ahead.since));
        }
        if let Some(forged) = leads.iter().find(|lead| lead.member() != proposer) {
            return Err(format!("a lead in the name of member {}, from member {}", forged.member().0, proposer.0));
        }
        for lead in &leads {
            let Lead::Grants { from, total, acquisitions, .. } = lead else { continue };
            // Each part brings the execution's acquisitions on, and none past their total.
            let past = from.checked_add(acquisitions.len() as u64).is_none_or(|end| end > *total);
            if past || (acquisitions.is_empty() && from < total) {
                return Err(format!("acquisitions {from}..+{} of {total}: not a part of them", acquisitions.len()));
            }
        }
        let grants: usize = leads.iter().map(Lead::grants).sum();
        if grants > MAX_GRANTS {
            return Err(format!("{grants} acquisitions in one entry, more than {MAX_GRANTS}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(client: u64, number: u64) -> Request {
        Request { client, number, refused: 0, body: vec![number as u8] }
    }

    fn batch(requests: Vec<Request>) -> Batch {
        Batch { time_ms: 0, requests, ..Batch::default() }
    }

    #[test]
    fn each_request_is_delivered_once_in_number_order() {
        let mut order = Order::default();
        let delivered = order.apply(1, batch(vec![request(1, 1), request(1, 1), request(1, 3), request(1, 2)]));
        assert_eq!(delivered.requests, vec![request(1, 1), request(1, 2)]);
        assert_eq!((order.delivered(), order.last_delivered(1), order.applied_index()), (2, 2, 1));
        // A zero number never follows anything, and leaves no trace.
        assert!(order.apply(2, batch(vec![request(2, 0)])).requests.is_empty());
        assert_eq!(order.last_delivered(2), 0);
        let later = order.apply(3, batch(vec![request(1, 3), request(2, 1)]));
        assert_eq!((later.first, later.requests), (2, vec![request(1, 3), request(2, 1)]));
    }

    #[test]
    fn a_forwarded_entry_carries_its_proposers_digests_only() {
        let digest = |member| Digest { member: NodeId(member), window: 3, hash: [7; 16], since: 0 };
        let encoded = |digests: Vec<Digest>| {
            postcard::to_stdvec(&Batch { time_ms: 5, digests, requests: vec![request(1, 1)], leads: vec![] }).unwrap()
        };
        assert_eq!(Order::check_proposal(&encoded(vec![digest(2)]), NodeId(2)), Ok(()));
        assert_eq!(Order::check_proposal(&encoded(vec![]), NodeId(2)), Ok(()));
        let forged = Order::check_proposal(&encoded(vec![digest(2), digest(3)]), NodeId(2)).unwrap_err();
        assert!(forged.contains("in the name of member 3"), "{forged}");
        let many = encoded(vec![digest(2); MAX_DIGESTS + 1]);
        assert!(Order::check_proposal(&many, NodeId(2)).unwrap_err().contains("digests in one entry"));
        assert!(Order::check_proposal(&[0xff; 3], NodeId(2)).unwrap_err().contains("not an entry"));
        let since = |since| encoded(vec![Digest { since, ..digest(2) }]);
        assert_eq!(Order::check_proposal(&since(3), NodeId(2)), Ok(()));
        assert!(Order::check_proposal(&since(4), NodeId(2)).unwrap_err().contains("held since window 4"));
    }

    #[test]
    fn each_batch_is_granted_once_by_the_member_that_claimed_the_lead_last() {
        use crate::schedule::{MutexId, ThreadId};
        let grants = |member, batch, thread| Lead::Grants {
            member: NodeId(member),
            batch,
            execution: thread,
            from: 0,
            total: 1,
            acquisitions: vec![(MutexId(0), ThreadId(thread as u16))],
        };
        let claim = |member, after: Option<u64>| Lead::Claim { member: NodeId(member), after: after.map(NodeId) };
        let entry = |leads, requests| Batch { leads, requests, ..Batch::default() };
        let mut order = Order::loose();
        let first = order.apply(1, entry(vec![claim(1, None)], vec![request(1, 1), request(2, 1)]));
        assert_eq!(first.leads, vec![claim(1, None)]);
        assert_eq!(order.grant_leader(), Some(NodeId(1)));
        // Not the grant leader's, not the oldest batch: dropped.
        assert!(order.apply(2, entry(vec![grants(2, 0, 0), grants(1, 2, 0)], vec![])).leads.is_empty());
        let granted = order.apply(3, entry(vec![grants(1, 0, 1), grants(1, 0, 0)], vec![request(1, 2)]));
        assert_eq!(granted.leads, vec![grants(1, 0, 1)], "the first acquisitions for a batch stand, a copy does not");
        // Batch 2 (client 1's request 2) awaits; a new leader claims before its old leader's
        // acquisitions come, which then do not stand.
        // A claim on a stale view (it saw no leader) does not stand.
        let claims = entry(vec![claim(3, None), claim(2, Some(1)), grants(1, 2, 0)], vec![]);
        assert_eq!(order.apply(4, claims).leads, vec![claim(2, Some(1))]);
        assert_eq!(order.apply(5, entry(vec![grants(2, 2, 1)], vec![])).leads, vec![grants(2, 2, 1)]);
        // An entry that delivers no request is no batch to grant.
        order.apply(6, entry(vec![], vec![request(1, 2)]));
        assert!(order.apply(7, entry(vec![grants(2, 3, 0)], vec![])).leads.is_empty());
        // The leads are part of the group's state, snapshots included.
        let bytes = postcard::to_stdvec(&order).unwrap();
        assert_eq!(postcard::from_bytes::<Order>(&bytes).unwrap(), order);
        // An order that is not loose takes no leads.
        let mut batches = Order::default();
        assert!(batches.apply(1, entry(vec![claim(1, None)], vec![request(1, 1)])).leads.is_empty());
        assert_eq!(batches.grant_leader(), None);
    }

    #[test]
    fn a_forwarded_entry_carries_its_proposers_leads_only_and_not_too_many_acquisitions() {
        use crate::schedule::{MutexId, ThreadId};
        let encoded = |leads| postcard::to_stdvec(&Batch { leads, ..Batch::default() }).unwrap();
        let grants = |member, count| Lead::Grants {
            member: NodeId(member),
            batch: 0,
            execution: 1,
            from: 0,
            total: count as u64,
            acquisitions: vec![(MutexId(1), ThreadId(0)); count],
        };
        let claim = |member| Lead::Claim { member: NodeId(member), after: None };
        assert_eq!(Order::check_proposal(&encoded(vec![claim(2), grants(2, 3)]), NodeId(2)), Ok(()));
        let forged = Order::check_proposal(&encoded(vec![claim(3)]), NodeId(2)).unwrap_err();
        assert!(forged.contains("a lead in the name of member 3"), "{forged}");
        let many = Order::check_proposal(&encoded(vec![grants(2, MAX_GRANTS), grants(2, 1)]), NodeId(2)).unwrap_err();
        assert!(many.contains("acquisitions in one entry"), "{many}");
        // A part must bring the acquisitions on, and not past their total.
        let part = |from, total, count| Lead::Grants {
            member: NodeId(2),
            batch: 0,
            execution: 1,
            from,
            total,
            acquisitions: vec![(MutexId(1), ThreadId(0)); count],
        };
        assert_eq!(Order::check_proposal(&encoded(vec![part(3, 5, 2), part(0, 0, 0)]), NodeId(2)), Ok(()));
        for bad in [part(4, 5, 2), part(2, 5, 0), part(u64::MAX, u64::MAX, 1)] {
            let refused = Order::check_proposal(&encoded(vec![bad]), NodeId(2)).unwrap_err();
            assert!(refused.contains("not a part of them"), "{refused}");
        }
    }

    #[test]
    fn a_batch_is_granted_once_every_part_of_one_execution_stands_in_order() {
        use crate::schedule::{MutexId, ThreadId};
        let made = |execution: u64, count: u64| {
            (0..count).map(|n| (MutexId(n as u32), ThreadId(execution as u16))).collect::<Vec<_>>()
        };
        let parts = |member, batch, execution, count, from| {
            Lead::parts(NodeId(member), batch, execution, &made(execution, count), from, 2)
        };
        let entry = |leads: Vec<Lead>, requests| Batch { leads, requests, ..Batch::default() };
        let granted = |order: &Order| order.loose.as_ref().unwrap().ungranted.front().copied();
        // Five acquisitions in parts of two: 0..2, 2..4, 4..5; nothing at all is one empty part.
        let five = parts(1, 0, 7, 5, 0);
        assert_eq!(five.iter().map(Lead::grants).collect::<Vec<_>>(), vec![2, 2, 1]);
        assert_eq!(parts(1, 0, 7, 0, 0).len(), 1);
        assert_eq!(parts(1, 0, 7, 5, 2), five[1..].to_vec(), "the parts from an offset on");
        let mut order = Order::loose();
        let claim = Lead::Claim { member: NodeId(1), after: None };
        order.apply(1, entry(vec![claim], vec![request(1, 1)]));
        order.apply(2, entry(vec![], vec![request(2, 1)]));
        // Out of order, then in order: the first part stands, a copy of it does not.
        assert!(order.apply(3, entry(vec![five[1].clone()], vec![])).leads.is_empty());
        assert_eq!(order.apply(4, entry(vec![five[0].clone(), five[0].clone()], vec![])).leads, vec![five[0].clone()]);
        assert_eq!(granted(&order), Some(0), "not granted before its last part");
        // Another execution's parts do not mix in, even at the right offset.
        let other = parts(1, 0, 8, 5, 0);
        assert!(order.apply(5, entry(vec![other[1].clone()], vec![])).leads.is_empty());
        let rest = order.apply(6, entry(five[1..].to_vec(), vec![])).leads;
        assert_eq!(rest, five[1..].to_vec());
        assert_eq!(granted(&order), Some(1), "batch 0 granted, batch 1 next");
        // A new grant leader's acquisitions begin afresh: the old one's next part is dropped.
        let three = parts(1, 1, 9, 3, 0);
        order.apply(7, entry(vec![three[0].clone()], vec![]));
        order.apply(8, entry(vec![Lead::Claim { member: NodeId(2), after: Some(NodeId(1)) }], vec![]));
        assert!(order.apply(9, entry(vec![three[1].clone()], vec![])).leads.is_empty());
        let theirs = parts(2, 1, 1, 1, 0);
        assert_eq!(order.apply(10, entry(theirs.clone(), vec![])).leads, theirs);
        assert_eq!(granted(&order), None);
    }

    #[test]
    fn an_entry_takes_the_leads_that_fit_and_leaves_the_rest() {
        use crate::schedule::{MutexId, ThreadId};
        let acquisitions = vec![(MutexId(1), ThreadId(0)); MAX_GRANTS + 3];
        let claim = Lead::Claim { member: NodeId(1), after: None };
        let mut pending = vec![claim.clone()];
        pending.extend(Lead::parts(NodeId(1), 0, 1, &acquisitions, 0, MAX_GRANTS));
        let first = next_leads(&mut pending);
        assert_eq!((first.len(), first[0].clone(), first[1].grants()), (2, claim, MAX_GRANTS));
        assert_eq!(next_leads(&mut pending).iter().map(Lead::grants).collect::<Vec<_>>(), vec![3]);
        assert!(pending.is_empty() && next_leads(&mut pending).is_empty());
    }

    #[test]
    fn the_order_keeps_recent_and_disputed_digests_bounded_and_in_its_snapshot() {
        let mut order = Order::default();
        let digest = |member, window, hash| Digest { member: NodeId(member), window, hash: [hash; 16], since: 0 };
        let with = |digests| Batch { digests, ..Batch::default() };
        let windows = |order: &Order| order.digested.values().flatten().map(|d| d.window).collect::<Vec<u64>>();
        // Window 0: replicas 1 and 2 disagree. Window 1: all agree.
        order.apply(1, with(vec![digest(1, 0, 1), digest(2, 0, 2)]));
        order.apply(2, with(vec![]));
        order.apply(3, with(vec![digest(1, 1, 7), digest(2, 1, 7), digest(3, 1, 7)]));
        assert_eq!(windows(&order), vec![0, 0, 1, 1, 1]);
        let bytes = postcard::to_stdvec(&order).unwrap();
        assert_eq!(postcard::from_bytes::<Order>(&bytes).unwrap(), order, "a snapshot carries them");
        // KEPT_WINDOWS windows later, the window all agreed on is forgotten, the disputed one
        // is not, and each replica's newest digest stays (what it says of its state).
        let later = KEPT_WINDOWS as u64 + 1;
        order.apply(4, with(vec![Digest { since: later, ..digest(1, later, 7) }]));
        assert_eq!(windows(&order), vec![0, 0, later]);
        let newest: Vec<(u64, u64)> = order.newest.values().map(|d| (d.member.0, d.since)).collect();
        assert_eq!(newest, vec![(1, later), (2, 0), (3, 0)]);
        assert_eq!(order.recent_digests().count(), 3 + 3, "the newest of each, and the windows kept");
        // A window holds one digest per replica of a group of 8 at most.
        order.apply(5, with(vec![digest(4, later, 7); DIGESTS_PER_WINDOW * 2]));
        assert_eq!(windows(&order).iter().filter(|w| **w == later).count(), DIGESTS_PER_WINDOW);
        // Disputes are bounded too: the oldest go first.
        for window in 0..(KEPT_DISPUTES as u64 * 2) {
            let window = later + 1 + window;
            order.apply(6 + window, with(vec![digest(1, window, 1), digest(2, window, 2)]));
        }
        let kept: std::collections::BTreeSet<u64> = windows(&order).into_iter().collect();
        assert_eq!(kept.len(), KEPT_WINDOWS + KEPT_DISPUTES);
        assert!(!kept.contains(&0));
        // Nodes are bounded as digests of a window are.
        for node in 10..30 {
            order.apply(1000 + node, with(vec![digest(node, 10_000, 1)]));
        }
        assert_eq!(order.newest.len(), DIGESTS_PER_WINDOW);
        // A faulty member's window numbers at the end of the range neither wrap nor grow it.
        order.apply(2000, with(vec![digest(1, u64::MAX, 1), digest(2, u64::MAX - 1, 1)]));
        let windows = windows(&order);
        assert!(windows.contains(&u64::MAX) && windows.len() <= (KEPT_WINDOWS + KEPT_DISPUTES) * DIGESTS_PER_WINDOW);
    }

    #[test]
    fn windows_of_outcomes_that_hold_requests_close_by_order_time() {
        let mut order = Order::default();
        let at = |time_ms, requests| Batch { time_ms, requests, ..Batch::default() };
        let mut closes = Vec::new();
        for (index, (time_ms, requests)) in [
            (100, vec![request(1, 1)]),
            (105, vec![request(1, 2)]),
            (111, vec![request(1, 3)]),
            // Time passes with nothing delivered: no window closes until a request is.
            (200, vec![]),
            (201, vec![request(1, 3)]),
            (202, vec![request(1, 4)]),
            (203, vec![request(1, 5)]),
            // An entry that delivers nothing (a retry, a digest) closes a window too.
            (220, vec![request(1, 5)]),
        ]
        .into_iter()
        .enumerate()
        {
            closes.push(order.apply(index as u64 + 1, at(time_ms, requests)).closes);
        }
        assert_eq!(closes, vec![Some(0), None, Some(1), None, None, Some(2), None, Some(3)]);
    }

    #[test]
    fn the_clients_remembered_are_bounded_and_only_expired_ones_are_forgotten() {
        let mut order = Order::default();
        let first = |client| batch(vec![Request { client, ..request(0, 1) }]);
        let full = ORDER_CLIENTS as u64;
        for client in 1..=full {
            order.apply(client, first(client));
        }
        // Full, and nobody idle long enough: a new client waits, and a client still remembered
        // is served as before.
        let turned = order.apply(full + 1, first(full + 1));
        assert!(turned.requests.is_empty());
        assert_eq!(turned.turned_away, vec![Request { client: full + 1, ..request(0, 1) }], "refused, not dropped");
        assert_eq!((order.last.len(), order.turned_away()), (ORDER_CLIENTS, 1));
        let next = order.apply(full + 2, batch(vec![Request { client: 5, ..request(0, 2) }]));
        assert_eq!(next.requests.len(), 1);
        // Once the oldest has been idle for the expiry, the new client takes its place.
        let later = Batch {
            time_ms: CLIENT_EXPIRY_MS,
            requests: vec![Request { client: full + 1, ..request(0, 1) }],
            ..Batch::default()
        };
        assert_eq!(order.apply(full + 3, later).requests.len(), 1);
        assert_eq!(order.last.len(), ORDER_CLIENTS, "client ids cost bounded memory");
        assert_eq!(order.last_delivered(1), 0, "client 1 was delivered to longest ago");
        // The snapshot of a full order stays bounded and decodes to the same state.
        let bytes = postcard::to_stdvec(&order).unwrap();
        assert_eq!(postcard::from_bytes::<Order>(&bytes).unwrap(), order);
    }

    #[test]
    fn a_number_whose_request_was_refused_is_delivered_again_once_per_refusal() {
        let mut order = Order::default();
        let refused = |number, refused| Request { refused, ..request(1, number) };
        order.apply(1, batch(vec![request(1, 1)]));
        // Request 1 was refused; the client's next request takes number 1 again, and a late
        // copy of the refused one is not delivered after it.
        let again = order.apply(2, batch(vec![refused(1, 1), request(1, 1), refused(1, 1)]));
        assert_eq!(again.requests, vec![refused(1, 1)]);
        let twice = order.apply(3, batch(vec![refused(1, 2), refused(1, 3), request(1, 2)]));
        assert_eq!(twice.requests, vec![refused(1, 2), refused(1, 3), request(1, 2)]);
        // A first request never counts as a repeat of number 0.
        assert!(
            order
                .apply(4, batch(vec![refused(0, 1)].into_iter().map(|r| Request { client: 2, ..r }).collect()))
                .requests
                .is_empty()
        );
    }
}
