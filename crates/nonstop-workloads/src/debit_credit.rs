//! Debit-Credit: the TPC-B shape as Vista ran it (Christodoulopoulou et al., PPoPP 2006).
//!
//! Branches, tellers and accounts of 100 bytes each; every transaction moves a random amount
//! through a random teller, that teller's branch and an account (85% of the branch, 15% of any
//! branch, as TPC-B), and appends a 50-byte record to a 2 MB circular history. The history is
//! split into one segment per worker so that workers only conflict on the rows they share.
//!
//! Layout (offsets from the region start):
//!
//! ```text
//! 0       header (4 KiB): magic, shape, one history head per worker on its own cache line
//! 4096    branches × 100 B
//!         tellers  × 100 B
//!         accounts × 100 B
//!         history: 2 MiB, `workers` segments of 50-byte records
//! ```

use crate::Workload;
use nonstop_proto::PAGE_SIZE;
use nonstop_proto::primary::Ticket;
use nonstop_region::{Mirror, RegionWrite, TxError, Update};
use rand::Rng;
use rand::rngs::SmallRng;
use zerocopy::little_endian::{I64, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The workload's name.
pub const NAME: &str = "debit-credit";
const MAGIC: u64 = 0x4e53_4443_5450_4231; // "NSDCTPB1"
const HISTORY_BYTES: u64 = 2 << 20;
const MAX_WORKERS: usize = 32;
const TELLERS_PER_BRANCH: u64 = 10;

/// A branch, teller or account row: a balance and TPC-B's filler to 100 bytes.
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Row {
    /// The balance in cents.
    pub balance: I64,
    filler: [u8; 92],
}

/// A history record (50 bytes).
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct HistoryRecord {
    account: U32,
    teller: U32,
    branch: U32,
    delta: I64,
    sequence: U64,
    tag: [u8; 16],
    filler: [u8; 2],
}

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Header {
    magic: U64,
    branches: U64,
    accounts_per_branch: U64,
    workers: U64,
}

const ROW: u64 = 100;
const RECORD: u64 = 50;
const HEADS_AT: u64 = 64;

/// The shape of a Debit-Credit database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebitCredit {
    /// Branches (TPC-B scale factor).
    pub branches: u64,
    /// Accounts per branch (TPC-B: 100,000).
    pub accounts_per_branch: u64,
    /// Workers (threads) issuing transactions; each owns a history segment.
    pub workers: usize,
}

impl DebitCredit {
    /// A database of `branches` branches with TPC-B's 10 tellers and 100,000 accounts each.
    pub fn new(branches: u64, workers: usize) -> DebitCredit {
        DebitCredit { branches, accounts_per_branch: 100_000, workers: workers.clamp(1, MAX_WORKERS) }
    }

    fn tellers(&self) -> u64 {
        self.branches * TELLERS_PER_BRANCH
    }
    fn accounts(&self) -> u64 {
        self.branches * self.accounts_per_branch
    }
    fn branch_at(&self, branch: u64) -> u64 {
        PAGE_SIZE as u64 + branch * ROW
    }
    fn teller_at(&self, teller: u64) -> u64 {
        self.branch_at(self.branches) + teller * ROW
    }
    /// Where `account`'s row starts in the image (its balance is the row's first 8 bytes, little
    /// endian): for tests that corrupt one replica's copy.
    pub fn account_at(&self, account: u64) -> u64 {
        self.teller_at(self.tellers()) + account * ROW
    }
    fn history_at(&self) -> u64 {
        self.account_at(self.accounts()).next_multiple_of(PAGE_SIZE as u64)
    }
    fn segment_records(&self) -> u64 {
        HISTORY_BYTES / RECORD / self.workers as u64
    }
    fn record_at(&self, worker: usize, index: u64) -> u64 {
        self.history_at() + (worker as u64 * self.segment_records() + index % self.segment_records()) * RECORD
    }
    fn head_at(worker: usize) -> u64 {
        HEADS_AT + worker as u64 * 64
    }

    /// The balance of `account` in `image`, if the image holds this database and the account.
    pub fn balance_in(&self, image: &[u8], account: u64) -> Option<i64> {
        let at = self.account_at(account) as usize;
        (account < self.accounts()).then(|| Row::read_from_prefix(image.get(at..)?).ok().map(|r| r.0.balance.get()))?
    }

    /// The balance of `account` read inside `tx` (its line is checked and locked); `None` if
    /// there is no such account.
    pub fn balance_tx(&self, tx: &impl RegionWrite, account: u64) -> Result<Option<i64>, TxError> {
        if account >= self.accounts() {
            return Ok(None);
        }
        Ok(Some(tx.read::<I64>(self.account_at(account))?.get()))
    }

    pub(crate) fn from_image(image: &[u8]) -> Result<DebitCredit, String> {
        let header = Header::read_from_prefix(image).map_err(|_| "image shorter than the header".to_string())?.0;
        if header.magic.get() != MAGIC {
            return Err("no Debit-Credit database in this image (bad magic)".into());
        }
        let shape = DebitCredit {
            branches: header.branches.get(),
            accounts_per_branch: header.accounts_per_branch.get(),
            workers: header.workers.get() as usize,
        };
        if shape.branches == 0
            || shape.branches > 1 << 20
            || shape.accounts_per_branch > 1 << 24
            || !(1..=MAX_WORKERS).contains(&shape.workers)
            || shape.used_len() > image.len()
        {
            return Err(format!("implausible Debit-Credit shape {shape:?} for a {}-byte image", image.len()));
        }
        Ok(shape)
    }

    /// A TPC-B transaction's inputs drawn at random: a teller, its branch, and an account of
    /// that branch (85%) or of any branch (15%).
    pub fn random_transfer(&self, rng: &mut SmallRng) -> Transfer {
        let teller = rng.random_range(0..self.tellers());
        let branch = teller / TELLERS_PER_BRANCH;
        let account_branch =
            if self.branches > 1 && rng.random_ratio(15, 100) { rng.random_range(0..self.branches) } else { branch };
        let account = account_branch * self.accounts_per_branch + rng.random_range(0..self.accounts_per_branch);
        Transfer { account, teller, delta: rng.random_range(-99_999..=99_999), tag: [0; 16] }
    }

    /// Accounts in the database.
    pub fn account_count(&self) -> u64 {
        self.accounts()
    }

    /// Tellers in the database.
    pub fn teller_count(&self) -> u64 {
        self.tellers()
    }

    /// Runs `transfer` inside `tx` (a transaction, or an update in transparent mode) on worker
    /// `worker`'s history segment and returns the account's new balance. The caller commits.
    pub fn transfer_in(&self, tx: &impl RegionWrite, worker: usize, transfer: &Transfer) -> Result<i64, TxError> {
        let Transfer { account, teller, delta, tag } = *transfer;
        let branch = teller / TELLERS_PER_BRANCH;
        // As in Vista, only the bytes that change are declared: the three balances.
        let mut account_balance = 0;
        for at in [self.account_at(account), self.teller_at(teller), self.branch_at(branch)] {
            let balance = tx.write::<I64>(at)?;
            *balance = I64::new(balance.get() + delta);
            if at == self.account_at(account) {
                account_balance = balance.get();
            }
        }
        let worker = worker % self.workers;
        let head = tx.write::<U64>(Self::head_at(worker))?;
        let sequence = head.get();
        *head = U64::new(sequence + 1);
        let record = tx.write::<HistoryRecord>(self.record_at(worker, sequence))?;
        *record = HistoryRecord {
            account: U32::new(account as u32),
            teller: U32::new(teller as u32),
            branch: U32::new(branch as u32),
            delta: I64::new(delta),
            sequence: U64::new(sequence),
            tag,
            filler: [0; 2],
        };
        Ok(account_balance)
    }

    fn transfer(&self, mirror: &Mirror, worker: usize, rng: &mut SmallRng) -> Result<Ticket, TxError> {
        let transfer = self.random_transfer(rng);
        if mirror.is_transparent() {
            let (done, ticket) = mirror.update(|image| self.transfer_in(&Update::new(image), worker, &transfer));
            return done.map(|_| ticket);
        }
        let tx = mirror.begin();
        self.transfer_in(&tx, worker, &transfer)?;
        Ok(tx.commit())
    }

    pub(crate) fn write_header(&self, tx: &impl RegionWrite) -> Result<(), TxError> {
        *tx.write::<Header>(0)? = Header {
            magic: U64::new(MAGIC),
            branches: U64::new(self.branches),
            accounts_per_branch: U64::new(self.accounts_per_branch),
            workers: U64::new(self.workers as u64),
        };
        Ok(())
    }
}

/// The inputs of one Debit-Credit transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The account.
    pub account: u64,
    /// The teller (its branch follows).
    pub teller: u64,
    /// The amount in cents, added to all three balances.
    pub delta: i64,
    /// Sixteen bytes kept in the history record (a service stores the request id there).
    pub tag: [u8; 16],
}

fn balance(image: &[u8], at: u64) -> i64 {
    Row::read_from_prefix(&image[at as usize..]).expect("bounds checked by from_image").0.balance.get()
}

/// TPC-B's consistency conditions on an image: the branch, teller and account balances sum to
/// the same total, each branch equals the sum of its tellers, and every history record lies
/// where its sequence number says.
pub fn check(image: &[u8]) -> Result<String, String> {
    let db = DebitCredit::from_image(image)?;
    let branches: Vec<i64> = (0..db.branches).map(|b| balance(image, db.branch_at(b))).collect();
    let tellers: Vec<i64> = (0..db.tellers()).map(|t| balance(image, db.teller_at(t))).collect();
    let accounts: i128 = (0..db.accounts()).map(|a| balance(image, db.account_at(a)) as i128).sum();
    let branch_sum: i128 = branches.iter().map(|&b| b as i128).sum();
    let teller_sum: i128 = tellers.iter().map(|&t| t as i128).sum();
    if branch_sum != teller_sum || teller_sum != accounts {
        return Err(format!("balances disagree: branches {branch_sum}, tellers {teller_sum}, accounts {accounts}"));
    }
    for (branch, &balance) in branches.iter().enumerate() {
        let first = branch as u64 * TELLERS_PER_BRANCH;
        let own: i64 = tellers[first as usize..(first + TELLERS_PER_BRANCH) as usize].iter().sum();
        if own != balance {
            return Err(format!("branch {branch} balance {balance} differs from its tellers' sum {own}"));
        }
    }
    let mut transactions = 0u64;
    for worker in 0..db.workers {
        let head = U64::read_from_prefix(&image[DebitCredit::head_at(worker) as usize..]).expect("in header").0.get();
        transactions += head;
        let kept = head.min(db.segment_records());
        for sequence in head - kept..head {
            let at = db.record_at(worker, sequence) as usize;
            let record = HistoryRecord::read_from_prefix(&image[at..]).expect("in bounds").0;
            if record.sequence.get() != sequence {
                return Err(format!(
                    "history of worker {worker}: record for sequence {sequence} holds sequence {}",
                    record.sequence.get()
                ));
            }
        }
    }
    Ok(format!(
        "debit-credit consistent: {transactions} transactions, total balance {branch_sum} over {} branches, {} tellers, {} accounts",
        db.branches,
        db.tellers(),
        db.accounts()
    ))
}

impl Workload for DebitCredit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn used_len(&self) -> usize {
        (self.history_at() + HISTORY_BYTES) as usize
    }

    fn load(&self, mirror: &Mirror) {
        assert!(self.used_len() <= mirror.len(), "region too small for this Debit-Credit shape");
        // Rows start at a zero balance, which an empty region already is; only the header
        // needs writing.
        if mirror.is_transparent() {
            mirror.update(|image| self.write_header(&Update::new(image))).0.expect("header fits");
        } else {
            let tx = mirror.begin();
            self.write_header(&tx).expect("header fits");
            tx.commit();
        }
    }

    fn run_one(&self, mirror: &Mirror, worker: usize, rng: &mut SmallRng) -> Ticket {
        loop {
            match self.transfer(mirror, worker % self.workers, rng) {
                Ok(ticket) => return ticket,
                Err(TxError::Conflict { .. }) => std::thread::yield_now(),
                Err(other) => panic!("Debit-Credit layout bug: {other}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_proto::CheckpointId;
    use nonstop_region::Region;
    use rand::SeedableRng;

    #[test]
    fn transactions_keep_the_database_consistent_and_corruption_is_caught() {
        let db = DebitCredit { branches: 3, accounts_per_branch: 1000, workers: 2 };
        let region = Region::map(0x2500_0000_0000, db.used_len().next_multiple_of(PAGE_SIZE)).unwrap();
        let mirror = Mirror::new(region, None, CheckpointId(1));
        db.load(&mirror);
        let mut rng = SmallRng::seed_from_u64(1);
        for i in 0..100_000 {
            db.run_one(&mirror, i % 2, &mut rng);
        }
        let verdict = mirror.quiesced(|image, _| check(image));
        assert!(verdict.as_ref().unwrap().contains("100000 transactions"), "{verdict:?}");
        let mut image = mirror.quiesced(|image, _| image.to_vec());
        let at = db.account_at(17) as usize;
        image[at] ^= 1;
        assert!(check(&image).unwrap_err().contains("balances disagree"));
        assert!(check(&vec![0u8; 8192]).is_err());
    }

    /// The same transaction code in transparent mode: checkpoints cut from the pages the kernel
    /// saw written rebuild a consistent database.
    #[test]
    fn transparent_mode_runs_the_same_transactions_into_consistent_checkpoints() {
        use nonstop_region::tracking::TrackingMode;
        let db = DebitCredit { branches: 2, accounts_per_branch: 1000, workers: 2 };
        let len = db.used_len().next_multiple_of(PAGE_SIZE);
        let region = Region::map(0x2b00_0000_0000, len).unwrap();
        let mirror = Mirror::tracked(region, Some(TrackingMode::Mprotect), CheckpointId(1)).unwrap();
        db.load(&mirror);
        let mut rng = SmallRng::seed_from_u64(2);
        let mut backup = vec![0u8; len];
        for round in 0..20 {
            for i in 0..1000 {
                db.run_one(&mirror, i % 2, &mut rng);
            }
            let cut = mirror.cut(false);
            for payload in cut.changes.payloads() {
                for run in nonstop_proto::runs::parse_runs(payload, len as u64).unwrap() {
                    backup[run.offset as usize..][..run.bytes.len()].copy_from_slice(run.bytes);
                }
            }
            let verdict = check(&backup);
            assert!(
                verdict.as_ref().is_ok_and(|v| v.contains(&format!("{} transactions", (round + 1) * 1000))),
                "{verdict:?}"
            );
        }
    }
}
