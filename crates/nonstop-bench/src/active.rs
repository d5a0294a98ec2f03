//! `nonstop bench active`: the replication survey's synthetic server, unreplicated and actively
//! replicated under each deterministic scheduler, side by side in one run.
//!
//! The server (Basile, Kalbarczyk and Iyer, DSN 2003 and SRDS 2002, as the survey describes it):
//! worker threads serve closed-loop clients; each request is a sequence of sections, each a
//! mutex on shared data with some computing inside, then simulated I/O outside it. Replicated,
//! the clients' requests are put in one order by a sequencer, every replica executes all of
//! them, and each client votes on its replies by majority.
//!
//! What this measures and what it does not: the replicas run in this process and the order is
//! made here, so the figures are the schedulers' cost and the voting's, not a network's; and the
//! replicas share this machine's cores, where the survey gave each its own machine, so every
//! microsecond of computing a request does costs three here. Every reply is voted on; any
//! disagreement, and any difference between the replicas' final states, is reported.
//!
//! PDS and NPDS replicas take the order in batches, each run to its end
//! ([`Executor`]); LSA replicas take it as it comes ([`Stream`]), since a follower needs only
//! its leader's order of acquisitions.
//!
//! Errors can be injected as the survey injects them, per scheduler: a bit flipped in one
//! replica's shared data, or in one of its replies, halfway through each run; the voters'
//! findings are counted as injected, activated, detected, manifested and catastrophic errors
//! ([`nonstop_testbed::chaos::inject`] defines them).

use hdrhistogram::Histogram;
use nonstop_active::execute::{Executor, Handler};
use nonstop_active::schedule::{Algorithm, Role, ScheduleError, ThreadId};
use nonstop_active::stream::{Grant, Leading, Stream};
use nonstop_active::sync::Worker;
use nonstop_client::vote::{ReplicaId, ReplyMode, Verdict, Vote};
use nonstop_net::{Primary, PrimaryConfig};
use nonstop_proto::primary::Ticket;
use nonstop_proto::{CheckpointId, CommitPolicy, PAGE_SIZE, Term, UpdateProtocol};
use nonstop_region::{DEFAULT_REGION_BASE, Mirror, Region};
use nonstop_service::ThreadedService;
use nonstop_service::threaded::HandleError;
use nonstop_testbed::chaos::inject::InjectionCounts;
use nonstop_testbed::local::{KeyFile, LocalBackup};
use nonstop_workloads::survey::{Shape, SurveyServer, SurveySettings, mix};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

/// The synthetic server's shape and the run's length.
#[derive(Clone, Debug, Serialize)]
pub struct ActiveBenchConfig {
    /// Worker threads per replica (the survey: 10).
    pub workers: u16,
    /// Closed-loop clients (the survey: 15).
    pub clients: usize,
    /// Replicas of each replicated run (2f+1).
    pub replicas: u16,
    /// Mutex sections per request.
    pub sections: u32,
    /// Mutexes over the shared data.
    pub mutexes: u32,
    /// Computing inside each section, in microseconds.
    pub compute_us: u64,
    /// Simulated I/O after each section, outside the mutex, in microseconds.
    pub io_us: u64,
    /// Each configuration's measured time per round.
    pub duration: Duration,
    /// Rounds, each running every configuration once; the median round is reported.
    pub rounds: usize,
    /// A fault injected into one replica halfway through each actively replicated run (not
    /// the passive one: a passive primary's fault is a failover, which `nonstop chaos kill`
    /// measures).
    pub fault: Option<ReplicaFault>,
    /// Which replica the fault strikes.
    pub victim: Victim,
}

/// Which replica a fault strikes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Victim {
    /// The last replica: a follower under LSA (under the other schedulers every replica is
    /// alike).
    #[default]
    Follower,
    /// The first replica: LSA's leader, whose death the next replica takes over from (it leads
    /// from the last grant the dead leader shipped; the third follows it).
    Leader,
}

pub use nonstop_testbed::chaos::ReplicaFault;

/// When and how the faulty replica fails.
struct FaultPlan {
    fault: ReplicaFault,
    at: Instant,
    /// Where a flip in memory lands: a draw of the round's, the same for every scheduler.
    draw: u64,
}

/// Which replica a runner is, and the fault planned for it.
struct Seat {
    replica: ReplicaId,
    fault: Option<FaultPlan>,
}

/// What the faulty replica does next.
#[derive(PartialEq, Eq)]
enum Fate {
    /// Goes on.
    Live,
    /// Stops for good.
    Killed,
    /// Goes on, its next reply made wrong (a bit flipped).
    WrongReply,
}

/// Injects `plan`'s fault into `server` once its time has come: a kill is for good, a pause
/// sleeps once, a flip in memory changes one bit of its shared data once, a wrong outcome
/// flips a bit of its next reply.
fn fate(plan: &mut Option<FaultPlan>, server: &SyntheticServer) -> Fate {
    let Some(FaultPlan { fault, at, draw }) = *plan else { return Fate::Live };
    if Instant::now() < at {
        return Fate::Live;
    }
    match fault {
        ReplicaFault::Kill => return Fate::Killed,
        ReplicaFault::Pause { ms } => std::thread::sleep(Duration::from_millis(ms)),
        ReplicaFault::FlipMemory => server.flip_bit(draw),
        ReplicaFault::WrongOutcome => {
            *plan = None;
            return Fate::WrongReply;
        }
        ReplicaFault::Partition { .. } | ReplicaFault::Bitflip => {}
    }
    *plan = None;
    Fate::Live
}

/// Flips a bit of `reply` (a wrong outcome).
fn make_wrong(reply: &mut Vec<u8>) {
    match reply.first_mut() {
        Some(byte) => *byte ^= 1,
        None => reply.push(1),
    }
}

impl ActiveBenchConfig {
    /// The server's shape, as a node's `survey` service is configured.
    fn settings(&self) -> SurveySettings {
        SurveySettings {
            sections: self.sections,
            mutexes: self.mutexes,
            compute_us: self.compute_us,
            io_us: self.io_us,
        }
    }
}

impl Default for ActiveBenchConfig {
    fn default() -> Self {
        let server = SurveySettings::default();
        ActiveBenchConfig {
            workers: 10,
            clients: 15,
            replicas: 3,
            sections: server.sections,
            mutexes: server.mutexes,
            compute_us: server.compute_us,
            io_us: server.io_us,
            duration: Duration::from_secs(1),
            rounds: 3,
            fault: None,
            victim: Victim::Follower,
        }
    }
}

/// One configuration's figures (its median round).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunFigures {
    /// Answered requests per second.
    pub per_s: f64,
    /// Median request latency, as a client saw it.
    pub p50_ms: f64,
    /// 99th percentile request latency.
    pub p99_ms: f64,
    /// The longest time during which no client got an answer: with `majority` and one replica
    /// killed or paused, no longer than without a fault (the fault is masked, not failed over).
    pub longest_gap_ms: f64,
    /// Requests answered.
    pub answered: u64,
    /// With a fault: requests answered from the moment it was injected on.
    pub answered_after_fault: Option<u64>,
    /// Replies that lost their vote (0 if every replica is deterministic).
    pub dissenting: u64,
    /// Requests no reply won (0 if every replica is deterministic).
    pub undecided: u64,
    /// Whether every replica ended with the same shared data (always for unreplicated); with
    /// a bit flipped in the faulty replica's memory, every other replica.
    pub states_equal: bool,
    /// Of the dissenting replies, the faulty replica's (a fault injected: the last replica).
    pub faulty_dissenting: u64,
    /// With an error injected (a flipped bit in memory or a reply): what became of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injection: Option<InjectionCounts>,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct ActiveBenchReport {
    /// What ran.
    pub config: ActiveBenchConfig,
    /// Unreplicated: the same server, its threads unscheduled.
    pub unreplicated_per_s: f64,
    /// Replicated, non-preemptive deterministic scheduling.
    pub npds_per_s: f64,
    /// Replicated, PDS with one acquisition per thread per round.
    pub pds1_per_s: f64,
    /// Replicated, PDS with two.
    pub pds2_per_s: f64,
    /// Replicated, loose synchronization (the leader's order shipped).
    pub lsa_per_s: f64,
    /// PDS-2 over NPDS (the survey: about 2).
    pub pds2_vs_npds: f64,
    /// LSA over NPDS (the survey: about 5).
    pub lsa_vs_npds: f64,
    /// The best actively replicated configuration over unreplicated.
    pub best_vs_unreplicated: f64,
    /// The same server passively replicated (one backup), if measured.
    pub passive_per_s: Option<f64>,
    /// Passive over unreplicated, if measured.
    pub passive_vs_unreplicated: Option<f64>,
    /// Every configuration's figures, by name.
    pub runs: Vec<(String, RunFigures)>,
    /// Each round's requests per second, by configuration.
    pub rounds_per_s: Vec<(String, Vec<f64>)>,
    /// With an error injected: per actively replicated configuration, the injections of every
    /// round added up.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error_injection: Vec<(String, InjectionCounts)>,
}

impl ActiveBenchReport {
    /// Each configuration's requests per second (its median round) as a bar chart (SVG), in
    /// the order the rounds run them.
    pub fn svg(&self) -> String {
        let categories: Vec<String> = self.runs.iter().map(|(name, _)| name.clone()).collect();
        let series = [nonstop_testbed::chart::Series {
            name: "requests/s (thousands)".into(),
            values: self.runs.iter().map(|(_, run)| Some(run.per_s / 1000.0)).collect(),
        }];
        let title =
            format!("The survey's server: unreplicated, {} replicas voting, or one backup", self.config.replicas);
        nonstop_testbed::chart::grouped_bars(&title, "requests/s (thousands)", &categories, &series, 1.0)
    }
}

/// How the server runs in one configuration.
#[derive(Clone, Copy)]
enum Replication {
    /// Alone, its threads unscheduled.
    None,
    /// Actively, 2f+1 replicas under this scheduler (replica 0 leads under LSA).
    Active(Algorithm),
    /// Passively: one primary, one backup, checkpoints and output commit.
    Passive,
}

/// The configurations, in the order every round runs them.
const CONFIGURATIONS: [(&str, Replication); 6] = [
    ("unreplicated", Replication::None),
    ("npds", Replication::Active(Algorithm::Npds)),
    ("pds1", Replication::Active(Algorithm::Pds1)),
    ("pds2", Replication::Active(Algorithm::Pds2)),
    ("lsa", Replication::Active(Algorithm::Lsa(Role::Leader))),
    ("passive", Replication::Passive),
];

/// Runs every configuration `config.rounds` times, alternating, and reports the medians.
/// `backup_exe` is the `nonstop` binary that runs the passive configuration's backup (`None`:
/// the passive configuration is left out). `progress` hears what runs now.
pub fn run(
    config: &ActiveBenchConfig,
    backup_exe: Option<&Path>,
    progress: &dyn Fn(&str),
) -> Result<ActiveBenchReport, String> {
    if config.workers == 0 || config.clients == 0 || config.sections == 0 || config.mutexes == 0 || config.rounds == 0 {
        return Err("--workers, --clients, --sections, --mutexes and --rounds must be at least 1".into());
    }
    if config.replicas == 0 || config.replicas.is_multiple_of(2) {
        return Err(format!("--replicas {} cannot vote by majority: use an odd number (2f+1)", config.replicas));
    }
    if matches!(config.fault, Some(ReplicaFault::Partition { .. } | ReplicaFault::Bitflip)) {
        return Err("bench active injects kill, pause, wrong-outcome or flip-memory; partitions need hosts of their \
                    own: nonstop chaos --netns partition --replication active"
            .into());
    }
    let configurations: Vec<(&str, Replication)> = CONFIGURATIONS
        .iter()
        .copied()
        .filter(|(_, replication)| backup_exe.is_some() || !matches!(replication, Replication::Passive))
        .collect();
    let mut rounds: Vec<Vec<RunFigures>> = vec![Vec::new(); configurations.len()];
    for round in 0..config.rounds {
        for (index, (name, replication)) in configurations.iter().enumerate() {
            progress(&format!("round {}/{}: {name}", round + 1, config.rounds));
            let figures = match (replication, backup_exe) {
                (Replication::None, _) => run_unreplicated(config),
                (Replication::Active(algorithm), _) => run_replicated(config, *algorithm, round as u64)?,
                (Replication::Passive, Some(exe)) => run_passive(config, exe)?,
                (Replication::Passive, None) => continue,
            };
            rounds[index].push(figures);
        }
    }
    let runs: Vec<(String, RunFigures)> =
        configurations.iter().zip(&rounds).map(|((name, _), figures)| (name.to_string(), median(figures))).collect();
    let per_s = |name: &str| runs.iter().find(|(n, _)| n == name).map(|(_, f)| f.per_s);
    let active = |name: &str| per_s(name).unwrap_or(0.0);
    let best = ["npds", "pds1", "pds2", "lsa"].iter().map(|name| active(name)).fold(0.0, f64::max);
    Ok(ActiveBenchReport {
        config: config.clone(),
        unreplicated_per_s: active("unreplicated"),
        npds_per_s: active("npds"),
        pds1_per_s: active("pds1"),
        pds2_per_s: active("pds2"),
        lsa_per_s: active("lsa"),
        pds2_vs_npds: active("pds2") / active("npds"),
        lsa_vs_npds: active("lsa") / active("npds"),
        best_vs_unreplicated: best / active("unreplicated"),
        passive_per_s: per_s("passive"),
        passive_vs_unreplicated: per_s("passive").map(|passive| passive / active("unreplicated")),
        rounds_per_s: configurations
            .iter()
            .zip(&rounds)
            .map(|((name, _), figures)| (name.to_string(), figures.iter().map(|f| f.per_s).collect()))
            .collect(),
        error_injection: configurations
            .iter()
            .zip(&rounds)
            .filter(|(_, figures)| figures.iter().any(|f| f.injection.is_some()))
            .map(|((name, _), figures)| (name.to_string(), figures.iter().filter_map(|f| f.injection).sum()))
            .collect(),
        runs,
    })
}

/// The round with the median throughput.
fn median(figures: &[RunFigures]) -> RunFigures {
    let mut sorted = figures.to_vec();
    sorted.sort_by(|a, b| a.per_s.total_cmp(&b.per_s));
    sorted[sorted.len() / 2].clone()
}

/// The survey's server ([`SurveyServer`], kind `survey` on nodes), its requests and replies as
/// the bench's 8 little-endian bytes.
struct SyntheticServer(SurveyServer);

impl SyntheticServer {
    fn new(config: &ActiveBenchConfig) -> Arc<SyntheticServer> {
        Arc::new(SyntheticServer(SurveyServer::new(&config.settings())))
    }

    fn state(&self) -> Vec<u64> {
        self.0.values()
    }

    fn flip_bit(&self, draw: u64) {
        self.0.flip_bit(draw)
    }
}

impl Handler for SyntheticServer {
    fn handle(&self, worker: &Worker, request: &[u8]) -> Result<Vec<u8>, ScheduleError> {
        match self.0.handle(worker, &seed(request)) {
            Ok(seen) => Ok(seen.to_le_bytes().to_vec()),
            Err(HandleError::Stopped(stopped)) => Err(stopped),
            Err(HandleError::Refused(reason)) => unreachable!("the survey's server refuses nothing: {reason}"),
        }
    }
}

/// A request's seed: the bench's requests are its 8 bytes.
fn seed(request: &[u8]) -> u64 {
    u64::from_le_bytes(request.try_into().expect("the bench's requests are 8 bytes"))
}

/// A client's request: who sent it, its number, and its bytes.
struct Request {
    client: usize,
    number: u64,
    body: Vec<u8>,
}

/// Each client's channel for its answers: the senders, then the receivers.
type AnswerChannels = (Vec<Sender<Vec<u8>>>, Vec<Receiver<Vec<u8>>>);

fn answer_channels(clients: usize) -> AnswerChannels {
    (0..clients).map(|_| channel()).unzip()
}

/// What the clients measured.
struct Load {
    answered: u64,
    latency: Histogram<u64>,
    elapsed: Duration,
    /// The longest time no client got an answer.
    longest_gap: Duration,
    /// With a fault: answers from its injection on.
    after_fault: Option<u64>,
}

/// Runs `clients` closed-loop clients for `duration`, each sending through `send` and waiting
/// on its own receiver for the answer; counts the answers from `fault_at` on, if given.
fn drive_clients(
    config: &ActiveBenchConfig,
    send: Sender<Request>,
    answers: Vec<Receiver<Vec<u8>>>,
    stop: &AtomicBool,
    fault_at: Option<Duration>,
) -> Load {
    let start = Instant::now();
    let loads: Vec<(Histogram<u64>, Vec<Duration>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = answers
            .into_iter()
            .enumerate()
            .map(|(client, answers)| {
                let send = send.clone();
                scope.spawn(move || {
                    let (mut latency, mut answered_at) = (latency_histogram(), Vec::new());
                    let mut number = 0u64;
                    while !stop.load(Ordering::Relaxed) && start.elapsed() < config.duration {
                        number += 1;
                        let body = mix((client as u64) << 40 ^ number).to_le_bytes().to_vec();
                        let sent = Instant::now();
                        if send.send(Request { client, number, body }).is_err() || answers.recv().is_err() {
                            break;
                        }
                        latency.saturating_record(sent.elapsed().as_micros() as u64);
                        answered_at.push(start.elapsed());
                    }
                    (latency, answered_at)
                })
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().expect("a client thread")).collect()
    });
    let elapsed = start.elapsed();
    let mut latency = latency_histogram();
    let mut answered_at = Vec::new();
    for (histogram, times) in loads {
        latency.add(&histogram).expect("histograms of one shape");
        answered_at.extend(times);
    }
    answered_at.sort();
    // From the start to the first answer counts too: a run that stalls at once has a gap.
    let longest_gap = std::iter::once(Duration::ZERO)
        .chain(answered_at.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or(elapsed);
    let after_fault = fault_at.map(|fault_at| answered_at.iter().filter(|&&at| at >= fault_at).count() as u64);
    Load { answered: answered_at.len() as u64, latency, elapsed, longest_gap, after_fault }
}

/// Microseconds from 1 us to a minute, 3 significant figures (a histogram made with `new`
/// tracks up to 2 until it resizes, and a saturating record does not resize it).
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn figures(load: &Load, dissenting: u64, undecided: u64, states_equal: bool) -> RunFigures {
    RunFigures {
        faulty_dissenting: 0,
        injection: None,
        per_s: load.answered as f64 / load.elapsed.as_secs_f64(),
        p50_ms: load.latency.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: load.latency.value_at_quantile(0.99) as f64 / 1000.0,
        longest_gap_ms: load.longest_gap.as_secs_f64() * 1000.0,
        answered: load.answered,
        answered_after_fault: load.after_fault,
        dissenting,
        undecided,
        states_equal,
    }
}

/// The server alone: its worker threads take requests from one queue as they come free.
fn run_unreplicated(config: &ActiveBenchConfig) -> RunFigures {
    let server = SyntheticServer::new(config);
    let (send, requests) = channel::<Request>();
    let requests = std::sync::Mutex::new(requests);
    let (answer_to, answers) = answer_channels(config.clients);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for index in 0..config.workers {
            let (server, requests, answer_to) = (&server, &requests, &answer_to);
            scope.spawn(move || {
                let worker = Worker::unscheduled(ThreadId(index));
                loop {
                    let next = requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).recv();
                    let Ok(request) = next else { return };
                    // Unscheduled locks never stop.
                    let reply = server.handle(&worker, &request.body).unwrap_or_default();
                    let _ = answer_to[request.client].send(reply);
                }
            });
        }
        let load = drive_clients(config, send, answers, &stop, None);
        figures(&load, 0, 0, true)
    })
}

/// A batch of the order: the number of its first request in the whole order, and the
/// requests' bytes.
struct Ordered {
    first: u64,
    bodies: Arc<Vec<Vec<u8>>>,
}

/// What the voters hear.
enum Heard {
    /// The order's requests from `first` on were asked by these clients (sent before the
    /// replicas get them, so heard before any reply to them).
    Asked { first: u64, askers: Vec<(usize, u64)> },
    /// `replica`'s reply to request `number` of the order.
    Replied { replica: ReplicaId, number: u64, reply: Result<Vec<u8>, String> },
}

/// How the replicas take the order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Feeding {
    /// Batch by batch, each run to its end ([`Executor`]): the next batch is closed once a
    /// majority finished the last, so that what arrives meanwhile runs together.
    Batches,
    /// As it comes, to long-lived threads ([`Stream`], LSA only).
    Streamed,
}

/// The server replicated `config.replicas` times under `algorithm` (replica 0 leads under LSA,
/// which streams), with a sequencer, and a voter per request on the clients' side; `round`
/// picks where an injected flip lands.
fn run_replicated(config: &ActiveBenchConfig, algorithm: Algorithm, round: u64) -> Result<RunFigures, String> {
    let lsa = matches!(algorithm, Algorithm::Lsa(_));
    let faulty = match config.victim {
        Victim::Follower => usize::from(config.replicas) - 1,
        Victim::Leader => 0,
    };
    let feeding = if lsa { Feeding::Streamed } else { Feeding::Batches };
    let replicas = config.replicas;
    let servers: Vec<Arc<SyntheticServer>> = (0..replicas).map(|_| SyntheticServer::new(config)).collect();
    let (send, requests) = channel::<Request>();
    let (answer_to, answers) = answer_channels(config.clients);
    let (to_replicas, batches): (Vec<Sender<Ordered>>, Vec<Receiver<Ordered>>) =
        (0..replicas).map(|_| channel()).unzip();
    let (heard_to, heard) = channel::<Heard>();
    let (ready_to, ready) = channel::<usize>();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let outcome = std::thread::scope(|scope| {
        let sequencer_heard = heard_to.clone();
        scope.spawn(move || sequence(requests, &to_replicas, &sequencer_heard, feeding, &ready, replicas));
        // LSA: the leader's acquisitions go to each follower as they happen.
        let (to_followers, from_leader): (Vec<_>, Vec<_>) =
            (1..replicas).filter(|_| lsa).map(|_| channel::<Grant>()).unzip();
        // Whose order each follower takes: the leader's, and after its death (the leader
        // victim) the successor's, which the dying leader names (the harness stands in for
        // the control plane).
        let (leadings, following): (Vec<_>, Vec<_>) = from_leader
            .into_iter()
            .map(|grants| {
                let (leading, following) = channel();
                let _ = leading.send(Leading::Follow(grants));
                (leading, following)
            })
            .unzip();
        let (mut to_followers, mut leadings, mut following) =
            (Some(to_followers), Some(leadings), following.into_iter());
        let mut executors = Vec::new();
        for (index, batches) in batches.into_iter().enumerate() {
            let (server, heard_to, ready_to) = (servers[index].clone(), heard_to.clone(), ready_to.clone());
            let replica = ReplicaId(index as u16);
            let role = match (lsa, index) {
                (true, 0) => StreamRole::Leader {
                    followers: to_followers.take().unwrap_or_default(),
                    successors: leadings.take().unwrap_or_default(),
                },
                (true, _) => StreamRole::Follower(following.next().expect("a channel per follower")),
                (false, _) => StreamRole::Leader { followers: Vec::new(), successors: Vec::new() },
            };
            let fault = config.fault.filter(|_| index == faulty).map(|fault| FaultPlan {
                fault,
                at: started + config.duration / 2,
                draw: mix(0xB17F_11B5 ^ round),
            });
            let seat = Seat { replica, fault };
            executors.push(scope.spawn(move || match feeding {
                Feeding::Batches => run_batches(config, algorithm, server, batches, &heard_to, &ready_to, seat),
                Feeding::Streamed => run_streamed(config, server, batches, heard_to, role, seat),
            }));
        }
        drop((heard_to, ready_to));
        let voter = scope.spawn(move || vote(heard, &answer_to, replicas));
        let load = drive_clients(config, send, answers, &stop, config.fault.map(|_| config.duration / 2));
        stop.store(true, Ordering::Relaxed);
        for executor in executors {
            executor.join().map_err(|_| "a replica's thread panicked".to_string())??;
        }
        let tally = voter.join().map_err(|_| "the voter panicked".to_string())??;
        Ok::<_, String>((load, tally))
    });
    let (load, tally) = outcome?;
    // A killed replica stopped where it was, and one given a flipped bit holds it; every other
    // one must have ended alike.
    let struck = matches!(config.fault, Some(ReplicaFault::Kill | ReplicaFault::FlipMemory));
    let states: Vec<Vec<u64>> = (servers.iter().enumerate())
        .filter(|(index, _)| !struck || *index != faulty)
        .map(|(_, server)| server.state())
        .collect();
    let states_equal = states.iter().all(|state| state == &states[0]);
    let dissenting = tally.dissents.iter().sum();
    let faulty_dissenting = config.fault.map_or(0, |_| tally.dissents[faulty]);
    let injection = match config.fault {
        Some(ReplicaFault::FlipMemory | ReplicaFault::WrongOutcome) => {
            // A good replica outvoted means a wrong answer decided.
            let wrong_decided = dissenting - faulty_dissenting;
            let detected = u64::from(faulty_dissenting > 0);
            let manifested = u64::from(wrong_decided > 0 || tally.undecided > 0);
            let catastrophic = u64::from(wrong_decided > 0 || !states_equal);
            Some(InjectionCounts {
                injected: 1,
                activated: detected.max(manifested),
                detected,
                manifested,
                catastrophic,
            })
        }
        _ => None,
    };
    Ok(RunFigures { faulty_dissenting, injection, ..figures(&load, dissenting, tally.undecided, states_equal) })
}

/// The sequencer: each batch of whatever is waiting goes to every replica, in one order. Fed in
/// batches, it closes the next batch only once a majority finished the last.
fn sequence(
    requests: Receiver<Request>,
    to_replicas: &[Sender<Ordered>],
    heard: &Sender<Heard>,
    feeding: Feeding,
    ready: &Receiver<usize>,
    replicas: u16,
) {
    let quorum = usize::from(replicas) / 2 + 1;
    let (mut closed, mut finished, mut next) = (0u64, vec![0u64; usize::from(replicas)], 0u64);
    while let Ok(first) = requests.recv() {
        while feeding == Feeding::Batches && finished.iter().filter(|&&done| done >= closed).count() < quorum {
            let Ok(replica) = ready.recv() else { return };
            finished[replica] += 1;
        }
        let mut waiting = vec![first];
        waiting.extend(requests.try_iter());
        closed += 1;
        let askers = waiting.iter().map(|r| (r.client, r.number)).collect::<Vec<_>>();
        let count = askers.len() as u64;
        if heard.send(Heard::Asked { first: next, askers }).is_err() {
            return;
        }
        let bodies = Arc::new(waiting.into_iter().map(|r| r.body).collect::<Vec<_>>());
        for replica in to_replicas {
            let _ = replica.send(Ordered { first: next, bodies: bodies.clone() });
        }
        next += count;
    }
}

/// One replica fed batch by batch.
fn run_batches(
    config: &ActiveBenchConfig,
    role: Algorithm,
    server: Arc<SyntheticServer>,
    batches: Receiver<Ordered>,
    heard: &Sender<Heard>,
    ready: &Sender<usize>,
    seat: Seat,
) -> Result<(), String> {
    let Seat { replica, mut fault } = seat;
    let executor = Executor::new(role, config.workers, server.clone()).map_err(|e| e.to_string())?;
    for batch in batches {
        let fate = fate(&mut fault, &server);
        if fate == Fate::Killed {
            return Ok(());
        }
        let mut replies = executor.execute(batch.bodies).map_err(|e| e.to_string())?;
        if let (Fate::WrongReply, Some(reply)) = (fate, replies.first_mut()) {
            make_wrong(reply);
        }
        for (number, reply) in (batch.first..).zip(replies) {
            if heard.send(Heard::Replied { replica, number, reply: Ok(reply) }).is_err() {
                return Ok(());
            }
        }
        // The sequencer is gone once the clients are: the batches already ordered still run.
        let _ = ready.send(usize::from(replica.0));
    }
    Ok(())
}

/// An LSA replica's part.
enum StreamRole {
    /// The leader: its acquisitions go to `followers`; if it dies, the first of `successors`
    /// leads from there and the others follow that one.
    Leader { followers: Vec<Sender<Grant>>, successors: Vec<Sender<Leading>> },
    /// A follower, of the leaders this names in turn.
    Follower(Receiver<Leading>),
}

/// The dead leader's successors: the first leads the others from the last grant it shipped.
fn fail_over(successors: &[Sender<Leading>]) {
    let Some((first, rest)) = successors.split_first() else { return };
    let (to_rest, from_first): (Vec<_>, Vec<_>) = rest.iter().map(|_| channel::<Grant>()).unzip();
    let _ = first.send(Leading::Lead(to_rest));
    for (follower, grants) in rest.iter().zip(from_first) {
        let _ = follower.send(Leading::Follow(grants));
    }
}

/// One LSA replica fed as the order comes, as `role` says.
fn run_streamed(
    config: &ActiveBenchConfig,
    server: Arc<SyntheticServer>,
    batches: Receiver<Ordered>,
    heard: Sender<Heard>,
    role: StreamRole,
    seat: Seat,
) -> Result<(), String> {
    let Seat { replica, mut fault } = seat;
    let (replies_to, replies) = channel();
    let (killed, wrong_next) = (AtomicBool::new(false), AtomicBool::new(false));
    let (mut stream, successors) = match role {
        StreamRole::Leader { followers, successors } => {
            (Stream::leader(config.workers, server.clone(), followers, replies_to), successors)
        }
        StreamRole::Follower(leaders) => {
            (Stream::following(config.workers, server.clone(), leaders, replies_to), Vec::new())
        }
    };
    std::thread::scope(|scope| {
        let (killed, wrong_next) = (&killed, &wrong_next);
        scope.spawn(move || {
            for (number, reply) in replies {
                if killed.load(Ordering::Relaxed) {
                    // A crashed replica answers nothing more.
                    continue;
                }
                let mut reply = reply.map_err(|e| e.to_string());
                if let Ok(reply) = &mut reply
                    && wrong_next.swap(false, Ordering::Relaxed)
                {
                    make_wrong(reply);
                }
                if heard.send(Heard::Replied { replica, number, reply }).is_err() {
                    return;
                }
            }
        });
        for batch in batches {
            match fate(&mut fault, &server) {
                Fate::Killed => {
                    // Crashed: it answers nothing more and its threads stop where they are;
                    // once its order ended, a leader's successor leads from there.
                    killed.store(true, Ordering::Relaxed);
                    stream.halt();
                    fail_over(&successors);
                    return;
                }
                Fate::WrongReply => wrong_next.store(true, Ordering::Relaxed),
                Fate::Live => {}
            }
            let bodies = Arc::try_unwrap(batch.bodies).unwrap_or_else(|shared| (*shared).clone());
            stream.submit(bodies);
        }
        // Every request given is answered before the stream's threads are joined.
        drop(stream);
    });
    Ok(())
}

/// What the voters found.
struct Tally {
    /// Replies that lost their vote, by replica.
    dissents: Vec<u64>,
    /// Votes no reply won.
    undecided: u64,
}

/// The clients' voters, one per request (here in one thread: each is independent).
fn vote(heard: Receiver<Heard>, answer_to: &[Sender<Vec<u8>>], replicas: u16) -> Result<Tally, String> {
    let (mut askers, mut votes) = (HashMap::<u64, (usize, u64)>::new(), HashMap::<u64, Vote>::new());
    let (mut dissents, mut undecided) = (vec![0u64; usize::from(replicas)], 0u64);
    let mut count = |vote: &Vote| {
        for dissenter in vote.dissenters() {
            dissents[usize::from(dissenter.0)] += 1;
        }
    };
    for heard in heard {
        let (replica, number, reply) = match heard {
            Heard::Asked { first, askers: asked } => {
                askers.extend((first..).zip(asked));
                continue;
            }
            Heard::Replied { replica, number, reply } => (replica, number, reply?),
        };
        let asker = *askers.get(&number).ok_or_else(|| format!("a reply to request {number}, which nobody asked"))?;
        let vote = match votes.entry(number) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(Vote::new(ReplyMode::Majority, replicas, ReplicaId(0)).map_err(|e| e.to_string())?)
            }
        };
        let before = vote.verdict();
        let after = vote.reply(replica, reply).map_err(|e| e.to_string())?;
        match (before, after) {
            (Verdict::Waiting, Verdict::Decided) => {
                let _ = answer_to[asker.0].send(vote.decided().unwrap_or_default().to_vec());
            }
            (Verdict::Waiting, Verdict::Undecidable) => {
                undecided += 1;
                // The client hears something, so that the run goes on; counted above.
                let _ = answer_to[asker.0].send(Vec::new());
            }
            _ => {}
        }
        if vote.complete() {
            count(vote);
            votes.remove(&number);
            askers.remove(&number);
        }
    }
    // Votes a killed replica never completed.
    votes.values().for_each(&mut count);
    Ok(Tally { dissents, undecided })
}

/// How long the passive configuration waits for its backup to attach or hold a checkpoint.
const BACKUP_WAIT: Duration = Duration::from_secs(10);

/// The same server passively replicated, as a node runs a declared-mode service by default: its
/// shared values in a mirrored region (one 64-byte line each) with one backup process, a
/// checkpoint every millisecond (AU), each section a transaction under the section's mutex, and
/// each reply released once the backup holds the checkpoint of the request's last write.
fn run_passive(config: &ActiveBenchConfig, exe: &Path) -> Result<RunFigures, String> {
    let shape = Shape::of(&config.settings());
    let len = (shape.mutexes() * LINE).next_multiple_of(PAGE_SIZE);
    let key = KeyFile::generate().map_err(|e| format!("writing a temporary cluster key: {e}"))?;
    let backup = LocalBackup::spawn(exe, "127.0.0.2", DEFAULT_REGION_BASE, len, &key.path)
        .map_err(|e| format!("starting the passive configuration's backup: {e}"))?;
    let mut region = Region::map(DEFAULT_REGION_BASE, len).map_err(|e| format!("mapping the primary's region: {e}"))?;
    region.populate().map_err(|e| format!("making the primary's region resident: {e}"))?;
    let mirror = Arc::new(Mirror::new(region, Some(UpdateProtocol::Au), CheckpointId(1)));
    let policy = CommitPolicy::Epoch { interval_us: 1_000, max_commits: 0 };
    let primary = Primary::start(
        mirror.clone(),
        PrimaryConfig { term: Term(1), policy, required_backups: 1, key: key.key.clone() },
    );
    primary.attach_backup(backup.addr, BACKUP_WAIT).map_err(|e| format!("attaching the backup: {e}"))?;
    let mutexes: Vec<std::sync::Mutex<()>> = (0..shape.mutexes()).map(|_| std::sync::Mutex::new(())).collect();
    let (send, requests) = channel::<Request>();
    let requests = std::sync::Mutex::new(requests);
    let (answer_to, answers) = answer_channels(config.clients);
    let (held_to, held) = channel::<(Ticket, usize, Vec<u8>)>();
    let stop = AtomicBool::new(false);
    let load = std::thread::scope(|scope| {
        // Output commit: each reply leaves once the backup holds what it says.
        let (primary, answer_to) = (&primary, &answer_to);
        let releaser = scope.spawn(move || -> Result<(), String> {
            for (ticket, client, reply) in held {
                primary.wait_held(ticket, BACKUP_WAIT).map_err(|e| format!("waiting for the backup: {e}"))?;
                let _ = answer_to[client].send(reply);
            }
            Ok(())
        });
        for _ in 0..config.workers {
            let (shape, mirror, mutexes, requests, held_to) = (&shape, &mirror, &mutexes, &requests, held_to.clone());
            scope.spawn(move || {
                loop {
                    let next = requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).recv();
                    let Ok(request) = next else { return };
                    let mut ticket = None;
                    let served = shape.serve(seed(&request.body), |mutex, fold| {
                        let _section = mutexes[mutex].lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                        ticket = Some(fold_in_region(mirror, (mutex * LINE) as u64, fold));
                        Ok::<_, std::convert::Infallible>(())
                    });
                    let Ok(seen) = served;
                    let reply = seen.to_le_bytes().to_vec();
                    let ticket = ticket.expect("a request has a section at least");
                    if held_to.send((ticket, request.client, reply)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(held_to);
        let load = drive_clients(config, send, answers, &stop, None);
        releaser.join().map_err(|_| "the releaser panicked".to_string())??;
        Ok::<_, String>(load)
    })?;
    // The backup's image must be the primary's at the last checkpoint.
    let last = primary.checkpoint_now();
    primary
        .wait_held(Ticket { checkpoint: last }, BACKUP_WAIT)
        .map_err(|e| format!("waiting for the last checkpoint: {e}"))?;
    crate::verify_images(&primary, len, None).map_err(|e| format!("the passive configuration's backup: {e:#}"))?;
    primary.shutdown();
    drop(backup);
    Ok(figures(&load, 0, 0, true))
}

/// A cache line: one shared value of the passive server each.
const LINE: usize = 64;

/// Runs `fold` on the value at `offset` in one transaction and answers its ticket. The caller
/// holds the value's mutex, so the transaction meets no other writer of it.
fn fold_in_region(mirror: &Mirror, offset: u64, fold: &mut dyn FnMut(&mut u64)) -> Ticket {
    loop {
        let tx = mirror.begin();
        let attempt = (|| -> Result<(), nonstop_region::TxError> {
            let mut value = u64::from_le_bytes(tx.read::<[u8; 8]>(offset)?);
            fold(&mut value);
            *tx.write::<[u8; 8]>(offset)? = value.to_le_bytes();
            Ok(())
        })();
        match attempt {
            Ok(()) => return tx.commit(),
            // Another value's line sharing a lock stripe: try again, as services do.
            Err(nonstop_region::TxError::Conflict { .. }) => std::thread::yield_now(),
            Err(other) => panic!("the passive server's layout is wrong: {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ActiveBenchConfig {
        ActiveBenchConfig {
            workers: 3,
            clients: 4,
            sections: 3,
            mutexes: 2,
            compute_us: 5,
            io_us: 20,
            duration: Duration::from_millis(150),
            rounds: 1,
            ..ActiveBenchConfig::default()
        }
    }

    #[test]
    fn every_configuration_answers_with_agreeing_replicas() {
        let report = run(&small(), None, &|_| {}).unwrap();
        assert_eq!(report.runs.len(), 5, "no backup binary: no passive run");
        for (name, figures) in &report.runs {
            assert!(figures.answered > 0, "{name}: {figures:?}");
            assert_eq!((figures.dissenting, figures.undecided), (0, 0), "{name}: {figures:?}");
            assert!(figures.states_equal, "{name}: {figures:?}");
        }
        assert!(report.pds2_vs_npds > 0.0 && report.best_vs_unreplicated > 0.0, "{report:?}");
    }

    #[test]
    fn a_killed_or_paused_replica_is_outvoted_without_a_stall() {
        // The pause outlasts the run's second half, so that only the majority can answer then.
        for fault in [ReplicaFault::Kill, ReplicaFault::Pause { ms: 200 }] {
            let config = ActiveBenchConfig { fault: Some(fault), duration: Duration::from_millis(300), ..small() };
            for algorithm in [Algorithm::Pds2, Algorithm::Lsa(Role::Leader)] {
                let figures = run_replicated(&config, algorithm, 0).unwrap();
                assert!(figures.answered > 0, "{fault:?} {algorithm:?}: {figures:?}");
                assert_eq!((figures.dissenting, figures.undecided), (0, 0), "{fault:?} {algorithm:?}: {figures:?}");
                assert!(figures.states_equal, "{fault:?} {algorithm:?}: {figures:?}");
                // Masked: the majority went on answering once the faulty replica was gone.
                assert!(figures.answered_after_fault.is_some_and(|n| n > 0), "{fault:?} {algorithm:?}: {figures:?}");
            }
        }
    }

    #[test]
    fn a_killed_lsa_leader_is_taken_over_from_and_the_clients_go_on() {
        let config = ActiveBenchConfig {
            fault: Some(ReplicaFault::Kill),
            victim: Victim::Leader,
            duration: Duration::from_millis(300),
            ..small()
        };
        for algorithm in [Algorithm::Lsa(Role::Leader), Algorithm::Pds1] {
            let figures = run_replicated(&config, algorithm, 0).unwrap();
            let what = format!("{algorithm:?}: {figures:?}");
            assert_eq!((figures.dissenting, figures.undecided), (0, 0), "{what}");
            // The successor and the last follower ended alike.
            assert!(figures.states_equal, "{what}");
            // Without the takeover the followers' threads would have stopped at the leader's
            // death, and no vote could have been decided after it.
            assert!(figures.answered_after_fault.is_some_and(|n| n > 0), "{what}");
        }
    }

    #[test]
    fn a_flipped_bit_in_one_replicas_memory_or_reply_is_outvoted_and_counted() {
        for fault in [ReplicaFault::FlipMemory, ReplicaFault::WrongOutcome] {
            let config = ActiveBenchConfig { fault: Some(fault), duration: Duration::from_millis(300), ..small() };
            for algorithm in [Algorithm::Npds, Algorithm::Pds2, Algorithm::Lsa(Role::Leader)] {
                let figures = run_replicated(&config, algorithm, 0).unwrap();
                let what = format!("{fault:?} {algorithm:?}: {figures:?}");
                // Only the faulty replica's replies lost their votes: the others agreed, always.
                assert!(figures.faulty_dissenting > 0, "{what}");
                assert_eq!((figures.dissenting, figures.undecided), (figures.faulty_dissenting, 0), "{what}");
                assert!(figures.states_equal, "{what}");
                let expected = InjectionCounts { injected: 1, activated: 1, detected: 1, ..InjectionCounts::default() };
                assert_eq!(figures.injection, Some(expected), "{what}");
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(run(&ActiveBenchConfig { replicas: 2, ..small() }, None, &|_| {}).is_err());
        assert!(run(&ActiveBenchConfig { workers: 0, ..small() }, None, &|_| {}).is_err());
    }
}
