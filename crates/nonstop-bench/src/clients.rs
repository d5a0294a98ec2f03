//! `nonstop bench clients`: what open idle client connections cost a primary. A local cluster
//! serves the bank; the primary's threads, resident memory and answer latency are measured
//! with no extra connection, then with `connections` idle ones open (connected, sending
//! nothing: the cheapest way to hold a connection-per-thread server's threads).

use anyhow::Context;
use hdrhistogram::Histogram;
use nonstop_testbed::cluster::{ClusterSpec, LocalCluster, SERVICE};
use serde::Serialize;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Clone, Debug)]
pub struct ClientsBenchConfig {
    /// Idle connections to open to the primary.
    pub connections: usize,
    /// Transfers timed in each phase.
    pub requests: usize,
    /// The cluster.
    pub spec: ClusterSpec,
}

/// One phase's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    /// Extra connections open to the primary.
    pub connections: usize,
    /// The primary's threads.
    pub threads: u64,
    /// The primary's resident memory, MiB.
    pub rss_mib: f64,
    /// Transfer latency, median, ms.
    pub p50_ms: f64,
    /// Transfer latency, 99th percentile, ms.
    pub p99_ms: f64,
}

/// The report.
#[derive(Clone, Debug, Serialize)]
pub struct ClientsBenchReport {
    /// Without the extra connections.
    pub before: Phase,
    /// With them open.
    pub with_connections: Phase,
    /// Threads added by the connections.
    pub threads_added: i64,
    /// Resident memory added per connection, KiB.
    pub rss_per_connection_kib: f64,
    /// Connections the node refused (it is configured for all of them plus the load's).
    pub refused: u64,
    /// Seconds to open them all.
    pub open_s: f64,
}

fn proc_status(pid: u32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading the primary's status")?;
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn phase(cluster: &LocalCluster, pid: u32, connections: usize, requests: usize, client: u64) -> anyhow::Result<Phase> {
    let mut bank = nonstop_workloads::bank::BankClient::new(cluster.client_addrs(), SERVICE, client);
    let mut latency = Histogram::<u64>::new(3).expect("valid histogram");
    for i in 0..requests {
        let started = Instant::now();
        bank.transfer(1 + i as u64 % 1000, 1, 1).context("a transfer while the connections are open")?;
        latency.record(started.elapsed().as_micros() as u64).expect("in range");
    }
    Ok(Phase {
        connections,
        threads: proc_status(pid, "Threads:")?,
        rss_mib: proc_status(pid, "VmRSS:")? as f64 / 1024.0,
        p50_ms: latency.value_at_quantile(0.5) as f64 / 1e3,
        p99_ms: latency.value_at_quantile(0.99) as f64 / 1e3,
    })
}

/// Lets this process open `connections` sockets.
fn raise_own_descriptor_limit(connections: usize) -> anyhow::Result<()> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let needed = connections as u64 + 1024;
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|current| current < needed) {
        let hard = limit.maximum.unwrap_or(u64::MAX);
        anyhow::ensure!(
            hard >= needed,
            "opening {connections} connections needs {needed} file descriptors, and this shell allows {hard}: raise it (`ulimit -n {needed}`) or ask for fewer --connections"
        );
        setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(needed), maximum: limit.maximum })
            .context("raising the open-file limit")?;
    }
    Ok(())
}

/// Runs the measurement.
pub fn run(exe: &Path, config: &ClientsBenchConfig) -> anyhow::Result<ClientsBenchReport> {
    raise_own_descriptor_limit(config.connections)?;
    // Room for every idle connection plus the load's.
    let spec = ClusterSpec { max_clients: Some(config.connections + 64), ..config.spec.clone() };
    let mut cluster = LocalCluster::create(exe, &spec)?;
    cluster.start_all()?;
    cluster.wait_protected(spec.backups as usize, Duration::from_secs(30))?;
    let all: Vec<u64> = (1..=spec.nodes as u64).collect();
    let (primary, _) = cluster.current_primary(&all);
    let node = &cluster.nodes[primary as usize - 1];
    let pid = node.pid().context("the primary runs")?;
    let addr = node.client;
    let before = phase(&cluster, pid, 0, config.requests, 1)?;
    let progress = indicatif::ProgressBar::new(config.connections as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} connections {elapsed}").expect("valid template"),
    );
    let started = Instant::now();
    let mut open = Vec::with_capacity(config.connections);
    for i in 0..config.connections {
        let stream = TcpStream::connect(addr)
            .with_context(|| format!("opening connection {} of {}", i + 1, config.connections))?;
        open.push(stream);
        progress.inc(1);
    }
    progress.finish_and_clear();
    let open_s = started.elapsed().as_secs_f64();
    // Let the node accept the backlog before it is measured.
    std::thread::sleep(Duration::from_millis(500));
    let with_connections = phase(&cluster, pid, config.connections, config.requests, 2)?;
    let refused = cluster.status(primary).map_or(0, |status| status.clients.refused_full);
    drop(open);
    Ok(ClientsBenchReport {
        threads_added: with_connections.threads as i64 - before.threads as i64,
        rss_per_connection_kib: (with_connections.rss_mib - before.rss_mib) * 1024.0 / config.connections.max(1) as f64,
        before,
        with_connections,
        refused,
        open_s,
    })
}
