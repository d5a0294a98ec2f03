//! Workloads that run on a [`Mirror`]: the in-memory transaction benchmarks of Christodoulopoulou et al., PPoPP 2006.
//!
//! Each workload lays its tables out in the region behind a header that records its shape, so
//! its consistency check can run on any image — the primary's region or a backup's — without
//! being told the configuration.

pub mod app;
pub mod bank;
pub mod debit_credit;
pub mod ledger;
pub mod order_entry;

use nonstop_proto::primary::Ticket;
use nonstop_region::Mirror;
use rand::rngs::SmallRng;

/// A benchmark workload.
pub trait Workload: Send + Sync {
    /// Its name on the command line and in verify requests.
    fn name(&self) -> &'static str;
    /// Bytes of the region it uses, from offset 0.
    fn used_len(&self) -> usize;
    /// Creates the initial database in an empty mirror.
    fn load(&self, mirror: &Mirror);
    /// Runs one transaction for worker `worker`, retrying on lock conflicts; returns its ticket.
    fn run_one(&self, mirror: &Mirror, worker: usize, rng: &mut SmallRng) -> Ticket;
}

/// Runs the consistency check of the workload named `name` on `image`.
pub fn check(name: &str, image: &[u8]) -> Result<String, String> {
    match name {
        debit_credit::NAME => debit_credit::check(image),
        bank::NAME => bank::check(image),
        order_entry::NAME => order_entry::check(image),
        ledger::NAME => ledger::check(image),
        other => Err(format!(
            "unknown workload {other:?}: expected {}, {}, {} or {}",
            debit_credit::NAME,
            order_entry::NAME,
            bank::NAME,
            ledger::NAME
        )),
    }
}
