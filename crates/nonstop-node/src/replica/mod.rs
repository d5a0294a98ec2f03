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
//! A replica that fell behind the group's compacted log (paused, cut off, slow) is sent the
//! order's state instead of the entries it missed; its service state is then behind the
//! order, and it takes a live replica's state by state transfer ([`crate::transfer`]): the
//! donor copies its pages while it executes (the pre-copy rounds passive replication uses for
//! a new backup), then, held between two entries of the order, the pages written since and
//! what its executions answered each client last. The receiver keeps what the order delivers
//! meanwhile ([`Feed`]) and executes on from the donor's point. It answers no call until then.
//!
//! The replicas compare their outcomes through the order ([`nonstop_active::dissent`]): the
//! order closes a window every few milliseconds, each replica proposes a digest of its
//! outcomes in it, and a replica that a majority's digests contradict stops answering and takes
//! a live replica's state as above. A replica that took a state proves it before it answers:
//! its digest of a window must equal that of a replica other than its donor (a wrong state
//! copied before anyone found it would otherwise outvote the right one).
//!
//! A node whose process restarted has forgotten the group's log and its own votes, so its
//! replica joins as a new member under a new id ([`nonstop_active::membership`]): added as a
//! learner, given the log or another replica's state as above, then swapped in for its old
//! incarnation in one joint configuration change that the order's leader proposes.
//!
//! A multithreaded service runs each entry's requests as one batch on its worker threads, under
//! the deterministic scheduler its config names, and a state transfer copies its snapshot
//! instead of region pages ([`machine`]).

use crate::NodeId;
use crate::client_server::{AuditSlot, wall_clock_ms};
use crate::config::{ActiveService, ActiveSpec};
use crate::peers::{Body, PeerEvent, Peers};
use crate::service::lock;
use crate::status::{OrderRole, ReplicaStanding, ReplicaStatus};
use crate::transfer::{Donors, Received};
use machine::{Copied, Failed, Machine, TRANSFER_BATCH_PAGES};
use nonstop_active::calls::Outcome;
use nonstop_active::calls::{Asked, Calls, Remembered};
use nonstop_active::course::{Behind, Course, Event, Next, NoDonation, Standing as CourseStanding, Taken};
use nonstop_active::dissent::{Digest, Dissent, StateVerdict, keep_dissenting_digests, propose_later};
use nonstop_active::loose::{Claimant, Stewardship};
use nonstop_active::membership::{self, Join, member_id, node_of};
use nonstop_active::order::{Batch, Delivered, Lead, MAX_GRANTS, Order, Request, next_leads};
use nonstop_control::log::MemoryLog;
use nonstop_control::{ControlConfig, ControlError, ElectionJitter, Membership, RaftNode, Replicated};
use nonstop_net::fault::{FaultPoint, FaultPoints};
use nonstop_proto::client::{ClientReply, ReplyMode, Vote};
use nonstop_proto::frame::FrameKind;
use nonstop_proto::runs::RunsBuilder;
use nonstop_proto::transfer::{Answered, TransferMessage, answered_messages, state_messages};
use nonstop_service::CallError;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

mod machine;

/// How long a call waits for its request to be executed before the replica answers
/// `Unavailable` (the client then asks again, with the same number).
const EXECUTION_WAIT: Duration = Duration::from_secs(1);

/// Request bytes one log entry carries at most: with its digests and leads, an entry then
/// travels in one peer frame (1 MiB) most of the time, in parts otherwise.
const BATCH_BYTES: usize = 512 << 10;

/// Request bytes waiting to be proposed at most; calls beyond it are refused for now.
const PENDING_BYTES: usize = 8 << 20;

/// Request bytes a replica keeps while it awaits a state transfer; past that it asks for a
/// later state instead ([`Feed`]).
const KEPT_FOR_TRANSFER: usize = 64 << 20;

/// Pre-copy rounds a donor runs at most before it holds execution for the rest.
const PRECOPY_ROUNDS: usize = 5;

/// A donor holds execution for the rest once fewer pages than this were written since the
/// last pre-copy round.
const PRECOPY_SETTLED_PAGES: usize = 256;

/// How long a donor waits for its own execution to reach the receiver's point of the order.
const DONOR_CATCH_UP: Duration = Duration::from_secs(10);

/// Pause before a replica asks for a state again after every donor failed.
const TRANSFER_RETRY: Duration = Duration::from_millis(200);

/// How often the executor looks at the clock while no work comes (a probation's end).
const EXECUTOR_TICK: Duration = Duration::from_millis(50);

/// The value of [`Replica::leader`] when no leader is known.
const NO_LEADER: u16 = u16::MAX;

/// Whether a replica serves: as its course decides, for client threads to read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Standing {
    /// As its executor's [`Course`] decided last.
    Course(CourseStanding),
    /// It stopped, for the reason given (its state no longer follows the order).
    Stopped(String),
}

/// The standing in which a replica answers.
const SERVING: Standing = Standing::Course(CourseStanding::Serving);

/// What client threads and the executor share of the replica.
struct Shared {
    standing: Standing,
    /// Which calls wait, what to propose, what was executed.
    calls: Calls<oneshot::Sender<Vote>>,
    /// States taken from another replica.
    transfers: u64,
    /// How long the last catch-up took: from the order's snapshot to serving again.
    last_catch_up: Option<Duration>,
    /// The point of the order its state is at: requests delivered before it.
    position: u64,
    /// Its digests of windows of outcomes, to propose with the next entry.
    digests: Vec<Digest>,
    /// LSA: acquisitions of batches it led, to propose with the next entry.
    leads: Vec<Lead>,
    /// Times it found its own outcomes contradicted by a majority's.
    dissents_found: u64,
    /// Times it saw another replica's outcomes contradicted by a majority's.
    dissents_reported: u64,
}

/// What the executor thread is given to do, in order.
enum Work {
    /// Execute what the order delivered.
    Delivered(Delivered),
    /// The group replaced the order by a snapshot ending at position `from`: take a state,
    /// judging its donor by the digests the snapshot holds.
    Restored { from: u64, digests: Vec<Digest> },
    /// A state transfer into this replica ended (the region holds the donor's pages).
    Transferred(Received),
    /// A state transfer into this replica failed with every donor; ask again.
    TransferFailed(String),
    /// A donor's last step: between two entries, once this replica executed up to the
    /// position given at least, copy the rest of its state.
    Finish { from: u64, reply: mpsc::Sender<Finished> },
    /// The replica is shutting down.
    Stop,
}

/// The rest of a donor's state, copied between two entries.
enum Finished {
    Ready {
        copied: Copied,
        answered: Vec<Answered>,
        position: u64,
    },
    /// It has executed only up to this position so far.
    Behind(u64),
    /// It does not follow the order itself.
    NotServing(String),
}

/// Sends one frame of a state transfer to the receiver.
pub(crate) type SendFrame<'a> = dyn FnMut(FrameKind, &[u8]) -> Result<(), String> + 'a;

/// What one donation sent, for the log.
pub(crate) struct Donated {
    pub position: u64,
    pub pages: usize,
    pub final_pages: usize,
}

/// What client threads see of a replica.
pub struct Replica {
    name: String,
    /// Its number in the group.
    me: u16,
    /// The replicas' client addresses, by number.
    group: Vec<String>,
    mode: ReplyMode,
    /// What it executes on: its region, or its worker threads.
    machine: Machine,
    /// The group's leader as last polled ([`NO_LEADER`]: none known).
    leader: AtomicU16,
    shared: Mutex<Shared>,
    /// Wakes the agent when the first request is pending.
    wake: Mutex<Sender<PeerEvent>>,
    /// The executor's work (the agent, donations and transfers post to it).
    work: Mutex<Sender<Work>>,
    /// Where it takes a state from.
    donors: Donors,
    /// Set while it sends its state to another replica (one at a time: one pre-copy).
    donating: AtomicBool,
    /// The node's fault points (tests: a wrong outcome, [`FaultPoint::ReplicaWrongOutcome`]).
    faults: Arc<FaultPoints>,
}

/// Why a replica cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// Its service cannot start: its region cannot be mapped or initialised, its worker
    /// threads cannot start, or its membership mark cannot be read.
    #[error("active service {service}: {problem}")]
    Start {
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
    /// Its member of the order group, and whether its incarnation is marked yet.
    seat: Seat,
    /// The nodes that hold the service's replicas, by replica number.
    replicas: Vec<NodeId>,
    executor: Option<JoinHandle<()>>,
    /// The joins this replica heard, the latest per node (acted on while it leads).
    joins: std::collections::BTreeMap<u64, Join>,
    /// Ticks until it asks to join again, while it is not a voter.
    join_in: u32,
    /// LSA: keeps the lead of the acquisitions with a replica that serves.
    claimant: Claimant,
    /// The clock of its claimant: when it started.
    started: std::time::Instant,
}

/// A replica's member of its order group.
enum Seat {
    /// Not marked yet in the data directory as incarnation `incarnation` (in `mark`): it must be
    /// before its first message to the group, from which on it may have voted or acknowledged,
    /// which a restart would forget.
    Unmarked { group: RaftNode<Order>, mark: std::path::PathBuf, incarnation: u32 },
    /// Marked: a restart joins as a newer incarnation.
    Marked(RaftNode<Order>),
    /// Stopped for good: its incarnation could not be marked.
    Stopped,
}

impl Seat {
    fn group(&self) -> Option<&RaftNode<Order>> {
        match self {
            Seat::Unmarked { group, .. } | Seat::Marked(group) => Some(group),
            Seat::Stopped => None,
        }
    }

    fn group_mut(&mut self) -> Option<&mut RaftNode<Order>> {
        match self {
            Seat::Unmarked { group, .. } | Seat::Marked(group) => Some(group),
            Seat::Stopped => None,
        }
    }
}

/// Ticks between a new member's requests to join (lost ones are asked again).
const JOIN_EVERY_TICKS: u32 = 1;

impl ReplicaHost {
    /// Maps the replica's region and initialises the service in it (or starts the service's
    /// worker threads), and starts its executor; the group's messages go out through the agent
    /// ([`ReplicaHost::poll`]).
    ///
    /// The group's log lives in memory, so a node whose process restarted has forgotten what
    /// it acknowledged and voted for: rejoining under its old id could let the group lose a
    /// committed entry or elect two leaders in a term. It joins as a new member instead, under
    /// an id that names its process's incarnation ([`nonstop_active::membership`]); the
    /// incarnation goes into `data_dir` before its first message to the group.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        spec: &ActiveSpec,
        service: ActiveService,
        me: NodeId,
        client_addrs: Vec<String>,
        donors: Donors,
        group_config: ControlConfig,
        wake: Sender<PeerEvent>,
        data_dir: &std::path::Path,
        faults: Arc<FaultPoints>,
    ) -> Result<ReplicaHost, ReplicaError> {
        let start_error = |problem: String| ReplicaError::Start { service: spec.name.clone(), problem };
        // Under LSA the order carries the grant leader's acquisitions, and each replica's course
        // leads batches or follows them.
        let loose = matches!(&service, ActiveService::OnThreads { scheduler, .. } if scheduler.is_loose());
        let machine = Machine::start(&spec.name, service, spec.region).map_err(start_error)?;
        let number = spec.replicas.iter().position(|r| *r == me).expect("the config makes every holder a replica");
        let mark = data_dir.join(format!("active-{}.member", spec.name));
        let incarnation = match std::fs::read_to_string(&mark) {
            // A mark from before incarnations were counted is empty: incarnation 0.
            Ok(last) => last.trim().parse::<u32>().unwrap_or(0).saturating_add(1),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => return Err(start_error(format!("cannot read {}: {error}", mark.display()))),
        };
        // A new incarnation knows nothing of the order: it serves once it follows it.
        let member = member_id(me.0, incarnation);
        let nodes: Vec<u64> = spec.replicas.iter().map(|n| n.0).collect();
        let course = match incarnation {
            0 => Course::founder(member, &nodes, KEPT_FOR_TRANSFER),
            _ => {
                tracing::info!(
                    service = spec.name,
                    incarnation,
                    mark = %mark.display(),
                    "restarted: joining the order group as a new member (if every replica restarted, the group and \
                     its state are gone: remove this mark on every node to found it anew)"
                );
                Course::new_member(member, &nodes, KEPT_FOR_TRANSFER)
            }
        };
        let (course, order) = match loose {
            true => (course.loose(MAX_GRANTS), Order::loose()),
            false => (course, Order::default()),
        };
        // Every member starts from the founders' configuration, a new one too: given the log
        // from its first entry, it applies the membership changes from there.
        let group_config = ControlConfig { id: member, ..group_config };
        let group = RaftNode::starting_from(group_config, Box::new(MemoryLog::default()), order)
            .map_err(|source| ReplicaError::Group { service: spec.name.clone(), source })?;
        let (work, works) = mpsc::channel();
        let replica = Arc::new(Replica {
            name: spec.name.clone(),
            me: number as u16,
            group: client_addrs,
            mode: spec.replies,
            machine,
            leader: AtomicU16::new(NO_LEADER),
            shared: Mutex::new(Shared {
                standing: Standing::Course(course.standing()),
                calls: Calls::new(PENDING_BYTES),
                transfers: 0,
                last_catch_up: None,
                position: 0,
                digests: Vec::new(),
                leads: Vec::new(),
                dissents_found: 0,
                dissents_reported: 0,
            }),
            wake: Mutex::new(wake),
            work: Mutex::new(work),
            donors,
            donating: AtomicBool::new(false),
            faults,
        });
        let executor = {
            let replica = replica.clone();
            let replicas = spec.replicas.clone();
            std::thread::Builder::new()
                .name(format!("nonstop-replica-{}", spec.name))
                .spawn(move || Executor::new(replica, course, replicas).run(works))
                .map_err(|error| start_error(format!("no executor thread: {error}")))?
        };
        Ok(ReplicaHost {
            replica,
            seat: Seat::Unmarked { group, mark, incarnation },
            replicas: spec.replicas.clone(),
            executor: Some(executor),
            joins: std::collections::BTreeMap::new(),
            join_in: 0,
            claimant: Claimant::default(),
            started: std::time::Instant::now(),
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
            order_leader: self.seat.group().and_then(|g| g.leader()).map(node_of),
            member: self.seat.group().map_or(0, |g| g.id().0),
            order_role: match self.seat.group() {
                None => OrderRole::Out,
                Some(group) if group.members().voters.contains(&group.id()) => OrderRole::Voter,
                Some(group) if group.members().learners.contains(&group.id()) => OrderRole::Learner,
                Some(_) => OrderRole::Joining,
            },
            order_joint: self.seat.group().is_some_and(|g| g.members().is_joint()),
            order_term: self.seat.group().map_or(0, |g| g.raft_term()),
            applied_index: self.seat.group().map_or(0, |g| g.state().applied_index()),
            delivered: self.seat.group().map_or(0, |g| g.state().delivered()),
            turned_away: self.seat.group().map_or(0, |g| g.state().turned_away()),
            executed: shared.calls.executed_count(),
            standing: match &shared.standing {
                Standing::Course(CourseStanding::Serving) => ReplicaStanding::Serving,
                Standing::Course(CourseStanding::CatchingUp) => ReplicaStanding::CatchingUp,
                Standing::Course(CourseStanding::Proving) => ReplicaStanding::Proving,
                Standing::Course(CourseStanding::Refuted { against }) => {
                    ReplicaStanding::Refuted { against: node_of(*against) }
                }
                Standing::Stopped(reason) => ReplicaStanding::Stopped { reason: reason.clone() },
            },
            dissents_found: shared.dissents_found,
            dissents_reported: shared.dissents_reported,
            workers: self.replica.machine.workers(),
            state_transfers: shared.transfers,
            last_catch_up_ms: shared.last_catch_up.map(|d| d.as_secs_f64() * 1e3),
            position: shared.position,
        }
    }

    /// One Raft tick of the group.
    pub fn tick(&mut self) {
        let Some(group) = self.seat.group_mut() else { return };
        group.tick();
        self.join_in = self.join_in.saturating_sub(1);
    }

    /// Steps a message of the group from a peer (which speaks for its own members only).
    pub fn step(&mut self, from: NodeId, bytes: &[u8]) {
        let Some(group) = self.seat.group_mut() else { return };
        if !self.replicas.contains(&from) {
            return tracing::warn!(service = self.replica.name, peer = from.0, "order message from a non-replica");
        }
        match group.step_from(bytes, |member| node_of(member) == from.0) {
            Ok(()) => {}
            // For this node's earlier incarnation, which the group counts until this one
            // replaces it.
            Err(ControlError::ForAnotherMember { .. }) => {}
            Err(error) if error.is_dropped_proposal() => {}
            Err(error) => tracing::warn!(service = self.replica.name, peer = from.0, %error, "order message refused"),
        }
    }

    /// A peer's replica asks to belong to the group (it restarted, and is a new member).
    pub fn on_join(&mut self, from: NodeId, join: Join) {
        if node_of(join.member) != from.0 || !self.replicas.contains(&from) {
            return tracing::warn!(
                service = self.replica.name,
                peer = from.0,
                ?join,
                "join refused: not that peer's replica"
            );
        }
        self.joins.insert(from.0, join);
    }

    /// Peer `from`'s process is gone (its connection closed). If it led the order group, the
    /// live replicas stand in turn at once ([`RaftNode::on_leader_lost`], as the control plane
    /// does) instead of after the election timeout: the order would otherwise stand still that
    /// long (measured with `nonstop chaos kill --replication active`).
    pub fn on_peer_down(&mut self, from: NodeId, alive: impl Fn(NodeId) -> bool) {
        let Some(group) = self.seat.group_mut() else { return };
        let Some(leader) = group.leader().filter(|leader| node_of(*leader) == from.0) else { return };
        group.on_leader_lost(leader, |member| alive(NodeId(node_of(member))));
    }

    /// Proposes what calls left pending and the replica's digests of its outcomes, as one entry
    /// (or more, if they exceed an entry's request bytes or acquisitions). With no leader known
    /// they wait: a proposal now would be dropped.
    pub fn propose(&mut self) {
        let Some(group) = self.seat.group_mut() else { return };
        if group.leader().is_none() {
            return;
        }
        let mut claim = self.claim();
        let Some(group) = self.seat.group_mut() else { return };
        loop {
            let delivered = group.state().delivered();
            let (requests, digests, leads) = {
                let mut shared = lock(&self.replica.shared);
                shared.leads.extend(claim.take());
                let executed = shared.position;
                let requests = shared.calls.take_due(delivered, executed, BATCH_BYTES);
                (requests, std::mem::take(&mut shared.digests), next_leads(&mut shared.leads))
            };
            if requests.is_empty() && digests.is_empty() && leads.is_empty() {
                return;
            }
            // A proposal lost on the way (the leader changed) is proposed again when its
            // client asks again; a lost digest leaves its window undecided, and a later one
            // decides; a led batch's acquisitions are proposed again until granted
            // ([`nonstop_active::loose::LEAD_RETRY_MS`]), a claim until applied.
            if let Err(error) = group.propose(&Batch { time_ms: wall_clock_ms(), requests, digests, leads }) {
                tracing::debug!(service = self.replica.name, %error, "proposal not accepted");
            }
        }
    }

    /// LSA: a claim of the lead of the acquisitions if this replica's node leads the group
    /// and the replica serves (the group's leader is where entries are proposed without a hop,
    /// so its replica leads the acquisitions too); or, if it leads the group and its replica
    /// does not serve, the group's lead handed to another member ([`Claimant`]).
    fn claim(&mut self) -> Option<Lead> {
        let serving = self.replica.serving();
        let now_ms = self.started.elapsed().as_millis() as u64;
        let group = self.seat.group_mut()?;
        let voters = group.active_voters();
        let me = group.id();
        match self.claimant.decide(group.state(), me, group.is_leader(), serving, &voters, now_ms)? {
            Stewardship::Claim(claim) => {
                tracing::info!(
                    service = self.replica.name,
                    "leading the order group: claiming the lead of the acquisitions"
                );
                Some(claim)
            }
            Stewardship::HandOver(to) => {
                tracing::info!(
                    service = self.replica.name,
                    to = node_of(to),
                    "leading the order group while this replica does not serve: handing the group's lead over, so \
                     that a serving replica leads the acquisitions"
                );
                group.transfer_leader(to);
                None
            }
        }
    }

    /// Sends what the group produced and hands what it delivered to the executor; asks to
    /// join while this replica is not a voter, and, leading, changes the members as the joins
    /// heard call for ([`membership::next_change`]).
    pub fn poll(&mut self, peers: &Peers) -> Result<(), ControlError> {
        let Some(group) = self.seat.group_mut() else { return Ok(()) };
        let output = group.poll()?;
        if !output.messages.is_empty() && !self.mark() {
            return Ok(());
        }
        let Some(group) = self.seat.group_mut() else { return Ok(()) };
        for (to, raft) in output.messages {
            peers.send(NodeId(node_of(to)), Body::Order { service: self.replica.name.clone(), raft });
        }
        if output.members_changed {
            tracing::info!(service = self.replica.name, members = ?group.members(), "order group members");
        }
        self.change_members(peers);
        let Some(group) = self.seat.group_mut() else { return Ok(()) };
        let leader = group.leader().and_then(|id| self.replicas.iter().position(|r| r.0 == node_of(id)));
        let leader = leader.map_or(NO_LEADER, |n| n as u16);
        let changed = self.replica.leader.swap(leader, Ordering::Relaxed) != leader && leader != NO_LEADER;
        if changed && lock(&self.replica.shared).calls.propose_waiting_again() {
            // Proposed at the next round: the agent's loop is woken for it.
            let _ = lock(&self.replica.wake).send(PeerEvent::Proposed);
        }
        let work = lock(&self.replica.work);
        if output.restored.is_some() {
            // Where the snapshot ends: where the first entry applied after it starts (the
            // state now holds this poll's entries too).
            let from = output.applied.first().map_or(group.state().delivered(), |delivered| delivered.first);
            tracing::warn!(
                service = self.replica.name,
                from,
                "behind the order's compacted log: taking a replica's state"
            );
            let digests = group.state().recent_digests().copied().collect();
            let _ = work.send(Work::Restored { from, digests });
        }
        for delivered in output.applied {
            // Gone only once the executor stopped; the replica says why.
            let _ = work.send(Work::Delivered(delivered));
        }
        Ok(())
    }
}

impl ReplicaHost {
    /// Marks this incarnation in the data directory before its first message to the group;
    /// false (and the replica stopped) if it cannot.
    fn mark(&mut self) -> bool {
        let (group, mark, incarnation) = match std::mem::replace(&mut self.seat, Seat::Stopped) {
            Seat::Unmarked { group, mark, incarnation } => (group, mark, incarnation),
            marked @ Seat::Marked(_) => {
                self.seat = marked;
                return true;
            }
            Seat::Stopped => return false,
        };
        match std::fs::write(&mark, incarnation.to_string()) {
            Ok(()) => {
                self.seat = Seat::Marked(group);
                true
            }
            Err(error) => {
                // Unmarked, a restart could rejoin with what this replica votes now forgotten.
                self.replica.stop(format!("cannot mark its membership in {}: {error}", mark.display()));
                false
            }
        }
    }

    /// Asks to join while not a voter (every [`JOIN_EVERY_TICKS`] polls that follow a tick);
    /// leading, proposes the membership change the joins heard call for.
    fn change_members(&mut self, peers: &Peers) {
        let Some(group) = self.seat.group_mut() else { return };
        let members = group.members();
        if !members.voters.contains(&group.id()) {
            if self.join_in == 0 && self.mark() {
                let ready = self.replica.serving() && self.seat.group().is_some_and(|g| g.state().applied_index() > 0);
                let Some(group) = self.seat.group() else { return };
                let join = Join { member: group.id(), ready };
                for node in self.replicas.iter().filter(|n| n.0 != node_of(join.member)) {
                    peers.send(*node, Body::OrderJoin { service: self.replica.name.clone(), join });
                }
                self.join_in = JOIN_EVERY_TICKS;
            }
            return;
        }
        if !group.is_leader() || group.has_pending_membership_change() {
            return;
        }
        let joins: Vec<Join> = self.joins.values().copied().collect();
        let nodes: Vec<u64> = self.replicas.iter().map(|n| n.0).collect();
        if let Some(change) = membership::next_change(&members, &joins, &nodes) {
            match group.propose_membership(change) {
                Ok(()) => {
                    tracing::info!(service = self.replica.name, ?change, "order group membership change proposed")
                }
                Err(error) => tracing::debug!(service = self.replica.name, %error, "membership change not proposed"),
            }
        }
    }
}

impl Drop for ReplicaHost {
    fn drop(&mut self) {
        let _ = lock(&self.replica.work).send(Work::Stop);
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
            if let Some(unavailable) = unavailable(&shared.standing) {
                return unavailable;
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
        let answered = tokio::task::spawn_blocking(move || replica.unchanged(|| replica.machine.query(&body)));
        match answered.await {
            Ok(Some(Ok(answer))) => ClientReply::Voted(Box::new(self.vote(0, Ok(answer), false))),
            Ok(Some(Err(CallError::Failed(reason)))) => ClientReply::Unavailable { reason },
            Ok(Some(Err(refusal))) => ClientReply::Voted(Box::new(self.vote(0, Err(refusal.to_string()), false))),
            Ok(None) => self.stopped().unwrap_or_else(state_replaced),
            Err(error) => ClientReply::Unavailable { reason: format!("the query's executor failed: {error}") },
        }
    }

    /// `read`'s result, if this replica served with one state all along: not while it takes
    /// another's state (its region is cleared and filled meanwhile), nor across such a
    /// transfer.
    fn unchanged<R>(&self, read: impl FnOnce() -> R) -> Option<R> {
        let serving = || {
            let shared = lock(&self.shared);
            (shared.standing == SERVING).then_some(shared.transfers)
        };
        let before = serving()?;
        let result = read();
        (serving() == Some(before)).then_some(result)
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
            let report = replica.unchanged(|| {
                replica.machine.audit(&clients, query.as_deref(), |client| {
                    lock(&replica.shared).calls.remembered(client).map(machine::client_memory)
                })
            });
            drop(slot);
            report
        });
        match audited.await {
            Ok(Some(report)) => {
                ClientReply::Audit { check: report.check, clients: report.clients, answer: report.answer, term: 0 }
            }
            Ok(None) => self.stopped().unwrap_or_else(state_replaced),
            Err(error) => ClientReply::Unavailable { reason: format!("the audit's executor failed: {error}") },
        }
    }

    /// Why this replica does not answer, if it does not.
    fn stopped(&self) -> Option<ClientReply> {
        unavailable(&lock(&self.shared).standing)
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
}

/// What a client hears when a replica's state was replaced while it answered.
fn state_replaced() -> ClientReply {
    ClientReply::Unavailable { reason: "this replica took another's state while answering; ask again".into() }
}

/// What a client hears from a replica that does not serve, by its standing.
fn unavailable(standing: &Standing) -> Option<ClientReply> {
    match standing {
        Standing::Course(CourseStanding::Serving) => None,
        Standing::Course(CourseStanding::CatchingUp) => Some(ClientReply::Unavailable {
            reason: "this replica is catching up with the order (it restarted, fell behind, or its outcomes \
                     differed from the majority's, and takes a live replica's state); ask the others"
                .into(),
        }),
        Standing::Course(CourseStanding::Proving) => Some(ClientReply::Unavailable {
            reason: "this replica took another's state and is proving it against a third replica; ask the others"
                .into(),
        }),
        Standing::Course(CourseStanding::Refuted { against }) => Some(ClientReply::Unavailable {
            reason: format!(
                "the state this replica took disagrees with what node {}'s replica digested (this replica itself, \
                 before it fell behind, if that is this node), and it cannot tell which is right; it stays out until \
                 it takes a state again (see the node's log)",
                node_of(*against)
            ),
        }),
        Standing::Stopped(reason) => {
            Some(ClientReply::Unavailable { reason: format!("this replica stopped: {reason}") })
        }
    }
}

/// The executor thread: runs what the replica's [`Course`] hands out, in order, sends each
/// vote to whoever waits, and acts on what the course decides (takes another replica's state,
/// proposes digests, reports); copies the rest of its own state for a donation, between two
/// entries.
struct Executor {
    replica: Arc<Replica>,
    /// What it executes, when it takes a state, what it proposes, whether it answers: the
    /// code the simulator drives too.
    course: Course,
    /// The nodes that hold the service's replicas, by replica number.
    replicas: Vec<NodeId>,
    /// A transfer into this replica runs (one at a time: it writes the region).
    fetching: bool,
    /// While it catches up: when the order's snapshot came, or its dissent was found.
    behind_since: Option<std::time::Instant>,
    /// The executor's clock for its course (a probation's end): when it started.
    started: std::time::Instant,
}

impl Executor {
    fn new(replica: Arc<Replica>, course: Course, replicas: Vec<NodeId>) -> Executor {
        Executor { replica, course, replicas, fetching: false, behind_since: None, started: std::time::Instant::now() }
    }

    fn run(mut self, works: Receiver<Work>) {
        loop {
            let work = match works.recv_timeout(EXECUTOR_TICK) {
                Ok(work) => Some(work),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let going_on = match work {
                None => true,
                Some(Work::Delivered(delivered)) => match self.course.delivered(delivered) {
                    Ok(()) => true,
                    Err(error) => self.stop(format!("its order feed broke: {error}")),
                },
                Some(Work::Restored { from, digests }) => {
                    self.course.restored(from, &digests);
                    true
                }
                Some(Work::Transferred(received)) => self.transferred(received),
                Some(Work::TransferFailed(reason)) => {
                    self.fetching = false;
                    tracing::warn!(service = self.replica.name, %reason, "no state taken yet; asking again");
                    self.fetch(TRANSFER_RETRY);
                    true
                }
                Some(Work::Finish { from, reply }) => {
                    let _ = reply.send(self.finish_donation(from));
                    true
                }
                Some(Work::Stop) => false,
            };
            let now_ms = self.now_ms();
            self.course.tick(now_ms);
            if !going_on || !self.advance() {
                return;
            }
        }
    }

    /// The executor's clock for its course, in milliseconds.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Executes what the course hands out and acts on what it decides, then tells client
    /// threads where the replica stands; false once the replica stopped.
    fn advance(&mut self) -> bool {
        loop {
            self.react();
            let Some(next) = self.course.next_entry() else { break };
            if !self.execute_entry(next) {
                return false;
            }
        }
        let mut shared = lock(&self.replica.shared);
        if matches!(shared.standing, Standing::Stopped(_)) {
            return false;
        }
        shared.standing = Standing::Course(self.course.standing());
        if shared.calls.has_proposals() {
            // Calls gathered while it executed ([`Calls::take_due`]) go now.
            drop(shared);
            let _ = lock(&self.replica.wake).send(PeerEvent::Proposed);
        }
        true
    }

    /// Acts on what the course decided, in order.
    fn react(&mut self) {
        let replica = self.replica.clone();
        let name = &replica.name;
        while let Some(event) = self.course.poll_event() {
            match event {
                Event::Propose(digest) => {
                    propose_later(&mut lock(&self.replica.shared).digests, digest);
                    let _ = lock(&self.replica.wake).send(PeerEvent::Proposed);
                }
                Event::ProposeLead(lead) => {
                    lock(&self.replica.shared).leads.push(lead);
                    let _ = lock(&self.replica.wake).send(PeerEvent::Proposed);
                }
                Event::Granted { answers, .. } => {
                    for (request, outcome) in answers {
                        self.answer(&request, outcome);
                    }
                }
                Event::NeedState { from, why } => {
                    self.behind_since.get_or_insert_with(std::time::Instant::now);
                    let mut shared = lock(&self.replica.shared);
                    if let Behind::Dissented { window } = why {
                        shared.dissents_found += 1;
                        tracing::error!(
                            service = name,
                            window,
                            "this replica's outcomes differ from the majority's: its state is wrong; taking a live \
                             replica's"
                        );
                    }
                    if !matches!(shared.standing, Standing::Stopped(_)) {
                        shared.standing = Standing::Course(self.course.standing());
                    }
                    // Their calls are answered by the others; the callers ask again.
                    shared.calls.drop_waiters();
                    keep_dissenting_digests(&mut shared.digests, &why);
                    shared.leads.clear();
                    drop(shared);
                    tracing::debug!(service = name, from, "asking for a live replica's state");
                    self.fetch(Duration::ZERO);
                }
                Event::Reported(Dissent { dissenter, window, .. }) => {
                    lock(&self.replica.shared).dissents_reported += 1;
                    tracing::warn!(
                        service = name,
                        node = node_of(dissenter),
                        window,
                        "a replica's outcomes differ from the majority's: it takes a live replica's state"
                    );
                }
                Event::Probation(StateVerdict::Cleared { proof }) => {
                    match proof {
                        Some(proof) => tracing::info!(
                            service = name,
                            node = node_of(proof.by),
                            window = proof.window,
                            "the state taken is proven against a replica other than its donor; serving again"
                        ),
                        None => tracing::warn!(
                            service = name,
                            "no replica other than the donor digested anything to prove the state taken against; \
                             serving again unproven"
                        ),
                    }
                    lock(&self.replica.shared).last_catch_up = self.behind_since.take().map(|since| since.elapsed());
                }
                Event::Probation(StateVerdict::Refuted { window, against }) => tracing::error!(
                    service = name,
                    node = node_of(against),
                    window,
                    "the state taken, or its donor, disagrees with a replica outside the donor's lineage (or with \
                     this replica before it fell behind): one of them is wrong, and one replica cannot tell which; \
                     staying out until it takes a state again (two faults at once)"
                ),
            }
        }
    }

    /// Executes one entry's requests at its order time, the threads taking mutexes as the
    /// course says, and refuses those the order turned away; false once the replica stopped.
    /// Under LSA the outcomes of a batch it led wait for the order's grant.
    fn execute_entry(&mut self, next: Next) -> bool {
        let Next { entry, acquisitions } = next;
        let end = entry.first + entry.requests.len() as u64;
        for request in &entry.turned_away {
            self.answer(request, Err(nonstop_active::order::TURNED_AWAY.to_string()));
        }
        if matches!(lock(&self.replica.shared).standing, Standing::Stopped(_)) {
            return false;
        }
        if self.replica.faults.armed()
            && !entry.requests.is_empty()
            && self.replica.faults.fires(FaultPoint::ReplicaFlipState)
        {
            match self.replica.machine.flip_state() {
                Ok(bit) => {
                    tracing::warn!(service = self.replica.name, bit, "fault point reached: a bit of the state flipped")
                }
                Err(reason) => {
                    tracing::warn!(service = self.replica.name, %reason, "fault point reached: no bit flipped")
                }
            }
        }
        let ran = match self.replica.machine.execute(&entry.requests, entry.time_ms, &acquisitions) {
            Ok(ran) => ran,
            Err(Failed::Unfollowed(reason)) => {
                tracing::error!(
                    service = self.replica.name,
                    batch = entry.first,
                    %reason,
                    "could not follow the grant leader's acquisitions: taking a live replica's state"
                );
                self.course.unfollowed();
                return true;
            }
            Err(Failed::Stop(reason)) => return self.stop(reason),
        };
        let mut held = Vec::new();
        for (request, mut outcome) in entry.requests.into_iter().zip(ran.outcomes) {
            if self.replica.faults.armed() && self.replica.faults.fires(FaultPoint::ReplicaWrongOutcome) {
                tracing::warn!(
                    service = self.replica.name,
                    "fault point reached: this replica's outcome is made wrong"
                );
                match &mut outcome {
                    Ok(reply) if !reply.is_empty() => reply[0] ^= 1,
                    Ok(reply) => reply.push(1),
                    Err(refusal) => refusal.push('!'),
                }
            }
            self.course.executed(&outcome);
            match ran.led {
                Some(_) => held.push((request, outcome)),
                None => self.answer(&request, outcome),
            }
        }
        if let Some(made) = ran.led {
            // The course holds them until the order grants the batch.
            let now_ms = self.now_ms();
            self.course.led(made, held, now_ms);
        }
        lock(&self.replica.shared).position = end;
        self.course.entry_executed();
        true
    }

    /// Records `request`'s outcome as executed and sends it to whoever waits for it.
    fn answer(&self, request: &Request, outcome: Outcome) {
        let waiters = lock(&self.replica.shared).calls.executed(request, outcome.clone());
        if !waiters.is_empty() {
            let vote = self.replica.vote(request.number, outcome, false);
            for waiter in waiters {
                let _ = waiter.send(vote.clone());
            }
        }
    }

    fn stop(&self, reason: String) -> bool {
        self.replica.stop(reason);
        false
    }

    /// Starts taking a state from another replica (after `pause`), unless a transfer runs: it
    /// writes the region, so one at a time. Its end comes back as work.
    fn fetch(&mut self, pause: Duration) {
        let Some(from) = self.course.awaiting_from() else { return };
        if self.fetching {
            return;
        }
        self.fetching = true;
        let replica = self.replica.clone();
        let spawned = std::thread::Builder::new().name(format!("nonstop-transfer-{}", replica.name)).spawn(move || {
            std::thread::sleep(pause);
            let leader = Some(replica.leader.load(Ordering::Relaxed)).filter(|l| *l != NO_LEADER && *l != replica.me);
            let work = match crate::transfer::fetch(&replica, &replica.donors, leader, from) {
                Ok(received) => Work::Transferred(received),
                Err(reason) => Work::TransferFailed(reason),
            };
            let _ = lock(&replica.work).send(work);
        });
        if let Err(error) = spawned {
            self.fetching = false;
            self.replica.stop(format!("no thread to take a state with: {error}"));
        }
    }

    /// A transfer into this replica ended: it executes on from the donor's point, on probation,
    /// or, if the state is older than the order's latest snapshot here (another came
    /// meanwhile), asks for a newer one.
    fn transferred(&mut self, received: Received) -> bool {
        self.fetching = false;
        let Some(donor) = self.replicas.get(usize::from(received.donor)).copied() else {
            return self.stop(format!("a state came from replica {}, which is not in the group", received.donor));
        };
        let now_ms = self.now_ms();
        match self.course.transferred(received.position, member_id(donor.0, 0), now_ms) {
            Ok(Taken::Installed) => {}
            Ok(Taken::Stale { position, from }) => {
                tracing::info!(service = self.replica.name, position, from, "a transferred state is already behind");
                return true;
            }
            Err(error) => return self.stop(format!("a transferred state does not fit the order: {error}")),
        }
        if let Err(reason) = self.replica.machine.restore(received.snapshot.as_deref()) {
            return self.stop(format!("the state taken does not restore: {reason}"));
        }
        {
            let mut shared = lock(&self.replica.shared);
            let answered = received.answered.into_iter().map(|a| {
                let remembered = Remembered { request: (a.number, a.refused), outcome: a.outcome, applied: a.applied };
                (a.client, remembered)
            });
            shared.calls.restore(answered);
            shared.transfers += 1;
            shared.position = received.position;
        }
        tracing::info!(
            service = self.replica.name,
            position = received.position,
            donor = donor.0,
            "took a replica's state; proving it against another replica before serving"
        );
        true
    }

    /// A donor's last step, between two entries: the pages written since the pre-copy's last
    /// round (the whole image if the region's writes are not tracked) or the service's
    /// snapshot, what its executions answered each client last, and its point of the order.
    fn finish_donation(&self, from: u64) -> Finished {
        if let Standing::Stopped(reason) = &lock(&self.replica.shared).standing {
            return Finished::NotServing(reason.clone());
        }
        let position = match self.course.donation(from) {
            Ok(position) => position,
            Err(NoDonation::Behind { position }) => return Finished::Behind(position),
            Err(refusal @ (NoDonation::TakingState | NoDonation::Unproven | NoDonation::Ungranted)) => {
                return Finished::NotServing(refusal.to_string());
            }
        };
        let copied = match self.replica.machine.copy_rest() {
            Ok(copied) => copied,
            Err(reason) => return Finished::NotServing(format!("its state could not be copied: {reason}")),
        };
        let answered = lock(&self.replica.shared)
            .calls
            .answered()
            .map(|(client, remembered)| Answered {
                client,
                number: remembered.request.0,
                refused: remembered.request.1,
                outcome: remembered.outcome.clone(),
                applied: remembered.applied,
            })
            .collect();
        Finished::Ready { copied, answered, position }
    }
}

impl Replica {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The replica's region, if its service keeps its state in one.
    pub(crate) fn mirror(&self) -> Option<&nonstop_region::Mirror> {
        self.machine.mirror()
    }

    /// True while it serves (follows the order and answers).
    fn serving(&self) -> bool {
        lock(&self.shared).standing == SERVING
    }

    /// Sends this replica's state at position `from` of the order or later through `send`
    /// (frames of a state transfer): its pages while it keeps executing (pre-copy rounds, for
    /// a region whose writes are declared), then, with execution held between two entries,
    /// the pages written since, its clients' last answers, and its point of the order.
    pub(crate) fn donate(&self, from: u64, send: &mut SendFrame<'_>) -> Result<Donated, String> {
        if self.donating.swap(true, Ordering::AcqRel) {
            return Err("this replica is sending its state to another already".into());
        }
        let _donating = Donation(self);
        if let Some(ClientReply::Unavailable { reason }) = self.stopped() {
            return Err(reason);
        }
        let mut pages = 0;
        if let Some(mirror) = self.mirror().filter(|mirror| !mirror.is_transparent()) {
            mirror.precopy_begin();
            let mut send_runs = |runs: RunsBuilder| runs.payloads().iter().try_for_each(|p| send(FrameKind::Runs, p));
            for round in 0..PRECOPY_ROUNDS {
                pages += mirror.precopy_round(round == 0, TRANSFER_BATCH_PAGES, &mut send_runs)?;
                if mirror.precopy_pending() < PRECOPY_SETTLED_PAGES {
                    break;
                }
            }
        }
        let deadline = std::time::Instant::now() + DONOR_CATCH_UP;
        let (copied, answered, position) = loop {
            let (reply, finished) = mpsc::channel();
            lock(&self.work).send(Work::Finish { from, reply }).map_err(|_| "the replica is shutting down")?;
            match finished.recv_timeout(DONOR_CATCH_UP) {
                Ok(Finished::Ready { copied, answered, position }) => break (copied, answered, position),
                Ok(Finished::NotServing(reason)) => return Err(reason),
                Ok(Finished::Behind(next)) if std::time::Instant::now() < deadline => {
                    tracing::debug!(service = self.name, next, from, "donor behind the receiver's point; waiting");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(Finished::Behind(next)) => {
                    return Err(format!("this replica executed only to position {next}, short of {from}"));
                }
                Err(_) => return Err("this replica's executor did not answer in time".into()),
            }
        };
        let final_pages = match copied {
            Copied::Pages { payloads, pages } => {
                for payload in &payloads {
                    send(FrameKind::Runs, payload)?;
                }
                pages
            }
            Copied::Snapshot(snapshot) => {
                for message in state_messages(&snapshot) {
                    send(FrameKind::Transfer, &nonstop_proto::transfer::encode(&message))?;
                }
                0
            }
        };
        for message in answered_messages(answered) {
            send(FrameKind::Transfer, &nonstop_proto::transfer::encode(&message))?;
        }
        send(FrameKind::Transfer, &nonstop_proto::transfer::encode(&TransferMessage::Done { position }))?;
        Ok(Donated { position, pages: pages + final_pages, final_pages })
    }
}

/// A donation running: ends the pre-copy and frees the replica for the next one however the
/// donation ends.
struct Donation<'r>(&'r Replica);

impl Drop for Donation<'_> {
    fn drop(&mut self) {
        if let Some(mirror) = self.0.mirror() {
            mirror.precopy_abort();
        }
        self.0.donating.store(false, Ordering::Release);
    }
}

/// The fewest ticks an order group's follower waits for its leader before standing.
const ORDER_ELECTION_TICKS_MIN: usize = 5;

/// The order group's Raft configuration for `spec` on node `me`, timed from the control plane's.
pub fn group_config(spec: &ActiveSpec, me: NodeId, control: &ControlConfig) -> ControlConfig {
    let mut seed = [0u8; 8];
    let _ = getrandom::fill(&mut seed);
    ControlConfig {
        // The first incarnation's; a restarted node's replica joins under another
        // ([`ReplicaHost::start`]).
        id: member_id(me.0, 0),
        voters: spec.replicas.iter().map(|node| member_id(node.0, 0)).collect(),
        // A leader that stops without closing its connections (paused, cut off) is noticed
        // only when its heartbeats stop coming, and the order stands still until then. The
        // control plane waits its whole failure timeout, because what it decides (promotions,
        // fencing) is costly to undo; a new order leader costs nothing of the kind (every
        // replica holds the state), so the group stands after a quarter of it, with the
        // leader's heartbeat every tick: five heartbeats missed at least.
        election_ticks: (control.election_ticks / 4).max(ORDER_ELECTION_TICKS_MIN),
        heartbeat_ticks: 1,
        election_jitter: ElectionJitter::Seeded(u64::from_le_bytes(seed)),
        compact_every: spec.order_log_entries,
        // A replica a quarter of the log behind at a compaction is sent the entries rather
        // than the order's snapshot, which would cost it a state transfer.
        catch_up_entries: spec.order_log_entries / 4,
        membership: Membership::Dynamic,
    }
}
