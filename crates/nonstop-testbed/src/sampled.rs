//! Fault tests on any service: a node binary's `load` subcommand (requests drawn by the
//! service's own `Service::sample`, printing one [`LoadLine`] per answer) run as a child
//! process and read as it goes, and a verdict from the platform's client table alone.
//!
//! Judging needs nothing of the service: every acknowledged request number of a client must be
//! at most the last one the client table remembers (else an acknowledged request was lost), and
//! the table's count of requests applied must equal that number (else one was applied twice),
//! besides the platform's and the service's own checks.

use crate::history::{CheckReport, Counts, Violations};
use crate::load::{Ack, AckLog};
use anyhow::{Context, bail};
use nonstop::node::LoadLine;
use nonstop::{Client, ClientError, ClientMemory};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

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
        match line.parse::<LoadLine>() {
            Ok(LoadLine::Ack { term, .. }) => {
                acks.push(Ack { at: Instant::now(), term });
                history.counts.transfers_ok += 1;
            }
            Ok(LoadLine::Refused { .. }) => history.counts.failed += 1,
            Ok(LoadLine::Unknown { .. }) => history.counts.unknown += 1,
            Ok(LoadLine::Last { client, request }) => {
                history.last_acked.insert(client, request);
            }
            // The binary's own prints (a user's node binary may print what it likes).
            Err(_) => {}
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
