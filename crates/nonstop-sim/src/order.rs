//! A deterministic simulation of active replication's total order: three replicas running the
//! real Raft group ([`RaftNode`] of [`Order`], the code a node drives), and clients that number
//! their requests, propose each to any replica and propose it again, to another one, until a
//! reply reaches them (half the replies are lost; a replica that delivered the request answers
//! a retry itself) — under lost, duplicated, delayed and reordered messages, partitions that cut one
//! replica off for a while, and one replica crashing for good (the group's log lives in memory,
//! so a crashed replica comes back only as a new member, by re-integration). One step is 1 ms
//! of virtual time; the same seed gives the same run.
//!
//! After every step it checks what the order promises the replicas that execute it:
//! * **one order**: of any two replicas' delivered sequences, one is a prefix of the other
//!   (a crashed replica's included);
//! * **each request once, in its client's order**: a replica delivers request `n` of a client
//!   only right after its request `n - 1`;
//! * **one time**: every replica executes each request at the same order time (the prefix
//!   check compares it too), and a replica's order time never goes back, though the replicas
//!   that propose have clocks up to 63 ms apart.
//!
//! A replica that falls behind the leader's compacted log receives the order's state whole
//! (a Raft snapshot); that is when an active replica is re-integrated by copying a live
//! replica's state, and the simulation copies the requests delivered up to that point.
//!
//! The run ends with a quiet period (no new faults, partitions healed): by its end every request
//! a client sent has been delivered, and every live replica has delivered the same sequence.

use crate::Violation;
use nonstop_active::order::{Batch, Order, Request};
use nonstop_control::cluster::NodeId;
use nonstop_control::log::MemoryLog;
use nonstop_control::{ControlConfig, ElectionJitter, RaftNode};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const MEMBERS: u64 = 3;
const CLIENTS: u64 = 4;
/// Steps between Raft ticks (10 ms, as nodes tick the control plane).
const TICK_STEPS: u64 = 10;
/// Steps a client waits for its request to be delivered before proposing it again.
const RETRY_STEPS: u64 = 60;
/// Entries applied between compactions of the group's log.
const COMPACT_EVERY: u64 = 48;
/// The quiet period at the end of a run; clients start no request in its second half.
const QUIET_STEPS: u64 = 3000;

/// What a run did, for coverage: a simulation that injects no fault proves nothing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OrderStats {
    /// Requests delivered, counted once per request (at the first replica to deliver it).
    pub delivered: u64,
    /// Proposals made by clients, retries included.
    pub proposals: u64,
    /// Forwarded proposals dropped by a replica that no longer led.
    pub dropped_proposals: u64,
    /// Proposals of a request some replica had delivered already (answered by the order's
    /// deduplication).
    pub retries_of_delivered: u64,
    /// Messages lost, or cut by a partition or a crash.
    pub lost: u64,
    /// Messages delivered twice.
    pub duplicated: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Replicas crashed.
    pub crashes: u64,
    /// Times a replica saw a new leader.
    pub leader_changes: u64,
    /// Replicas brought up to date by the leader's snapshot of the order (re-integration).
    pub state_transfers: u64,
}

impl std::ops::AddAssign for OrderStats {
    fn add_assign(&mut self, other: OrderStats) {
        self.delivered += other.delivered;
        self.proposals += other.proposals;
        self.dropped_proposals += other.dropped_proposals;
        self.retries_of_delivered += other.retries_of_delivered;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.partitions += other.partitions;
        self.crashes += other.crashes;
        self.leader_changes += other.leader_changes;
        self.state_transfers += other.state_transfers;
    }
}

struct Member {
    node: RaftNode<Order>,
    alive: bool,
    leader: Option<NodeId>,
    /// (client, number, the order's time) of every request delivered, in order.
    delivered: Vec<(u64, u64, u64)>,
    /// How far its clock is ahead of the simulation's, in milliseconds: the proposers' clocks
    /// disagree, and the order's time must still be one and never go back.
    clock_skew_ms: u64,
}

impl Member {
    fn has_delivered(&self, client: u64, number: u64) -> bool {
        self.delivered.iter().any(|&(c, n, _)| (c, n) == (client, number))
    }
}

struct InFlight {
    due: u64,
    from: u64,
    to: u64,
    bytes: Vec<u8>,
}

/// A client's request in progress: its number, and when it was last proposed.
struct Pending {
    number: u64,
    proposed_at: Option<u64>,
}

struct Client {
    /// Its last request delivered (by any replica).
    done: u64,
    pending: Option<Pending>,
}

struct Sim {
    seed: u64,
    rng: SmallRng,
    step: u64,
    members: Vec<Member>,
    network: Vec<InFlight>,
    clients: Vec<Client>,
    /// A replica cut off from the others, until a step.
    cut: Option<(u64, u64)>,
    stats: OrderStats,
}

/// Runs `seed` for `steps` steps of faults and a quiet period; a broken promise is a
/// [`Violation`] naming the seed and step.
pub fn run_order(seed: u64, steps: u64) -> Result<OrderStats, Violation> {
    let mut sim = Sim::new(seed)?;
    for step in 0..steps + QUIET_STEPS {
        sim.step = step;
        sim.run_step(step < steps, step < steps + QUIET_STEPS / 2)?;
    }
    sim.finish()
}

impl Sim {
    fn new(seed: u64) -> Result<Sim, Violation> {
        let voters: Vec<NodeId> = (1..=MEMBERS).map(NodeId).collect();
        let mut members = Vec::new();
        for id in 1..=MEMBERS {
            let mut config = ControlConfig::new(NodeId(id), voters.clone());
            config.election_jitter = ElectionJitter::Seeded(seed.wrapping_mul(31).wrapping_add(id));
            // Compacted often, so that a replica cut off for a while falls behind the log and
            // is brought back by a snapshot (re-integration) in many seeds.
            config.compact_every = COMPACT_EVERY;
            let node = RaftNode::new(config, Box::new(MemoryLog::default())).map_err(|e| Violation {
                seed,
                step: 0,
                what: format!("replica {id} does not start: {e}"),
            })?;
            // Up to 63 ms (steps) apart: proposals reach the log out of their clocks' order.
            let clock_skew_ms = seed.wrapping_add(id).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
            members.push(Member { node, alive: true, leader: None, delivered: Vec::new(), clock_skew_ms });
        }
        let clients = (0..CLIENTS).map(|_| Client { done: 0, pending: None }).collect();
        Ok(Sim {
            seed,
            rng: SmallRng::seed_from_u64(seed),
            step: 0,
            members,
            network: Vec::new(),
            clients,
            cut: None,
            stats: OrderStats::default(),
        })
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
        if self.step.is_multiple_of(TICK_STEPS) {
            for member in self.members.iter_mut().filter(|m| m.alive) {
                member.node.tick();
            }
        }
        self.deliver_messages(faulty)?;
        self.run_clients(new_requests);
        for index in 0..self.members.len() {
            self.poll(index, faulty)?;
        }
        self.check_one_order()
    }

    fn inject_faults(&mut self) {
        if self.cut.is_none() && self.rng.random_ratio(1, 1500) {
            let member = self.rng.random_range(0..MEMBERS);
            self.cut = Some((member, self.step + self.rng.random_range(100..600)));
            self.stats.partitions += 1;
        }
        if self.stats.crashes == 0 && self.rng.random_ratio(1, 4000) {
            let member = self.rng.random_range(0..MEMBERS) as usize;
            self.members[member].alive = false;
            self.stats.crashes += 1;
        }
    }

    fn connected(&self, from: u64, to: u64) -> bool {
        let (a, b) = (&self.members[from as usize], &self.members[to as usize]);
        a.alive && b.alive && !self.cut.is_some_and(|(cut, _)| cut == from || cut == to)
    }

    /// Hands every message due now to its replica, in an order of the seed's choosing.
    fn deliver_messages(&mut self, faulty: bool) -> Result<(), Violation> {
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
            if !self.connected(message.from, message.to) || (faulty && self.rng.random_ratio(1, 30)) {
                self.stats.lost += 1;
                continue;
            }
            let step = self.step;
            match self.members[message.to as usize].node.step(&message.bytes) {
                // A proposal forwarded to a replica that no longer leads: the client proposes again.
                Err(error) if error.is_dropped_proposal() => self.stats.dropped_proposals += 1,
                Ok(()) => {}
                Err(error) => {
                    return Err(Violation {
                        seed: self.seed,
                        step: step as usize,
                        what: format!(
                            "replica {} refused a message of replica {}: {error}",
                            message.to + 1,
                            message.from + 1
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Clients start requests, and propose each (again) to a live replica until delivered.
    fn run_clients(&mut self, new_requests: bool) {
        for client in 0..CLIENTS {
            let state = &mut self.clients[client as usize];
            if state.pending.is_none() && new_requests && self.rng.random_ratio(1, 15) {
                state.pending = Some(Pending { number: state.done + 1, proposed_at: None });
            }
            let Some(pending) = &self.clients[client as usize].pending else { continue };
            if pending.proposed_at.is_some_and(|at| self.step < at + RETRY_STEPS) {
                continue;
            }
            let number = pending.number;
            let live: Vec<usize> = (0..self.members.len()).filter(|&m| self.members[m].alive).collect();
            let member = live[self.rng.random_range(0..live.len())];
            if self.members[member].has_delivered(client, number) {
                // A replica that executed it answers again from what it remembers.
                self.answered(client, number);
                continue;
            }
            if self.members.iter().any(|m| m.has_delivered(client, number)) {
                // Delivered elsewhere, its reply lost: the order must not deliver it again.
                self.stats.retries_of_delivered += 1;
            }
            let body = (client * 1_000_000 + number).to_le_bytes().to_vec();
            // With no leader known the proposal is dropped; the client proposes again later.
            let time_ms = self.step + self.members[member].clock_skew_ms;
            let batch = Batch { time_ms, requests: vec![Request { client, number, refused: 0, body }] };
            let _ = self.members[member].node.propose(&batch);
            self.stats.proposals += 1;
            if let Some(pending) = &mut self.clients[client as usize].pending {
                pending.proposed_at = Some(self.step);
            }
        }
    }

    /// Sends what replica `index` produced and records what it delivered.
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
        }
        self.members[index].leader = leader;
        for (to, bytes) in output.messages {
            let copies = if faulty && self.rng.random_ratio(1, 50) { 2 } else { 1 };
            self.stats.duplicated += copies - 1;
            for _ in 0..copies {
                let due = self.step + 1 + self.rng.random_range(0..4);
                self.network.push(InFlight { due, from: index as u64, to: to.0 - 1, bytes: bytes.clone() });
            }
        }
        if output.restored.is_some() {
            // It fell behind the leader's compacted log and took the order's state whole: in
            // active replication that is the moment of re-integration, when the service's state
            // is copied from a replica at the same point. Modelled by copying the requests.
            // The snapshot's position: where the first entry applied after it starts (the state
            // now also holds the entries applied in this same poll).
            let position = output
                .applied
                .first()
                .map_or(self.members[index].node.state().delivered(), |delivered| delivered.first)
                as usize;
            let source = self.members.iter().map(|m| &m.delivered).find(|d| d.len() >= position).ok_or_else(|| {
                self.violation(format!("replica {} restored {position} requests no replica delivered", index + 1))
            })?;
            let transferred = source[..position].to_vec();
            self.members[index].delivered = transferred;
            self.stats.state_transfers += 1;
        }
        for delivered in output.applied {
            let first = self.members[index].delivered.len() as u64;
            if delivered.first != first {
                return Err(self.violation(format!(
                    "replica {} delivers entry {} from position {}, after {first} requests",
                    index + 1,
                    delivered.index,
                    delivered.first
                )));
            }
            let latest = self.members[index].delivered.last().map_or(0, |&(_, _, time)| time);
            if delivered.time_ms < latest {
                return Err(self.violation(format!(
                    "replica {}'s order went back in time, from {latest} to {} ms",
                    index + 1,
                    delivered.time_ms
                )));
            }
            for request in delivered.requests {
                let (client, number) = (request.client, request.number);
                let last =
                    self.members[index].delivered.iter().rev().find(|(c, ..)| *c == client).map_or(0, |&(_, n, _)| n);
                if number != last + 1 {
                    return Err(self.violation(format!(
                        "replica {} delivers request {number} of client {client} after its request {last}",
                        index + 1
                    )));
                }
                if !self.members.iter().any(|m| m.has_delivered(client, number)) {
                    self.stats.delivered += 1;
                }
                self.members[index].delivered.push((client, number, delivered.time_ms));
                // The replica's reply reaches the client, or is lost on the way.
                if self.rng.random_ratio(1, 2) {
                    self.answered(client, number);
                }
            }
        }
        Ok(())
    }

    /// `client` has the reply to its request `number`.
    fn answered(&mut self, client: u64, number: u64) {
        let state = &mut self.clients[client as usize];
        if state.pending.as_ref().is_some_and(|p| p.number == number) {
            state.done = number;
            state.pending = None;
        }
    }

    fn check_one_order(&self) -> Result<(), Violation> {
        let longest = self.members.iter().map(|m| &m.delivered).max_by_key(|d| d.len()).expect("members");
        for (index, member) in self.members.iter().enumerate() {
            if !longest.starts_with(&member.delivered) {
                let at = member.delivered.iter().zip(longest).position(|(a, b)| a != b).unwrap_or(0);
                return Err(self.violation(format!(
                    "replica {} delivered {:?} at position {at} where another delivered {:?}",
                    index + 1,
                    member.delivered[at],
                    longest[at]
                )));
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<OrderStats, Violation> {
        if let Some((client, state)) = self.clients.iter().enumerate().find(|(_, c)| c.pending.is_some()) {
            let number = state.pending.as_ref().map_or(0, |p| p.number);
            return Err(self.violation(format!(
                "after the quiet period, request {number} of client {client} is still not delivered"
            )));
        }
        let live: Vec<&Member> = self.members.iter().filter(|m| m.alive).collect();
        if let Some(behind) = live.iter().position(|m| m.delivered.len() != live[0].delivered.len()) {
            return Err(self.violation(format!(
                "after the quiet period, live replicas delivered {} and {} requests",
                live[0].delivered.len(),
                live[behind].delivered.len()
            )));
        }
        Ok(self.stats)
    }
}
