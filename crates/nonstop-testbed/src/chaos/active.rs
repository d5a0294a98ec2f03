//! `nonstop chaos kill --replication active` (and `nonstop chaos --netns … --replication
//! active`): trial after trial, three node processes replicate
//! a service actively under client load, and one replica (the order's leader or a follower, as
//! the seed picks) fails: killed with SIGKILL, paused with SIGSTOP for a while and resumed, or
//! made to answer one request wrongly (a fault point), which the replicas' digests of their
//! outcomes must find, the replica then taking a live replica's state, or given a flipped bit
//! in its region's memory, which its region's line seals or the digests must find. Flips and
//! wrong answers are counted as the replication survey counts injected errors ([`super::inject`]).
//! There is no failover to time: the clients' votes go on with the two replicas left, and what
//! a trial measures is the longest gap between answers around the fault. A paused replica that
//! fell behind the order's compacted log meanwhile must take a live replica's state and serve
//! again: the trial measures how long that took and what the clients' throughput did around
//! it. Each replica still running is then audited against the clients' history, and their
//! client tables must be the same (a re-integrated replica's included).
//!
//! Each trial runs a cluster of its own, so that every trial starts from three healthy
//! replicas and no trial's measurement includes an earlier one's re-integration. With hosts of
//! their own (`nonstop chaos --netns KIND --replication active`), every node and the clients
//! run in network namespaces, peers talk through fault proxies, and a replica can also be cut
//! off from the others (a partition) or given bit flips in memory and outputs in turn.

use super::inject::{Injection, InjectionCounts, Site, flip_in_region, tally, watch_flip, with_history};
use super::{Clients, Millis, Traffic, millis};
use crate::cluster::{ClusterSpec, LocalCluster, LocalNode};
use crate::history::{CheckReport, Violations};
use crate::netns::Testbed;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// A fault of one replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaFault {
    /// It stops for good: no more execution, no more replies (a crash, or a partition that
    /// does not heal).
    Kill,
    /// It stops for `ms` milliseconds, then goes on and catches up (a pause, or a partition
    /// that heals).
    Pause {
        /// How long.
        ms: u64,
    },
    /// Its outcome of the next request it executes is made wrong (a bit of the reply flipped by
    /// the `replica-wrong-outcome` fault point), and it lives on: the clients' majority outvotes
    /// it, and the replicas' digests of their outcomes must find it (it then takes a live
    /// replica's state and proves it, as a paused one does). The cluster must allow faults.
    WrongOutcome,
    /// A random bit of its region's used part flipped in its memory (through
    /// `/proc/<pid>/mem`, behind every API, as a failing DIMM would): its region's line seals
    /// (a transaction's reads, or the background scrubber) stop its node, which the trial starts
    /// again to rejoin as a new member, or its digests of its outcomes find it dissenting and it
    /// takes a live replica's state. The clients' votes mask it meanwhile. A multithreaded
    /// service keeps its state in its worker threads' mutexes instead: the replica flips a bit
    /// of that state before its next entry (the `replica-flip-state` fault point), and only the
    /// digests can find it.
    FlipMemory,
    /// It is cut off from the other replicas, both ways, for `ms` milliseconds, then the
    /// network heals and it catches up (hosts of their own only: `--netns partition`). Clients
    /// still reach it; it executes nothing meanwhile, and their votes go on with the others.
    Partition {
        /// How long.
        ms: u64,
    },
    /// Errors injected as the survey injects them (`--netns bitflip`): each trial in turn, a
    /// bit flipped in the replica's memory ([`ReplicaFault::FlipMemory`]) or in one of its
    /// outputs ([`ReplicaFault::WrongOutcome`]). The cluster must allow faults.
    Bitflip,
}

impl ReplicaFault {
    /// The fault trial `trial` injects: `self`, or for [`ReplicaFault::Bitflip`] the site of
    /// the trial's turn.
    fn for_trial(self, trial: u64) -> ReplicaFault {
        match self {
            ReplicaFault::Bitflip if trial.is_multiple_of(2) => ReplicaFault::FlipMemory,
            ReplicaFault::Bitflip => ReplicaFault::WrongOutcome,
            concrete => concrete,
        }
    }
}

/// How an active chaos run is shaped.
#[derive(Clone, Debug)]
pub struct ActiveChaosConfig {
    /// Trials, each on a cluster of its own.
    pub trials: u32,
    /// Seed of the random choices (the victim, the moment).
    pub seed: u64,
    /// Client threads.
    pub clients: u64,
    /// The cluster: `spec.active` says how replies are voted on.
    pub spec: ClusterSpec,
    /// Who loads the service, and how its history is judged.
    pub clients_kind: Clients,
    /// The fault.
    pub fault: ReplicaFault,
    /// With [`ReplicaFault::Kill`]: start the killed node again this long after the kill; its
    /// replica rejoins the order group as a new member, and the trial measures how long that
    /// takes as for a pause.
    pub restart_after: Option<Duration>,
    /// How long the load runs after the fault (after the resume, for a pause).
    pub after_kill: Duration,
    /// Run every node and the clients on hosts of their own (network namespaces, root).
    pub netns: bool,
}

/// One trial.
#[derive(Clone, Debug, Serialize)]
pub struct ActiveTrial {
    /// The fault injected.
    pub fault: ReplicaFault,
    /// The replica killed or paused (a node id).
    pub killed: u64,
    /// Whether it led the order group when it failed (the others then elect a new leader
    /// before the order moves on).
    pub killed_leader: bool,
    /// The longest time without an answer from 100 ms before the fault to the end of the load.
    pub gap_ms: f64,
    /// Answers after the fault began.
    pub answered_after_kill: u64,
    /// A paused, restarted or wrong replica: the states it took from another replica after it
    /// came back (or answered wrongly).
    pub state_transfers: u64,
    /// Times the replica found its outcomes contradicted by a majority's.
    pub dissents_found: u64,
    /// A paused or restarted replica that took a state: how long that took by its own clock,
    /// from the order's snapshot to serving again.
    pub catch_up_ms: Option<f64>,
    /// A paused or restarted replica: from its resume (or its process's start) until it served,
    /// as a voter of the order group, with the order's position the others had reached then
    /// (status polled every millisecond or so).
    pub back_ms: Option<f64>,
    /// Answers per second in the fault-free time before the fault.
    pub answers_per_s_before: f64,
    /// Answers per second while the replica was down (killed: the rest of the trial).
    pub answers_per_s_during: f64,
    /// A paused or restarted replica: answers per second from its return until it was back.
    pub answers_per_s_catching_up: Option<f64>,
    /// Answers in the trial.
    pub acknowledged: u64,
    /// Violations the history checker found, summed over the surviving replicas' audits.
    pub violations: u64,
    /// Whether the survivors' client tables differ.
    pub replicas_disagree: bool,
    /// A flipped bit or a wrong outcome: what became of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injection: Option<Injection>,
}

/// What an active chaos run found.
#[derive(Clone, Debug, Serialize)]
pub struct ActiveChaosReport {
    /// Trials run.
    pub trials: u32,
    /// The seed.
    pub seed: u64,
    /// How replies were voted on: `majority`, `leader-only` or `pass-first`.
    pub replies: String,
    /// The fault of each trial.
    pub fault: ReplicaFault,
    /// After a kill: how long until the node was started again, if it was.
    pub restart_after_ms: Option<u64>,
    /// The longest gap between answers around each kill, over all trials.
    pub gap_ms: Millis,
    /// The same, over trials that killed the order's leader.
    pub gap_leader_killed_ms: Millis,
    /// The same, over trials that killed a follower.
    pub gap_follower_killed_ms: Millis,
    /// Trials in which no answer came after the fault began.
    pub no_answer_after_kill: u32,
    /// Pauses: trials in which the paused replica took another's state.
    pub reintegrated: u32,
    /// Wrong outcomes: trials in which the replica found itself dissenting.
    pub dissents_found: u32,
    /// Pauses: how long taking a state took, over those trials (the replica's clock).
    pub catch_up_ms: Millis,
    /// Pauses: from the resume until the replica was back at the others' position.
    pub back_ms: Millis,
    /// Pauses: answers per second while the replica caught up, over those before the fault
    /// (the median over trials; 1.0 is no dip).
    pub catching_up_vs_before: f64,
    /// Pauses: trials in which the paused replica was not back within 10 s.
    pub not_back: u32,
    /// Acknowledged updates missing from a surviving replica's state (summed over replicas and
    /// trials).
    pub acked_lost: u64,
    /// Updates a surviving replica applied more than once.
    pub applied_twice: u64,
    /// Trials whose surviving replicas' client tables differ.
    pub replicas_disagree: u32,
    /// Requests answered in all.
    pub acknowledged: u64,
    /// The platform's and the service's checks: the first failure, or the last verdict.
    pub check: Result<String, String>,
    /// The history checker's report of the first trial with violations (else the last).
    pub history: CheckReport,
    /// Flipped bits and wrong outcomes, counted per site as the survey counts injected errors,
    /// and a `total` row that adds what the history checker and the checks found.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub error_injection: BTreeMap<String, InjectionCounts>,
    /// Flipped bits: from the flip to its detection, over the trials that detected it.
    pub detected_after_ms: Millis,
    /// Every trial.
    pub trial_log: Vec<ActiveTrial>,
}

/// Runs the trials, whatever the fault, on loopback or on hosts of their own
/// ([`ActiveChaosConfig::netns`]); `progress` is called after each.
pub fn run_active(
    exe: &Path,
    config: &ActiveChaosConfig,
    mut progress: impl FnMut(&ActiveTrial),
) -> anyhow::Result<ActiveChaosReport> {
    let mode = config.spec.active.ok_or_else(|| anyhow::anyhow!("the cluster's services are not active"))?;
    anyhow::ensure!(config.clients_kind != Clients::Redis, "an actively replicated service has no Redis port");
    anyhow::ensure!(
        config.netns || !matches!(config.fault, ReplicaFault::Partition { .. }),
        "a partition needs hosts of their own: nonstop chaos --netns partition --replication active"
    );
    // Hosts of their own: nodes and clients in network namespaces, peers through proxies.
    let testbed = match config.netns {
        true => Some(Testbed::create(config.spec.nodes)?),
        false => None,
    };
    let mut spec = config.spec.clone();
    let _proxies = match &testbed {
        None => None,
        Some(testbed) => {
            spec.ip_prefix = "10.77.0".into();
            spec.namespaces = Some((1..=u64::from(spec.nodes)).map(|id| testbed.node_namespace(id)).collect());
            // This thread talks to the nodes as a client does: from the clients' host.
            Testbed::enter(&testbed.client_namespace())?;
            Some(super::netns::Proxies::start(testbed, spec.services.len(), config.seed)?)
        }
    };
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let mut trials = Vec::new();
    let mut totals = Violations::default();
    let mut check: Result<String, String> = Ok(String::new());
    let mut history: Option<CheckReport> = None;
    for trial in 0..config.trials {
        let (outcome, report) = run_trial(exe, config, &spec, testbed.as_ref(), &mut rng, u64::from(trial))?;
        totals += report.violations;
        if check.is_ok() {
            check = outcome;
        }
        if history.as_ref().is_none_or(|kept| kept.violations.total() == 0) {
            history = Some(report.report);
        }
        progress(&report.trial);
        trials.push(report.trial);
    }
    let injections: Vec<Injection> = trials.iter().filter_map(|t| t.injection).collect();
    let error_injection = match injections.is_empty() {
        true => BTreeMap::new(),
        false => with_history(tally(&injections), &totals, check.is_err()),
    };
    let gaps =
        |pick: fn(&ActiveTrial) -> bool| -> Vec<f64> { trials.iter().filter(|t| pick(t)).map(|t| t.gap_ms).collect() };
    Ok(ActiveChaosReport {
        trials: config.trials,
        seed: config.seed,
        replies: mode.name().into(),
        fault: config.fault,
        restart_after_ms: config.restart_after.map(|d| d.as_millis() as u64),
        gap_ms: millis(&gaps(|_| true)),
        gap_leader_killed_ms: millis(&gaps(|t| t.killed_leader)),
        gap_follower_killed_ms: millis(&gaps(|t| !t.killed_leader)),
        no_answer_after_kill: trials.iter().filter(|t| t.answered_after_kill == 0).count() as u32,
        reintegrated: trials.iter().filter(|t| t.state_transfers > 0).count() as u32,
        dissents_found: trials.iter().filter(|t| t.dissents_found > 0).count() as u32,
        catch_up_ms: millis(&trials.iter().filter_map(|t| t.catch_up_ms).collect::<Vec<_>>()),
        back_ms: millis(&trials.iter().filter_map(|t| t.back_ms).collect::<Vec<_>>()),
        catching_up_vs_before: median(
            trials
                .iter()
                .filter_map(|t| t.answers_per_s_catching_up.map(|during| during / t.answers_per_s_before.max(1.0)))
                .collect(),
        ),
        not_back: match (config.fault, config.restart_after) {
            (ReplicaFault::Kill, None) => 0,
            _ => trials.iter().filter(|t| t.back_ms.is_none()).count() as u32,
        },
        acked_lost: totals.acked_lost,
        applied_twice: totals.applied_twice,
        replicas_disagree: trials.iter().filter(|t| t.replicas_disagree).count() as u32,
        acknowledged: trials.iter().map(|t| t.acknowledged).sum(),
        check,
        history: history.unwrap_or_default(),
        error_injection,
        detected_after_ms: millis(&injections.iter().filter_map(|i| i.detected_after_ms).collect::<Vec<_>>()),
        trial_log: trials,
    })
}

/// One trial's findings.
struct TrialReport {
    trial: ActiveTrial,
    violations: Violations,
    report: CheckReport,
}

/// How long a trial waits, after its load stopped, for the replicas to reach one position.
const SETTLE: Duration = Duration::from_secs(10);

fn run_trial(
    exe: &Path,
    config: &ActiveChaosConfig,
    spec: &ClusterSpec,
    testbed: Option<&Testbed>,
    rng: &mut SmallRng,
    trial: u64,
) -> anyhow::Result<(Result<String, String>, TrialReport)> {
    let fault = config.fault.for_trial(trial);
    let mut cluster = LocalCluster::create(exe, spec)?;
    cluster.start_all()?;
    let all: Vec<u64> = (1..=spec.nodes as u64).collect();
    let name = spec.services[0].0.clone();
    // Every replica knows the order's leader before the load starts.
    let mut leader = None;
    cluster.wait_statuses(&all, Duration::from_secs(20), |statuses| {
        leader = order_leader(statuses).filter(|_| statuses.len() == all.len());
        leader.is_some()
    });
    let leader =
        leader.ok_or_else(|| anyhow::anyhow!("trial {trial}: the order group elected no leader within 20 s"))?;
    let client_namespace = testbed.map(Testbed::client_namespace);
    let load =
        Traffic::start(&cluster, &name, config.clients, 2, config.clients_kind, config.seed + trial, move |_| {
            if let Some(namespace) = &client_namespace {
                Testbed::enter(namespace).expect("the clients' namespace exists");
            }
        })?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(rng.random_range(200..400)));
    let victim = all[rng.random_range(0..all.len())];
    let killed_at = Instant::now();
    let per_s = |from: Instant, to: Instant| {
        let answers = load.acks().rate(from, to, to - from).first().copied().unwrap_or(0);
        answers as f64 / (to - from).as_secs_f64().max(1e-6)
    };
    // Settled load only: the first 100 ms include the clients' connecting.
    let answers_per_s_before = per_s(started + Duration::from_millis(100), killed_at);
    let others: Vec<u64> = all.iter().copied().filter(|id| *id != victim).collect();
    // The point of the order the others reached: a replica that comes back is back once its
    // state is there.
    let reached = |cluster: &LocalCluster| {
        (others.iter())
            .filter_map(|id| cluster.status(*id))
            .filter_map(|s| s.replicas.first().map(|r| r.position))
            .max()
            .unwrap_or(0)
    };
    let dissents = |cluster: &LocalCluster| {
        cluster.status(victim).and_then(|s| s.replicas.first().map(|r| r.dissents_found)).unwrap_or(0)
    };
    let mut injection = None;
    let resumed = match (fault, config.restart_after) {
        (ReplicaFault::Kill, None) => {
            cluster.kill(victim)?;
            None
        }
        (ReplicaFault::Kill, Some(after)) => {
            cluster.kill(victim)?;
            std::thread::sleep(after);
            let reached = reached(&cluster);
            cluster.start(victim)?;
            Some((Instant::now(), reached))
        }
        (ReplicaFault::Pause { ms }, _) => {
            cluster.signal(victim, rustix::process::Signal::STOP)?;
            std::thread::sleep(Duration::from_millis(ms));
            let reached = reached(&cluster);
            cluster.signal(victim, rustix::process::Signal::CONT)?;
            Some((Instant::now(), reached))
        }
        (ReplicaFault::WrongOutcome, _) => {
            cluster.arm_fault(victim, "replica-wrong-outcome", 1)?;
            let reached = reached(&cluster);
            Some((Instant::now(), reached))
        }
        (ReplicaFault::FlipMemory, _) => {
            let before = dissents(&cluster);
            let flipped_at = Instant::now();
            let flipped = match spec.threads {
                None => flip_in_region(&cluster, spec, victim, rng)?,
                // A multithreaded service keeps its state in its threads' mutexes, not in the
                // region: the replica flips a bit of it before its next entry.
                Some(_) => {
                    cluster.arm_fault(victim, "replica-flip-state", 1)?;
                    true
                }
            };
            let watched = watch_flip(&mut cluster, victim, Site::ReplicaMemory, flipped_at, |status| {
                status.replicas.first().is_some_and(|r| r.dissents_found > before)
            });
            injection = Some(Injection { injected: u64::from(flipped), ..watched.injection });
            let reached = reached(&cluster);
            if watched.exited {
                // Stopped by its seals (or crashed): started again, it rejoins as a new member.
                cluster.start(victim)?;
            }
            Some((Instant::now(), reached))
        }
        (ReplicaFault::Partition { ms }, _) => {
            let testbed = testbed.ok_or_else(|| anyhow::anyhow!("a partition needs hosts of their own (--netns)"))?;
            for other in &others {
                testbed.cut(victim, *other)?;
            }
            std::thread::sleep(Duration::from_millis(ms));
            let reached = reached(&cluster);
            testbed.heal()?;
            Some((Instant::now(), reached))
        }
        (ReplicaFault::Bitflip, _) => unreachable!("a trial injects one concrete fault"),
    };
    let found_wrong = |dissents: u64| fault != ReplicaFault::WrongOutcome || dissents > 0;
    let back = resumed.and_then(|(at, reached)| {
        let back = cluster.wait_statuses(&[victim], Duration::from_secs(10), |statuses| {
            statuses[0].replicas.first().is_some_and(|r| {
                found_wrong(r.dissents_found)
                    && r.standing == nonstop_node::status::ReplicaStanding::Serving
                    && r.order_role == nonstop_node::status::OrderRole::Voter
                    && r.position >= reached
            })
        });
        back.map(|back| (at, back))
    });
    if fault == ReplicaFault::WrongOutcome {
        // Activated once executed: found if the replica's digests showed it dissenting.
        let found = u64::from(dissents(&cluster) > 0);
        injection = Some(Injection {
            site: Site::ReplicaOutput,
            injected: 1,
            detected: found,
            crashed: 0,
            detected_after_ms: None,
        });
    }
    std::thread::sleep(config.after_kill);
    let ended = Instant::now();
    let gap = load.acks().longest_gap(killed_at - Duration::from_millis(100), ended);
    let answered_after_kill = load.acks().rate(killed_at, ended, ended - killed_at).first().copied().unwrap_or(0);
    let answers_per_s_during = per_s(killed_at, resumed.map_or(ended, |(at, _)| at));
    // Over 50 ms at least, so that one answer more or less does not swing the rate.
    let answers_per_s_catching_up =
        back.map(|(resumed, back)| per_s(resumed, back.max(resumed + Duration::from_millis(50))));
    let victim_status = cluster.status(victim).and_then(|s| s.replicas.first().cloned());
    let still_running: Vec<&LocalNode> = match resumed {
        None => cluster.nodes.iter().filter(|n| n.id != victim).collect(),
        Some(_) => cluster.nodes.iter().collect(),
    };
    let survivors: Vec<_> = still_running.iter().map(|n| n.client).collect();
    let survivor_ids: Vec<u64> = still_running.iter().map(|n| n.id).collect();
    // A majority answered every call; a replica may still be executing the last ones (the one
    // that came back, most often), and an audit then would take its lag for a lost request.
    let settled = || {
        let agreed = cluster.wait_statuses(&survivor_ids, SETTLE, |statuses| {
            let positions: Vec<u64> = statuses.iter().filter_map(|s| s.replicas.first().map(|r| r.position)).collect();
            positions.len() == statuses.len() && positions.windows(2).all(|pair| pair[0] == pair[1])
        });
        if agreed.is_none() {
            tracing::warn!(trial, "the replicas' positions still differ after {SETTLE:?}: auditing them as they are");
        }
    };
    let judged = load.finish_each(&name, &survivors, settled)?;
    let acknowledged = judged.first().map_or(0, |j| j.history.operations.transfers_ok);
    let mut violations = Violations::default();
    for verdict in &judged {
        violations += verdict.history.violations;
    }
    let total = violations.total();
    let replicas_disagree = judged.windows(2).any(|pair| pair[0].remembered != pair[1].remembered);
    let check = judged
        .iter()
        .map(|j| j.check.clone())
        .find(Result::is_err)
        .unwrap_or_else(|| judged.last().map_or(Ok(String::new()), |j| j.check.clone()));
    let report = judged.iter().map(|j| j.history.clone()).find(|h| h.violations.total() > 0);
    let report = report.or_else(|| judged.last().map(|j| j.history.clone())).unwrap_or_default();
    let trial = ActiveTrial {
        fault,
        killed: victim,
        killed_leader: victim == leader,
        gap_ms: gap.as_secs_f64() * 1e3,
        answered_after_kill,
        state_transfers: victim_status.as_ref().map_or(0, |r| r.state_transfers),
        dissents_found: victim_status.as_ref().map_or(0, |r| r.dissents_found),
        catch_up_ms: victim_status.as_ref().and_then(|r| r.last_catch_up_ms),
        back_ms: back.map(|(resumed, back)| (back - resumed).as_secs_f64() * 1e3),
        answers_per_s_before,
        answers_per_s_during,
        answers_per_s_catching_up,
        acknowledged,
        violations: total,
        replicas_disagree,
        injection,
    };
    Ok((check, TrialReport { trial, violations, report }))
}

/// The order group's leader, if every replica that reports one names the same node.
fn order_leader(statuses: &[nonstop_node::status::NodeStatus]) -> Option<u64> {
    let mut named = statuses.iter().flat_map(|s| s.replicas.first()).map(|r| r.order_leader);
    let first = named.next()??;
    named.all(|other| other == Some(first)).then_some(first)
}

/// The median of `values` (0 if none).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
