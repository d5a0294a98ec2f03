//! `ledger`: the bank service written as ordinary Rust. Its state is plain collections in the
//! region (transparent mode), found again through the heap's root after a promotion.
//!
//! It answers the same requests as [`crate::bank`] — transfers that are applied exactly once,
//! reads, audits — so the same clients, failover tests and history checker run against it.
//! Where the bank lays Debit-Credit out at fixed offsets and declares every range it writes,
//! the ledger keeps `Vec`s of balances and a ring of history entries, and simply assigns to
//! them; the kernel finds the pages written ([`nonstop_region::tracking`]) and every pointer
//! stays valid on a backup because the region sits at the same address there.
//!
//! There is no undo in transparent mode, so every refusal (a bad request, a damaged state) is
//! decided before the first write.

use crate::bank::{BankAnswer, BankQuery, BankSettings, Remembered, TransferRequest};
use nonstop_region::heap::{RegionAlloc, RegionVec};
use nonstop_service::{ClientRecord, Image, Service, ServiceError, Store, View, Writes};
use std::collections::BTreeMap;

/// The service's kind.
pub const NAME: &str = "ledger";
const TELLERS_PER_BRANCH: u64 = 10;
const ACCOUNTS_PER_BRANCH: u64 = 100_000;
/// Transfers kept in the history ring.
const HISTORY: usize = 1 << 16;

/// One applied transfer, as the history keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// The client that asked.
    pub client: u64,
    /// Its request number.
    pub request: u64,
    /// The account.
    pub account: u64,
    /// The amount in cents.
    pub delta: i64,
}

/// The ledger's state, as it lives in the region.
#[derive(Debug)]
pub struct State {
    accounts: RegionVec<i64>,
    tellers: RegionVec<i64>,
    branches: RegionVec<i64>,
    /// The newest transfers, oldest overwritten first.
    history: RegionVec<Entry>,
    /// Transfers applied in all.
    transfers: u64,
}

impl State {
    fn new(branches: u64, alloc: RegionAlloc) -> State {
        let zeros = |len: u64| {
            let mut values = RegionVec::with_capacity_in(len as usize, alloc);
            values.resize(len as usize, 0i64);
            values
        };
        State {
            accounts: zeros(branches * ACCOUNTS_PER_BRANCH),
            tellers: zeros(branches * TELLERS_PER_BRANCH),
            branches: zeros(branches),
            history: RegionVec::with_capacity_in(HISTORY, alloc),
            transfers: 0,
        }
    }
}

/// The ledger service: the bank's requests over a [`State`] of plain collections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ledger {
    branches: u64,
}

impl Ledger {
    /// A ledger of `branches` branches (100,000 accounts and 10 tellers each).
    pub fn new(branches: u64) -> Ledger {
        Ledger { branches: branches.max(1) }
    }

    /// A ledger as its settings (the bank's) describe it.
    pub fn from_settings(settings: &BankSettings) -> Ledger {
        Ledger::new(settings.branches)
    }

    /// Accounts in the ledger.
    pub fn account_count(&self) -> u64 {
        self.branches * ACCOUNTS_PER_BRANCH
    }

    /// Tellers in the ledger.
    pub fn teller_count(&self) -> u64 {
        self.branches * TELLERS_PER_BRANCH
    }

    /// The state in `store`, created on first use, and checked to be this ledger's shape.
    fn state<'a>(&self, store: &'a mut Store<'_>) -> Result<&'a mut State, ServiceError> {
        let mut heap = store.heap()?;
        let alloc = heap.allocator();
        let branches = self.branches;
        let state = heap.root(|| State::new(branches, alloc))?;
        if state.branches.len() as u64 != branches {
            return Err(ServiceError::Broken(format!(
                "the region holds a ledger of {} branches, this node is configured for {branches}",
                state.branches.len()
            )));
        }
        Ok(state)
    }
}

impl Service for Ledger {
    type Request = TransferRequest;
    type Reply = i64;
    type Query = BankQuery;
    type Answer = BankAnswer;
    const WRITES: Writes = Writes::Collections;

    /// Its collections at full size, twice over for the allocator's slack, in whole MiB.
    fn state_len(&self) -> usize {
        let balances = (self.account_count() + self.teller_count() + self.branches) as usize * size_of::<i64>();
        let history = HISTORY * size_of::<Entry>();
        (2 * (balances + history)).next_multiple_of(1 << 20)
    }

    fn init(&self, store: &mut Store<'_>) -> Result<(), ServiceError> {
        self.state(store).map(drop)
    }

    fn execute(&self, store: &mut Store<'_>, request: &TransferRequest) -> Result<i64, ServiceError> {
        if request.account >= self.account_count() || request.teller >= self.teller_count() {
            return Err(ServiceError::refused(format!(
                "account {} / teller {} out of range ({} accounts, {} tellers)",
                request.account,
                request.teller,
                self.account_count(),
                self.teller_count()
            )));
        }
        let caller = store.caller();
        let state = self.state(store)?;
        // Every refusal is behind us: from here on the request only writes.
        let account = &mut state.accounts[request.account as usize];
        *account += request.delta;
        let balance = *account;
        state.tellers[request.teller as usize] += request.delta;
        state.branches[(request.teller / TELLERS_PER_BRANCH) as usize] += request.delta;
        let entry =
            Entry { client: caller.client, request: caller.request, account: request.account, delta: request.delta };
        let at = (state.transfers % HISTORY as u64) as usize;
        if at < state.history.len() {
            state.history[at] = entry;
        } else {
            state.history.push(entry); // within the capacity reserved at creation
        }
        state.transfers += 1;
        Ok(balance)
    }

    fn query(&self, view: &View<'_>, query: &BankQuery) -> Result<BankAnswer, ServiceError> {
        let state = state_in(view.image().ok_or(ServiceError::NeedsTransparent)?).map_err(ServiceError::Broken)?;
        Ok(match query {
            BankQuery::Read { client, account } => BankAnswer::Read {
                memory: view.client(*client)?.as_ref().map(Remembered::of),
                balance: state.accounts.get(*account as usize).copied(),
            },
            BankQuery::Balances(accounts) => BankAnswer::Balances(
                accounts.iter().map(|&account| state.accounts.get(account as usize).copied()).collect(),
            ),
        })
    }

    /// A transfer of up to 500.00 either way into a random account through a random teller.
    fn sample(&self, _client: u64, draw: u64) -> Option<TransferRequest> {
        let delta = (draw >> 44) as i64 % 100_000 - 49_999;
        Some(TransferRequest {
            account: draw % self.account_count(),
            teller: (draw >> 32) % self.teller_count(),
            delta,
        })
    }

    fn check(&self, image: &Image<'_>) -> Result<String, String> {
        check(image.state(), image.clients())
    }
}

/// The state in an image mapped at the region's address (a quiesced primary's region, or a
/// backup's image): its pointers are only valid there.
///
/// The root's place and type are checked by the heap; the vectors' extents and the state's
/// shape are checked here before anything is read through them, so that a damaged image gets
/// an error, not a read outside it. (The hash map's table is trusted as a promotion trusts it:
/// hashbrown does not show where it lies.)
fn state_in(image: &[u8]) -> Result<&State, String> {
    let state = nonstop_region::heap::Heap::root_in::<State>(image)
        .map_err(|error| error.to_string())?
        .ok_or_else(|| "no ledger in this region yet".to_string())?;
    state.within(image)?;
    Ok(state)
}

impl State {
    fn within(&self, image: &[u8]) -> Result<(), String> {
        fn inside<T>(name: &str, values: &RegionVec<T>, image: &[u8]) -> Result<(), String> {
            let region = image.as_ptr_range();
            let (start, capacity) = (values.as_ptr() as usize, values.capacity());
            let end = capacity.checked_mul(size_of::<T>()).and_then(|bytes| start.checked_add(bytes));
            let fits =
                capacity == 0 || end.is_some_and(|end| start >= region.start as usize && end <= region.end as usize);
            if !fits || values.len() > capacity {
                return Err(format!("the ledger's {name} lie outside the region: the image is damaged"));
            }
            Ok(())
        }
        inside("accounts", &self.accounts, image)?;
        inside("tellers", &self.tellers, image)?;
        inside("branches", &self.branches, image)?;
        inside("history", &self.history, image)?;
        let branches = self.branches.len() as u64;
        if self.accounts.len() as u64 != branches * ACCOUNTS_PER_BRANCH
            || self.tellers.len() as u64 != branches * TELLERS_PER_BRANCH
            || self.history.len() > HISTORY
        {
            return Err(format!(
                "implausible ledger shape: {} accounts, {} tellers, {branches} branches, {} history entries",
                self.accounts.len(),
                self.tellers.len(),
                self.history.len()
            ));
        }
        Ok(())
    }
}

/// The ledger's consistency check: accounts, tellers and branches sum to the same total (every
/// transfer moved all three), the requests the platform applied add up to the transfers, and
/// the history ring agrees: as many entries as transfers (up to its size), none beyond its
/// client's last request, and the newest the last request of its client.
pub fn check(state: &[u8], clients: impl Iterator<Item = ClientRecord>) -> Result<String, String> {
    let state = state_in(state)?;
    let (accounts, tellers, branches): (i64, i64, i64) =
        (state.accounts.iter().sum(), state.tellers.iter().sum(), state.branches.iter().sum());
    if accounts != tellers || tellers != branches {
        return Err(format!("balances disagree: accounts {accounts}, tellers {tellers}, branches {branches}"));
    }
    let last: BTreeMap<u64, u64> = clients.map(|record| (record.client, record.request)).collect();
    let applied: u64 = last.values().sum();
    if applied != state.transfers {
        return Err(format!("{applied} requests applied to clients, {} transfers in the ledger", state.transfers));
    }
    // The history ring holds the newest transfers: each one a client's request no later than
    // its last, and the very newest the last of its client.
    if state.history.len() as u64 != state.transfers.min(HISTORY as u64) {
        return Err(format!("{} history entries after {} transfers", state.history.len(), state.transfers));
    }
    for entry in &state.history {
        if last.get(&entry.client).is_none_or(|&request| entry.request > request) {
            return Err(format!(
                "history names request {} of client {}, which it never applied",
                entry.request, entry.client
            ));
        }
    }
    if let Some(newest) = state.transfers.checked_sub(1).map(|n| state.history[(n % HISTORY as u64) as usize])
        && last[&newest.client] != newest.request
    {
        return Err(format!(
            "the newest transfer is request {} of client {}, whose last applied request is {}",
            newest.request, newest.client, last[&newest.client]
        ));
    }
    Ok(format!(
        "ledger consistent: {} transfers, total balance {accounts} over {} accounts",
        state.transfers,
        state.accounts.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_proto::CheckpointId;
    use nonstop_region::heap::Heap;
    use nonstop_region::{Mirror, Region};
    use nonstop_service::{CallError, Caller, Executed, Hosted};

    fn hosted(base: usize) -> (Hosted, Mirror) {
        let hosted = Hosted::new(NAME, Ledger::new(1));
        let mirror = Mirror::transparent_unreplicated(Region::map(base, hosted.region_len()).unwrap(), CheckpointId(1));
        hosted.init(&mirror).unwrap();
        (hosted, mirror)
    }

    fn run(
        hosted: &Hosted,
        mirror: &Mirror,
        client: u64,
        request: u64,
        t: TransferRequest,
    ) -> Result<Executed, CallError> {
        let body = postcard::to_allocvec(&t).unwrap();
        hosted.execute(mirror, Caller { client, request, lane: 0 }, 0, &body).map(|(executed, _)| executed)
    }

    fn balance(executed: Executed) -> i64 {
        match executed {
            Executed::Applied(reply) | Executed::Duplicate(reply) => postcard::from_bytes(&reply).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    /// The ledger's state inside one update, for a test that damages it on purpose.
    fn damage(mirror: &Mirror, hosted: &Hosted, f: impl FnOnce(&mut State)) {
        let _ = hosted;
        mirror.update(|image| {
            f(Heap::open(&mut image[..Ledger::new(1).state_len()])
                .unwrap()
                .root(|| -> State { unreachable!() })
                .unwrap())
        });
    }

    #[test]
    fn a_retry_is_answered_not_applied_again_and_the_check_holds() {
        let (hosted, mirror) = hosted(0x3600_0000_0000);
        let transfer = TransferRequest { account: 3, teller: 1, delta: 500 };
        assert_eq!(balance(run(&hosted, &mirror, 7, 1, transfer).unwrap()), 500);
        assert!(matches!(run(&hosted, &mirror, 7, 1, transfer).unwrap(), Executed::Duplicate(_)));
        assert_eq!(balance(run(&hosted, &mirror, 7, 2, TransferRequest { delta: -200, ..transfer }).unwrap()), 300);
        assert_eq!(run(&hosted, &mirror, 7, 1, transfer).unwrap(), Executed::Stale { last: 2 });
        for client in 8..1000 {
            let transfer = TransferRequest { account: client * 13, teller: client % 10, delta: 1 };
            run(&hosted, &mirror, client, 1, transfer).unwrap();
        }
        let query = postcard::to_allocvec(&BankQuery::Read { client: 7, account: 3 }).unwrap();
        let answer: BankAnswer = postcard::from_bytes(&hosted.query(&mirror, &query).unwrap().0).unwrap();
        let memory = Some(Remembered { request: 2, applied: 2, balance: 300 });
        assert_eq!(answer, BankAnswer::Read { memory, balance: Some(300) });
        let summary = mirror.quiesced(|image, _| hosted.check(image)).unwrap();
        assert!(summary.contains("994 transfers") && summary.contains("993 clients"), "{summary}");
    }

    #[test]
    fn bad_requests_change_nothing_and_a_declared_mirror_is_refused() {
        let (hosted, mirror) = hosted(0x3700_0000_0000);
        let before = mirror.quiesced(|image, _| image.to_vec());
        for transfer in [
            TransferRequest { account: ACCOUNTS_PER_BRANCH, teller: 0, delta: 1 },
            TransferRequest { account: 0, teller: 10, delta: 1 },
        ] {
            assert!(matches!(run(&hosted, &mirror, 1, 1, transfer), Err(CallError::Refused(_))));
        }
        assert!(mirror.quiesced(|image, _| image == before.as_slice()));
        let declared = Mirror::new(Region::map(0x3800_0000_0000, hosted.region_len()).unwrap(), None, CheckpointId(1));
        assert!(hosted.init(&declared).unwrap_err().to_string().contains("transparent"));
    }

    #[test]
    fn a_broken_invariant_is_found() {
        let (hosted, mirror) = hosted(0x3900_0000_0000);
        run(&hosted, &mirror, 5, 1, TransferRequest { account: 9, teller: 2, delta: 40 }).unwrap();
        // A transfer applied twice behind the platform's back, as a lost checkpoint would show.
        damage(&mirror, &hosted, |state| state.transfers += 1);
        mirror.quiesced(|image, _| assert!(hosted.check(image).unwrap_err().contains("transfers in the ledger")));
        // A history that disagrees with what the clients were answered.
        damage(&mirror, &hosted, |state| {
            state.transfers -= 1;
            state.history[0].request = 2;
        });
        mirror.quiesced(|image, _| assert!(hosted.check(image).unwrap_err().contains("never applied")));
    }

    /// Replaces, in the bytes of the accounts' vector itself (not through its API: a length past
    /// its capacity is no state a vector may be put in), every word equal to `from` by `to`: its
    /// length and capacity, as a fault of the region's memory would damage them.
    fn damage_accounts_length(mirror: &Mirror, hosted: &Hosted, from: usize, to: usize) {
        let mut vector = 0;
        damage(mirror, hosted, |state| vector = std::ptr::from_ref(&state.accounts) as usize);
        mirror.update(|image| {
            let start = vector - image.as_ptr() as usize;
            let bytes = &mut image[start..start + std::mem::size_of::<RegionVec<i64>>()];
            for word in bytes.chunks_exact_mut(std::mem::size_of::<usize>()) {
                if usize::from_ne_bytes(word.try_into().unwrap()) == from {
                    word.copy_from_slice(&to.to_ne_bytes());
                }
            }
        });
    }

    #[test]
    fn a_damaged_state_is_refused_before_it_is_read_through() {
        let (hosted, mirror) = hosted(0x3a00_0000_0000);
        let accounts = ACCOUNTS_PER_BRANCH as usize;
        damage_accounts_length(&mirror, &hosted, accounts, usize::MAX / 8);
        mirror.quiesced(|image, _| assert!(hosted.check(image).unwrap_err().contains("outside the region")));
        let query = postcard::to_allocvec(&BankQuery::Balances(vec![5])).unwrap();
        assert!(hosted.query(&mirror, &query).unwrap_err().to_string().contains("outside the region"));
        damage_accounts_length(&mirror, &hosted, usize::MAX / 8, accounts);
        mirror.quiesced(|image, _| assert!(hosted.check(image).is_ok()));
    }
}
