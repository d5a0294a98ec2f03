//! Range locks: what makes concurrent transactions on disjoint data safe.
//!
//! Every byte a transaction reads or writes belongs to a 64-byte line; lines hash onto a fixed
//! table of owner words. A transaction takes the stripes of its lines as it declares ranges and
//! keeps them until it commits or aborts (strict two-phase locking), so no two transactions
//! ever touch the same bytes at once. Waiting is bounded: a transaction that cannot get a stripe
//! within a bounded number of attempts (`SPIN_LIMIT`) gets [`Conflict`] and must abort and retry, which also breaks
//! deadlocks.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes covered by one lock line: the line of [`nonstop_proto::integrity`], so that whoever may
/// write a line is also the only one who may seal it.
pub const LINE: u64 = nonstop_proto::integrity::LINE as u64;
/// 16 Ki stripes (128 KiB of owner words): small enough to stay in a core's L2 cache beside a
/// transaction's random rows, where 64 Ki stripes (512 KiB) kept falling out to memory once
/// a backup process shared the host's L3 (its misses cost ~50 ns per transaction); large
/// enough that eight threads holding twenty lines each rarely share a stripe by accident
/// (a shared stripe only makes one of them wait, never breaks isolation).
const STRIPE_BITS: u32 = 14;
const STRIPES: usize = 1 << STRIPE_BITS;
/// Attempts (with a pause, then a yield) before giving up on a stripe.
const SPIN_LIMIT: u32 = 4096;

/// Another transaction holds a line this one needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict;

#[derive(Debug)]
pub(crate) struct RangeLocks {
    owners: Box<[AtomicU64]>,
}

fn stripe_of(line: u64) -> u32 {
    (line.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - STRIPE_BITS)) as u32
}

impl RangeLocks {
    pub(crate) fn new() -> RangeLocks {
        RangeLocks { owners: (0..STRIPES).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Takes, for transaction `token` (non-zero), every stripe covering `[offset, offset+len)`.
    /// Stripes taken are appended to `held`, also on failure, so that release frees them.
    pub(crate) fn acquire(&self, token: u64, offset: u64, len: u64, held: &mut Vec<u32>) -> Result<(), Conflict> {
        debug_assert!(token != 0 && len > 0);
        let first = offset / LINE;
        let last = (offset + len - 1) / LINE;
        if last - first >= STRIPES as u64 {
            // More lines than stripes means every stripe.
            (0..STRIPES as u32).try_for_each(|stripe| self.take(token, stripe, held))
        } else {
            (first..=last).try_for_each(|line| self.take(token, stripe_of(line), held))
        }
    }

    fn take(&self, token: u64, stripe: u32, held: &mut Vec<u32>) -> Result<(), Conflict> {
        let owner = &self.owners[stripe as usize];
        let mut attempts = 0;
        loop {
            match owner.compare_exchange(0, token, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => {
                    held.push(stripe);
                    return Ok(());
                }
                Err(current) if current == token => return Ok(()),
                Err(_) => {
                    attempts += 1;
                    if attempts > SPIN_LIMIT {
                        return Err(Conflict);
                    }
                    if attempts % 64 == 0 {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
    }

    /// Takes the stripe of one line for `token` if it is free right now; never waits. The
    /// scrubber uses it to look at a line no transaction holds, and skips the line otherwise.
    pub(crate) fn try_line(&self, token: u64, line: u64) -> bool {
        self.owners[stripe_of(line) as usize].compare_exchange(0, token, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }

    /// Frees the stripe of one line taken with [`RangeLocks::try_line`].
    pub(crate) fn release_line(&self, token: u64, line: u64) {
        let previous = self.owners[stripe_of(line) as usize].swap(0, Ordering::Release);
        debug_assert_eq!(previous, token);
    }

    /// Frees every stripe in `held`.
    pub(crate) fn release(&self, token: u64, held: &mut Vec<u32>) {
        for stripe in held.drain(..) {
            let previous = self.owners[stripe as usize].swap(0, Ordering::Release);
            debug_assert_eq!(previous, token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_token_reenters_other_token_conflicts() {
        let locks = RangeLocks::new();
        let mut a = Vec::new();
        let mut b = Vec::new();
        locks.acquire(1, 0, 100, &mut a).unwrap();
        locks.acquire(1, 10, 10, &mut a).unwrap();
        assert_eq!(locks.acquire(2, 64, 1, &mut b), Err(Conflict));
        locks.release(1, &mut a);
        locks.release(2, &mut b);
        locks.acquire(2, 64, 1, &mut b).unwrap();
        locks.release(2, &mut b);
    }
}
