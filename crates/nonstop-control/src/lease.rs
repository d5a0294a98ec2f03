//! The holder's side of a lease: which asks are outstanding and until when output may leave.
//!
//! A primary asks for a lease by proposing `GrantLease` with a fresh request number and counts
//! the lease from the moment it asked — before the grant exists — so its lease always ends
//! before any wait the control plane times from applying the grant. Only a grant of one of its
//! own outstanding asks counts: a grant replayed from the log after a restart names an ask of an
//! earlier incarnation and is ignored.

use nonstop_proto::Nanos;
use std::collections::BTreeMap;

/// A primary's lease bookkeeping.
#[derive(Debug, Clone)]
pub struct LeaseKeeper {
    incarnation: u64,
    next: u64,
    asks: BTreeMap<u64, Nanos>,
    until: Option<Nanos>,
    last_ask: Option<Nanos>,
}

impl LeaseKeeper {
    /// A keeper for one process incarnation: `incarnation` is random per process, and its low
    /// 40 bits prefix every request number, so that no two incarnations share one.
    pub fn new(incarnation: u64) -> LeaseKeeper {
        LeaseKeeper { incarnation: incarnation << 24, next: 0, asks: BTreeMap::new(), until: None, last_ask: None }
    }

    /// Records an ask made at `now`; returns its request number.
    pub fn ask(&mut self, now: Nanos) -> u64 {
        self.next += 1;
        let request = self.incarnation.wrapping_add(self.next);
        self.asks.insert(request, now);
        self.last_ask = Some(now);
        request
    }

    /// Whether to ask (again) at `now`: when the lease ends within half its length, at most every
    /// `retry_ns` while none is valid (an ask is lost when leadership moves) and every quarter
    /// lease otherwise.
    pub fn should_ask(&self, now: Nanos, lease_ns: u64, retry_ns: u64) -> bool {
        let valid = self.until.is_some_and(|until| until > now);
        let expiring = self.until.is_none_or(|until| until.0 <= now.0 + lease_ns / 2);
        let every = if valid { lease_ns / 4 } else { retry_ns };
        expiring && self.last_ask.is_none_or(|asked| now.0 >= asked.0 + every)
    }

    /// A grant of `request` was applied: returns the new end of the lease if it was one of our
    /// asks and extends the lease.
    pub fn granted(&mut self, request: u64, lease_ns: u64) -> Option<Nanos> {
        let asked = self.asks.remove(&request)?;
        // Older asks are answered by this one.
        self.asks.retain(|_, at| *at > asked);
        let until = Nanos(asked.0 + lease_ns);
        if self.until.is_some_and(|current| current >= until) {
            return None;
        }
        self.until = Some(until);
        Some(until)
    }

    /// When the lease ends, if one was granted.
    pub fn until(&self) -> Option<Nanos> {
        self.until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_asks_count_and_the_lease_runs_from_the_ask() {
        let mut keeper = LeaseKeeper::new(7);
        assert!(keeper.should_ask(Nanos(0), 100, 10));
        let first = keeper.ask(Nanos(5));
        assert_eq!(keeper.granted(first + 1000, 100), None, "someone else's grant");
        assert_eq!(keeper.granted(first, 100), Some(Nanos(105)));
        assert_eq!(keeper.granted(first, 100), None, "a grant counts once");
        assert!(!keeper.should_ask(Nanos(40), 100, 10), "half the lease is left");
        assert!(keeper.should_ask(Nanos(60), 100, 10));
        // A restarted process: a different incarnation never matches the old request.
        let mut again = LeaseKeeper::new(8);
        again.ask(Nanos(0));
        assert_eq!(again.granted(first, 100), None);
    }
}
