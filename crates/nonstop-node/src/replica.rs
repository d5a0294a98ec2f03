//! An actively replicated service's replica on this node.
//!
//! Every node that holds regions is a replica of each active service: a member of the
//! service's order group (a [`RaftNode`] of [`Order`], driven by the agent's thread as the
//! control plane is), and an executor thread that runs what the group delivers, in order, on
//! the replica's own region. Nothing ships between replicas but the order: each computes its
//! state itself, and the client votes on their replies ([`ClientReply::Voted`]).
//!
//! A call reaches a replica on its client port. If the replica executed the request already
//! (a retry), it answers what it answered then; otherwise it waits for the request's delivery
//! and proposes it to the group (every replica a client asks proposes it; the order delivers
//! it once, and the platform's client table in the region would apply it once anyway). Under `leader-only` replies a follower sends the client to the
//! group's leader, so that only the leader answers, until it fails.
//!
//! A query is answered by each replica from its state as it stands, and voted on as a call is;
//! replicas at different points of the order may disagree around a write, and the client asks
//! again until enough agree. An audit looks at one replica's state, not a vote.
//!
//! Not built yet (docs/active.md): re-integration of a replica that fell
//! behind the group's compacted log (it stops serving, and says so), membership changes, and
//! multithreaded services under the deterministic schedulers.

use crate::NodeId;
use crate::client_server::{AuditSlot, wall_clock_ms};
use crate::config::ActiveSpec;
use crate::peers::{Body, PeerEvent, Peers};
use crate::service::lock;
use crate::status::ReplicaStatus;
use nonstop_active::calls::{Asked, Calls};
use nonstop_active::order::{Batch, Delivered, Order, Request};
use nonstop_control::log::MemoryLog;
use nonstop_control::{ControlConfig, ControlError, ElectionJitter, RaftNode, Replicated};
use nonstop_proto::CheckpointId;
use nonstop_proto::client::{ClientReply, ReplyMode, Vote};
use nonstop_region::{Mirror, Region};
use nonstop_service::{CallError, Caller, Executed, Hosted};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a call waits for its request to be executed before the replica answers
/// `Unavailable` (the client then asks again, with the same number).
const EXECUTION_WAIT: Duration = Duration::from_secs(1);

/// Request bytes one log entry carries at most: an entry travels in one peer frame (1 MiB).
const BATCH_BYTES: usize = 512 << 10;

/// Request bytes waiting to be proposed at most; calls beyond it are refused for now.
const PENDING_BYTES: usize = 8 << 20;

/// The value of [`Replica::leader`] when no leader is known.
const NO_LEADER: u16 = u16::MAX;

/// Whether a replica serves.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Standing {
    Serving,
    /// It stopped, for the reason given (its state no longer follows the order).
    Stopped(String),
}

/// What client threads and the executor share of the replica.
struct Shared {
    standing: Standing,
    /// Which calls wait, what to propose, what was executed.
    calls: Calls<oneshot::Sender<Vote>>,
}

/// What client threads see of a replica.
pub struct Replica {
    name: String,
    /// Its number in the group.
    me: u16,
    /// The replicas' client addresses, by number.
    group: Vec<String>,
    mode: ReplyMode,
    service: Hosted,
    mirror: Mirror,
    /// The group's leader as last polled ([`NO_LEADER`]: none known).
    leader: AtomicU16,
    shared: Mutex<Shared>,
    /// Wakes the agent when the first request is pending.
    wake: Mutex<Sender<PeerEvent>>,
}

/// Why a replica cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// Its region cannot be mapped or initialised.
    #[error("active service {service}: {problem}")]
    Region {
        /// The service.
        service: String,
        /// What failed.
        problem: String,
    },
    /// Its order group refused its configuration.
    #[error("active service {service}: {source}")]
    Group {
        /// The service.
        service: String,
        /// The group's error.
        source: ControlError,
    },
}

/// The agent's side of a replica: the order group and the executor.
pub struct ReplicaHost {
    replica: Arc<Replica>,
    /// Its membership of the order group; `None` if it sits out (see [`ReplicaHost::start`]).
    group: Option<RaftNode<Order>>,
    replicas: Vec<NodeId>,
    deliveries: Option<Sender<Delivered>>,
    executor: Option<JoinHandle<()>>,
    /// After the order's leader died: ticks until this replica stands, unless a new leader is
    /// known by then, and the dead leader.
    standing_in: Option<(u32, NodeId)>,
    /// Where its membership is marked, until it is: before its first message to the group
    /// (from then on it may have voted or acknowledged, which a restart would forget).
    unmarked: Option<std::path::PathBuf>,
}

/// Ticks between the surviving replicas' turns to stand after the order's leader died: the
/// first may lose for a shorter log, and the next then stands without waiting out the
/// election timeout.
const STAND_TURN_TICKS: u32 = 3;

impl ReplicaHost {
    /// Maps the replica's region, initialises the service in it, and starts its executor; the
    /// group's messages go out through the agent ([`ReplicaHost::poll`]).
    ///
    /// The group's log lives in memory, so a node whose process restarted has forgotten what
    /// it acknowledged and voted for: rejoining under its old id could let the group lose a
    /// committed entry or elect two leaders in a term. It sits out instead (serving its
    /// passive services), until re-integration as a new member is built. The mark of its
    /// membership goes into `data_dir` before its first message to the group.
    pub fn start(
        spec: &ActiveSpec,
        service: Hosted,
        me: NodeId,
        client_addrs: Vec<String>,
        group_config: ControlConfig,
        wake: Sender<PeerEvent>,
        data_dir: &std::path::Path,
    ) -> Result<ReplicaHost, ReplicaError> {
        let region_error = |problem: String| ReplicaError::Region { service: spec.name.clone(), problem };
        let region = Region::map(spec.region_base, spec.region_len).map_err(|error| region_error(error.to_string()))?;
        // Nothing ships from a replica's region: it needs no write tracking, only the same
        // execution as the others'.
        let mirror = match service.needs_transparent() {
            true => Mirror::transparent_unreplicated(region, CheckpointId(1)),
            false => Mirror::new(region, None, CheckpointId(1)),
        };
        service.init(&mirror).map_err(|error| region_error(format!("the service does not initialise: {error}")))?;
        let number = spec.replicas.iter().position(|r| *r == me).expect("the config makes every holder a replica");
        let mark = data_dir.join(format!("active-{}.member", spec.name));
        let standing = match mark.exists() {
            true => Standing::Stopped(format!(
                "node {} restarted and lost the replica's state and its order log; it sits out of the group, since re-integration as a new member is not built yet",
                me.0
            )),
            false => Standing::Serving,
        };
        let group = match standing {
            Standing::Serving => Some(
                RaftNode::new(group_config, Box::new(MemoryLog::default()))
                    .map_err(|source| ReplicaError::Group { service: spec.name.clone(), source })?,
            ),
            Standing::Stopped(ref reason) => {
                tracing::error!(service = spec.name, %reason, "replica sits out");
                None
            }
        };
        let replica = Arc::new(Replica {
            name: spec.name.clone(),
            me: number as u16,
            group: client_addrs,
            mode: spec.replies,
            service,
            mirror,
            leader: AtomicU16::new(NO_LEADER),
            shared: Mutex::new(Shared { standing, calls: Calls::new(PENDING_BYTES) }),
            wake: Mutex::new(wake),
        });
        let (deliveries, delivered) = mpsc::channel();
        let executor = {
            let replica = replica.clone();
            std::thread::Builder::new()
                .name(format!("nonstop-replica-{}", spec.name))
                .spawn(move || execute_order(&replica, delivered))
                .map_err(|error| region_error(format!("no executor thread: {error}")))?
        };
        Ok(ReplicaHost {
            replica,
            group,
            replicas: spec.replicas.clone(),
            deliveries: Some(deliveries),
            executor: Some(executor),
            standing_in: None,
            unmarked: Some(mark),
        })
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.replica.name
    }

    /// What client threads use.
    pub fn replica(&self) -> Arc<Replica> {
        self.replica.clone()
    }

    /// What `nonstop status` shows of the replica.
    pub fn status(&self) -> ReplicaStatus {
        let shared = lock(&self.replica.shared);
        ReplicaStatus {
            name: self.replica.name.clone(),
            replica: self.replica.me,
            order_leader: self.group.as_ref().and_then(|g| g.leader()).map(|id| id.0),
            order_term: self.group.as_ref().map_or(0, |g| g.raft_term()),
            applied_index: self.group.as_ref().map_or(0, |g| g.state().applied_index()),
            delivered: self.group.as_ref().map_or(0, |g| g.state().delivered()),
            executed: shared.calls.executed_count(),
            stopped: match &shared.standing {
                Standing::Serving => None,
                Standing::Stopped(reason) => Some(reason.clone()),
            },
        }
    }

    /// One Raft tick of the group.
    pub fn tick(&mut self) {
        let Some(group) = &mut self.group else { return };
        group.tick();
        match self.standing_in {
            Some((0, dead)) => {
                self.standing_in = None;
                if group.leader().is_none_or(|leader| leader == dead) {
                    tracing::info!(service = self.replica.name, "no new order leader yet: standing in turn");
                    group.campaign_after_leader_loss();
                }
            }
            Some((ticks, dead)) => self.standing_in = Some((ticks - 1, dead)),
            None => {}
        }
    }

    /// Steps a message of the group from a peer.
    pub fn step(&mut self, from: NodeId, bytes: &[u8]) {
        let Some(group) = &mut self.group else { return };
        if !self.replicas.contains(&from) {
            return tracing::warn!(service = self.replica.name, peer = from.0, "order message from a non-replica");
        }
        if let Err(error) = group.step(bytes)
            && !error.is_dropped_proposal()
        {
            tracing::warn!(service = self.replica.name, peer = from.0, %error, "order message refused");
        }
    }

    /// Peer `from`'s process is gone (its connection closed). If it led the order group, the
    /// live replicas stand for election in turn, lowest-numbered first and at once, instead of
    /// after the election timeout, as the control plane does: the order would otherwise stand
    /// still for 200-400 ms (measured with `nonstop chaos kill --replication active`). The next
    /// in turn stands [`STAND_TURN_TICKS`] later if no leader is known by then (the first may
    /// lose for a shorter log; Raft's rules decide, this changes only when they are asked).
    pub fn on_peer_down(&mut self, from: NodeId, alive: impl Fn(NodeId) -> bool) {
        let Some(group) = &mut self.group else { return };
        if group.leader() != Some(from) {
            return;
        }
        let survivors: Vec<NodeId> = self.replicas.iter().copied().filter(|id| *id != from && alive(*id)).collect();
        match survivors.iter().position(|id| *id == group.id()) {
            Some(0) => {
                tracing::info!(
                    service = self.replica.name,
                    leader = from.0,
                    "the order's leader is gone: standing now"
                );
                group.campaign_after_leader_loss();
            }
            Some(turn) => self.standing_in = Some((turn as u32 * STAND_TURN_TICKS, from)),
            None => {}
        }
    }

    /// Proposes what calls left pending, as one entry (or more, if they exceed an entry's
    /// bytes). With no leader known they wait: a proposal now would be dropped.
    pub fn propose(&mut self) {
        let Some(group) = &mut self.group else { return };
        if group.leader().is_none() {
            return;
        }
        loop {
            let requests = lock(&self.replica.shared).calls.take_proposals(BATCH_BYTES);
            if requests.is_empty() {
                return;
            }
            // A proposal lost on the way (the leader changed) is proposed again when its
            // client asks again.
            if let Err(error) = group.propose(&Batch { time_ms: wall_clock_ms(), requests }) {
                tracing::debug!(service = self.replica.name, %error, "proposal not accepted");
            }
        }
    }

    /// Sends what the group produced and hands what it delivered to the executor.
    pub fn poll(&mut self, peers: &Peers) -> Result<(), ControlError> {
        let Some(group) = &mut self.group else { return Ok(()) };
        let output = group.poll()?;
        if !output.messages.is_empty()
            && let Some(mark) = self.unmarked.take()
            && let Err(error) = std::fs::write(&mark, b"")
        {
            // Unmarked, a restart could rejoin with what this replica votes now forgotten.
            let reason = format!("cannot mark its membership in {}: {error}", mark.display());
            self.replica.stop(reason);
            self.group = None;
            return Ok(());
        }
        for (to, raft) in output.messages {
            peers.send(to, Body::Order { service: self.replica.name.clone(), raft });
        }
        let leader = group.leader().and_then(|id| self.replicas.iter().position(|r| *r == id));
        let leader = leader.map_or(NO_LEADER, |n| n as u16);
        let changed = self.replica.leader.swap(leader, Ordering::Relaxed) != leader && leader != NO_LEADER;
        if changed && lock(&self.replica.shared).calls.propose_waiting_again() {
            // Proposed at the next round: the agent's loop is woken for it.
            let _ = lock(&self.replica.wake).send(PeerEvent::Proposed);
        }
        if output.restored.is_some() {
            self.replica.stop(
                "it fell behind the order's compacted log, and re-integration by state transfer is not built yet"
                    .into(),
            );
            self.deliveries = None;
        }
        if let Some(deliveries) = &self.deliveries {
            for delivered in output.applied {
                if deliveries.send(delivered).is_err() {
                    // The executor stopped; the replica says why.
                    self.deliveries = None;
                    break;
                }
            }
        }
        Ok(())
    }
}

impl Drop for ReplicaHost {
    fn drop(&mut self) {
        self.deliveries = None;
        if let Some(executor) = self.executor.take() {
            let _ = executor.join();
        }
    }
}

impl Replica {
    /// Answers call `number` of `client` (after `refused` refusals under that number): its vote
    /// once executed, a redirect to the group's leader from a follower under `leader-only`, or
    /// why it cannot now.
    pub async fn call(&self, client: u64, number: u64, refused: u32, body: Vec<u8>) -> ClientReply {
        if client == 0 || number == 0 {
            return ClientReply::Rejected { reason: "client and request numbers start at 1".into() };
        }
        if self.mode == ReplyMode::LeaderOnly
            && let Some(redirect) = self.redirect_to_leader()
        {
            return redirect;
        }
        let (tx, waiting) = oneshot::channel();
        {
            let mut shared = lock(&self.shared);
            if let Standing::Stopped(reason) = &shared.standing {
                return ClientReply::Unavailable { reason: format!("this replica stopped: {reason}") };
            }
            match shared.calls.ask(Request { client, number, refused, body }, tx) {
                Asked::Answer { outcome, duplicate } => {
                    return ClientReply::Voted(Box::new(self.vote(number, outcome, duplicate)));
                }
                Asked::Backlogged => {
                    return ClientReply::Unavailable { reason: "the replica's order is backed up; retry".into() };
                }
                Asked::Wait { wake: true } => {
                    let _ = lock(&self.wake).send(PeerEvent::Proposed);
                }
                Asked::Wait { wake: false } => {}
            }
        }
        match tokio::time::timeout(EXECUTION_WAIT, waiting).await {
            Ok(Ok(vote)) => ClientReply::Voted(Box::new(vote)),
            Ok(Err(_)) => self
                .stopped()
                .unwrap_or_else(|| ClientReply::Unavailable { reason: "superseded by a later request; retry".into() }),
            Err(_) => ClientReply::Unavailable {
                reason: format!("request {number} not executed within {EXECUTION_WAIT:?} (no order leader?); retry"),
            },
        }
    }

    /// Answers a query from this replica's state as it stands (between two executions), as a
    /// vote: the client asks every replica and takes the answer enough agree on.
    pub async fn query(self: &Arc<Self>, body: Vec<u8>) -> ClientReply {
        if self.mode == ReplyMode::LeaderOnly
            && let Some(redirect) = self.redirect_to_leader()
        {
            return redirect;
        }
        if let Some(stopped) = self.stopped() {
            return stopped;
        }
        let replica = self.clone();
        match tokio::task::spawn_blocking(move || replica.service.query(&replica.mirror, &body)).await {
            Ok(Ok((answer, _))) => ClientReply::Voted(Box::new(self.vote(0, Ok(answer), false))),
            Ok(Err(CallError::Failed(reason))) => ClientReply::Unavailable { reason },
            Ok(Err(refusal)) => ClientReply::Voted(Box::new(self.vote(0, Err(refusal.to_string()), false))),
            Err(error) => ClientReply::Unavailable { reason: format!("the query's executor failed: {error}") },
        }
    }

    /// Audits this replica's own state, with every execution held off: the platform's and the
    /// service's checks, what the client table remembers of `clients`, and `query` answered
    /// from the same state. Not a vote: an audit looks at one replica.
    /// `slot` is the node's right to run one audit, held until this one is done.
    pub(crate) async fn audit(
        self: &Arc<Self>,
        clients: Vec<u64>,
        query: Option<Vec<u8>>,
        slot: AuditSlot,
    ) -> ClientReply {
        if let Some(stopped) = self.stopped() {
            return stopped;
        }
        let replica = self.clone();
        let audited = tokio::task::spawn_blocking(move || {
            let report =
                replica.mirror.quiesced_checked(|image, _| replica.service.audit(image, &clients, query.as_deref()));
            drop(slot);
            report
        });
        match audited.await {
            Ok(report) => {
                ClientReply::Audit { check: report.check, clients: report.clients, answer: report.answer, term: 0 }
            }
            Err(error) => ClientReply::Unavailable { reason: format!("the audit's executor failed: {error}") },
        }
    }

    /// Why this replica does not answer, if it stopped.
    fn stopped(&self) -> Option<ClientReply> {
        match &lock(&self.shared).standing {
            Standing::Stopped(reason) => {
                Some(ClientReply::Unavailable { reason: format!("this replica stopped: {reason}") })
            }
            Standing::Serving => None,
        }
    }

    /// This replica's vote on request `number`.
    fn vote(&self, number: u64, outcome: Result<Vec<u8>, String>, duplicate: bool) -> Vote {
        Vote {
            request: number,
            outcome,
            duplicate,
            replica: self.me,
            group: self.group.clone(),
            leader: Some(self.leader.load(Ordering::Relaxed)).filter(|l| *l != NO_LEADER),
            mode: self.mode,
        }
    }

    /// A redirect to the group's leader, if this replica is not it.
    fn redirect_to_leader(&self) -> Option<ClientReply> {
        let leader = self.leader.load(Ordering::Relaxed);
        (leader != self.me)
            .then(|| ClientReply::Redirect { primary: self.group.get(usize::from(leader)).cloned(), term: 0 })
    }

    /// Stops serving: its state no longer follows the order.
    fn stop(&self, reason: String) {
        tracing::error!(service = self.name, %reason, "replica stopped");
        let mut shared = lock(&self.shared);
        shared.standing = Standing::Stopped(reason);
        shared.calls.drop_waiters();
    }

    /// Executes `request` at order time `time_ms`: the service's reply or refusal; `None` if
    /// the service failed (the replica has stopped).
    fn execute(&self, request: &Request, time_ms: u64) -> Option<Result<Vec<u8>, String>> {
        let caller = Caller { client: request.client, request: request.number, lane: 0 };
        match self.service.execute(&self.mirror, caller, time_ms, &request.body) {
            Ok((Executed::Applied(reply), _)) => Some(Ok(reply)),
            // The order delivers each request once; the table would answer a second delivery.
            Ok((Executed::Duplicate(reply), _)) => Some(Ok(reply)),
            Ok((Executed::Stale { last }, _)) => {
                Some(Err(format!("request {} is older than the last applied ({last})", request.number)))
            }
            Err(CallError::Failed(reason)) => {
                self.stop(format!("the service failed: {reason}"));
                None
            }
            // A refusal is an answer: every correct replica refuses alike.
            Err(refusal) => Some(Err(refusal.to_string())),
        }
    }
}

/// The executor: runs each delivered request in order, and sends its vote to whoever waits.
fn execute_order(replica: &Replica, delivered: Receiver<Delivered>) {
    for entry in delivered {
        for request in entry.requests {
            if matches!(lock(&replica.shared).standing, Standing::Stopped(_)) {
                return;
            }
            let Some(outcome) = replica.execute(&request, entry.time_ms) else { return };
            let waiters = lock(&replica.shared).calls.executed(&request, outcome.clone());
            if !waiters.is_empty() {
                let vote = replica.vote(request.number, outcome, false);
                for waiter in waiters {
                    let _ = waiter.send(vote.clone());
                }
            }
        }
    }
}

/// The order group's Raft configuration for `spec` on node `me`: the control plane's timing.
pub fn group_config(spec: &ActiveSpec, me: NodeId, control: &ControlConfig) -> ControlConfig {
    let mut seed = [0u8; 8];
    let _ = getrandom::fill(&mut seed);
    ControlConfig {
        id: me,
        voters: spec.replicas.clone(),
        election_ticks: control.election_ticks,
        heartbeat_ticks: control.heartbeat_ticks,
        election_jitter: ElectionJitter::Seeded(u64::from_le_bytes(seed)),
        compact_every: 1024,
    }
}
