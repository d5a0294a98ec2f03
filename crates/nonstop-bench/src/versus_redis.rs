//! `nonstop bench redis`: the `kv` service against Redis itself, side by side in one run, at
//! the same concurrency, value size and keyspace.
//!
//! Three setups, each measured in every round (rounds interleave them, so that the machine's
//! noise falls on all three alike; the median round is reported):
//!
//! * **Redis standalone**, measured by `redis-benchmark` (SET and GET): Redis holding nothing
//!   back, and keeping no copy anywhere.
//! * **Redis with one replica and `WAIT 1 0` after every write**: what a careful Redis user
//!   does to know a write reached a replica before going on. `redis-benchmark` cannot send
//!   WAIT, so a load of this crate's sends `SET` and `WAIT` pipelined on each connection and
//!   times the pair.
//! * **nonstop-kv with one backup**, measured by `redis-benchmark` on the primary's Redis port:
//!   every write's reply leaves only once the backup holds it.
//!
//! Nothing is installed here: without `redis-server` and `redis-benchmark` the bench refuses
//! and says which packages provide them.

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use nonstop_region::tracking::{TrackingMode, probe};
use nonstop_testbed::cluster::{ClusterSpec, LocalCluster};
use serde::Serialize;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Clone, Debug)]
pub struct RedisBenchConfig {
    /// Connections of every load (`redis-benchmark -c`).
    pub clients: usize,
    /// Requests per load and round (`redis-benchmark -n`).
    pub requests: usize,
    /// Bytes per value (`redis-benchmark -d`).
    pub value_size: usize,
    /// Keys drawn from (`redis-benchmark -r`).
    pub keyspace: u64,
    /// Requests each connection sends before it reads their replies (`redis-benchmark -P`;
    /// the WAIT load sends that many SET+WAIT pairs).
    pub pipeline: usize,
    /// Rounds; the median is reported.
    pub rounds: usize,
    /// Small keys loaded (after the rounds) to weigh memory per key; 0: not measured.
    pub memory_keys: u64,
    /// nonstop-kv's checkpoint interval (the service's `checkpoint_interval_us`): how long a
    /// write's reply waits, at most, for the cut that ships it.
    pub checkpoint_us: u64,
    /// Where the servers and the cluster listen (`PREFIX.1`, `.2`, ...).
    pub ip_prefix: String,
}

impl Default for RedisBenchConfig {
    fn default() -> Self {
        RedisBenchConfig {
            clients: 50,
            requests: 100_000,
            value_size: 3,
            keyspace: 100_000,
            pipeline: 1,
            rounds: 3,
            checkpoint_us: 500,
            memory_keys: 1_000_000,
            ip_prefix: "127.0.30".into(),
        }
    }
}

/// One load's figures.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Measured {
    /// Requests answered per second.
    pub per_s: f64,
    /// Latency, median, ms.
    pub p50_ms: f64,
    /// Latency, 99th percentile, ms.
    pub p99_ms: f64,
}

/// The report: the median round of each load, and their ratios.
#[derive(Clone, Debug, Serialize)]
pub struct RedisBenchReport {
    /// `redis-server --version`.
    pub redis_version: String,
    /// Connections of every load.
    pub clients: usize,
    /// Bytes per value.
    pub value_size: usize,
    /// Requests per load and round.
    pub requests: usize,
    /// Rounds run.
    pub rounds: usize,
    /// nonstop-kv's checkpoint interval, in microseconds.
    pub checkpoint_us: u64,
    /// Redis standalone, SET.
    pub redis_set_per_s: f64,
    /// Its median latency, ms.
    pub redis_set_p50_ms: f64,
    /// Its 99th percentile, ms.
    pub redis_set_p99_ms: f64,
    /// Redis standalone, GET.
    pub redis_get_per_s: f64,
    /// Its median latency, ms.
    pub redis_get_p50_ms: f64,
    /// Its 99th percentile, ms.
    pub redis_get_p99_ms: f64,
    /// Redis with a replica, SET then WAIT 1 0 (pairs per second).
    pub redis_wait_set_per_s: f64,
    /// Its median latency (the pair), ms.
    pub redis_wait_set_p50_ms: f64,
    /// Its 99th percentile, ms.
    pub redis_wait_set_p99_ms: f64,
    /// nonstop-kv with one backup, SET.
    pub nonstop_set_per_s: f64,
    /// Its median latency, ms.
    pub nonstop_set_p50_ms: f64,
    /// Its 99th percentile, ms.
    pub nonstop_set_p99_ms: f64,
    /// nonstop-kv, GET.
    pub nonstop_get_per_s: f64,
    /// Its median latency, ms.
    pub nonstop_get_p50_ms: f64,
    /// Its 99th percentile, ms.
    pub nonstop_get_p99_ms: f64,
    /// nonstop SET / Redis SET.
    pub ratio_set_vs_redis: f64,
    /// nonstop SET / Redis SET+WAIT.
    pub ratio_set_vs_redis_wait: f64,
    /// nonstop GET / Redis GET.
    pub ratio_get_vs_redis: f64,
    /// Every round's figures, in order: `[redis_set, redis_get, redis_wait_set, nonstop_set,
    /// nonstop_get]`.
    pub by_round: Vec<[Measured; 5]>,
    /// Keys loaded to weigh memory (`key:<12 digits>`, values of `value_size` bytes).
    pub memory_keys: u64,
    /// Redis's `used_memory` grown per key.
    pub redis_bytes_per_key: f64,
    /// Redis's resident memory (`used_memory_rss`) grown per key.
    pub redis_rss_bytes_per_key: f64,
    /// nonstop-kv's `used_memory` (the keyspace's allocations in the region, the allocator's
    /// own headers not counted) grown per key.
    pub nonstop_bytes_per_key: f64,
    /// The nonstop primary's resident memory grown per key (the region's pages written,
    /// whatever uses them).
    pub nonstop_rss_bytes_per_key: f64,
}

/// `field` of an `INFO` text.
fn info_field(info: &str, field: &str) -> anyhow::Result<f64> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("no {field} in INFO"))?
        .trim()
        .parse()
        .with_context(|| format!("{field} is not a number"))
}

/// A process's resident memory in bytes.
fn resident_bytes(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024.0)
}

/// Loads `keys` keys into the server at `addr` with `MSET`s of a thousand, and returns how
/// much `used_memory` and resident memory (of `pid`, or Redis's `used_memory_rss`) grew per key.
fn weigh(addr: SocketAddr, pid: Option<u32>, keys: u64, value_size: usize) -> anyhow::Result<(f64, f64)> {
    let mut connection = redis::Client::open(format!("redis://{addr}"))?.get_connection()?;
    let () = redis::cmd("FLUSHALL").query(&mut connection)?;
    let measure = |connection: &mut redis::Connection| -> anyhow::Result<(f64, f64)> {
        let info: String = redis::cmd("INFO").arg("memory").query(connection)?;
        let rss = match pid {
            Some(pid) => resident_bytes(pid)?,
            None => info_field(&info, "used_memory_rss")?,
        };
        Ok((info_field(&info, "used_memory")?, rss))
    };
    let before = measure(&mut connection)?;
    let value = "x".repeat(value_size);
    for batch in (0..keys).collect::<Vec<_>>().chunks(1000) {
        let mut mset = redis::cmd("MSET");
        for key in batch {
            mset.arg(format!("key:{key:012}")).arg(&value);
        }
        let () = mset.query(&mut connection)?;
    }
    let after = measure(&mut connection)?;
    let per_key = |a: f64, b: f64| (b - a) / keys as f64;
    Ok((per_key(before.0, after.0), per_key(before.1, after.1)))
}

/// Refuses, saying what to install, unless the Redis programs the bench runs are here.
pub fn require_redis() -> anyhow::Result<String> {
    for program in ["redis-server", "redis-benchmark"] {
        let found = Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !found.is_ok_and(|status| status.success()) {
            bail!(
                "`nonstop bench redis` runs Redis beside nonstop, and {program} is not on PATH: install the Debian packages redis-server and redis-tools (apt-get install redis-server redis-tools)"
            );
        }
    }
    let version = Command::new("redis-server").arg("--version").output()?;
    Ok(String::from_utf8_lossy(&version.stdout).trim().to_string())
}

/// A `redis-server` of the bench's, stopped when dropped.
struct RedisServer {
    child: Child,
    addr: SocketAddr,
}

impl RedisServer {
    fn start(addr: SocketAddr, dir: &Path, replica_of: Option<SocketAddr>) -> anyhow::Result<RedisServer> {
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", &addr.ip().to_string(), "--port", &addr.port().to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(primary) = replica_of {
            command.args(["--replicaof", &primary.ip().to_string(), &primary.port().to_string()]);
        }
        let child = command.spawn().context("starting redis-server")?;
        let mut server = RedisServer { child, addr };
        let due = Instant::now() + Duration::from_secs(10);
        while server.info("server").is_err() {
            if Instant::now() > due || server.child.try_wait()?.is_some() {
                bail!("redis-server on {addr} did not start within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    fn connection(&self) -> anyhow::Result<redis::Connection> {
        Ok(redis::Client::open(format!("redis://{}", self.addr))?.get_connection()?)
    }

    fn info(&self, section: &str) -> anyhow::Result<String> {
        Ok(redis::cmd("INFO").arg(section).query(&mut self.connection()?)?)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `redis-benchmark` on one test (`set` or `get`) against `addr`.
fn redis_benchmark(addr: SocketAddr, test: &str, config: &RedisBenchConfig) -> anyhow::Result<Measured> {
    let output = Command::new("redis-benchmark")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-c", &config.clients.to_string(), "-n", &config.requests.to_string()])
        .args(["-d", &config.value_size.to_string(), "-r", &config.keyspace.to_string()])
        .args(["-t", test, "-P", &config.pipeline.to_string(), "--csv"])
        .output()
        .context("running redis-benchmark")?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_csv(&text).with_context(|| {
        format!("redis-benchmark -t {test} on {addr}: {text}{}", String::from_utf8_lossy(&output.stderr))
    })
}

/// The figures of `redis-benchmark --csv`'s one result row.
fn parse_csv(text: &str) -> anyhow::Result<Measured> {
    let mut lines = text.lines().filter(|line| !line.trim().is_empty());
    let header: Vec<String> =
        lines.next().context("no header")?.split(',').map(|f| f.trim_matches('"').into()).collect();
    let row: Vec<String> = lines.next().context("no result")?.split(',').map(|f| f.trim_matches('"').into()).collect();
    let column = |name: &str| -> anyhow::Result<f64> {
        let at = header.iter().position(|h| h == name).with_context(|| format!("no column {name}"))?;
        Ok(row.get(at).with_context(|| format!("no {name} value"))?.parse()?)
    };
    Ok(Measured { per_s: column("rps")?, p50_ms: column("p50_latency_ms")?, p99_ms: column("p99_latency_ms")? })
}

/// The careful Redis user's write: `SET` and `WAIT 1 0` pipelined on each of `clients`
/// connections, the pair timed, `requests` pairs in all. A pair whose `WAIT` counts no replica
/// is an error: the load would not be measuring what it claims.
fn set_wait_load(addr: SocketAddr, config: &RedisBenchConfig) -> anyhow::Result<Measured> {
    let per_client = config.requests.div_ceil(config.clients);
    let value = "x".repeat(config.value_size);
    let started = Instant::now();
    let histograms: Vec<anyhow::Result<Histogram<u64>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..config.clients)
            .map(|client| {
                let value = &value;
                scope.spawn(move || -> anyhow::Result<Histogram<u64>> {
                    let mut connection = redis::Client::open(format!("redis://{addr}"))?.get_connection()?;
                    let mut latencies = Histogram::<u64>::new(3)?;
                    let mut draw = client as u64 + 1;
                    for _ in 0..per_client {
                        // The same keys redis-benchmark's -r draws from.
                        draw = draw.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        let key = format!("key:{:012}", (draw >> 16) % config.keyspace);
                        let sent = Instant::now();
                        let ((), replicas): ((), i64) = redis::pipe()
                            .cmd("SET")
                            .arg(&key)
                            .arg(value)
                            .cmd("WAIT")
                            .arg(1)
                            .arg(0)
                            .query(&mut connection)?;
                        latencies.record(sent.elapsed().as_micros() as u64)?;
                        if replicas < 1 {
                            bail!("WAIT 1 0 answered {replicas}: the replica is not attached");
                        }
                    }
                    Ok(latencies)
                })
            })
            .collect();
        workers.into_iter().map(|worker| worker.join().unwrap_or_else(|_| bail!("a load thread panicked"))).collect()
    });
    let elapsed = started.elapsed();
    let mut all = Histogram::<u64>::new(3)?;
    for histogram in histograms {
        all.add(histogram?)?;
    }
    Ok(Measured {
        per_s: all.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: all.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: all.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

fn median(values: impl Iterator<Item = Measured>) -> Measured {
    let mut values: Vec<Measured> = values.collect();
    values.sort_by(|a, b| a.per_s.total_cmp(&b.per_s));
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// Runs the three setups for `config.rounds` rounds; `exe` is the nonstop binary the cluster
/// runs.
pub fn run(exe: &Path, config: &RedisBenchConfig, progress: &dyn Fn(&str)) -> anyhow::Result<RedisBenchReport> {
    let redis_version = require_redis()?;
    let addr = |host: u8, port: u16| -> anyhow::Result<SocketAddr> {
        Ok(format!("{}.{host}:{port}", config.ip_prefix).parse()?)
    };
    let dir = tempfile::tempdir().context("making a directory for the Redis servers")?;
    let dir = dir.path();
    for server in ["standalone", "primary", "replica"] {
        std::fs::create_dir_all(dir.join(server))?;
    }
    progress("starting Redis, Redis with a replica, and a nonstop cluster");
    let standalone = RedisServer::start(addr(1, 16379)?, &dir.join("standalone"), None)?;
    let primary = RedisServer::start(addr(1, 16380)?, &dir.join("primary"), None)?;
    let replica = RedisServer::start(addr(2, 16380)?, &dir.join("replica"), Some(primary.addr))?;
    let due = Instant::now() + Duration::from_secs(30);
    while !replica.info("replication")?.contains("master_link_status:up") {
        if Instant::now() > due {
            bail!("the Redis replica did not attach to its primary within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let tracking = match probe(TrackingMode::Uffd) {
        Ok(()) => TrackingMode::Uffd,
        Err(_) => TrackingMode::Mprotect,
    };
    let spec = ClusterSpec {
        ip_prefix: config.ip_prefix.clone(),
        region_size_mib: 512,
        kind: "kv".into(),
        tracking: Some(tracking),
        services: vec![("kv".into(), 1)],
        redis: true,
        settings: toml::from_str("memory_mib = 480")?,
        checkpoint_interval_us: config.checkpoint_us,
        ..ClusterSpec::default()
    };
    let mut cluster = LocalCluster::create(exe, &spec)?;
    cluster.start_all()?;
    cluster.wait_service_protected("kv", 1, Duration::from_secs(60))?;
    let nonstop = cluster.nodes[0].redis.context("the cluster's nodes have Redis ports")?;
    // The primary must be reachable before the first round.
    TcpStream::connect_timeout(&nonstop, Duration::from_secs(5)).context("connecting to nonstop's Redis port")?;

    let mut by_round = Vec::new();
    for round in 1..=config.rounds {
        progress(&format!("round {round} of {}", config.rounds));
        by_round.push([
            redis_benchmark(standalone.addr, "set", config)?,
            redis_benchmark(standalone.addr, "get", config)?,
            set_wait_load(primary.addr, config)?,
            redis_benchmark(nonstop, "set", config)?,
            redis_benchmark(nonstop, "get", config)?,
        ]);
    }
    let ((redis_bytes, redis_rss), (nonstop_bytes, nonstop_rss)) = match config.memory_keys {
        0 => ((0.0, 0.0), (0.0, 0.0)),
        keys => {
            progress(&format!("loading {keys} keys into each to weigh them"));
            let primary_pid = cluster.nodes[0].pid().context("the nonstop primary runs")?;
            (
                weigh(standalone.addr, None, keys, config.value_size)?,
                weigh(nonstop, Some(primary_pid), keys, config.value_size)
                    .with_context(|| format!("loading nonstop-kv\n{}", cluster.post_mortem(15)))?,
            )
        }
    };
    let column = |i: usize| median(by_round.iter().map(|round| round[i]));
    let (redis_set, redis_get, redis_wait, nonstop_set, nonstop_get) =
        (column(0), column(1), column(2), column(3), column(4));
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Ok(RedisBenchReport {
        redis_version,
        clients: config.clients,
        value_size: config.value_size,
        requests: config.requests,
        rounds: config.rounds,
        checkpoint_us: config.checkpoint_us,
        redis_set_per_s: redis_set.per_s,
        redis_set_p50_ms: redis_set.p50_ms,
        redis_set_p99_ms: redis_set.p99_ms,
        redis_get_per_s: redis_get.per_s,
        redis_get_p50_ms: redis_get.p50_ms,
        redis_get_p99_ms: redis_get.p99_ms,
        redis_wait_set_per_s: redis_wait.per_s,
        redis_wait_set_p50_ms: redis_wait.p50_ms,
        redis_wait_set_p99_ms: redis_wait.p99_ms,
        nonstop_set_per_s: nonstop_set.per_s,
        nonstop_set_p50_ms: nonstop_set.p50_ms,
        nonstop_set_p99_ms: nonstop_set.p99_ms,
        nonstop_get_per_s: nonstop_get.per_s,
        nonstop_get_p50_ms: nonstop_get.p50_ms,
        nonstop_get_p99_ms: nonstop_get.p99_ms,
        ratio_set_vs_redis: ratio(nonstop_set.per_s, redis_set.per_s),
        ratio_set_vs_redis_wait: ratio(nonstop_set.per_s, redis_wait.per_s),
        ratio_get_vs_redis: ratio(nonstop_get.per_s, redis_get.per_s),
        by_round,
        memory_keys: config.memory_keys,
        redis_bytes_per_key: redis_bytes,
        redis_rss_bytes_per_key: redis_rss,
        nonstop_bytes_per_key: nonstop_bytes,
        nonstop_rss_bytes_per_key: nonstop_rss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_benchmarks_csv_is_read() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"SET\",\"98039.22\",\"0.271\",\"0.072\",\"0.263\",\"0.367\",\"0.455\",\"1.063\"\n";
        let measured = parse_csv(text).unwrap();
        assert_eq!((measured.per_s, measured.p50_ms, measured.p99_ms), (98039.22, 0.263, 0.455));
        assert!(parse_csv("").is_err());
    }
}
