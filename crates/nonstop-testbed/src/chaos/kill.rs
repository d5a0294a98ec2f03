//! `nonstop chaos kill`: trial after trial, kill the bank's primary under client load — at a
//! random moment, or at a fault point inside a checkpoint — and measure the failover; with a
//! second kill, the promoted primary dies too, inside its promotion or its re-protection; at
//! the end, audit every client's history against the service's state.

use super::Traffic;
use super::{Millis, millis};
use crate::cluster::{ClusterSpec, LocalCluster, protected_service, service as service_of};
use crate::history::CheckReport;
use nonstop_net::fault::FaultPoint;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// How a chaos run is shaped.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// Trials.
    pub trials: u32,
    /// Seed of the random choices (moments, fault points).
    pub seed: u64,
    /// Client threads.
    pub clients: u64,
    /// Share of trials killed at a fault point inside a checkpoint instead of at a random moment.
    pub fault_share: f64,
    /// The cluster.
    pub spec: ClusterSpec,
    /// Before the trials: run the load this long without faults and count failovers (there
    /// should be none: every one would be a false failover).
    pub quiet: Duration,
    /// Kill the promoted primary too: this long after the first kill, or, with
    /// [`DoubleKill::InsideReprotection`], at a random moment of its first re-protection.
    pub double: Option<DoubleKill>,
    /// Who loads the service, and how its history is judged.
    pub clients_kind: super::Clients,
}

/// When the second kill of a trial comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoubleKill {
    /// This long after the first kill (the promoted node may not be primary yet: then it dies
    /// inside its promotion).
    After(Duration),
    /// Once a survivor reports itself primary of the new term, at a random moment within
    /// [`REPROTECTION_WINDOW`]: while it rebases the holder its promotion kept.
    InsideReprotection,
}

/// How long after a promotion a second kill counts as inside the re-protection.
pub const REPROTECTION_WINDOW: Duration = Duration::from_millis(40);

/// One trial.
#[derive(Clone, Debug, Serialize)]
pub struct Trial {
    /// How the primary died: `random-moment` or a fault point's name.
    pub fault: String,
    /// The killed primary.
    pub killed: u64,
    /// Kill to the first answer from the new primary, in ms (`None`: none within 10 s).
    pub failover_ms: Option<f64>,
    /// Terms that began during the trial (1 expected, 2 with a second kill; more are false
    /// failovers).
    pub terms: u64,
    /// With a second kill: the promoted node killed, and when after the first kill (ms).
    pub second_killed: Option<u64>,
    /// Milliseconds from the first kill to the second.
    pub second_kill_after_ms: Option<f64>,
    /// Second kill to the first answer from the primary after it, in ms.
    pub second_failover_ms: Option<f64>,
}

/// What a chaos run found.
#[derive(Clone, Debug, Serialize)]
pub struct ChaosReport {
    /// Trials run.
    pub trials: u32,
    /// The seed.
    pub seed: u64,
    /// Kill to first acknowledged commit on the new primary.
    pub failover_ms: Millis,
    /// Backups of the service.
    pub backups: u8,
    /// Its `min_backups`.
    pub min_backups: u8,
    /// With a second kill per trial: second kill to first acknowledged commit after it.
    pub second_failover_ms: Option<Millis>,
    /// Per kind of kill.
    pub by_fault: BTreeMap<String, (u32, Millis)>,
    /// Acknowledged updates missing at the end.
    pub acked_lost: u64,
    /// Updates applied more than once.
    pub applied_twice: u64,
    /// Promotions beyond one per kill, and any during the quiet period.
    pub false_failovers: u64,
    /// Promotions during the quiet period (part of `false_failovers`).
    pub quiet_failovers: u64,
    /// Length of the quiet period in seconds.
    pub quiet_s: f64,
    /// Trials in which no new primary answered within 10 s.
    pub no_failover: u32,
    /// Requests answered in all.
    pub acknowledged: u64,
    /// The service's consistency check at the end.
    pub check: Result<String, String>,
    /// The history checker's report (all its violation kinds, with examples).
    pub history: CheckReport,
    /// Every trial.
    pub trial_log: Vec<Trial>,
}

/// Runs the trials; `progress` is called after each.
pub fn run_kill(exe: &Path, config: &ChaosConfig, mut progress: impl FnMut(&Trial)) -> anyhow::Result<ChaosReport> {
    let spec = ClusterSpec { allow_faults: true, ..config.spec.clone() };
    let mut cluster = LocalCluster::create(exe, &spec)?;
    cluster.start_all()?;
    let all: Vec<u64> = (1..=spec.nodes as u64).collect();
    let name = spec.services[0].0.clone();
    cluster.wait_service_protected(&name, spec.backups as usize, Duration::from_secs(20))?;
    let load = Traffic::start(&cluster, &name, config.clients, 2, config.clients_kind, config.seed, |_| {})?;
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let mut trials = Vec::new();
    let (_, quiet_start) = cluster.primary_of(&name, &all);
    let quiet_until = Instant::now() + config.quiet;
    while Instant::now() < quiet_until {
        std::thread::sleep(Duration::from_millis(100).min(quiet_until.saturating_duration_since(Instant::now())));
        let quiet = Trial {
            fault: "quiet".into(),
            killed: 0,
            failover_ms: None,
            terms: 0,
            second_killed: None,
            second_kill_after_ms: None,
            second_failover_ms: None,
        };
        progress(&quiet);
    }
    let (_, mut term) = cluster.primary_of(&name, &all);
    let quiet_failovers = term.saturating_sub(quiet_start);
    let mut false_failovers = quiet_failovers;
    for _ in 0..config.trials {
        // Protected again, with every node up, before the next kill.
        cluster.wait_statuses(&all, Duration::from_secs(30), |s| protected_service(s, &name, spec.backups as usize));
        let (primary, term_now) = cluster.primary_of(&name, &all);
        false_failovers += term_now.saturating_sub(term);
        std::thread::sleep(Duration::from_millis(rng.random_range(20..200)));
        let fault = if rng.random_bool(config.fault_share) {
            Some(FaultPoint::KILLS[rng.random_range(0..FaultPoint::KILLS.len())])
        } else {
            None
        };
        let killed_at = match fault {
            None => {
                let at = Instant::now();
                cluster.kill(primary)?;
                at
            }
            Some(point) => {
                cluster.arm_fault(primary, point.name(), rng.random_range(1..4))?;
                match cluster.wait_exit(primary, Duration::from_secs(2)) {
                    Some(at) => at,
                    None => {
                        // The point was not reached (an idle moment): kill from outside.
                        let at = Instant::now();
                        cluster.kill(primary)?;
                        at
                    }
                }
            }
        };
        let survivors: Vec<u64> = all.iter().copied().filter(|id| *id != primary).collect();
        // With min_backups = backups the promoted node holds its replies until the killed one
        // is back and brought up to date: start it again at once, as a supervisor would.
        let strict = spec.min_backups.is_some_and(|m| m >= spec.backups);
        if strict && config.double.is_none() {
            cluster.start(primary)?;
        }
        let second = config.double.and_then(|double| {
            let promoted_status = |s: &nonstop_node::status::NodeStatus| {
                service_of(s, &name).is_some_and(|b| b.term > term_now && b.primary == s.node && b.role == "primary")
            };
            let at = match double {
                DoubleKill::After(after) => {
                    std::thread::sleep(after.saturating_sub(killed_at.elapsed()));
                    Instant::now()
                }
                DoubleKill::InsideReprotection => {
                    let seen = cluster.wait_status(&survivors, Duration::from_secs(10), promoted_status)?;
                    let delay = Duration::from_micros(rng.random_range(0..REPROTECTION_WINDOW.as_micros() as u64));
                    std::thread::sleep(delay.saturating_sub(seen.elapsed()));
                    Instant::now()
                }
            };
            // Whoever the record names primary now: the promoted node, or (killed inside its
            // promotion) the node being promoted.
            let (next, next_term) = cluster.primary_of(&name, &survivors);
            let victim = if next_term > term_now { next } else { return None };
            cluster.kill(victim).ok()?;
            // As a supervisor would, start the first victim again at once: with fewer than
            // min_backups holders left, the last one holds its replies until a restarted node
            // is brought up to date from it.
            cluster.start(primary).ok()?;
            Some((victim, at, next_term))
        });
        let first = load.wait_first_ack_after(killed_at, term_now, Duration::from_secs(10));
        let (second_killed, second_kill_after_ms, second_failover_ms) = match second {
            Some((victim, at, victim_term)) => {
                let after = load.wait_first_ack_after(at, victim_term, Duration::from_secs(10));
                let ms = |from: Instant, to: Instant| to.duration_since(from).as_secs_f64() * 1e3;
                (Some(victim), Some(ms(killed_at, at)), after.map(|a| ms(at, a.at)))
            }
            None => (None, None, None),
        };
        let alive: Vec<u64> = survivors.iter().copied().filter(|id| Some(*id) != second_killed).collect();
        // Statuses refresh every heartbeat: wait until one shows the new term before reading it.
        let killed = [Some(primary), second_killed];
        cluster.wait_status(&alive, Duration::from_secs(2), |s| {
            service_of(s, &name).is_some_and(|b| b.term > term_now && !killed.contains(&Some(b.primary)))
        });
        let (_, term_after) = cluster.primary_of(&name, &alive);
        let trial = Trial {
            fault: fault.map_or("random-moment".into(), |p| p.name().into()),
            killed: primary,
            failover_ms: first.map(|a| a.at.duration_since(killed_at).as_secs_f64() * 1e3),
            terms: term_after.saturating_sub(term_now),
            second_killed,
            second_kill_after_ms,
            second_failover_ms,
        };
        let expected_terms = 1 + u64::from(second_killed.is_some());
        false_failovers += trial.terms.saturating_sub(expected_terms);
        term = term_after;
        match second_killed {
            Some(victim) => cluster.start(victim)?,
            None if !strict => cluster.start(primary)?,
            None => {}
        }
        progress(&trial);
        trials.push(trial);
    }
    let super::Finished { check, history, .. } = load.finish(&cluster, &name)?;
    let times: Vec<f64> = trials.iter().filter_map(|t| t.failover_ms).collect();
    let second_times: Vec<f64> = trials.iter().filter_map(|t| t.second_failover_ms).collect();
    let mut by_fault: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for trial in &trials {
        by_fault.entry(trial.fault.clone()).or_default().extend(trial.failover_ms);
    }
    Ok(ChaosReport {
        trials: config.trials,
        seed: config.seed,
        failover_ms: millis(&times),
        backups: spec.backups,
        min_backups: spec.min_backups.unwrap_or(spec.backups.saturating_sub(1)),
        second_failover_ms: config.double.map(|_| millis(&second_times)),
        by_fault: by_fault.into_iter().map(|(k, v)| (k, (v.len() as u32, millis(&v)))).collect(),
        acked_lost: history.violations.acked_lost,
        applied_twice: history.violations.applied_twice,
        false_failovers,
        quiet_failovers,
        quiet_s: config.quiet.as_secs_f64(),
        no_failover: trials
            .iter()
            .filter(|t| t.failover_ms.is_none() || (t.second_killed.is_some() && t.second_failover_ms.is_none()))
            .count() as u32,
        acknowledged: history.operations.transfers_ok,
        check,
        history,
        trial_log: trials,
    })
}
