//! What an active replica executes on: a single-threaded service in the replica's own region,
//! or a multithreaded one on worker threads under a deterministic scheduler.
//!
//! The rest of the replica (the order, the calls, the votes, the dissents, state transfer's
//! protocol) is the same for both; this module is where they differ: how an entry's requests
//! are executed, how a query and an audit read the state, and what a state transfer copies
//! (the region's pages, or the service's snapshot).

use crate::config::{ActiveService, RegionPlace};
use crate::status::WorkerThreads;
use nonstop_active::course::Acquisitions;
use nonstop_active::execute::{ExecuteError, Executor as Workers};
use nonstop_active::order::Request;
use nonstop_proto::CheckpointId;
use nonstop_proto::client::ClientMemory;
use nonstop_proto::runs::RunsBuilder;
use nonstop_region::{Mirror, Region};
use nonstop_service::threaded::{Ran, Scheduler};
use nonstop_service::{AuditReport, CallError, Caller, Executed, Hosted, HostedThreads};
use std::sync::{Arc, RwLock};

/// Pages copied per batch of a state transfer (each batch holds the region briefly).
pub(super) const TRANSFER_BATCH_PAGES: usize = 64;

/// Where a replica's service keeps its state, and how it executes.
pub(super) enum Machine {
    /// One request at a time, in the replica's own region.
    InRegion { service: Hosted, mirror: Arc<Mirror> },
    /// In batches on worker threads, in their mutexes. The lock is held to write while a batch
    /// runs, so that a query, an audit or a snapshot reads the state between two batches.
    OnThreads { service: HostedThreads, scheduler: Scheduler, threads: u16, workers: RwLock<Workers> },
}

/// Why an entry could not be executed.
pub(super) enum Failed {
    /// LSA: the threads could not make the grant leader's acquisitions; the batch is half
    /// executed, and the replica takes a live replica's state.
    Unfollowed(String),
    /// The service or its threads failed: the replica stops, for this reason.
    Stop(String),
}

/// A donor's state, copied between two entries of the order.
pub(super) enum Copied {
    /// Region pages: the whole image, or those written since the pre-copy's last round.
    Pages { payloads: Vec<Vec<u8>>, pages: usize },
    /// A multithreaded service's snapshot.
    Snapshot(Vec<u8>),
}

impl Machine {
    /// The replica's machine for `service`: its region mapped at `region` and the service
    /// initialised there, or its worker threads started.
    pub(super) fn start(name: &str, service: ActiveService, region: Option<RegionPlace>) -> Result<Machine, String> {
        match service {
            ActiveService::InRegion(service) => {
                // The config gives every service kept in a region its place.
                let RegionPlace { base, len } = region.ok_or("the service has no region in the config")?;
                let region = Region::map(base, len).map_err(|error| error.to_string())?;
                // Nothing ships from a replica's region: it needs no write tracking, only the
                // same execution as the others'.
                let mirror = match service.needs_transparent() {
                    true => Mirror::transparent_unreplicated(region, CheckpointId(1)),
                    false => Mirror::new(region, None, CheckpointId(1)),
                };
                // A line that no longer matches its seal is a copy gone wrong in memory: stop
                // this process, as a passive primary does (the other replicas answer, and a
                // restart rejoins as a new member with a live replica's state). Left to the
                // default, the panic would end only the executor thread, and the replica would
                // wait for ever while its status said it served.
                mirror.set_corruption_handler(crate::fail_stop);
                service.init(&mirror).map_err(|error| format!("the service does not initialise: {error}"))?;
                // Lines nobody reads are checked in the background too: a wrong byte found
                // there stops the node before any answer could show it (the digests find only
                // what shows).
                let mirror = Arc::new(mirror);
                crate::integrity::start_scrubber(name, &mirror);
                Ok(Machine::InRegion { service, mirror })
            }
            ActiveService::OnThreads { service, scheduler, threads } => {
                let workers = service
                    .executor(scheduler, threads)
                    .map_err(|error| format!("its worker threads do not start: {error}"))?;
                tracing::info!(service = name, scheduler = scheduler.name(), threads, "worker threads started");
                Ok(Machine::OnThreads { service, scheduler, threads, workers: RwLock::new(workers) })
            }
        }
    }

    /// Its worker threads, if the service runs on threads.
    pub(super) fn workers(&self) -> Option<WorkerThreads> {
        match self {
            Machine::InRegion { .. } => None,
            // Not from the executor: a status must not wait for a batch to end.
            Machine::OnThreads { scheduler, threads, .. } => {
                Some(WorkerThreads { scheduler: scheduler.name().to_string(), threads: *threads })
            }
        }
    }

    /// The region, if the service keeps its state in one.
    pub(super) fn mirror(&self) -> Option<&Mirror> {
        match self {
            Machine::InRegion { mirror, .. } => Some(mirror),
            Machine::OnThreads { .. } => None,
        }
    }

    /// Executes one entry's `requests` at order time `time_ms`, in order, the threads taking
    /// mutexes as `acquisitions` says: each one's reply or refusal, and the acquisitions made
    /// if it led the batch (LSA). An error: the replica's state no longer follows the order.
    pub(super) fn execute(
        &self,
        requests: &[Request],
        time_ms: u64,
        acquisitions: &Acquisitions,
    ) -> Result<Ran, Failed> {
        match self {
            Machine::InRegion { service, mirror } => requests
                .iter()
                .map(|request| {
                    let caller = Caller { client: request.client, request: request.number, lane: 0 };
                    match service.execute(mirror, caller, time_ms, &request.body) {
                        // The order delivers each request once; the table would answer a
                        // second delivery.
                        Ok((Executed::Applied(reply) | Executed::Duplicate(reply), _)) => Ok(Ok(reply)),
                        Ok((Executed::Stale { last }, _)) => {
                            Ok(Err(format!("request {} is older than the last applied ({last})", request.number)))
                        }
                        Err(CallError::Failed(reason)) => Err(Failed::Stop(format!("the service failed: {reason}"))),
                        // A refusal is an answer: every correct replica refuses alike.
                        Err(refusal) => Ok(Err(refusal.to_string())),
                    }
                })
                .collect::<Result<_, _>>()
                .map(|outcomes| Ran { outcomes, led: None }),
            // An entry of digests only: no thread needs waking.
            Machine::OnThreads { .. } if requests.is_empty() => Ok(Ran { outcomes: Vec::new(), led: None }),
            Machine::OnThreads { service, workers, .. } => {
                let workers = workers.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                let bodies = requests.iter().map(|request| request.body.clone()).collect();
                service.execute(&workers, bodies, acquisitions).map_err(|error| match error {
                    ExecuteError::Unfollowed(reason) => Failed::Unfollowed(reason),
                    other => Failed::Stop(format!("its worker threads failed: {other}")),
                })
            }
        }
    }

    /// Answers a query from the state as it stands.
    pub(super) fn query(&self, body: &[u8]) -> Result<Vec<u8>, CallError> {
        match self {
            Machine::InRegion { service, mirror } => service.query(mirror, body).map(|(answer, _)| answer),
            Machine::OnThreads { service, workers, .. } => {
                let _between_batches = workers.read().unwrap_or_else(|poisoned| poisoned.into_inner());
                service.query(body)
            }
        }
    }

    /// Audits the state with every execution held off: the service's checks (and the
    /// platform's, in a region), what is remembered of `clients` (by the region's client table,
    /// or for a service without one by `remembered`), and `query` answered from the same state.
    pub(super) fn audit(
        &self,
        clients: &[u64],
        query: Option<&[u8]>,
        remembered: impl Fn(u64) -> Option<ClientMemory>,
    ) -> AuditReport {
        match self {
            Machine::InRegion { service, mirror } => {
                mirror.quiesced_checked(|image, _| service.audit(image, clients, query))
            }
            Machine::OnThreads { service, workers, .. } => {
                let _between_batches = workers.read().unwrap_or_else(|poisoned| poisoned.into_inner());
                AuditReport {
                    check: service.check(),
                    clients: clients.iter().map(|&client| (client, remembered(client))).collect(),
                    answer: query.map(|query| service.query(query).map_err(|error| error.to_string())),
                }
            }
        }
    }

    /// A donor's state between two entries (the executor's thread calls it, so no batch runs):
    /// the region's pages written since the pre-copy's last round (the whole image if its
    /// writes are not tracked), or the service's snapshot.
    pub(super) fn copy_rest(&self) -> Result<Copied, String> {
        match self {
            Machine::InRegion { mirror, .. } => {
                let mut payloads = Vec::new();
                let mut keep = |runs: RunsBuilder| {
                    payloads.extend(runs.into_payloads());
                    Ok::<(), std::convert::Infallible>(())
                };
                let Ok(pages) = match mirror.is_transparent() {
                    true => mirror.copy_image(TRANSFER_BATCH_PAGES, &mut keep),
                    false => mirror.precopy_round(false, TRANSFER_BATCH_PAGES, &mut keep),
                };
                Ok(Copied::Pages { payloads, pages })
            }
            Machine::OnThreads { service, workers, .. } => {
                let _between_batches = workers.read().unwrap_or_else(|poisoned| poisoned.into_inner());
                service.snapshot().map(Copied::Snapshot)
            }
        }
    }

    /// Replaces a multithreaded service's state by a donor's snapshot (the executor's thread
    /// calls it, so no batch runs). A region's pages were installed as they came.
    pub(super) fn restore(&self, snapshot: Option<&[u8]>) -> Result<(), String> {
        match (self, snapshot) {
            (Machine::OnThreads { service, workers, .. }, Some(snapshot)) => {
                // Held to write: no query reads a state half restored.
                let _alone = workers.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                service.restore(snapshot)
            }
            (Machine::OnThreads { .. }, None) => Err("the donor sent no snapshot of the service's state".into()),
            (Machine::InRegion { .. }, None) => Ok(()),
            (Machine::InRegion { .. }, Some(_)) => {
                Err("the donor sent a snapshot for a service kept in a region".into())
            }
        }
    }
}

/// Tries at most this many bits of a snapshot before a flip gives up: a bit of the encoding's
/// framing (a length, a variant) makes a snapshot the service refuses, which no memory fault
/// makes.
const FLIP_TRIES: u64 = 64;

impl Machine {
    /// Fault injection (test clusters only): flips one random bit of a multithreaded service's
    /// state behind its scheduler, as a fault of its memory would: through its snapshot, a bit
    /// the service still takes back. The executor's thread calls it, so no batch runs. The bit
    /// flipped, or why none was.
    pub(super) fn flip_state(&self) -> Result<u64, String> {
        use rand::{Rng, SeedableRng};
        let Machine::OnThreads { service, workers, .. } = self else {
            return Err("the service keeps its state in a region: flip its memory instead".into());
        };
        let _alone = workers.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let snapshot = service.snapshot()?;
        let bits = snapshot.len() as u64 * 8;
        if bits == 0 {
            return Err("the service's state is empty".into());
        }
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(u64::from_le_bytes(seed));
        for _ in 0..FLIP_TRIES {
            let bit = rng.random_range(0..bits);
            let mut flipped = snapshot.clone();
            flipped[(bit / 8) as usize] ^= 1 << (bit % 8);
            if service.restore(&flipped).is_ok() {
                return Ok(bit);
            }
        }
        service.restore(&snapshot)?;
        Err(format!("none of {FLIP_TRIES} bits tried gave a state the service takes"))
    }
}

/// What a replica remembers of a client, as an audit reports it: the last request applied
/// (a refused one was not), how many were applied, and the last one's reply.
pub(super) fn client_memory(remembered: &nonstop_active::calls::Remembered) -> ClientMemory {
    let (number, _) = remembered.request;
    match &remembered.outcome {
        Ok(reply) => ClientMemory { request: number, applied: remembered.applied, reply: Some(reply.clone()) },
        Err(_) => ClientMemory { request: number.saturating_sub(1), applied: remembered.applied, reply: None },
    }
}
