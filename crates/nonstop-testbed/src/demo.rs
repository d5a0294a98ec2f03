//! `nonstop demo`: three node processes on 127.0.0.1-3 running the bank service under client
//! load; the primary is SIGKILLed, the failover's timeline is shown, the killed node returns and
//! is re-protected into a backup, the new primary is killed too, and the run ends with the
//! consistency check and the count of lost and doubled acknowledged updates.

use crate::cluster::{ClusterSpec, LocalCluster, SERVICE, bank, newest_record, protected};
use crate::load::{self, Load, Verdict};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// One failover as the demo saw it; times from the kill.
#[derive(Clone, Debug)]
pub struct FailoverTimeline {
    /// The killed primary.
    pub killed: u64,
    /// The promoted node.
    pub promoted: u64,
    /// The new term.
    pub term: u64,
    /// A survivor's control plane saw the primary gone.
    pub detected: Option<Duration>,
    /// A survivor saw the promotion committed.
    pub promoted_at: Option<Duration>,
    /// The first answer from the new primary.
    pub first_ack: Option<Duration>,
    /// The killed node back as a backup holding the new primary's checkpoints.
    pub protected: Option<Duration>,
    /// Answers per second in the second before the kill and in the second after.
    pub rate_before: f64,
    /// Answers per second in the second after the kill.
    pub rate_after: f64,
    /// Time from the kill until every later 100 ms had at least 80% of the answers of before.
    pub recovered: Option<Duration>,
}

/// A switchover as the demo saw it.
#[derive(Clone, Debug)]
pub struct SwitchoverTimeline {
    /// The old primary.
    pub from: u64,
    /// The new primary.
    pub to: u64,
    /// The new term.
    pub term: u64,
    /// From the request until the promotion was committed (as the old primary measured).
    pub committed: Duration,
    /// The first answer from the new primary, from the request.
    pub first_ack: Option<Duration>,
    /// The longest time without any answer to the clients around the switchover: the
    /// downtime they saw.
    pub downtime: Duration,
}

/// What the demo measured.
#[derive(Clone, Debug)]
pub struct DemoReport {
    /// The failovers.
    pub failovers: Vec<FailoverTimeline>,
    /// The switchover, if one was run.
    pub switchover: Option<SwitchoverTimeline>,
    /// The final audit.
    pub verdict: Verdict,
    /// The whole run.
    pub elapsed: Duration,
}

/// Runs the demo on a cluster shaped like `spec` with `clients` client threads, killing the
/// primary `kills` times, then (with `switchover`) moving the role to the backup; prints as it
/// goes.
pub fn run(
    exe: &Path,
    spec: &ClusterSpec,
    clients: u64,
    kills: u32,
    switchover: bool,
    out: &mut impl Write,
) -> anyhow::Result<DemoReport> {
    let started = Instant::now();
    let mut cluster = LocalCluster::create(exe, spec)?;
    writeln!(
        out,
        "starting {} nodes on {}.1-{} (configs and logs in {})",
        spec.nodes,
        spec.ip_prefix,
        spec.nodes,
        cluster.dir().display()
    )?;
    cluster.start_all()?;
    let all: Vec<u64> = (1..=spec.nodes as u64).collect();
    cluster.wait_protected(spec.backups as usize, Duration::from_secs(20))?;
    let (mut primary, _) = cluster.current_primary(&all);
    writeln!(out, "bank service up: primary node {primary}, protected by {} backup(s)", spec.backups)?;
    let load = Load::start_with_readers(cluster.client_addrs(), SERVICE, clients, 1, 2, |_| {});
    writeln!(out, "{clients} clients sending transfers, each answered only once its backup holds it\n")?;
    let mut failovers = Vec::new();
    for round in 1..=kills {
        std::thread::sleep(Duration::from_millis(1000));
        let (current, term_before) = cluster.current_primary(&all);
        primary = current;
        let survivors: Vec<u64> = all.iter().copied().filter(|id| *id != primary).collect();
        let killed_at = Instant::now();
        cluster.kill(primary)?;
        writeln!(out, "failover {round}: SIGKILL primary node {primary}")?;
        let detected = cluster.wait_status(&survivors, Duration::from_secs(5), |s| !s.alive.contains(&primary));
        let promoted = cluster.wait_status(&survivors, Duration::from_secs(10), |s| {
            bank(s).is_some_and(|b| b.term > term_before && b.primary != primary)
        });
        let new = cluster.current_primary(&survivors);
        let first_ack = load.wait_first_ack_after(killed_at, term_before, Duration::from_secs(10));
        let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(killed_at));
        let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3));
        writeln!(out, "  detected by the control plane   +{}", ms(since(detected)))?;
        writeln!(out, "  node {} promoted (term {})       +{}", new.0, new.1, ms(since(promoted)))?;
        writeln!(out, "  first acknowledged commit       +{}", ms(since(first_ack.map(|a| a.at))))?;
        // The killed node returns empty-handed: a spare for the next re-protection.
        let mut backups = Vec::new();
        let back = cluster.wait_statuses(&survivors, Duration::from_secs(30), |s| {
            backups = newest_record(s, SERVICE).map(|b| b.backups.clone()).unwrap_or_default();
            protected(s, spec.backups as usize)
        });
        writeln!(out, "  protected again, backed up by node(s) {backups:?} +{}", ms(since(back)))?;
        cluster.start(primary)?;
        writeln!(out, "  node {primary} restarted as a spare")?;
        // Throughput around the failover: answers per 100 ms from 1 s before the kill to 2 s
        // after, once those 2 s have passed.
        let bucket = Duration::from_millis(100);
        std::thread::sleep((killed_at + 2 * Duration::from_secs(1)).saturating_duration_since(Instant::now()));
        let before: u64 = load.acks().rate(killed_at - Duration::from_secs(1), killed_at, bucket).iter().sum();
        let after = load.acks().rate(killed_at, killed_at + 2 * Duration::from_secs(1), bucket);
        let normal = before / 10;
        let recovered = after
            .iter()
            .enumerate()
            .position(|(i, _)| after[i..].iter().all(|b| *b * 10 >= normal * 8))
            .map(|i| bucket * i as u32);
        writeln!(
            out,
            "  throughput: {before} answers/s before; per 100 ms after the kill {after:?}; back to 80% after {}\n",
            ms(recovered)
        )?;
        failovers.push(FailoverTimeline {
            killed: primary,
            promoted: new.0,
            term: new.1,
            detected: since(detected),
            promoted_at: since(promoted),
            first_ack: since(first_ack.map(|a| a.at)),
            protected: since(back),
            rate_before: before as f64,
            rate_after: after.iter().take(10).sum::<u64>() as f64,
            recovered,
        });
    }
    let switchover = if switchover { Some(run_switchover(&cluster, &all, &load, out)?) } else { None };
    writeln!(out, "nonstop status (under load):")?;
    write!(out, "{}", crate::status::render(&cluster.operator().statuses(Duration::from_millis(500))))?;
    writeln!(out)?;
    let history = load.stop();
    let verdict = load::audit(cluster.client_addrs(), SERVICE, &history)?;
    Ok(DemoReport { failovers, switchover, verdict, elapsed: started.elapsed() })
}

/// Moves the primary role to the backup and measures what the clients saw.
fn run_switchover(
    cluster: &LocalCluster,
    all: &[u64],
    load: &Load,
    out: &mut impl Write,
) -> anyhow::Result<SwitchoverTimeline> {
    std::thread::sleep(Duration::from_millis(500));
    let (primary, term) = cluster.current_primary(all);
    let backup = cluster
        .status(primary)
        .as_ref()
        .and_then(bank)
        .and_then(|b| b.backups.first().copied())
        .ok_or_else(|| anyhow::anyhow!("the primary has no backup to switch over to"))?;
    writeln!(out, "switchover: moving the primary role from node {primary} to node {backup}")?;
    let asked = Instant::now();
    let done = cluster.operator().switchover(SERVICE, backup)?;
    std::thread::sleep(Duration::from_millis(500));
    let first_ack = load.acks().first_ack_after(asked, term).map(|a| a.at.duration_since(asked));
    let downtime = load.acks().longest_gap(asked, asked + Duration::from_millis(400));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    writeln!(
        out,
        "  last checkpoint of term {term}: {} (cut {:.1} ms after the request)",
        done.checkpoint,
        ms(done.drained)
    )?;
    writeln!(out, "  node {} promoted (term {})      +{:.1} ms", done.to, done.term, ms(done.committed))?;
    if let Some(first) = first_ack {
        writeln!(out, "  first acknowledged commit       +{:.1} ms", ms(first))?;
    }
    writeln!(out, "  longest time without an answer: {:.1} ms\n", ms(downtime))?;
    Ok(SwitchoverTimeline {
        from: done.from,
        to: done.to,
        term: done.term,
        committed: done.committed,
        first_ack,
        downtime,
    })
}
