//! `nonstop bench`: the failure-free cost of replication on the in-memory transaction
//! benchmarks of Christodoulopoulou et al. (PPoPP 2006).
//!
//! Transactions are issued back to back in-process, as fast as possible, as there. Under the
//! sync policy each worker waits for its commit's checkpoint to be held before the next
//! transaction; under epochs it does not — its replies do, and the commit-to-held latency of
//! every transaction is recorded from the moment the backups held its checkpoint. After every
//! replicated round the backups' images are compared with the primary's and checked with the
//! workload's consistency check.

pub mod active;
pub mod clients;
pub mod tracking;
pub mod versus_redis;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use nonstop_net::{Primary, PrimaryConfig, ReplicationStats};
use nonstop_proto::primary::Ticket;
use nonstop_proto::{CheckpointId, CommitPolicy, PAGE_SIZE, Term, UpdateProtocol};
use nonstop_region::tracking::TrackingMode;
use nonstop_region::{Mirror, Region};
use nonstop_testbed::local::{KeyFile, LocalBackup};
use nonstop_workloads::Workload;
use nonstop_workloads::bank::BankThroughService;
use nonstop_workloads::debit_credit::DebitCredit;
use nonstop_workloads::order_entry::OrderEntry;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// The workloads `nonstop bench` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadKind {
    /// Debit-Credit (TPC-B shape).
    DebitCredit,
    /// Order-Entry (TPC-C shape).
    OrderEntry,
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The workload.
    pub workload: WorkloadKind,
    /// Backups (0: unreplicated).
    pub backups: usize,
    /// Update protocol.
    pub protocol: UpdateProtocol,
    /// Commit policy.
    pub policy: CommitPolicy,
    /// Worker threads issuing transactions.
    pub threads: usize,
    /// Length of each round.
    pub duration: Duration,
    /// Alternate unreplicated and replicated rounds and report the ratio.
    pub compare: bool,
    /// Rounds of each configuration with `compare`.
    pub rounds: usize,
    /// Debit-Credit branches (100,000 accounts each).
    pub branches: u64,
    /// Order-Entry warehouses.
    pub warehouses: u64,
    /// Virtual address of the region in the primary and every backup.
    pub region_base: usize,
    /// Check and seal every line the primary's transactions touch (as nodes always do);
    /// `false` measures what that costs.
    pub seals: bool,
    /// How writes are found: `None` declares them (transactions); a mode runs the same
    /// transactions in transparent mode, where the kernel finds the written pages (DU only;
    /// the unreplicated baseline then writes the region plainly, without tracking).
    pub tracking: Option<TrackingMode>,
    /// With `compare` and a tracking mode: also run the same transactions with declared
    /// writes, replicated alike, in alternation with the other two, and report what the
    /// tracking mode costs against them (`cost_vs_declared`), measured side by side.
    pub against_declared: bool,
    /// With `compare` (Debit-Credit, replicated): alternate the transactions called directly
    /// with the same transactions through the bank service as a node runs it (request encoded,
    /// client table, reply encoded), and report what the service path costs
    /// (`service_vs_direct`).
    pub through_service: bool,
}

/// Percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
}

impl Percentiles {
    fn of_ns(histogram: &Histogram<u64>) -> Percentiles {
        let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        Percentiles { p50: us(0.5), p99: us(0.99), p999: us(0.999) }
    }
}

/// The result of `nonstop bench <workload>`; `--json` prints it as one object.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// Workload name.
    pub workload: String,
    /// Backups.
    pub backups: usize,
    /// "du" or "au".
    pub protocol: String,
    /// "sync" or "epoch".
    pub policy: String,
    /// How writes were found: "declared", "uffd" or "mprotect".
    pub tracking: String,
    /// Epoch interval in milliseconds (null under sync).
    pub interval_ms: Option<f64>,
    /// Worker threads.
    pub threads: usize,
    /// Seconds per round.
    pub duration_s: f64,
    /// Transactions per second of the measured configuration.
    pub tx_per_s: f64,
    /// Commit-to-held latency (replies' wait), microseconds.
    pub latency_us: Percentiles,
    /// Checkpoints per second.
    pub checkpoints_per_s: f64,
    /// Region bytes of changes per checkpoint.
    pub bytes_per_checkpoint: f64,
    /// Dirty twin blocks (64-byte lines) per checkpoint (DU).
    pub dirty_blocks_per_checkpoint: f64,
    /// Backup apply time per checkpoint, microseconds.
    pub apply_us: Percentiles,
    /// Time a cut held transactions off, microseconds.
    pub cut_us: Percentiles,
    /// Every backup's image equalled the primary's at the last checkpoint and passed the
    /// workload's consistency check (true when there are no backups).
    pub backup_verified: bool,
    /// The consistency check's summary on the last backup verified.
    pub check: String,
    /// Unreplicated transactions per second (with `--compare`).
    pub baseline_tx_per_s: Option<f64>,
    /// Replicated over unreplicated throughput (with `--compare`).
    pub ratio: Option<f64>,
    /// Rounds of each configuration (with `--compare`).
    pub rounds: Option<usize>,
    /// Each round's replicated/unreplicated ratio (with `--compare`).
    pub round_ratios: Vec<f64>,
    /// Replicated transactions per second with declared writes, in the same run (with
    /// `--against-declared`).
    pub declared_tx_per_s: Option<f64>,
    /// Declared over tracked throughput: how many times the declared path's cost per
    /// transaction the tracking mode pays (with `--against-declared`).
    pub cost_vs_declared: Option<f64>,
    /// Each round's declared/tracked throughput (with `--against-declared`).
    pub round_costs_vs_declared: Vec<f64>,
    /// Replicated transactions per second through the bank service, in the same run (with
    /// `--through-service`; `tx_per_s` is then the same transactions called directly).
    pub service_tx_per_s: Option<f64>,
    /// Through the service over called directly (with `--through-service`): 1.0 means the
    /// service path costs nothing.
    pub service_vs_direct: Option<f64>,
    /// Each round's service/direct throughput (with `--through-service`).
    pub round_service_vs_direct: Vec<f64>,
    /// Width of a [`RoundTimeline`] window, milliseconds.
    pub timeline_step_ms: f64,
    /// Every round's throughput over time, in the order the rounds ran: where a ratio moves
    /// from run to run, this shows whether whole rounds or moments within them moved.
    pub timelines: Vec<RoundTimeline>,
}

/// One round's transactions per second, window by window.
#[derive(Clone, Debug, Serialize)]
pub struct RoundTimeline {
    /// "unreplicated", "replicated" or "declared" (the replicated configuration with
    /// declared writes, with `--against-declared`).
    pub configuration: String,
    /// The round's place in the run, from 1.
    pub round: usize,
    /// Transactions per second in each [`BenchReport::timeline_step_ms`] window (a last
    /// window shorter than half a step is left out).
    pub tx_per_s: Vec<f64>,
}

/// The window of a round's timeline.
const TIMELINE_STEP: Duration = Duration::from_millis(100);

impl BenchReport {
    /// The timelines as a line chart (SVG), rounds end to end on one time axis: one line per
    /// configuration, broken between its rounds.
    pub fn timeline_svg(&self) -> String {
        let step_s = self.timeline_step_ms / 1000.0;
        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        let mut at = 0.0;
        for timeline in &self.timelines {
            let index = match series.iter().position(|(name, _)| *name == timeline.configuration) {
                Some(index) => index,
                None => {
                    series.push((timeline.configuration.clone(), Vec::new()));
                    series.len() - 1
                }
            };
            let points = &mut series[index].1;
            if !points.is_empty() {
                points.push((at, f64::NAN));
            }
            for (window, rate) in timeline.tx_per_s.iter().enumerate() {
                points.push((at + (window as f64 + 0.5) * step_s, rate / 1e6));
            }
            at += timeline.tx_per_s.len() as f64 * step_s;
        }
        let title = format!(
            "{}, {} {} {}, {} backup(s): throughput every {} ms, rounds end to end",
            self.workload,
            self.protocol,
            self.policy,
            self.interval_ms.map_or(String::new(), |ms| format!("{ms} ms")),
            self.backups,
            self.timeline_step_ms
        );
        nonstop_testbed::chart::lines(&title, "seconds of measurement", "M transactions/s", &series)
    }
}

/// What one round of a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arm {
    /// No backups (with a tracking mode: plain writes, nothing tracked).
    Unreplicated,
    /// The configuration asked for.
    Replicated,
    /// The configuration asked for with declared writes instead of its tracking mode.
    Declared,
    /// The configuration asked for, its transactions through the bank service.
    Service,
}

impl Arm {
    fn name(self) -> &'static str {
        match self {
            Arm::Unreplicated => "unreplicated",
            Arm::Replicated => "replicated",
            Arm::Declared => "declared",
            Arm::Service => "service",
        }
    }
}

struct Round {
    transactions: u64,
    elapsed: Duration,
    /// Transactions committed in each [`TIMELINE_STEP`] of the round.
    timeline: Vec<u64>,
    latency_ns: Histogram<u64>,
    stats: Option<ReplicationStats>,
    verdict: Option<String>,
}

/// Protocol name as on the command line.
pub fn protocol_name(protocol: UpdateProtocol) -> &'static str {
    match protocol {
        UpdateProtocol::Du => "du",
        UpdateProtocol::Au => "au",
    }
}

fn workload(config: &BenchConfig) -> Arc<dyn Workload> {
    match config.workload {
        WorkloadKind::DebitCredit => Arc::new(DebitCredit::new(config.branches, config.threads)),
        WorkloadKind::OrderEntry => Arc::new(OrderEntry::new(config.warehouses, config.threads)),
    }
}

/// Region length for a workload: its used bytes rounded up to MiB.
pub fn region_len(workload: &dyn Workload) -> usize {
    workload.used_len().next_multiple_of(1 << 20).max(PAGE_SIZE)
}

/// Runs the benchmark; backups are started as child processes of `exe` on 127.0.0.2, .3, ….
pub fn run(config: &BenchConfig, exe: &Path) -> anyhow::Result<BenchReport> {
    if config.threads == 0 {
        bail!("--threads must be at least 1");
    }
    if let Some(mode) = config.tracking
        && config.protocol != UpdateProtocol::Du
    {
        bail!("--tracking {mode} ships DU diffs of the pages the kernel saw written: use --protocol du");
    }
    if config.through_service
        && (!config.compare || config.backups == 0 || config.workload != WorkloadKind::DebitCredit)
    {
        bail!(
            "--through-service compares replicated Debit-Credit with and without the service: give --compare and --backups 1 or more"
        );
    }
    let service = config.through_service.then(|| Arc::new(BankThroughService::new(config.branches, config.threads)));
    let workload: Arc<dyn Workload> = match &service {
        Some(service) => Arc::new(service.direct()),
        None => workload(config),
    };
    let len = service.as_ref().map_or(region_len(workload.as_ref()), |s| region_len(s.as_ref()));
    let key = KeyFile::generate().context("writing a temporary cluster key")?;
    let backups: Vec<LocalBackup> = (0..config.backups)
        .map(|i| LocalBackup::spawn(exe, &format!("127.0.0.{}", i + 2), config.region_base, len, &key.path))
        .collect::<Result<_, _>>()
        .context("starting backup processes")?;
    let addrs: Vec<SocketAddr> = backups.iter().map(|b| b.addr).collect();

    if config.against_declared && (!config.compare || config.tracking.is_none()) {
        bail!(
            "--against-declared compares a tracking mode with declared writes: give --compare and --tracking uffd|mprotect"
        );
    }
    let plan: Vec<Arm> = if config.compare {
        if config.backups == 0 {
            bail!("--compare measures replication against none: give --backups 1 or more");
        }
        let round: &[Arm] = if config.through_service {
            &[Arm::Replicated, Arm::Service]
        } else if config.against_declared {
            &[Arm::Unreplicated, Arm::Replicated, Arm::Declared]
        } else {
            &[Arm::Unreplicated, Arm::Replicated]
        };
        round.iter().copied().cycle().take(config.rounds.max(1) * round.len()).collect()
    } else if config.backups > 0 {
        vec![Arm::Replicated]
    } else {
        vec![Arm::Unreplicated]
    };
    let declared = BenchConfig { tracking: None, ..config.clone() };
    let progress = ProgressBar::new((plan.len() as u64) * config.duration.as_millis() as u64);
    progress.set_style(
        ProgressStyle::with_template("{spinner} {msg:40} [{bar:30}] {elapsed}/{duration}").expect("valid template"),
    );
    let (mut baseline, mut replicated, mut with_declared, mut serviced) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut timelines = Vec::new();
    for (index, &arm) in plan.iter().enumerate() {
        let name = arm.name();
        progress.set_message(format!("round {}/{}: {name}", index + 1, plan.len()));
        let round = run_round(
            if arm == Arm::Declared { &declared } else { config },
            match (&service, arm) {
                (Some(service), Arm::Service) => service.clone(),
                _ => workload.clone(),
            },
            len,
            if arm == Arm::Unreplicated { &[] } else { &addrs },
            &key.key,
            Term(index as u64 + 1), // every round is a new primary of the service: a new term
            &progress,
        )?;
        if progress.is_hidden() {
            // No terminal to draw a bar on (CI, a pipe): a plain line per round instead.
            eprintln!("round {}/{} {name}: {:.0} tx/s", index + 1, plan.len(), rate(std::slice::from_ref(&round)));
        }
        timelines.push(RoundTimeline {
            configuration: name.to_string(),
            round: index + 1,
            tx_per_s: window_rates(&round.timeline, round.elapsed),
        });
        match arm {
            Arm::Unreplicated => baseline.push(round),
            Arm::Replicated => replicated.push(round),
            Arm::Declared => with_declared.push(round),
            Arm::Service => serviced.push(round),
        }
    }
    progress.finish_and_clear();
    drop(backups);
    let mut report = report(config, workload.name(), &baseline, &replicated);
    report.timelines = timelines;
    // Every declared round is verified like the others; the report's verdict covers them too.
    report.backup_verified &= with_declared.iter().chain(&serviced).all(|r| r.verdict.is_some());
    if !serviced.is_empty() {
        report.service_tx_per_s = Some(rate(&serviced));
        report.service_vs_direct = Some(rate(&serviced) / rate(&replicated));
        report.round_service_vs_direct = round_ratios(&serviced, &replicated);
    }
    if !with_declared.is_empty() {
        report.declared_tx_per_s = Some(rate(&with_declared));
        report.cost_vs_declared = Some(rate(&with_declared) / rate(&replicated));
        report.round_costs_vs_declared = round_ratios(&with_declared, &replicated);
    }
    Ok(report)
}

/// Transactions per second in each window of a round that lasted `elapsed`.
fn window_rates(counts: &[u64], elapsed: Duration) -> Vec<f64> {
    let step = TIMELINE_STEP.as_secs_f64();
    counts
        .iter()
        .enumerate()
        .filter_map(|(window, &count)| {
            let width = (elapsed.as_secs_f64() - window as f64 * step).min(step);
            (width >= step / 2.0).then(|| count as f64 / width)
        })
        .collect()
}

/// Each round of `over`'s rate divided by the round of `under` it alternated with.
fn round_ratios(over: &[Round], under: &[Round]) -> Vec<f64> {
    over.iter().zip(under).map(|(o, u)| rate(std::slice::from_ref(o)) / rate(std::slice::from_ref(u))).collect()
}

fn rate(rounds: &[Round]) -> f64 {
    let transactions: u64 = rounds.iter().map(|r| r.transactions).sum();
    let seconds: f64 = rounds.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    if seconds > 0.0 { transactions as f64 / seconds } else { 0.0 }
}

fn report(config: &BenchConfig, name: &str, baseline: &[Round], replicated: &[Round]) -> BenchReport {
    let measured = if replicated.is_empty() { baseline } else { replicated };
    let mut latency = Histogram::<u64>::new(3).expect("valid precision");
    let mut apply = Histogram::<u64>::new(3).expect("valid precision");
    let mut cut = Histogram::<u64>::new(3).expect("valid precision");
    let (mut checkpoints, mut bytes, mut pages) = (0u64, 0u64, 0u64);
    for round in measured {
        latency.add(&round.latency_ns).expect("same precision");
        if let Some(stats) = &round.stats {
            apply.add(&stats.apply_ns).expect("same precision");
            cut.add(&stats.cut_ns).expect("same precision");
            checkpoints += stats.checkpoints;
            bytes += stats.change_bytes;
            pages += stats.dirty_blocks;
        }
    }
    let seconds: f64 = measured.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    let per_checkpoint = |x: u64| {
        if checkpoints > 0 { x as f64 / checkpoints as f64 } else { 0.0 }
    };
    let verdicts: Vec<&Round> = measured.iter().filter(|r| r.stats.is_some()).collect();
    let backup_verified = verdicts.iter().all(|r| r.verdict.is_some());
    let check = verdicts.last().and_then(|r| r.verdict.clone()).unwrap_or_else(|| "no backups".into());
    let compare = config.compare && !baseline.is_empty() && !replicated.is_empty();
    BenchReport {
        workload: name.to_string(),
        backups: config.backups,
        protocol: protocol_name(config.protocol).into(),
        policy: match config.policy {
            CommitPolicy::Sync => "sync".into(),
            CommitPolicy::Epoch { .. } => "epoch".into(),
        },
        tracking: config.tracking.map_or("declared", TrackingMode::name).into(),
        interval_ms: match config.policy {
            CommitPolicy::Sync => None,
            CommitPolicy::Epoch { interval_us, .. } => Some(interval_us as f64 / 1000.0),
        },
        threads: config.threads,
        duration_s: config.duration.as_secs_f64(),
        tx_per_s: rate(measured),
        latency_us: Percentiles::of_ns(&latency),
        checkpoints_per_s: if seconds > 0.0 { checkpoints as f64 / seconds } else { 0.0 },
        bytes_per_checkpoint: per_checkpoint(bytes),
        dirty_blocks_per_checkpoint: per_checkpoint(pages),
        apply_us: Percentiles::of_ns(&apply),
        cut_us: Percentiles::of_ns(&cut),
        backup_verified,
        check,
        baseline_tx_per_s: compare.then(|| rate(baseline)),
        ratio: compare.then(|| rate(replicated) / rate(baseline)),
        rounds: compare.then_some(replicated.len()),
        round_ratios: if compare { round_ratios(replicated, baseline) } else { Vec::new() },
        declared_tx_per_s: None,
        cost_vs_declared: None,
        round_costs_vs_declared: Vec::new(),
        service_tx_per_s: None,
        service_vs_direct: None,
        round_service_vs_direct: Vec::new(),
        timeline_step_ms: TIMELINE_STEP.as_secs_f64() * 1000.0,
        timelines: Vec::new(),
    }
}

/// Commit instants waiting for their checkpoint to be held, per worker.
///
/// Reading the clock for every transaction would cost a measurable share of a sub-microsecond
/// transaction, so a worker reads it before every [`STAMP_EVERY`] transactions and charges
/// each of them from that instant: latencies are overestimated by at most the time of that
/// many transactions, never underestimated.
struct PendingReplies {
    /// (checkpoint, commit instant no later than the commits, number of commits)
    queue: VecDeque<(CheckpointId, Instant, u64)>,
    last: Option<(CheckpointId, Instant)>,
}

const STAMP_EVERY: u64 = 16;

impl PendingReplies {
    fn push(&mut self, checkpoint: CheckpointId, stamp: Instant) {
        match self.queue.back_mut() {
            Some((c, s, count)) if *c == checkpoint && *s == stamp => *count += 1,
            _ => self.queue.push_back((checkpoint, stamp, 1)),
        }
    }

    fn drain(&mut self, primary: &Primary, latency: &mut Histogram<u64>) {
        let Some(held) = primary.held() else { return };
        while let Some(&(checkpoint, committed, count)) = self.queue.front() {
            if checkpoint > held {
                break;
            }
            let held_at = match self.last {
                Some((cached, at)) if cached == checkpoint => at,
                _ => {
                    let at = primary.held_at(checkpoint).unwrap_or_else(Instant::now);
                    self.last = Some((checkpoint, at));
                    at
                }
            };
            let ns = held_at.saturating_duration_since(committed).as_nanos().max(1) as u64;
            let _ = latency.record_n(ns, count);
            self.queue.pop_front();
        }
    }
}

fn run_round(
    config: &BenchConfig,
    workload: Arc<dyn Workload>,
    len: usize,
    backups: &[SocketAddr],
    key: &nonstop_proto::auth::ClusterKey,
    term: Term,
    progress: &ProgressBar,
) -> anyhow::Result<Round> {
    let mut region = Region::map(config.region_base, len).context("mapping the primary's region")?;
    if config.tracking.is_none() {
        // Resident before the clock starts, as a backup's image is: otherwise the round's first
        // ~100-200 ms go to the kernel finding and zeroing the pages its transactions touch
        // first (a fresh region every round), a warm-up that falls on either configuration at
        // random and spreads the round ratios. Tracked regions stay as mapped: their 4 KiB
        // pages are set up by the tracking mode.
        region.populate().context("making the primary's region resident")?;
    }
    let replicated = !backups.is_empty();
    let protocol = replicated.then_some(config.protocol);
    let mirror = Arc::new(match (config.tracking, replicated, config.seals) {
        (Some(mode), true, _) => Mirror::tracked(region, Some(mode), CheckpointId(1))?,
        (Some(_), false, _) => Mirror::transparent_unreplicated(region, CheckpointId(1)),
        (None, _, true) => Mirror::new(region, protocol, CheckpointId(1)),
        (None, _, false) => Mirror::unsealed(region, protocol, CheckpointId(1)),
    });
    workload.load(&mirror);
    let primary = replicated.then(|| {
        Primary::start(
            mirror.clone(),
            PrimaryConfig { term, policy: config.policy, required_backups: backups.len(), key: key.clone() },
        )
    });
    if let Some(primary) = &primary {
        for addr in backups {
            primary.attach_backup(*addr, WAIT).with_context(|| format!("attaching backup {addr}"))?;
        }
    }
    let stats_before = primary.as_ref().map(|p| p.stats());
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (latency_ns, timeline) = std::thread::scope(|scope| -> anyhow::Result<(Histogram<u64>, Vec<u64>)> {
        let workers: Vec<_> = (0..config.threads)
            .map(|worker| {
                let (mirror, workload, primary, stop) = (&mirror, &workload, &primary, &stop);
                scope.spawn(move || -> anyhow::Result<(Histogram<u64>, Vec<u64>)> {
                    let mut rng = SmallRng::seed_from_u64(worker as u64 + 1);
                    let mut latency = Histogram::<u64>::new(3).expect("valid precision");
                    let mut pending = PendingReplies { queue: VecDeque::new(), last: None };
                    let (mut done, mut counted) = (0u64, 0u64);
                    let mut timeline: Vec<u64> = Vec::new();
                    let mut stamp = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..64 {
                            let sync = config.policy == CommitPolicy::Sync;
                            if sync || done.is_multiple_of(STAMP_EVERY) {
                                stamp = Instant::now();
                            }
                            let ticket: Ticket = workload.run_one(mirror, worker, &mut rng);
                            done += 1;
                            let Some(primary) = primary else { continue };
                            if sync {
                                primary.wait_held(ticket, WAIT)?;
                                let _ = latency.record(stamp.elapsed().as_nanos().max(1) as u64);
                            } else {
                                pending.push(ticket.checkpoint, stamp);
                            }
                        }
                        if let Some(primary) = primary {
                            pending.drain(primary, &mut latency);
                        }
                        // The stamp is at most STAMP_EVERY transactions old: no clock read here
                        // (and a float division, not a 128-bit one, every 64 transactions).
                        let window = (stamp.saturating_duration_since(started).as_secs_f64()
                            / TIMELINE_STEP.as_secs_f64()) as usize;
                        if timeline.len() <= window {
                            timeline.resize(window + 1, 0);
                        }
                        timeline[window] += done - counted;
                        counted = done;
                    }
                    if let Some(primary) = primary
                        && let Some(&(last, _, _)) = pending.queue.back()
                    {
                        primary.wait_held(Ticket { checkpoint: last }, WAIT)?;
                        pending.drain(primary, &mut latency);
                    }
                    Ok((latency, timeline))
                })
            })
            .collect();
        let position = progress.position();
        while started.elapsed() < config.duration {
            std::thread::sleep(Duration::from_millis(50));
            progress.set_position(position + started.elapsed().as_millis().min(config.duration.as_millis()) as u64);
        }
        stop.store(true, Ordering::Relaxed);
        let mut merged = Histogram::<u64>::new(3).expect("valid precision");
        let mut timeline: Vec<u64> = Vec::new();
        for worker in workers {
            let (latency, counts) = worker.join().expect("worker thread panicked")?;
            merged.add(latency).expect("same precision");
            if timeline.len() < counts.len() {
                timeline.resize(counts.len(), 0);
            }
            timeline.iter_mut().zip(counts).for_each(|(total, count)| *total += count);
        }
        Ok((merged, timeline))
    })?;
    let elapsed = started.elapsed();
    let mut round =
        Round { transactions: timeline.iter().sum(), elapsed, timeline, latency_ns, stats: None, verdict: None };
    if let Some(primary) = primary {
        let mut stats = primary.stats();
        if let Some(before) = stats_before {
            stats.checkpoints -= before.checkpoints;
            stats.change_bytes -= before.change_bytes;
            stats.dirty_blocks -= before.dirty_blocks;
        }
        let last = primary.checkpoint_now();
        primary.wait_held(Ticket { checkpoint: last }, WAIT).context("waiting for the final checkpoint")?;
        round.verdict = Some(verify(&primary, workload.as_ref())?);
        round.stats = Some(stats);
        primary.shutdown();
    }
    Ok(round)
}

/// Compares every backup's image with the primary's at the last checkpoint and runs the
/// workload's consistency check on it; returns the check's summary.
pub fn verify(primary: &Primary, workload: &dyn Workload) -> anyhow::Result<String> {
    Ok(verify_images(primary, workload.used_len(), Some(workload.name()))?.unwrap_or_default())
}

/// Compares the first `used` bytes of every backup's image with the primary's at the last
/// checkpoint, and runs the consistency check named `check` on them if one is; returns the
/// check's summary.
pub(crate) fn verify_images(primary: &Primary, used: usize, check: Option<&str>) -> anyhow::Result<Option<String>> {
    let (digest, checkpoint) =
        primary.mirror().quiesced(|image, checkpoint| (*blake3::hash(&image[..used]).as_bytes(), checkpoint));
    let replies = primary.verify_backups(used as u64, check, WAIT)?;
    let mut summary = None;
    for (backup, reply) in replies {
        if reply.digest != digest {
            bail!(
                "backup {} image differs from the primary's at {:?} (backup holds checkpoint {:?})",
                backup.0,
                checkpoint,
                reply.checkpoint
            );
        }
        match (reply.check, check) {
            (Some(Ok(text)), _) => summary = Some(text),
            (Some(Err(violation)), _) => bail!("backup {} image fails the consistency check: {violation}", backup.0),
            (None, Some(_)) => bail!("backup {} did not run the consistency check", backup.0),
            (None, None) => {}
        }
    }
    Ok(summary)
}

/// The commit policies of the overhead table, in its column order.
pub fn table_policies() -> Vec<(String, CommitPolicy)> {
    let mut policies = vec![("sync".to_string(), CommitPolicy::Sync)];
    for (label, interval_us) in [("1 ms", 1_000), ("10 ms", 10_000), ("100 ms", 100_000), ("2 s", 2_000_000)] {
        policies.push((label.to_string(), CommitPolicy::Epoch { interval_us, max_commits: 0 }));
    }
    policies
}

/// The overhead table: every workload × protocol × policy, each measured side by side with
/// the unreplicated baseline (`--compare`).
#[derive(Clone, Debug, Serialize)]
pub struct Matrix {
    /// Raw round trip of the transport, microseconds.
    pub rtt_us: Percentiles,
    /// One report per configuration.
    pub reports: Vec<BenchReport>,
}

/// Runs the overhead table. `base` supplies threads, rounds, duration, sizes and the region
/// address; each epoch configuration runs at least three intervals per round.
pub fn matrix(base: &BenchConfig, workloads: &[WorkloadKind], exe: &Path) -> anyhow::Result<Matrix> {
    let rtt_us = {
        let key = KeyFile::generate()?;
        let backup = LocalBackup::spawn(exe, "127.0.0.2", base.region_base, 1 << 20, &key.path)?;
        Percentiles::of_ns(&nonstop_net::rtt::measure(backup.addr, &key.key, 20_000, 64)?)
    };
    let mut reports = Vec::new();
    for &workload in workloads {
        for protocol in [UpdateProtocol::Du, UpdateProtocol::Au] {
            for (label, policy) in table_policies() {
                let minimum = match policy {
                    CommitPolicy::Epoch { interval_us, .. } => Duration::from_micros(3 * interval_us),
                    CommitPolicy::Sync => Duration::ZERO,
                };
                let config = BenchConfig {
                    workload,
                    protocol,
                    policy,
                    compare: true,
                    backups: base.backups.max(1),
                    duration: base.duration.max(minimum),
                    ..base.clone()
                };
                eprintln!("{:?} {} {label}", workload, protocol_name(protocol));
                reports.push(run(&config, exe)?);
            }
        }
    }
    Ok(Matrix { rtt_us, reports })
}

impl Matrix {
    /// The table in Markdown: overhead % (1 - ratio) per workload and protocol (rows) and
    /// policy (columns), then sync latency against the raw round trip.
    pub fn markdown(&self) -> String {
        let policies = table_policies();
        let mut out = String::from("| workload | protocol |");
        for (label, _) in &policies {
            out.push_str(&format!(" {label} |"));
        }
        out.push_str("\n|---|---|");
        out.push_str(&"---:|".repeat(policies.len()));
        out.push('\n');
        for (workload, protocol, cells) in self.rows() {
            out.push_str(&format!("| {workload} | {protocol} |"));
            for cell in cells {
                out.push_str(&match cell {
                    Some(report) => {
                        format!(" {:.1}% ({:.0} tx/s) |", (1.0 - report.ratio.unwrap_or(0.0)) * 100.0, report.tx_per_s)
                    }
                    None => " - |".into(),
                });
            }
            out.push('\n');
        }
        out.push_str(&format!(
            "\nRaw round trip (bench net, 64 B): p50 {:.1} us, p99 {:.1} us.\n",
            self.rtt_us.p50, self.rtt_us.p99
        ));
        for report in self.reports.iter().filter(|r| r.policy == "sync") {
            out.push_str(&format!(
                "Sync commit-to-held, {} {}: p50 {:.1} us ({:.2}x RTT p50), p99 {:.1} us.\n",
                report.workload,
                report.protocol,
                report.latency_us.p50,
                report.latency_us.p50 / self.rtt_us.p50.max(f64::MIN_POSITIVE),
                report.latency_us.p99
            ));
        }
        out
    }

    fn rows(&self) -> Vec<(String, String, Vec<Option<&BenchReport>>)> {
        let mut rows: Vec<(String, String, Vec<Option<&BenchReport>>)> = Vec::new();
        let policies = table_policies();
        for report in &self.reports {
            let column = policies.iter().position(|(_, policy)| match policy {
                CommitPolicy::Sync => report.policy == "sync",
                CommitPolicy::Epoch { interval_us, .. } => {
                    report.interval_ms.is_some_and(|ms| (ms * 1000.0).round() as u64 == *interval_us)
                }
            });
            let Some(column) = column else { continue };
            let index = match rows.iter().position(|(w, p, _)| *w == report.workload && *p == report.protocol) {
                Some(index) => index,
                None => {
                    rows.push((report.workload.clone(), report.protocol.clone(), vec![None; policies.len()]));
                    rows.len() - 1
                }
            };
            rows[index].2[column] = Some(report);
        }
        rows
    }

    /// The overhead table as a grouped bar chart (SVG).
    pub fn svg(&self) -> String {
        let categories: Vec<String> = table_policies().into_iter().map(|(label, _)| label).collect();
        let series: Vec<nonstop_testbed::chart::Series> = self
            .rows()
            .into_iter()
            .map(|(workload, protocol, cells)| nonstop_testbed::chart::Series {
                name: format!("{workload} {protocol}"),
                values: cells.iter().map(|c| c.and_then(|r| r.ratio).map(|ratio| (1.0 - ratio) * 100.0)).collect(),
            })
            .collect();
        nonstop_testbed::chart::grouped_bars(
            "Replication overhead against no replication (1 backup)",
            "overhead % (1 - ratio)",
            &categories,
            &series,
            10.0,
        )
    }
}
