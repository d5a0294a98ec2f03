//! A deterministic simulation of active replication's calls: three replicas running the real
//! Raft group of the order ([`RaftNode`] of [`Order`]) and the real call bookkeeping of a
//! replica ([`Calls`]), the code a node drives, executing a small service (a vault whose
//! withdrawals are refused when it runs short, so that replicas refuse requests and clients
//! reuse their numbers); and clients that ask every replica, ask again after a timeout, and
//! vote on the replies with the real voter ([`Vote`], majority) — under lost, duplicated,
//! delayed and reordered messages, lost replies, partitions that cut one replica off for a
//! while, and replicas crashing and restarting (up to two crashes a run, one replica down at a
//! time). The group's log lives in memory, so a restarted replica comes back as a new member
//! under a new id (the node's code: [`membership::next_change`] decides, the group's Raft
//! applies the configuration changes): it asks to join, is added as a learner, takes the log
//! or a live replica's state, says it is ready, and is swapped in for its old incarnation in
//! one joint configuration change. One step is 1 ms of virtual time; the same seed gives the
//! same run.
//!
//! After every step it checks what active replication promises:
//! * **one order, one execution**: of any two replicas' executed sequences, one is a prefix of
//!   the other, outcomes included (a crashed replica's too);
//! * **each request once, in its client's order**: a replica executes request `n` of a client
//!   right after its request `n - 1`, or after a refused request under `n` itself;
//! * **one time**: every replica executes each request at the same order time (the prefix
//!   check compares it too), and a replica's order time never goes back, though the replicas
//!   that propose have clocks up to 63 ms apart;
//! * **answers are executions**: the outcome a client's vote decides is the one the replicas
//!   executed for that request, and replicas never disagree so that no outcome wins.
//!
//! A replica that falls behind the leader's compacted log receives the order's state whole
//! (a Raft snapshot); that is when an active replica is re-integrated by copying a live
//! replica's state. The replica asks a donor 5-80 ms of the simulation later, and the state
//! arrives 1-30 ms after that, one transfer at a time, as on a node; meanwhile the order goes on
//! and the replica answers no call. Its [`Course`] (the node's code) keeps the entries
//! delivered meanwhile, up to a small bound (past it the replica asks for a state beyond them,
//! and the one on its way arrives stale and is asked for again), and once a donor's state
//! arrives, at the donor's own point of the order when it arrives (at least the position asked
//! for, possibly past this replica's log), executes only what follows it. The simulation copies
//! the donor's executions up to that point and what they answered, as the donor's call
//! bookkeeping tells it (a replica that forgot them could never answer a client asking again
//! for a request executed before the transfer, and with another replica gone no vote would
//! decide). A donor dead, cut off or unable to donate when the state is due makes the transfer
//! fail, and the replica asks again.
//!
//! A replica's state may also be corrupted (its vault changed behind the order's back, as a
//! flipped bit would; up to two a run, none while another fault is on): its outcomes are then
//! wrong. The replicas digest their outcomes window by window and compare the digests through
//! the order ([`nonstop_active::dissent`], the node's code); the corrupted replica must find
//! itself dissenting, take a live replica's state, and prove it against a replica other than
//! its donor before it answers again. The checks above then hold for outcomes of good states
//! only (the order itself must hold for all), no client may decide an outcome other than the one
//! a good state gives (an oracle executes the order alongside: a corrupted vault may heal, and
//! answers given before it did may still be wrong), and by the end no live replica may hold a
//! corrupted state. With [`Faults::TwoAtOnce`] each corruption comes with a second fault,
//! another replica falling behind and taking a state (from the corrupted one, often): the
//! group may stall then, and only safety is checked.
//!
//! Under [`Pacing::Loose`] the replicas run LSA's batches as a node's multithreaded service
//! does (the node's code: [`Order::loose`], [`Course::loose`]): the replica of the order's
//! leader claims the lead of the acquisitions, executes each batch in an order its "threads"
//! happen to take the vault in (drawn from the seed), proposes that order, and holds the
//! batch's replies until the order grants it those acquisitions; every other replica executes
//! each batch in the order granted. The outcomes of a batch depend on that order (a withdrawal
//! is refused or not), so a replica that answered from acquisitions the order did not grant,
//! or followed other ones, breaks the checks. A leader deposed while its acquisitions were on
//! their way must take a live replica's state; until it does, its executions of those batches
//! are tentative and not compared.
//!
//! The run ends with a quiet period (no new faults, partitions healed): by its end every client
//! has its answer, every live replica has executed the same sequence, and every live replica
//! is a voter of one settled configuration of three.

use crate::Violation;
use nonstop_active::calls::{Asked, Calls, Outcome, RequestId};
use nonstop_active::course::{Acquisitions, Behind, Course, Event, Next, Standing, Taken};
use nonstop_active::dissent::{Digest, Dissent, StateVerdict, keep_dissenting_digests, propose_later};
use nonstop_active::loose::{Claimant, Stewardship};
use nonstop_active::membership::{self, Join, member_id, node_of};
use nonstop_active::order::{Batch, Lead, Order, Request, next_leads};
use nonstop_active::schedule::{Grant, MutexId, ThreadId};
use nonstop_client::vote::{ReplicaId, ReplyMode, Verdict, Vote};
use nonstop_control::cluster::NodeId;
use nonstop_control::log::MemoryLog;
use nonstop_control::{ControlConfig, ElectionJitter, Membership, RaftNode, Replicated};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const MEMBERS: u64 = 3;
/// The nodes that hold the replicas.
const REPLICA_NODES: [u64; MEMBERS as usize] = [1, 2, 3];
const CLIENTS: u64 = 4;
/// Steps between Raft ticks (10 ms, as nodes tick the control plane).
const TICK_STEPS: u64 = 10;
/// Steps a client waits for the replicas' votes before asking again those that did not vote.
const RETRY_STEPS: u64 = 60;
/// Entries applied between compactions of the group's log.
const COMPACT_EVERY: u64 = 48;
/// Entries a compaction keeps behind its snapshot: more than [`SETTLED_LAG`], so that a
/// replica counted settled is sent entries, not a snapshot that would make it take a state
/// (from a replica that may be wrong and not found yet: two faults at once, seed 185).
const CATCH_UP_ENTRIES: u64 = 24;
/// Request bytes a replica keeps while it awaits a state (a node keeps 64 MiB): small, so that
/// in some transfers the entries delivered meanwhile outgrow it, the replica asks for a state
/// past them, and the state on its way arrives stale.
const KEPT_FOR_TRANSFER: usize = 80;
/// Acquisitions an LSA leader proposes in one part (a node's parts hold up to 65,536): one, so
/// that every batch of two requests or more travels in several, which crashes, lost entries
/// and new leaders then cut between.
const GRANTS_PER_PART: usize = 1;
/// Log entries a replica may lag the most advanced one and still count as settled for a new
/// fault: under [`CATCH_UP_ENTRIES`], past which it needs a live replica's state.
const SETTLED_LAG: u64 = 16;
/// The quiet period at the end of a run; clients start no request in its second half.
const QUIET_STEPS: u64 = 3000;

/// How the replicas take the shared state in a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pacing {
    /// Each request in the order of the batch, as every scheduler but LSA ends up doing.
    #[default]
    Scheduled,
    /// LSA: the grant leader's replica takes them in an order of its own and ships it through
    /// the order; the others take them in that order.
    Loose,
}

/// Which faults a run injects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Faults {
    /// One at a time, as three replicas mask them: every promise holds, answers to every
    /// call by the end included.
    #[default]
    OneAtATime,
    /// Beyond what three replicas mask: each corruption comes with another replica cut off for
    /// a while, which then takes a live replica's state as if the log had been compacted past
    /// it, the corrupted one's in about half the cases, before or after the digests show the
    /// corruption. The group may then stall; it must never answer wrongly.
    /// The safety checks are made as always; those of the run's end (every call answered,
    /// every replica equal and good) are not.
    TwoAtOnce,
}

/// How a run goes.
#[derive(Clone, Copy, Debug, Default)]
pub struct OrderRun {
    /// How the replicas take the shared state.
    pub pacing: Pacing,
    /// Which faults it injects.
    pub faults: Faults,
    /// Print every fault and every decision of a replica's course to stderr.
    pub trace: bool,
}

/// What a run did, for coverage: a simulation that injects no fault proves nothing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OrderStats {
    /// Requests delivered, counted once per request (at the first replica to deliver it).
    pub delivered: u64,
    /// Requests proposed by replicas, again after a client asked again included.
    pub proposals: u64,
    /// Calls decided by a client's vote.
    pub decided: u64,
    /// Of those, refusals (the client reused the number for its next request).
    pub refusals: u64,
    /// Calls a replica answered at once from what it executed before (a client that asked
    /// again).
    pub answered_from_memory: u64,
    /// Replies lost on the way to their client.
    pub replies_lost: u64,
    /// Forwarded proposals dropped by a replica that no longer led.
    pub dropped_proposals: u64,
    /// Calls asked of a replica that had not executed a request another replica had (it
    /// proposes it again, and the order must not deliver it again).
    pub retries_of_delivered: u64,
    /// Messages lost, or cut by a partition or a crash.
    pub lost: u64,
    /// Messages delivered twice.
    pub duplicated: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Replicas crashed.
    pub crashes: u64,
    /// Crashed replicas restarted as new members.
    pub restarts: u64,
    /// Crashes of a replica some live replica knew as the order's leader (the others stand in
    /// turn when they see its connection close).
    pub leaders_crashed: u64,
    /// Restarted replicas swapped in for their old incarnation as voters.
    pub rejoined: u64,
    /// Membership changes applied (counted at the first replica to apply each).
    pub membership_changes: u64,
    /// Times a replica saw a new leader.
    pub leader_changes: u64,
    /// Replicas brought up to date by a live replica's state (re-integration), after the
    /// leader sent them a snapshot of the order.
    pub state_transfers: u64,
    /// Of those, transfers whose donor had executed past the receiving replica's log (entries
    /// still to come were skipped).
    pub transfers_ahead: u64,
    /// States that arrived after a newer snapshot of the order had come (asked for again).
    pub transfers_stale: u64,
    /// Entries kept while a transfer was awaited, then executed after it.
    pub entries_kept_for_transfer: u64,
    /// Replicas whose state was corrupted (the vault's balance changed behind the order's
    /// back, as a flipped bit would).
    pub corruptions: u64,
    /// States taken from a corrupted donor (copied before anyone found it).
    pub corruptions_copied: u64,
    /// Corrupted states replaced by a good one (each corruption and each copy must end so).
    pub corruptions_replaced: u64,
    /// Digests of windows of outcomes proposed in the order.
    pub digests_proposed: u64,
    /// Replicas that found themselves dissenting and took a live replica's state.
    pub dissents_found: u64,
    /// Dissents reported by the other replicas (each replica that saw one counts it).
    pub dissents_reported: u64,
    /// Dissents a replica found in itself that no other replica reported by the end of the
    /// run (its digest never reached the order, or nobody was there to judge it).
    pub dissents_unreported: u64,
    /// Replicas whose taken state was proven against a replica other than its donor.
    pub probations_cleared: u64,
    /// Replicas cleared with no replica outside their donor's lineage to prove them against.
    pub probations_cleared_unproven: u64,
    /// Replicas whose taken state disagreed with a replica other than its donor.
    pub probations_refuted: u64,
    /// LSA: claims of the acquisitions' lead proposed.
    pub claims: u64,
    /// LSA: order groups handed over by a leader whose replica did not serve.
    pub handovers: u64,
    /// Rounds in which a replica held its pending calls for its next entry, as a node does
    /// while it has requests of the order left to execute ([`Calls::take_due`]).
    pub calls_gathered: u64,
    /// LSA: batches executed leading.
    pub batches_led: u64,
    /// LSA: batches executed following the acquisitions granted.
    pub batches_followed: u64,
    /// LSA: batches whose held replies left once the order granted them.
    pub batches_granted: u64,
    /// LSA: parts of led batches' acquisitions proposed after each batch's first (a batch of
    /// more than [`GRANTS_PER_PART`] requests travels in several).
    pub later_parts_proposed: u64,
    /// LSA: leaders whose acquisitions the order would not take (deposed, or another's came
    /// first), which took a live replica's state.
    pub leads_overruled: u64,
    /// Runs that ended with a call undecided ([`Faults::TwoAtOnce`]: the group stalled rather
    /// than answer wrongly).
    pub stalled: u64,
}

impl std::ops::AddAssign for OrderStats {
    fn add_assign(&mut self, other: OrderStats) {
        self.delivered += other.delivered;
        self.proposals += other.proposals;
        self.decided += other.decided;
        self.refusals += other.refusals;
        self.answered_from_memory += other.answered_from_memory;
        self.replies_lost += other.replies_lost;
        self.dropped_proposals += other.dropped_proposals;
        self.retries_of_delivered += other.retries_of_delivered;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.partitions += other.partitions;
        self.crashes += other.crashes;
        self.restarts += other.restarts;
        self.leaders_crashed += other.leaders_crashed;
        self.rejoined += other.rejoined;
        self.membership_changes += other.membership_changes;
        self.leader_changes += other.leader_changes;
        self.state_transfers += other.state_transfers;
        self.transfers_ahead += other.transfers_ahead;
        self.transfers_stale += other.transfers_stale;
        self.entries_kept_for_transfer += other.entries_kept_for_transfer;
        self.corruptions += other.corruptions;
        self.digests_proposed += other.digests_proposed;
        self.dissents_found += other.dissents_found;
        self.corruptions_copied += other.corruptions_copied;
        self.corruptions_replaced += other.corruptions_replaced;
        self.dissents_reported += other.dissents_reported;
        self.dissents_unreported += other.dissents_unreported;
        self.probations_cleared += other.probations_cleared;
        self.probations_cleared_unproven += other.probations_cleared_unproven;
        self.probations_refuted += other.probations_refuted;
        self.claims += other.claims;
        self.handovers += other.handovers;
        self.batches_led += other.batches_led;
        self.batches_followed += other.batches_followed;
        self.batches_granted += other.batches_granted;
        self.calls_gathered += other.calls_gathered;
        self.later_parts_proposed += other.later_parts_proposed;
        self.leads_overruled += other.leads_overruled;
        self.stalled += other.stalled;
    }
}

/// Where a replica's taking of a live replica's state stands. One transfer at a time, as on a
/// node: a newer snapshot that comes while a state is on its way makes that state stale when it
/// arrives, and the replica asks again then.
#[derive(Debug)]
enum Taking {
    /// Not taking one.
    Idle,
    /// It asks a donor at this step.
    AskAt(u64),
    /// It asked replica `donor` (member `donor_id`) for a state at position `from` or later;
    /// the donor copies it, at its own point of the order then, and it arrives at step
    /// `arrives`, as a node's donor finishes a transfer between two entries at its end.
    InFlight { arrives: u64, donor: usize, donor_id: NodeId, from: u64 },
}

/// One request a replica executed, as the checks compare them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Executed {
    client: u64,
    request: RequestId,
    time_ms: u64,
    outcome: Outcome,
    /// Executed on a corrupted state (the simulation's knowledge): its outcome may be wrong.
    wrong: bool,
    /// LSA: executed leading a batch the order has not granted the acquisitions made (yet):
    /// if it never does, the replica takes a state, and the outcome was never answered.
    tentative: bool,
}

impl Executed {
    /// The same place of the order: the same request at the same time, and the same outcome
    /// unless either was executed on a corrupted state.
    fn agrees(&self, other: &Executed) -> bool {
        (self.client, self.request, self.time_ms) == (other.client, other.request, other.time_ms)
            && (self.wrong || other.wrong || self.tentative || other.tentative || self.outcome == other.outcome)
    }
}

struct Member {
    node: RaftNode<Order>,
    alive: bool,
    /// While crashed: the step it restarts at.
    restarts_at: Option<u64>,
    /// Its process's incarnation (its member id names it).
    incarnation: u32,
    /// The joins this replica heard, the latest per node (acted on while it leads).
    joins: std::collections::BTreeMap<u64, Join>,
    /// A restarted replica: it has become a voter again.
    rejoined: bool,
    leader: Option<NodeId>,
    /// Every request executed, in order.
    executed: Vec<Executed>,
    /// How far its clock is ahead of the simulation's, in milliseconds: the proposers' clocks
    /// disagree, and the order's time must still be one and never go back.
    clock_skew_ms: u64,
    /// Its calls, answered to the client numbered.
    calls: Calls<u64>,
    /// The service's state: the vault's balance.
    vault: i64,
    /// What it executes of what the group delivers, its digests of its outcomes, its judge of
    /// everyone's, and whether it answers (the node's code).
    course: Course,
    /// Where taking a live replica's state stands.
    taking: Taking,
    /// Digests to propose with its next batch.
    digests: Vec<Digest>,
    /// The simulation's knowledge, for the checks only (the replica cannot know it): its
    /// state was corrupted, or copied from a corrupted one, and it has not taken a good
    /// state since. Its outcomes may be wrong; the order it executes may not.
    corrupted: bool,
    /// LSA: acquisitions of batches it led, to propose with its next batch.
    leads: Vec<Lead>,
    /// LSA: keeps the lead of the acquisitions with a replica that serves (the node's code).
    claimant: Claimant,
    /// LSA: the order it took each batch it led in, by the batch's position, until granted.
    led: std::collections::BTreeMap<u64, Vec<usize>>,
}

impl Member {
    /// Node `node`'s replica in its `incarnation`-th process, in a group founded by `founders`:
    /// one of them, or a new member that asks to join the running group.
    fn start(seed: u64, node: u64, incarnation: u32, founders: Vec<NodeId>, run: OrderRun) -> Result<Member, String> {
        let id = member_id(node, incarnation);
        let mut config = ControlConfig::new(id, founders);
        config.election_jitter = ElectionJitter::Seeded(seed.wrapping_mul(31).wrapping_add(id.0));
        // Compacted often, so that a replica cut off for a while falls behind the log and is
        // brought back by a snapshot (re-integration) in many seeds; in every fourth seed
        // never, so that a restarted replica is given the whole log from its first entry.
        config.compact_every = if seed.is_multiple_of(4) { u64::MAX } else { COMPACT_EVERY };
        config.catch_up_entries = CATCH_UP_ENTRIES;
        config.membership = Membership::Dynamic;
        let order = match run.pacing {
            Pacing::Scheduled => Order::default(),
            Pacing::Loose => Order::loose(),
        };
        let node_raft = RaftNode::starting_from(config, Box::new(MemoryLog::default()), order)
            .map_err(|e| format!("replica {id} does not start: {e}"))?;
        let course = match incarnation {
            0 => Course::founder(id, &REPLICA_NODES, KEPT_FOR_TRANSFER),
            _ => Course::new_member(id, &REPLICA_NODES, KEPT_FOR_TRANSFER),
        };
        // Up to 63 ms (steps) apart: proposals reach the log out of their clocks' order.
        let clock_skew_ms = seed.wrapping_add(node).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
        Ok(Member {
            node: node_raft,
            alive: true,
            restarts_at: None,
            incarnation,
            joins: std::collections::BTreeMap::new(),
            rejoined: false,
            leader: None,
            executed: Vec::new(),
            clock_skew_ms,
            calls: Calls::new(usize::MAX),
            vault: 0,
            course: match run.pacing {
                Pacing::Scheduled => course,
                Pacing::Loose => course.loose(GRANTS_PER_PART),
            },
            taking: Taking::Idle,
            digests: Vec::new(),
            corrupted: false,
            leads: Vec::new(),
            claimant: Claimant::default(),
            led: std::collections::BTreeMap::new(),
        })
    }

    /// Whether it votes in the group, as it last applied the members.
    /// Whether it answers calls: its state follows the order and is proven (a node says it
    /// is unavailable otherwise).
    fn answers(&self) -> bool {
        self.course.standing() == Standing::Serving
    }

    fn is_voter(&self) -> bool {
        self.node.members().voters.contains(&self.node.id())
    }

    /// Whether it follows the order (it received the log or a snapshot of it, and its state is
    /// the order's at some point, proven if it took it from another replica): what it tells
    /// the leader when it asks to join, as a node does once its replica serves.
    fn follows_order(&self) -> bool {
        self.node.state().applied_index() > 0 && self.answers()
    }

    fn has_executed(&self, client: u64, request: RequestId) -> bool {
        self.executed.iter().any(|e| (e.client, e.request) == (client, request))
    }
}

/// The simulated service: deposits and withdrawals (`delta`, little endian) on one vault; a
/// withdrawal larger than the balance is refused. The reply is the new balance.
fn execute(vault: &mut i64, body: &[u8]) -> Outcome {
    let delta = i64::from_le_bytes(body.try_into().map_err(|_| "a request is 8 bytes".to_string())?);
    if *vault + delta < 0 {
        return Err(format!("the vault holds {}, short of {}", *vault, -delta));
    }
    *vault += delta;
    Ok(vault.to_le_bytes().to_vec())
}

/// An outcome as the voter compares it.
fn ballot(outcome: &Outcome) -> Vec<u8> {
    match outcome {
        Ok(reply) => [&[0u8][..], reply].concat(),
        Err(reason) => [&[1u8][..], reason.as_bytes()].concat(),
    }
}

struct InFlight {
    due: u64,
    /// The sender's and the receiver's member ids (their replicas' indexes are their nodes'):
    /// a message from or to an incarnation that is gone is lost, as its connection would be.
    from: NodeId,
    to: NodeId,
    payload: Payload,
}

/// What travels between replicas.
enum Payload {
    /// A Raft message of the group.
    Raft(Vec<u8>),
    /// A replica's request to belong to the group.
    Join(Join),
}

/// A replica's index among the members, from its member id.
fn index_of(member: NodeId) -> usize {
    node_of(member) as usize - 1
}

/// A replica's vote on its way to a client.
struct Reply {
    due: u64,
    client: u64,
    replica: u16,
    request: RequestId,
    outcome: Outcome,
}

/// A client's call in progress.
struct Pending {
    request: Request,
    /// When it last asked the replicas.
    asked_at: Option<u64>,
    vote: Vote,
    /// The replicas' outcomes, by replica.
    outcomes: Vec<Option<Outcome>>,
}

impl Pending {
    fn new(client: u64, number: u64, refused: u32, delta: i64) -> Pending {
        Pending {
            request: Request { client, number, refused, body: delta.to_le_bytes().to_vec() },
            asked_at: None,
            vote: Vote::new(ReplyMode::Majority, MEMBERS as u16, ReplicaId(0)).expect("3 replicas vote"),
            outcomes: vec![None; MEMBERS as usize],
        }
    }

    fn id(&self) -> RequestId {
        (self.request.number, self.request.refused)
    }
}

struct Client {
    /// Its last request answered.
    done: u64,
    pending: Option<Pending>,
}

struct Sim {
    seed: u64,
    rng: SmallRng,
    step: u64,
    members: Vec<Member>,
    network: Vec<InFlight>,
    replies: Vec<Reply>,
    clients: Vec<Client>,
    /// A replica cut off from the others, until a step.
    cut: Option<(u64, u64)>,
    /// [`Faults::TwoAtOnce`]: the replica cut off with a corruption, which takes a live
    /// replica's state when the cut heals, as one the log's compaction left behind.
    behind_after_cut: Option<usize>,
    /// Crashed members whose connections the others see close, at a step: the replicas then
    /// stand for election in turn if it led ([`RaftNode::on_leader_lost`], the node's code).
    closed: Vec<(u64, NodeId)>,
    stats: OrderStats,
    run: OrderRun,
    /// The oracle: each position's outcome as a good state executes it, in the order of the
    /// batch or the acquisitions the order granted. A corrupted state may heal (a withdrawal
    /// refused on it and taken on a good one), and a copy of it is marked corrupted all the
    /// same: what a client decides is checked against this.
    truth: Vec<Outcome>,
    /// The oracle's vault, after the positions it knows.
    truth_vault: i64,
    /// Dissents found (the dissenter and the window), and whether another replica reported it.
    dissents: std::collections::BTreeMap<(NodeId, u64), bool>,
}

/// Runs `seed` for `steps` steps of faults and a quiet period; a broken promise is a
/// [`Violation`] naming the seed and step.
pub fn run_order(seed: u64, steps: u64) -> Result<OrderStats, Violation> {
    run_order_with(seed, steps, OrderRun::default())
}

/// [`run_order`] as `run` says.
pub fn run_order_with(seed: u64, steps: u64, run: OrderRun) -> Result<OrderStats, Violation> {
    let mut sim = Sim::new(seed, run)?;
    for step in 0..steps + QUIET_STEPS {
        sim.step = step;
        sim.run_step(step < steps, step < steps + QUIET_STEPS / 2)?;
    }
    sim.finish()
}

impl Sim {
    fn new(seed: u64, run: OrderRun) -> Result<Sim, Violation> {
        let voters: Vec<NodeId> = (1..=MEMBERS).map(|node| member_id(node, 0)).collect();
        let mut members = Vec::new();
        for node in 1..=MEMBERS {
            members.push(Member::start(seed, node, 0, voters.clone(), run).map_err(|what| Violation {
                seed,
                step: 0,
                what,
            })?);
        }
        let clients = (0..CLIENTS).map(|_| Client { done: 0, pending: None }).collect();
        Ok(Sim {
            seed,
            rng: SmallRng::seed_from_u64(seed),
            step: 0,
            members,
            network: Vec::new(),
            replies: Vec::new(),
            clients,
            cut: None,
            behind_after_cut: None,
            closed: Vec::new(),
            stats: OrderStats::default(),
            run,
            truth: Vec::new(),
            truth_vault: 0,
            dissents: std::collections::BTreeMap::new(),
        })
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.run.trace {
            eprintln!("{:>6} {}", self.step, what());
        }
    }

    fn violation(&self, what: String) -> Violation {
        Violation { seed: self.seed, step: self.step as usize, what }
    }

    fn run_step(&mut self, faulty: bool, new_requests: bool) -> Result<(), Violation> {
        if faulty {
            self.inject_faults();
        }
        if self.cut.is_some_and(|(_, until)| self.step >= until) {
            self.cut = None;
        }
        if self.cut.is_none()
            && let Some(index) = self.behind_after_cut
        {
            self.fall_behind(index)?;
        }
        if self.step.is_multiple_of(TICK_STEPS) {
            for member in self.members.iter_mut().filter(|m| m.alive) {
                member.node.tick();
            }
            self.ask_to_join();
        }
        self.restart_crashed()?;
        self.see_connections_close();
        self.change_membership();
        // A corrupted replica is the one fault while nobody has found it: no message is lost
        // then either (a replica that fell behind could take the corrupted state, and one
        // replica of three cannot tell which of the other two is right; it stalls rather than
        // answer wrongly, see `dissent`).
        let lossy = faulty && !self.members.iter().any(|m| m.corrupted);
        self.deliver_messages(lossy)?;
        self.transfer_states()?;
        self.end_probations();
        self.deliver_replies()?;
        self.run_clients(new_requests);
        self.propose();
        for index in 0..self.members.len() {
            self.poll(index, faulty)?;
        }
        self.check_one_order()
    }

    fn inject_faults(&mut self) {
        // One fault at a time: no partition while a replica's state is wrong and not found yet
        // (a cut-off replica's digests would be missing from every vote, and one replica of
        // three cannot tell which of the other two is right), and no corruption while cut.
        let corrupted = self.members.iter().any(|m| m.corrupted);
        if self.cut.is_none() && !corrupted && self.rng.random_ratio(1, 1500) {
            let member = self.rng.random_range(0..MEMBERS);
            let until = self.step + self.rng.random_range(100..600);
            self.cut_off(member, until);
        }
        // One replica down or wrong at a time, and only once the group is settled again: three
        // voters of a configuration that is not joint (a restarted replica counts itself
        // rejoined only then), each answering, none far behind the others' log (one just
        // reconnected after a partition still answers until the leader's snapshot tells it it
        // fell behind; corrupting another then is two faults at once: seed 98).
        let newest = self.members.iter().map(|m| m.node.state().applied_index()).max().unwrap_or(0);
        let settled = self.members.iter().all(|m| {
            m.alive
                && m.is_voter()
                && !m.node.members().is_joint()
                && m.answers()
                && !m.corrupted
                && newest - m.node.state().applied_index() <= SETTLED_LAG
        });
        if settled && self.cut.is_none() && self.stats.corruptions < 2 && self.rng.random_ratio(1, 2500) {
            // A flipped bit in one replica's state: every outcome it computes from now on is
            // wrong, until it finds itself dissenting and takes a live replica's state.
            let index = self.rng.random_range(0..MEMBERS) as usize;
            let member = &mut self.members[index];
            member.vault += self.rng.random_range(1..=9) * if self.rng.random_bool(0.5) { 1 } else { -1 };
            member.corrupted = true;
            self.stats.corruptions += 1;
            self.trace(|| format!("corrupt replica {}: vault {}", index + 1, self.members[index].vault));
            if self.run.faults == Faults::TwoAtOnce {
                // And another replica falls behind meanwhile.
                let other = (index + self.rng.random_range(1..MEMBERS as usize)) % MEMBERS as usize;
                let until = self.step + self.rng.random_range(200..800);
                self.cut_off(other as u64, until);
                self.behind_after_cut = Some(other);
            }
            return;
        }
        if settled && self.stats.crashes < 2 && self.rng.random_ratio(1, 3000) {
            let member = self.rng.random_range(0..MEMBERS) as usize;
            self.members[member].alive = false;
            let seen_at = self.step + self.rng.random_range(1..4);
            self.closed.push((seen_at, self.members[member].node.id()));
            self.stats.leaders_crashed +=
                u64::from(self.members.iter().any(|m| m.alive && m.leader == Some(self.members[member].node.id())));
            self.members[member].restarts_at = Some(self.step + self.rng.random_range(200..1500));
            self.stats.crashes += 1;
            self.trace(|| format!("crash replica {} until {:?}", member + 1, self.members[member].restarts_at));
        }
    }

    /// Replica `member` (an index) is cut off from the others until step `until`.
    fn cut_off(&mut self, member: u64, until: u64) {
        self.cut = Some((member, until));
        self.stats.partitions += 1;
        self.trace(|| format!("cut replica {} off until {until}", member + 1));
    }

    /// The live replicas see a crashed member's connection close; those that knew it as the
    /// leader stand in turn.
    fn see_connections_close(&mut self) {
        let step = self.step;
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.closed).into_iter().partition(|(at, _)| *at <= step);
        self.closed = later;
        for (_, dead) in due {
            let alive: Vec<NodeId> = self.members.iter().filter(|m| m.alive).map(|m| m.node.id()).collect();
            for member in self.members.iter_mut().filter(|m| m.alive) {
                member.node.on_leader_lost(dead, |id| alive.contains(&id));
            }
        }
    }

    /// A crashed replica's node starts a new process: a new member that knows nothing and
    /// asks to join.
    fn restart_crashed(&mut self) -> Result<(), Violation> {
        for index in 0..self.members.len() {
            let member = &self.members[index];
            if member.alive || member.restarts_at.is_none_or(|at| at > self.step) {
                continue;
            }
            let incarnation = member.incarnation + 1;
            let founders = (1..=MEMBERS).map(|node| member_id(node, 0)).collect();
            let restarted = Member::start(self.seed, index as u64 + 1, incarnation, founders, self.run)
                .map_err(|what| self.violation(what))?;
            self.members[index] = restarted;
            self.stats.restarts += 1;
            self.trace(|| format!("restart replica {} as member {}", index + 1, self.members[index].node.id()));
        }
        Ok(())
    }

    /// Every replica that is not a voter yet asks the others to let it join, saying whether
    /// it follows the order yet; some of these are lost, as any message.
    fn ask_to_join(&mut self) {
        for index in 0..self.members.len() {
            let member = &self.members[index];
            if !member.alive || member.is_voter() {
                continue;
            }
            let join = Join { member: member.node.id(), ready: member.follows_order() };
            for to in 0..self.members.len() {
                if to != index {
                    let due = self.step + 1 + self.rng.random_range(0..4);
                    let to = self.members[to].node.id();
                    self.network.push(InFlight { due, from: join.member, to, payload: Payload::Join(join) });
                }
            }
        }
    }

    /// A leader with no change pending proposes the next one the joins it heard call for.
    fn change_membership(&mut self) {
        let replicas: Vec<u64> = (1..=MEMBERS).collect();
        for member in self.members.iter_mut().filter(|m| m.alive && m.node.is_leader()) {
            if member.node.has_pending_membership_change() {
                continue;
            }
            let joins: Vec<Join> = member.joins.values().copied().collect();
            if let Some(change) = membership::next_change(&member.node.members(), &joins, &replicas) {
                // Refused only if leadership moved on this very step; the next leader decides.
                let _ = member.node.propose_membership(change);
            }
        }
    }

    fn connected(&self, from: u64, to: u64) -> bool {
        let (a, b) = (&self.members[from as usize], &self.members[to as usize]);
        a.alive && b.alive && !self.cut.is_some_and(|(cut, _)| cut == from || cut == to)
    }

    /// Whether a message between these members arrives: both incarnations still running and
    /// connected.
    fn reaches(&self, from: NodeId, to: NodeId) -> bool {
        let (a, b) = (index_of(from), index_of(to));
        self.members[a].node.id() == from && self.members[b].node.id() == to && self.connected(a as u64, b as u64)
    }

    /// Hands every message due now to its replica, in an order of the seed's choosing.
    fn deliver_messages(&mut self, lossy: bool) -> Result<(), Violation> {
        let mut due = Vec::new();
        let mut index = 0;
        while index < self.network.len() {
            if self.network[index].due <= self.step {
                due.push(self.network.swap_remove(index));
            } else {
                index += 1;
            }
        }
        while !due.is_empty() {
            let message = due.swap_remove(self.rng.random_range(0..due.len()));
            if !self.reaches(message.from, message.to) || (lossy && self.rng.random_ratio(1, 30)) {
                self.stats.lost += 1;
                continue;
            }
            let to = index_of(message.to);
            let bytes = match message.payload {
                Payload::Join(join) => {
                    self.members[to].joins.insert(node_of(join.member), join);
                    continue;
                }
                Payload::Raft(bytes) => bytes,
            };
            let step = self.step;
            match self.members[to].node.step(&bytes) {
                // A proposal forwarded to a replica that no longer leads: the client proposes again.
                Err(error) if error.is_dropped_proposal() => self.stats.dropped_proposals += 1,
                Ok(()) => {}
                Err(error) => {
                    return Err(Violation {
                        seed: self.seed,
                        step: step as usize,
                        what: format!("replica {} refused a message of member {}: {error}", to + 1, message.from),
                    });
                }
            }
        }
        Ok(())
    }

    /// Hands every reply due now to its client's vote.
    fn deliver_replies(&mut self) -> Result<(), Violation> {
        let step = self.step;
        let (due, later): (Vec<Reply>, Vec<Reply>) =
            std::mem::take(&mut self.replies).into_iter().partition(|r| r.due <= step);
        self.replies = later;
        for reply in due {
            let Some(pending) = &mut self.clients[reply.client as usize].pending else { continue };
            if pending.id() != reply.request {
                continue;
            }
            match pending.vote.reply(ReplicaId(reply.replica), ballot(&reply.outcome)) {
                Ok(Verdict::Waiting) => pending.outcomes[usize::from(reply.replica)] = Some(reply.outcome),
                Ok(Verdict::Decided) => {
                    pending.outcomes[usize::from(reply.replica)] = Some(reply.outcome);
                    self.decided(reply.client)?;
                }
                Ok(Verdict::Undecidable) => {
                    return Err(self.violation(format!(
                        "the replicas' outcomes of request {:?} of client {} disagree so that none wins",
                        reply.request, reply.client
                    )));
                }
                // The same replica answering again (the client asked again): it must say the same.
                Err(nonstop_client::vote::VoteError::Twice { differs: false, .. }) => {}
                Err(error) => {
                    return Err(self.violation(format!(
                        "client {}'s vote on {:?} refused a reply: {error}",
                        reply.client, reply.request
                    )));
                }
            }
        }
        Ok(())
    }

    /// `client`'s vote decided: the outcome must be the one the replicas executed; a refusal
    /// leaves the number to the client's next request.
    fn decided(&mut self, client: u64) -> Result<(), Violation> {
        let pending = self.clients[client as usize].pending.take().expect("a call decided is pending");
        let decided = pending.vote.decided().expect("decided");
        let outcome =
            pending.outcomes.iter().flatten().find(|o| ballot(o) == decided).cloned().expect("a replica's outcome won");
        let position = self
            .members
            .iter()
            .find_map(|m| m.executed.iter().position(|e| (e.client, e.request) == (client, pending.id())));
        let truth = position.and_then(|position| self.truth.get(position));
        if truth != Some(&outcome) {
            return Err(self.violation(format!(
                "client {client} decided {outcome:?} for request {:?} at position {position:?}, which a good state \
                 executes as {truth:?}",
                pending.id(),
            )));
        }
        self.stats.decided += 1;
        match outcome {
            Ok(_) => self.clients[client as usize].done = pending.request.number,
            Err(_) => {
                self.stats.refusals += 1;
                // Its next request, under the same number: a deposit, which is never refused.
                let delta = self.rng.random_range(0..=3);
                let next = Pending::new(client, pending.request.number, pending.request.refused + 1, delta);
                self.clients[client as usize].pending = Some(next);
            }
        }
        Ok(())
    }

    /// Clients start requests, and ask every live replica (again, after a timeout, those that
    /// did not vote) until their vote decides.
    fn run_clients(&mut self, new_requests: bool) {
        for client in 0..CLIENTS {
            let state = &mut self.clients[client as usize];
            if state.pending.is_none() && new_requests && self.rng.random_ratio(1, 15) {
                let delta = self.rng.random_range(-6..=4);
                state.pending = Some(Pending::new(client, state.done + 1, 0, delta));
            }
            let Some(pending) = &self.clients[client as usize].pending else { continue };
            if pending.asked_at.is_some_and(|at| self.step < at + RETRY_STEPS) {
                continue;
            }
            let (request, id) = (pending.request.clone(), pending.id());
            let unvoted: Vec<usize> = (0..self.members.len()).filter(|&m| pending.outcomes[m].is_none()).collect();
            for member in unvoted {
                // A replica awaiting its state, or still to prove it, answers no call.
                if !self.members[member].alive || !self.members[member].answers() {
                    continue;
                }
                if !self.members[member].has_executed(client, id)
                    && self.members.iter().any(|m| m.has_executed(client, id))
                {
                    self.stats.retries_of_delivered += 1;
                }
                match self.members[member].calls.ask(request.clone(), client) {
                    Asked::Answer { outcome, duplicate } => {
                        self.stats.answered_from_memory += u64::from(duplicate);
                        self.reply(client, member, id, outcome);
                    }
                    Asked::Wait { .. } | Asked::Backlogged => {}
                }
            }
            if let Some(pending) = &mut self.clients[client as usize].pending {
                pending.asked_at = Some(self.step);
            }
        }
    }

    /// Replicas that know a leader propose what their calls left pending (a replica with none
    /// known keeps them, as a node does).
    fn propose(&mut self) {
        for member in 0..self.members.len() {
            if !self.members[member].alive || self.members[member].node.leader().is_none() {
                continue;
            }
            // As a node does: calls gather while the replica has requests of the order left to
            // execute (here: its batches wait for their acquisitions, or it awaits a state).
            let m = &self.members[member];
            let (delivered, executed) = (m.node.state().delivered(), m.course.position().unwrap_or(0));
            let mut requests = self.members[member].calls.take_due(delivered, executed, usize::MAX);
            self.stats.calls_gathered += u64::from(requests.is_empty() && self.members[member].calls.has_proposals());
            let mut digests = std::mem::take(&mut self.members[member].digests);
            let mut leads = std::mem::take(&mut self.members[member].leads);
            leads.extend(self.claim(member));
            self.stats.proposals += requests.len() as u64;
            self.stats.digests_proposed += digests.len() as u64;
            let time_ms = self.step + self.members[member].clock_skew_ms;
            // As many entries as the leads take, as a node proposes them.
            while !(requests.is_empty() && digests.is_empty() && leads.is_empty()) {
                let batch = Batch {
                    time_ms,
                    requests: std::mem::take(&mut requests),
                    digests: std::mem::take(&mut digests),
                    leads: next_leads(&mut leads),
                };
                // A proposal lost on the way (the leader changed) is proposed again when its
                // client asks again; a lost digest leaves its window undecided, and a later one
                // decides.
                let _ = self.members[member].node.propose(&batch);
            }
        }
    }

    /// LSA: replica `member`'s claim of the acquisitions' lead, or its handing over of the
    /// group's lead, as a node's replica decides it ([`Claimant`]).
    fn claim(&mut self, member: usize) -> Option<Lead> {
        let m = &mut self.members[member];
        let serving = m.answers();
        let voters = m.node.active_voters();
        let (me, leads) = (m.node.id(), m.node.is_leader());
        match m.claimant.decide(m.node.state(), me, leads, serving, &voters, self.step)? {
            Stewardship::Claim(claim) => {
                self.stats.claims += 1;
                Some(claim)
            }
            Stewardship::HandOver(to) => {
                self.stats.handovers += 1;
                m.node.transfer_leader(to);
                None
            }
        }
    }

    /// Replica `member`'s vote on `client`'s request `request`, on its way (or lost).
    fn reply(&mut self, client: u64, member: usize, request: RequestId, outcome: Outcome) {
        if self.rng.random_ratio(1, 3) {
            self.stats.replies_lost += 1;
            return;
        }
        let due = self.step + 1 + self.rng.random_range(0..4);
        self.replies.push(Reply { due, client, replica: member as u16, request, outcome });
    }

    /// Sends what replica `index` produced, and executes what it delivered.
    fn poll(&mut self, index: usize, faulty: bool) -> Result<(), Violation> {
        if !self.members[index].alive {
            return Ok(());
        }
        let output = match self.members[index].node.poll() {
            Ok(output) => output,
            Err(error) => return Err(self.violation(format!("replica {} failed to poll: {error}", index + 1))),
        };
        let leader = self.members[index].node.leader();
        if leader.is_some() && leader != self.members[index].leader {
            self.stats.leader_changes += 1;
            self.trace(|| format!("replica {} sees leader {:?}", index + 1, leader.map(|l| l.0)));
            // What it proposed to the old leader may be lost with it.
            self.members[index].calls.propose_waiting_again();
        }
        self.members[index].leader = leader;
        if output.members_changed {
            let members = self.members[index].node.members();
            let first = self.members.iter().enumerate().all(|(other, m)| other == index || m.node.members() != members);
            self.stats.membership_changes += u64::from(first);
            let member = &mut self.members[index];
            if member.incarnation > 0 && !member.rejoined && !members.is_joint() && member.is_voter() {
                // Counted by the member itself, once it sees itself a voter of a settled
                // configuration.
                member.rejoined = true;
                self.stats.rejoined += 1;
            }
        }
        let from = self.members[index].node.id();
        for (to, bytes) in output.messages {
            let copies = if faulty && self.rng.random_ratio(1, 50) { 2 } else { 1 };
            self.stats.duplicated += copies - 1;
            for _ in 0..copies {
                let due = self.step + 1 + self.rng.random_range(0..4);
                self.network.push(InFlight { due, from, to, payload: Payload::Raft(bytes.clone()) });
            }
        }
        if output.restored.is_some() {
            // It fell behind the leader's compacted log and took the order's state whole: in
            // active replication that is the moment of re-integration, when the service's state
            // is copied from a live replica; it arrives later ([`Sim::transfer_states`]). The
            // snapshot's position: where the first entry applied after it starts (the state
            // now also holds the entries applied in this same poll).
            let member = &mut self.members[index];
            let position = output.applied.first().map_or(member.node.state().delivered(), |delivered| delivered.first);
            member.course.restored(position, member.node.state().recent_digests());
            self.trace(|| format!("replica {} restored the order's snapshot at position {position}", index + 1));
            self.advance(index)?;
        }
        for delivered in output.applied {
            if let Err(error) = self.members[index].course.delivered(delivered) {
                return Err(self.violation(format!("replica {}'s feed: {error}", index + 1)));
            }
            if self.members[index].course.awaiting_from().is_some() {
                self.stats.entries_kept_for_transfer += 1;
            }
            self.advance(index)?;
        }
        Ok(())
    }

    /// [`Faults::TwoAtOnce`]: replica `index`, back from a cut, takes a live replica's state as
    /// if the log had been compacted past it (the log keeps a tail, so it seldom is): the
    /// order's state is its own, but its course asks for a state from where it stands.
    /// It does once it executed all the order delivered (under LSA a batch may await its
    /// acquisitions for a while), unless it crashed meanwhile.
    fn fall_behind(&mut self, index: usize) -> Result<(), Violation> {
        let member = &mut self.members[index];
        if !member.alive || member.course.awaiting_from().is_some() {
            self.behind_after_cut = None;
            return Ok(());
        }
        let from = member.node.state().delivered();
        if member.course.position() != Some(from) {
            return Ok(());
        }
        self.behind_after_cut = None;
        member.course.restored(from, member.node.state().recent_digests());
        self.trace(|| format!("replica {} falls behind at position {from}", index + 1));
        self.advance(index)
    }

    /// Replicas whose state transfer is due ask a live replica for its state, which arrives
    /// 1-30 ms later: the donor's executions up to its own point of the order then (at least
    /// the position asked for), the vault, and what they answered (but not who waits: that is
    /// the replica's own). With no donor reachable, or none far enough yet, it asks again
    /// later; a transfer whose donor died or fell behind on the way fails, and it asks again.
    fn transfer_states(&mut self) -> Result<(), Violation> {
        for index in 0..self.members.len() {
            if !self.members[index].alive {
                continue;
            }
            match self.members[index].taking {
                Taking::AskAt(due) if due <= self.step => self.ask_for_state(index),
                Taking::InFlight { arrives, donor, donor_id, from } if arrives <= self.step => {
                    self.members[index].taking = Taking::Idle;
                    self.state_arrives(index, donor, donor_id, from)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Replica `index` asks a connected donor that may donate for its state.
    fn ask_for_state(&mut self, index: usize) {
        let Some(from) = self.members[index].course.awaiting_from() else {
            self.members[index].taking = Taking::Idle;
            return;
        };
        let donor = (0..self.members.len()).find(|&d| {
            d != index && self.connected(d as u64, index as u64) && self.members[d].course.donation(from).is_ok()
        });
        self.members[index].taking = match donor {
            None => Taking::AskAt(self.step + 20),
            Some(donor) => {
                let (donor_id, arrives) = (self.members[donor].node.id(), self.step + self.rng.random_range(1..30));
                self.trace(|| format!("replica {} asks replica {} for a state from {from}", index + 1, donor + 1));
                Taking::InFlight { arrives, donor, donor_id, from }
            }
        };
    }

    /// Replica `donor` (member `donor_id`) finishes the transfer of its state at `from` or later
    /// into replica `index`: installed, or stale (a newer snapshot came meanwhile: the course
    /// asks again), or failed (the donor died, is cut off, or cannot donate now).
    fn state_arrives(&mut self, index: usize, donor: usize, donor_id: NodeId, from: u64) -> Result<(), Violation> {
        let giver = &self.members[donor];
        let reachable = giver.alive && giver.node.id() == donor_id && self.connected(donor as u64, index as u64);
        let Some(position) = giver.course.donation(from).ok().filter(|_| reachable) else {
            self.members[index].taking = Taking::AskAt(self.step);
            return Ok(());
        };
        let executed = giver.executed.clone();
        debug_assert_eq!(executed.len() as u64, position, "a donor's position is what it executed");
        let (vault, corrupted) = (giver.vault, giver.corrupted);
        let answered: Vec<_> =
            giver.calls.answered().map(|(client, remembered)| (client, remembered.clone())).collect();
        let member = &mut self.members[index];
        let log_end = member.node.state().delivered();
        match member.course.transferred(position, donor_id, self.step) {
            Ok(Taken::Installed) => {}
            Ok(Taken::Stale { .. }) => {
                self.stats.transfers_stale += 1;
                return self.advance(index);
            }
            Err(error) => return Err(self.violation(format!("replica {}'s transfer: {error}", index + 1))),
        }
        member.calls.restore(answered);
        if self.run.trace {
            eprintln!(
                "{:>6} replica {} installs replica {}'s state at {position} (log end {log_end}){}",
                self.step,
                index + 1,
                donor + 1,
                if corrupted { ", corrupted" } else { "" }
            );
        }
        self.stats.corruptions_copied += u64::from(corrupted);
        self.stats.corruptions_replaced += u64::from(member.corrupted && !corrupted);
        (member.executed, member.vault, member.corrupted) = (executed, vault, corrupted);
        // Batches it led and the order did not grant are the donor's now.
        member.led.clear();
        self.stats.state_transfers += 1;
        self.stats.transfers_ahead += u64::from(position > log_end);
        self.advance(index)
    }

    /// Replicas on probation for [`nonstop_active::dissent::PROBATION_MS`] with nothing to
    /// prove their state against are cleared unproven (unless refuted): the judge decides, on
    /// the simulation's clock.
    fn end_probations(&mut self) {
        for index in 0..self.members.len() {
            if !self.members[index].alive {
                continue;
            }
            self.members[index].course.tick(self.step);
            // Clearing a replica hands it nothing to execute.
            self.react(index);
        }
    }

    /// Replica `index` executes what its course hands out, and acts on what it decides.
    fn advance(&mut self, index: usize) -> Result<(), Violation> {
        loop {
            self.react(index);
            let Some(next) = self.members[index].course.next_entry() else { return Ok(()) };
            self.execute_entry(index, next)?;
        }
    }

    /// Replica `index` executes `delivered`, checking that it follows what it executed, in
    /// time and in each client's numbers, and answers who waits (under LSA, leading, once the
    /// order grants the batch).
    fn execute_entry(&mut self, index: usize, next: Next) -> Result<(), Violation> {
        let Next { entry: delivered, acquisitions } = next;
        if !delivered.turned_away.is_empty() {
            // Four clients never fill the order's memory of clients.
            return Err(self.violation(format!("the order turned away {:?}", delivered.turned_away)));
        }
        let first = self.members[index].executed.len() as u64;
        if delivered.first != first {
            return Err(self.violation(format!(
                "replica {} delivers entry {} from position {}, after {first} requests",
                index + 1,
                delivered.index,
                delivered.first
            )));
        }
        let latest = self.members[index].executed.last().map_or(0, |e| e.time_ms);
        if delivered.time_ms < latest {
            return Err(self.violation(format!(
                "replica {}'s order went back in time, from {latest} to {} ms",
                index + 1,
                delivered.time_ms
            )));
        }
        // The order the batch's requests take the vault in: theirs, or the grant leader's.
        let count = delivered.requests.len();
        let taken: Vec<usize> = match &acquisitions {
            Acquisitions::Scheduled => (0..count).collect(),
            Acquisitions::Lead => {
                self.stats.batches_led += 1;
                let mut order: Vec<usize> = (0..count).collect();
                for i in (1..count).rev() {
                    order.swap(i, self.rng.random_range(0..=i));
                }
                order
            }
            Acquisitions::Follow(granted) => {
                self.stats.batches_followed += 1;
                let order: Vec<usize> = granted.iter().map(|(_, thread)| usize::from(thread.0)).collect();
                let mut sorted = order.clone();
                sorted.sort_unstable();
                if sorted != (0..count).collect::<Vec<_>>() || granted.iter().any(|(mutex, _)| mutex.0 != 0) {
                    return Err(self.violation(format!(
                        "replica {} is given acquisitions {granted:?} for a batch of {count} requests at {}",
                        index + 1,
                        delivered.first
                    )));
                }
                order
            }
        };
        let leading = acquisitions == Acquisitions::Lead;
        if leading {
            self.members[index].led.insert(first, taken.clone());
        } else {
            self.learn_truth(first, &delivered.requests, &taken);
        }
        let mut outcomes: Vec<Option<Outcome>> = vec![None; count];
        for &at in &taken {
            outcomes[at] = Some(execute(&mut self.members[index].vault, &delivered.requests[at].body));
        }
        let mut held = Vec::new();
        for (request, outcome) in delivered.requests.into_iter().zip(outcomes) {
            let outcome = outcome.expect("every request of the batch took the vault");
            let (client, id) = (request.client, (request.number, request.refused));
            let last = self.members[index].executed.iter().rev().find(|e| e.client == client).map(|e| e.request);
            let follows = match last {
                None => id.0 == 1,
                Some((number, refused)) => id.0 == number + 1 || (id.0 == number && id.1 > refused),
            };
            if !follows {
                return Err(self.violation(format!(
                    "replica {} delivers request {id:?} of client {client} after its request {last:?}",
                    index + 1
                )));
            }
            if !self.members.iter().any(|m| m.has_executed(client, id)) {
                self.stats.delivered += 1;
            }
            let member = &mut self.members[index];
            member.executed.push(Executed {
                client,
                request: id,
                time_ms: delivered.time_ms,
                outcome: outcome.clone(),
                wrong: member.corrupted,
                tentative: leading,
            });
            member.course.executed(&outcome);
            match leading {
                true => held.push((request, outcome)),
                false => self.answer(index, &request, outcome),
            }
        }
        if leading {
            let made: Vec<Grant> = taken.iter().map(|&at| (MutexId(0), ThreadId(at as u16))).collect();
            self.members[index].course.led(made, held, self.step);
        }
        self.members[index].course.entry_executed();
        Ok(())
    }

    /// The oracle learns the outcomes of the batch at position `first`, its requests taken in
    /// order `taken` (the batch's, or the acquisitions the order granted), if it does not know
    /// them yet.
    fn learn_truth(&mut self, first: u64, requests: &[Request], taken: &[usize]) {
        if self.truth.len() as u64 != first {
            return;
        }
        let mut outcomes: Vec<Option<Outcome>> = vec![None; requests.len()];
        for &at in taken {
            outcomes[at] = Some(execute(&mut self.truth_vault, &requests[at].body));
        }
        self.truth.extend(outcomes.into_iter().flatten());
    }

    /// Replica `index` answers who waits for `request` with `outcome`.
    fn answer(&mut self, index: usize, request: &Request, outcome: Outcome) {
        let id = (request.number, request.refused);
        for waiter in self.members[index].calls.executed(request, outcome.clone()) {
            self.reply(waiter, index, id, outcome.clone());
        }
    }

    /// Replica `index` acts on what its course decided (the node logs each and counts it): it
    /// queues the digests to propose, and one that must take a live replica's state stops
    /// answering who waits, drops the digests it queued and awaits the state.
    fn react(&mut self, index: usize) {
        while let Some(event) = self.members[index].course.poll_event() {
            match &event {
                // Every batch's: too many to read.
                Event::ProposeLead(_) | Event::Granted { .. } => {}
                Event::Propose(digest) => self.trace(|| {
                    format!("replica {} digests window {} as {:02x?}", index + 1, digest.window, &digest.hash[..2])
                }),
                // The vaults, whether each is corrupted (the simulation's knowledge), and how far
                // each replica executed.
                _ => self.trace(|| {
                    let vaults: Vec<_> =
                        self.members.iter().map(|m| (m.vault, m.corrupted, m.executed.len())).collect();
                    format!("replica {}: {event:?}; vaults {vaults:?}", index + 1)
                }),
            }
            match event {
                Event::Propose(digest) => propose_later(&mut self.members[index].digests, digest),
                Event::NeedState { why, .. } => {
                    if let Behind::Dissented { window } = why {
                        self.stats.dissents_found += 1;
                        self.dissents.entry((self.members[index].node.id(), window)).or_insert(false);
                    }
                    self.stats.leads_overruled += u64::from(matches!(why, Behind::Overruled { .. }));
                    let due = self.step + self.rng.random_range(5..80);
                    let member = &mut self.members[index];
                    // One transfer at a time: one on its way is judged when it arrives.
                    if matches!(member.taking, Taking::Idle) {
                        member.taking = Taking::AskAt(due);
                    }
                    member.calls.drop_waiters();
                    keep_dissenting_digests(&mut member.digests, &why);
                    // The orphans it must still propose come as events after this one.
                    member.leads.clear();
                }
                Event::Reported(Dissent { dissenter, window, .. }) => {
                    self.stats.dissents_reported += 1;
                    self.dissents.insert((dissenter, window), true);
                }
                Event::ProposeLead(lead) => {
                    self.stats.later_parts_proposed += u64::from(matches!(lead, Lead::Grants { from: 1.., .. }));
                    self.members[index].leads.push(lead);
                }
                Event::Granted { batch, answers } => {
                    self.stats.batches_granted += 1;
                    if let Some(taken) = self.members[index].led.remove(&batch) {
                        let requests: Vec<Request> = answers.iter().map(|(request, _)| request.clone()).collect();
                        self.learn_truth(batch, &requests, &taken);
                    }
                    let executed = &mut self.members[index].executed;
                    let granted = batch as usize..batch as usize + answers.len();
                    for executed in executed.get_mut(granted).unwrap_or_default() {
                        executed.tentative = false;
                    }
                    for (request, outcome) in answers {
                        self.answer(index, &request, outcome);
                    }
                }
                Event::Probation(StateVerdict::Cleared { proof: Some(_) }) => self.stats.probations_cleared += 1,
                Event::Probation(StateVerdict::Cleared { proof: None }) => self.stats.probations_cleared_unproven += 1,
                Event::Probation(StateVerdict::Refuted { .. }) => self.stats.probations_refuted += 1,
            }
        }
    }

    fn check_one_order(&self) -> Result<(), Violation> {
        let longest = self.members.iter().map(|m| &m.executed).max_by_key(|e| e.len()).expect("members");
        for (index, member) in self.members.iter().enumerate() {
            if let Some(at) = member.executed.iter().zip(longest).position(|(a, b)| !a.agrees(b)) {
                return Err(self.violation(format!(
                    "replica {} executed {:?} at position {at} where another executed {:?}",
                    index + 1,
                    member.executed[at],
                    longest[at]
                )));
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<OrderStats, Violation> {
        self.stats.dissents_unreported = self.dissents.values().filter(|reported| !**reported).count() as u64;
        if self.run.faults == Faults::TwoAtOnce {
            // Two faults at once may stall the group for good; the safety checks held all along.
            self.stats.stalled += u64::from(self.clients.iter().any(|c| c.pending.is_some()));
            return Ok(self.stats);
        }
        if let Some((client, state)) = self.clients.iter().enumerate().find(|(_, c)| c.pending.is_some()) {
            let id = state.pending.as_ref().map(Pending::id);
            let replicas: Vec<String> = self
                .members
                .iter()
                .map(|m| {
                    format!(
                        "{} alive {} {:?} taking {:?} awaiting {:?} executed {} order leader {:?} grant leader {:?}",
                        m.node.id().0,
                        m.alive,
                        m.course.standing(),
                        m.taking,
                        m.course.awaiting_from(),
                        m.executed.len(),
                        m.node.leader().map(|l| l.0),
                        m.node.state().grant_leader().map(|l| l.0),
                    )
                })
                .collect();
            return Err(self.violation(format!(
                "after the quiet period, request {id:?} of client {client} is still not answered; replicas: {}",
                replicas.join("; ")
            )));
        }
        let live: Vec<&Member> = self.members.iter().filter(|m| m.alive).collect();
        let Some(leader) = live.iter().find(|m| m.node.is_leader()) else {
            return Err(self.violation("after the quiet period no replica leads the order".into()));
        };
        {
            let members = leader.node.members();
            let settled =
                !members.is_joint() && members.learners.is_empty() && members.voters.len() == MEMBERS as usize;
            // Every replica sees the same members, itself among the voters.
            let apart = live.iter().any(|m| !members.voters.contains(&m.node.id()) || m.node.members() != members);
            if !settled || apart {
                return Err(self.violation(format!(
                    "after the quiet period the leader's members are {members:?}, live replicas' {:?}",
                    live.iter()
                        .map(|m| {
                            (
                                m.node.id(),
                                m.node.members(),
                                m.course.standing(),
                                m.course.awaiting_from(),
                                m.executed.len(),
                                m.node.state().applied_index(),
                                &m.taking,
                            )
                        })
                        .collect::<Vec<_>>()
                )));
            }
        }
        if let Some(behind) = live.iter().position(|m| m.executed.len() != live[0].executed.len()) {
            return Err(self.violation(format!(
                "after the quiet period, live replicas executed {} and {} requests",
                live[0].executed.len(),
                live[behind].executed.len()
            )));
        }
        if let Some(leader) = live.iter().find(|m| m.executed.iter().any(|e| e.tentative)) {
            return Err(self.violation(format!(
                "after the quiet period replica {} still holds batches the order never granted it",
                leader.node.id()
            )));
        }
        if let Some(corrupted) = live.iter().find(|m| m.corrupted || m.executed.iter().any(|e| e.wrong)) {
            return Err(self.violation(format!(
                "after the quiet period replica {} still holds a corrupted state: nobody found it dissenting",
                corrupted.node.id()
            )));
        }
        if let Some(other) = live.iter().find(|m| m.vault != live[0].vault) {
            return Err(self.violation(format!("live replicas' vaults hold {} and {}", live[0].vault, other.vault)));
        }
        Ok(self.stats)
    }
}
