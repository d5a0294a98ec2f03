//! One member of a Raft group: a raft-rs [`RawNode`] with its durable log and the state machine
//! it applies ([`Replicated`]). The control plane is one such group, [`ControlNode`], applying
//! [`ClusterState`]; an actively replicated service orders its requests with another.
//!
//! Like `RawNode` itself, [`RaftNode`] has no sockets, threads or clocks: the driver calls
//! [`RaftNode::tick`] at a fixed interval, hands it the messages peers sent with
//! [`RaftNode::step`], and after either calls [`RaftNode::poll`], which persists what must be
//! durable, then returns the messages to send and the commands applied. The agent and the
//! simulator drive the same code.

use crate::cluster::{Applied, ClusterState, Command, NodeId};
use crate::log::{LogError, RaftLog, Record, StoredEntry};
use crate::storage::ControlStorage;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState,
    Message, MessageType, Snapshot,
};
use raft::{RawNode, StateRole};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// How a control node runs.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// This node.
    pub id: NodeId,
    /// Every voter, this node included (3 by default).
    pub voters: Vec<NodeId>,
    /// Ticks without hearing from a leader before a follower stands for election (raft-rs
    /// randomises between this and twice this).
    pub election_ticks: usize,
    /// Ticks between the leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// How election timeouts are randomised.
    pub election_jitter: ElectionJitter,
    /// Applied entries after which the log is compacted behind a snapshot of the state.
    pub compact_every: u64,
    /// Entries a compaction keeps behind its snapshot, so that a follower that far behind (a
    /// lost message, a short pause) is sent the entries it misses, not the whole state. The
    /// log then holds up to `compact_every + catch_up_entries` entries.
    pub catch_up_entries: u64,
    /// Whether members change while the group runs.
    pub membership: Membership,
}

/// Whether a group's members change while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    /// Every voter is named at start and never changes: the control plane, whose log is
    /// durable and whose members are the config's nodes.
    Static,
    /// The leader adds and removes members by configuration changes ([`MembershipChange`]):
    /// an active service's order group, whose log lives in memory, so that a member whose
    /// process restarted comes back under a new id. `voters` are the group's founders, the
    /// configuration at its start, on every member: a node not among them is a new member that
    /// waits to be added, and applies the changes from the founders' configuration on if it is
    /// given the log from its first entry (or takes the configuration of a snapshot). The log
    /// must live in memory: a durable log keeps no learners.
    Dynamic,
}

/// A change of a [`Membership::Dynamic`] group's members, proposed by its leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Adds a learner: it receives the log and votes in nothing, so adding it never costs the
    /// group its quorum.
    AddLearner(NodeId),
    /// Makes learner `learner` a voter in place of voter `replacing` (or besides the others,
    /// if `None`), in one joint configuration change that the leader then leaves by itself:
    /// no moment has fewer voters than before.
    Promote {
        /// The learner.
        learner: NodeId,
        /// The voter it replaces.
        replacing: Option<NodeId>,
    },
    /// Removes a learner or a voter.
    Remove(NodeId),
    /// Leaves a joint configuration whose leader changed before it left it.
    LeaveJoint,
}

/// A group's members, as this node last applied them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    /// The voters (of the new configuration, while joint).
    pub voters: Vec<NodeId>,
    /// The voters of the old configuration while joint; empty otherwise.
    pub outgoing: Vec<NodeId>,
    /// The learners.
    pub learners: Vec<NodeId>,
}

impl Members {
    /// True while the group is between two configurations.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Every member: voters (both sides while joint) and learners.
    pub fn all(&self) -> impl Iterator<Item = NodeId> + '_ {
        let outgoing = self.outgoing.iter().filter(|id| !self.voters.contains(id));
        self.voters.iter().chain(outgoing).chain(&self.learners).copied()
    }
}

/// Entry bytes one append message carries before the last entry it takes: with entries under
/// 512 KiB, as callers keep them, a message stays within one 1 MiB peer frame (longer ones
/// travel in parts, but a heartbeat queued behind them waits).
const APPEND_BYTES: u64 = 256 << 10;

/// Members a dynamic group may have at once, joint configurations included: a snapshot or a
/// change naming more is refused.
pub const MAX_DYNAMIC_MEMBERS: usize = 16;

/// How a node draws its election timeout, so that two followers rarely stand at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElectionJitter {
    /// Always `election_ticks`: symmetry is broken by other means (tests).
    Off,
    /// Between `election_ticks` and twice that, drawn by a generator seeded with this value,
    /// redrawn whenever raft-rs resets its election clock. A node seeds it at random; the
    /// simulator seeds it from its own seed, so a run is reproducible and elections still
    /// behave as in production. (raft-rs draws from its own unseeded generator; its draw is
    /// overwritten before any tick reads it.)
    Seeded(u64),
}

impl ControlConfig {
    /// A configuration with raft-rs's customary ratio: elections after 10 ticks, heartbeats
    /// every 2.
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> ControlConfig {
        let election_jitter = ElectionJitter::Seeded(0x6e6f_6e73_746f_7021 ^ id.0);
        ControlConfig {
            id,
            voters,
            election_ticks: 10,
            heartbeat_ticks: 2,
            election_jitter,
            compact_every: 1024,
            catch_up_entries: 256,
            membership: Membership::Static,
        }
    }
}

/// What went wrong in the control plane.
#[derive(Debug, Error)]
pub enum ControlError {
    /// The configuration cannot run.
    #[error("control plane configuration: {0}")]
    Config(String),
    /// The durable log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A peer's message did not decode or was not for this node.
    #[error("bad control-plane message from the network: {0}")]
    BadMessage(String),
    /// This member's own proposal breaks the state machine's rules (a bug in the driver).
    #[error("a proposal of this member's own was refused: {0}")]
    OwnProposalRefused(String),
    /// A dynamic group's message for another member: an earlier incarnation of this node's,
    /// which the leader still counts until the new one replaces it. Not a fault.
    #[error("a message for member {to}, not this one")]
    ForAnotherMember {
        /// The member it was for.
        to: u64,
    },
    /// The durable log decoded but does not make sense as a Raft log.
    #[error("raft log: {0}; move the node's raft log away and add the node back as a new member")]
    CorruptLog(String),
    /// Raft refused the operation.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

impl ControlError {
    /// A proposal Raft dropped (no leader known, leadership changing): the proposer retries.
    pub fn is_dropped_proposal(&self) -> bool {
        matches!(self, ControlError::Raft(raft::Error::ProposalDropped))
    }
}

/// A state machine a Raft group replicates: every member applies the same committed commands,
/// in log order, so every member holds the same state. The state is also the group's
/// snapshot: a member that fell behind a compaction receives it whole.
pub trait Replicated: Default + Serialize + DeserializeOwned {
    /// What is proposed, and applied once committed.
    type Command: Serialize + DeserializeOwned;
    /// What applying one command produced, for the driver.
    type Applied;
    /// Applies `command`, committed at log index `index`.
    fn apply(&mut self, index: u64, command: Self::Command) -> Self::Applied;
    /// The log index of the last command applied (0: none yet).
    fn applied_index(&self) -> u64;
    /// Checks a command, as encoded, that member `proposer` proposes, before it may enter the
    /// log: one forwarded to this member (its leader, as it believes), or this member's own. A
    /// member speaks for itself only. Anything is accepted unless the state machine says
    /// otherwise.
    fn check_proposal(_encoded: &[u8], _proposer: NodeId) -> Result<(), String> {
        Ok(())
    }
}

impl Replicated for ClusterState {
    type Command = Command;
    type Applied = Applied;

    fn apply(&mut self, index: u64, command: Command) -> Applied {
        let applied = ClusterState::apply(self, index, command);
        if let Err(rejection) = &applied.outcome {
            tracing::debug!(index, %rejection, "command changed nothing");
        }
        applied
    }

    fn applied_index(&self) -> u64 {
        ClusterState::applied_index(self)
    }
}

/// What one [`RaftNode::poll`] produced.
#[derive(Debug)]
pub struct RaftOutput<A> {
    /// Messages to send, already encoded, by destination.
    pub messages: Vec<(NodeId, Vec<u8>)>,
    /// Set when the state was replaced by a leader's snapshot (this node had fallen behind
    /// the leader's compacted log), to the last index the snapshot covers: the commands up to
    /// it were never applied here one by one, and are not in `applied`. `applied` follows on
    /// from it, and the state the node holds after this poll includes `applied` too: where the
    /// snapshot itself ends is where the first of `applied` starts.
    pub restored: Option<u64>,
    /// Commands applied to the state, in log order.
    pub applied: Vec<A>,
    /// Set when a membership change was applied, or a dynamic group's snapshot restored
    /// ([`RaftNode::members`] says the members now).
    pub members_changed: bool,
}

impl<A> Default for RaftOutput<A> {
    fn default() -> Self {
        RaftOutput { messages: Vec::new(), restored: None, applied: Vec::new(), members_changed: false }
    }
}

/// What one [`ControlNode::poll`] produced.
pub type ControlOutput = RaftOutput<Applied>;

/// One node's control plane.
pub type ControlNode = RaftNode<ClusterState>;

/// One member of a Raft group applying `S`.
pub struct RaftNode<S: Replicated> {
    id: NodeId,
    /// The voters: fixed under [`Membership::Static`]; under [`Membership::Dynamic`] the
    /// incoming voters as last applied.
    voters: Vec<NodeId>,
    membership: Membership,
    raw: RawNode<ControlStorage>,
    storage: ControlStorage,
    compact_every: u64,
    catch_up_entries: u64,
    log: Box<dyn RaftLog>,
    state: S,
    /// The seeded generator of election timeouts and `election_ticks`, if jittered.
    jitter: Option<(SmallRng, usize)>,
    /// Peers sent a snapshot by the current poll, to report as sent once it is done.
    snapshots_sent: Vec<u64>,
    /// After the leader's process was seen to die: this node's wait for its turn to stand.
    standing_in: Option<StandIn>,
    /// The last index its log said was committed when it started.
    recovered_commit: u64,
}

/// A surviving voter's wait for its turn to stand after the leader died
/// ([`RaftNode::on_leader_lost`]).
#[derive(Clone, Copy, Debug)]
struct StandIn {
    /// Ticks until it stands, unless a leader other than the dead one is known by then.
    ticks: u32,
    /// The dead leader.
    dead: NodeId,
    /// The survivor whose turn comes just before this one's.
    after: NodeId,
}

/// Ticks between the surviving voters' turns to stand after the leader died: the first may
/// lose for a shorter log, and the next then stands without waiting out the election timeout.
/// Long enough for the first's vote requests to arrive, which leave only once its vote is
/// synced to disk: at 3 ticks (30 ms) a sync of ~40 ms made the next stand in the same term
/// before it had heard the first, the vote split, and the failover waited out an election
/// timeout (~300 ms, about one kill in 200 in `nonstop chaos kill --kind kv`). The survivor
/// next in turn after a candidate, if it refuses that candidate its vote for a shorter log,
/// does not wait for its turn ([`RaftNode::stand_if_the_candidate_cannot_win`]), so the turn
/// is the wait only when the candidate's requests are lost or late.
const STAND_TURN_TICKS: u32 = 10;

impl<S: Replicated> std::fmt::Debug for RaftNode<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.id)
            .field("role", &self.raw.raft.state)
            .field("term", &self.raw.raft.term)
            .field("leader", &self.leader())
            .field("applied", &self.state.applied_index())
            .finish()
    }
}

impl<S: Replicated> RaftNode<S> {
    /// Starts a node from what `log` holds (nothing on first start). Every voter starts with
    /// the same static membership, so no bootstrap step is needed.
    pub fn new(config: ControlConfig, log: Box<dyn RaftLog>) -> Result<RaftNode<S>, ControlError> {
        RaftNode::starting_from(config, log, S::default())
    }

    /// [`RaftNode::new`] for a group whose state before its first entry is `initial` rather
    /// than the default (every member must start from the same one: it is part of what they
    /// agree on). A snapshot replaces it whole.
    pub fn starting_from(
        config: ControlConfig,
        mut log: Box<dyn RaftLog>,
        initial: S,
    ) -> Result<RaftNode<S>, ControlError> {
        if config.id.0 == 0 {
            return Err(ControlError::Config("node id 0 is reserved: number nodes from 1".into()));
        }
        if config.voters.is_empty() {
            return Err(ControlError::Config("a group needs its founding voters".into()));
        }
        let joining = config.membership == Membership::Dynamic;
        if !config.voters.contains(&config.id) && !joining {
            return Err(ControlError::Config(format!("{} is not among the voters {:?}", config.id, config.voters)));
        }
        if config.heartbeat_ticks == 0 || config.election_ticks <= config.heartbeat_ticks {
            return Err(ControlError::Config("election_ticks must exceed heartbeat_ticks, which must be >= 1".into()));
        }
        let mut voters = config.voters.clone();
        voters.sort();
        voters.dedup();
        let storage = ControlStorage::new(voters.iter().map(|v| v.0).collect());
        let records = log.load()?;
        if config.membership == Membership::Dynamic && !records.is_empty() {
            return Err(ControlError::Config(
                "a group whose members change keeps its log in memory, and this one found a log to replay".into(),
            ));
        }
        let (state, recovered_commit) = replay(&storage, records, initial)?;
        let raft_config = raft::Config {
            id: config.id.0,
            // Entries up to the snapshot are in `state` already.
            applied: storage.snapshot_index(),
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            // A leader that cannot reach a majority steps down, and a node that was cut off does
            // not disrupt a healthy leader when it returns.
            check_quorum: true,
            pre_vote: true,
            min_election_tick: config.election_ticks,
            max_election_tick: match config.election_jitter {
                ElectionJitter::Seeded(_) => 2 * config.election_ticks,
                ElectionJitter::Off => config.election_ticks + 1,
            },
            // raft-rs's default sends a follower one entry per message, so a follower that
            // comes back hundreds of entries behind is caught up by hundreds of round trips
            // (measured: answers dipped to a third while a paused replica caught up). Entries
            // up to this many bytes travel together, with the one entry past it raft-rs always
            // adds.
            max_size_per_msg: APPEND_BYTES,
            ..Default::default()
        };
        raft_config.validate()?;
        let logger = slog::Logger::root(TracingDrain { node: config.id.0 }, slog::o!());
        let raw = RawNode::new(&raft_config, storage.clone(), &logger)?;
        let compact_every = config.compact_every.max(1);
        let jitter = match config.election_jitter {
            ElectionJitter::Seeded(seed) => Some((SmallRng::seed_from_u64(seed), config.election_ticks)),
            ElectionJitter::Off => None,
        };
        let mut node = RaftNode {
            id: config.id,
            voters,
            membership: config.membership,
            raw,
            storage,
            compact_every,
            catch_up_entries: config.catch_up_entries,
            log,
            state,
            jitter,
            snapshots_sent: Vec::new(),
            standing_in: None,
            recovered_commit,
        };
        node.redraw_election_timeout();
        Ok(node)
    }

    /// The last index this node knew committed when it started: the commands up to it that it
    /// applies now are replayed from its own log (they took effect before it restarted), not
    /// news. A driver that tells operators what a command did can say so.
    pub fn recovered_commit(&self) -> u64 {
        self.recovered_commit
    }

    /// This node.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The voters.
    pub fn voters(&self) -> &[NodeId] {
        &self.voters
    }

    /// The group's members, as this node last applied them.
    pub fn members(&self) -> Members {
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let ids = |ids: &[u64]| {
            let mut ids: Vec<NodeId> = ids.iter().map(|id| NodeId(*id)).collect();
            ids.sort();
            ids
        };
        Members { voters: ids(&conf.voters), outgoing: ids(&conf.voters_outgoing), learners: ids(&conf.learners) }
    }

    /// True while a membership change is proposed and not yet applied here.
    pub fn has_pending_membership_change(&self) -> bool {
        self.raw.raft.has_pending_conf()
    }

    /// Proposes `change` (leader only, one at a time, [`Membership::Dynamic`] groups only).
    pub fn propose_membership(&mut self, change: MembershipChange) -> Result<(), ControlError> {
        if self.membership != Membership::Dynamic {
            return Err(ControlError::Config("this group's members are fixed".into()));
        }
        if !self.is_leader() {
            return Err(ControlError::Raft(raft::Error::ProposalDropped));
        }
        if self.has_pending_membership_change() {
            return Err(ControlError::Config("another membership change is still pending".into()));
        }
        let single = |id: NodeId, kind: ConfChangeType| {
            let mut change = ConfChangeSingle { node_id: id.0, ..Default::default() };
            change.set_change_type(kind);
            change
        };
        let mut conf_change = ConfChangeV2::default();
        match change {
            MembershipChange::AddLearner(id) => {
                conf_change.changes = vec![single(id, ConfChangeType::AddLearnerNode)].into()
            }
            MembershipChange::Promote { learner, replacing } => {
                let mut changes = vec![single(learner, ConfChangeType::AddNode)];
                changes.extend(replacing.map(|old| single(old, ConfChangeType::RemoveNode)));
                conf_change.changes = changes.into();
                conf_change.set_transition(ConfChangeTransition::Implicit);
            }
            MembershipChange::Remove(id) => conf_change.changes = vec![single(id, ConfChangeType::RemoveNode)].into(),
            MembershipChange::LeaveJoint => {}
        }
        Ok(self.raw.propose_conf_change(vec![], conf_change)?)
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.raw.tick();
        self.redraw_election_timeout();
        match self.standing_in {
            Some(StandIn { ticks: 0, dead, .. }) => {
                self.standing_in = None;
                if self.leader().is_none_or(|leader| leader == dead) {
                    tracing::info!(node = self.id.0, "no new leader yet: standing in turn");
                    self.campaign_after_leader_loss();
                }
            }
            Some(ref mut stand_in) => stand_in.ticks -= 1,
            None => {}
        }
    }

    /// The leader's process is gone (the driver saw its connection close): rather than every
    /// survivor waiting out the election timeout, the voters still alive (`alive`) stand in
    /// turn, lowest id first and at once, each next one [`STAND_TURN_TICKS`] later while no
    /// other leader is known (the first may lose for a shorter log). Raft's rules decide every
    /// election; this changes only when they are asked. Ignored unless `dead` leads.
    pub fn on_leader_lost(&mut self, dead: NodeId, alive: impl Fn(NodeId) -> bool) {
        if self.leader() != Some(dead) {
            return;
        }
        let survivors: Vec<NodeId> =
            self.members().voters.into_iter().filter(|id| *id != dead && (*id == self.id || alive(*id))).collect();
        match survivors.iter().position(|id| *id == self.id) {
            Some(0) => {
                tracing::info!(node = self.id.0, leader = dead.0, "the leader is gone: standing now");
                self.campaign_after_leader_loss();
            }
            Some(turn) => {
                self.standing_in =
                    Some(StandIn { ticks: turn as u32 * STAND_TURN_TICKS, dead, after: survivors[turn - 1] })
            }
            None => {}
        }
    }

    /// After raft-rs reset its election clock (it counts from 0 again), draws the timeout from
    /// the seeded generator instead of raft-rs's own.
    fn redraw_election_timeout(&mut self) {
        if let Some((rng, ticks)) = &mut self.jitter
            && self.raw.raft.election_elapsed == 0
        {
            let timeout = rng.random_range(*ticks..2 * *ticks);
            self.raw.raft.set_randomized_election_timeout(timeout);
        }
    }

    /// Hands the node a message a peer sent.
    pub fn step(&mut self, bytes: &[u8]) -> Result<(), ControlError> {
        self.step_from(bytes, |_| true)
    }

    /// [`RaftNode::step`], refusing a message whose sender `sender_ok` refuses: the driver
    /// knows which peer sent it, and a peer speaks only for its own members.
    pub fn step_from(&mut self, bytes: &[u8], sender_ok: impl FnOnce(NodeId) -> bool) -> Result<(), ControlError> {
        let message = Message::parse_from_bytes(bytes).map_err(|e| ControlError::BadMessage(e.to_string()))?;
        if !sender_ok(NodeId(message.from)) {
            return Err(ControlError::BadMessage(format!(
                "from member {}, which that peer does not run",
                message.from
            )));
        }
        if message.to != self.id.0 {
            if self.membership == Membership::Dynamic {
                return Err(ControlError::ForAnotherMember { to: message.to });
            }
            return Err(ControlError::BadMessage(format!("addressed to node {}, this is {}", message.to, self.id)));
        }
        match self.membership {
            Membership::Static if !self.voters.contains(&NodeId(message.from)) => {
                return Err(ControlError::BadMessage(format!("from node {}, which is not a voter", message.from)));
            }
            // A proposal of this member's own, forwarded to a member it took for the leader,
            // which forwarded it back here once leadership moved (order-lsa seed 672 with two
            // faults): dropped, as any proposal in a leader change is; the proposer retries.
            Membership::Dynamic if message.from == self.id.0 && message.get_msg_type() == MessageType::MsgPropose => {
                return Err(ControlError::Raft(raft::Error::ProposalDropped));
            }
            // Members come and go; the driver checks who may speak for whom.
            Membership::Dynamic if message.from == 0 || message.from == self.id.0 => {
                return Err(ControlError::BadMessage(format!("from member {}", message.from)));
            }
            Membership::Static | Membership::Dynamic => {}
        }
        check_wire_message(&message, self.membership)?;
        if message.get_msg_type() == MessageType::MsgPropose {
            for entry in message.get_entries() {
                S::check_proposal(&entry.data, NodeId(message.from))
                    .map_err(|why| ControlError::BadMessage(format!("a forwarded proposal: {why}")))?;
            }
        }
        if message.get_msg_type() == MessageType::MsgTransferLeader && self.raw.raft.state != StateRole::Leader {
            // Only a leader acts on it; raft-rs would forward it again with its term set, which
            // stops the process.
            return Err(ControlError::BadMessage("a leadership transfer sent to a node that does not lead".into()));
        }
        let last = self.raw.raft.raft_log.last_index();
        if message.get_msg_type() == MessageType::MsgHeartbeat && message.commit > last {
            // A leader commits a follower only up to what it matched there; past this log's
            // end raft-rs stops the process.
            return Err(ControlError::BadMessage(format!(
                "a heartbeat committing index {}, past this log's end at {last}",
                message.commit
            )));
        }
        if matches!(message.get_msg_type(), MessageType::MsgSnapshot) {
            let snapshot = message.get_snapshot();
            if postcard::from_bytes::<S>(&snapshot.data).is_err() {
                return Err(ControlError::BadMessage("a snapshot whose data is not this group's state".into()));
            }
            let conf = snapshot.get_metadata().get_conf_state();
            match self.membership {
                // Membership is static: a snapshot must not change who votes.
                Membership::Static => {
                    let mut voters = conf.voters.clone();
                    voters.sort_unstable();
                    if voters != self.voters.iter().map(|v| v.0).collect::<Vec<_>>() || !conf.learners.is_empty() {
                        return Err(ControlError::BadMessage(format!(
                            "a snapshot with voters {voters:?}, not this cluster's"
                        )));
                    }
                }
                // raft-rs stops the process on a configuration it cannot restore.
                Membership::Dynamic => check_conf_state(conf)?,
            }
        }
        let vote_asked =
            (message.get_msg_type() == MessageType::MsgRequestVote).then_some((message.term, NodeId(message.from)));
        let stepped = self.raw.step(message);
        self.redraw_election_timeout();
        if let Some((term, candidate)) = vote_asked {
            self.stand_if_the_candidate_cannot_win(term, candidate);
        }
        match stepped {
            Ok(()) | Err(raft::Error::StepPeerNotFound) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// A survivor waiting for its turn to stand ([`RaftNode::on_leader_lost`]) that was just
    /// asked for its vote in `term` by the survivor whose turn comes just before its own, and
    /// gave it to nobody, has a longer log than that candidate, which may well not win: the
    /// turn exists for this case, so it stands now rather than when its turn comes. One that
    /// voted for the candidate waits, and lets it win. One further down the turns waits too,
    /// even if it refused: with five voters two survivors can refuse the same candidate, and
    /// if both stood at once they could split the vote and leave the failover to the election
    /// timeout (the failover simulation's outage bound found it).
    fn stand_if_the_candidate_cannot_win(&mut self, term: u64, candidate: NodeId) {
        let Some(StandIn { dead, after, .. }) = self.standing_in else { return };
        let raft = &self.raw.raft;
        if candidate == after
            && raft.term == term
            && raft.vote == raft::INVALID_ID
            && self.leader().is_none_or(|leader| leader == dead)
        {
            self.standing_in = None;
            tracing::info!(node = self.id.0, "a candidate with a shorter log asked for my vote: standing now");
            self.campaign_after_leader_loss();
        }
    }

    /// Proposes a command. A follower forwards it to the leader; it may still be lost (the
    /// leader changes), so a proposer watches the applied commands and proposes again if needed.
    pub fn propose(&mut self, command: &S::Command) -> Result<(), ControlError> {
        let bytes = postcard::to_stdvec(command).expect("commands always serialize");
        // The rule a leader applies to forwarded proposals holds for its own: a leader
        // appends them unseen by any other check.
        S::check_proposal(&bytes, self.id).map_err(ControlError::OwnProposalRefused)?;
        Ok(self.raw.propose(vec![], bytes)?)
    }

    /// The voters this node, as leader, heard from lately (within an election timeout; itself
    /// included): where leadership may be handed without waiting on a dead node. Empty unless
    /// it leads.
    pub fn active_voters(&self) -> Vec<NodeId> {
        if !self.is_leader() {
            return Vec::new();
        }
        let me = self.id();
        let progress = self.raw.raft.prs();
        self.members()
            .voters
            .into_iter()
            .filter(|voter| *voter == me || progress.get(voter.0).is_some_and(|p| p.recent_active))
            .collect()
    }

    /// Asks the leader to hand leadership to `to` (the agent keeps the leader apart from
    /// primaries, so that one crash never takes both).
    pub fn transfer_leader(&mut self, to: NodeId) {
        self.raw.transfer_leader(to.0);
        self.redraw_election_timeout();
    }

    /// Stands for election now.
    pub fn campaign(&mut self) -> Result<(), ControlError> {
        let campaigned = self.raw.campaign();
        self.redraw_election_timeout();
        Ok(campaigned?)
    }

    /// Stands for election at once rather than after the election timeout
    /// ([`RaftNode::on_leader_lost`] says who, and when). The vote requests carry raft-rs's
    /// transfer context, so voters that heard the dead leader recently still answer them;
    /// Raft's rules (one vote per term, only up-to-date logs win) are untouched, so this
    /// changes speed, not safety.
    fn campaign_after_leader_loss(&mut self) {
        if !self.is_leader() {
            self.raw.raft.campaign(raft::CAMPAIGN_TRANSFER);
            self.redraw_election_timeout();
        }
    }

    /// The current leader, if this node knows one.
    pub fn leader(&self) -> Option<NodeId> {
        match self.raw.raft.leader_id {
            0 => None,
            id => Some(NodeId(id)),
        }
    }

    /// True if this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The Raft term (not a service's term).
    pub fn raft_term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The state as of the last applied command.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// Persists what Raft produced, applies what committed and returns the messages to send.
    /// Call after every tick, step or proposal.
    pub fn poll(&mut self) -> Result<RaftOutput<S::Applied>, ControlError> {
        let mut early = Vec::new();
        let mut output = self.poll_sending(|to, bytes| early.push((to, bytes)))?;
        early.append(&mut output.messages);
        output.messages = early;
        Ok(output)
    }

    /// [`RaftNode::poll`], handing the messages Raft lets leave before this node's log is
    /// written to `send_now` first: a leader's appends, which then reach the followers while
    /// the leader syncs its own copy (Ongaro's thesis, section 10.2.1), instead of after, so
    /// that a command (a promotion, a lease) commits after one sync's time rather than two.
    /// Everything else (a candidate's vote requests too: its own vote must be on disk first)
    /// comes back in the output, as from `poll`.
    pub fn poll_sending(
        &mut self,
        mut send_now: impl FnMut(NodeId, Vec<u8>),
    ) -> Result<RaftOutput<S::Applied>, ControlError> {
        let mut output = RaftOutput::default();
        if !self.raw.has_ready() {
            return Ok(output);
        }
        let mut ready = self.raw.ready();
        self.encode(ready.take_messages(), &mut send_now);
        if *ready.snapshot() != Snapshot::default() {
            // A leader sent the state in place of entries compacted away.
            let snapshot = ready.snapshot().clone();
            self.state = postcard::from_bytes(&snapshot.data)
                .map_err(|e| ControlError::CorruptLog(format!("snapshot data: {e}")))?;
            self.storage.apply_snapshot(snapshot);
            self.rewrite_log()?;
            output.restored = Some(self.state.applied_index());
            // A snapshot carries the members as of its index, changes this node missed included.
            output.members_changed = self.membership == Membership::Dynamic;
        }
        self.apply(ready.take_committed_entries(), &mut output)?;
        let mut records = Vec::new();
        if !ready.entries().is_empty() {
            records.push(Record::Entries(ready.entries().iter().map(stored).collect()));
        }
        if let Some(hard_state) = ready.hs() {
            records.push(hard_record(hard_state));
        }
        // Durable before anything that depends on it (votes, append responses) leaves.
        self.log.append(&records)?;
        self.storage.append(ready.entries()).map_err(ControlError::CorruptLog)?;
        if let Some(hard_state) = ready.hs() {
            self.storage.set_hard_state(hard_state.clone());
        }
        self.collect(ready.take_persisted_messages(), &mut output);
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            let hard_state = self.storage.set_commit(commit);
            // Remembered, so that a restart replays what it knew committed; not synced, since
            // Raft needs no commit index on disk (a restart short of it learns it again from
            // the leader), and every entry applied here would otherwise wait for a sync: on a
            // failover that is one more disk flush between a promotion's commit and its start.
            self.log.append_unsynced(&[hard_record(&hard_state)])?;
        }
        self.collect(light.take_messages(), &mut output);
        self.apply(light.take_committed_entries(), &mut output)?;
        self.raw.advance_apply();
        self.maybe_compact()?;
        // raft-rs pauses a follower it sent a snapshot until told how the sending went, and
        // the transport cannot tell whether the peer got it: a lost snapshot would leave that
        // follower behind for good. Reported as sent, the leader probes on from the snapshot's
        // index; if it was lost, the follower refuses those entries and the leader sends the
        // snapshot again.
        for to in std::mem::take(&mut self.snapshots_sent) {
            self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
        }
        Ok(output)
    }

    /// Compacts the log behind a snapshot of the state once enough entries were applied, and
    /// rewrites the durable log to match: memory and disk stay bounded however long it runs.
    fn maybe_compact(&mut self) -> Result<(), ControlError> {
        let applied = self.state.applied_index().min(self.raw.raft.raft_log.applied);
        if applied < self.storage.snapshot_index() + self.compact_every && !self.storage.snapshot_wanted() {
            return Ok(());
        }
        let data = postcard::to_stdvec(&self.state).expect("the state serializes");
        if self.storage.compact(applied, data, self.catch_up_entries).is_some() {
            self.rewrite_log()?;
        }
        Ok(())
    }

    fn rewrite_log(&mut self) -> Result<(), ControlError> {
        let (snapshot, hard_state, entries) = self.storage.contents();
        let metadata = snapshot.get_metadata();
        let mut records = vec![
            Record::Snapshot {
                index: metadata.index,
                term: metadata.term,
                voters: metadata.get_conf_state().voters.clone(),
                data: snapshot.data.to_vec(),
            },
            hard_record(&hard_state),
        ];
        if !entries.is_empty() {
            records.push(Record::Entries(entries.iter().map(stored).collect()));
        }
        Ok(self.log.rewrite(&records)?)
    }

    fn collect(&mut self, messages: Vec<Message>, output: &mut RaftOutput<S::Applied>) {
        self.encode(messages, &mut |to, bytes| output.messages.push((to, bytes)));
    }

    fn encode(&mut self, messages: Vec<Message>, send: &mut impl FnMut(NodeId, Vec<u8>)) {
        for message in messages {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.snapshots_sent.push(message.to);
            }
            let bytes = message.write_to_bytes().expect("raft messages always encode");
            send(NodeId(message.to), bytes);
        }
    }

    fn apply(&mut self, entries: Vec<Entry>, output: &mut RaftOutput<S::Applied>) -> Result<(), ControlError> {
        for entry in entries {
            if entry.get_entry_type() == EntryType::EntryConfChangeV2 && self.membership == Membership::Dynamic {
                self.apply_membership_change(&entry);
                output.members_changed = true;
                continue;
            }
            if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                // Empty entries are new leaders' no-ops; a static group has no conf changes.
                continue;
            }
            match postcard::from_bytes::<S::Command>(&entry.data) {
                Ok(command) => output.applied.push(self.state.apply(entry.index, command)),
                // Every node skips the same undecodable entry, so the states stay equal.
                Err(error) => tracing::error!(node = self.id.0, index = entry.index, %error, "undecodable command"),
            }
        }
        Ok(())
    }
}

impl<S: Replicated> RaftNode<S> {
    /// Applies a committed membership change. One raft-rs refuses (it contradicts the members
    /// as they are) is refused alike by every member, which applies the same entries.
    fn apply_membership_change(&mut self, entry: &Entry) {
        let change = match ConfChangeV2::parse_from_bytes(&entry.data) {
            Ok(change) => change,
            Err(error) => {
                return tracing::error!(node = self.id.0, index = entry.index, %error, "undecodable membership change");
            }
        };
        match self.raw.apply_conf_change(&change) {
            Ok(conf) => {
                self.storage.set_conf_state(conf.clone());
                let mut voters: Vec<NodeId> = conf.voters.iter().map(|id| NodeId(*id)).collect();
                voters.sort();
                self.voters = voters;
                tracing::info!(node = self.id.0, index = entry.index, ?conf, "membership changed");
            }
            Err(error) => tracing::warn!(node = self.id.0, index = entry.index, %error, "membership change refused"),
        }
    }
}

/// Checks that a dynamic group's configuration is one raft-rs can restore (it stops the
/// process on one it cannot): every id non-zero and in one role, voters present, learners to
/// come from the old voters only, and no more than [`MAX_DYNAMIC_MEMBERS`] members.
fn check_conf_state(conf: &ConfState) -> Result<(), ControlError> {
    use std::collections::BTreeSet;
    let refuse = |why: &str| Err(ControlError::BadMessage(format!("a configuration {why}: {conf:?}")));
    let set = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
    let (voters, outgoing, learners, next) =
        (set(&conf.voters), set(&conf.voters_outgoing), set(&conf.learners), set(&conf.learners_next));
    let lists = [&conf.voters, &conf.voters_outgoing, &conf.learners, &conf.learners_next];
    if lists.iter().zip([&voters, &outgoing, &learners, &next]).any(|(list, set)| list.len() != set.len()) {
        return refuse("naming a member twice");
    }
    if voters.is_empty() || voters.contains(&0) || outgoing.contains(&0) || learners.contains(&0) {
        return refuse("without voters, or with member 0");
    }
    if !learners.is_disjoint(&voters) || !learners.is_disjoint(&outgoing) {
        return refuse("with a learner that also votes");
    }
    if !next.is_subset(&outgoing) || !next.is_disjoint(&voters) {
        return refuse("demoting a member that is not an old voter");
    }
    if voters.union(&outgoing).count() + learners.len() > MAX_DYNAMIC_MEMBERS {
        return refuse("with too many members");
    }
    Ok(())
}

fn stored(entry: &Entry) -> StoredEntry {
    StoredEntry {
        index: entry.index,
        term: entry.term,
        kind: entry.get_entry_type() as i32,
        data: entry.data.to_vec(),
        context: entry.context.to_vec(),
    }
}

fn hard_record(hard_state: &HardState) -> Record {
    Record::HardState { term: hard_state.term, vote: hard_state.vote, commit: hard_state.commit }
}

/// Rebuilds the in-memory Raft storage from the durable records; returns the cluster state of
/// the last snapshot (entries after it are applied again by Raft).
/// Refuses what no peer's Raft sends over the network. raft-rs trusts its peers and stops the
/// process on some messages it could never have sent (a vote with no term, a local tick), so
/// they are refused here, before it sees them.
fn check_wire_message(message: &Message, membership: Membership) -> Result<(), ControlError> {
    use MessageType::*;
    let kind = message.get_msg_type();
    let needs_term = match kind {
        // Forwarded to the leader as it was proposed, with no term.
        MsgPropose => false,
        MsgAppend
        | MsgAppendResponse
        | MsgRequestVote
        | MsgRequestVoteResponse
        | MsgRequestPreVote
        | MsgRequestPreVoteResponse
        | MsgSnapshot
        | MsgHeartbeat
        | MsgHeartbeatResponse
        | MsgTransferLeader
        | MsgTimeoutNow => true,
        // Raised inside a node and never sent, or (read index) never used by this control plane.
        MsgHup | MsgBeat | MsgUnreachable | MsgSnapStatus | MsgCheckQuorum | MsgReadIndex | MsgReadIndexResp => {
            return Err(ControlError::BadMessage(format!("a {kind:?}, which this control plane never sends")));
        }
    };
    if needs_term != (message.term != 0) {
        let has = if message.term == 0 { "no term" } else { "a term" };
        return Err(ControlError::BadMessage(format!("a {kind:?} with {has}")));
    }
    if kind == MsgSnapshot {
        // A snapshot covers at least the first entry, of a term no later than its sender's.
        let metadata = message.get_snapshot().get_metadata();
        if metadata.index == 0 || metadata.term == 0 || metadata.term > message.term {
            return Err(ControlError::BadMessage(format!(
                "a snapshot up to index {} of term {} in term {}",
                metadata.index, metadata.term, message.term
            )));
        }
    }
    if kind == MsgPropose {
        // A follower forwards what was proposed to it: commands, not yet placed in the log.
        // Membership changes are proposed by a leader, never forwarded.
        let entries = message.get_entries();
        if entries.is_empty()
            || entries.iter().any(|e| e.index != 0 || e.term != 0 || e.get_entry_type() != EntryType::EntryNormal)
        {
            return Err(ControlError::BadMessage("a proposal that is not a list of new commands".into()));
        }
    }
    if kind == MsgAppend {
        // A leader appends the entries that follow `index` in its own log, whose terms never
        // decrease, start at or after `log_term` (and at 1) and never pass the leader's term;
        // only a dynamic group's change its configuration, each naming a few members.
        // Only the empty log's index 0 has term 0 (raft-rs reads any index past the log as
        // term 0, so a term-0 claim about a later index would match anything).
        if (message.index == 0) != (message.log_term == 0) {
            return Err(ControlError::BadMessage(format!(
                "an append after index {} of term {}",
                message.index, message.log_term
            )));
        }
        let mut previous = (message.index, message.log_term);
        for entry in message.get_entries() {
            let kind_allowed = match entry.get_entry_type() {
                EntryType::EntryNormal => true,
                EntryType::EntryConfChangeV2 if membership == Membership::Dynamic => {
                    ConfChangeV2::parse_from_bytes(&entry.data)
                        .is_ok_and(|change| change.changes.len() <= 2 && change.changes.iter().all(|c| c.node_id != 0))
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => false,
            };
            if entry.index != previous.0 + 1
                || entry.term < previous.1.max(1)
                || entry.term > message.term
                || !kind_allowed
            {
                return Err(ControlError::BadMessage(format!(
                    "an append whose entry {} (term {}) does not follow index {} (term {}) in term {}",
                    entry.index, entry.term, previous.0, previous.1, message.term
                )));
            }
            previous = (entry.index, entry.term);
        }
    }
    Ok(())
}

/// The state the log's records rebuild into `storage`, and the commit index they recorded.
fn replay<S: Replicated>(storage: &ControlStorage, records: Vec<Record>, initial: S) -> Result<(S, u64), ControlError> {
    let mut state = initial;
    for record in records {
        match record {
            Record::Snapshot { index, term, voters, data } => {
                state = postcard::from_bytes(&data)
                    .map_err(|e| ControlError::CorruptLog(format!("snapshot at index {index}: {e}")))?;
                let mut snapshot = Snapshot { data: data.into(), ..Default::default() };
                let metadata = snapshot.mut_metadata();
                metadata.index = index;
                metadata.term = term;
                metadata.set_conf_state(ConfState::from((voters, vec![])));
                storage.apply_snapshot(snapshot);
            }
            Record::Entries(stored) => {
                let snapshot_index = storage.snapshot_index();
                let entries = stored
                    .into_iter()
                    .filter(|s| s.index > snapshot_index)
                    .map(|s| {
                        let kind = <EntryType as protobuf::ProtobufEnum>::from_i32(s.kind)
                            .ok_or_else(|| ControlError::CorruptLog(format!("entry type {} is unknown", s.kind)))?;
                        let mut entry = Entry {
                            index: s.index,
                            term: s.term,
                            data: s.data.into(),
                            context: s.context.into(),
                            ..Default::default()
                        };
                        entry.set_entry_type(kind);
                        Ok(entry)
                    })
                    .collect::<Result<Vec<Entry>, ControlError>>()?;
                storage.append(&entries).map_err(ControlError::CorruptLog)?;
            }
            Record::HardState { term, vote, commit } => {
                storage.set_hard_state(HardState { term, vote, commit, ..Default::default() });
            }
        }
    }
    // raft-rs panics on a commit index past the log; say what is wrong instead.
    let (_, hard_state, _) = storage.contents();
    let last = raft::Storage::last_index(storage)?;
    if hard_state.commit > last {
        return Err(ControlError::CorruptLog(format!(
            "the hard state says index {} is committed, but the log ends at {last}",
            hard_state.commit
        )));
    }
    Ok((state, hard_state.commit))
}

/// Forwards raft-rs's slog records to `tracing` at debug level.
struct TracingDrain {
    node: u64,
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        if record.level().is_at_least(slog::Level::Warning) {
            tracing::warn!(node = self.node, "raft: {}", record.msg());
        } else {
            tracing::trace!(node = self.node, "raft: {}", record.msg());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::MemoryLog;

    fn snapshot_message(voters: Vec<u64>, data: Vec<u8>) -> Vec<u8> {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgSnapshot);
        message.from = 2;
        message.to = 1;
        message.term = 2;
        let snapshot = message.mut_snapshot();
        snapshot.data = data.into();
        snapshot.mut_metadata().index = 10;
        snapshot.mut_metadata().term = 1;
        snapshot.mut_metadata().set_conf_state(ConfState::from((voters, vec![])));
        message.write_to_bytes().unwrap()
    }

    #[test]
    fn a_snapshot_that_changes_membership_or_is_not_a_state_is_refused() {
        let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
        let mut node = ControlNode::new(ControlConfig::new(NodeId(1), voters), Box::new(MemoryLog::default())).unwrap();
        let state = postcard::to_stdvec(&ClusterState::default()).unwrap();
        assert!(node.step(&snapshot_message(vec![1, 2], state.clone())).is_err(), "a voter dropped");
        assert!(node.step(&snapshot_message(vec![1, 2, 3, 4], state)).is_err(), "a voter added");
        assert!(node.step(&snapshot_message(vec![1, 2, 3], vec![0xff; 3])).is_err(), "garbage data");
        assert_eq!(node.state(), &ClusterState::default());
    }

    #[test]
    fn a_dynamic_group_refuses_configurations_raft_rs_cannot_restore() {
        // Node 1 is a new member of a group founded by 2 and 3.
        let founders = vec![NodeId(2), NodeId(3)];
        let config = ControlConfig { membership: Membership::Dynamic, ..ControlConfig::new(NodeId(1), founders) };
        let mut node = ControlNode::new(config, Box::new(MemoryLog::default())).unwrap();
        let state = postcard::to_stdvec(&ClusterState::default()).unwrap();
        let with = |edit: fn(&mut ConfState)| {
            let mut message = Message::parse_from_bytes(&snapshot_message(vec![2, 3], state.clone())).unwrap();
            edit(message.mut_snapshot().mut_metadata().mut_conf_state());
            message.write_to_bytes().unwrap()
        };
        type Edit = fn(&mut ConfState);
        let refused: [(&str, Edit); 5] = [
            ("a learner that votes", |c| c.learners = vec![3]),
            ("no voters", |c| c.voters = vec![]),
            ("member 0", |c| c.learners = vec![0]),
            ("a member twice", |c| c.voters = vec![2, 2]),
            ("a demotion of a non-voter", |c| c.learners_next = vec![1]),
        ];
        for (what, edit) in refused {
            assert!(matches!(node.step(&with(edit)), Err(ControlError::BadMessage(_))), "{what}");
        }
        // A joining node is sent the group's state once it was added as a learner.
        node.step(&with(|c| c.learners = vec![1])).unwrap();
        node.poll().unwrap();
        assert_eq!(node.members().learners, vec![NodeId(1)]);
        assert_eq!(node.members().voters, vec![NodeId(2), NodeId(3)]);
    }

    #[test]
    fn a_static_group_takes_no_membership_change() {
        let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
        let mut node = ControlNode::new(ControlConfig::new(NodeId(1), voters), Box::new(MemoryLog::default())).unwrap();
        let change = message(MessageType::MsgAppend, 3, |m| {
            let mut entry = entry(1, 3);
            entry.set_entry_type(EntryType::EntryConfChangeV2);
            m.entries = vec![entry].into();
        });
        assert!(matches!(node.step(&change), Err(ControlError::BadMessage(_))));
        assert!(node.propose_membership(MembershipChange::AddLearner(NodeId(4))).is_err());
    }

    /// A state machine whose members may forward only even commands.
    #[derive(Default, serde::Serialize, serde::Deserialize)]
    struct EvenOnly(u64);

    impl Replicated for EvenOnly {
        type Command = u64;
        type Applied = ();
        fn apply(&mut self, index: u64, _: u64) {
            self.0 = index;
        }
        fn applied_index(&self) -> u64 {
            self.0
        }
        fn check_proposal(encoded: &[u8], proposer: NodeId) -> Result<(), String> {
            match postcard::from_bytes::<u64>(encoded) {
                Ok(command) if command % 2 == 0 => Ok(()),
                _ => Err(format!("member {} forwarded an odd or undecodable command", proposer.0)),
            }
        }
    }

    #[test]
    fn proposals_forwarded_or_own_are_checked_by_the_state_machine() {
        let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
        let mut node =
            RaftNode::<EvenOnly>::new(ControlConfig::new(NodeId(1), voters), Box::new(MemoryLog::default())).unwrap();
        let proposal = |command: u64| {
            message(MessageType::MsgPropose, 0, |m| {
                let data = postcard::to_stdvec(&command).unwrap().into();
                m.entries = vec![Entry { data, ..Default::default() }].into();
            })
        };
        let refused = node.step(&proposal(3)).unwrap_err();
        assert!(refused.to_string().contains("member 2 forwarded an odd"), "{refused}");
        // An even one passes the check (and, with no leader known here, is dropped by Raft).
        assert!(!matches!(node.step(&proposal(4)), Err(ControlError::BadMessage(_))));
        // The member's own proposals follow the same rule, leader or not.
        assert!(matches!(node.propose(&5), Err(ControlError::OwnProposalRefused(_))));
        assert!(!matches!(node.propose(&6), Err(ControlError::OwnProposalRefused(_))));
    }

    #[test]
    fn an_own_proposal_forwarded_back_is_dropped_as_in_a_leader_change() {
        let founders = vec![NodeId(1), NodeId(2), NodeId(3)];
        let config = ControlConfig { membership: Membership::Dynamic, ..ControlConfig::new(NodeId(1), founders) };
        let mut node = ControlNode::new(config, Box::new(MemoryLog::default())).unwrap();
        let back = message(MessageType::MsgPropose, 0, |m| {
            m.from = 1;
            m.entries = vec![Entry { data: vec![1].into(), ..Default::default() }].into();
        });
        assert!(node.step(&back).is_err_and(|error| error.is_dropped_proposal()));
        // Any other message in its own name is refused.
        let heartbeat = message(MessageType::MsgHeartbeat, 1, |m| m.from = 1);
        assert!(matches!(node.step(&heartbeat), Err(ControlError::BadMessage(_))));
    }

    fn message(kind: MessageType, term: u64, edit: impl FnOnce(&mut Message)) -> Vec<u8> {
        let mut message = Message::default();
        message.set_msg_type(kind);
        message.from = 2;
        message.to = 1;
        message.term = term;
        edit(&mut message);
        message.write_to_bytes().unwrap()
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: vec![1].into(), ..Default::default() }
    }

    /// Each of these once stopped the process inside raft-rs (found by the `raft_message` fuzz
    /// target); each must be refused, and the node go on as before.
    #[test]
    fn messages_no_peer_sends_are_refused_before_raft_sees_them() {
        let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
        let mut node = ControlNode::new(ControlConfig::new(NodeId(1), voters), Box::new(MemoryLog::default())).unwrap();
        let refused = [
            ("a vote with no term", message(MessageType::MsgRequestVote, 0, |_| {})),
            ("a heartbeat past the log", message(MessageType::MsgHeartbeat, 2, |m| m.commit = 11)),
            ("an append after a term-0 index", message(MessageType::MsgAppend, 2, |m| (m.index, m.commit) = (8, 8))),
            (
                "an entry of term 0",
                message(MessageType::MsgAppend, 3, |m| {
                    m.commit = 10;
                    m.entries = vec![entry(1, 0)].into();
                }),
            ),
            (
                "an entry past the leader's term",
                message(MessageType::MsgAppend, 3, |m| m.entries = vec![entry(1, 4)].into()),
            ),
            ("a gap in the entries", message(MessageType::MsgAppend, 3, |m| m.entries = vec![entry(2, 3)].into())),
            ("an empty proposal", message(MessageType::MsgPropose, 0, |_| {})),
            ("a proposal with a term", message(MessageType::MsgPropose, 2, |m| m.entries = vec![entry(0, 0)].into())),
            ("a transfer to a follower", message(MessageType::MsgTransferLeader, 2, |_| {})),
            ("a read index", message(MessageType::MsgReadIndex, 2, |_| {})),
            ("a local tick", message(MessageType::MsgHup, 0, |_| {})),
            (
                "a snapshot of index 0",
                message(MessageType::MsgSnapshot, 2, |m| {
                    let snapshot = m.mut_snapshot();
                    snapshot.data = postcard::to_stdvec(&ClusterState::default()).unwrap().into();
                    snapshot.mut_metadata().set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
                }),
            ),
        ];
        for (what, bytes) in refused {
            assert!(matches!(node.step(&bytes), Err(ControlError::BadMessage(_))), "{what} was not refused");
            node.tick();
            node.poll().unwrap();
        }
        // What a leader does send still goes in: its first append.
        let first = message(MessageType::MsgAppend, 3, |m| {
            m.entries = vec![entry(1, 3)].into();
            m.commit = 1;
        });
        node.step(&first).unwrap();
        node.poll().unwrap();
        assert_eq!(node.raw.raft.raft_log.last_index(), 1);
    }
}
