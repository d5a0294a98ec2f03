//! Client load on the bank service, recording the history of every operation for the checker
//! ([`nonstop_history`]).
//!
//! Client `c` owns account `c - 1` and sends transfers numbered 1, 2, 3, … whose amounts follow
//! from `(c, number)` ([`delta_of`]). So whatever the service remembers of a client — its last
//! request number `R` — the account must hold exactly the sum of the amounts of requests `1..=R`,
//! and `R` must be at least the last request the client had answered. Anything else is an
//! acknowledged update lost or an update applied twice.

use nonstop_client::ClientError;
use nonstop_history::{self as history, CheckReport, FinalState, Op, Operation, Outcome, delta_of};
use nonstop_workloads::bank::{BankClient, Remembered};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One answered request.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    /// When the answer arrived.
    pub at: Instant,
    /// The primary's term.
    pub term: u64,
}

/// Every answer's arrival and term, in about the order they arrived: what failover times are
/// read from.
#[derive(Debug, Default)]
pub struct AckLog(Mutex<Vec<Ack>>);

impl AckLog {
    /// Records an answer.
    pub fn push(&self, ack: Ack) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(ack);
    }

    /// The first answer after `after` from a term above `term`.
    pub fn first_ack_after(&self, after: Instant, term: u64) -> Option<Ack> {
        // Acks are appended in about the order they arrived: scan back from the newest and stop
        // well before `after`, so that a long run does not hold the clients' lock for a scan of
        // millions.
        let margin = Duration::from_millis(100);
        let acks = self.0.lock().unwrap_or_else(|p| p.into_inner());
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
            .0
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
        for ack in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if ack.at >= from && ack.at < to {
                let index = (ack.at.duration_since(from).as_nanos() / bucket.as_nanos()) as usize;
                if let Some(count) = counts.get_mut(index) {
                    *count += 1;
                }
            }
        }
        counts
    }
}

/// Client threads issuing transfers back to back until stopped, and reader threads reading
/// their state; every operation goes into the history.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Operation>>>,
    acks: Arc<AckLog>,
    answered: Arc<AtomicU64>,
}

/// What the client threads share.
struct Shared {
    nodes: Vec<SocketAddr>,
    service: String,
    start: Instant,
    stop: Arc<AtomicBool>,
    acks: Arc<AckLog>,
    answered: Arc<AtomicU64>,
}

impl Shared {
    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_micros() as u64
    }
}

impl Load {
    /// Starts `clients` clients (ids `first_client..`) of `service` against the nodes at `nodes`.
    pub fn start(nodes: Vec<SocketAddr>, service: &str, clients: u64, first_client: u64) -> Load {
        Load::start_with_readers(nodes, service, clients, first_client, 0, |_| {})
    }

    /// As [`Load::start`], plus `readers` threads that read random clients' state, one read
    /// every few milliseconds each; every thread first runs `setup` (e.g. to enter a network
    /// namespace).
    pub fn start_with_readers(
        nodes: Vec<SocketAddr>,
        service: &str,
        clients: u64,
        first_client: u64,
        readers: u64,
        setup: impl Fn(&str) + Send + Sync + 'static,
    ) -> Load {
        let shared = Arc::new(Shared {
            nodes,
            service: service.to_string(),
            start: Instant::now(),
            stop: Arc::new(AtomicBool::new(false)),
            acks: Arc::default(),
            answered: Arc::new(AtomicU64::new(0)),
        });
        let setup = Arc::new(setup);
        let client_ids = first_client..first_client + clients;
        let mut threads: Vec<JoinHandle<Vec<Operation>>> = client_ids
            .clone()
            .map(|client| {
                let (shared, setup) = (shared.clone(), setup.clone());
                let name = format!("client-{client}");
                std::thread::Builder::new()
                    .name(name.clone())
                    .spawn(move || {
                        setup(&name);
                        run_client(&shared, client)
                    })
                    .expect("spawn client thread")
            })
            .collect();
        for reader in 0..readers {
            let (shared, setup) = (shared.clone(), setup.clone());
            let (process, clients) = (first_client + clients + reader, client_ids.clone());
            let name = format!("reader-{reader}");
            threads.push(
                std::thread::Builder::new()
                    .name(name.clone())
                    .spawn(move || {
                        setup(&name);
                        run_reader(&shared, process, clients)
                    })
                    .expect("spawn reader thread"),
            );
        }
        Load { stop: shared.stop.clone(), threads, acks: shared.acks.clone(), answered: shared.answered.clone() }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// The answers so far, with when they arrived.
    pub fn acks(&self) -> &AckLog {
        &self.acks
    }

    /// See [`AckLog::wait_first_ack_after`].
    pub fn wait_first_ack_after(&self, after: Instant, term: u64, timeout: Duration) -> Option<Ack> {
        self.acks.wait_first_ack_after(after, term, timeout)
    }

    /// Stops the clients and readers (each finishes its operation in flight) and returns the
    /// history of every operation.
    pub fn stop(self) -> Vec<Operation> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads.into_iter().flat_map(|t| t.join().expect("client thread panicked")).collect()
    }
}

fn run_client(shared: &Shared, client: u64) -> Vec<Operation> {
    let mut history = Vec::new();
    let mut connection = BankClient::new(shared.nodes.clone(), &shared.service, client);
    let account = client - 1;
    while !shared.stop.load(Ordering::Relaxed) {
        let request = connection.next_request();
        let delta = delta_of(client, request);
        let invoked = Instant::now();
        let result = connection.transfer(account, client % 10, delta);
        let completed = Instant::now();
        let outcome = match result {
            Ok(done) => {
                shared.answered.fetch_add(1, Ordering::Relaxed);
                shared.acks.push(Ack { at: completed, term: done.term });
                Outcome::Ok { term: done.term, node: done.answered_by, request: done.request, balance: done.balance }
            }
            Err(ClientError::Rejected { reason, .. }) => Outcome::Fail { reason },
            Err(error) => Outcome::Unknown { reason: error.to_string() },
        };
        let refused = matches!(outcome, Outcome::Fail { .. });
        history.push(Operation {
            process: client,
            client,
            op: Op::Transfer { request, delta },
            invoked_us: shared.micros(invoked),
            completed_us: shared.micros(completed),
            outcome,
        });
        if refused {
            break;
        }
    }
    history
}

/// How long a reader waits between reads.
const READ_EVERY: Duration = Duration::from_millis(5);

fn run_reader(shared: &Shared, process: u64, clients: std::ops::Range<u64>) -> Vec<Operation> {
    let mut history = Vec::new();
    let mut connection = BankClient::new(shared.nodes.clone(), &shared.service, process);
    let mut next = process;
    while !shared.stop.load(Ordering::Relaxed) && !clients.is_empty() {
        // Walk the clients in a stride so that every reader covers all of them.
        next = next.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let client = clients.start + (next >> 33) % (clients.end - clients.start);
        let invoked = Instant::now();
        let result = connection.read(client, client - 1);
        let completed = Instant::now();
        let outcome = match result {
            Ok(read) => {
                let memory = read.memory.unwrap_or(Remembered { request: 0, applied: 0, balance: 0 });
                Outcome::Ok {
                    term: read.term,
                    node: read.answered_by,
                    request: memory.request,
                    balance: read.balance.unwrap_or(0),
                }
            }
            Err(ClientError::Rejected { reason, .. }) => Outcome::Fail { reason },
            Err(error) => Outcome::Unknown { reason: error.to_string() },
        };
        history.push(Operation {
            process,
            client,
            op: Op::Read,
            invoked_us: shared.micros(invoked),
            completed_us: shared.micros(completed),
            outcome,
        });
        std::thread::sleep(READ_EVERY);
    }
    history
}

/// What the final audit found.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The service's consistency check.
    pub check: Result<String, String>,
    /// The history checker's report.
    pub report: CheckReport,
    /// Transfers acknowledged.
    pub acknowledged: u64,
}

impl Verdict {
    /// Whether everything holds: the consistency check and every property of the history.
    pub fn clean(&self) -> bool {
        self.check.is_ok() && self.report.violations.total() == 0
    }
}

/// Reads the service's final state of every client in `history` and checks the history against
/// it.
pub fn audit(nodes: Vec<SocketAddr>, service: &str, history: &[Operation]) -> Result<Verdict, ClientError> {
    audit_answers(nodes, service, history, history::Answers::OnePrimary)
}

/// [`audit`], for a service answered as `answers` says.
pub fn audit_answers(
    nodes: Vec<SocketAddr>,
    service: &str,
    history: &[Operation],
    answers: history::Answers,
) -> Result<Verdict, ClientError> {
    let clients: Vec<u64> = history
        .iter()
        .filter(|o| matches!(o.op, Op::Transfer { .. }))
        .map(|o| o.client)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let accounts: Vec<u64> = clients.iter().map(|c| c - 1).collect();
    let mut auditor = BankClient::new(nodes, service, u64::MAX);
    let audit = auditor.audit(clients, accounts)?;
    let finals: BTreeMap<u64, FinalState> = audit
        .clients
        .iter()
        .zip(&audit.balances)
        .map(|((client, memory), (_, balance))| {
            let (request, applied) = memory.map_or((0, 0), |m| (m.request, m.applied));
            (*client, FinalState { request, applied, balance: balance.unwrap_or(0) })
        })
        .collect();
    let report = history::check_answers(history, &finals, answers);
    Ok(Verdict { check: audit.check, acknowledged: report.operations.transfers_ok, report })
}
