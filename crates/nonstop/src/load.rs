//! Client load on the bank service, with the history needed to count lost and doubled
//! acknowledged updates.
//!
//! Client `c` owns account `c - 1` and sends transfers numbered 1, 2, 3, … whose amounts follow
//! from `(c, number)` ([`delta_of`]). So whatever the service remembers of a client — its last
//! request number `R` — the account must hold exactly the sum of the amounts of requests `1..=R`,
//! and `R` must be at least the last request the client had answered. Anything else is an
//! acknowledged update lost or an update applied twice.

use nonstop_node::client::{Client, ClientError};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The amount of request `request` of client `client`, in cents (never 0).
pub fn delta_of(client: u64, request: u64) -> i64 {
    let mixed = (client.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ request.wrapping_mul(0xD6E8_FEB8_6659_FD93)) >> 40;
    (mixed % 2000) as i64 - 999 + if mixed % 2000 == 999 { 1 } else { 0 }
}

/// The balance client `client`'s account holds after its requests `1..=last`.
pub fn expected_balance(client: u64, last: u64) -> i64 {
    (1..=last).map(|request| delta_of(client, request)).sum()
}

/// One answered request.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    /// When the answer arrived.
    pub at: Instant,
    /// The primary's term.
    pub term: u64,
}

/// What one client saw.
#[derive(Clone, Debug)]
pub struct ClientHistory {
    /// The client.
    pub client: u64,
    /// The last request answered.
    pub last_acked: u64,
    /// Answers that were retries of requests applied before.
    pub duplicates_answered: u64,
    /// Requests that got no answer at all.
    pub failures: Vec<String>,
}

/// Client threads issuing transfers back to back until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<ClientHistory>>,
    acks: Arc<Mutex<Vec<Ack>>>,
    answered: Arc<AtomicU64>,
}

impl Load {
    /// Starts `clients` clients (ids `first_client..`) of `service` against the nodes at `nodes`.
    pub fn start(nodes: Vec<SocketAddr>, service: &str, clients: u64, first_client: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(AtomicU64::new(0));
        let threads = (first_client..first_client + clients)
            .map(|client| {
                let (nodes, stop, acks, answered) = (nodes.clone(), stop.clone(), acks.clone(), answered.clone());
                let service = service.to_string();
                std::thread::Builder::new()
                    .name(format!("client-{client}"))
                    .spawn(move || run_client(nodes, &service, client, &stop, &acks, &answered))
                    .expect("spawn client thread")
            })
            .collect();
        Load { stop, threads, acks, answered }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// The first answer after `after` from a term above `term`.
    pub fn first_ack_after(&self, after: Instant, term: u64) -> Option<Ack> {
        // Acks are appended in about the order they arrived: scan back from the newest and stop
        // well before `after`, so that a long run does not hold the clients' lock for a scan of
        // millions.
        let margin = Duration::from_millis(100);
        let acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        acks.iter()
            .rev()
            .take_while(|a| a.at + margin > after)
            .filter(|a| a.at > after && a.term > term)
            .min_by_key(|a| a.at)
            .copied()
    }

    /// Waits up to `timeout` (from `after`) for the first answer after `after` from a term above
    /// `term`: the end of a failover as the clients see it.
    pub fn wait_first_ack_after(&self, after: Instant, term: u64, timeout: Duration) -> Option<Ack> {
        loop {
            let first = self.first_ack_after(after, term);
            if first.is_some() || after.elapsed() >= timeout {
                return first;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// The longest time without any answer between `from` and `to`.
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut times: Vec<Instant> = self
            .acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|a| a.at)
            .filter(|at| *at >= from && *at <= to)
            .collect();
        times.sort();
        let mut previous = from;
        let mut longest = Duration::ZERO;
        for at in times.into_iter().chain(std::iter::once(to)) {
            longest = longest.max(at.saturating_duration_since(previous));
            previous = at;
        }
        longest
    }

    /// Answers per `bucket` between `from` and `to`.
    pub fn rate(&self, from: Instant, to: Instant, bucket: Duration) -> Vec<u64> {
        let buckets = (to.saturating_duration_since(from).as_nanos() / bucket.as_nanos().max(1)) as usize;
        let mut counts = vec![0u64; buckets];
        for ack in self.acks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if ack.at >= from && ack.at < to {
                let index = (ack.at.duration_since(from).as_nanos() / bucket.as_nanos()) as usize;
                if let Some(count) = counts.get_mut(index) {
                    *count += 1;
                }
            }
        }
        counts
    }

    /// Stops the clients (each finishes its request in flight) and returns their histories.
    pub fn stop(self) -> Vec<ClientHistory> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads.into_iter().map(|t| t.join().expect("client thread panicked")).collect()
    }
}

fn run_client(
    nodes: Vec<SocketAddr>,
    service: &str,
    client: u64,
    stop: &AtomicBool,
    acks: &Mutex<Vec<Ack>>,
    answered: &AtomicU64,
) -> ClientHistory {
    let mut history = ClientHistory { client, last_acked: 0, duplicates_answered: 0, failures: Vec::new() };
    let mut connection = Client::new(nodes, service, client);
    let account = client - 1;
    while !stop.load(Ordering::Relaxed) {
        let request = connection.next_request();
        match connection.transfer(account, client % 10, delta_of(client, request)) {
            Ok(done) => {
                history.last_acked = done.request;
                history.duplicates_answered += done.duplicate as u64;
                answered.fetch_add(1, Ordering::Relaxed);
                acks.lock().unwrap_or_else(|p| p.into_inner()).push(Ack { at: Instant::now(), term: done.term });
            }
            Err(error @ ClientError::Rejected { .. }) => {
                history.failures.push(error.to_string());
                break;
            }
            Err(error) => history.failures.push(error.to_string()),
        }
    }
    history
}

/// What the final audit found.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    /// The service's consistency check.
    pub check: Option<Result<String, String>>,
    /// Acknowledged updates missing from the final state.
    pub acked_lost: u64,
    /// Updates applied more than once.
    pub applied_twice: u64,
    /// Clients whose last request was applied but not answered (in flight when stopped).
    pub in_flight: u64,
    /// Requests answered.
    pub acknowledged: u64,
}

/// Audits `service` against its clients' histories.
pub fn audit(nodes: Vec<SocketAddr>, service: &str, histories: &[ClientHistory]) -> Result<Verdict, ClientError> {
    let clients: Vec<u64> = histories.iter().map(|h| h.client).collect();
    let accounts: Vec<u64> = clients.iter().map(|c| c - 1).collect();
    let mut auditor = Client::new(nodes, service, u64::MAX);
    let audit = auditor.audit(clients, accounts)?;
    let mut verdict = Verdict { check: Some(audit.check), ..Verdict::default() };
    for (history, ((_, memory), (_, balance))) in histories.iter().zip(audit.clients.iter().zip(&audit.balances)) {
        verdict.acknowledged += history.last_acked;
        let (request, applied) = memory.map_or((0, 0), |m| (m.request, m.applied));
        if request < history.last_acked {
            verdict.acked_lost += history.last_acked - request;
        }
        if applied > request {
            verdict.applied_twice += applied - request;
        }
        if request > history.last_acked {
            verdict.in_flight += 1;
        }
        // The balance is the sum of the amounts of exactly the requests 1..=request: a request
        // applied twice (or half applied) shows here even if the counters agree.
        if balance.unwrap_or(0) != expected_balance(history.client, request) && applied <= request {
            verdict.applied_twice += 1;
        }
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_never_zero_and_sum_as_expected() {
        for client in 1..50 {
            for request in 1..200 {
                let delta = delta_of(client, request);
                assert!(delta != 0 && (-999..=1000).contains(&delta));
            }
        }
        assert_eq!(expected_balance(3, 2), delta_of(3, 1) + delta_of(3, 2));
    }
}
