//! The operator's side of the control port: a node's status, a switchover, arming a fault
//! point. Each call proves it holds the cluster key with the peers' handshake
//! ([`nonstop_proto::operator`]); nothing here travels on the client port.
//!
//! ```no_run
//! use nonstop_node::operator::Operator;
//! use nonstop_proto::auth::ClusterKey;
//! let key = ClusterKey::from_hex(std::fs::read_to_string("cluster.key")?.trim())?;
//! let operator = Operator::new(vec![(1, "127.0.0.1:7001".parse()?), (2, "127.0.0.2:7001".parse()?)], key);
//! let moved = operator.switchover("bank", 2)?;
//! println!("primary now node {} in term {}", moved.to, moved.term);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::status::NodeStatus;
use nonstop_net::conn::{self, ConnError};
use nonstop_net::detections::Detections;
use nonstop_proto::auth::ClusterKey;
use nonstop_proto::frame::FrameKind;
use nonstop_proto::operator::{self, OperatorProtocolError, OperatorReply, OperatorRequest};
use nonstop_proto::{CheckpointId, Term};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why an operator request failed.
#[derive(Debug, Error)]
pub enum OperatorError {
    /// The node could not be reached, or did not prove it holds the cluster key.
    #[error("{0}")]
    Conn(#[from] ConnError),
    /// The node's answer did not decode.
    #[error("{0}")]
    Protocol(#[from] OperatorProtocolError),
    /// The node refused; retrying will not help.
    #[error("refused: {0}")]
    Rejected(String),
    /// No node could do it within the time given.
    #[error("not done within {waited:?} (last problem: {last}); is the service's primary up?")]
    Timeout {
        /// How long it was tried.
        waited: Duration,
        /// The last problem seen.
        last: String,
    },
    /// The node answered something this request does not expect.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// A finished switchover.
#[derive(Clone, Copy, Debug)]
pub struct Switched {
    /// The old primary.
    pub from: u64,
    /// The new primary.
    pub to: u64,
    /// The new term.
    pub term: u64,
    /// The last checkpoint of the old term.
    pub checkpoint: u64,
    /// From the request until new requests were refused and the last checkpoint cut.
    pub drained: Duration,
    /// From the request until the promotion was committed.
    pub committed: Duration,
}

/// Asks the node whose control port is `addr` one request, all of it (connection, handshake,
/// answer) within `timeout`.
pub fn ask(
    addr: SocketAddr,
    key: &ClusterKey,
    request: &OperatorRequest,
    timeout: Duration,
) -> Result<OperatorReply, OperatorError> {
    let deadline = Instant::now() + timeout;
    let (mut sender, mut receiver) = conn::connect_by(addr, key, &Arc::new(Detections::default()), deadline)?;
    sender.send(FrameKind::Operator, Term(0), CheckpointId(0), &operator::encode(request))?;
    loop {
        let frame = receiver.recv_by(deadline)?;
        if frame.kind == FrameKind::Operator {
            return Ok(operator::decode(&frame.payload)?);
        }
    }
}

/// The status of the node whose control port is `addr`.
pub fn status(addr: SocketAddr, key: &ClusterKey, timeout: Duration) -> Result<NodeStatus, OperatorError> {
    match ask(addr, key, &OperatorRequest::Status, timeout)? {
        OperatorReply::Status { json } => {
            serde_json::from_str(&json).map_err(|error| OperatorError::Unexpected(format!("status JSON: {error}")))
        }
        other => Err(unexpected(other)),
    }
}

/// Arms fault point `point` of the node at `addr` to kill it the `countdown`-th time it is
/// reached (only nodes whose config sets `fault_points = true` accept).
pub fn arm_fault(addr: SocketAddr, key: &ClusterKey, point: &str, countdown: u32) -> Result<(), OperatorError> {
    let request = OperatorRequest::ArmFault { point: point.to_string(), countdown };
    match ask(addr, key, &request, Duration::from_secs(2))? {
        OperatorReply::Armed => Ok(()),
        other => Err(unexpected(other)),
    }
}

fn unexpected(reply: OperatorReply) -> OperatorError {
    match reply {
        OperatorReply::Rejected { reason } => OperatorError::Rejected(reason),
        other => OperatorError::Unexpected(format!("{other:?}")),
    }
}

/// An operator of one cluster: its nodes' control addresses and the cluster key.
pub struct Operator {
    nodes: Vec<(u64, SocketAddr)>,
    key: ClusterKey,
    /// How long a switchover is tried (following the primary) before giving up.
    pub deadline: Duration,
}

impl Operator {
    /// An operator of the cluster whose nodes are `nodes` (id, control address).
    pub fn new(nodes: Vec<(u64, SocketAddr)>, key: ClusterKey) -> Operator {
        Operator { nodes, key, deadline: Duration::from_secs(30) }
    }

    /// Every node's status (`None`: it did not answer within `timeout`).
    pub fn statuses(&self, timeout: Duration) -> Vec<(u64, SocketAddr, Option<NodeStatus>)> {
        self.nodes.iter().map(|&(id, addr)| (id, addr, status(addr, &self.key, timeout).ok())).collect()
    }

    /// Moves the primary role of `service` to `to`, one of its backups, without losing
    /// anything; the request goes to the service's primary, found from the nodes' answers.
    pub fn switchover(&self, service: &str, to: u64) -> Result<Switched, OperatorError> {
        let request = OperatorRequest::Switchover { service: service.to_string(), to };
        let started = Instant::now();
        let mut target: Option<u64> = None;
        let mut next = 0;
        let mut last = String::from("no attempt yet");
        while started.elapsed() < self.deadline {
            let (id, addr) = match target.and_then(|t| self.nodes.iter().find(|(id, _)| *id == t)) {
                Some(&node) => node,
                None => {
                    next += 1;
                    self.nodes[(next - 1) % self.nodes.len().max(1)]
                }
            };
            match ask(addr, &self.key, &request, Duration::from_secs(15)) {
                Ok(OperatorReply::SwitchedOver { from, to, term, checkpoint, drained_us, committed_us }) => {
                    return Ok(Switched {
                        from,
                        to,
                        term,
                        checkpoint,
                        drained: Duration::from_micros(drained_us),
                        committed: Duration::from_micros(committed_us),
                    });
                }
                Ok(OperatorReply::Rejected { reason }) => return Err(OperatorError::Rejected(reason)),
                Ok(OperatorReply::NotPrimary { primary }) => {
                    last = format!("node {id} is not the primary (it names {primary:?})");
                    target = primary.filter(|p| *p != id);
                }
                Ok(other) => {
                    last = format!("node {id}: {other:?}");
                    target = None;
                }
                Err(error) => {
                    last = format!("node {id}: {error}");
                    target = None;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(OperatorError::Timeout { waited: started.elapsed(), last })
    }
}
