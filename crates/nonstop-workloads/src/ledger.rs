//! The bank service written as ordinary Rust: its state is plain collections in the region
//! (transparent mode), found again through the heap's root after a promotion.
//!
//! It answers the same requests as [`crate::bank`] — transfers that are applied exactly once,
//! reads, audits — so the same clients, failover tests and history checker run against it.
//! Where the bank lays Debit-Credit out at fixed offsets and declares every range it writes,
//! the ledger keeps `Vec`s of balances, a `HashMap` of what it answered each client and a
//! ring of history entries, and simply assigns to them inside [`Mirror::update`]; the kernel
//! finds the pages written ([`nonstop_region::tracking`]) and every pointer stays valid on a
//! backup because the region sits at the same address there.
//!
//! There is no undo in transparent mode, so every refusal (bad request, out of order, table
//! full, heap full) is decided before the first write.

use crate::bank::{BankError, ClientSlot, Executed, TransferRequest};
use nonstop_proto::primary::Ticket;
use nonstop_region::Mirror;
use nonstop_region::heap::{FixedState, Heap, HeapError, RegionAlloc, RegionHashMap, RegionVec};

/// The service's name.
pub const NAME: &str = "ledger";
const TELLERS_PER_BRANCH: u64 = 10;
const ACCOUNTS_PER_BRANCH: u64 = 100_000;
/// Clients the ledger remembers at most (as many as the bank's request table).
pub const MAX_CLIENTS: usize = crate::bank::SLOTS as usize;
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
    /// What the ledger last answered each client (the request number, how many were applied,
    /// the balance it answered).
    clients: RegionHashMap<u64, ClientSlot>,
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
            clients: RegionHashMap::with_capacity_and_hasher_in(MAX_CLIENTS, FixedState::default(), alloc),
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

    /// Accounts in the ledger.
    pub fn account_count(&self) -> u64 {
        self.branches * ACCOUNTS_PER_BRANCH
    }

    /// Tellers in the ledger.
    pub fn teller_count(&self) -> u64 {
        self.branches * TELLERS_PER_BRANCH
    }

    /// Bytes of region the service needs: its collections at full size, twice over for the
    /// allocator's slack, in whole MiB.
    pub fn region_len(&self) -> usize {
        let balances = (self.account_count() + self.teller_count() + self.branches) as usize * size_of::<i64>();
        let clients = MAX_CLIENTS * 2 * (size_of::<(u64, ClientSlot)>() + 1);
        let history = HISTORY * size_of::<Entry>();
        (2 * (balances + clients + history)).next_multiple_of(1 << 20)
    }

    /// Creates the ledger in an empty transparent mirror (or finds it in a resumed one).
    pub fn load(&self, mirror: &Mirror) -> Result<(), BankError> {
        self.update(mirror, |_| Ok(())).map(|(done, _)| done)
    }

    /// Runs `work` on the state inside one update of `mirror`.
    fn update<R>(
        &self,
        mirror: &Mirror,
        work: impl FnOnce(&mut State) -> Result<R, BankError>,
    ) -> Result<(R, Ticket), BankError> {
        if !mirror.is_transparent() {
            return Err(BankError::NoLedger(
                "the ledger runs in transparent mode: set tracking = \"uffd\" or \"mprotect\"".into(),
            ));
        }
        let branches = self.branches;
        let (result, ticket) = mirror.update(|image| {
            let mut heap = Heap::open(image).map_err(no_ledger)?;
            let alloc = heap.allocator();
            let state = heap.root(|| State::new(branches, alloc)).map_err(no_ledger)?;
            if state.branches.len() as u64 != branches {
                return Err(BankError::NoLedger(format!(
                    "the region holds a ledger of {} branches, this node is configured for {branches}",
                    state.branches.len()
                )));
            }
            work(state)
        });
        result.map(|result| (result, ticket))
    }

    /// Applies `request` once: a retry of the last request is answered as the first time, an
    /// older one is stale, and one that skips numbers is refused.
    pub fn execute(&self, mirror: &Mirror, request: &TransferRequest) -> Result<(Executed, Ticket), BankError> {
        request.check(self.account_count(), self.teller_count())?;
        self.update(mirror, |state| {
            let slot = state.clients.get(&request.client).copied();
            if let Some(answered) = request.answered(slot.as_ref())? {
                return Ok(answered);
            }
            if slot.is_none() && state.clients.len() >= MAX_CLIENTS {
                return Err(BankError::TableFull);
            }
            // Every refusal is behind us: from here on the update only writes.
            let account = &mut state.accounts[request.account as usize];
            *account += request.delta;
            let balance = *account;
            state.tellers[request.teller as usize] += request.delta;
            state.branches[(request.teller / TELLERS_PER_BRANCH) as usize] += request.delta;
            let entry = Entry {
                client: request.client,
                request: request.request,
                account: request.account,
                delta: request.delta,
            };
            let at = (state.transfers % HISTORY as u64) as usize;
            if at < state.history.len() {
                state.history[at] = entry;
            } else {
                state.history.push(entry); // within the capacity reserved at creation
            }
            state.transfers += 1;
            state.clients.insert(request.client, request.applied(&slot.unwrap_or_default(), balance));
            Ok(Executed::Applied { balance })
        })
    }

    /// What the ledger remembers of `client` and the balance of `account` (`None` if out of
    /// range), read in one update that writes nothing.
    pub fn read(
        &self,
        mirror: &Mirror,
        client: u64,
        account: u64,
    ) -> Result<(Option<ClientSlot>, Option<i64>), BankError> {
        self.update(mirror, |state| {
            Ok((state.clients.get(&client).copied(), state.accounts.get(account as usize).copied()))
        })
        .map(|(read, _)| read)
    }

    /// What the ledger in `image` remembers of `client`.
    pub fn client(&self, image: &[u8], client: u64) -> Option<ClientSlot> {
        state_in(image).ok()?.clients.get(&client).copied()
    }

    /// The balance of `account` in `image`.
    pub fn balance(&self, image: &[u8], account: u64) -> Option<i64> {
        state_in(image).ok()?.accounts.get(account as usize).copied()
    }
}

fn no_ledger(error: HeapError) -> BankError {
    BankError::NoLedger(error.to_string())
}

/// The state in an image mapped at the region's address (a quiesced primary's region, or a
/// backup's image): its pointers are only valid there.
///
/// The root's place and type are checked by the heap; the vectors' extents and the state's
/// shape are checked here before anything is read through them, so that a damaged image gets
/// an error, not a read outside it. (The hash map's table is trusted as a promotion trusts it:
/// hashbrown does not show where it lies.)
fn state_in(image: &[u8]) -> Result<&State, String> {
    let state = Heap::root_in::<State>(image)
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
            || self.clients.len() > MAX_CLIENTS
        {
            return Err(format!(
                "implausible ledger shape: {} accounts, {} tellers, {branches} branches, {} history entries, {} clients",
                self.accounts.len(),
                self.tellers.len(),
                self.history.len(),
                self.clients.len()
            ));
        }
        Ok(())
    }
}

/// The ledger's consistency check: accounts, tellers and branches sum to the same total (every
/// transfer moved all three), every client's last request number equals the number of its
/// requests applied, those add up to the transfers applied, and the history ring agrees: as
/// many entries as transfers (up to its size), none beyond its client's last request, and the
/// newest the last request of its client.
pub fn check(image: &[u8]) -> Result<String, String> {
    let state = state_in(image)?;
    let (accounts, tellers, branches): (i64, i64, i64) =
        (state.accounts.iter().sum(), state.tellers.iter().sum(), state.branches.iter().sum());
    if accounts != tellers || tellers != branches {
        return Err(format!("balances disagree: accounts {accounts}, tellers {tellers}, branches {branches}"));
    }
    let mut applied = 0;
    for (client, slot) in &state.clients {
        if slot.applied.get() != slot.request.get() || slot.client.get() != *client {
            return Err(format!(
                "client {client}: last request {} but {} applied",
                slot.request.get(),
                slot.applied.get()
            ));
        }
        applied += slot.applied.get();
    }
    if applied != state.transfers {
        return Err(format!("{applied} requests applied to clients, {} transfers in the ledger", state.transfers));
    }
    // The history ring holds the newest transfers: each one a client's request no later than
    // its last, and the very newest the last of its client.
    if state.history.len() as u64 != state.transfers.min(HISTORY as u64) {
        return Err(format!("{} history entries after {} transfers", state.history.len(), state.transfers));
    }
    for entry in &state.history {
        if state.clients.get(&entry.client).is_none_or(|slot| entry.request > slot.request.get()) {
            return Err(format!(
                "history names request {} of client {}, which it never applied",
                entry.request, entry.client
            ));
        }
    }
    if let Some(newest) = state.transfers.checked_sub(1).map(|n| state.history[(n % HISTORY as u64) as usize])
        && state.clients[&newest.client].request.get() != newest.request
    {
        return Err(format!(
            "the newest transfer is request {} of client {}, whose last applied request is {}",
            newest.request,
            newest.client,
            state.clients[&newest.client].request.get()
        ));
    }
    Ok(format!(
        "ledger consistent: {} transfers, total balance {accounts} over {} accounts; {} clients, each request applied once",
        state.transfers,
        state.accounts.len(),
        state.clients.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_proto::CheckpointId;
    use nonstop_region::Region;

    fn mirror(ledger: &Ledger, base: usize) -> Mirror {
        let mirror = Mirror::transparent_unreplicated(Region::map(base, ledger.region_len()).unwrap(), CheckpointId(1));
        ledger.load(&mirror).unwrap();
        mirror
    }

    #[test]
    fn a_retry_is_answered_not_applied_again_and_the_check_holds() {
        let ledger = Ledger::new(1);
        let mirror = mirror(&ledger, 0x3600_0000_0000);
        let request = TransferRequest { client: 7, request: 1, account: 3, teller: 1, delta: 500 };
        assert_eq!(ledger.execute(&mirror, &request).unwrap().0, Executed::Applied { balance: 500 });
        assert_eq!(ledger.execute(&mirror, &request).unwrap().0, Executed::Duplicate { balance: 500 });
        let second = TransferRequest { request: 2, delta: -200, ..request };
        assert_eq!(ledger.execute(&mirror, &second).unwrap().0, Executed::Applied { balance: 300 });
        assert_eq!(ledger.execute(&mirror, &request).unwrap().0, Executed::Stale { last: 2 });
        let skip = TransferRequest { request: 4, ..request };
        assert_eq!(ledger.execute(&mirror, &skip).unwrap_err(), BankError::OutOfOrder { expected: 3, got: 4 });
        for client in 8..1000 {
            let request = TransferRequest { client, request: 1, account: client * 13, teller: client % 10, delta: 1 };
            ledger.execute(&mirror, &request).unwrap();
        }
        let (slot, balance) = ledger.read(&mirror, 7, 3).unwrap();
        assert_eq!((slot.unwrap().request.get(), balance), (2, Some(300)));
        mirror.quiesced(|image, _| {
            let slot = ledger.client(image, 7).unwrap();
            assert_eq!((slot.request.get(), slot.applied.get(), slot.balance.get()), (2, 2, 300));
            assert_eq!(ledger.balance(image, 3), Some(300));
            let summary = check(image).unwrap();
            assert!(summary.contains("994 transfers"), "{summary}");
        });
    }

    #[test]
    fn bad_requests_change_nothing_and_a_declared_mirror_is_refused() {
        let ledger = Ledger::new(1);
        let mirror = mirror(&ledger, 0x3700_0000_0000);
        let before = mirror.quiesced(|image, _| image.to_vec());
        for request in [
            TransferRequest { client: 0, request: 1, account: 0, teller: 0, delta: 1 },
            TransferRequest { client: 1, request: 0, account: 0, teller: 0, delta: 1 },
            TransferRequest { client: 1, request: 1, account: ACCOUNTS_PER_BRANCH, teller: 0, delta: 1 },
            TransferRequest { client: 1, request: 1, account: 0, teller: 10, delta: 1 },
        ] {
            assert!(matches!(ledger.execute(&mirror, &request), Err(BankError::BadRequest(_))));
        }
        assert!(mirror.quiesced(|image, _| image == before.as_slice()));
        let declared = Mirror::new(Region::map(0x3800_0000_0000, ledger.region_len()).unwrap(), None, CheckpointId(1));
        assert!(matches!(ledger.load(&declared), Err(BankError::NoLedger(reason)) if reason.contains("transparent")));
    }

    #[test]
    fn a_broken_invariant_is_found() {
        let ledger = Ledger::new(1);
        let mirror = mirror(&ledger, 0x3900_0000_0000);
        let request = TransferRequest { client: 5, request: 1, account: 9, teller: 2, delta: 40 };
        ledger.execute(&mirror, &request).unwrap();
        // A transfer applied twice behind the ledger's back, as a lost checkpoint would show.
        mirror.update(|image| {
            let state = Heap::open(image).unwrap().root(|| -> State { unreachable!() }).unwrap();
            state.transfers += 1;
        });
        mirror.quiesced(|image, _| assert!(check(image).unwrap_err().contains("transfers in the ledger")));
        // A history that disagrees with what the clients were answered.
        mirror.update(|image| {
            let state = Heap::open(image).unwrap().root(|| -> State { unreachable!() }).unwrap();
            state.transfers -= 1;
            state.history[0].request = 2;
        });
        mirror.quiesced(|image, _| assert!(check(image).unwrap_err().contains("never applied")));
    }

    #[test]
    fn a_damaged_state_is_refused_before_it_is_read_through() {
        let ledger = Ledger::new(1);
        let mirror = mirror(&ledger, 0x3a00_0000_0000);
        let with_accounts = |len: usize| {
            mirror.update(|image| {
                let state = Heap::open(image).unwrap().root(|| -> State { unreachable!() }).unwrap();
                // SAFETY (test): the length is put back before anything reads past the data.
                unsafe { state.accounts.set_len(len) };
            })
        };
        with_accounts(usize::MAX / 8);
        mirror.quiesced(|image, _| {
            assert!(check(image).unwrap_err().contains("outside the region"));
            assert_eq!(ledger.balance(image, 5), None, "an audit reads nothing through it either");
        });
        with_accounts(ACCOUNTS_PER_BRANCH as usize);
        mirror.quiesced(|image, _| assert!(check(image).is_ok()));
    }
}
