//! Load on any service, for fault tests: requests drawn by the service's own
//! [`Service::sample`](crate::Service::sample), and a verdict from the platform's client table.
//!
//! The harness does not know a third party's request types, so the load runs inside the node
//! binary, which does: `BINARY load --config node.toml --service NAME` (every node binary built
//! on [`crate::node::main`] has it, and so has `nonstop`). It prints one line per answer on
//! stdout and stops when its stdin closes:
//!
//! ```text
//! ack CLIENT REQUEST TERM      a request answered (applied now, or a retry answered)
//! refused CLIENT REQUEST       the service refused it (nothing applied; the number is used again)
//! unknown CLIENT REQUEST       no answer before the client's deadline
//! last CLIENT REQUEST          at the end: the client's last acknowledged request
//! ```
//!
//! Judging needs nothing of the service: every acknowledged request number of a client must be
//! at most the last one the client table remembers (else an acknowledged request was lost), and
//! the table's count of requests applied must equal that number (else one was applied twice),
//! besides the platform's and the service's own checks.

use crate::Registry;
use crate::history::{CheckReport, Counts, Violations};
use crate::load::{Ack, AckLog};
use anyhow::{Context, bail};
use nonstop_client::{Client, ClientError};
use nonstop_proto::client::ClientMemory;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// What the `load` subcommand is told.
#[derive(Clone, Debug, clap::Args)]
pub struct LoadArgs {
    /// A node's config: the cluster's client addresses and the service's kind and settings.
    #[arg(long)]
    pub config: PathBuf,
    /// The service to load.
    #[arg(long)]
    pub service: String,
    /// Client threads.
    #[arg(long, default_value_t = 4)]
    pub clients: u64,
    /// The first client's id.
    #[arg(long, default_value_t = 1)]
    pub first_client: u64,
    /// Seed of the requests drawn.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Runs the load `args` describes until stdin closes (the `load` subcommand of a node binary).
pub fn run(args: &LoadArgs, registry: &Registry) -> anyhow::Result<()> {
    let config = nonstop_node::config::NodeConfig::load(&args.config)?;
    let services = config.services(registry)?;
    let Some(hosted) = services.get(&args.service) else {
        bail!("the config at {} has no service {:?}", args.config.display(), args.service)
    };
    if hosted.sample(args.first_client, 0).is_none() {
        bail!("kind {:?} draws no sample requests (Service::sample): it needs a load of its own", hosted.kind());
    }
    let nodes: Vec<SocketAddr> = config.members.iter().filter(|m| !m.witness).map(|m| m.client).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let clients: Vec<JoinHandle<()>> = (args.first_client..args.first_client + args.clients)
        .map(|id| {
            let (hosted, nodes, stop, out, service) =
                (hosted.clone(), nodes.clone(), stop.clone(), out.clone(), args.service.clone());
            let seed = args.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(seed);
                let mut client = Client::new(nodes, id);
                let mut last = 0;
                while !stop.load(Ordering::Relaxed) {
                    let request = client.next_request(&service);
                    let body = hosted.sample(id, rng.random()).expect("checked above");
                    let line = match client.call_bytes(&service, body) {
                        Ok(answer) => {
                            last = answer.request;
                            format!("ack {id} {} {}", answer.request, answer.term)
                        }
                        Err(ClientError::Rejected { .. }) => format!("refused {id} {request}"),
                        Err(_) => format!("unknown {id} {request}"),
                    };
                    let _ = writeln!(out.lock().unwrap_or_else(|p| p.into_inner()), "{line}");
                }
                let _ = writeln!(out.lock().unwrap_or_else(|p| p.into_inner()), "last {id} {last}");
            })
        })
        .collect();
    // The harness closes stdin to stop the load.
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.join();
    }
    Ok(())
}

/// What a sampled load saw, client by client.
#[derive(Clone, Debug, Default)]
pub struct SampledHistory {
    /// Each client's last acknowledged request (0: none).
    pub last_acked: BTreeMap<u64, u64>,
    /// Counts by outcome (`transfers_ok` counts every acknowledged request).
    pub counts: Counts,
}

/// A `load` subcommand running in a child process, read as it goes.
pub struct SampledLoad {
    child: Child,
    stdin: Option<ChildStdin>,
    reader: Option<JoinHandle<SampledHistory>>,
    acks: Arc<AckLog>,
}

impl SampledLoad {
    /// Starts `exe load` against the cluster whose node config is `config`.
    pub fn start(exe: &Path, config: &Path, service: &str, clients: u64, seed: u64) -> anyhow::Result<SampledLoad> {
        let mut child = Command::new(exe)
            .arg("load")
            .arg("--config")
            .arg(config)
            .args(["--service", service, "--clients", &clients.to_string(), "--seed", &seed.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} load", exe.display()))?;
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take().expect("piped"));
        let acks = Arc::new(AckLog::default());
        let reader = {
            let acks = acks.clone();
            std::thread::spawn(move || read_lines(BufReader::new(stdout), &acks))
        };
        Ok(SampledLoad { child, stdin, reader: Some(reader), acks })
    }

    /// Every answer so far, with when it arrived.
    pub fn acks(&self) -> &AckLog {
        &self.acks
    }

    /// Stops the load (each client finishes its call in flight) and returns what it saw.
    pub fn stop(mut self) -> anyhow::Result<SampledHistory> {
        drop(self.stdin.take());
        let history = self.reader.take().expect("read once").join().expect("the load reader panicked");
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the load process failed ({status}); its error is above");
        }
        Ok(history)
    }
}

impl Drop for SampledLoad {
    fn drop(&mut self) {
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_lines(lines: impl BufRead, acks: &AckLog) -> SampledHistory {
    let mut history = SampledHistory::default();
    for line in lines.lines().map_while(Result::ok) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |at: usize| words.get(at).and_then(|w| w.parse::<u64>().ok()).unwrap_or(0);
        match words.first().copied() {
            Some("ack") => {
                acks.push(Ack { at: Instant::now(), term: number(3) });
                history.counts.transfers_ok += 1;
            }
            Some("refused") => history.counts.failed += 1,
            Some("unknown") => history.counts.unknown += 1,
            Some("last") => {
                history.last_acked.insert(number(1), number(2));
            }
            _ => {}
        }
    }
    history
}

/// What the audit found.
#[derive(Clone, Debug)]
pub struct SampledVerdict {
    /// The platform's check and the service's.
    pub check: Result<String, String>,
    /// Lost and doubled requests, in the history checker's terms.
    pub report: CheckReport,
}

/// Audits the service against `history`: every acknowledged request applied, none twice.
pub fn judge(nodes: Vec<SocketAddr>, service: &str, history: &SampledHistory) -> Result<SampledVerdict, ClientError> {
    let clients: Vec<u64> = history.last_acked.keys().copied().collect();
    let audit = Client::new(nodes, u64::MAX).audit(service, clients, None)?;
    let violations = violations(&history.last_acked, &audit.clients);
    let report = CheckReport { operations: history.counts, violations, examples: Vec::new() };
    Ok(SampledVerdict { check: audit.check, report })
}

/// Requests acknowledged but not remembered (lost), and applied beyond their number (twice),
/// from each client's last acknowledged request and what the client table remembers.
fn violations(last_acked: &BTreeMap<u64, u64>, remembered: &[(u64, Option<ClientMemory>)]) -> Violations {
    let mut violations = Violations::default();
    for (client, &acked) in last_acked {
        let memory = remembered.iter().find(|(c, _)| c == client).and_then(|(_, m)| m.as_ref());
        let (request, applied) = memory.map_or((0, 0), |m| (m.request, m.applied));
        violations.acked_lost += acked.saturating_sub(request);
        violations.applied_twice += applied.saturating_sub(request);
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_and_doubled_requests_are_counted() {
        let memory = |request, applied| Some(ClientMemory { request, applied, reply: None });
        let acked = BTreeMap::from([(1, 10), (2, 5), (3, 7), (4, 2)]);
        // Client 1 as expected; 2 applied one more (an unanswered call); 3 lost its last two
        // acknowledged requests; 4 is not remembered at all; 5 was never acknowledged.
        let remembered = [(1, memory(10, 10)), (2, memory(6, 6)), (3, memory(5, 5)), (4, None), (5, memory(3, 4))];
        let found = violations(&acked, &remembered);
        assert_eq!((found.acked_lost, found.applied_twice), (2 + 2, 0));
        let doubled = violations(&BTreeMap::from([(5, 3)]), &remembered);
        assert_eq!((doubled.acked_lost, doubled.applied_twice), (0, 1));
    }
}
