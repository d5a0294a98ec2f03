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
//! Each entry also carries the proposer's clock, and the order's time is the latest clock any
//! entry carried: replicas must not read their own clocks (a client table that expires idle
//! clients would then expire different ones on different replicas), so they all read this.
//!
//! ```
//! use nonstop_active::order::{Batch, Order, Request};
//! use nonstop_control::Replicated;
//! let mut order = Order::default();
//! let request = |client, number| Request { client, number, refused: 0, body: vec![] };
//! let first = order.apply(1, Batch { time_ms: 1_000, requests: vec![request(7, 1), request(8, 1)], digests: vec![] });
//! assert_eq!((first.first, first.requests.len(), first.time_ms), (0, 2, 1_000));
//! // A retry of client 7's request 1 comes in a later entry with its request 2, proposed by a
//! // replica whose clock is behind: the order's time does not go back.
//! let second = order.apply(2, Batch { time_ms: 990, requests: vec![request(7, 1), request(7, 2)], digests: vec![] });
//! assert_eq!((second.first, second.requests, second.time_ms), (2, vec![request(7, 2)], 1_000));
//! ```

use crate::dissent::{Digest, MAX_DIGESTS};
use crate::recent::Recent;
use nonstop_control::{NodeId, Replicated};
use serde::{Deserialize, Serialize};

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
/// The fields are encoded in this order, the digests before the requests, so that a leader
/// checks an entry's digests (forwarded by a member, or its own) without decoding its requests
/// ([`Replicated::check_proposal`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The proposer's clock, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The proposer's digests of windows of outcomes it executed ([`crate::dissent`]).
    pub digests: Vec<Digest>,
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
}

impl Order {
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
        let closes = (self.window_requests > 0 && self.time_ms.saturating_sub(self.window_opened_ms) >= WINDOW_MS)
            .then(|| {
                let closed = self.window;
                (self.window, self.window_opened_ms, self.window_requests) = (closed + 1, self.time_ms, 0);
                closed
            });
        Delivered { index, first, requests, turned_away, time_ms: self.time_ms, digests: batch.digests, closes }
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    /// A replica's entry, forwarded to the leader or proposed by the leader itself, carries its
    /// own digests only (another replica's would be counted for that one by every
    /// [`crate::dissent::Judge`]), and not too many.
    fn check_proposal(encoded: &[u8], proposer: NodeId) -> Result<(), String> {
        let ((_time_ms, digests), _) = postcard::take_from_bytes::<(u64, Vec<Digest>)>(encoded)
            .map_err(|error| format!("not an entry of the order: {error}"))?;
        if digests.len() > MAX_DIGESTS {
            return Err(format!("{} digests in one entry, more than {MAX_DIGESTS}", digests.len()));
        }
        match digests.iter().find(|digest| digest.member != proposer) {
            Some(forged) => {
                Err(format!("a digest in the name of member {}, from member {}", forged.member.0, proposer.0))
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(client: u64, number: u64) -> Request {
        Request { client, number, refused: 0, body: vec![number as u8] }
    }

    fn batch(requests: Vec<Request>) -> Batch {
        Batch { time_ms: 0, requests, digests: vec![] }
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
        let digest = |member| Digest { member: NodeId(member), window: 3, hash: [7; 16] };
        let encoded = |digests: Vec<Digest>| {
            postcard::to_stdvec(&Batch { time_ms: 5, digests, requests: vec![request(1, 1)] }).unwrap()
        };
        assert_eq!(Order::check_proposal(&encoded(vec![digest(2)]), NodeId(2)), Ok(()));
        assert_eq!(Order::check_proposal(&encoded(vec![]), NodeId(2)), Ok(()));
        let forged = Order::check_proposal(&encoded(vec![digest(2), digest(3)]), NodeId(2)).unwrap_err();
        assert!(forged.contains("in the name of member 3"), "{forged}");
        let many = encoded(vec![digest(2); MAX_DIGESTS + 1]);
        assert!(Order::check_proposal(&many, NodeId(2)).unwrap_err().contains("digests in one entry"));
        assert!(Order::check_proposal(&[0xff; 3], NodeId(2)).unwrap_err().contains("not an entry"));
    }

    #[test]
    fn windows_of_outcomes_that_hold_requests_close_by_order_time() {
        let mut order = Order::default();
        let at = |time_ms, requests| Batch { time_ms, requests, digests: vec![] };
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
            digests: vec![],
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
