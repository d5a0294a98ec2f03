//! `bank`: Debit-Credit as a nonstop service, written at fixed offsets through declared
//! transactions (or, in transparent mode, plain writes at the same offsets).
//!
//! A transfer moves an amount into an account through a teller and answers the account's new
//! balance. The platform makes it exactly-once: each client's requests are numbered, and the
//! client table beside the database remembers the last one and its answer in the same
//! checkpoint. The history records carry the client and request numbers that asked for them.

use crate::debit_credit::{self, DebitCredit, Transfer};
use nonstop_client::{Client, ClientError};
use nonstop_service::{ClientMemory, Image, Service, ServiceError, Settings, Store, View, Writes};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The service's kind.
pub const NAME: &str = "bank";

/// Worker lanes the bank is laid out with: client connections take them in turn, and each
/// lane appends to a history segment of its own, so up to this many connections commit without
/// sharing a history row. Part of the region's layout: every node of a service must agree.
pub const LANES: usize = 8;

/// A transfer: `delta` cents into `account`, through `teller`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    /// The account.
    pub account: u64,
    /// The teller.
    pub teller: u64,
    /// The amount in cents.
    pub delta: i64,
}

/// A read-only question to the bank.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BankQuery {
    /// What the platform remembers of `client`, and the balance of `account`, at one moment.
    Read {
        /// The client.
        client: u64,
        /// The account.
        account: u64,
    },
    /// The balances of `accounts`.
    Balances(Vec<u64>),
}

/// The bank's answer to a [`BankQuery`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BankAnswer {
    /// For [`BankQuery::Read`].
    Read {
        /// What the platform remembers of the client (`None`: nothing applied).
        memory: Option<Remembered>,
        /// The account's balance (`None`: no such account).
        balance: Option<i64>,
    },
    /// For [`BankQuery::Balances`], in the order asked.
    Balances(Vec<Option<i64>>),
}

/// What the platform remembers of a bank client, its last reply decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// The last request number applied.
    pub request: u64,
    /// Requests applied in all.
    pub applied: u64,
    /// The balance answered to the last request.
    pub balance: i64,
}

impl Remembered {
    pub(crate) fn of(memory: &ClientMemory) -> Remembered {
        let balance = memory.reply.as_deref().and_then(|reply| postcard::from_bytes(reply).ok()).unwrap_or(0);
        Remembered { request: memory.request, applied: memory.applied, balance }
    }
}

/// The bank's settings (`[services.settings]`).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BankSettings {
    /// Debit-Credit branches (100,000 accounts and 10 tellers each).
    pub branches: u64,
}

impl Default for BankSettings {
    fn default() -> Self {
        BankSettings { branches: 1 }
    }
}

impl BankSettings {
    /// The settings of a service's config, checked.
    pub fn from(settings: &Settings) -> Result<BankSettings, String> {
        let parsed: BankSettings = settings.parse()?;
        if !(1..=1 << 16).contains(&parsed.branches) {
            return Err(format!("branches = {} is out of range: use 1 to 65536", parsed.branches));
        }
        Ok(parsed)
    }
}

/// The bank service over a Debit-Credit database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bank {
    db: DebitCredit,
}

impl Bank {
    /// A bank of `branches` TPC-B branches.
    pub fn new(branches: u64) -> Bank {
        Bank { db: DebitCredit::new(branches, LANES) }
    }

    /// The database shape.
    pub fn database(&self) -> &DebitCredit {
        &self.db
    }
}

impl Service for Bank {
    type Request = TransferRequest;
    type Reply = i64;
    type Query = BankQuery;
    type Answer = BankAnswer;
    const WRITES: Writes = Writes::AtOffsets;

    fn state_len(&self) -> usize {
        crate::Workload::used_len(&self.db)
    }

    fn init(&self, store: &mut Store<'_>) -> Result<(), ServiceError> {
        // Rows start at a zero balance, which an empty region already is.
        Ok(self.db.write_header(&store.writer())?)
    }

    fn execute(&self, store: &mut Store<'_>, request: &TransferRequest) -> Result<i64, ServiceError> {
        let (accounts, tellers) = (self.db.account_count(), self.db.teller_count());
        if request.account >= accounts || request.teller >= tellers {
            return Err(ServiceError::refused(format!(
                "account {} / teller {} out of range ({accounts} accounts, {tellers} tellers)",
                request.account, request.teller
            )));
        }
        let caller = store.caller();
        let mut tag = [0u8; 16];
        tag[..8].copy_from_slice(&caller.client.to_le_bytes());
        tag[8..].copy_from_slice(&caller.request.to_le_bytes());
        let transfer = Transfer { account: request.account, teller: request.teller, delta: request.delta, tag };
        Ok(self.db.transfer_in(&store.writer(), caller.lane, &transfer)?)
    }

    fn query(&self, view: &View<'_>, query: &BankQuery) -> Result<BankAnswer, ServiceError> {
        let balance = |account: u64| -> Result<Option<i64>, ServiceError> {
            if account >= self.db.account_count() {
                return Ok(None);
            }
            Ok(Some(view.read::<zerocopy::little_endian::I64>(self.db.account_at(account))?.get()))
        };
        Ok(match query {
            BankQuery::Read { client, account } => BankAnswer::Read {
                memory: view.client(*client)?.as_ref().map(Remembered::of),
                balance: balance(*account)?,
            },
            BankQuery::Balances(accounts) => {
                BankAnswer::Balances(accounts.iter().map(|&account| balance(account)).collect::<Result<_, _>>()?)
            }
        })
    }

    /// A transfer of up to 500.00 either way into a random account through a random teller.
    fn sample(&self, _client: u64, draw: u64) -> Option<TransferRequest> {
        let (accounts, tellers) = (self.db.account_count(), self.db.teller_count());
        let delta = (draw >> 44) as i64 % 100_000 - 49_999;
        Some(TransferRequest { account: draw % accounts, teller: (draw >> 32) % tellers, delta })
    }

    fn check(&self, image: &Image<'_>) -> Result<String, String> {
        let shape = DebitCredit::from_image(image.state())?;
        if (shape.branches, shape.workers) != (self.db.branches, self.db.workers) {
            return Err(format!(
                "the region holds a bank of {} branches and {} lanes, this node is configured for {} and {}",
                shape.branches, shape.workers, self.db.branches, self.db.workers
            ));
        }
        debit_credit::check(image.state())
    }
}

/// Debit-Credit driven through the bank service in-process, as a node's client port drives
/// it (the request handed over as bytes, the client table consulted and written, the reply
/// encoded), for measuring what the service path costs against [`Bank::database`]'s
/// transactions called directly ([`BankThroughService::direct`]). Worker `w` is client `w + 1`.
pub struct BankThroughService {
    bank: Bank,
    hosted: nonstop_service::Hosted,
    drawn: std::sync::Arc<Drawn>,
    turns: Turns,
}

impl BankThroughService {
    /// The bank of `branches` branches, for up to `workers` worker threads.
    pub fn new(branches: u64, workers: usize) -> BankThroughService {
        let bank = Bank::new(branches);
        let drawn = std::sync::Arc::new(Drawn::new(&bank.db));
        let hosted = nonstop_service::Hosted::new(NAME, bank);
        BankThroughService { bank, hosted, drawn, turns: Turns::new(workers) }
    }

    /// The same exactly-once transactions written by hand: each transfer and its client's
    /// record (last request, applied count, balance) in one transaction, at fixed offsets,
    /// with no request or reply encoded and no table to search: what a bank that kept its own
    /// client table cost, and the floor of what the service path can cost. It takes the same
    /// transfers in the same turns.
    pub fn direct(&self) -> BankByHand {
        let turns = std::sync::Arc::new(Turns::new(self.turns.next.len()));
        BankByHand { db: self.bank.db, records_at: self.hosted.region_len() as u64, drawn: self.drawn.clone(), turns }
    }
}

/// Transfers drawn once for the comparison, taken in turn by both arms: neither pays for
/// drawing them, and the service's arm is handed each as the bytes a client encoded, as a
/// node's client port is handed bytes off the wire (the client's encoding is not the service
/// path's cost).
struct Drawn {
    transfers: Vec<Transfer>,
    /// Each transfer's request, encoded: its length, then its bytes.
    encoded: Vec<(usize, [u8; ENCODED_ROOM])>,
}

/// One arm's turns through the drawn transfers: per worker, the next request's number (1
/// first).
struct Turns {
    next: Vec<std::sync::atomic::AtomicU64>,
}

/// Transfers drawn: more than a run's requests of one worker touch in a cache's worth.
const DRAWN: usize = 1 << 16;

/// Room for one encoded [`TransferRequest`] (three varints of at most 10 bytes).
const ENCODED_ROOM: usize = 32;

impl Drawn {
    fn new(db: &DebitCredit) -> Drawn {
        use rand::SeedableRng;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0xdeb1_7c4e);
        let transfers: Vec<Transfer> = (0..DRAWN).map(|_| db.random_transfer(&mut rng)).collect();
        let encoded = transfers
            .iter()
            .map(|t| {
                let request = TransferRequest { account: t.account, teller: t.teller, delta: t.delta };
                let mut bytes = [0u8; ENCODED_ROOM];
                let len = postcard::to_slice(&request, &mut bytes).expect("a transfer fits 32 bytes").len();
                (len, bytes)
            })
            .collect();
        Drawn { transfers, encoded }
    }
}

impl Turns {
    fn new(workers: usize) -> Turns {
        Turns { next: (0..workers.max(1)).map(|_| std::sync::atomic::AtomicU64::new(1)).collect() }
    }

    /// Every worker starts again from request 1.
    fn reset(&self) {
        for next in &self.next {
            next.store(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Worker `worker`'s next request: its number and which drawn transfer it is.
    fn take(&self, worker: usize) -> (u64, usize) {
        let number = self.next[worker % self.next.len()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Workers start apart in the drawn transfers, so that they do not move the same rows.
        (number, (number as usize).wrapping_add(worker.wrapping_mul(7919)) % DRAWN)
    }
}

/// Workers [`BankByHand`] keeps records for.
const MAX_WORKERS: usize = 256;

/// See [`BankThroughService::direct`].
#[derive(Clone)]
pub struct BankByHand {
    db: DebitCredit,
    records_at: u64,
    drawn: std::sync::Arc<Drawn>,
    turns: std::sync::Arc<Turns>,
}

impl crate::Workload for BankByHand {
    fn name(&self) -> &'static str {
        debit_credit::NAME
    }

    fn used_len(&self) -> usize {
        (self.records_at + (MAX_WORKERS * 64) as u64) as usize
    }

    fn load(&self, mirror: &nonstop_region::Mirror) {
        self.turns.reset();
        crate::Workload::load(&self.db, mirror);
    }

    fn run_one(
        &self,
        mirror: &nonstop_region::Mirror,
        worker: usize,
        _rng: &mut rand::rngs::SmallRng,
    ) -> nonstop_proto::primary::Ticket {
        use zerocopy::little_endian::U64;
        let (_, drawn) = self.turns.take(worker);
        let mut transfer = self.drawn.transfers[drawn];
        let at = self.records_at + (worker % MAX_WORKERS) as u64 * 64;
        loop {
            let tx = mirror.begin();
            let attempt = (|| -> Result<(), nonstop_region::TxError> {
                let [client, request, applied, _]: [U64; 4] = tx.read(at)?;
                transfer.tag[..8].copy_from_slice(&client.get().to_le_bytes());
                transfer.tag[8..].copy_from_slice(&request.get().to_le_bytes());
                let balance = self.db.transfer_in(&tx, worker, &transfer)?;
                let record = tx.write::<[U64; 4]>(at)?;
                *record = [
                    U64::new(worker as u64 + 1),
                    U64::new(request.get() + 1),
                    U64::new(applied.get() + 1),
                    U64::new(balance as u64),
                ];
                Ok(())
            })();
            match attempt {
                Ok(()) => return tx.commit(),
                Err(nonstop_region::TxError::Conflict { .. }) => std::thread::yield_now(),
                Err(other) => panic!("Debit-Credit layout bug: {other}"),
            }
        }
    }
}

impl crate::Workload for BankThroughService {
    /// The database's: the bank's state is a Debit-Credit database at offset 0, so a backup
    /// checks it with Debit-Credit's check.
    fn name(&self) -> &'static str {
        debit_credit::NAME
    }

    fn used_len(&self) -> usize {
        self.hosted.region_len() + MAX_WORKERS * 64
    }

    fn load(&self, mirror: &nonstop_region::Mirror) {
        self.turns.reset();
        self.hosted.init(mirror).expect("a fresh region holds a bank");
    }

    fn run_one(
        &self,
        mirror: &nonstop_region::Mirror,
        worker: usize,
        _rng: &mut rand::rngs::SmallRng,
    ) -> nonstop_proto::primary::Ticket {
        let (number, drawn) = self.turns.take(worker);
        let (len, bytes) = &self.drawn.encoded[drawn];
        let caller = nonstop_service::Caller { client: worker as u64 + 1, request: number, lane: worker };
        match self.hosted.execute(mirror, caller, 0, &bytes[..*len]) {
            Ok((_, ticket)) => ticket,
            Err(error) => panic!("the bank refused a Debit-Credit transfer: {error}"),
        }
    }
}

/// A transfer's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferDone {
    /// The request's number.
    pub request: u64,
    /// The account's balance after it.
    pub balance: i64,
    /// The service had applied it before (this answers a retry).
    pub duplicate: bool,
    /// The primary's term.
    pub term: u64,
    /// Attempts it took (1 without a failure).
    pub attempts: u32,
    /// The node that answered (its client address).
    pub answered_by: SocketAddr,
}

/// A read's answer: held by every backup when it was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadDone {
    /// What the platform remembers of the client (`None`: nothing applied).
    pub memory: Option<Remembered>,
    /// The account's balance.
    pub balance: Option<i64>,
    /// The primary's term.
    pub term: u64,
    /// The node that answered (its client address).
    pub answered_by: SocketAddr,
}

/// What [`BankClient::audit`] returns.
#[derive(Clone, Debug)]
pub struct BankAudit {
    /// The platform's check and the bank's (TPC-B's conditions).
    pub check: Result<String, String>,
    /// What the platform remembers per client asked.
    pub clients: Vec<(u64, Option<Remembered>)>,
    /// Balances per account asked.
    pub balances: Vec<(u64, Option<i64>)>,
    /// The primary's term.
    pub term: u64,
}

/// A typed client of a bank service: [`Client`] with the bank's requests.
pub struct BankClient {
    client: Client,
    service: String,
}

impl BankClient {
    /// Client `id` of the bank service `service` on the nodes whose client addresses are `nodes`.
    pub fn new(nodes: Vec<SocketAddr>, service: &str, id: u64) -> BankClient {
        BankClient { client: Client::new(nodes, id), service: service.to_string() }
    }

    /// The generic client underneath (its deadlines, its id).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The number the next transfer will carry.
    pub fn next_request(&self) -> u64 {
        self.client.next_request(&self.service)
    }

    /// Moves `delta` cents into `account` through `teller`, exactly once.
    pub fn transfer(&mut self, account: u64, teller: u64, delta: i64) -> Result<TransferDone, ClientError> {
        let done = self.client.call_answered::<_, i64>(&self.service, &TransferRequest { account, teller, delta })?;
        Ok(TransferDone {
            request: done.request,
            balance: done.reply,
            duplicate: done.duplicate,
            term: done.term,
            attempts: done.attempts,
            answered_by: done.answered_by,
        })
    }

    /// What the platform remembers of `client` and the balance of `account`, as of one moment
    /// that every backup holds.
    pub fn read(&mut self, client: u64, account: u64) -> Result<ReadDone, ClientError> {
        let answered =
            self.client.query_answered::<_, BankAnswer>(&self.service, &BankQuery::Read { client, account })?;
        match answered.reply {
            BankAnswer::Read { memory, balance } => {
                Ok(ReadDone { memory, balance, term: answered.term, answered_by: answered.answered_by })
            }
            other => Err(self.unexpected(&other)),
        }
    }

    /// The consistency checks, what the platform remembers of `clients` and the balances of
    /// `accounts`, all from one state between two checkpoints.
    pub fn audit(&mut self, clients: Vec<u64>, accounts: Vec<u64>) -> Result<BankAudit, ClientError> {
        let query = postcard::to_allocvec(&BankQuery::Balances(accounts.clone())).expect("a query encodes");
        let audit = self.client.audit(&self.service, clients, Some(query))?;
        let balances = match audit.answer {
            Some(Ok(bytes)) => match postcard::from_bytes::<BankAnswer>(&bytes) {
                Ok(BankAnswer::Balances(balances)) if balances.len() == accounts.len() => balances,
                other => return Err(self.unexpected(&other)),
            },
            Some(Err(reason)) => return Err(ClientError::Rejected { service: self.service.clone(), reason }),
            None => return Err(self.unexpected(&"no answer")),
        };
        Ok(BankAudit {
            check: audit.check,
            clients: audit
                .clients
                .iter()
                .map(|(client, memory)| (*client, memory.as_ref().map(Remembered::of)))
                .collect(),
            balances: accounts.into_iter().zip(balances).collect(),
            term: audit.term,
        })
    }

    fn unexpected(&self, answer: &dyn std::fmt::Debug) -> ClientError {
        ClientError::Types { service: self.service.clone(), what: format!("unexpected answer {answer:?}") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_proto::CheckpointId;
    use nonstop_region::{Mirror, Region};
    use nonstop_service::{CallError, Caller, Executed, Hosted};

    fn run(hosted: &Hosted, mirror: &Mirror, client: u64, request: u64, transfer: TransferRequest) -> Executed {
        let body = postcard::to_allocvec(&transfer).unwrap();
        hosted.execute(mirror, Caller { client, request, lane: request as usize }, 0, &body).unwrap().0
    }

    #[test]
    fn a_transfer_is_applied_once_and_the_checks_hold() {
        let hosted = Hosted::new(NAME, Bank::new(1));
        let mirror = Mirror::new(Region::map(0x3400_0000_0000, hosted.region_len()).unwrap(), None, CheckpointId(1));
        hosted.init(&mirror).unwrap();
        let transfer = TransferRequest { account: 3, teller: 1, delta: 500 };
        let balance = |executed| match executed {
            Executed::Applied(reply) | Executed::Duplicate(reply) => postcard::from_bytes::<i64>(&reply).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(balance(run(&hosted, &mirror, 7, 1, transfer)), 500);
        assert!(matches!(run(&hosted, &mirror, 7, 1, transfer), Executed::Duplicate(_)));
        assert_eq!(balance(run(&hosted, &mirror, 7, 2, TransferRequest { delta: -200, ..transfer })), 300);
        let out_of_range = postcard::to_allocvec(&TransferRequest { account: 100_000, ..transfer }).unwrap();
        let refused = hosted.execute(&mirror, Caller { client: 7, request: 3, lane: 0 }, 0, &out_of_range);
        assert!(matches!(refused, Err(CallError::Refused(reason)) if reason.contains("out of range")));
        let query = postcard::to_allocvec(&BankQuery::Read { client: 7, account: 3 }).unwrap();
        let answer: BankAnswer = postcard::from_bytes(&hosted.query(&mirror, &query).unwrap().0).unwrap();
        let memory = Some(Remembered { request: 2, applied: 2, balance: 300 });
        assert_eq!(answer, BankAnswer::Read { memory, balance: Some(300) });
        let summary = mirror.quiesced(|image, _| hosted.check(image)).unwrap();
        assert!(summary.contains("1 clients, each request applied once"), "{summary}");
        let other = Hosted::new(NAME, Bank::new(2));
        let mismatch = mirror.quiesced(|image, _| other.check(image)).unwrap_err();
        assert!(mismatch.contains("shorter than the service"), "{mismatch}");
    }

    #[test]
    fn settings_are_checked() {
        let parse = |text: &str| BankSettings::from(&Settings::new(text.parse().unwrap()));
        assert_eq!(parse("").unwrap().branches, 1);
        assert_eq!(parse("branches = 4").unwrap().branches, 4);
        assert!(parse("branches = 0").unwrap_err().contains("out of range"));
        assert!(parse("branchs = 4").unwrap_err().contains("unknown field"));
    }
}
