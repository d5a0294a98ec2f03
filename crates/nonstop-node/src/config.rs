//! A node's TOML configuration, checked before anything starts.
//!
//! ```toml
//! [node]
//! id = 1
//! control = "127.0.0.1:7001"      # Raft and heartbeats between agents
//! client = "127.0.0.1:7101"       # the client protocol
//! replication = "127.0.0.1:7201"  # service i replicates on this port + i
//! data_dir = "/var/lib/nonstop/node1"
//! key_file = "/etc/nonstop/cluster.key"
//!
//! [[peers]]
//! id = 2
//! control = "127.0.0.2:7001"
//! client = "127.0.0.2:7101"
//! replication = "127.0.0.2:7201"
//!
//! [heartbeat]
//! interval_ms = 10
//! timeout_ms = 200
//!
//! # in [node]: handshake_timeout_ms = 2000  # a connecting peer's whole handshake
//! #            max_clients = 10000          # client connections open at once
//! #            client_idle_timeout_ms = 30000, client_message_timeout_ms = 5000
//! #            client_io_threads = 1        # default: half the cores, at least 1
//!
//! [[services]]
//! name = "bank"
//! primary = 1
//! backups = 1
//! min_backups = 0                 # output needs this many backups (default backups - 1)
//! region_base = "0x200000000000"
//! region_size_mib = 256
//! checkpoint_interval_us = 1000   # 0 (a checkpoint per commit) or 10 to 2000000
//! ```
//!
//! Every node of a cluster lists the same services; each error names the field and the fix.

use crate::NodeId;
use crate::client_server::{self, ClientLimits};
use nonstop_net::admission::HandshakeLimits;
use nonstop_proto::client::{MAX_REPLICAS, ReplyMode};
use nonstop_proto::{CommitPolicy, UpdateProtocol};
use nonstop_region::tracking::TrackingMode;
use nonstop_service::threaded::Scheduler;
use nonstop_service::{Built, Hosted, HostedThreads, Registry, Settings};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Why a configuration cannot run.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a node config (toml names the field and line).
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's description.
        message: String,
    },
    /// A value is wrong.
    #[error("config field `{field}`: {problem}; {fix}")]
    Invalid {
        /// The field, as `section.key` or `services[0].key`.
        field: String,
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
}

/// Refuses `value` of `field` outside `range` (in `unit`), with `fix`.
fn within(
    field: &str,
    value: usize,
    range: std::ops::RangeInclusive<usize>,
    unit: &str,
    fix: &str,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    let unit = if unit.is_empty() { String::new() } else { format!(" {unit}") };
    Err(invalid(field, format!("{value}{unit} is outside {}..={}", range.start(), range.end()), fix))
}

/// Reads the cluster key from `path` (the config's `node.key_file`); each error names the
/// field and how to write a key.
pub fn read_key_file(path: &Path) -> Result<nonstop_proto::auth::ClusterKey, ConfigError> {
    let field = "node.key_file";
    let example = format!("for example `openssl rand -hex 32 > {}`", path.display());
    let text = std::fs::read_to_string(path).map_err(|error| {
        invalid(
            field,
            format!("{:?} cannot be read ({error})", path.display().to_string()),
            format!("write the cluster key there, 64 hex digits and the same file on every node ({example})"),
        )
    })?;
    nonstop_proto::auth::ClusterKey::from_hex(text.trim()).map_err(|error| {
        invalid(
            field,
            format!("{:?}: {error}", path.display().to_string()),
            format!("the file must hold the cluster key, 64 hex digits ({example})"),
        )
    })
}

/// The most client connections a node may be configured for.
pub const MAX_CLIENTS: usize = 1_000_000;

/// The most client I/O threads a node may be given: far more than cores on any machine.
pub const MAX_IO_THREADS: usize = 1024;

fn invalid(field: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), problem: problem.into(), fix: fix.into() }
}

/// A node's whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node.
    pub node: NodeSection,
    /// The other nodes of the cluster.
    #[serde(default)]
    pub peers: Vec<PeerSection>,
    /// Failure detection.
    #[serde(default)]
    pub heartbeat: HeartbeatSection,
    /// The services the cluster runs.
    #[serde(default)]
    pub services: Vec<ServiceSection>,
}

/// `[node]`: this node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The node's number (1, 2, …), unique in the cluster.
    pub id: u64,
    /// Address for Raft and heartbeats.
    pub control: SocketAddr,
    /// Address for clients.
    pub client: SocketAddr,
    /// Replication address of the first service; service `i` uses this port + `i`.
    pub replication: SocketAddr,
    /// Where the node keeps its Raft log.
    pub data_dir: PathBuf,
    /// The cluster key file (64 hex digits), the same on every node.
    pub key_file: PathBuf,
    /// A witness votes in the control plane but holds no region.
    #[serde(default)]
    pub witness: bool,
    /// Where to serve Prometheus metrics (`GET /metrics`); none if absent.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Where to serve the cluster's `kv` service to Redis clients (RESP2/RESP3); none if
    /// absent. Needs exactly one service of kind `kv`. A node that is not its primary answers
    /// `-READONLY`, as a Redis replica does, so clients find the primary again.
    #[serde(default)]
    pub redis: Option<SocketAddr>,
    /// Where to answer Redis Sentinel's discovery commands for the `kv` service (`SENTINEL
    /// get-master-addr-by-name`, `SENTINEL masters`, `+switch-master`, ...), so that clients
    /// configured with Sentinels find the primary's Redis port; none if absent. Needs
    /// `node.redis`, and every peer that holds regions to name its `redis` address.
    #[serde(default)]
    pub sentinel: Option<SocketAddr>,
    /// A file holding the password Redis clients must give (`AUTH password`, or `AUTH default
    /// password`) before any command on the Redis and sentinel ports, as Redis's `requirepass`;
    /// none if absent.
    #[serde(default)]
    pub redis_password_file: Option<PathBuf>,
    /// A Redis or sentinel connection that sends nothing for this long is closed; 0 (the
    /// default, as Redis's `timeout 0`) never closes one. Client libraries keep pools of idle
    /// connections and expect them to stay open; `max_clients` bounds what they cost.
    #[serde(default)]
    pub redis_idle_timeout_ms: u64,
    /// The certificate chain (PEM) the Redis and sentinel ports present: with
    /// `redis_tls_key`, both ports speak TLS only (as Redis's `tls-port`); none if absent.
    #[serde(default)]
    pub redis_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `redis_tls_cert`.
    #[serde(default)]
    pub redis_tls_key: Option<PathBuf>,
    /// Measurement only: keep the control-plane leader on primaries (instead of away from
    /// them), so that a primary's death also costs an election (`chaos kill
    /// --leader-on-primary`).
    #[serde(default)]
    pub leader_on_primary: bool,
    /// Testing only: the node accepts fault points armed over its client port (`nonstop chaos
    /// kill` kills it at exact moments inside a checkpoint). Never on a production node.
    #[serde(default)]
    pub fault_points: bool,
    /// How long a peer connecting to the control or replication port has to finish its whole
    /// handshake (proving it holds the cluster key), however slowly its bytes come.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Client connections open at once; one more is told the node is full and closed.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// A client connection that sends nothing for this long is closed.
    #[serde(default = "default_client_idle_timeout_ms")]
    pub client_idle_timeout_ms: u64,
    /// A client's message must arrive whole this long after its first byte (and its reply be
    /// read as fast), or the connection is closed.
    #[serde(default = "default_client_message_timeout_ms")]
    pub client_message_timeout_ms: u64,
    /// Threads that serve the client, Redis and sentinel connections' I/O; by default half
    /// the machine's cores, at least one ([`client_server::default_io_threads`]).
    #[serde(default)]
    pub client_io_threads: Option<usize>,
}

fn default_max_clients() -> usize {
    ClientLimits::default().max_connections
}

fn default_client_idle_timeout_ms() -> u64 {
    ClientLimits::default().idle.as_millis() as u64
}

fn default_client_message_timeout_ms() -> u64 {
    ClientLimits::default().message.as_millis() as u64
}

fn default_handshake_timeout_ms() -> u64 {
    HandshakeLimits::default().deadline.as_millis() as u64
}

/// `[[peers]]`: another node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// Its number.
    pub id: u64,
    /// Its Raft and heartbeat address.
    pub control: SocketAddr,
    /// Its client address.
    pub client: SocketAddr,
    /// Its first replication address.
    pub replication: SocketAddr,
    /// Whether it is a witness.
    #[serde(default)]
    pub witness: bool,
    /// Its Redis port (its `node.redis`), where sentinels send clients when it is the primary.
    #[serde(default)]
    pub redis: Option<SocketAddr>,
    /// Its sentinel port (its `node.sentinel`), listed by `SENTINEL sentinels`.
    #[serde(default)]
    pub sentinel: Option<SocketAddr>,
}

/// `[heartbeat]`: failure detection.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatSection {
    /// Milliseconds between heartbeats (and Raft ticks).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Milliseconds of silence after which a node counts as failed. A node whose agent process
    /// dies is detected at once, by its closed connections; this covers pauses and partitions.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Milliseconds a primary may keep releasing output per lease grant. A primary that is
    /// silent (paused, cut off) is replaced only once its lease ran out, so this bounds how
    /// long such a failover takes; a primary whose process died is replaced at once.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
}

fn default_interval_ms() -> u64 {
    10
}
fn default_timeout_ms() -> u64 {
    200
}
fn default_lease_ms() -> u64 {
    400
}

impl Default for HeartbeatSection {
    fn default() -> Self {
        HeartbeatSection {
            interval_ms: default_interval_ms(),
            timeout_ms: default_timeout_ms(),
            lease_ms: default_lease_ms(),
        }
    }
}

/// `[[services]]`: one service.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// Its name, as clients address it.
    pub name: String,
    /// What it runs: a kind the node binary registered. `nonstop node` knows `bank`
    /// (Debit-Credit at fixed offsets, exactly once), `ledger` (the same requests over
    /// ordinary collections in the region; transparent mode only: give `tracking = "uffd"` or
    /// `"mprotect"`), `order-entry` (TPC-C's transactions) and `kv` (Redis's commands, for
    /// `node.redis`; transparent mode only); a binary of your own registers its own kinds.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// `passive` (the default: a primary checkpoints its region to backups, and a backup takes
    /// over when it fails) or `active` (every node that holds regions is a replica: each
    /// executes the same requests in one order, and the client votes on their replies; the
    /// cluster needs an odd number of them, 3 or more).
    #[serde(default = "default_replication")]
    pub replication: String,
    /// Active replication only: how a client decides on the replicas' replies: `majority` (the
    /// default: f+1 equal replies of 2f+1), `leader-only` (the order's leader replies, the
    /// others execute and keep theirs) or `pass-first` (the first reply wins).
    pub replies: Option<String>,
    /// Active replication only: entries of the order the replicas keep in memory before they
    /// compact them behind a snapshot (16 to 1,048,576; default 1,024); a quarter of that is
    /// kept behind each compaction. A replica that falls further behind (paused, cut off)
    /// takes a live replica's state by state transfer instead of the entries it missed.
    pub order_log_entries: Option<u64>,
    /// Active replication of a multithreaded kind only: how each replica's worker threads are
    /// scheduled so that every replica takes the mutexes in the same order: `npds` (one thread
    /// runs at a time), `pds1` or `pds2` (the default: rounds of at most one or two mutex
    /// acquisitions per thread).
    pub scheduler: Option<String>,
    /// Active replication of a multithreaded kind only: worker threads per replica (1 to 256;
    /// default 4).
    pub threads: Option<u16>,
    /// Passive replication: the node that is primary of the first term.
    pub primary: Option<u64>,
    /// Passive replication: backups wanted (default 1).
    pub backups: Option<u8>,
    /// Output is released only while at least this many backups hold it (and every backup in
    /// the record does): `0..=backups`, default `backups - 1`, so that k backups survive any k
    /// failures. Below it (after a failover, or while a lost backup is replaced) the primary
    /// holds its replies; with `min_backups = backups` it never releases with fewer copies.
    pub min_backups: Option<u8>,
    /// The region's virtual address, the same on every node (e.g. "0x200000000000"). Every
    /// service has one but an actively replicated one of a multithreaded kind, which keeps its
    /// state in its worker threads' mutexes.
    pub region_base: Option<String>,
    /// The region's size in MiB (with `region_base`).
    pub region_size_mib: Option<u64>,
    /// `au` or `du`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// How the primary finds what was written: `declared` (transactions declare each range)
    /// or transparent mode, where the kernel finds the written pages: `uffd` (Linux >= 6.7)
    /// or `mprotect`. Transparent mode ships DU diffs: set `protocol = "du"` with it.
    #[serde(default = "default_tracking")]
    pub tracking: String,
    /// Microseconds between checkpoints (epoch policy), 10 to 2,000,000; 0 for sync (a
    /// checkpoint per commit).
    #[serde(default = "default_interval_us")]
    pub checkpoint_interval_us: u64,
    /// `[services.settings]`: the service's own settings, as its kind defines them (`bank` and
    /// `ledger`: `branches`, Debit-Credit branches of 100,000 accounts, default 1).
    #[serde(default)]
    pub settings: toml::Table,
}

fn default_kind() -> String {
    "bank".into()
}
fn default_backups() -> u8 {
    1
}
fn default_replication() -> String {
    "passive".into()
}
fn default_tracking() -> String {
    "declared".into()
}
fn default_protocol() -> String {
    "au".into()
}
/// The shortest checkpoint interval a service may ask for, in microseconds: below it the cuts'
/// own cost is all the primary does.
const MIN_CHECKPOINT_INTERVAL_US: u64 = 10;
/// The longest, in microseconds: every write's reply waits up to one interval, and the papers
/// nonstop follows checkpoint at most every 2 s.
const MAX_CHECKPOINT_INTERVAL_US: u64 = 2_000_000;

fn default_interval_us() -> u64 {
    1000
}

/// A node of the cluster, this one or a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its number.
    pub id: NodeId,
    /// Raft and heartbeats.
    pub control: SocketAddr,
    /// Clients.
    pub client: SocketAddr,
    /// First replication address.
    pub replication: SocketAddr,
    /// Votes only.
    pub witness: bool,
    /// Its Redis port, if it has one.
    pub redis: Option<SocketAddr>,
    /// Its sentinel port, if it has one.
    pub sentinel: Option<SocketAddr>,
}

/// A service, checked.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// Its name.
    pub name: String,
    /// Its index in the config: its replication port offset.
    pub index: u16,
    /// First primary.
    pub primary: NodeId,
    /// Backups wanted.
    pub backups: u8,
    /// Backups the record must name for output to leave.
    pub min_backups: u8,
    /// Region address.
    pub region_base: usize,
    /// Region length in bytes.
    pub region_len: usize,
    /// Update protocol.
    pub protocol: UpdateProtocol,
    /// Transparent mode's write tracking; `None`: declared writes.
    pub tracking: Option<TrackingMode>,
    /// Commit policy.
    pub policy: CommitPolicy,
    /// What the service runs: a kind of the node binary's registry.
    pub kind: String,
    /// The service's own settings, for its kind.
    pub settings: Settings,
}

/// An actively replicated service, checked: every node that holds regions is one of its
/// replicas.
#[derive(Clone, Debug)]
pub struct ActiveSpec {
    /// Its name.
    pub name: String,
    /// Its index in the config.
    pub index: u16,
    /// Its replicas, by replica number (the nodes that hold regions, by id).
    pub replicas: Vec<NodeId>,
    /// How clients decide on the replicas' replies.
    pub replies: ReplyMode,
    /// Order entries kept in memory before compaction.
    pub order_log_entries: u64,
    /// Its region (the same address on every replica, so their images compare byte for
    /// byte); `None` for a multithreaded kind, which keeps its state in its threads' mutexes.
    pub region: Option<RegionPlace>,
    /// What the service runs: a kind of the node binary's registry.
    pub kind: String,
    /// The service's own settings, for its kind.
    pub settings: Settings,
    /// How a multithreaded kind's worker threads are scheduled, if the config says.
    pub scheduler: Option<Scheduler>,
    /// A multithreaded kind's worker threads per replica, if the config says.
    pub threads: Option<u16>,
}

/// How a multithreaded kind's replica runs when the config does not say.
pub const DEFAULT_SCHEDULER: Scheduler = Scheduler::Pds2;

/// Worker threads per replica of a multithreaded kind when the config does not say.
pub const DEFAULT_THREADS: u16 = 4;

/// The most worker threads a replica of a multithreaded kind may run.
const MAX_THREADS: u16 = 256;

/// An actively replicated service, built.
#[derive(Clone, Debug)]
pub enum ActiveService {
    /// Its state in the replica's region, one request at a time.
    InRegion(Hosted),
    /// Its state in the mutexes of `threads` worker threads, scheduled by `scheduler`.
    OnThreads {
        /// The service.
        service: HostedThreads,
        /// How its threads take the mutexes.
        scheduler: Scheduler,
        /// Worker threads per replica.
        threads: u16,
    },
}

/// The config's services, built.
#[derive(Clone, Debug, Default)]
pub struct Services {
    /// The passively replicated ones, by name.
    pub passive: BTreeMap<String, Hosted>,
    /// The actively replicated ones, by name.
    pub active: BTreeMap<String, ActiveService>,
}

impl Services {
    /// A request of service `name` for load tests, encoded (`None`: no such service, or its
    /// kind draws none).
    pub fn sample(&self, name: &str, client: u64, draw: u64) -> Option<Vec<u8>> {
        match (self.passive.get(name), self.active.get(name)) {
            (Some(hosted), _) | (None, Some(ActiveService::InRegion(hosted))) => hosted.sample(client, draw),
            (None, Some(ActiveService::OnThreads { service, .. })) => service.sample(client, draw),
            (None, None) => None,
        }
    }

    /// The kind of service `name`.
    pub fn kind(&self, name: &str) -> Option<&str> {
        match (self.passive.get(name), self.active.get(name)) {
            (Some(hosted), _) | (None, Some(ActiveService::InRegion(hosted))) => Some(hosted.kind()),
            (None, Some(ActiveService::OnThreads { service, .. })) => Some(service.kind()),
            (None, None) => None,
        }
    }
}

/// The kind a Redis port serves.
pub const KV_KIND: &str = "kv";

/// Where a node serves Redis clients, and which service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisPort {
    /// The address to listen on.
    pub addr: SocketAddr,
    /// The service of kind `kv` it serves.
    pub service: String,
    /// The file of the password clients must give, if any.
    pub password_file: Option<PathBuf>,
    /// The certificate chain and key files, if the ports speak TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How long a connection may stay silent; `None`: for ever.
    pub idle: Option<Duration>,
}

/// Where a service's region lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionPlace {
    /// Its address, the same on every node.
    pub base: usize,
    /// Its length in bytes.
    pub len: usize,
}

/// A service's region: its address and length, checked; `None` if the config gives neither.
fn region(service: &ServiceSection, index: usize) -> Result<Option<RegionPlace>, ConfigError> {
    let field = |key: &str| format!("services[{index}].{key}");
    let (region_base, region_size_mib) = match (&service.region_base, service.region_size_mib) {
        (None, None) => return Ok(None),
        (Some(base), Some(mib)) => (base, mib),
        (Some(_), None) => {
            return Err(invalid(field("region_size_mib"), "is missing", "give the region's size in MiB"));
        }
        (None, Some(_)) => {
            return Err(invalid(
                field("region_base"),
                "is missing",
                "give the region's address, like \"0x200000000000\"",
            ));
        }
    };
    let digits = region_base.trim_start_matches("0x").replace('_', "");
    let base = usize::from_str_radix(&digits, 16).map_err(|_| {
        invalid(
            field("region_base"),
            format!("{region_base:?} is not a hex address"),
            "write it like \"0x200000000000\"",
        )
    })?;
    if base == 0 || base % (2 << 20) != 0 {
        return Err(invalid(
            field("region_base"),
            format!("{base:#x} is not 2 MiB aligned"),
            "use a multiple of 0x200000",
        ));
    }
    let region_len = region_size_mib
        .checked_mul(1 << 20)
        .filter(|len| *len > 0 && *len <= nonstop_region::MAX_REGION_LEN as u64)
        .ok_or_else(|| {
            invalid(
                field("region_size_mib"),
                format!("{region_size_mib} MiB"),
                format!("use 1 to {} MiB", nonstop_region::MAX_REGION_LEN >> 20),
            )
        })? as usize;
    Ok(Some(RegionPlace { base, len: region_len }))
}

/// Order entries an active service's replicas keep in memory by default.
const DEFAULT_ORDER_LOG_ENTRIES: u64 = 1024;

/// The order entries a replica may keep: enough that compaction is not constant, few enough
/// that memory stays bounded.
const ORDER_LOG_ENTRIES: std::ops::RangeInclusive<u64> = 16..=1 << 20;

/// An actively replicated service's section, checked: its replicas are every node that holds
/// regions, which must be 2f+1 of them.
fn active_spec(
    service: &ServiceSection,
    index: usize,
    members: &[Member],
    region: Option<RegionPlace>,
) -> Result<ActiveSpec, ConfigError> {
    let field = |key: &str| format!("services[{index}].{key}");
    let passive_only = [
        ("primary", service.primary.is_some()),
        ("backups", service.backups.is_some()),
        ("min_backups", service.min_backups.is_some()),
    ];
    for (key, given) in passive_only {
        if given {
            return Err(invalid(
                field(key),
                "is set on an actively replicated service",
                "remove it: every node that holds regions is a replica, and none is primary",
            ));
        }
    }
    let replies = match service.replies.as_deref() {
        None => ReplyMode::Majority,
        Some(name) => ReplyMode::from_name(name).ok_or_else(|| {
            invalid(field("replies"), format!("{name:?}"), "use \"majority\", \"leader-only\" or \"pass-first\"")
        })?,
    };
    let order_log_entries = service.order_log_entries.unwrap_or(DEFAULT_ORDER_LOG_ENTRIES);
    if !ORDER_LOG_ENTRIES.contains(&order_log_entries) {
        return Err(invalid(
            field("order_log_entries"),
            order_log_entries.to_string(),
            format!("use {} to {} entries", ORDER_LOG_ENTRIES.start(), ORDER_LOG_ENTRIES.end()),
        ));
    }
    let scheduler = match service.scheduler.as_deref() {
        None => None,
        Some(name) => Some(Scheduler::parse(name).map_err(|problem| {
            invalid(field("scheduler"), problem, "choose a scheduler multithreaded replicas run on nodes")
        })?),
    };
    if let Some(threads) = service.threads
        && !(1..=MAX_THREADS).contains(&threads)
    {
        return Err(invalid(field("threads"), threads.to_string(), format!("use 1 to {MAX_THREADS} worker threads")));
    }
    let replicas: Vec<NodeId> = members.iter().filter(|m| !m.witness).map(|m| m.id).collect();
    if replicas.len() < 3 || replicas.len().is_multiple_of(2) || replicas.len() > MAX_REPLICAS {
        return Err(invalid(
            field("replication"),
            format!("\"active\" with {} nodes that hold regions", replicas.len()),
            "active replication masks f failures with 2f+1 replicas: run 3, 5 or 7 nodes that are not witnesses",
        ));
    }
    Ok(ActiveSpec {
        name: service.name.clone(),
        index: index as u16,
        replicas,
        replies,
        order_log_entries,
        region,
        kind: service.kind.clone(),
        settings: Settings::new(service.settings.clone()),
        scheduler,
        threads: service.threads,
    })
}

/// The TLS configuration of the Redis and sentinel ports, from a certificate chain and its
/// private key (PEM files).
pub fn redis_tls(cert: &Path, key: &Path) -> Result<std::sync::Arc<tokio_rustls::rustls::ServerConfig>, ConfigError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let shown = |path: &Path| format!("{:?}", path.display().to_string());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).and_then(|certs| certs.collect::<Result<_, _>>()).map_err(|error| {
            invalid("node.redis_tls_cert", format!("{}: {error}", shown(cert)), "give a PEM certificate chain")
        })?;
    if chain.is_empty() {
        return Err(invalid(
            "node.redis_tls_cert",
            format!("{} holds no certificate", shown(cert)),
            "give a PEM certificate chain",
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|error| {
        invalid("node.redis_tls_key", format!("{}: {error}", shown(key)), "give the certificate's private key, PEM")
    })?;
    // ring, not aws-lc-rs: aws-lc-rs is a long C build (cmake, a C compiler) on every machine
    // that builds a node; the price is no post-quantum key exchange, which rustls 0.23.48
    // deprecates ring's provider for.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid("node.redis_tls_cert", error.to_string(), "use TLS 1.2 or 1.3"))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|error| {
            invalid(
                "node.redis_tls_key",
                format!("{}: {error}", shown(key)),
                "give the private key of node.redis_tls_cert",
            )
        })?;
    Ok(std::sync::Arc::new(config))
}

/// Reads the Redis clients' password from `path` (one line; the line end is not part of it).
pub fn read_redis_password(path: &Path) -> Result<std::sync::Arc<[u8]>, ConfigError> {
    let field = "node.redis_password_file";
    let text = std::fs::read(path).map_err(|error| {
        invalid(field, format!("{:?} cannot be read ({error})", path.display().to_string()), "write the password there")
    })?;
    let password = text.strip_suffix(b"\n").unwrap_or(&text);
    let password = password.strip_suffix(b"\r").unwrap_or(password);
    if password.is_empty() {
        return Err(invalid(field, format!("{:?} is empty", path.display().to_string()), "write the password there"));
    }
    Ok(password.into())
}

/// A configuration, checked: what the agent runs on.
#[derive(Clone, Debug)]
pub struct Checked {
    /// This node.
    pub me: Member,
    /// Every node, this one included, by id.
    pub members: Vec<Member>,
    /// Raft log directory.
    pub data_dir: PathBuf,
    /// Cluster key file.
    pub key_file: PathBuf,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Failure timeout.
    pub timeout: Duration,
    /// Lease length.
    pub lease: Duration,
    /// Prometheus metrics address.
    pub metrics: Option<SocketAddr>,
    /// The Redis port, and the `kv` service it serves.
    pub redis: Option<RedisPort>,
    /// The sentinel port, for the Redis port's service.
    pub sentinel: Option<SocketAddr>,
    /// Measurement only: control-plane leadership kept on primaries.
    pub leader_on_primary: bool,
    /// Testing only: fault points may be armed.
    pub fault_points: bool,
    /// Bounds on the handshakes of the control and replication ports.
    pub handshake: HandshakeLimits,
    /// Bounds on client connections.
    pub clients: ClientLimits,
    /// Threads that serve the client ports' connections.
    pub client_io_threads: usize,
    /// Passively replicated services.
    pub services: Vec<ServiceSpec>,
    /// Actively replicated services.
    pub active: Vec<ActiveSpec>,
}

impl Checked {
    /// The member `id`.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Where `node` serves replication of `service`.
    pub fn replication_addr(&self, node: NodeId, service: &ServiceSpec) -> Option<SocketAddr> {
        let mut addr = self.member(node)?.replication;
        addr.set_port(addr.port().checked_add(service.index)?);
        Some(addr)
    }
}

impl Checked {
    /// Builds every service of the config from `registry`, before anything starts: a kind the
    /// binary does not know, settings its kind refuses, a region too small for it,
    /// collections without transparent mode, or a multithreaded kind passively replicated (or
    /// a single-threaded one given threads) are refused with the field and the fix.
    pub fn services(&self, registry: &Registry) -> Result<Services, ConfigError> {
        let mut services = Services::default();
        for spec in &self.services {
            let hosted = match build(registry, spec.index, &spec.kind, &spec.settings, Some(spec.region_len))? {
                Built::InRegion(hosted) => hosted,
                Built::OnThreads(_) => {
                    return Err(invalid(
                        format!("services[{}].replication", spec.index),
                        format!(
                            "\"passive\" for kind {:?}, whose worker threads keep its state outside the region",
                            spec.kind
                        ),
                        "set replication = \"active\": a backup copies a region, and this kind keeps nothing there",
                    ));
                }
            };
            if hosted.needs_transparent() && spec.tracking.is_none() {
                return Err(invalid(
                    format!("services[{}].tracking", spec.index),
                    format!("\"declared\" for kind {:?}", spec.kind),
                    "this kind keeps plain collections whose writes the kernel finds: set tracking = \"uffd\" or \"mprotect\" (and protocol = \"du\")",
                ));
            }
            services.passive.insert(spec.name.clone(), hosted);
        }
        for spec in &self.active {
            // An active replica's region is its own (nothing ships), so any kind runs as it is.
            let field = |key: &str| format!("services[{}].{key}", spec.index);
            let service = match build(registry, spec.index, &spec.kind, &spec.settings, spec.region.map(|r| r.len))? {
                Built::OnThreads(_) if spec.region.is_some() => {
                    return Err(invalid(
                        field("region_base"),
                        format!(
                            "is set for kind {:?}, which keeps its state in its worker threads' mutexes",
                            spec.kind
                        ),
                        "remove region_base and region_size_mib: this kind maps no region",
                    ));
                }
                Built::OnThreads(service) => ActiveService::OnThreads {
                    service,
                    scheduler: spec.scheduler.unwrap_or(DEFAULT_SCHEDULER),
                    threads: spec.threads.unwrap_or(DEFAULT_THREADS),
                },
                Built::InRegion(_) if spec.region.is_none() => {
                    return Err(invalid(
                        field("region_base"),
                        "is missing",
                        format!(
                            "give the region's address and size (region_base, region_size_mib): kind {:?} keeps its state there",
                            spec.kind
                        ),
                    ));
                }
                Built::InRegion(hosted) => {
                    if let Some(key) = [("scheduler", spec.scheduler.is_some()), ("threads", spec.threads.is_some())]
                        .into_iter()
                        .find_map(|(key, given)| given.then_some(key))
                    {
                        return Err(invalid(
                            format!("services[{}].{key}", spec.index),
                            format!("is set for kind {:?}, which runs one request at a time", spec.kind),
                            "remove it: only a multithreaded kind has worker threads to schedule",
                        ));
                    }
                    ActiveService::InRegion(hosted)
                }
            };
            services.active.insert(spec.name.clone(), service);
        }
        Ok(services)
    }
}

/// Builds service `index` of kind `kind` from `registry`, and checks that it fits its region
/// (of `region_len` bytes, if it has one).
fn build(
    registry: &Registry,
    index: u16,
    kind: &str,
    settings: &Settings,
    region_len: Option<usize>,
) -> Result<Built, ConfigError> {
    let field = |key: &str| format!("services[{index}].{key}");
    let built = registry.make(kind, settings).map_err(|error| match error {
        nonstop_service::RegistryError::Unknown { kind, known } => invalid(
            field("kind"),
            format!("{kind:?} is not a service kind of this node binary"),
            format!("use one of {known}, or run a node binary that registers {kind:?}"),
        ),
        nonstop_service::RegistryError::Settings { reason, .. } => {
            invalid(field("settings"), reason, format!("fix [services.settings] of kind {kind:?}"))
        }
    })?;
    let needed = built.region_len();
    if let Some(region_len) = region_len
        && needed > region_len
    {
        return Err(invalid(
            field("region_size_mib"),
            format!(
                "{} MiB, but kind {kind:?} with these settings needs {} MiB (its state and the client table)",
                region_len >> 20,
                needed.div_ceil(1 << 20)
            ),
            format!("set region_size_mib = {} or more, or shrink the service's settings", needed.div_ceil(1 << 20)),
        ));
    }
    Ok(built)
}

impl NodeConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Checked, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        NodeConfig::parse(&text, path)?.check()
    }

    /// Parses TOML text (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
    }

    /// Checks every value; the first problem found is returned.
    pub fn check(self) -> Result<Checked, ConfigError> {
        let me = Member {
            id: NodeId(self.node.id),
            control: self.node.control,
            client: self.node.client,
            replication: self.node.replication,
            witness: self.node.witness,
            redis: self.node.redis,
            sentinel: self.node.sentinel,
        };
        let mut members = vec![me.clone()];
        for peer in &self.peers {
            members.push(Member {
                id: NodeId(peer.id),
                control: peer.control,
                client: peer.client,
                replication: peer.replication,
                witness: peer.witness,
                redis: peer.redis,
                sentinel: peer.sentinel,
            });
        }
        for (i, member) in members.iter().enumerate() {
            let field = if i == 0 { "node.id".to_string() } else { format!("peers[{}].id", i - 1) };
            if member.id.0 == 0 {
                return Err(invalid(field, "0 is reserved", "number nodes from 1"));
            }
            if member.id.0 > nonstop_active::membership::MAX_NODE {
                // An active service's order group names a node's process by its id and a count
                // of its restarts, in one Raft id.
                return Err(invalid(
                    field,
                    format!("{} is too large", member.id),
                    format!("number nodes from 1 to {}", nonstop_active::membership::MAX_NODE),
                ));
            }
            if members[..i].iter().any(|m| m.id == member.id) {
                return Err(invalid(field, format!("{} appears twice", member.id), "give every node its own id"));
            }
        }
        members.sort_by_key(|m| m.id);
        let holders = members.iter().filter(|m| !m.witness).count();
        let hb = &self.heartbeat;
        if hb.interval_ms == 0 {
            return Err(invalid("heartbeat.interval_ms", "is 0", "use at least 1 (10 is the default)"));
        }
        if hb.timeout_ms < 3 * hb.interval_ms {
            return Err(invalid(
                "heartbeat.timeout_ms",
                format!("{} ms is under three heartbeats of {} ms", hb.timeout_ms, hb.interval_ms),
                "make it at least 3 x interval_ms, or a late heartbeat causes a needless failover",
            ));
        }
        let node = &self.node;
        within(
            "node.handshake_timeout_ms",
            node.handshake_timeout_ms as usize,
            10..=60_000,
            "ms",
            "a peer on the network finishes its handshake in a round trip; 2000 (the default) leaves room for a slow one",
        )?;
        within(
            "node.max_clients",
            node.max_clients,
            1..=MAX_CLIENTS,
            "",
            "each connection needs a file descriptor; 10000 (the default) suits most nodes",
        )?;
        within(
            "node.client_idle_timeout_ms",
            node.client_idle_timeout_ms as usize,
            100..=86_400_000,
            "ms",
            "clients that keep a connection open between requests need minutes at most; 30000 is the default",
        )?;
        within(
            "node.client_message_timeout_ms",
            node.client_message_timeout_ms as usize,
            10..=600_000,
            "ms",
            "a message of at most 64 KiB arrives in milliseconds; 5000 (the default) leaves room for a slow network",
        )?;
        if let Some(threads) = node.client_io_threads {
            within(
                "node.client_io_threads",
                threads,
                1..=MAX_IO_THREADS,
                "",
                "each thread serves many connections; leave it out for half the machine's cores",
            )?;
        }
        if hb.lease_ms < hb.timeout_ms {
            return Err(invalid("heartbeat.lease_ms", "is shorter than timeout_ms", "make it at least timeout_ms"));
        }
        let mut services = Vec::new();
        let mut active = Vec::new();
        for (index, service) in self.services.iter().enumerate() {
            let field = |key: &str| format!("services[{index}].{key}");
            if service.name.is_empty() || self.services[..index].iter().any(|s| s.name == service.name) {
                return Err(invalid(field("name"), "is empty or used twice", "give every service its own name"));
            }
            if service.kind.is_empty() {
                return Err(invalid(field("kind"), "is empty", "name the service's kind, e.g. \"bank\""));
            }
            let region = region(service, index)?;
            if service.replication == "active" {
                active.push(active_spec(service, index, &members, region)?);
                continue;
            }
            let RegionPlace { base: region_base, len: region_len } = region.ok_or_else(|| {
                invalid(
                    field("region_base"),
                    "is missing",
                    "give the region's address and size (region_base, region_size_mib): a passive service's state lives there",
                )
            })?;
            if service.replication != "passive" {
                return Err(invalid(
                    field("replication"),
                    format!("{:?}", service.replication),
                    "use \"passive\" (checkpoints to backups) or \"active\" (replicas vote)",
                ));
            }
            if service.replies.is_some() {
                return Err(invalid(
                    field("replies"),
                    "is set on a passively replicated service, whose primary alone replies",
                    "remove it, or set replication = \"active\"",
                ));
            }
            if service.order_log_entries.is_some() {
                return Err(invalid(
                    field("order_log_entries"),
                    "is set on a passively replicated service, which has no order of requests",
                    "remove it, or set replication = \"active\"",
                ));
            }
            for (key, given) in [("scheduler", service.scheduler.is_some()), ("threads", service.threads.is_some())] {
                if given {
                    return Err(invalid(
                        field(key),
                        "is set on a passively replicated service, which runs one request at a time",
                        "remove it, or set replication = \"active\" for a multithreaded kind",
                    ));
                }
            }
            let primary = NodeId(service.primary.ok_or_else(|| {
                invalid(field("primary"), "is missing", "name the node that is primary of the first term")
            })?);
            let backups = service.backups.unwrap_or_else(default_backups);
            match members.iter().find(|m| m.id == primary) {
                None => {
                    return Err(invalid(
                        field("primary"),
                        format!("{primary} is not in the cluster"),
                        "name a node from [node] or [[peers]]",
                    ));
                }
                Some(m) if m.witness => {
                    return Err(invalid(
                        field("primary"),
                        format!("{primary} is a witness"),
                        "name a node that holds regions",
                    ));
                }
                Some(_) => {}
            }
            if backups as usize >= holders {
                return Err(invalid(
                    field("backups"),
                    format!(
                        "{} backups need {} nodes that hold regions, the cluster has {holders}",
                        backups,
                        backups as usize + 1
                    ),
                    "add nodes or lower backups",
                ));
            }
            let min_backups = service.min_backups.unwrap_or(backups.saturating_sub(1));
            if min_backups > backups {
                return Err(invalid(
                    field("min_backups"),
                    format!("{min_backups} is more than the {} backups configured", backups),
                    format!(
                        "use 0..={} (the default, {}, survives {} failures)",
                        backups,
                        backups.saturating_sub(1),
                        backups
                    ),
                ));
            }
            let protocol = match service.protocol.as_str() {
                "au" => UpdateProtocol::Au,
                "du" => UpdateProtocol::Du,
                other => return Err(invalid(field("protocol"), format!("{other:?}"), "use \"au\" or \"du\"")),
            };
            let tracking = match service.tracking.as_str() {
                "declared" => None,
                name => {
                    let mode: TrackingMode = name.parse().map_err(|_| {
                        invalid(field("tracking"), format!("{name:?}"), "use \"declared\", \"uffd\" or \"mprotect\"")
                    })?;
                    if protocol != UpdateProtocol::Du {
                        return Err(invalid(
                            field("tracking"),
                            format!("{name:?} with protocol {:?}", service.protocol),
                            "transparent mode ships DU diffs: set protocol = \"du\"",
                        ));
                    }
                    if let Err(error) = nonstop_region::tracking::probe(mode) {
                        return Err(invalid(field("tracking"), format!("{name:?}"), error.to_string()));
                    }
                    Some(mode)
                }
            };
            let policy = match service.checkpoint_interval_us {
                0 => CommitPolicy::Sync,
                interval_us @ MIN_CHECKPOINT_INTERVAL_US..=MAX_CHECKPOINT_INTERVAL_US => {
                    CommitPolicy::Epoch { interval_us, max_commits: 0 }
                }
                other => {
                    return Err(invalid(
                        field("checkpoint_interval_us"),
                        format!("{other} us"),
                        format!(
                            "use 0 (a checkpoint per commit) or {MIN_CHECKPOINT_INTERVAL_US} to {MAX_CHECKPOINT_INTERVAL_US} (2 s, the longest interval of the papers nonstop follows); every write's reply waits up to one interval"
                        ),
                    ));
                }
            };
            services.push(ServiceSpec {
                name: service.name.clone(),
                index: index as u16,
                primary,
                backups,
                min_backups,
                region_base,
                region_len,
                protocol,
                tracking,
                policy,
                kind: service.kind.clone(),
                settings: Settings::new(service.settings.clone()),
            });
        }
        // (index, name, base, length) of every region, passive and active.
        let mut by_base: Vec<(u16, &str, usize, usize)> = services
            .iter()
            .map(|s| (s.index, s.name.as_str(), s.region_base, s.region_len))
            .chain(active.iter().filter_map(|s: &ActiveSpec| {
                s.region.map(|region| (s.index, s.name.as_str(), region.base, region.len))
            }))
            .collect();
        by_base.sort_by_key(|&(_, _, base, _)| base);
        for pair in by_base.windows(2) {
            let ((_, low_name, low_base, low_len), (high_index, _, high_base, _)) = (pair[0], pair[1]);
            if low_base + low_len > high_base {
                return Err(invalid(
                    format!("services[{high_index}].region_base"),
                    format!(
                        "{high_base:#x} lies inside service {low_name:?}'s region ({low_base:#x}, {} MiB)",
                        low_len >> 20
                    ),
                    format!(
                        "give each service its own range: {:#x} or above is free of it",
                        (low_base + low_len).next_multiple_of(2 << 20)
                    ),
                ));
            }
        }
        let redis = match self.node.redis {
            None => None,
            Some(addr) => {
                if let Some(service) = active.iter().find(|s| s.kind == KV_KIND) {
                    return Err(invalid(
                        format!("services[{}].replication", service.index),
                        "\"active\" for the kv service a Redis port serves",
                        "Redis clients expect one server to answer them: replicate kv passively (the default)",
                    ));
                }
                let kv: Vec<&ServiceSpec> = services.iter().filter(|s| s.kind == KV_KIND).collect();
                match kv.as_slice() {
                    _ if me.witness => {
                        return Err(invalid(
                            "node.redis",
                            "is set on a witness",
                            "serve Redis from nodes that hold regions",
                        ));
                    }
                    [service] => Some(RedisPort {
                        addr,
                        service: service.name.clone(),
                        password_file: self.node.redis_password_file.clone(),
                        idle: (self.node.redis_idle_timeout_ms > 0)
                            .then(|| Duration::from_millis(self.node.redis_idle_timeout_ms)),
                        tls: match (&self.node.redis_tls_cert, &self.node.redis_tls_key) {
                            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
                            (None, None) => None,
                            (Some(_), None) | (None, Some(_)) => {
                                return Err(invalid(
                                    "node.redis_tls_cert",
                                    "is given without node.redis_tls_key, or the key without the certificate",
                                    "give both files (PEM), or neither",
                                ));
                            }
                        },
                    }),
                    [] => {
                        return Err(invalid(
                            "node.redis",
                            "is set but no service has kind \"kv\"",
                            "add a [[services]] of kind = \"kv\", or remove node.redis",
                        ));
                    }
                    _ => {
                        return Err(invalid(
                            "node.redis",
                            "is set and several services have kind \"kv\"",
                            "a Redis port serves one keyspace: keep one kv service per cluster",
                        ));
                    }
                }
            }
        };
        if (self.node.redis_tls_cert.is_some() || self.node.redis_tls_key.is_some()) && redis.is_none() {
            return Err(invalid(
                "node.redis_tls_cert",
                "is set without node.redis",
                "set node.redis too, or remove the TLS files",
            ));
        }
        if self.node.redis_password_file.is_some() && redis.is_none() {
            return Err(invalid(
                "node.redis_password_file",
                "is set without node.redis",
                "set node.redis too, or remove the password file",
            ));
        }
        if let Some(sentinel) = self.node.sentinel {
            if redis.is_none() {
                return Err(invalid(
                    "node.sentinel",
                    format!("{sentinel} is set without node.redis"),
                    "a sentinel sends clients to Redis ports: set node.redis too",
                ));
            }
            if let Some(peer) = members.iter().find(|m| !m.witness && m.redis.is_none()) {
                return Err(invalid(
                    format!("peers (node {})", peer.id),
                    "has no redis address, so sentinels could not send clients to it once it is the primary",
                    "give every peer that holds regions `redis = \"ADDR\"`, its node.redis",
                ));
            }
        }
        Ok(Checked {
            me,
            members,
            data_dir: self.node.data_dir,
            key_file: self.node.key_file,
            heartbeat: Duration::from_millis(hb.interval_ms),
            timeout: Duration::from_millis(hb.timeout_ms),
            lease: Duration::from_millis(hb.lease_ms),
            metrics: self.node.metrics,
            redis,
            sentinel: self.node.sentinel,
            leader_on_primary: self.node.leader_on_primary,
            fault_points: self.node.fault_points,
            handshake: HandshakeLimits {
                deadline: Duration::from_millis(self.node.handshake_timeout_ms),
                ..HandshakeLimits::default()
            },
            clients: ClientLimits {
                idle: Duration::from_millis(self.node.client_idle_timeout_ms),
                message: Duration::from_millis(self.node.client_message_timeout_ms),
                max_connections: self.node.max_clients,
            },
            client_io_threads: self.node.client_io_threads.unwrap_or_else(client_server::default_io_threads),
            services,
            active,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [node]
        id = 1
        control = "127.0.0.1:7001"
        client = "127.0.0.1:7101"
        replication = "127.0.0.1:7201"
        data_dir = "/tmp/n1"
        key_file = "/tmp/key"

        [[peers]]
        id = 2
        control = "127.0.0.2:7001"
        client = "127.0.0.2:7101"
        replication = "127.0.0.2:7201"

        [[services]]
        name = "bank"
        primary = 1
        region_base = "0x200000000000"
        region_size_mib = 128
    "#;

    fn check(text: &str) -> Result<Checked, ConfigError> {
        let checked = NodeConfig::parse(text, Path::new("test.toml"))?.check()?;
        let mut registry = Registry::new();
        nonstop_workloads::register_builtins(&mut registry);
        checked.services(&registry)?;
        Ok(checked)
    }

    #[test]
    fn a_good_config_checks() {
        let checked = check(GOOD).unwrap();
        assert_eq!(checked.members.len(), 2);
        assert_eq!(checked.services[0].region_base, 0x2000_0000_0000);
        let addr = checked.replication_addr(NodeId(2), &checked.services[0]).unwrap();
        assert_eq!(addr.to_string(), "127.0.0.2:7201");
        assert_eq!(checked.services[0].min_backups, 0, "one backup: a failover may run degraded");
        let strict = check(&GOOD.replace("region_size_mib = 128", "region_size_mib = 128\nmin_backups = 1")).unwrap();
        assert_eq!(strict.services[0].min_backups, 1);
    }

    #[test]
    fn an_active_service_runs_on_every_node_that_holds_regions() {
        let three = GOOD.replace(
            "[[services]]",
            "[[peers]]\nid = 3\ncontrol = \"127.0.0.3:7001\"\nclient = \"127.0.0.3:7101\"\nreplication = \"127.0.0.3:7201\"\n\n[[services]]",
        );
        let active = three.replace("primary = 1\n", "replication = \"active\"\n");
        let checked = check(&active).unwrap();
        assert!(checked.services.is_empty(), "no passive role for it");
        let spec = &checked.active[0];
        assert_eq!((spec.replicas.len(), spec.replies), (3, ReplyMode::Majority));
        let semi =
            check(&active.replace("replication = \"active\"", "replication = \"active\"\nreplies = \"leader-only\""));
        assert_eq!(semi.unwrap().active[0].replies, ReplyMode::LeaderOnly);
        let refused = |text: &str| check(text).unwrap_err().to_string();
        let with_primary = refused(&three.replace("primary = 1\n", "primary = 1\nreplication = \"active\"\n"));
        assert!(
            with_primary.contains("services[0].primary") && with_primary.contains("none is primary"),
            "{with_primary}"
        );
        let two = refused(&GOOD.replace("primary = 1\n", "replication = \"active\"\n"));
        assert!(two.contains("services[0].replication") && two.contains("2f+1"), "{two}");
        let witness = refused(&active.replace("id = 3\n", "id = 3\nwitness = true\n"));
        assert!(witness.contains("2 nodes that hold regions"), "{witness}");
        let mode =
            refused(&active.replace("replication = \"active\"", "replication = \"active\"\nreplies = \"first\""));
        assert!(mode.contains("services[0].replies") && mode.contains("pass-first"), "{mode}");
        let passive_replies = refused(&GOOD.replace("primary = 1\n", "primary = 1\nreplies = \"majority\"\n"));
        assert!(passive_replies.contains("services[0].replies"), "{passive_replies}");
        let passive_log = refused(&GOOD.replace("primary = 1\n", "primary = 1\norder_log_entries = 64\n"));
        assert!(passive_log.contains("services[0].order_log_entries"), "{passive_log}");
        let tiny_log =
            refused(&active.replace("replication = \"active\"", "replication = \"active\"\norder_log_entries = 3"));
        assert!(tiny_log.contains("order_log_entries") && tiny_log.contains("16 to"), "{tiny_log}");
        let kept =
            check(&active.replace("replication = \"active\"", "replication = \"active\"\norder_log_entries = 64"));
        assert_eq!(kept.unwrap().active[0].order_log_entries, 64);
        let unknown = refused(&GOOD.replace("primary = 1\n", "primary = 1\nreplication = \"semi\"\n"));
        assert!(unknown.contains("services[0].replication"), "{unknown}");
        let no_primary = refused(&GOOD.replace("primary = 1\n", ""));
        assert!(no_primary.contains("services[0].primary") && no_primary.contains("missing"), "{no_primary}");
        let kv = active
            .replace("key_file = \"/tmp/key\"", "key_file = \"/tmp/key\"\nredis = \"127.0.0.1:6379\"")
            .replace("name = \"bank\"", "name = \"cache\"\nkind = \"kv\"");
        let redis = refused(&kv);
        assert!(redis.contains("services[0].replication") && redis.contains("Redis"), "{redis}");
    }

    #[test]
    fn a_multithreaded_kind_runs_actively_with_a_scheduler_and_threads() {
        let three = GOOD.replace(
            "[[services]]",
            "[[peers]]\nid = 3\ncontrol = \"127.0.0.3:7001\"\nclient = \"127.0.0.3:7101\"\nreplication = \"127.0.0.3:7201\"\n\n[[services]]",
        );
        let survey = three
            .replace("name = \"bank\"", "name = \"s\"\nkind = \"survey\"")
            .replace("region_base = \"0x200000000000\"\n        region_size_mib = 128\n", "");
        let active = survey.replace("primary = 1\n", "replication = \"active\"\n");
        let registry = {
            let mut registry = Registry::new();
            nonstop_workloads::register_builtins(&mut registry);
            registry
        };
        let built = |text: &str| NodeConfig::parse(text, Path::new("test.toml"))?.check()?.services(&registry);
        let threads = |text: &str| match built(text).unwrap().active.remove("s") {
            Some(ActiveService::OnThreads { scheduler, threads, .. }) => (scheduler, threads),
            other => panic!("{other:?}"),
        };
        assert_eq!(threads(&active), (DEFAULT_SCHEDULER, DEFAULT_THREADS));
        let chosen =
            active.replace("replication = \"active\"", "replication = \"active\"\nscheduler = \"npds\"\nthreads = 10");
        assert_eq!(threads(&chosen), (Scheduler::Npds, 10));
        let refused = |text: &str| built(text).unwrap_err().to_string();
        let passive = refused(
            &survey.replace("primary = 1\n", "primary = 1\nregion_base = \"0x200000000000\"\nregion_size_mib = 8\n"),
        );
        assert!(passive.contains("services[0].replication") && passive.contains("\"active\""), "{passive}");
        let no_region = refused(&survey);
        assert!(no_region.contains("services[0].region_base") && no_region.contains("is missing"), "{no_region}");
        let with_region = refused(&active.replace(
            "replication = \"active\"",
            "replication = \"active\"\nregion_base = \"0x200000000000\"\nregion_size_mib = 8",
        ));
        assert!(
            with_region.contains("services[0].region_base") && with_region.contains("maps no region"),
            "{with_region}"
        );
        let half =
            refused(&active.replace("replication = \"active\"", "replication = \"active\"\nregion_size_mib = 8"));
        assert!(half.contains("services[0].region_base") && half.contains("is missing"), "{half}");
        let bank_without_region = refused(
            &three
                .replace("primary = 1\n", "replication = \"active\"\n")
                .replace("region_base = \"0x200000000000\"\n        region_size_mib = 128\n", ""),
        );
        assert!(bank_without_region.contains("keeps its state there"), "{bank_without_region}");
        let unknown =
            refused(&active.replace("replication = \"active\"", "replication = \"active\"\nscheduler = \"pds3\""));
        assert!(unknown.contains("services[0].scheduler") && unknown.contains("pds2"), "{unknown}");
        let many = refused(&active.replace("replication = \"active\"", "replication = \"active\"\nthreads = 0"));
        assert!(many.contains("services[0].threads") && many.contains("1 to 256"), "{many}");
        let bank = three.replace("primary = 1\n", "replication = \"active\"\nthreads = 2\n");
        let single = refused(&bank);
        assert!(single.contains("services[0].threads") && single.contains("one request at a time"), "{single}");
        let passive_threads = refused(&GOOD.replace("primary = 1\n", "primary = 1\nscheduler = \"pds1\"\n"));
        assert!(passive_threads.contains("services[0].scheduler"), "{passive_threads}");
    }

    #[test]
    fn a_redis_port_serves_the_one_kv_service() {
        let kv = GOOD
            .replace("key_file = \"/tmp/key\"", "key_file = \"/tmp/key\"\nredis = \"127.0.0.1:6379\"")
            .replace("name = \"bank\"", "name = \"cache\"\nkind = \"kv\"");
        let checked = NodeConfig::parse(&kv, Path::new("test.toml")).unwrap().check().unwrap();
        let port = checked.redis.expect("a Redis port");
        assert_eq!((port.addr.to_string(), port.service.as_str()), ("127.0.0.1:6379".into(), "cache"));
        assert_eq!(port.idle, None, "idle Redis connections stay open, as with Redis's timeout 0");
        let timed =
            kv.replace("redis = \"127.0.0.1:6379\"", "redis = \"127.0.0.1:6379\"\nredis_idle_timeout_ms = 300000");
        let checked = NodeConfig::parse(&timed, Path::new("test.toml")).unwrap().check().unwrap();
        assert_eq!(checked.redis.unwrap().idle, Some(Duration::from_secs(300)));
        let two = format!(
            "{kv}\n[[services]]\nname = \"other\"\nkind = \"kv\"\nprimary = 1\nregion_base = \"0x300000000000\"\nregion_size_mib = 128\n"
        );
        let refused = NodeConfig::parse(&two, Path::new("test.toml")).unwrap().check().unwrap_err().to_string();
        assert!(refused.contains("node.redis") && refused.contains("several"), "{refused}");
    }

    #[test]
    fn a_redis_password_is_one_line_and_not_empty() {
        let dir = std::env::temp_dir().join(format!("nonstop-password-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(&*read_redis_password(&file).unwrap(), b"s3cret");
        std::fs::write(&file, "\n").unwrap();
        assert!(read_redis_password(&file).unwrap_err().to_string().contains("empty"));
        assert!(read_redis_password(&dir.join("none")).unwrap_err().to_string().contains("cannot be read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_files_are_read_with_their_field_named() {
        let missing = redis_tls(Path::new("/nonexistent/cert.pem"), Path::new("/nonexistent/key.pem"));
        assert!(missing.unwrap_err().to_string().contains("node.redis_tls_cert"));
        let dir = std::env::temp_dir().join(format!("nonstop-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(redis_tls(&empty, &empty).unwrap_err().to_string().contains("no certificate"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_sentinel_port_needs_every_redis_port() {
        let kv = GOOD
            .replace("key_file = \"/tmp/key\"", "key_file = \"/tmp/key\"\nredis = \"127.0.0.1:6379\"")
            .replace("name = \"bank\"", "name = \"cache\"\nkind = \"kv\"");
        let with_sentinel =
            kv.replace("redis = \"127.0.0.1:6379\"", "redis = \"127.0.0.1:6379\"\nsentinel = \"127.0.0.1:26379\"");
        let refused =
            NodeConfig::parse(&with_sentinel, Path::new("test.toml")).unwrap().check().unwrap_err().to_string();
        assert!(refused.contains("node 2") && refused.contains("redis"), "{refused}");
        let peers_known = with_sentinel.replace(
            "replication = \"127.0.0.2:7201\"",
            "replication = \"127.0.0.2:7201\"\nredis = \"127.0.0.2:6379\"\nsentinel = \"127.0.0.2:26379\"",
        );
        let checked = NodeConfig::parse(&peers_known, Path::new("test.toml")).unwrap().check().unwrap();
        assert_eq!(checked.sentinel.map(|addr| addr.port()), Some(26379));
        assert_eq!(checked.member(NodeId(2)).and_then(|m| m.sentinel).map(|addr| addr.port()), Some(26379));
        let alone = GOOD.replace("key_file = \"/tmp/key\"", "key_file = \"/tmp/key\"\nsentinel = \"127.0.0.1:26379\"");
        let refused = NodeConfig::parse(&alone, Path::new("test.toml")).unwrap().check().unwrap_err().to_string();
        assert!(refused.contains("node.sentinel"), "{refused}");
    }

    #[test]
    fn every_error_names_its_field() {
        let cases = [
            (GOOD.replace("id = 2", "id = 1"), "peers[0].id"),
            (GOOD.replace("primary = 1", "primary = 9"), "services[0].primary"),
            (GOOD.replace("0x200000000000", "0x200000000001"), "services[0].region_base"),
            (GOOD.replace("region_size_mib = 128", "region_size_mib = 1"), "services[0].region_size_mib"),
            (GOOD.replace("region_size_mib = 128", "region_size_mib = 128\nbackups = 2"), "services[0].backups"),
            (
                GOOD.replace("region_size_mib = 128", "region_size_mib = 128\nmin_backups = 2"),
                "services[0].min_backups",
            ),
            (
                GOOD.replace("region_size_mib = 128", "region_size_mib = 128\ncheckpoint_interval_us = 5"),
                "services[0].checkpoint_interval_us",
            ),
            (
                GOOD.replace("region_size_mib = 128", "region_size_mib = 128\ncheckpoint_interval_us = 3600000000"),
                "services[0].checkpoint_interval_us",
            ),
            (format!("{GOOD}\n[heartbeat]\ninterval_ms = 10\ntimeout_ms = 20"), "heartbeat.timeout_ms"),
            (
                GOOD.replace("key_file = \"/tmp/key\"", "key_file = \"/tmp/key\"\nhandshake_timeout_ms = 0"),
                "node.handshake_timeout_ms",
            ),
            (GOOD.replace("key_file = \"/tmp/key\"", "key_file = \"/tmp/key\"\nmax_clients = 0"), "node.max_clients"),
            (
                GOOD.replace("key_file = \"/tmp/key\"", "key_file = \"/tmp/key\"\nclient_io_threads = 0"),
                "node.client_io_threads",
            ),
            (
                GOOD.replace("key_file = \"/tmp/key\"", "key_file = \"/tmp/key\"\nclient_idle_timeout_ms = 5"),
                "node.client_idle_timeout_ms",
            ),
            (
                GOOD.replace("key_file = \"/tmp/key\"", "key_file = \"/tmp/key\"\nclient_message_timeout_ms = 0"),
                "node.client_message_timeout_ms",
            ),
            // A second service whose region starts inside the first's.
            (
                format!(
                    "{GOOD}\n[[services]]\nname = \"ledger2\"\nprimary = 1\nregion_base = \"0x200004000000\"\nregion_size_mib = 128\n"
                ),
                "services[1].region_base",
            ),
            (GOOD.replace("name = \"bank\"", "name = \"bank\"\nkind = \"redis\""), "services[0].kind"),
            (format!("{GOOD}\n[services.settings]\nbranchs = 2\n"), "services[0].settings"),
            (format!("{GOOD}\n[services.settings]\nbranches = 20\n"), "services[0].region_size_mib"),
            // A Redis port needs one kv service to serve.
            (
                GOOD.replace("key_file = \"/tmp/key\"", "key_file = \"/tmp/key\"\nredis = \"127.0.0.1:6379\""),
                "node.redis",
            ),
            (
                GOOD.replace("key_file = \"/tmp/key\"", "key_file = \"/tmp/key\"\nredis_password_file = \"/tmp/pw\""),
                "node.redis_password_file",
            ),
            (
                GOOD.replace("key_file = \"/tmp/key\"", "key_file = \"/tmp/key\"\nredis_tls_cert = \"/tmp/cert.pem\""),
                "node.redis_tls_cert",
            ),
            // The ledger's plain collections need the kernel to find their writes.
            (GOOD.replace("name = \"bank\"", "name = \"bank\"\nkind = \"ledger\""), "services[0].tracking"),
            (GOOD.replace("name = \"bank\"", "name = \"bank\"\ntracking = \"soft-dirty\""), "services[0].tracking"),
            // Transparent mode ships DU diffs; the default protocol is AU.
            (GOOD.replace("name = \"bank\"", "name = \"bank\"\ntracking = \"mprotect\""), "services[0].tracking"),
        ];
        for (text, field) in cases {
            let error = check(&text).unwrap_err().to_string();
            assert!(error.contains(field), "{field}: {error}");
        }
        let transparent =
            GOOD.replace("name = \"bank\"", "name = \"bank\"\nprotocol = \"du\"\ntracking = \"mprotect\"");
        assert_eq!(check(&transparent).unwrap().services[0].tracking, Some(TrackingMode::Mprotect));
        let unknown = check(&GOOD.replace("id = 1", "id = 1\nidd = 3")).unwrap_err().to_string();
        assert!(unknown.contains("idd"), "{unknown}");
    }
}
