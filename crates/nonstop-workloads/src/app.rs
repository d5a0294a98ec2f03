//! What a node's service runs: one of the exactly-once services, behind one interface, so the
//! node, its client port and its backups' checks need not know which.

use crate::bank::{self, Bank, BankError, ClientSlot, Executed, TransferRequest};
use crate::ledger::{self, Ledger};
use nonstop_proto::primary::Ticket;
use nonstop_region::Mirror;

/// A service's application, as the `kind` of its configuration names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    /// `bank`: Debit-Credit at fixed offsets, written through transactions (or, in transparent
    /// mode, through plain writes at the same offsets).
    Bank(Bank),
    /// `ledger`: the same requests over ordinary collections in the region; transparent mode
    /// only.
    Ledger(Ledger),
}

/// The kinds a configuration may name.
pub const KINDS: [&str; 2] = [bank::NAME, ledger::NAME];

/// Worker slots a node's bank is laid out with: client connections take them in turn, and each
/// slot appends to a history segment of its own, so up to this many connections commit without
/// sharing a history row. Part of the region's layout: every node of a service must agree.
pub const SERVICE_WORKERS: usize = 8;

impl App {
    /// The application `kind` names, over `branches` Debit-Credit branches served by up to
    /// `workers` threads; `None` for an unknown kind.
    pub fn named(kind: &str, branches: u64, workers: usize) -> Option<App> {
        match kind {
            bank::NAME => Some(App::Bank(Bank::new(branches, workers))),
            ledger::NAME => Some(App::Ledger(Ledger::new(branches))),
            _ => None,
        }
    }

    /// Its kind, as configured.
    pub fn name(&self) -> &'static str {
        match self {
            App::Bank(_) => bank::NAME,
            App::Ledger(_) => ledger::NAME,
        }
    }

    /// Whether it needs transparent mode (the kernel finding its writes).
    pub fn needs_transparent(&self) -> bool {
        matches!(self, App::Ledger(_))
    }

    /// Bytes of region it needs.
    pub fn region_len(&self) -> usize {
        match self {
            App::Bank(bank) => bank.region_len(),
            App::Ledger(ledger) => ledger.region_len(),
        }
    }

    /// Creates its state in an empty mirror.
    pub fn load(&self, mirror: &Mirror) -> Result<(), BankError> {
        match self {
            App::Bank(bank) => {
                bank.load(mirror);
                Ok(())
            }
            App::Ledger(ledger) => ledger.load(mirror),
        }
    }

    /// Applies a transfer exactly once (see [`Bank::execute`]).
    pub fn execute(
        &self,
        mirror: &Mirror,
        worker: usize,
        request: &TransferRequest,
    ) -> Result<(Executed, Ticket), BankError> {
        match self {
            App::Bank(bank) => bank.execute(mirror, worker, request),
            App::Ledger(ledger) => ledger.execute(mirror, request),
        }
    }

    /// What it remembers of `client` and the balance of `account`.
    pub fn read(
        &self,
        mirror: &Mirror,
        client: u64,
        account: u64,
    ) -> Result<(Option<ClientSlot>, Option<i64>), BankError> {
        match self {
            App::Bank(bank) => Ok(bank.read(mirror, client, account)?),
            App::Ledger(ledger) => ledger.read(mirror, client, account),
        }
    }

    /// What the state in `image` remembers of `client`.
    pub fn client(&self, image: &[u8], client: u64) -> Option<ClientSlot> {
        match self {
            App::Bank(bank) => bank.client(image, client),
            App::Ledger(ledger) => ledger.client(image, client),
        }
    }

    /// The balance of `account` in `image`.
    pub fn balance(&self, image: &[u8], account: u64) -> Option<i64> {
        match self {
            App::Bank(bank) => bank.balance(image, account),
            App::Ledger(ledger) => ledger.balance(image, account),
        }
    }

    /// Its consistency check on `image`.
    pub fn check(&self, image: &[u8]) -> Result<String, String> {
        crate::check(self.name(), image)
    }
}
