//! Fault tests on a running cluster: `nonstop chaos kill` (processes on loopback) and
//! `nonstop chaos --netns KIND` (hosts of their own, with network faults, and error injection
//! with `--netns bitflip`).

mod active;
pub mod inject;
mod kill;
pub mod netns;
pub mod soak;

pub use active::{ActiveChaosConfig, ActiveChaosReport, ActiveTrial, ReplicaFault, run_active};
pub use kill::{ChaosConfig, ChaosReport, DoubleKill, Trial, run_kill};

use crate::cluster::LocalCluster;
use crate::history::CheckReport;
use crate::load::{self, Ack, AckLog, Load};
use crate::redis_load::RedisLoad;
use crate::sampled::SampledLoad;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Who loads the service in a fault test, and how its history is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clients {
    /// The bank's own clients (transfers and reads), judged by the history checker.
    Bank,
    /// The requests the kind samples, run by the cluster's binary ([`crate::sampled`]) and
    /// judged from the platform's client table.
    Sampled,
    /// Unchanged Redis clients finding the primary through the sentinels
    /// ([`crate::redis_load`]), judged from the keys they own (a `kv` service).
    Redis,
}

/// The clients of a fault test, running.
pub(crate) enum Traffic {
    Bank(Load),
    Sampled(SampledLoad),
    Redis(RedisLoad),
}

impl Traffic {
    /// Starts `clients` clients of service `name` (and, for the bank, `readers` readers); every
    /// thread of the bank's first runs `setup`, and a sampled load's process starts from the
    /// calling thread's network namespace.
    pub(crate) fn start(
        cluster: &LocalCluster,
        name: &str,
        clients: u64,
        readers: u64,
        kind: Clients,
        seed: u64,
        setup: impl Fn(&str) + Send + Sync + 'static,
    ) -> anyhow::Result<Traffic> {
        Ok(match kind {
            Clients::Bank => {
                Traffic::Bank(Load::start_with_readers(cluster.client_addrs(), name, clients, 1, readers, setup))
            }
            Clients::Sampled => {
                let config = &cluster.nodes[0].config;
                Traffic::Sampled(SampledLoad::start(cluster.exe(), config, name, clients, seed)?)
            }
            Clients::Redis => {
                let sentinels: Vec<_> = cluster.nodes.iter().filter_map(|node| node.sentinel).collect();
                anyhow::ensure!(
                    !sentinels.is_empty(),
                    "Redis clients need the cluster's sentinel ports (ClusterSpec::redis)"
                );
                Traffic::Redis(RedisLoad::start(sentinels, name, clients, seed)?)
            }
        })
    }

    /// Every answer so far, with when it arrived.
    pub(crate) fn acks(&self) -> &AckLog {
        match self {
            Traffic::Bank(load) => load.acks(),
            Traffic::Sampled(load) => load.acks(),
            Traffic::Redis(load) => load.acks(),
        }
    }

    /// See [`AckLog::wait_first_ack_after`].
    pub(crate) fn wait_first_ack_after(&self, after: Instant, term: u64, timeout: Duration) -> Option<Ack> {
        self.acks().wait_first_ack_after(after, term, timeout)
    }

    /// Stops the clients and audits the service: its checks, and the history's verdict.
    pub(crate) fn finish(self, cluster: &LocalCluster, name: &str) -> anyhow::Result<Finished> {
        Ok(match self {
            Traffic::Bank(load) => {
                let history = load.stop();
                let mut refusals: Vec<String> = Vec::new();
                for op in &history {
                    if let crate::history::Outcome::Fail { reason } = &op.outcome
                        && refusals.len() < 5
                        && !refusals.contains(reason)
                    {
                        refusals.push(reason.clone());
                    }
                }
                let verdict = load::audit(cluster.client_addrs(), name, &history)?;
                Finished { check: verdict.check, history: verdict.report, refusals }
            }
            Traffic::Sampled(load) => {
                let history = load.stop()?;
                let verdict = crate::sampled::judge(cluster.client_addrs(), name, &history)?;
                Finished { check: verdict.check, history: verdict.report, refusals: Vec::new() }
            }
            Traffic::Redis(load) => {
                let history = load.stop()?;
                // The platform's check and the service's, on the primary's quiesced region.
                let audit = nonstop::Client::new(cluster.client_addrs(), u64::MAX).audit(name, Vec::new(), None)?;
                Finished { check: audit.check, history, refusals: Vec::new() }
            }
        })
    }
}

impl Traffic {
    /// Stops the clients and, once `settled` returns (the replicas executed what the clients
    /// were answered), audits each of `replicas` (client addresses of an actively replicated
    /// service's replicas) on its own against the history.
    pub(crate) fn finish_each(
        self,
        name: &str,
        replicas: &[std::net::SocketAddr],
        settled: impl FnOnce(),
    ) -> anyhow::Result<Vec<Judged>> {
        let remembered = |addr: std::net::SocketAddr, clients: Vec<u64>| {
            nonstop::Client::new(vec![addr], u64::MAX).audit(name, clients, None).map(|audit| audit.clients)
        };
        let mut judged = Vec::new();
        match self {
            Traffic::Bank(load) => {
                let history = load.stop();
                settled();
                let mut clients: Vec<u64> = history.iter().map(|o| o.client).collect();
                clients.sort_unstable();
                clients.dedup();
                for addr in replicas {
                    let verdict = load::audit_answers(vec![*addr], name, &history, crate::history::Answers::Voted)?;
                    let remembered = remembered(*addr, clients.clone())?;
                    judged.push(Judged { check: verdict.check, history: verdict.report, remembered });
                }
            }
            Traffic::Sampled(load) => {
                let history = load.stop()?;
                settled();
                let clients: Vec<u64> = history.last_acked.keys().copied().collect();
                for addr in replicas {
                    let verdict = crate::sampled::judge(vec![*addr], name, &history)?;
                    let remembered = remembered(*addr, clients.clone())?;
                    judged.push(Judged { check: verdict.check, history: verdict.report, remembered });
                }
            }
            Traffic::Redis(_) => anyhow::bail!("Redis clients load a passively replicated kv service only"),
        }
        Ok(judged)
    }
}

/// One replica's audit against the clients' history ([`Traffic::finish_each`]).
pub(crate) struct Judged {
    /// The platform's and the service's checks on the replica's state.
    pub(crate) check: Result<String, String>,
    /// The history's verdict against the replica's state.
    pub(crate) history: CheckReport,
    /// What the replica's client table remembers of the history's clients.
    pub(crate) remembered: Vec<(u64, Option<nonstop_proto::client::ClientMemory>)>,
}

/// What the clients of a fault test found at the end.
pub(crate) struct Finished {
    /// The platform's and the service's checks.
    pub(crate) check: Result<String, String>,
    /// The history's verdict.
    pub(crate) history: CheckReport,
    /// Up to five different reasons the service refused a request (the bank's clients only).
    pub(crate) refusals: Vec<String>,
}

/// Percentiles in ms.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Millis {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Worst.
    pub max: f64,
}

/// Percentiles of `values` (ms).
pub fn millis(values: &[f64]) -> Millis {
    let mut histogram = Histogram::<u64>::new(3).expect("valid precision");
    for value in values {
        let _ = histogram.record((value * 1000.0).max(1.0) as u64);
    }
    if values.is_empty() {
        return Millis::default();
    }
    let at = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Millis { p50: at(0.5), p99: at(0.99), max: histogram.max() as f64 / 1000.0 }
}
