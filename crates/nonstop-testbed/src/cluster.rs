//! A local cluster: node agents as child processes on loopback addresses, each with its own
//! config, Raft log and log file. `nonstop demo`, `nonstop chaos kill` and the failover tests
//! run on it.

use crate::local::KeyFile;
use nonstop_node::operator::{self, Operator, OperatorError};
use nonstop_node::status::{NodeStatus, ServiceStatus};
use nonstop_proto::client::ReplyMode;
use nonstop_region::tracking::TrackingMode;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shape of a local cluster.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Nodes (3 by default), on `ip_prefix.1`, `ip_prefix.2`, …
    pub nodes: u8,
    /// The first three octets of the nodes' loopback addresses, e.g. "127.0.0".
    pub ip_prefix: String,
    /// Backups of the bank service.
    pub backups: u8,
    /// Its `min_backups` (`None`: the node's default, `backups - 1`).
    pub min_backups: Option<u8>,
    /// Measurement only: nodes keep the control-plane leader on primaries.
    pub leader_on_primary: bool,
    /// The region's address.
    pub region_base: usize,
    /// The region's size in MiB.
    pub region_size_mib: u64,
    /// The services' `[services.settings]`, as their kind reads them (empty: its defaults; the
    /// built-in `bank` and `ledger` take `branches`).
    pub settings: toml::Table,
    /// Microseconds between checkpoints (0: sync).
    pub checkpoint_interval_us: u64,
    /// Transparent mode for the services (DU, writes found by the kernel); `None`: declared.
    pub tracking: Option<TrackingMode>,
    /// What the services run: `bank`, or `ledger` (ordinary collections in the region; needs
    /// `tracking`).
    pub kind: String,
    /// Heartbeat interval.
    pub heartbeat_ms: u64,
    /// Failure timeout.
    pub timeout_ms: u64,
    /// Start nodes with fault points enabled (`fault_points = true` in `[node]`), for chaos runs.
    pub allow_faults: bool,
    /// Extra voting nodes that hold no region, numbered after the others.
    pub witnesses: u8,
    /// The services as (name, first primary); each gets its own region and replication port.
    pub services: Vec<(String, u64)>,
    /// Replicate the services actively, every node that holds regions a replica, with these
    /// replies (`replication = "active"`); `None`: passively, from the primaries named.
    pub active: Option<ReplyMode>,
    /// Active replication: the order entries replicas keep before compacting
    /// (`order_log_entries`); `None`: the node's default.
    pub order_log_entries: Option<u64>,
    /// Active replication of a multithreaded kind: how its replicas' worker threads are
    /// scheduled, and how many (`scheduler`, `threads`). Give it for such a kind (and only for
    /// one): its services then get no region, which it has no use for.
    pub threads: Option<(nonstop_service::threaded::Scheduler, u16)>,
    /// Run each node in a network namespace of its own (these, by id - 1; see
    /// [`crate::netns`]) and reach its peers through fault proxies on `127.0.0.<peer>`.
    pub namespaces: Option<Vec<String>>,
    /// Each node's `max_clients` (`None`: the node's default).
    pub max_clients: Option<usize>,
    /// Give each node that holds regions a Redis port (`node.redis`, port 6379 of its
    /// address) and a sentinel port (`node.sentinel`, port 26379), for a `kv` service.
    pub redis: bool,
    /// With `redis`: the password Redis clients must give (`node.redis_password_file`).
    pub redis_password: Option<String>,
    /// With `redis`: the certificate chain and key files (PEM) of TLS on the Redis and
    /// sentinel ports (`node.redis_tls_cert`, `node.redis_tls_key`).
    pub redis_tls: Option<(PathBuf, PathBuf)>,
}

impl ClusterSpec {
    /// The services' settings, as the config gives them.
    pub fn settings(&self) -> nonstop_service::Settings {
        nonstop_service::Settings::new(self.settings.clone())
    }
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            nodes: 3,
            ip_prefix: "127.0.0".into(),
            backups: 1,
            min_backups: None,
            leader_on_primary: false,
            region_base: nonstop_region::DEFAULT_REGION_BASE,
            region_size_mib: 128,
            settings: toml::Table::new(),
            checkpoint_interval_us: 1000,
            tracking: None,
            kind: nonstop_workloads::bank::NAME.to_string(),
            heartbeat_ms: 10,
            timeout_ms: 200,
            allow_faults: false,
            witnesses: 0,
            services: vec![(SERVICE.to_string(), 1)],
            active: None,
            order_log_entries: None,
            threads: None,
            namespaces: None,
            max_clients: None,
            redis: false,
            redis_password: None,
            redis_tls: None,
        }
    }
}

/// The bank service's name in local clusters.
pub const SERVICE: &str = "bank";

/// The bank's entry in a node's status.
pub fn bank(status: &NodeStatus) -> Option<&ServiceStatus> {
    service(status, SERVICE)
}

/// `name`'s entry in a node's status.
pub fn service<'a>(status: &'a NodeStatus, name: &str) -> Option<&'a ServiceStatus> {
    status.services.iter().find(|s| s.name == name)
}

/// `name`'s entry from the status that knows the newest record (term, then version within it).
pub fn newest_record<'a>(statuses: &'a [NodeStatus], name: &str) -> Option<&'a ServiceStatus> {
    statuses.iter().filter_map(|s| service(s, name)).max_by_key(|s| (s.term, s.version))
}

/// Whether the bank is protected by at least `wanted` backups, judged from `statuses`
/// together ([`protected_service`]).
pub fn protected(statuses: &[NodeStatus], wanted: usize) -> bool {
    protected_service(statuses, SERVICE, wanted)
}

/// Whether `name` is protected by at least `wanted` backups, judged from several nodes'
/// statuses together: the node that the newest known term names primary must itself say it
/// is that term's primary with `wanted` backups recorded, each of those backups must say it
/// backs that term, and the primary must have each one attached and acknowledging. One view
/// alone can be stale: a deposed primary keeps reporting "primary, one backup" until it learns
/// the term that replaced it, and a record keeps a backup whose link just died until the
/// primary's `DropBackup` commits.
pub fn protected_service(statuses: &[NodeStatus], name: &str, wanted: usize) -> bool {
    let entry = |node: u64| statuses.iter().find(|s| s.node == node).and_then(|s| service(s, name));
    let Some(newest) = newest_record(statuses, name) else { return false };
    let holds = |node: u64, role: &str| entry(node).is_some_and(|s| s.term == newest.term && s.role == role);
    let attached = |backup: u64| {
        entry(newest.primary).is_some_and(|p| p.lag.iter().any(|lag| lag.backup == backup && lag.acked.is_some()))
    };
    holds(newest.primary, "primary")
        && newest.backups.len() >= wanted
        && newest.backups.iter().all(|backup| holds(*backup, "backup") && attached(*backup))
}

/// One node of a local cluster.
#[derive(Debug)]
pub struct LocalNode {
    /// Its id.
    pub id: u64,
    /// Its config file.
    pub config: PathBuf,
    /// Its client address.
    pub client: SocketAddr,
    /// Its control address (where operators connect).
    pub control: SocketAddr,
    /// Its log file (stderr of the agent).
    pub log: PathBuf,
    /// Its Prometheus metrics address.
    pub metrics: SocketAddr,
    /// Its Redis port, if the spec asked for one.
    pub redis: Option<SocketAddr>,
    /// Its sentinel port, with the Redis port.
    pub sentinel: Option<SocketAddr>,
    child: Option<Child>,
}

impl LocalNode {
    /// The process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// A local cluster; every node is killed and the directory removed on drop.
#[derive(Debug)]
pub struct LocalCluster {
    exe: PathBuf,
    namespaces: Option<Vec<String>>,
    dir: PathBuf,
    key: KeyFile,
    /// The nodes, by id - 1.
    pub nodes: Vec<LocalNode>,
}

impl LocalCluster {
    /// Writes the configs of a cluster shaped like `spec` (nothing starts yet).
    pub fn create(exe: &Path, spec: &ClusterSpec) -> std::io::Result<LocalCluster> {
        let key = KeyFile::generate()?;
        let mut tag = [0u8; 4];
        getrandom::fill(&mut tag).map_err(|e| std::io::Error::other(e.to_string()))?;
        let tag = u32::from_le_bytes(tag);
        let dir = std::env::temp_dir().join(format!("nonstop-cluster-{}-{tag:08x}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let addr = |id: u8, port: u16| -> SocketAddr {
            format!("{}.{id}:{port}", spec.ip_prefix).parse().expect("valid loopback address")
        };
        let all = spec.nodes + spec.witnesses;
        // In namespaces, a node reaches its peers' control and replication ports through its
        // own fault proxies, one loopback address per peer.
        let via_proxy = |id: u8, port: u16| -> SocketAddr {
            match spec.namespaces {
                Some(_) => SocketAddr::from(([127, 0, 0, id], port)),
                None => addr(id, port),
            }
        };
        let member = |id: u8, reach: &dyn Fn(u8, u16) -> SocketAddr| {
            format!(
                "id = {id}\ncontrol = \"{}\"\nclient = \"{}\"\nreplication = \"{}\"\nwitness = {}\n",
                reach(id, 7001),
                addr(id, 7101),
                reach(id, 7201),
                id > spec.nodes
            )
        };
        // Clients reach Redis and sentinel ports directly, never through a fault proxy.
        let redis_ports = |id: u8| match spec.redis && id <= spec.nodes {
            true => format!("redis = \"{}\"\nsentinel = \"{}\"\n", addr(id, 6379), addr(id, 26379)),
            false => String::new(),
        };
        let password_file = dir.join("redis-password");
        if let Some(password) = &spec.redis_password {
            std::fs::write(&password_file, password)?;
        }
        let own = |id: u8| {
            let mut text = member(id, &addr);
            text += &format!("metrics = \"{}\"\n", addr(id, 9101));
            if spec.leader_on_primary {
                text += "leader_on_primary = true\n";
            }
            if spec.allow_faults {
                text += "fault_points = true\n";
            }
            if let Some(max) = spec.max_clients {
                text += &format!("max_clients = {max}\n");
            }
            if spec.redis && spec.redis_password.is_some() && id <= spec.nodes {
                text += &format!("redis_password_file = \"{}\"\n", password_file.display());
            }
            if let (true, Some((cert, key))) = (spec.redis && id <= spec.nodes, &spec.redis_tls) {
                text += &format!("redis_tls_cert = \"{}\"\nredis_tls_key = \"{}\"\n", cert.display(), key.display());
            }
            text + &redis_ports(id)
        };
        let mut nodes = Vec::new();
        for id in 1..=all {
            let mut text = format!(
                "[node]\n{}data_dir = \"{}\"\nkey_file = \"{}\"\n\n",
                own(id),
                dir.join(format!("node{id}")).display(),
                key.path.display()
            );
            for peer in (1..=all).filter(|p| *p != id) {
                text += &format!("[[peers]]\n{}{}\n", member(peer, &via_proxy), redis_ports(peer));
            }
            text += &format!("[heartbeat]\ninterval_ms = {}\ntimeout_ms = {}\n\n", spec.heartbeat_ms, spec.timeout_ms);
            // Transparent mode ships DU diffs.
            let mut tracking =
                spec.tracking.map_or(String::new(), |mode| format!("protocol = \"du\"\ntracking = \"{mode}\"\n"));
            if let Some(min_backups) = spec.min_backups {
                tracking += &format!("min_backups = {min_backups}\n");
            }
            let settings = toml::to_string(&spec.settings).map_err(std::io::Error::other)?;
            for (index, (name, primary)) in spec.services.iter().enumerate() {
                // Regions 64 GiB apart: every service has its own fixed address.
                let base = spec.region_base + index * (64 << 30);
                let replication = match spec.active {
                    None => format!("primary = {primary}\nbackups = {}\n{tracking}", spec.backups),
                    Some(mode) => {
                        let mut kept =
                            spec.order_log_entries.map_or(String::new(), |n| format!("order_log_entries = {n}\n"));
                        if let Some((scheduler, threads)) = spec.threads {
                            kept += &format!("scheduler = \"{}\"\nthreads = {threads}\n", scheduler.name());
                        }
                        format!("replication = \"active\"\nreplies = \"{}\"\n{kept}", mode.name())
                    }
                };
                let region = match spec.threads {
                    Some(_) => String::new(),
                    None => format!("region_base = \"{base:#x}\"\nregion_size_mib = {}\n", spec.region_size_mib),
                };
                text += &format!(
                    "[[services]]\nname = \"{name}\"\nkind = \"{}\"\n{replication}{region}checkpoint_interval_us = {}\n[services.settings]\n{settings}\n",
                    spec.kind, spec.checkpoint_interval_us
                );
            }
            let config = dir.join(format!("node{id}.toml"));
            std::fs::write(&config, text)?;
            nodes.push(LocalNode {
                id: id as u64,
                config,
                client: addr(id, 7101),
                control: addr(id, 7001),
                log: dir.join(format!("node{id}.log")),
                metrics: addr(id, 9101),
                redis: (spec.redis && id <= spec.nodes).then(|| addr(id, 6379)),
                sentinel: (spec.redis && id <= spec.nodes).then(|| addr(id, 26379)),
                child: None,
            });
        }
        Ok(LocalCluster { exe: exe.to_path_buf(), namespaces: spec.namespaces.clone(), dir, key, nodes })
    }

    /// The nodes' client addresses.
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.client).collect()
    }

    /// The node binary its nodes run.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// Where configs, logs and Raft logs live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts node `id` and waits until its agent runs.
    pub fn start(&mut self, id: u64) -> std::io::Result<()> {
        // `ip netns exec` execs the node in place: the child's pid is the node's.
        let mut command = match &self.namespaces {
            Some(namespaces) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &namespaces[id as usize - 1]]).arg(&self.exe);
                command
            }
            None => Command::new(&self.exe),
        };
        let node = &mut self.nodes[id as usize - 1];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).map_err(|error| {
            std::io::Error::new(error.kind(), format!("opening node {id}'s log {}: {error}", node.log.display()))
        })?;
        let mut child = command
            .arg("node")
            .arg("--config")
            .arg(&node.config)
            .env("RUST_LOG", std::env::var("NONSTOP_NODE_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|error| std::io::Error::new(error.kind(), format!("starting {}: {error}", self.exe.display())))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        if !line.starts_with(nonstop_node::READY) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other(format!("node {id} did not start; see {}", node.log.display())));
        }
        node.child = Some(child);
        Ok(())
    }

    /// Starts every node.
    pub fn start_all(&mut self) -> std::io::Result<()> {
        for id in 1..=self.nodes.len() as u64 {
            self.start(id)?;
        }
        Ok(())
    }

    /// SIGKILLs node `id`; returns when the process is gone.
    pub fn kill(&mut self, id: u64) -> std::io::Result<()> {
        if let Some(mut child) = self.nodes[id as usize - 1].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Sends `signal` to node `id`'s process (SIGSTOP and SIGCONT to pause and wake it).
    pub fn signal(&self, id: u64, signal: rustix::process::Signal) -> std::io::Result<()> {
        let pid = self.nodes[id as usize - 1]
            .pid()
            .ok_or_else(|| std::io::Error::other(format!("node {id} is not running")))?;
        let pid = rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| std::io::Error::other("pid 0"))?;
        rustix::process::kill_process(pid, signal)?;
        Ok(())
    }

    /// Node `id`'s status, if it answers.
    pub fn status(&self, id: u64) -> Option<NodeStatus> {
        operator::status(self.nodes[id as usize - 1].control, &self.key.key, Duration::from_millis(200)).ok()
    }

    /// An operator of this cluster (it holds the cluster's key).
    pub fn operator(&self) -> Operator {
        Operator::new(self.nodes.iter().map(|n| (n.id, n.control)).collect(), self.key.key.clone())
    }

    /// Waits until some node of `nodes` reports a status satisfying `done`; returns when.
    pub fn wait_status(
        &self,
        nodes: &[u64],
        timeout: Duration,
        mut done: impl FnMut(&NodeStatus) -> bool,
    ) -> Option<Instant> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            for &id in nodes {
                if let Some(status) = self.status(id)
                    && done(&status)
                {
                    return Some(Instant::now());
                }
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        None
    }

    /// Waits until every node of `nodes` answers with a status and the statuses together
    /// satisfy `done`; returns when.
    pub fn wait_statuses(
        &self,
        nodes: &[u64],
        timeout: Duration,
        mut done: impl FnMut(&[NodeStatus]) -> bool,
    ) -> Option<Instant> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            let statuses: Vec<NodeStatus> = nodes.iter().filter_map(|id| self.status(*id)).collect();
            if statuses.len() == nodes.len() && done(&statuses) {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }

    /// The bank's primary and term, as the node that knows the newest term says.
    pub fn current_primary(&self, nodes: &[u64]) -> (u64, u64) {
        self.primary_of(SERVICE, nodes)
    }

    /// `name`'s primary and term, as the node that knows the newest term says.
    pub fn primary_of(&self, name: &str, nodes: &[u64]) -> (u64, u64) {
        nodes
            .iter()
            .filter_map(|id| self.status(*id))
            .filter_map(|s| service(&s, name).map(|b| (b.term, b.primary)))
            .max()
            .map_or((0, 0), |(term, primary)| (primary, term))
    }

    /// Waits until every node sees the bank service protected by `wanted` backups; the error
    /// points at the nodes' logs.
    pub fn wait_protected(&self, wanted: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait_service_protected(SERVICE, wanted, timeout)
    }

    /// Waits until every node sees service `name` protected by `wanted` backups.
    pub fn wait_service_protected(&self, name: &str, wanted: usize, timeout: Duration) -> anyhow::Result<()> {
        let all: Vec<u64> = (1..=self.nodes.len() as u64).collect();
        self.wait_statuses(&all, timeout, |s| protected_service(s, name, wanted)).map(|_| ()).ok_or_else(|| {
            anyhow::anyhow!("the {name} service did not become protected; the nodes:\n{}", self.post_mortem(20))
        })
    }

    /// What each node says of itself now, and the last `lines` lines of its log: for an error
    /// that must be understood from a CI run's output alone, where the cluster's directory is
    /// gone (`NONSTOP_KEEP_CLUSTER=1` keeps it).
    pub fn post_mortem(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let running = if node.child.is_some() { "running" } else { "not running" };
            let status = match self.status(node.id) {
                Some(status) => format!("{status:?}"),
                None => "no status answer".into(),
            };
            out.push_str(&format!("--- node {} ({running}): {status}\n", node.id));
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(lines).collect();
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// How node `id`'s process ended, if it has (it is then no longer counted as running).
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let node = &mut self.nodes[id as usize - 1];
        let status = node.child.as_mut()?.try_wait().ok()??;
        node.child = None;
        Some(status)
    }

    /// Waits until node `id`'s process exits; returns when it was seen gone.
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<Instant> {
        self.exit_status_within(id, timeout)?;
        let seen = Instant::now();
        self.nodes[id as usize - 1].child = None;
        Some(seen)
    }

    /// Arms a fault point on node `id` (the cluster must allow faults).
    ///
    /// With a short countdown the point can fire before the node has written its answer: the
    /// connection then closes unanswered. That counts as armed when the node has died of the
    /// SIGKILL a fault point sends itself; any other silence is an error that says how the
    /// node ended, if it did.
    pub fn arm_fault(&mut self, id: u64, point: &str, countdown: u32) -> std::io::Result<()> {
        let addr = self.nodes[id as usize - 1].control;
        match operator::arm_fault(addr, &self.key.key, point, countdown) {
            Ok(()) => Ok(()),
            Err(refused @ (OperatorError::Rejected(_) | OperatorError::Unexpected(_))) => {
                Err(std::io::Error::other(format!("node {id} did not arm {point}: {refused}")))
            }
            Err(problem) => match self.exit_status_within(id, Duration::from_secs(1)) {
                Some(status) if status.signal() == Some(rustix::process::Signal::KILL.as_raw()) => Ok(()),
                ended => Err(std::io::Error::other(format!(
                    "node {id} did not answer the arming of {point} ({problem}); its process {}; see {}",
                    ended.map_or("is still running".to_string(), |s| format!("ended with {s}")),
                    self.dir.display()
                ))),
            },
        }
    }

    /// Node `id`'s exit status if its process ends within `timeout`. Unlike
    /// [`LocalCluster::exited`] this leaves the node counted as running, so [`LocalCluster::wait_exit`]
    /// still sees it end (the standard library keeps a reaped child's status).
    fn exit_status_within(&mut self, id: u64, timeout: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        let child = self.nodes[id as usize - 1].child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if started.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::env::var_os("NONSTOP_KEEP_CLUSTER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
