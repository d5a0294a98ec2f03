//! `nonstop chaos --netns KIND`: a cluster whose nodes and clients have hosts of their own
//! ([`crate::netns`]), every peer link through a fault proxy ([`crate::fault_proxy`]); trial
//! after trial one fault — a kill, a pause longer than the failure timeout, a partition, a lossy
//! and slow network — under client load, then healing and waiting for the service to be
//! protected again. At the end the history checker ([`crate::history`]) judges every operation.

use super::Traffic;
use super::inject::{Injection, InjectionCounts, Site, flip_in_region, tally, watch_flip, with_history};
use super::soak::{SoakReport, SoakSampler};
use super::{Millis, millis};
use crate::cluster::{ClusterSpec, LocalCluster, protected_service, service as service_of};
use crate::fault_proxy::{FaultProxy, LinkFaults};
use crate::history::{CheckReport, Violations};
use crate::netns::Testbed;
use nonstop_net::detections::DetectionCounts;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rustix::process::Signal;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Which faults a run injects (also the values of `nonstop chaos --netns`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL of the primary, of a backup or of the control-plane leader.
    Kill,
    /// SIGSTOP of the primary for longer than the failure timeout, then SIGCONT.
    Pause,
    /// The primary cut from its backups, from everyone, one way, or from the control-plane
    /// majority.
    Partition,
    /// Packet loss, delay, jitter and re-segmentation on the replication links.
    Lossy,
    /// A random sequence of all of the above, sometimes two at once.
    Mixed,
    /// Error injection: bits flipped in frames on the replication links, in the primary's
    /// region and in a backup's image, counted as Iyer's replication lectures count them.
    Bitflip,
}

/// One fault as injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    KillPrimary,
    KillBackup,
    KillLeader,
    PausePrimary,
    PrimaryFromBackups,
    PrimaryIsolated,
    PrimaryOneWay,
    MajorityFromPrimary,
    Lossy,
    FlipWire,
    FlipPrimaryMemory,
    FlipBackupMemory,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillPrimary => "kill-primary",
            Fault::KillBackup => "kill-backup",
            Fault::KillLeader => "kill-leader",
            Fault::PausePrimary => "pause-primary",
            Fault::PrimaryFromBackups => "partition-primary-from-backups",
            Fault::PrimaryIsolated => "partition-primary-isolated",
            Fault::PrimaryOneWay => "partition-primary-one-way",
            Fault::MajorityFromPrimary => "partition-majority-from-primary",
            Fault::Lossy => "lossy",
            Fault::FlipWire => "bitflip-wire",
            Fault::FlipPrimaryMemory => "bitflip-primary-memory",
            Fault::FlipBackupMemory => "bitflip-backup-memory",
        }
    }

    /// Whether this fault may rightly end in a failover: it stops the primary, or cuts it off
    /// from the control-plane majority (`primary_leads`: the leader is the primary, so killing
    /// the leader kills the primary).
    fn may_fail_over(self, primary_leads: bool) -> bool {
        match self {
            Fault::KillPrimary
            | Fault::PausePrimary
            | Fault::PrimaryIsolated
            | Fault::PrimaryOneWay
            | Fault::MajorityFromPrimary
            // A backup that leads the control plane, cut from the primary, rightly fails it
            // over.
            | Fault::PrimaryFromBackups
            | Fault::FlipPrimaryMemory => true,
            Fault::KillLeader => primary_leads,
            Fault::KillBackup | Fault::Lossy | Fault::FlipWire | Fault::FlipBackupMemory => false,
        }
    }

    fn of(kind: FaultKind) -> &'static [Fault] {
        const KILL: &[Fault] = &[Fault::KillPrimary, Fault::KillBackup, Fault::KillLeader];
        const PARTITION: &[Fault] =
            &[Fault::PrimaryFromBackups, Fault::PrimaryIsolated, Fault::PrimaryOneWay, Fault::MajorityFromPrimary];
        const ALL: &[Fault] = &[
            Fault::KillPrimary,
            Fault::KillBackup,
            Fault::KillLeader,
            Fault::PausePrimary,
            Fault::PrimaryFromBackups,
            Fault::PrimaryIsolated,
            Fault::PrimaryOneWay,
            Fault::MajorityFromPrimary,
            Fault::Lossy,
        ];
        match kind {
            FaultKind::Kill => KILL,
            FaultKind::Pause => &[Fault::PausePrimary],
            FaultKind::Partition => PARTITION,
            FaultKind::Lossy => &[Fault::Lossy],
            FaultKind::Mixed => ALL,
            FaultKind::Bitflip => &[Fault::FlipWire, Fault::FlipPrimaryMemory, Fault::FlipBackupMemory],
        }
    }
}

/// How a run is shaped.
#[derive(Clone, Debug)]
pub struct NetnsConfig {
    /// The faults.
    pub kind: FaultKind,
    /// Trials.
    pub trials: u32,
    /// Seed of every random choice (faults, moments, durations, proxy jitter).
    pub seed: u64,
    /// Client threads issuing transfers.
    pub clients: u64,
    /// Reader threads.
    pub readers: u64,
    /// The cluster (its addresses and namespaces are set by the run).
    pub spec: ClusterSpec,
    /// Faults last this long (pauses, partitions, lossy periods): more than the failure
    /// timeout plus the lease, so that the cluster must act.
    pub fault_length: Duration,
    /// Before the trials: run the load this long without faults (any failover is false).
    pub quiet: Duration,
    /// Soak: instead of `trials`, inject a fault every `fault_every` for this long, sampling
    /// every node process's memory, descriptors and threads ([`super::soak`]).
    pub soak: Option<Duration>,
    /// The spacing of faults in a soak (trial runs ignore it: each fault follows the last
    /// one's recovery after a short random pause).
    pub fault_every: Duration,
    /// Who loads the service, and how its history is judged.
    pub clients_kind: super::Clients,
}

/// One trial.
#[derive(Clone, Debug, Serialize)]
pub struct NetnsTrial {
    /// The fault's name.
    pub fault: String,
    /// The node it hit.
    pub target: u64,
    /// The primary when it was injected.
    pub primary: u64,
    /// The control-plane leader when it was injected.
    pub leader: u64,
    /// Faults injected at once (mixed runs sometimes add a lossy network to another fault).
    pub with_lossy: bool,
    /// Injection to the first answer from a newer term (`None`: no failover).
    pub failover_ms: Option<f64>,
    /// The longest time without any answer from injection until healed and protected.
    pub longest_gap_ms: f64,
    /// Terms that began during the trial.
    pub terms: u64,
    /// Whether the service was protected again with every node up within the limit.
    pub recovered: bool,
    /// A failover happened though the fault did not call for one (see
    /// [`NetnsReport::false_failovers`]).
    pub false_failover: bool,
    /// Failovers between the previous trial's end and this one's injection (all false).
    pub failovers_before: u64,
    /// The service's term when the fault was injected.
    pub term_at_injection: u64,
    /// When it was not: every node's status then, for the diagnosis.
    pub stuck: Vec<nonstop_node::status::NodeStatus>,
    /// Error-injection trials: what the flips did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injection: Option<Injection>,
}

/// What a run found.
#[derive(Clone, Debug, Serialize)]
pub struct NetnsReport {
    /// The faults.
    pub kind: FaultKind,
    /// Trials run.
    pub trials: u32,
    /// The seed.
    pub seed: u64,
    /// Every violation the history checker found (the sum of the kinds below).
    pub violations: u64,
    /// Violations by kind.
    #[serde(flatten)]
    pub by_kind: Violations,
    /// The service's consistency check at the end.
    pub check: Result<String, String>,
    /// Injection to the first answer from a newer term, per fault, for trials with a failover.
    pub failover_ms: BTreeMap<String, (u32, Millis)>,
    /// The longest time without answers per trial, per fault.
    pub longest_gap_ms: BTreeMap<String, (u32, Millis)>,
    /// Trials per fault that ended with a failover.
    pub failovers: BTreeMap<String, u32>,
    /// Failovers during the quiet period (all false).
    pub quiet_failovers: u64,
    /// Failovers no fault called for: during the quiet period, between trials, or in a trial
    /// whose fault left the primary reachable by the control-plane majority (a backup or a
    /// non-primary leader killed, a lossy replication network, a flip on the wire or in a
    /// backup's image).
    pub false_failovers: u64,
    /// Trials after which the service was not protected again within the limit.
    pub unrecovered: u32,
    /// Transfers answered.
    pub acknowledged: u64,
    /// Bits flipped and bytes carried by the fault proxies.
    pub proxy_bytes: u64,
    /// The history checker's report (with examples of any violation).
    pub history: CheckReport,
    /// Error injection (`bitflip` runs): Iyer's counts per site, and a `total` row that adds
    /// what the history checker found.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub error_injection: BTreeMap<String, InjectionCounts>,
    /// Why operations were refused (a refused transfer client stops), first few distinct.
    pub refusals: Vec<String>,
    /// Soak runs: every node process's memory, descriptors and threads over the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<SoakReport>,
    /// Every trial.
    pub trial_log: Vec<NetnsTrial>,
}

/// The nodes' peer ports: control, then one replication port per service.
fn peer_ports(services: usize) -> Vec<u16> {
    std::iter::once(7001).chain((0..services as u16).map(|s| 7201 + s)).collect()
}

/// Proxies in every node's namespace, one per peer and peer port.
pub(super) struct Proxies {
    replication: Vec<FaultProxy>,
    control: Vec<FaultProxy>,
}

impl Proxies {
    pub(super) fn start(testbed: &Testbed, services: usize, seed: u64) -> anyhow::Result<Proxies> {
        let mut proxies = Proxies { replication: Vec::new(), control: Vec::new() };
        let nodes = testbed.nodes() as u64;
        for node in 1..=nodes {
            for peer in (1..=nodes).filter(|p| *p != node) {
                for port in peer_ports(services) {
                    let listen = SocketAddr::from(([127, 0, 0, peer as u8], port));
                    let upstream = SocketAddr::from((Testbed::node_ip(peer), port));
                    let namespace = testbed.node_namespace(node);
                    let seed = seed ^ (node << 32) ^ (peer << 16) ^ port as u64;
                    let proxy = FaultProxy::start(listen, upstream, seed, move || {
                        Testbed::enter(&namespace).expect("the testbed's namespace exists");
                    })?;
                    match port {
                        7001 => proxies.control.push(proxy),
                        _ => proxies.replication.push(proxy),
                    }
                }
            }
        }
        Ok(proxies)
    }

    fn set_replication(&self, faults: LinkFaults) {
        for proxy in &self.replication {
            proxy.set(faults);
        }
    }

    fn bit_flips(&self) -> u64 {
        self.replication.iter().map(|p| p.counters().bit_flips.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }

    fn bytes(&self) -> u64 {
        self.replication
            .iter()
            .chain(&self.control)
            .map(|p| p.counters().bytes.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }
}

/// How long the service may take to be protected again after a fault is healed.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);

/// Runs the trials; `progress` is called after each.
pub fn run(exe: &Path, config: &NetnsConfig, mut progress: impl FnMut(&NetnsTrial)) -> anyhow::Result<NetnsReport> {
    let testbed = Testbed::create(config.spec.nodes + config.spec.witnesses)?;
    let all_nodes = (config.spec.nodes + config.spec.witnesses) as u64;
    let namespaces: Vec<String> = (1..=all_nodes).map(|id| testbed.node_namespace(id)).collect();
    let spec = ClusterSpec {
        ip_prefix: "10.77.0".into(),
        namespaces: Some(namespaces),
        allow_faults: false,
        ..config.spec.clone()
    };
    // This thread talks to the nodes as a client does: from the clients' host.
    Testbed::enter(&testbed.client_namespace())?;
    let proxies = Proxies::start(&testbed, spec.services.len(), config.seed)?;
    let mut cluster = LocalCluster::create(exe, &spec)?;
    cluster.start_all()?;
    let all: Vec<u64> = (1..=spec.nodes as u64).collect();
    let name = spec.services[0].0.clone();
    cluster.wait_service_protected(&name, spec.backups as usize, Duration::from_secs(30))?;
    let client_namespace = testbed.client_namespace();
    // A sampled load's process starts from this thread, in the clients' namespace.
    let load =
        Traffic::start(&cluster, &name, config.clients, config.readers, config.clients_kind, config.seed, move |_| {
            Testbed::enter(&client_namespace).expect("the clients' namespace exists");
        })?;
    let (_, quiet_start) = cluster.primary_of(&name, &all);
    std::thread::sleep(config.quiet);
    let (_, quiet_end) = cluster.primary_of(&name, &all);
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let mut trials = Vec::new();
    let mut sampler = config.soak.map(|_| SoakSampler::new(Duration::from_secs(30)));
    let soak_started = Instant::now();
    let mut last_term = quiet_end;
    let mut next_fault = Instant::now();
    loop {
        let done = match config.soak {
            Some(length) => soak_started.elapsed() >= length,
            None => trials.len() as u32 >= config.trials,
        };
        if done {
            break;
        }
        let faults = Fault::of(config.kind);
        let fault = faults[rng.random_range(0..faults.len())];
        let with_lossy = config.kind == FaultKind::Mixed && fault != Fault::Lossy && rng.random_bool(0.2);
        next_fault = next_fault.max(Instant::now() + Duration::from_millis(rng.random_range(50..300)));
        // A soak samples the node processes every second while it waits for the next fault.
        while Instant::now() < next_fault {
            if let Some(sampler) = sampler.as_mut() {
                sampler.sample(&node_processes(&cluster));
            }
            std::thread::sleep(next_fault.saturating_duration_since(Instant::now()).min(Duration::from_secs(1)));
        }
        if config.soak.is_some() {
            next_fault = Instant::now() + config.fault_every;
        }
        let mut trial = run_trial(&mut cluster, &testbed, &proxies, config, &name, &load, &mut rng, fault, with_lossy)?;
        let (_, term_now) = cluster.primary_of(&name, &all);
        trial.failovers_before = trial.term_at_injection.saturating_sub(last_term);
        last_term = term_now;
        if let Some(sampler) = sampler.as_mut() {
            sampler.sample(&node_processes(&cluster));
        }
        progress(&trial);
        trials.push(trial);
    }
    let super::Finished { check, history, refusals } = load.finish(&cluster, &name).map_err(|error| {
        let unrecovered: Vec<&NetnsTrial> = trials.iter().filter(|t| !t.recovered).collect();
        error.context(format!(
            "the final audit after {} trials failed; trials not recovered: {unrecovered:?}; the nodes:\n{}",
            trials.len(),
            cluster.post_mortem(30)
        ))
    })?;
    let grouped = |value: fn(&NetnsTrial) -> Option<f64>| {
        let mut by_fault: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for trial in &trials {
            by_fault.entry(trial.fault.clone()).or_default().extend(value(trial));
        }
        by_fault.into_iter().map(|(k, v)| (k, (v.len() as u32, millis(&v)))).collect::<BTreeMap<_, _>>()
    };
    let injections: Vec<Injection> = trials.iter().filter_map(|t| t.injection).collect();
    let error_injection = match injections.is_empty() {
        true => BTreeMap::new(),
        false => with_history(tally(&injections), &history.violations, check.is_err()),
    };
    let failover_ms = grouped(|t| t.failover_ms);
    let longest_gap_ms = grouped(|t| Some(t.longest_gap_ms));
    Ok(NetnsReport {
        kind: config.kind,
        trials: trials.len() as u32,
        seed: config.seed,
        violations: history.violations.total(),
        by_kind: history.violations,
        check,
        failovers: failover_ms.iter().map(|(k, (n, _))| (k.clone(), *n)).collect(),
        failover_ms,
        longest_gap_ms,
        quiet_failovers: quiet_end.saturating_sub(quiet_start),
        false_failovers: quiet_end.saturating_sub(quiet_start)
            + trials.iter().map(|t| t.failovers_before + u64::from(t.false_failover)).sum::<u64>(),
        soak: sampler.map(|s| s.report()),
        unrecovered: trials.iter().filter(|t| !t.recovered).count() as u32,
        acknowledged: history.operations.transfers_ok,
        proxy_bytes: proxies.bytes(),
        history,
        error_injection,
        refusals,
        trial_log: trials,
    })
}

/// The lossy network of a lossy trial: loss on every node's replication ports, and delay,
/// jitter and re-segmentation in every replication proxy.
fn make_lossy(testbed: &Testbed, proxies: &Proxies, spec: &ClusterSpec, rng: &mut SmallRng) -> anyhow::Result<()> {
    let percent = [1, 2, 5, 10][rng.random_range(0..4)];
    let last_port = 7200 + spec.services.len() as u16;
    for id in 1..=spec.nodes as u64 {
        testbed.lose(id, percent, (7201, last_port))?;
    }
    proxies.set_replication(LinkFaults {
        delay: Duration::from_micros(rng.random_range(500..5000)),
        jitter: Duration::from_micros(rng.random_range(0..5000)),
        resegment: true,
        bit_flip: 0.0,
    });
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_trial(
    cluster: &mut LocalCluster,
    testbed: &Testbed,
    proxies: &Proxies,
    config: &NetnsConfig,
    name: &str,
    load: &Traffic,
    rng: &mut SmallRng,
    fault: Fault,
    with_lossy: bool,
) -> anyhow::Result<NetnsTrial> {
    let spec = &config.spec;
    let all: Vec<u64> = (1..=spec.nodes as u64).collect();
    let (primary, term) = cluster.primary_of(name, &all);
    let status = cluster.status(primary);
    let backups: Vec<u64> =
        status.as_ref().and_then(|s| service_of(s, name)).map(|b| b.backups.clone()).unwrap_or_default();
    let leader = status.as_ref().and_then(|s| s.leader).unwrap_or(primary);
    let others: Vec<u64> = all.iter().copied().filter(|id| *id != primary).collect();
    let target = match fault {
        Fault::KillBackup | Fault::FlipBackupMemory => backups.first().copied().unwrap_or(others[0]),
        Fault::KillLeader => leader,
        _ => primary,
    };
    let fault_length = config.fault_length + Duration::from_millis(rng.random_range(0..200));
    if with_lossy {
        make_lossy(testbed, proxies, spec, rng)?;
    }
    let detections_before = detections(cluster, &all);
    let flips_before = proxies.bit_flips();
    let mut injection = None;
    let injected = Instant::now();
    let mut killed = false;
    match fault {
        Fault::FlipWire => {
            proxies.set_replication(LinkFaults { bit_flip: WIRE_FLIP_CHANCE, ..LinkFaults::default() });
            injection =
                Some(Injection { site: Site::Wire, injected: 0, detected: 0, crashed: 0, detected_after_ms: None });
        }
        Fault::FlipPrimaryMemory | Fault::FlipBackupMemory => {
            let site = if fault == Fault::FlipPrimaryMemory { Site::PrimaryMemory } else { Site::BackupMemory };
            let flipped = flip_in_region(cluster, spec, target, rng)?;
            let before = detections_before[target as usize - 1];
            let watched = watch_flip(cluster, target, site, injected, |status| {
                status.detections.since(&before).image_corruptions > 0
            });
            killed = watched.exited;
            injection = Some(Injection { site, injected: u64::from(flipped), ..watched.injection });
        }
        Fault::KillPrimary | Fault::KillBackup | Fault::KillLeader => {
            cluster.kill(target)?;
            killed = true;
        }
        Fault::PausePrimary => cluster.signal(target, Signal::STOP)?,
        Fault::PrimaryFromBackups => {
            for backup in &backups {
                testbed.cut(primary, *backup)?;
            }
        }
        Fault::PrimaryIsolated => {
            for other in &others {
                testbed.cut(primary, *other)?;
            }
            testbed.cut_one_way(primary, Testbed::client_ip())?;
        }
        Fault::PrimaryOneWay => {
            for other in &others {
                testbed.cut_one_way(primary, Testbed::node_ip(*other))?;
            }
        }
        Fault::MajorityFromPrimary => {
            for other in &others {
                testbed.cut(primary, *other)?;
            }
        }
        Fault::Lossy => make_lossy(testbed, proxies, spec, rng)?,
    }
    // A killed node stays down until a new primary answered (or the fault's length passed);
    // every other fault lasts its length.
    if killed {
        load.wait_first_ack_after(injected, term, fault_length);
    } else if matches!(fault, Fault::FlipPrimaryMemory | Fault::FlipBackupMemory) {
        // The flip was watched until found; nothing to heal.
    } else {
        std::thread::sleep(fault_length.saturating_sub(injected.elapsed()));
    }
    if fault == Fault::PausePrimary {
        cluster.signal(target, Signal::CONT)?;
    }
    testbed.heal()?;
    proxies.set_replication(LinkFaults::default());
    if killed {
        cluster.start(target)?;
    }
    let recovered_at = cluster.wait_statuses(&all, RECOVERY_LIMIT, |statuses| {
        protected_service(statuses, name, spec.backups as usize)
            && statuses.iter().all(|s| all.iter().all(|id| s.alive.contains(id) || *id == s.node))
    });
    let end = recovered_at.unwrap_or_else(Instant::now);
    if let Some(injection) = injection.as_mut().filter(|i| i.site == Site::Wire) {
        injection.injected = proxies.bit_flips() - flips_before;
        let now = detections(cluster, &all);
        let caught = now.iter().zip(&detections_before).map(|(now, then)| now.since(then));
        injection.detected = caught.map(|d| d.frames_refused + d.handshakes_refused).sum();
    }
    // The clients may still be finding the primary: the trial ends at their first answer after
    // the service was healed and protected (or after the failover, if one happened).
    let (_, term_after) = cluster.primary_of(name, &all);
    let first = match term_after > term {
        true => load.wait_first_ack_after(injected, term, RECOVERY_LIMIT),
        false => None,
    };
    let resumed = load.wait_first_ack_after(end, 0, RECOVERY_LIMIT).map_or(end, |a| a.at.max(end));
    Ok(NetnsTrial {
        fault: fault.name().into(),
        target,
        primary,
        leader,
        with_lossy,
        failover_ms: first.map(|a| a.at.duration_since(injected).as_secs_f64() * 1e3),
        longest_gap_ms: load.acks().longest_gap(injected, resumed).as_secs_f64() * 1e3,
        terms: term_after.saturating_sub(term),
        recovered: recovered_at.is_some(),
        false_failover: term_after > term && !fault.may_fail_over(primary == leader),
        failovers_before: 0,
        term_at_injection: term,
        stuck: match recovered_at {
            Some(_) => Vec::new(),
            None => all.iter().filter_map(|id| cluster.status(*id)).collect(),
        },
        injection,
    })
}

/// Every running node process, by node.
fn node_processes(cluster: &LocalCluster) -> Vec<(u64, u32)> {
    cluster.nodes.iter().filter_map(|node| node.pid().map(|pid| (node.id, pid))).collect()
}

/// Chance that a replication proxy flips a bit in a chunk it forwards, in wire trials: a few
/// flips per trial under full load.
const WIRE_FLIP_CHANCE: f64 = 0.0005;

/// Every node's detection counters (zero for a node that does not answer).
fn detections(cluster: &LocalCluster, nodes: &[u64]) -> Vec<DetectionCounts> {
    nodes.iter().map(|id| cluster.status(*id).map(|s| s.detections).unwrap_or_default()).collect()
}
