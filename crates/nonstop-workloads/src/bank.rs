//! Debit-Credit as a network service that answers every request exactly once.
//!
//! A client numbers its requests 1, 2, 3, … and sends one at a time, retrying the same number
//! until it gets an answer — across failovers too. The service keeps, in the region beside the
//! Debit-Credit tables, one slot per client: the last request number applied, how many requests
//! were applied, and the answer. The slot is written in the same transaction as the transfer, so
//! a checkpoint holds both or neither: after a failover the new primary answers a retry from the
//! slot instead of applying it again.
//!
//! Layout: the Debit-Credit database from offset 0 (its history records carry the client and
//! request numbers), then, page aligned, [`SLOTS`] slots of 32 bytes.

use crate::debit_credit::{self, DebitCredit, Transfer};
use nonstop_proto::PAGE_SIZE;
use nonstop_proto::primary::Ticket;
use nonstop_region::{Mirror, RegionWrite, TxError, Update};
use thiserror::Error;
use zerocopy::little_endian::{I64, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The service's name.
pub const NAME: &str = "bank";
/// Client slots in the request table.
pub const SLOTS: u64 = 8192;
/// Slots probed for a client before the table counts as full.
const PROBES: u64 = 32;

/// What the service remembers of one client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ClientSlot {
    /// The client's id (0: free slot).
    pub client: U64,
    /// The last request number applied.
    pub request: U64,
    /// Requests applied in all: equals `request` unless one was lost or applied twice.
    pub applied: U64,
    /// The answer to the last request (the account's balance after it).
    pub balance: I64,
}

/// One transfer request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferRequest {
    /// The client (not 0).
    pub client: u64,
    /// The request's number: 1 for the client's first, then one more each time.
    pub request: u64,
    /// The account.
    pub account: u64,
    /// The teller.
    pub teller: u64,
    /// The amount in cents.
    pub delta: i64,
}

impl TransferRequest {
    /// Refuses a request that names no client or request number, or an account or teller
    /// outside `accounts` / `tellers`.
    pub fn check(&self, accounts: u64, tellers: u64) -> Result<(), BankError> {
        if self.client == 0 || self.request == 0 {
            return Err(BankError::BadRequest("client and request numbers start at 1".into()));
        }
        if self.account >= accounts || self.teller >= tellers {
            return Err(BankError::BadRequest(format!(
                "account {} / teller {} out of range ({accounts} accounts, {tellers} tellers)",
                self.account, self.teller
            )));
        }
        Ok(())
    }

    /// The client's slot once this request is applied, answered with `balance`; `previous`
    /// is its slot before (a free slot for a new client).
    pub fn applied(&self, previous: &ClientSlot, balance: i64) -> ClientSlot {
        ClientSlot {
            client: U64::new(self.client),
            request: U64::new(self.request),
            applied: U64::new(previous.applied.get() + 1),
            balance: I64::new(balance),
        }
    }

    /// What the service already did about this request, from the client's slot (`None`: a
    /// client never seen): `Some` answer for a retry or a stale request, `None` if it is the
    /// next one and must be applied, an error if it skips numbers.
    pub fn answered(&self, slot: Option<&ClientSlot>) -> Result<Option<Executed>, BankError> {
        let last = slot.map_or(0, |slot| slot.request.get());
        match slot {
            // A retry: answer as the first time. The ticket (the open checkpoint) is no older
            // than the one that applied it, so the answer still waits for the backups.
            Some(slot) if self.request == last => Ok(Some(Executed::Duplicate { balance: slot.balance.get() })),
            _ if self.request < last => Ok(Some(Executed::Stale { last })),
            _ if self.request > last + 1 => Err(BankError::OutOfOrder { expected: last + 1, got: self.request }),
            _ => Ok(None),
        }
    }
}

/// What became of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Executed {
    /// Applied now; the account's new balance.
    Applied {
        /// Balance after the transfer.
        balance: i64,
    },
    /// Applied before (a retry); the answer it got then.
    Duplicate {
        /// Balance after the transfer, as answered the first time.
        balance: i64,
    },
    /// Older than the last request applied: the client already had its answer.
    Stale {
        /// The last request applied for the client.
        last: u64,
    },
}

/// Why a request was not executed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum BankError {
    /// The request names something that does not exist.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No slot left for a new client.
    #[error("the request table is full ({SLOTS} clients): reuse client ids")]
    TableFull,
    /// The request skips numbers: the client must send request `expected` first.
    #[error("request {got} skips ahead: the service expects request {expected} of this client")]
    OutOfOrder {
        /// The next number the service accepts.
        expected: u64,
        /// The number received.
        got: u64,
    },
    /// The region does not hold a bank.
    #[error(transparent)]
    Transaction(#[from] TxError),
    /// The region does not hold a ledger ([`crate::ledger`]) this node can serve.
    #[error("the region holds no ledger to serve: {0}")]
    NoLedger(String),
}

/// The bank service over a Debit-Credit database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bank {
    db: DebitCredit,
}

impl Bank {
    /// A bank of `branches` TPC-B branches, served by up to `workers` threads.
    pub fn new(branches: u64, workers: usize) -> Bank {
        Bank { db: DebitCredit::new(branches, workers) }
    }

    /// The database shape.
    pub fn database(&self) -> &DebitCredit {
        &self.db
    }

    fn table_at(&self) -> u64 {
        (crate::Workload::used_len(&self.db) as u64).next_multiple_of(PAGE_SIZE as u64)
    }

    /// Bytes of region the service needs.
    pub fn region_len(&self) -> usize {
        (self.table_at() + SLOTS * size_of::<ClientSlot>() as u64) as usize
    }

    /// Creates the database in an empty mirror.
    pub fn load(&self, mirror: &Mirror) {
        crate::Workload::load(&self.db, mirror);
    }

    fn slot_at(&self, index: u64) -> u64 {
        self.table_at() + (index % SLOTS) * size_of::<ClientSlot>() as u64
    }

    fn home(client: u64) -> u64 {
        client.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
    }

    /// Finds (or claims) the client's slot inside `tx`.
    fn slot(&self, tx: &impl RegionWrite, client: u64) -> Result<(u64, ClientSlot), BankError> {
        for probe in 0..PROBES {
            let at = self.slot_at(Self::home(client) + probe);
            let slot: ClientSlot = tx.read(at)?;
            if slot.client.get() == client || slot.client.get() == 0 {
                return Ok((at, slot));
            }
        }
        Err(BankError::TableFull)
    }

    /// Executes `request` once: applies it, or answers it from the client's slot if it was
    /// applied before. Returns the outcome and the ticket its answer must wait for.
    pub fn execute(
        &self,
        mirror: &Mirror,
        worker: usize,
        request: &TransferRequest,
    ) -> Result<(Executed, Ticket), BankError> {
        request.check(self.db.account_count(), self.db.teller_count())?;
        loop {
            match self.try_execute(mirror, worker, request) {
                Err(BankError::Transaction(TxError::Conflict { .. })) => std::thread::yield_now(),
                other => return other,
            }
        }
    }

    fn try_execute(
        &self,
        mirror: &Mirror,
        worker: usize,
        request: &TransferRequest,
    ) -> Result<(Executed, Ticket), BankError> {
        if mirror.is_transparent() {
            // No undo in transparent mode: every refusal is decided before the first write.
            let (executed, ticket) = mirror.update(|image| self.execute_in(&Update::new(image), worker, request));
            return executed.map(|executed| (executed, ticket));
        }
        let tx = mirror.begin();
        let executed = self.execute_in(&tx, worker, request)?;
        Ok((executed, tx.commit()))
    }

    /// The request's effect through `tx`: a refusal (decided before anything is written), an
    /// answer from the client's slot, or the transfer and the slot that remembers it.
    fn execute_in(
        &self,
        tx: &impl RegionWrite,
        worker: usize,
        request: &TransferRequest,
    ) -> Result<Executed, BankError> {
        let (at, slot) = self.slot(tx, request.client)?;
        if let Some(answered) = request.answered((slot.client.get() != 0).then_some(&slot))? {
            return Ok(answered);
        }
        let mut tag = [0u8; 16];
        tag[..8].copy_from_slice(&request.client.to_le_bytes());
        tag[8..].copy_from_slice(&request.request.to_le_bytes());
        let transfer = Transfer { account: request.account, teller: request.teller, delta: request.delta, tag };
        let balance = self.db.transfer_in(tx, worker, &transfer)?;
        *tx.write::<ClientSlot>(at)? = request.applied(&slot, balance);
        Ok(Executed::Applied { balance })
    }

    /// Reads `client`'s slot and `account`'s balance in one read-only transaction, so that
    /// both are as of one moment and every line read is checked against its seal. Retries on
    /// a lock conflict.
    pub fn read(
        &self,
        mirror: &Mirror,
        client: u64,
        account: u64,
    ) -> Result<(Option<ClientSlot>, Option<i64>), TxError> {
        if mirror.is_transparent() {
            return mirror.update(|image| self.read_in(&Update::new(image), client, account)).0;
        }
        loop {
            let tx = mirror.begin();
            let attempt = self.read_in(&tx, client, account);
            tx.abort();
            match attempt {
                Err(TxError::Conflict { .. }) => std::thread::yield_now(),
                other => return other,
            }
        }
    }

    fn read_in(
        &self,
        tx: &impl RegionWrite,
        client: u64,
        account: u64,
    ) -> Result<(Option<ClientSlot>, Option<i64>), TxError> {
        let mut found = None;
        for probe in 0..PROBES {
            let slot: ClientSlot = tx.read(self.slot_at(Self::home(client) + probe))?;
            if slot.client.get() == client || slot.client.get() == 0 {
                found = (slot.client.get() == client).then_some(slot);
                break;
            }
        }
        Ok((found, self.db.balance_tx(tx, account)?))
    }

    /// The slot of `client` in `image`, if the client ever had a request applied.
    pub fn client(&self, image: &[u8], client: u64) -> Option<ClientSlot> {
        (0..PROBES).find_map(|probe| {
            let at = self.slot_at(Self::home(client) + probe) as usize;
            let slot = ClientSlot::read_from_prefix(image.get(at..)?).ok()?.0;
            (slot.client.get() == client).then_some(slot)
        })
    }

    /// The balance of `account` in `image`.
    pub fn balance(&self, image: &[u8], account: u64) -> Option<i64> {
        self.db.balance_in(image, account)
    }
}

/// The bank's consistency check: Debit-Credit's TPC-B conditions, and every client slot's
/// applied count equal to its last request number (none lost, none applied twice).
pub fn check(image: &[u8]) -> Result<String, String> {
    let summary = debit_credit::check(image)?;
    let db = DebitCredit::from_image(image)?;
    let bank = Bank { db };
    let table = bank.table_at() as usize;
    let mut clients = 0;
    for index in 0..SLOTS as usize {
        let at = table + index * size_of::<ClientSlot>();
        let Some(Ok((slot, _))) = image.get(at..).map(ClientSlot::read_from_prefix) else {
            return Err("image too short for the request table".into());
        };
        if slot.client.get() == 0 {
            continue;
        }
        clients += 1;
        if slot.applied.get() != slot.request.get() {
            return Err(format!(
                "client {}: last request {} but {} applied",
                slot.client.get(),
                slot.request.get(),
                slot.applied.get()
            ));
        }
    }
    Ok(format!("{summary}; {clients} clients, each request applied once"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_proto::CheckpointId;
    use nonstop_region::Region;

    fn mirror(bank: &Bank, base: usize) -> Mirror {
        let region = Region::map(base, bank.region_len().next_multiple_of(PAGE_SIZE)).unwrap();
        let mirror = Mirror::new(region, None, CheckpointId(1));
        bank.load(&mirror);
        mirror
    }

    #[test]
    fn a_retry_is_answered_not_applied_again() {
        let bank = Bank { db: DebitCredit { branches: 1, accounts_per_branch: 1000, workers: 2 } };
        let mirror = mirror(&bank, 0x3400_0000_0000);
        let request = TransferRequest { client: 7, request: 1, account: 3, teller: 1, delta: 500 };
        assert_eq!(bank.execute(&mirror, 0, &request).unwrap().0, Executed::Applied { balance: 500 });
        assert_eq!(bank.execute(&mirror, 1, &request).unwrap().0, Executed::Duplicate { balance: 500 });
        let second = TransferRequest { request: 2, delta: -200, ..request };
        assert_eq!(bank.execute(&mirror, 0, &second).unwrap().0, Executed::Applied { balance: 300 });
        assert_eq!(bank.execute(&mirror, 0, &request).unwrap().0, Executed::Stale { last: 2 });
        let skip = TransferRequest { request: 4, ..request };
        assert_eq!(bank.execute(&mirror, 0, &skip).unwrap_err(), BankError::OutOfOrder { expected: 3, got: 4 });
        let image = mirror.quiesced(|image, _| image.to_vec());
        let image = image.as_slice();
        let slot = bank.client(image, 7).unwrap();
        assert_eq!((slot.request.get(), slot.applied.get(), slot.balance.get()), (2, 2, 300));
        assert_eq!(bank.balance(image, 3), Some(300));
        check(image).unwrap();
    }

    #[test]
    fn bad_requests_change_nothing() {
        let bank = Bank { db: DebitCredit { branches: 1, accounts_per_branch: 1000, workers: 1 } };
        let mirror = mirror(&bank, 0x3500_0000_0000);
        let before = mirror.quiesced(|image, _| image.to_vec());
        for request in [
            TransferRequest { client: 0, request: 1, account: 0, teller: 0, delta: 1 },
            TransferRequest { client: 1, request: 0, account: 0, teller: 0, delta: 1 },
            TransferRequest { client: 1, request: 1, account: 1000, teller: 0, delta: 1 },
            TransferRequest { client: 1, request: 1, account: 0, teller: 10, delta: 1 },
        ] {
            assert!(matches!(bank.execute(&mirror, 0, &request), Err(BankError::BadRequest(_))));
        }
        assert!(mirror.quiesced(|image, _| image == before.as_slice()));
    }
}
