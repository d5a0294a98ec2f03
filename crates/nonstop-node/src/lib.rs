//! The nonstop node agent: `nonstop node --config FILE`, or any binary of a user's that fills a
//! [`nonstop_service::Registry`] with its service kinds and calls [`run_node`].
//!
//! An agent runs one node: its share of the Raft control plane, and for every configured
//! service the role the control plane gives it — primary, backup, or spare waiting to be
//! re-protected into a backup. It fails services over when their primary dies, brings spares up
//! to date, and serves the client protocol, redirecting clients to the primary.
//!
//! * [`config`]: the TOML configuration and its checks.
//! * [`preflight`]: the checks of a config against the machine (ports, addresses, memory).
//! * [`peers`]: authenticated agent-to-agent transport (Raft and heartbeats).
//! * [`agent`]: the control loop.
//! * [`service`]: one service's roles on this node and the moves between them.
//! * [`replica`]: an actively replicated service's replica on this node: its order group and
//!   the executor of what the group delivers.
//! * [`transfer`]: state transfer between an active service's replicas, on the control port.
//! * [`status`]: what a node reports of itself (status, metrics).
//! * [`client_server`]: the client port.
//! * [`integrity`]: scrubbing the primary's region, and stopping the node if it is corrupt.
//! * [`metrics`]: Prometheus metrics from the node's status.
//! * [`operator`]: the operator's requests (status, switchover, fault arming), authenticated
//!   with the cluster key on the control port.

pub mod agent;
pub mod client_server;
pub mod config;
pub mod integrity;
pub mod metrics;
pub mod operator;
pub mod peers;
pub mod preflight;
pub mod redis_port;
pub mod replica;
mod sentinel_port;
pub mod service;
pub mod status;
pub mod transfer;

pub use integrity::{EXIT_CORRUPT_MEMORY, fail_stop};
pub use nonstop_control::NodeId;

use agent::{Agent, NodeError};
use config::Checked;
use nonstop_proto::auth::ClusterKey;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// What one node counts and may be told to do for testing, shared by everything it runs (and
/// nothing process-wide, so that nodes in one process stay apart).
#[derive(Clone, Debug, Default)]
pub struct Instruments {
    /// Its fault points (armed only where the config enables them).
    pub faults: Arc<nonstop_net::fault::FaultPoints>,
    /// What its integrity checks caught.
    pub detections: Arc<nonstop_net::detections::Detections>,
    /// What its client port counts.
    pub clients: Arc<client_server::ClientCounters>,
}

/// The line a node prints on stdout once it serves (for scripts and `nonstop demo`).
pub const READY: &str = "node ready";

/// Runs the node the config file at `path` describes until `stop` is set, with the service
/// kinds of `registry`, and prints [`READY`] and the node's id on stdout once it serves (what
/// `nonstop demo` and the test harnesses wait for).
pub fn run_config_file(
    path: &std::path::Path,
    registry: &nonstop_service::Registry,
    stop: &AtomicBool,
) -> Result<(), NodeError> {
    let config = config::NodeConfig::load(path)?;
    let key = config::read_key_file(&config.key_file)?;
    let id = config.me.id;
    run_node(config, registry, key, stop, || {
        use std::io::Write;
        println!("{READY} {id}");
        let _ = std::io::stdout().flush();
    })
}

/// Runs a node until `stop` is set: control plane, services, the client port and, if the config
/// asks, the Redis port. The config's
/// services are built from `registry` (its kinds); `ready` is called once every service is
/// built, every port is bound and the config is known to fit the machine ([`preflight`]); a
/// config it cannot serve is an error before that.
pub fn run_node(
    config: Checked,
    registry: &nonstop_service::Registry,
    key: ClusterKey,
    stop: &AtomicBool,
    ready: impl FnOnce(),
) -> Result<(), NodeError> {
    let services = config.services(registry)?;
    let replication_ports = preflight::check(&config, preflight::available_memory())?;
    preflight::raise_descriptor_limit(&config)?;
    let client_addr = config.me.client;
    let listener = client_server::bind(client_addr).map_err(|source| NodeError::Listen {
        what: "client port",
        addr: client_addr,
        source,
    })?;
    let redis = match &config.redis {
        None => None,
        Some(port) => {
            let bind =
                |what, addr| client_server::bind(addr).map_err(|source| NodeError::Listen { what, addr, source });
            Some(client_server::RedisPorts {
                redis: bind("Redis port", port.addr)?,
                sentinel: config.sentinel.map(|addr| bind("sentinel port", addr)).transpose()?,
                service: redis_port::RedisService {
                    service: port.service.clone(),
                    node: config.me.id,
                    members: config.members.clone(),
                    addr: port.addr,
                    started_ms: client_server::wall_clock_ms(),
                    password: port.password_file.as_deref().map(config::read_redis_password).transpose()?,
                    idle: port.idle,
                    tls: match &port.tls {
                        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(config::redis_tls(cert, key)?)),
                        None => None,
                    },
                },
            })
        }
    };
    let metrics = config.metrics;
    let instruments = Instruments {
        faults: Arc::new(match config.fault_points {
            true => nonstop_net::fault::FaultPoints::enabled(),
            false => nonstop_net::fault::FaultPoints::disabled(),
        }),
        detections: Arc::default(),
        clients: Arc::default(),
    };
    let counters = instruments.clients.clone();
    let limits = config.clients;
    let io_threads = config.client_io_threads;
    let agent = Agent::start(config, &services, key, instruments, replication_ports)?;
    if let Some(addr) = metrics {
        metrics::start(addr, agent.status()).map_err(|source| NodeError::Listen { what: "metrics", addr, source })?;
    }
    let answering = Arc::new(client_server::Answering {
        services: agent.serving(),
        replicas: agent.replicas(),
        counters,
        limits,
        audits: Default::default(),
    });
    let _client_port = client_server::start(listener, redis, answering, io_threads)
        .map_err(|source| NodeError::Listen { what: "client port", addr: client_addr, source })?;
    tracing::info!(%client_addr, "{READY}");
    ready();
    agent.run(stop)
}
