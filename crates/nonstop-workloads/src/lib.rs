//! Workloads that run on a [`Mirror`]: the in-memory transaction benchmarks of Christodoulopoulou et al., PPoPP 2006,
//! and nonstop's built-in services on them.
//!
//! * [`debit_credit`] and [`order_entry`]: the benchmarks, driven directly on a mirror. Each
//!   lays its tables out behind a header that records its shape, so its consistency check can
//!   run on any image — the primary's region or a backup's — without being told the
//!   configuration.
//! * [`bank`] and [`ledger`]: Debit-Credit as services of the platform
//!   ([`nonstop_service::Service`]), like any third party's, and
//!   [`order_entry::service`]: Order-Entry's five transactions as requests;
//!   [`register_builtins`] adds the three to a node's registry.
//! * [`survey`]: the replication survey's synthetic server, a multithreaded service for active
//!   replication (registered too).

pub mod bank;
pub mod debit_credit;
pub mod ledger;
pub mod order_entry;
pub mod survey;

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

/// Runs the consistency check of the benchmark named `name` on `image`.
pub fn check(name: &str, image: &[u8]) -> Result<String, String> {
    match name {
        debit_credit::NAME => debit_credit::check(image),
        order_entry::NAME => order_entry::check(image),
        other => Err(format!("unknown workload {other:?}: expected {} or {}", debit_credit::NAME, order_entry::NAME)),
    }
}

/// Registers nonstop's built-in services: `bank` and `ledger` (both configured by
/// `branches`, default 1), `order-entry` (configured by `warehouses`, default 1) and, for
/// active replication, the multithreaded `survey` (configured by `sections`, `mutexes`,
/// `compute_us`, `io_us`).
pub fn register_builtins(registry: &mut nonstop_service::Registry) -> &mut nonstop_service::Registry {
    registry
        .register(bank::NAME, |settings| Ok(bank::Bank::new(bank::BankSettings::from(settings)?.branches)))
        .register(ledger::NAME, |settings| Ok(ledger::Ledger::from_settings(&bank::BankSettings::from(settings)?)))
        .register_threaded(survey::NAME, |settings| {
            Ok(survey::SurveyServer::new(&survey::SurveySettings::from(settings)?))
        });
    order_entry::service::register(registry)
}
