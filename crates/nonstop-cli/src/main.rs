//! The `nonstop` command: run a backup, benchmark replication, run the local demo.

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use nonstop::{BackupServer, ClusterKey, CommitPolicy, DEFAULT_REGION_BASE, Region, UpdateProtocol};
use nonstop_bench::active::ActiveBenchConfig;
use nonstop_bench::versus_redis::RedisBenchConfig;
use nonstop_bench::{self as bench, BenchConfig, BenchReport, WorkloadKind};
use nonstop_region::tracking::TrackingMode;
use nonstop_testbed::chaos::ReplicaFault;
use nonstop_testbed::local::{KeyFile, LISTENING, LocalBackup};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "nonstop", version, about = "Continuous availability for stateful in-memory servers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a 3-node cluster on 127.0.0.1-3 under client load, kill its primary twice, and
    /// count lost and doubled acknowledged updates.
    Demo {
        /// Client threads.
        #[arg(long, default_value_t = 8)]
        clients: u64,
    },
    /// Run one node of a cluster: its share of the control plane and its services' roles.
    Node {
        /// The node's TOML config.
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// Load a service of a cluster with the requests its kind samples until stdin closes, one
    /// line per answer on stdout (what `chaos kill --node-binary` runs in the node binary).
    Load(nonstop::node::LoadArgs),
    /// List the service kinds this binary runs and how each writes the region.
    Kinds,
    /// Show every node's role, term and lag, and the last failover.
    Status {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print the nodes' statuses as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move a service's primary role to one of its backups without losing anything.
    Switchover {
        /// The service.
        service: String,
        /// The backup node to promote.
        #[arg(long)]
        to: u64,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Run the deterministic simulations: many seeds, or one seed again (exits non-zero on a
    /// safety violation and prints the command that reproduces it).
    Sim(SimArgs),
    /// Fault tests: `chaos kill` on loopback, or `chaos --netns KIND` with hosts of their own
    /// (network namespaces; needs root).
    #[command(args_conflicts_with_subcommands = true)]
    Chaos {
        #[command(subcommand)]
        kind: Option<ChaosKind>,
        #[command(flatten)]
        netns: ChaosNetnsArgs,
    },
    /// Serve a region as a backup.
    Backup(BackupArgs),
    /// Measure replication.
    Bench {
        #[command(subcommand)]
        target: BenchTarget,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum SimKind {
    /// Replication: frames lost, duplicated, reordered, cut; backups and primaries crash, and a
    /// backup promoted after a crash rebases the other.
    Replication,
    /// Failover: three nodes with the Raft control plane; crashes, partitions, pauses.
    Failover,
    /// Active replication's total order: three replicas in a Raft group of their own, clients
    /// retrying; lost, duplicated and reordered messages, partitions, a crash.
    Order,
    /// The same under LSA: the grant leader's acquisitions ship through the order, its replies
    /// wait for their grant.
    OrderLsa,
}

#[derive(Args)]
struct SimArgs {
    /// Which simulation.
    #[arg(long, value_enum, default_value_t = SimKind::Failover)]
    kind: SimKind,
    /// Run seeds `first..first + seeds`.
    #[arg(long, default_value_t = 1000, conflicts_with = "seed")]
    seeds: u64,
    /// The first seed of a range.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Run this one seed (with --trace, print its events).
    #[arg(long)]
    seed: Option<u64>,
    /// Steps per seed (replication: events; failover and order: virtual milliseconds, before
    /// the quiet period that ends an order run).
    #[arg(long)]
    steps: Option<u64>,
    /// With --seed and a kind other than replication: print every event of the run.
    #[arg(long)]
    trace: bool,
    /// With --kind order or order-lsa: two faults at once, beyond what three replicas mask
    /// (each corrupted state comes with another replica falling behind, which may take the
    /// corrupted state). Only safety is checked: the group may stall, never answer wrongly.
    #[arg(long)]
    two_faults: bool,
}

#[derive(Subcommand)]
enum ChaosKind {
    /// SIGKILL the primary under load, trial after trial, at random moments and at fault
    /// points inside a checkpoint; report failover times and lost or doubled updates.
    Kill(Box<ChaosKillArgs>),
}

#[derive(Args)]
struct ChaosNetnsArgs {
    /// Run the cluster in network namespaces and inject this kind of fault.
    #[arg(long, value_enum)]
    netns: Option<nonstop_testbed::chaos::netns::FaultKind>,
    /// Trials.
    #[arg(long, default_value_t = 100)]
    trials: u32,
    /// Seed of the random choices (printed, so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Client threads issuing transfers.
    #[arg(long, default_value_t = 8)]
    clients: u64,
    /// Reader threads.
    #[arg(long, default_value_t = 2)]
    readers: u64,
    /// How long pauses, partitions and lossy periods last (more than timeout + lease).
    #[arg(long, default_value = "800ms", value_parser = humantime::parse_duration)]
    fault_length: Duration,
    /// Before the trials, run the load this long without faults: any failover then is false.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    quiet: Duration,
    /// Soak: instead of --trials, inject a fault every --fault-every for this long, sampling
    /// every node's memory, file descriptors and threads.
    #[arg(long, value_parser = humantime::parse_duration)]
    soak: Option<Duration>,
    /// The spacing of faults in a soak.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    fault_every: Duration,
    /// Where a soak draws every node's resident memory over time (SVG).
    #[arg(long, default_value = "target/chaos/soak-rss.svg")]
    soak_chart: std::path::PathBuf,
    /// `active`: three replicas execute every request and clients vote on their replies; one
    /// replica per trial is killed, paused or cut off for --fault-length, or given a flipped
    /// bit in its memory or one of its outputs (`bitflip`), each trial on a cluster of its own.
    #[arg(long, value_enum, default_value = "passive")]
    replication: Replication,
    /// With `--replication active`: how clients decide on the replicas' replies (`majority`,
    /// the default, `leader-only` or `pass-first`).
    #[arg(long, value_parser = parse_replies)]
    replies: Option<nonstop_proto::client::ReplyMode>,
    #[command(flatten)]
    service: ServiceArgs,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// The service a fault test runs, and the binary that runs it.
#[derive(Args)]
struct ServiceArgs {
    /// Run the cluster of this node binary (one built on `nonstop::node::main`, e.g.
    /// target/release/examples/orderbook) with --kind one of its kinds, loaded with the requests
    /// that kind samples; lost and doubled requests are judged from the platform's client
    /// table and the service's own check. Without it, `nonstop node` runs the bank under its
    /// own clients and history checker.
    #[arg(long, value_name = "PATH")]
    node_binary: Option<std::path::PathBuf>,
    /// What the service runs: `bank` (Debit-Credit at fixed offsets), `ledger` (the same
    /// requests over ordinary Rust collections in the region), `order-entry` (TPC-C's five
    /// transactions, loaded with its sampled mix), or a kind of --node-binary.
    #[arg(long, default_value = nonstop_workloads::bank::NAME)]
    kind: String,
    /// A multithreaded kind (`survey`, or a kind of --node-binary that `kinds` lists as
    /// `threads`; active replication only): how each replica's worker threads are scheduled,
    /// `npds`, `pds1` or `pds2` (default: the node's, pds2).
    #[arg(long, value_parser = parse_scheduler)]
    scheduler: Option<nonstop::sync::Scheduler>,
    /// A multithreaded kind: worker threads per replica (default: the node's, 4).
    #[arg(long)]
    threads: Option<u16>,
    /// How the primary finds its writes: declared ranges, or transparent mode with the kernel
    /// finding the written pages (uffd or mprotect; DU). Default: declared, or for a kind that
    /// keeps collections (ledger, orderbook), uffd where the kernel has it, else mprotect.
    #[arg(long, value_enum)]
    tracking: Option<Tracking>,
}

/// A [`ServiceArgs`] checked: the binary, the kind, the tracking mode.
struct ServiceUnderTest {
    exe: std::path::PathBuf,
    kind: String,
    tracking: Option<TrackingMode>,
    /// A multithreaded kind's scheduler and worker threads (`None`: the kind keeps its state in
    /// a region).
    threads: Option<(nonstop::sync::Scheduler, u16)>,
    /// Who loads it: the bank's clients, its kind's samples, or Redis clients (kind kv).
    clients: nonstop_testbed::chaos::Clients,
}

impl ServiceArgs {
    fn resolve(&self) -> anyhow::Result<ServiceUnderTest> {
        if let Some(path) = self.node_binary.as_ref().filter(|path| !path.is_file()) {
            bail!("--node-binary {}: no such file; build it first (cargo build --release --examples)", path.display());
        }
        // The kinds of the binary that runs the nodes: how the kind writes decides the tracking.
        let runs = match &self.node_binary {
            Some(path) => nonstop::node::kind_runs(path, &self.kind).ok_or_else(|| {
                anyhow::anyhow!(
                    "{} does not run kind {:?}: `{} kinds` lists those it does",
                    path.display(),
                    self.kind,
                    path.display()
                )
            })?,
            None => nonstop::builtins().runs(&self.kind).ok_or_else(|| {
                let kinds: Vec<String> = nonstop::builtins().kinds().map(|kind| format!("{kind:?}")).collect();
                anyhow::anyhow!(
                    "--kind {:?}: nonstop runs {}; give --node-binary for others",
                    self.kind,
                    kinds.join(", ")
                )
            })?,
        };
        let tracking = match (self.tracking, runs) {
            (Some(_), nonstop::Runs::OnThreads) => bail!(
                "--kind {} keeps its state in its worker threads' mutexes, not in a region: drop --tracking",
                self.kind
            ),
            (Some(Tracking::Declared), nonstop::Runs::InRegion(nonstop::Writes::Collections)) => bail!(
                "--kind {} keeps plain collections whose writes the kernel finds: give --tracking uffd or mprotect",
                self.kind
            ),
            (Some(tracking), _) => tracking.mode(),
            (None, nonstop::Runs::InRegion(nonstop::Writes::AtOffsets) | nonstop::Runs::OnThreads) => None,
            (None, nonstop::Runs::InRegion(nonstop::Writes::Collections)) => {
                Some(match nonstop::tracking::probe(TrackingMode::Uffd) {
                    Ok(()) => TrackingMode::Uffd,
                    Err(_) => TrackingMode::Mprotect,
                })
            }
        };
        let threads = match runs {
            nonstop::Runs::OnThreads => Some((
                self.scheduler.unwrap_or(nonstop_node::config::DEFAULT_SCHEDULER),
                self.threads.unwrap_or(nonstop_node::config::DEFAULT_THREADS),
            )),
            nonstop::Runs::InRegion(_) if self.scheduler.is_some() || self.threads.is_some() => bail!(
                "--scheduler and --threads are for a multithreaded kind; --kind {} runs one request at a time",
                self.kind
            ),
            nonstop::Runs::InRegion(_) => None,
        };
        Ok(ServiceUnderTest {
            threads,
            exe: match &self.node_binary {
                Some(path) => path.clone(),
                None => std::env::current_exe()?,
            },
            kind: self.kind.clone(),
            tracking,
            clients: self.clients(),
        })
    }

    fn clients(&self) -> nonstop_testbed::chaos::Clients {
        use nonstop_testbed::chaos::Clients;
        let kind = self.kind.as_str();
        match self.node_binary {
            Some(_) => Clients::Sampled,
            // The bank's clients and history checker speak the bank's requests, which the
            // ledger takes too; kv is for Redis clients; every other kind is loaded with its
            // own samples.
            None if [nonstop_workloads::bank::NAME, nonstop_workloads::ledger::NAME].contains(&kind) => Clients::Bank,
            None if kind == nonstop_node::config::KV_KIND => Clients::Redis,
            None => Clients::Sampled,
        }
    }
}

impl ServiceUnderTest {
    /// Refuses a kind that cannot be passively replicated.
    fn passive(&self) -> anyhow::Result<()> {
        match self.threads {
            Some(_) => bail!(
                "--kind {} keeps its state in its worker threads, which no backup can copy: give --replication active",
                self.kind
            ),
            None => Ok(()),
        }
    }

    /// The test cluster's shape for this service: its kind, tracking, and one service named
    /// after the kind (the bank's clients address "bank").
    fn spec(&self, base: nonstop_testbed::cluster::ClusterSpec) -> nonstop_testbed::cluster::ClusterSpec {
        use nonstop_testbed::chaos::Clients;
        let name = match self.clients {
            Clients::Bank => nonstop_testbed::cluster::SERVICE.to_string(),
            Clients::Sampled | Clients::Redis => self.kind.clone(),
        };
        nonstop_testbed::cluster::ClusterSpec {
            kind: self.kind.clone(),
            tracking: self.tracking,
            services: vec![(name, 1)],
            redis: self.clients == Clients::Redis,
            threads: self.threads,
            ..base
        }
    }
}

#[derive(Args)]
struct ChaosKillArgs {
    /// Trials.
    #[arg(long, default_value_t = 200)]
    trials: u32,
    /// `passive` (kill the primary, time the failover) or `active` (three replicas vote on
    /// every reply; kill one, the order's leader or a follower, on a cluster of its own per
    /// trial, and report the longest gap between answers: there is no failover).
    #[arg(long, value_enum, default_value = "passive")]
    replication: Replication,
    /// With `--replication active`: how clients decide on the replicas' replies (`majority`,
    /// the default, `leader-only` or `pass-first`).
    #[arg(long, value_parser = parse_replies)]
    replies: Option<nonstop_proto::client::ReplyMode>,
    /// With `--replication active`: what happens to the replica, `kill` (SIGKILL), `pause`
    /// (SIGSTOP for --pause-ms, then SIGCONT: it catches up, by state transfer if the order
    /// compacted entries it missed), `wrong-outcome` (one of its replies made wrong by a
    /// fault point: the replicas' digests must find it, and it takes a live replica's state) or
    /// `flip-memory` (a bit of its region flipped in its memory: its seals or the digests must
    /// find it; reported as injected, activated, detected, manifested and catastrophic errors).
    /// Passive pauses are `nonstop chaos --netns pause`, passive bit flips `--netns bitflip`.
    #[arg(long, value_enum, default_value = "kill")]
    fault: FaultKind,
    /// How long `--fault pause` stops the replica, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pause_ms: u64,
    /// With `--replication active --fault kill`: start the killed node again this many ms
    /// later; its replica rejoins the order group as a new member, and the trial measures how
    /// long until it votes and serves at the others' position.
    #[arg(long)]
    restart_after_ms: Option<u64>,
    /// With `--replication active`: order entries the replicas keep before compacting
    /// (`order_log_entries`); a small log makes every pause end in a state transfer.
    #[arg(long)]
    order_log_entries: Option<u64>,
    #[command(flatten)]
    service: ServiceArgs,
    /// Seed of the random choices (printed, so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Client threads.
    #[arg(long, default_value_t = 8)]
    clients: u64,
    /// Share of trials killed at a fault point inside a checkpoint.
    #[arg(long, default_value_t = 0.3)]
    fault_share: f64,
    /// Measurement: keep the control-plane leader on the primary, so that every kill also
    /// needs a Raft election (the failover time when both die together).
    #[arg(long)]
    leader_on_primary: bool,
    /// Before the trials, run the load this long without faults: any failover then is false.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    quiet: Duration,
    /// Backups of the service (k): the cluster has k + 1 nodes that hold regions (three at
    /// least), and two witnesses when k >= 2, so that the control plane keeps a majority
    /// through two deaths.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=4))]
    backups: u8,
    /// Output needs this many backups in the record (default backups - 1).
    #[arg(long)]
    min_backups: Option<u8>,
    /// Kill the promoted primary too, this many ms after the first kill; 0: at a random
    /// moment of its re-protection (once it serves, within 40 ms).
    #[arg(long)]
    double_within: Option<u64>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BackupArgs {
    /// Address to listen on for primaries (port 0: any free port, printed on stdout).
    #[arg(long)]
    listen: SocketAddr,
    /// Virtual address of the region; the same on every node.
    #[arg(long, default_value_t = format!("{DEFAULT_REGION_BASE:#x}"))]
    region_base: String,
    /// Region size in bytes (a multiple of 4096).
    #[arg(long)]
    region_size: usize,
    /// File holding the cluster key (64 hex characters).
    #[arg(long)]
    key_file: std::path::PathBuf,
}

#[derive(Subcommand)]
enum BenchTarget {
    /// Debit-Credit (TPC-B shape, Christodoulopoulou et al., PPoPP 2006).
    DebitCredit(WorkloadArgs),
    /// Order-Entry (TPC-C shape and mix, Christodoulopoulou et al., PPoPP 2006).
    OrderEntry(WorkloadArgs),
    /// Raw round trip of the replication transport.
    Net(NetArgs),
    /// The overhead table: both workloads x DU/AU x sync, 1 ms, 10 ms, 100 ms, 2 s, each
    /// against no replication; writes Markdown, JSON and an SVG chart.
    Matrix(MatrixArgs),
    /// What finding writes costs per mode (plain, declared, uffd, mprotect): a first write to
    /// a page, and a checkpoint cut against pages written (1 to --pages); writes Markdown,
    /// JSON and an SVG chart.
    Tracking(TrackingArgs),
    /// What open idle client connections cost a primary: its threads, memory and answer
    /// latency with none and with --connections open.
    Clients(ClientsArgs),
    /// The kv service against Redis, side by side in one run: Redis standalone
    /// (redis-benchmark), Redis with a replica and WAIT 1 0 after every SET, and nonstop-kv with
    /// one backup (redis-benchmark on its Redis port). Needs redis-server and redis-benchmark.
    Redis(RedisArgs),
    /// Active replication on the replication survey's synthetic server: unreplicated, then 2f+1
    /// replicas voting by majority under each scheduler (npds, pds1, pds2, lsa), and passive
    /// replication with one backup, side by side in one run. Active replicas run in this
    /// process; the order is made here, not over a network.
    Active(ActiveArgs),
}

#[derive(Args)]
struct ActiveArgs {
    /// Worker threads per replica.
    #[arg(long, default_value_t = ActiveBenchConfig::default().workers)]
    workers: u16,
    /// Closed-loop clients.
    #[arg(long, default_value_t = ActiveBenchConfig::default().clients)]
    clients: usize,
    /// Replicas of each replicated run (odd: 2f+1).
    #[arg(long, default_value_t = ActiveBenchConfig::default().replicas)]
    replicas: u16,
    /// Mutex sections per request.
    #[arg(long, default_value_t = ActiveBenchConfig::default().sections)]
    sections: u32,
    /// Mutexes over the shared data.
    #[arg(long, default_value_t = ActiveBenchConfig::default().mutexes)]
    mutexes: u32,
    /// Computing inside each section, in microseconds.
    #[arg(long, default_value_t = ActiveBenchConfig::default().compute_us)]
    compute_us: u64,
    /// Simulated I/O after each section, outside its mutex, in microseconds.
    #[arg(long, default_value_t = ActiveBenchConfig::default().io_us)]
    io_us: u64,
    /// Each configuration's time per round [default: 1s].
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Rounds, each running every configuration; the median round is reported.
    #[arg(long, default_value_t = ActiveBenchConfig::default().rounds)]
    rounds: usize,
    /// A fault of one replica (see --victim) halfway through each actively replicated run: it
    /// stops for good (kill) or for --pause-ms (pause), a bit of its shared data flips
    /// (flip-memory) or a bit of its next reply (wrong-outcome). Reported: the longest time no
    /// client got an answer, and for flips the survey's injected, activated, detected,
    /// manifested and catastrophic counts per scheduler (one flip per run: give --rounds).
    #[arg(long)]
    fault: Option<FaultKind>,
    /// How long --fault pause stops the replica, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pause_ms: u64,
    /// Which replica --fault strikes: `follower` (the last one) or `leader` (the first: LSA's
    /// leader, which the next replica takes over from when it is killed; under the other
    /// schedulers every replica is alike).
    #[arg(long, value_enum, default_value = "follower")]
    victim: BenchVictim,
    /// Also write each configuration's requests per second as a bar chart (SVG) to this file.
    #[arg(long, value_name = "PATH")]
    chart: Option<std::path::PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// `--victim` of `bench active`.
#[derive(Clone, Copy, ValueEnum)]
enum BenchVictim {
    Follower,
    Leader,
}

#[derive(Clone, Copy, ValueEnum)]
enum FaultKind {
    Kill,
    Pause,
    /// One reply of the replica made wrong (a bit flipped).
    WrongOutcome,
    /// A bit of the replica's state flipped in its memory (on nodes a random bit of its
    /// region, in `bench active` one of the synthetic server's shared values).
    FlipMemory,
}

impl FaultKind {
    /// The fault, with `pause_ms` for a pause.
    fn replica_fault(self, pause_ms: u64) -> ReplicaFault {
        match self {
            FaultKind::Kill => ReplicaFault::Kill,
            FaultKind::Pause => ReplicaFault::Pause { ms: pause_ms },
            FaultKind::WrongOutcome => ReplicaFault::WrongOutcome,
            FaultKind::FlipMemory => ReplicaFault::FlipMemory,
        }
    }
}

#[derive(Args)]
struct RedisArgs {
    /// Connections of every load (redis-benchmark -c).
    #[arg(long, default_value_t = RedisBenchConfig::default().clients)]
    clients: usize,
    /// Requests per load and round (redis-benchmark -n).
    #[arg(long, default_value_t = RedisBenchConfig::default().requests)]
    requests: usize,
    /// Bytes per value (redis-benchmark -d).
    #[arg(long, default_value_t = RedisBenchConfig::default().value_size)]
    value_size: usize,
    /// Keys drawn from (redis-benchmark -r).
    #[arg(long, default_value_t = RedisBenchConfig::default().keyspace)]
    keyspace: u64,
    /// Requests a connection sends before reading their replies (redis-benchmark -P; the WAIT
    /// load pipelines that many SET+WAIT pairs).
    #[arg(long, default_value_t = RedisBenchConfig::default().pipeline)]
    pipeline: usize,
    /// Rounds, each running every load; the median round is reported.
    #[arg(long, default_value_t = RedisBenchConfig::default().rounds)]
    rounds: usize,
    /// Small keys loaded into Redis and into nonstop-kv after the rounds, to weigh memory per
    /// key (0: skip).
    #[arg(long, default_value_t = RedisBenchConfig::default().memory_keys)]
    memory_keys: u64,
    /// nonstop-kv's checkpoint interval in microseconds (the service's checkpoint_interval_us):
    /// the longest a write's reply waits for the cut that ships it.
    #[arg(long, default_value_t = RedisBenchConfig::default().checkpoint_us)]
    checkpoint_us: u64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Which cluster an operator command talks to (with the cluster key: operator requests are
/// authenticated on the nodes' control ports).
#[derive(Args)]
struct ClusterArgs {
    /// A node's config: the cluster's nodes and key file are read from it.
    #[arg(long, conflicts_with = "node")]
    config: Option<std::path::PathBuf>,
    /// A node's control address (repeat for each node); needs --key-file.
    #[arg(long)]
    node: Vec<SocketAddr>,
    /// The cluster key file, with --node.
    #[arg(long, requires = "node")]
    key_file: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct ClientsArgs {
    /// Idle connections to open to the primary.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Transfers timed with and without them.
    #[arg(long, default_value_t = 500)]
    requests: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TrackingArgs {
    /// Pages in the region: the largest checkpoint measured writes this many.
    #[arg(long, default_value_t = 100_000)]
    pages: usize,
    /// Cuts timed per point (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Directory for tracking.md, tracking.json and tracking.svg.
    #[arg(long, default_value = "target/bench")]
    out: std::path::PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Protocol {
    Du,
    Au,
}

/// `--replication`: how a fault test's service is replicated.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Replication {
    /// A primary checkpoints to backups.
    Passive,
    /// Every replica executes the ordered requests; clients vote.
    Active,
}

/// `--scheduler`: a scheduler of multithreaded replicas by its config name.
fn parse_scheduler(name: &str) -> Result<nonstop::sync::Scheduler, String> {
    nonstop::sync::Scheduler::parse(name)
}

/// `--replies`: a reply mode by its config name.
fn parse_replies(name: &str) -> Result<nonstop_proto::client::ReplyMode, String> {
    nonstop_proto::client::ReplyMode::from_name(name)
        .ok_or_else(|| format!("{name:?}: use majority, leader-only or pass-first"))
}

/// `--tracking`: declared ranges, or a kernel write-tracking mode.
#[derive(Clone, Copy, ValueEnum)]
enum Tracking {
    Declared,
    Uffd,
    Mprotect,
}

impl Tracking {
    /// The kernel mode, or `None` for declared writes.
    fn mode(self) -> Option<TrackingMode> {
        match self {
            Tracking::Declared => None,
            Tracking::Uffd => Some(TrackingMode::Uffd),
            Tracking::Mprotect => Some(TrackingMode::Mprotect),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Policy {
    Sync,
    Epoch,
}

#[derive(Args)]
struct WorkloadArgs {
    /// Backups (0: unreplicated).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=8))]
    backups: u8,
    /// Update protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Au)]
    protocol: Protocol,
    /// Commit policy.
    #[arg(long, value_enum, default_value_t = Policy::Epoch)]
    policy: Policy,
    /// Epoch interval (with --policy epoch), e.g. 1ms, 10ms, 100ms, 2s.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// With --policy epoch, also cut as soon as a checkpoint holds this many commits (0: only
    /// the interval).
    #[arg(long, default_value_t = 0)]
    commits: u64,
    /// Worker threads issuing transactions.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Length of each round.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Alternate unreplicated and replicated rounds and print the throughput ratio.
    #[arg(long)]
    compare: bool,
    /// Rounds of each configuration with --compare (at least 3: one round is no comparison
    /// on a noisy machine).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(3..))]
    rounds: u32,
    /// Debit-Credit branches (100,000 accounts each).
    #[arg(long, default_value_t = 10)]
    branches: u64,
    /// Order-Entry warehouses (10 districts, 30,000 customers, 100,000 stock rows each).
    #[arg(long, default_value_t = 1)]
    warehouses: u64,
    /// Virtual address of the region (hexadecimal), the same in the primary and the backups.
    #[arg(long, default_value_t = format!("{DEFAULT_REGION_BASE:#x}"))]
    region_base: String,
    /// Run the primary without line seals (no memory-corruption checks), to measure what
    /// they cost; nodes always seal.
    #[arg(long)]
    no_seals: bool,
    /// How the primary finds its writes: declared ranges (transactions), or the same
    /// transactions in transparent mode with the kernel finding the written pages (uffd:
    /// userfaultfd write-protect, Linux >= 6.7; mprotect: SIGSEGV on first write).
    #[arg(long, value_enum, default_value_t = Tracking::Declared)]
    tracking: Tracking,
    /// With --compare and --tracking uffd|mprotect: also run the same transactions with
    /// declared writes, replicated alike, in alternation with the other rounds, and print what
    /// the tracking mode costs against them (JSON: cost_vs_declared, declared_tx_per_s).
    #[arg(long)]
    against_declared: bool,
    /// With --compare (Debit-Credit, --backups 1 or more): alternate the transactions called
    /// directly with the same transactions through the bank service as a node runs it, and
    /// print what the service path costs (JSON: service_vs_direct, service_tx_per_s).
    #[arg(long)]
    through_service: bool,
    /// Also draw every round's throughput over time (100 ms windows, rounds end to end) as an
    /// SVG chart at this path; the JSON carries the same figures (timelines).
    #[arg(long, value_name = "SVG")]
    timeline: Option<std::path::PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct MatrixArgs {
    /// Length of each round (epoch configurations run at least three intervals).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Rounds of each configuration.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Directory for matrix.md, matrix.json and overhead.svg.
    #[arg(long, default_value = "target/bench")]
    out: std::path::PathBuf,
}

#[derive(Args)]
struct NetArgs {
    /// Round trips to measure.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Payload bytes per ping.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    // A user's mistake is one line, whatever RUST_BACKTRACE says: anyhow's report would append
    // the backtrace it captured. A bug (a panic) still prints its backtrace.
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Simulated nodes step down, lose quorum and refuse stale terms on purpose: their warnings
    // are the simulation working, not news.
    nonstop::node::init_logs(if matches!(cli.command, Command::Sim(_)) {
        "warn,nonstop_control=error"
    } else {
        "warn"
    });
    match cli.command {
        Command::Node { config } => node(&config),
        Command::Load(args) => nonstop::node::run_load(&args, &nonstop::builtins()),
        Command::Kinds => {
            print!("{}", nonstop::node::kinds(&nonstop::builtins()));
            Ok(())
        }
        Command::Status { cluster, json } => status(&cluster, json),
        Command::Chaos { kind: Some(ChaosKind::Kill(args)), .. } => chaos_kill(*args),
        Command::Chaos { kind: None, netns } => chaos_netns(netns),
        Command::Sim(args) => sim(args),
        Command::Switchover { service, to, cluster } => switchover(&service, to, &cluster),
        Command::Backup(args) => backup(args),
        Command::Bench { target } => match target {
            BenchTarget::DebitCredit(args) => run_bench(WorkloadKind::DebitCredit, &args),
            BenchTarget::OrderEntry(args) => run_bench(WorkloadKind::OrderEntry, &args),
            BenchTarget::Net(args) => bench_net(args),
            BenchTarget::Matrix(args) => bench_matrix(args),
            BenchTarget::Tracking(args) => bench_tracking(args),
            BenchTarget::Clients(args) => bench_clients(args),
            BenchTarget::Redis(args) => bench_redis(args),
            BenchTarget::Active(args) => bench_active(args),
        },
        Command::Demo { clients } => demo(clients),
    }
}

fn bench_clients(args: ClientsArgs) -> anyhow::Result<()> {
    let config = nonstop_bench::clients::ClientsBenchConfig {
        connections: args.connections,
        requests: args.requests.max(1),
        spec: nonstop_testbed::cluster::ClusterSpec { region_size_mib: 64, ..Default::default() },
    };
    let report = nonstop_bench::clients::run(&std::env::current_exe()?, &config)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let phase = |p: &nonstop_bench::clients::Phase| {
            format!(
                "{:>6} connections: {:>4} threads, {:>7.1} MiB resident, transfers p50 {:.2} ms, p99 {:.2} ms",
                p.connections, p.threads, p.rss_mib, p.p50_ms, p.p99_ms
            )
        };
        println!("{}\n{}", phase(&report.before), phase(&report.with_connections));
        println!(
            "{} threads added, {:.1} KiB resident per connection, {} refused, opened in {:.1} s",
            report.threads_added, report.rss_per_connection_kib, report.refused, report.open_s
        );
    }
    Ok(())
}

fn bench_active(args: ActiveArgs) -> anyhow::Result<()> {
    let config = ActiveBenchConfig {
        workers: args.workers,
        clients: args.clients,
        replicas: args.replicas,
        sections: args.sections,
        mutexes: args.mutexes,
        compute_us: args.compute_us,
        io_us: args.io_us,
        duration: args.duration.unwrap_or(ActiveBenchConfig::default().duration),
        rounds: args.rounds,
        fault: args.fault.map(|kind| kind.replica_fault(args.pause_ms)),
        victim: match args.victim {
            BenchVictim::Follower => nonstop_bench::active::Victim::Follower,
            BenchVictim::Leader => nonstop_bench::active::Victim::Leader,
        },
    };
    let progress = indicatif::ProgressBar::new_spinner();
    progress.enable_steady_tick(std::time::Duration::from_millis(200));
    let exe = std::env::current_exe()?;
    let report = nonstop_bench::active::run(&config, Some(&exe), &|step| progress.set_message(step.to_string()))
        .map_err(anyhow::Error::msg)?;
    progress.finish_and_clear();
    if let Some(path) = &args.chart {
        std::fs::write(path, report.svg()).with_context(|| format!("writing the chart to {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} workers, {} clients, {} replicas (majority); {} sections of {} us on {} mutexes, {} us I/O each; median of {} rounds",
            config.workers,
            config.clients,
            config.replicas,
            config.sections,
            config.compute_us,
            config.mutexes,
            config.io_us,
            config.rounds
        );
        for (name, run) in &report.runs {
            println!(
                "{name:<13} {:>9.0}/s   p50 {:>7.3} ms   p99 {:>7.3} ms   longest gap {:>7.3} ms   dissenting {}   undecided {}   states equal {}",
                run.per_s, run.p50_ms, run.p99_ms, run.longest_gap_ms, run.dissenting, run.undecided, run.states_equal
            );
        }
        println!(
            "pds2 / npds {:.2}, lsa / npds {:.2}, best active / unreplicated {:.2}, passive / unreplicated {:.2}",
            report.pds2_vs_npds,
            report.lsa_vs_npds,
            report.best_vs_unreplicated,
            report.passive_vs_unreplicated.unwrap_or(f64::NAN)
        );
        print_error_injection(report.error_injection.iter().map(|(site, counts)| (site, counts)));
    }
    // The faulty replica's own wrong replies are what voting masks; any other disagreement is a
    // scheduler's.
    let disagreed = report
        .runs
        .iter()
        .any(|(_, run)| run.dissenting > run.faulty_dissenting || run.undecided > 0 || !run.states_equal);
    if disagreed {
        anyhow::bail!("replicas disagreed: a scheduler let two replicas diverge (see the figures above)");
    }
    Ok(())
}

fn bench_redis(args: RedisArgs) -> anyhow::Result<()> {
    use nonstop_bench::versus_redis::run;
    if args.clients == 0 || args.requests == 0 || args.rounds == 0 || args.keyspace == 0 || args.pipeline == 0 {
        anyhow::bail!("--clients, --requests, --rounds, --keyspace and --pipeline must be at least 1");
    }
    if !(100..=1_000_000).contains(&args.checkpoint_us) {
        anyhow::bail!("--checkpoint-us {} is out of range: use 100 to 1000000", args.checkpoint_us);
    }
    let config = RedisBenchConfig {
        clients: args.clients,
        requests: args.requests,
        value_size: args.value_size,
        keyspace: args.keyspace,
        pipeline: args.pipeline,
        rounds: args.rounds,
        memory_keys: args.memory_keys,
        checkpoint_us: args.checkpoint_us,
        ..RedisBenchConfig::default()
    };
    let progress = indicatif::ProgressBar::new_spinner();
    progress.enable_steady_tick(std::time::Duration::from_millis(200));
    let report = run(&std::env::current_exe()?, &config, &|step| progress.set_message(step.to_string()))?;
    progress.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{}; {} connections, {}-byte values, {} requests a load, median of {} rounds; nonstop checkpoints every {} us",
        report.redis_version, report.clients, report.value_size, report.requests, report.rounds, report.checkpoint_us
    );
    let row = |name: &str, per_s: f64, p50: f64, p99: f64| {
        println!("{name:<34} {per_s:>10.0}/s   p50 {p50:>6.3} ms   p99 {p99:>6.3} ms")
    };
    row("Redis SET", report.redis_set_per_s, report.redis_set_p50_ms, report.redis_set_p99_ms);
    row("Redis GET", report.redis_get_per_s, report.redis_get_p50_ms, report.redis_get_p99_ms);
    row(
        "Redis + replica, SET + WAIT 1 0",
        report.redis_wait_set_per_s,
        report.redis_wait_set_p50_ms,
        report.redis_wait_set_p99_ms,
    );
    row("nonstop-kv + backup, SET", report.nonstop_set_per_s, report.nonstop_set_p50_ms, report.nonstop_set_p99_ms);
    row("nonstop-kv + backup, GET", report.nonstop_get_per_s, report.nonstop_get_p50_ms, report.nonstop_get_p99_ms);
    println!(
        "nonstop SET / Redis SET {:.2}, / Redis SET+WAIT {:.2}; nonstop GET / Redis GET {:.2}",
        report.ratio_set_vs_redis, report.ratio_set_vs_redis_wait, report.ratio_get_vs_redis
    );
    if report.memory_keys > 0 {
        println!(
            "memory per key ({} keys): Redis used_memory {:.0} B (resident {:.0} B), nonstop-kv used_memory {:.0} B (primary resident {:.0} B)",
            report.memory_keys,
            report.redis_bytes_per_key,
            report.redis_rss_bytes_per_key,
            report.nonstop_bytes_per_key,
            report.nonstop_rss_bytes_per_key
        );
    }
    Ok(())
}

fn node(path: &std::path::Path) -> anyhow::Result<()> {
    Ok(nonstop_node::run_config_file(path, &nonstop::builtins(), &AtomicBool::new(false))?)
}

fn sim(args: SimArgs) -> anyhow::Result<()> {
    if args.two_faults && !matches!(args.kind, SimKind::Order | SimKind::OrderLsa) {
        bail!("--two-faults is for --kind order or order-lsa: the other simulations inject no corrupted state");
    }
    let steps = args.steps.unwrap_or(match args.kind {
        SimKind::Replication => 1500,
        SimKind::Failover => 3000,
        SimKind::Order | SimKind::OrderLsa => 6000,
    });
    let kind = match args.kind {
        SimKind::Replication => "replication",
        SimKind::Failover => "failover",
        SimKind::Order => "order",
        SimKind::OrderLsa => "order-lsa",
    };
    let run = |seed: u64, trace: bool| -> Result<String, String> {
        match args.kind {
            SimKind::Replication => {
                nonstop_sim::run_seed(seed, steps as usize).map(|s| format!("{s:?}")).map_err(|v| v.to_string())
            }
            SimKind::Failover => nonstop_sim::cluster::run_cluster(seed, steps, trace)
                .map(|s| format!("{s:?}"))
                .map_err(|v| v.to_string()),
            SimKind::Order | SimKind::OrderLsa => {
                use nonstop_sim::order::{Faults, OrderRun, Pacing};
                let pacing = if args.kind == SimKind::OrderLsa { Pacing::Loose } else { Pacing::Scheduled };
                let faults = if args.two_faults { Faults::TwoAtOnce } else { Faults::OneAtATime };
                nonstop_sim::order::run_order_with(seed, steps, OrderRun { pacing, faults, trace })
                    .map(|s| format!("{s:?}"))
                    .map_err(|v| v.to_string())
            }
        }
    };
    if let Some(seed) = args.seed {
        return match run(seed, args.trace) {
            Ok(stats) => {
                println!("{kind} seed {seed}, {steps} steps: ok, {stats}");
                Ok(())
            }
            Err(violation) => bail!("{kind} {violation}"),
        };
    }
    let progress = indicatif::ProgressBar::new(args.seeds).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} seeds {elapsed}").expect("valid template"),
    );
    let next = std::sync::atomic::AtomicU64::new(args.first);
    let end = args.first + args.seeds;
    let failure = std::sync::Mutex::new(None::<(u64, String)>);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= end || failure.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                        return;
                    }
                    if let Err(violation) = run(seed, false) {
                        let mut first = failure.lock().unwrap_or_else(|p| p.into_inner());
                        if first.as_ref().is_none_or(|(s, _)| seed < *s) {
                            *first = Some((seed, violation));
                        }
                        return;
                    }
                    progress.inc(1);
                }
            });
        }
    });
    progress.finish_and_clear();
    if let Some((seed, violation)) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        bail!(
            "{kind} {violation}\nreproduce: nonstop sim --kind {kind} --seed {seed} --steps {steps}{}{}",
            if args.two_faults { " --two-faults" } else { "" },
            if matches!(args.kind, SimKind::Replication) { "" } else { " --trace" }
        );
    }
    println!("{kind}: seeds {}..{end} ({} seeds x {steps} steps) kept every safety property", args.first, args.seeds);
    Ok(())
}

/// A progress bar counting `trials`.
fn trials_bar(trials: u32) -> indicatif::ProgressBar {
    indicatif::ProgressBar::new(trials as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} trials  {msg}").expect("valid template"),
    )
}

/// Advances a trials progress bar and shows how the last trial went.
fn trial_done(progress: &indicatif::ProgressBar, fault: &str, failover_ms: Option<f64>) {
    progress.inc(1);
    progress.set_message(format!(
        "last: {fault} {}",
        failover_ms.map_or("no failover".into(), |ms| format!("failover {ms:.1} ms"))
    ));
}

/// Prints the consistency check's verdict and the history checker's report (`always`, or only
/// when it found violations).
fn print_verdict(check: &Result<String, String>, history: &nonstop_testbed::history::CheckReport, always: bool) {
    match check {
        Ok(summary) => println!("consistency check: {summary}"),
        Err(violation) => println!("consistency check FAILED: {violation}"),
    }
    if always || history.violations.total() > 0 {
        print!("{}", history.summary());
    }
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

fn chaos_netns(args: ChaosNetnsArgs) -> anyhow::Result<()> {
    use nonstop_testbed::chaos::netns::NetnsConfig;
    let Some(kind) = args.netns else {
        bail!(
            "say which faults: `nonstop chaos --netns kill|pause|partition|lossy|mixed|bitflip`, or `nonstop chaos kill` on loopback"
        );
    };
    let service = args.service.resolve()?;
    if service.clients == nonstop_testbed::chaos::Clients::Redis {
        bail!("--kind kv is tested with Redis clients on loopback only so far: use `nonstop chaos kill --kind kv`");
    }
    let seed = args.seed.unwrap_or_else(random_seed);
    if args.replication == Replication::Active {
        return chaos_netns_active(&args, kind, &service, seed);
    }
    if args.replies.is_some() {
        bail!("--replies decides on an active service's replies: give --replication active too");
    }
    service.passive()?;
    nonstop_testbed::netns::available()?;
    let config = NetnsConfig {
        kind,
        trials: args.trials,
        seed,
        clients: args.clients,
        readers: args.readers,
        spec: service.spec(nonstop_testbed::cluster::ClusterSpec::default()),
        fault_length: args.fault_length,
        quiet: args.quiet,
        soak: args.soak,
        fault_every: args.fault_every,
        clients_kind: service.clients,
    };
    let expected_trials = match args.soak {
        Some(length) => (length.as_secs_f64() / args.fault_every.as_secs_f64().max(1.0)).ceil() as u32,
        None => args.trials,
    };
    let progress = trials_bar(expected_trials);
    let report = nonstop_testbed::chaos::netns::run(&service.exe, &config, |trial| {
        trial_done(&progress, &trial.fault, trial.failover_ms);
    })?;
    progress.finish_and_clear();
    if let Some(soak) = &report.soak {
        if let Some(dir) = args.soak_chart.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let title = format!("{} s soak, {:?} faults every {:?}", soak.duration_s, report.kind, args.fault_every);
        std::fs::write(&args.soak_chart, soak.rss_chart(&title))?;
        eprintln!("resident memory chart: {}", args.soak_chart.display());
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("chaos --netns {:?}: {} trials (seed {seed})", report.kind, report.trials);
        for (fault, (count, m)) in &report.longest_gap_ms {
            let failover =
                report.failover_ms.get(fault).filter(|(n, _)| *n > 0).map_or("no failover".into(), |(n, f)| {
                    format!("{n} failovers: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", f.p50, f.p99, f.max)
                });
            println!(
                "  {fault:>32}: {count:>4} trials; longest gap p50 {:.1} ms, max {:.1} ms; {failover}",
                m.p50, m.max
            );
        }
        println!(
            "unrecovered trials {}, quiet-period failovers {}, false failovers {}",
            report.unrecovered, report.quiet_failovers, report.false_failovers
        );
        if let Some(soak) = &report.soak {
            println!("soak: {} s, {} samples", soak.duration_s, soak.samples);
            println!(
                "| node | pid | watched | rss first -> last (max) | fds first -> last (max) | threads first -> last (max) |"
            );
            println!("|---:|---:|---:|---|---|---|");
            for p in &soak.processes {
                println!(
                    "| {} | {} | {} s | {} -> {} KiB ({}) | {} -> {} ({}) | {} -> {} ({}) |",
                    p.node,
                    p.pid,
                    p.watched_s,
                    p.first.rss_kib,
                    p.last.rss_kib,
                    p.max_rss_kib,
                    p.first.fds,
                    p.last.fds,
                    p.max_fds,
                    p.first.threads,
                    p.last.threads,
                    p.max_threads
                );
            }
            for growing in &soak.growing {
                println!("GROWING: {growing}");
            }
        }
        print_error_injection(&report.error_injection);
        print_verdict(&report.check, &report.history, true);
    }
    if report.violations > 0 || report.check.is_err() {
        bail!("{} violations: repeat with --seed {seed}", report.violations);
    }
    if report.false_failovers > 0 {
        bail!("{} false failovers: repeat with --seed {seed}", report.false_failovers);
    }
    if let Some(growing) = report.soak.as_ref().filter(|s| !s.growing.is_empty()).map(|s| s.growing.join("; ")) {
        bail!("node processes grew during the soak: {growing}");
    }
    let manifested: u64 = report.error_injection.get("total").map_or(0, |t| t.manifested);
    if manifested > 0 {
        bail!("{manifested} injected errors manifested (wrong answers or crashes): repeat with --seed {seed}");
    }
    Ok(())
}

/// The survey's table of injected errors, per site (nothing without injections).
fn print_error_injection<'a>(
    rows: impl IntoIterator<Item = (&'a String, &'a nonstop_testbed::chaos::inject::InjectionCounts)>,
) {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return;
    }
    println!("| site | injected | activated | detected | manifested | catastrophic |\n|---|---:|---:|---:|---:|---:|");
    for (site, c) in rows {
        println!(
            "| {site} | {} | {} | {} | {} | {} |",
            c.injected, c.activated, c.detected, c.manifested, c.catastrophic
        );
    }
}

/// `chaos --netns KIND --replication active`: one replica per trial, on hosts of their own.
fn chaos_netns_active(
    args: &ChaosNetnsArgs,
    kind: nonstop_testbed::chaos::netns::FaultKind,
    service: &ServiceUnderTest,
    seed: u64,
) -> anyhow::Result<()> {
    use nonstop_testbed::chaos::netns::FaultKind as Netns;
    let ms = args.fault_length.as_millis() as u64;
    let fault = match kind {
        Netns::Kill => ReplicaFault::Kill,
        Netns::Pause => ReplicaFault::Pause { ms },
        Netns::Partition => ReplicaFault::Partition { ms },
        Netns::Bitflip => ReplicaFault::Bitflip,
        Netns::Lossy | Netns::Mixed => bail!(
            "--netns lossy and mixed shape a passive primary's links; an active service takes kill, pause, partition and bitflip"
        ),
    };
    if args.soak.is_some() || args.readers != 2 || !args.quiet.is_zero() {
        bail!("--soak, --readers and --quiet shape passive runs: an active run is trials of one replica's fault");
    }
    nonstop_testbed::netns::available()?;
    let config = nonstop_testbed::chaos::ActiveChaosConfig {
        trials: args.trials,
        seed,
        clients: args.clients,
        spec: service.spec(nonstop_testbed::cluster::ClusterSpec {
            region_size_mib: 32,
            active: Some(args.replies.unwrap_or(nonstop_proto::client::ReplyMode::Majority)),
            // An output made wrong is a fault point's.
            allow_faults: fault == ReplicaFault::Bitflip,
            ..Default::default()
        }),
        clients_kind: service.clients,
        fault,
        restart_after: None,
        after_kill: Duration::from_secs(1),
        netns: true,
    };
    run_active_chaos(service, &config, args.json)
}

fn chaos_kill(args: ChaosKillArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.fault_share) {
        bail!("--fault-share must be between 0 and 1");
    }
    let service = args.service.resolve()?;
    if args.replication == Replication::Active {
        return chaos_kill_active(&args, &service);
    }
    service.passive()?;
    if !matches!(args.fault, FaultKind::Kill)
        || args.order_log_entries.is_some()
        || args.restart_after_ms.is_some()
        || args.replies.is_some()
    {
        bail!(
            "--fault pause|wrong-outcome|flip-memory, --replies, --restart-after-ms and --order-log-entries are for --replication active; a passive primary's pause is `nonstop chaos --netns pause`, its bit flips `nonstop chaos --netns bitflip`"
        );
    }

    if args.min_backups.is_some_and(|m| m > args.backups) {
        bail!(
            "--min-backups {} is more than --backups {}: use 0..={}",
            args.min_backups.unwrap_or(0),
            args.backups,
            args.backups
        );
    }
    if args.double_within.is_some() && args.backups < 2 {
        bail!(
            "--double-within kills two nodes in a row: give --backups 2 or more, or one backup has nothing left to promote"
        );
    }
    let seed = args.seed.unwrap_or_else(random_seed);
    let double = args.double_within.map(|ms| match ms {
        0 => nonstop_testbed::chaos::DoubleKill::InsideReprotection,
        ms => nonstop_testbed::chaos::DoubleKill::After(Duration::from_millis(ms)),
    });
    let config = nonstop_testbed::chaos::ChaosConfig {
        trials: args.trials,
        seed,
        clients: args.clients,
        fault_share: args.fault_share,
        spec: service.spec(nonstop_testbed::cluster::ClusterSpec {
            ip_prefix: "127.0.2".into(),
            // Three nodes at least, so that the control plane outlives one death.
            nodes: (args.backups + 1).max(3),
            backups: args.backups,
            min_backups: args.min_backups,
            witnesses: if args.backups >= 2 { 2 } else { 0 },
            leader_on_primary: args.leader_on_primary,
            ..Default::default()
        }),
        quiet: args.quiet,
        double,
        clients_kind: service.clients,
    };
    let exe = service.exe.clone();
    let progress = trials_bar(args.trials);
    let report = nonstop_testbed::chaos::run_kill(&exe, &config, |trial| {
        if trial.fault == "quiet" {
            progress.set_message("quiet period: load, no faults");
            progress.tick();
            return;
        }
        trial_done(&progress, &trial.fault, trial.failover_ms);
    })?;
    progress.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "chaos kill: {} trials (seed {}), {} backups, min_backups {}",
            report.trials, report.seed, report.backups, report.min_backups
        );
        let f = &report.failover_ms;
        println!(
            "failover (kill to first acknowledged commit): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            f.p50, f.p99, f.max
        );
        if let Some(f) = &report.second_failover_ms {
            println!(
                "second kill (the promoted primary) to first acknowledged commit: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                f.p50, f.p99, f.max
            );
        }
        for (kind, (count, m)) in &report.by_fault {
            println!("  {kind:>16}: {count:>4} trials, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", m.p50, m.p99, m.max);
        }
        println!(
            "acknowledged {}, lost {}, applied twice {}, false failovers {} ({} in {:.0} s of load without faults), trials without failover {}",
            report.acknowledged,
            report.acked_lost,
            report.applied_twice,
            report.false_failovers,
            report.quiet_failovers,
            report.quiet_s,
            report.no_failover
        );
        print_verdict(&report.check, &report.history, false);
    }
    if report.history.violations.total() > 0 || report.check.is_err() {
        bail!("the history broke a guarantee (lost, doubled, stale or wrong answers): repeat with --seed {seed}");
    }
    Ok(())
}

/// `chaos kill --replication active`: a replica killed per trial, on a cluster of its own.
fn chaos_kill_active(args: &ChaosKillArgs, service: &ServiceUnderTest) -> anyhow::Result<()> {
    if args.double_within.is_some() || args.backups != 1 || args.min_backups.is_some() || args.leader_on_primary {
        bail!(
            "--double-within, --backups, --min-backups and --leader-on-primary shape passive replication: an active service runs on three replicas, and one is killed per trial"
        );
    }
    if service.clients == nonstop_testbed::chaos::Clients::Redis {
        bail!("--kind kv is replicated passively (Redis clients expect one server): drop --replication active");
    }
    let seed = args.seed.unwrap_or_else(random_seed);
    let config = nonstop_testbed::chaos::ActiveChaosConfig {
        trials: args.trials,
        seed,
        clients: args.clients,
        spec: service.spec(nonstop_testbed::cluster::ClusterSpec {
            ip_prefix: "127.0.2".into(),
            // A region no larger than the bank needs: each trial audits both survivors' whole
            // regions.
            region_size_mib: 32,
            active: Some(args.replies.unwrap_or(nonstop_proto::client::ReplyMode::Majority)),
            order_log_entries: args.order_log_entries,
            // The wrong outcome is a fault point's, and so is a flip in a multithreaded
            // service's state (which lives outside the region).
            allow_faults: matches!(args.fault, FaultKind::WrongOutcome)
                || (matches!(args.fault, FaultKind::FlipMemory) && service.threads.is_some()),
            ..Default::default()
        }),
        clients_kind: service.clients,
        fault: args.fault.replica_fault(args.pause_ms),
        restart_after: args.restart_after_ms.map(Duration::from_millis),
        after_kill: Duration::from_secs(1),
        netns: false,
    };
    if config.restart_after.is_some() && config.fault != ReplicaFault::Kill {
        bail!("--restart-after-ms restarts a killed replica: give --fault kill");
    }
    run_active_chaos(service, &config, args.json)
}

/// Runs an active chaos run, prints its report (JSON or text) and fails if a guarantee broke.
fn run_active_chaos(
    service: &ServiceUnderTest,
    config: &nonstop_testbed::chaos::ActiveChaosConfig,
    json: bool,
) -> anyhow::Result<()> {
    let seed = config.seed;
    let (verb, noun) = match (config.fault, config.restart_after) {
        (ReplicaFault::Kill, None) => ("killed", "kill"),
        (ReplicaFault::Kill, Some(_)) => ("restarted", "restart"),
        (ReplicaFault::Pause { .. }, _) => ("paused", "pause"),
        (ReplicaFault::WrongOutcome, _) => ("made wrong", "wrong outcome"),
        (ReplicaFault::FlipMemory, _) => ("given a flipped bit", "bit flip"),
        (ReplicaFault::Partition { .. }, _) => ("cut off", "partition"),
        (ReplicaFault::Bitflip, _) => ("given a flipped bit in memory or an output", "bit flip"),
    };
    let progress = trials_bar(config.trials);
    let report = nonstop_testbed::chaos::run_active(&service.exe, config, |trial| {
        progress.inc(1);
        let whom = if trial.killed_leader { "the order's leader" } else { "a follower" };
        progress.set_message(format!("last: {verb} {whom}, longest gap {:.1} ms", trial.gap_ms));
    })?;
    progress.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "chaos {noun}, active replication ({} replies): {} trials (seed {})",
            report.replies, report.trials, seed
        );
        for (what, m) in [
            (format!("every {noun}"), &report.gap_ms),
            (format!("the order's leader {verb}"), &report.gap_leader_killed_ms),
            (format!("a follower {verb}"), &report.gap_follower_killed_ms),
        ] {
            println!(
                "longest gap between answers, {what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                m.p50, m.p99, m.max
            );
        }
        let away = match (config.fault, config.restart_after) {
            (ReplicaFault::Pause { ms }, _) => Some(format!("paused {ms} ms")),
            (ReplicaFault::Kill, Some(after)) => Some(format!("restarted {} ms after the kill", after.as_millis())),
            (ReplicaFault::WrongOutcome, _) => Some(format!(
                "answered one request wrongly ({} of {} found by the replicas' digests)",
                report.dissents_found, report.trials
            )),
            (ReplicaFault::Partition { ms }, _) => Some(format!("cut off from the other replicas for {ms} ms")),
            (ReplicaFault::FlipMemory, _) => Some(format!(
                "a bit flipped in its region ({} of {} found by the replicas' digests, the rest by the region's seals \
                 or not at all: see the table; found {:.0} ms after the flip, p50, max {:.0} ms)",
                report.dissents_found, report.trials, report.detected_after_ms.p50, report.detected_after_ms.max
            )),
            (ReplicaFault::Bitflip, _) => Some(format!(
                "a bit flipped in its region (even trials) or one of its replies made wrong (odd trials): {} of {} \
                 found by the replicas' digests, the rest by the region's seals or not at all (see the table); flips \
                 in memory found {:.0} ms after the flip, p50, max {:.0} ms",
                report.dissents_found, report.trials, report.detected_after_ms.p50, report.detected_after_ms.max
            )),
            (ReplicaFault::Kill, None) => None,
        };
        if let Some(away) = away {
            println!(
                "{away}: {} of {} replicas took another's state (p50 {:.1} ms, max {:.1} ms); back at the others' position {:.1} ms after their return (p50; max {:.1} ms); {} not back within 10 s; answers/s while catching up vs before: {:.2}",
                report.reintegrated,
                report.trials,
                report.catch_up_ms.p50,
                report.catch_up_ms.max,
                report.back_ms.p50,
                report.back_ms.max,
                report.not_back,
                report.catching_up_vs_before
            );
        }
        println!(
            "acknowledged {}, lost {}, applied twice {}, trials whose replicas disagree {}, trials without an answer after the {noun} {}",
            report.acknowledged,
            report.acked_lost,
            report.applied_twice,
            report.replicas_disagree,
            report.no_answer_after_kill
        );
        print_error_injection(&report.error_injection);
        print_verdict(&report.check, &report.history, false);
    }
    // Under leader-only and pass-first one replica answers a query, and it may not have executed
    // a call another replica answered yet: stale reads are those modes' price, reported above
    // and not a broken guarantee. Under majority they are one.
    let violations = &report.history.violations;
    let tolerated = match config.spec.active.unwrap_or(nonstop_proto::client::ReplyMode::Majority) {
        nonstop_proto::client::ReplyMode::Majority => 0,
        _ => violations.stale_reads,
    };
    if report.not_back > 0 {
        bail!("a {verb} replica did not serve again within 10 s: repeat with --seed {seed}");
    }
    if violations.total() > tolerated || report.check.is_err() || report.replicas_disagree > 0 {
        bail!(
            "the history broke a guarantee (lost, doubled, wrong answers, replicas apart): repeat with --seed {seed}"
        );
    }
    let crashed: u64 =
        report.error_injection.iter().filter(|(site, _)| *site != "total").map(|(_, c)| c.manifested).sum();
    if crashed > 0 {
        bail!("{crashed} injected errors crashed a node instead of being detected: repeat with --seed {seed}");
    }
    Ok(())
}

/// An operator of the cluster: its nodes' control addresses and the cluster key, from a
/// node's config, or from `--node` addresses and `--key-file`.
fn operator_of(args: &ClusterArgs) -> anyhow::Result<nonstop_node::operator::Operator> {
    let (nodes, key_file) = match &args.config {
        Some(path) => {
            let config = nonstop_node::config::NodeConfig::load(path)?;
            (config.members.iter().map(|m| (m.id.0, m.control)).collect(), config.key_file)
        }
        None if !args.node.is_empty() => {
            let Some(key_file) = &args.key_file else {
                bail!("--node needs --key-file: operator requests prove they hold the cluster key")
            };
            (args.node.iter().enumerate().map(|(i, a)| (i as u64 + 1, *a)).collect(), key_file.clone())
        }
        None => bail!(
            "name the cluster: --config NODE.toml, or --node ADDR for each node's control address with --key-file"
        ),
    };
    Ok(nonstop_node::operator::Operator::new(nodes, nonstop_node::config::read_key_file(&key_file)?))
}

fn switchover(service: &str, to: u64, cluster: &ClusterArgs) -> anyhow::Result<()> {
    let done = operator_of(cluster)?.switchover(service, to)?;
    println!(
        "{service}: primary moved from node {} to node {} (term {}), from checkpoint {}; new requests refused for {:.1} ms before the last checkpoint, promotion committed after {:.1} ms",
        done.from,
        done.to,
        done.term,
        done.checkpoint,
        done.drained.as_secs_f64() * 1e3,
        done.committed.as_secs_f64() * 1e3
    );
    Ok(())
}

fn status(cluster: &ClusterArgs, json: bool) -> anyhow::Result<()> {
    let statuses = operator_of(cluster)?.statuses(Duration::from_millis(500));
    if json {
        let value: Vec<_> = statuses
            .iter()
            .map(|(id, addr, status)| serde_json::json!({ "node": id, "control": addr.to_string(), "status": status }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", nonstop_testbed::status::render(&statuses));
    }
    Ok(())
}

fn run_bench(workload: WorkloadKind, args: &WorkloadArgs) -> anyhow::Result<()> {
    let report = bench::run(&bench_config(workload, args)?, &std::env::current_exe()?)?;
    if let Some(path) = &args.timeline {
        std::fs::write(path, report.timeline_svg()).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("timeline chart written to {}", path.display());
    }
    print_report(&report, args.json)
}

fn parse_address(text: &str) -> anyhow::Result<usize> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    usize::from_str_radix(digits, 16).with_context(|| format!("--region-base {text:?} is not a hexadecimal address"))
}

fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let key_text = std::fs::read_to_string(&args.key_file)
        .with_context(|| format!("reading the cluster key file {}", args.key_file.display()))?;
    let key = ClusterKey::from_hex(&key_text).with_context(|| format!("in {}", args.key_file.display()))?;
    let region = Region::map(parse_address(&args.region_base)?, args.region_size)?;
    let check: nonstop::ConsistencyCheck = Arc::new(nonstop_workloads::check);
    let mut server = BackupServer::bind(args.listen, key, region, Some(check))
        .with_context(|| format!("listening on {}", args.listen))?;
    println!("{LISTENING}{}", server.local_addr());
    std::io::stdout().flush()?;
    server.serve();
    Ok(())
}

fn bench_config(workload: WorkloadKind, args: &WorkloadArgs) -> anyhow::Result<BenchConfig> {
    let policy = match args.policy {
        Policy::Sync => CommitPolicy::Sync,
        Policy::Epoch => {
            let interval_us = args.interval.as_micros() as u64;
            if interval_us == 0 {
                bail!("--interval must be at least 1us");
            }
            CommitPolicy::Epoch { interval_us, max_commits: args.commits }
        }
    };
    Ok(BenchConfig {
        workload,
        backups: args.backups as usize,
        protocol: match args.protocol {
            Protocol::Du => UpdateProtocol::Du,
            Protocol::Au => UpdateProtocol::Au,
        },
        policy,
        threads: args.threads,
        duration: args.duration,
        compare: args.compare,
        rounds: args.rounds as usize,
        branches: args.branches.max(1),
        warehouses: args.warehouses.max(1),
        region_base: parse_address(&args.region_base)?,
        seals: !args.no_seals,
        tracking: args.tracking.mode(),
        against_declared: args.against_declared,
        through_service: args.through_service,
    })
}

fn print_report(report: &BenchReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        let interval = report.interval_ms.map_or("-".to_string(), |ms| format!("{ms} ms"));
        println!(
            "{} | backups {} | {} | {} {} | {} threads",
            report.workload, report.backups, report.protocol, report.policy, interval, report.threads
        );
        println!("  throughput          {:>12.0} tx/s", report.tx_per_s);
        if let (Some(base), Some(ratio)) = (report.baseline_tx_per_s, report.ratio) {
            println!("  unreplicated        {:>12.0} tx/s", base);
            println!(
                "  ratio               {:>12.3}  (overhead {:.1}%, per round {:?})",
                ratio,
                (1.0 - ratio) * 100.0,
                report.round_ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>()
            );
        }
        if let (Some(declared), Some(cost)) = (report.declared_tx_per_s, report.cost_vs_declared) {
            println!("  declared writes     {:>12.0} tx/s (replicated alike, same run)", declared);
            println!(
                "  cost vs declared    {:>12.3}x (per round {:?})",
                cost,
                report.round_costs_vs_declared.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>()
            );
        }
        if let (Some(service), Some(ratio)) = (report.service_tx_per_s, report.service_vs_direct) {
            println!("  through the service {:>12.0} tx/s (replicated alike, same run)", service);
            println!(
                "  service vs direct   {:>12.3}  (per round {:?})",
                ratio,
                report.round_service_vs_direct.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>()
            );
        }
        println!(
            "  commit-to-held      p50 {:.1} us  p99 {:.1} us  p999 {:.1} us",
            report.latency_us.p50, report.latency_us.p99, report.latency_us.p999
        );
        println!(
            "  checkpoints         {:>12.0} /s, {:.0} bytes and {:.1} dirty twin blocks each",
            report.checkpoints_per_s, report.bytes_per_checkpoint, report.dirty_blocks_per_checkpoint
        );
        println!(
            "  backup apply        p50 {:.1} us  p99 {:.1} us;  cut p50 {:.1} us  p99 {:.1} us",
            report.apply_us.p50, report.apply_us.p99, report.cut_us.p50, report.cut_us.p99
        );
        println!("  backup verified     {} ({})", report.backup_verified, report.check);
    }
    if !report.backup_verified {
        bail!("backup verification failed");
    }
    Ok(())
}

fn bench_matrix(args: MatrixArgs) -> anyhow::Result<()> {
    let base = BenchConfig {
        workload: WorkloadKind::DebitCredit,
        backups: 1,
        protocol: UpdateProtocol::Au,
        policy: CommitPolicy::Sync,
        threads: args.threads,
        duration: args.duration,
        compare: true,
        rounds: args.rounds,
        branches: 10,
        warehouses: 1,
        region_base: DEFAULT_REGION_BASE,
        seals: true,
        tracking: None,
        against_declared: false,
        through_service: false,
    };
    let matrix =
        bench::matrix(&base, &[WorkloadKind::DebitCredit, WorkloadKind::OrderEntry], &std::env::current_exe()?)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let markdown = matrix.markdown();
    std::fs::write(args.out.join("matrix.md"), &markdown)?;
    std::fs::write(args.out.join("matrix.json"), serde_json::to_string_pretty(&matrix)?)?;
    std::fs::write(args.out.join("overhead.svg"), matrix.svg())?;
    println!("{markdown}");
    println!("written: {0}/matrix.md, {0}/matrix.json, {0}/overhead.svg", args.out.display());
    Ok(())
}

fn bench_tracking(args: TrackingArgs) -> anyhow::Result<()> {
    use nonstop_bench::tracking::{self as tracking_bench, TrackingBenchConfig};
    if args.pages == 0 {
        bail!("--pages must be at least 1");
    }
    let config = TrackingBenchConfig { pages: args.pages, repeats: args.repeats, region_base: DEFAULT_REGION_BASE };
    let report = tracking_bench::run(&config, |step| eprintln!("tracking bench: {step}"))?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let markdown = report.markdown();
    std::fs::write(args.out.join("tracking.md"), &markdown)?;
    std::fs::write(args.out.join("tracking.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(args.out.join("tracking.svg"), report.svg())?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{markdown}");
        println!("written: {0}/tracking.md, {0}/tracking.json, {0}/tracking.svg", args.out.display());
    }
    Ok(())
}

fn bench_net(args: NetArgs) -> anyhow::Result<()> {
    let key = KeyFile::generate()?;
    let backup = LocalBackup::spawn(&std::env::current_exe()?, "127.0.0.2", DEFAULT_REGION_BASE, 1 << 20, &key.path)?;
    let histogram = nonstop_net::rtt::measure(backup.addr, &key.key, args.count, args.size)?;
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    if args.json {
        let value = serde_json::json!({
            "payload_bytes": args.size,
            "count": args.count,
            "rtt_us": { "p50": us(0.5), "p99": us(0.99), "p999": us(0.999) },
        });
        println!("{value}");
    } else {
        println!(
            "replication transport round trip ({} B, {} pings): p50 {:.1} us  p99 {:.1} us  p999 {:.1} us",
            args.size,
            args.count,
            us(0.5),
            us(0.99),
            us(0.999)
        );
    }
    Ok(())
}

fn demo(clients: u64) -> anyhow::Result<()> {
    println!("nonstop demo: the bank service (Debit-Credit, exactly-once requests) on 3 node processes,");
    println!("AU protocol, a checkpoint every 1 ms, answers held until the backup holds them.\n");
    let spec = nonstop_testbed::cluster::ClusterSpec::default();
    let report =
        nonstop_testbed::demo::run(&std::env::current_exe()?, &spec, clients, 2, true, &mut std::io::stdout())?;
    let verdict = &report.verdict;
    let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64() * 1e3));
    println!("| failover | killed | promoted | term | detected ms | promoted ms | first ack ms | re-protected ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, f) in report.failovers.iter().enumerate() {
        println!(
            "| {} | node {} | node {} | {} | {} | {} | {} | {} |",
            i + 1,
            f.killed,
            f.promoted,
            f.term,
            ms(f.detected),
            ms(f.promoted_at),
            ms(f.first_ack),
            ms(f.protected)
        );
    }
    if let Some(s) = &report.switchover {
        println!(
            "\nswitchover node {} -> node {} (term {}): committed in {:.1} ms, longest time without an answer {:.1} ms",
            s.from,
            s.to,
            s.term,
            s.committed.as_secs_f64() * 1e3,
            s.downtime.as_secs_f64() * 1e3
        );
    }
    println!();
    print_verdict(&verdict.check, &verdict.report, true);
    println!("{:.1} s in all", report.elapsed.as_secs_f64());
    if !verdict.clean() {
        bail!("the demo found a violation; keep the cluster with NONSTOP_KEEP_CLUSTER=1 and read the node logs");
    }
    Ok(())
}
