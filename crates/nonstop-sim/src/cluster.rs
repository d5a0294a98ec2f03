//! A deterministic simulation of failover: nodes running the real control plane
//! ([`ControlNode`] on raft-rs, [`Coordinator`], the `ClusterState` rules), the real role
//! machine of every node ([`ServiceRole`], the very code the node agent drives) and the real
//! output-commit bookkeeping ([`Replication`] with a required set, a protection gate and
//! leases), under crashes with restarts, double failures inside a promotion or a
//! re-protection, partitions, pauses longer than the failure timeout, switchovers, and lost,
//! delayed and reordered control messages — all from one seed, in virtual time (one step =
//! 1 ms).
//!
//! Each seed runs one of three services ([`Scenario::for_seed`]): one backup on three nodes
//! (a failover runs degraded until a spare is re-protected); two backups with `min_backups = 1`
//! on three holders and two witnesses; and two backups with `min_backups = 2`. Crashes are
//! budgeted as the promise is stated: at most k failures are in flight at once, counted from
//! the last time the record named all k backups; within that budget two crashes come at any
//! distance apart, the second one often aimed at the node just promoted.
//!
//! This module is the driver the agent is elsewhere: it carries out the role machine's actions
//! on a data plane modelled above the bytes (the byte-level atomic apply has its own
//! simulation, [`crate::run_seed`]). A checkpoint carries the list of transactions committed so
//! far in the primary's lineage; a standby holds the list of its last whole checkpoint, follows
//! one term at a time and refuses older terms, as `Backup` does. Attaching a spare by pre-copy
//! forgets its image at once (the real backup does at the first round); a rebase keeps it until
//! the first checkpoint arrives whole.
//!
//! After every step it checks:
//! * **no acknowledged commit is lost**: a primary that releases output holds every transaction
//!   released before, by it or any predecessor, and no released transaction ever has all its
//!   holders crashed (the budget makes that a bug, not bad luck);
//! * **one releaser at a time**: no node releases output for a term older than a term whose output
//!   was already released (a deposed primary never releases after its successor);
//! * **one primary per term**: every node that applied a term names the same primary;
//! * **a lone crash is over quickly**: after one node of a calm, fully protected service
//!   crashes (the others able to release without it), output is released again within
//!   `OUTAGE_LIMIT_MS` unless another fault or a lost control message comes first. Waiting
//!   out a failure timeout or an election timeout (200 ms) fails it; so a slow path of failover
//!   is a failing seed, as a lost commit is.
//!
//! Every node's log write takes a sync before what depends on it leaves (votes, append
//! answers), usually within the step and now and then tens of milliseconds, as `fdatasync`
//! on a busy disk does; a leader's appends leave before its own sync, as the agent sends them.
//!
//! The run ends with a quiet second: every node back, no faults. The service must release
//! again by then; a record stuck without a promotable holder fails the seed.

use nonstop_control::cluster::{Command, NodeId};
use nonstop_control::coordinator::{Coordinator, Decision, Report};
use nonstop_control::log::MemoryLog;
use nonstop_control::role::{Action, AttachPayload, Observed, RoleConfig, ServeFrom, ServiceRole};
use nonstop_control::{ControlConfig, ControlNode, ElectionJitter, ServiceRecord};
use nonstop_proto::primary::{BackupId, Replication};
use nonstop_proto::{CheckpointId, CommitPolicy, Nanos, Term};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

use crate::Violation;

const SERVICE: &str = "bank";
const TICK_MS: u64 = 10;
const TIMEOUT_MS: u64 = 200;
const LEASE_MS: u64 = 400;
const SWITCHOVER_LIMIT_MS: u64 = 1000;
const MS: u64 = 1_000_000;
/// The run's last steps are free of faults: the service must serve again.
const QUIET_MS: u64 = 1500;
/// How long output may stop after a lone crash (see the module's checks): the longest of the
/// 2,198 in seeds 0..10,000 was 102 ms (slow syncs in a row), and a failure or an election
/// timeout is 200 ms or more.
const OUTAGE_LIMIT_MS: u64 = 150;

/// The service a seed runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Backups wanted (k).
    pub backups: u8,
    /// Output needs this many backups in the record.
    pub min_backups: u8,
    /// Nodes that hold regions.
    pub holders: u64,
    /// Nodes that only vote.
    pub witnesses: u64,
}

impl Scenario {
    /// Seeds cycle through k = 1 (`min_backups` 0, three nodes), k = 2 with `min_backups` 1
    /// and k = 2 with `min_backups` 2 (three holders and two witnesses, so that the control
    /// plane keeps a majority through two failures).
    pub fn for_seed(seed: u64) -> Scenario {
        match seed % 3 {
            0 => Scenario { backups: 1, min_backups: 0, holders: 3, witnesses: 0 },
            1 => Scenario { backups: 2, min_backups: 1, holders: 3, witnesses: 2 },
            _ => Scenario { backups: 2, min_backups: 2, holders: 3, witnesses: 2 },
        }
    }

    fn nodes(&self) -> u64 {
        self.holders + self.witnesses
    }

    fn is_witness(&self, id: u64) -> bool {
        id > self.holders
    }
}

/// What a cluster run did, for coverage.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClusterStats {
    /// Promotions committed.
    pub promotions: u64,
    /// Promotions of a holder the previous promotion kept (the second of two failures).
    pub kept_holder_promotions: u64,
    /// Transactions whose output was released.
    pub released: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Crashes while another failure was in flight.
    pub double_failures: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Pauses started.
    pub pauses: u64,
    /// Switchovers asked for.
    pub switchovers: u64,
    /// Attaches of spares by pre-copy.
    pub precopies: u64,
    /// Attaches that rebased a kept holder.
    pub rebases: u64,
    /// Runs that went beyond k failures in flight.
    pub beyond_budget: u64,
    /// Released transactions lost with every holder, in runs beyond the budget.
    pub lost_beyond_budget: u64,
    /// Lone crashes of a fully protected service after which the time to the next release was
    /// measured (no other fault and no lost control message came before it).
    pub lone_crashes: u64,
    /// The longest of those times, in virtual milliseconds.
    pub longest_outage_ms: u64,
}

impl std::ops::AddAssign for ClusterStats {
    fn add_assign(&mut self, other: ClusterStats) {
        self.promotions += other.promotions;
        self.kept_holder_promotions += other.kept_holder_promotions;
        self.released += other.released;
        self.crashes += other.crashes;
        self.double_failures += other.double_failures;
        self.partitions += other.partitions;
        self.pauses += other.pauses;
        self.switchovers += other.switchovers;
        self.precopies += other.precopies;
        self.rebases += other.rebases;
        self.beyond_budget += other.beyond_budget;
        self.lost_beyond_budget += other.lost_beyond_budget;
        self.lone_crashes += other.lone_crashes;
        self.longest_outage_ms = self.longest_outage_ms.max(other.longest_outage_ms);
    }
}

enum Msg {
    Raft(Vec<u8>),
    Report(Report),
    /// Primary to backup: attach in `term` on link `link`.
    Attach {
        term: Term,
        link: u64,
        payload: AttachPayload,
    },
    /// Primary to backup: checkpoint `n` of `term` with the transactions committed up to it.
    Checkpoint {
        term: Term,
        link: u64,
        checkpoint: CheckpointId,
        txs: Vec<u64>,
    },
    /// Backup to primary.
    Ack {
        term: Term,
        link: u64,
        checkpoint: CheckpointId,
    },
    /// Either way: the link is gone.
    Reset {
        link: u64,
    },
}

/// A lone crash whose outage is being timed: the node, and when it crashed.
#[derive(Clone, Copy, Debug)]
struct Outage {
    node: u64,
    at: u64,
}

struct Envelope {
    at: u64,
    from: u64,
    to: u64,
    msg: Msg,
}

struct Link {
    node: u64,
    id: BackupId,
    up: bool,
    acked: Option<CheckpointId>,
    stage: LinkStage,
}

/// How far an attach has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkStage {
    /// Pre-copy rounds run until then (ms); nothing of the checkpoint stream goes out.
    PreCopying { until: u64 },
    /// Registered with the replication state machine: the next checkpoint completes the image.
    Following,
    /// The first checkpoint was acknowledged: the attach finished.
    Attached,
}

impl Link {
    fn following(&self) -> bool {
        matches!(self.stage, LinkStage::Following | LinkStage::Attached)
    }

    fn attached(&self) -> bool {
        self.stage == LinkStage::Attached
    }
}

/// A primary's data plane.
struct Serving {
    term: Term,
    replication: Replication,
    txs: Vec<u64>,
    /// Transactions included up to each cut checkpoint.
    cuts: BTreeMap<CheckpointId, usize>,
    links: BTreeMap<u64, Link>,
    /// The nodes output waits for, as the role machine last set them.
    required: BTreeSet<u64>,
    released_upto: usize,
    /// A switchover refuses new requests.
    draining: bool,
}

#[derive(Default)]
struct Standby {
    /// The term and link followed now, and the primary.
    following: Option<(Term, u64, u64)>,
    /// Newest term attached.
    term: Option<Term>,
    held: Option<(Term, CheckpointId, Vec<u64>)>,
}

/// A data plane's facts for [`Observed`].
#[derive(Default)]
struct Facts {
    standby_held: Option<(Term, CheckpointId)>,
    primary_held: Option<CheckpointId>,
    links: BTreeMap<NodeId, Option<CheckpointId>>,
}

enum Data {
    Nothing,
    Standby(Standby),
    Serving(Box<Serving>),
}

struct Node {
    control: ControlNode,
    coordinator: Coordinator,
    role: ServiceRole,
    data: Data,
    tick_phase: u64,
    was_leader: bool,
    last_create: Option<u64>,
}

struct Sim {
    scenario: Scenario,
    steps: u64,
    rng: SmallRng,
    now: u64,
    nodes: BTreeMap<u64, Option<Node>>,
    disks: BTreeMap<u64, MemoryLog>,
    down_until: BTreeMap<u64, u64>,
    paused_until: BTreeMap<u64, u64>,
    cut: BTreeSet<(u64, u64)>,
    heal_at: u64,
    queue: Vec<Envelope>,
    next_link: u64,
    next_tx: u64,
    /// Released transactions.
    released: Vec<u64>,
    last_release: u64,
    newest_release_term: Term,
    primaries: BTreeMap<Term, u64>,
    /// Failures (crashes, partitions, pauses of holders) since the record last named every
    /// wanted backup with every node up and connected.
    failures_in_flight: u64,
    /// The run went beyond k failures in flight at some point.
    beyond_budget: bool,
    /// A switchover was asked for and neither committed nor abandoned yet.
    switchover_asked: bool,
    /// The holders the newest record keeps catching up, as of the last step.
    catching_up: BTreeSet<u64>,
    /// A crash aimed at a node just promoted: (node, when).
    aimed: Option<(u64, u64)>,
    /// The lone crash whose outage is timed until output is released again, if one is.
    outage: Option<Outage>,
    stats: ClusterStats,
    seed: u64,
    violation: Option<String>,
    tracing: bool,
}

impl Sim {
    fn voters(&self) -> Vec<NodeId> {
        (1..=self.scenario.nodes()).map(NodeId).collect()
    }

    fn start_node(&mut self, id: u64) {
        let voters = self.voters();
        let witnesses: Vec<NodeId> = voters.iter().copied().filter(|v| self.scenario.is_witness(v.0)).collect();
        let config = ControlConfig {
            id: NodeId(id),
            voters: voters.clone(),
            election_ticks: (TIMEOUT_MS / TICK_MS) as usize,
            heartbeat_ticks: 2,
            // As in production: a random election timeout, here drawn from the seed.
            election_jitter: ElectionJitter::Seeded(self.rng.random()),
            compact_every: 64,
            // A short tail: a node cut off or paused for a while still takes a snapshot.
            catch_up_entries: 8,
            membership: nonstop_control::Membership::Static,
        };
        let control = ControlNode::new(config, Box::new(self.disks[&id].clone())).expect("valid config");
        let coordinator = Coordinator::new(NodeId(id), &voters, &witnesses, TIMEOUT_MS * MS, LEASE_MS * MS);
        let role = ServiceRole::new(RoleConfig {
            service: SERVICE.into(),
            me: NodeId(id),
            witness: self.scenario.is_witness(id),
            holders: (1..=self.scenario.holders).map(NodeId).collect(),
            heartbeat_ns: TICK_MS * MS,
            timeout_ns: TIMEOUT_MS * MS,
            lease_ns: LEASE_MS * MS,
            switchover_limit_ns: SWITCHOVER_LIMIT_MS * MS,
            incarnation: self.rng.random(),
        });
        let tick_phase = self.rng.random_range(0..TICK_MS);
        let node =
            Node { control, coordinator, role, data: Data::Nothing, tick_phase, was_leader: false, last_create: None };
        self.nodes.insert(id, Some(node));
    }

    fn node(&mut self, id: u64) -> &mut Node {
        self.nodes.get_mut(&id).and_then(|n| n.as_mut()).expect("up")
    }

    fn send(&mut self, from: u64, to: u64, msg: Msg, ordered: bool) {
        self.send_after(from, to, msg, ordered, 0);
    }

    /// Sends `msg` once `wait` more milliseconds have passed (a disk sync it waited for).
    fn send_after(&mut self, from: u64, to: u64, msg: Msg, ordered: bool, wait: u64) {
        let delay = if ordered { 1 } else { self.rng.random_range(1..6) };
        // Control messages may be lost; data links are TCP: in order, lost only with the link.
        if !ordered && self.rng.random_ratio(1, 50) {
            if matches!(msg, Msg::Raft(_)) {
                self.void_outage("a control-plane message was lost");
            }
            return;
        }
        self.queue.push(Envelope { at: self.now + wait + delay, from, to, msg });
    }

    /// Another fault came before output was released again: the outage of the lone crash
    /// being timed is no longer a lone crash's.
    fn void_outage(&mut self, why: &str) {
        if let Some(outage) = self.outage.take() {
            self.trace(|| format!("outage after node {}'s crash no longer timed: {why}", outage.node));
        }
    }

    /// How long a poll's log write takes to sync: usually within the step, now and then as
    /// long as a flush on a busy disk (fdatasync of a small append was measured at 0.1-0.4 ms
    /// alone and ~40 ms under a cluster's own appends).
    fn sync_ms(&mut self) -> u64 {
        if self.rng.random_ratio(1, 10) { self.rng.random_range(5..50) } else { 0 }
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.tracing {
            eprintln!("{:>6} {}", self.now, what());
        }
    }

    fn up(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.is_some()) && self.paused_until.get(&id).is_none_or(|t| *t <= self.now)
    }

    fn fail(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(what);
        }
    }

    /// The newest record any running node has applied.
    fn newest_record(&self) -> Option<ServiceRecord> {
        self.nodes
            .values()
            .flatten()
            .filter_map(|n| n.control.state().service(SERVICE).map(|r| (n.control.state().applied_index(), r)))
            .max_by_key(|(index, _)| *index)
            .map(|(_, r)| r.clone())
    }

    fn crash(&mut self, id: u64) {
        let now = self.now;
        // Timed only where the others can release without it: `min_backups` backups and a
        // primary among the holders left (else output waits, as promised, for a restart);
        // and only once the control plane is over earlier faults too: every running node
        // follows one leader (a leader that paused past the timeout steps down when it wakes,
        // and the election after that waits out an election timeout) and finds every other
        // alive (survivors that disagree on who is alive can each take themselves for the
        // first to stand, and split the vote).
        let leaders: BTreeSet<Option<NodeId>> = self.nodes.values().flatten().map(|n| n.control.leader()).collect();
        let lone = self.scenario.holders > u64::from(self.scenario.min_backups) + 1
            && leaders.len() == 1
            && leaders.first().is_some_and(|leader| leader.is_some())
            && self.failures_in_flight == 0
            && !self.beyond_budget
            && !self.switchover_asked
            && self.calm();
        self.void_outage("another node crashed");
        let alive: Vec<u64> = self.nodes.iter().filter(|(_, n)| n.is_some()).map(|(id, _)| *id).collect();
        self.nodes.insert(id, None);
        // Its machine went down with it: what the node wrote to its log without syncing is lost.
        self.disks[&id].lose_unsynced();
        self.queue.retain(|e| e.to != id && e.from != id);
        // Its connections reset.
        for other in alive.iter().copied().filter(|o| *o != id) {
            let links: Vec<u64> = match self.nodes.get(&other).and_then(|n| n.as_ref()).map(|n| &n.data) {
                Some(Data::Serving(p)) => p.links.iter().filter(|(_, l)| l.node == id).map(|(l, _)| *l).collect(),
                Some(Data::Standby(s)) => s.following.iter().filter(|f| f.2 == id).map(|f| f.1).collect(),
                _ => Vec::new(),
            };
            for link in links {
                self.on_msg(other, id, Msg::Reset { link });
            }
            // Its control-plane connection closes too, and each survivor's agent reacts as the
            // node's does: the coordinator marks it gone, and if it led, the survivors stand in
            // turn ([`ControlNode::on_leader_lost`], the node's code).
            let nanos = Nanos(self.now * MS);
            if let Some(Some(node)) = self.nodes.get_mut(&other) {
                node.coordinator.on_disconnect(NodeId(id));
                let coordinator = &node.coordinator;
                node.control.on_leader_lost(NodeId(id), |n| coordinator.alive(n, nanos));
            }
        }
        // Lost: released, and held by no node still running (a paused or cut-off one counts).
        let copies: Vec<BTreeSet<u64>> = self
            .nodes
            .values()
            .flatten()
            .filter_map(|n| match &n.data {
                Data::Serving(p) => Some(p.txs.iter().copied().collect()),
                Data::Standby(Standby { held: Some((_, _, txs)), .. }) => Some(txs.iter().copied().collect()),
                _ => None,
            })
            .collect();
        let lost: Vec<u64> =
            self.released.iter().copied().filter(|tx| !copies.iter().any(|c| c.contains(tx))).collect();
        if !lost.is_empty() {
            self.released.retain(|tx| !lost.contains(tx));
            if self.beyond_budget {
                self.stats.lost_beyond_budget += lost.len() as u64;
            } else {
                let (first, last, count) = (lost[0], lost[lost.len() - 1], lost.len());
                let what = format!(
                    "crash of node {id} lost {count} released transactions ({first}..={last}): no running node holds them"
                );
                self.violation.get_or_insert(what);
            }
        }
        if self.failures_in_flight > 0 {
            self.stats.double_failures += 1;
        }
        self.failures_in_flight += 1;
        self.down_until.insert(id, self.now + self.rng.random_range(50..800));
        self.stats.crashes += 1;
        if lone {
            self.outage = Some(Outage { node: id, at: now });
        }
        let in_flight = self.failures_in_flight;
        self.trace(|| format!("crash node {id} ({in_flight} failures in flight)"));
    }

    fn faults(&mut self) {
        let now = self.now;
        // Restarts.
        let restart: Vec<u64> = self.down_until.iter().filter(|(_, t)| **t <= now).map(|(id, _)| *id).collect();
        for id in restart {
            self.down_until.remove(&id);
            self.start_node(id);
            self.trace(|| format!("restart node {id}"));
        }
        if now >= self.heal_at {
            self.cut.clear();
        }
        let record = self.newest_record();
        if record.as_ref().is_some_and(|r| self.fully_protected(r)) {
            self.failures_in_flight = 0;
        }
        self.catching_up = record.iter().flat_map(|r| r.catching_up.iter().map(|c| c.node.0)).collect();
        if now + QUIET_MS >= self.steps {
            // The quiet end: everything comes back.
            for until in self.down_until.values_mut() {
                *until = (*until).min(now);
            }
            return;
        }
        let holders = self.scenario.holders;
        let running = |sim: &Sim, id: u64| sim.nodes.get(&id).is_some_and(|n| n.is_some());
        if let Some((id, at)) = self.aimed
            && at <= now
        {
            self.aimed = None;
            if running(self, id) && self.within_budget() {
                self.trace(|| format!("aimed crash of node {id}, just promoted"));
                self.crash(id);
                return;
            }
        }
        let roll = self.rng.random_range(0..10_000);
        if roll < 8 {
            // Crash a holder; it restarts with its Raft log only.
            let id = self.rng.random_range(1..=holders);
            if running(self, id) && self.within_budget() {
                self.crash(id);
            }
        } else if roll < 12 && self.cut.is_empty() && self.within_budget() {
            // Isolate one node, or cut one link one way: a failure of the primary's if it is
            // cut off, so it counts against the budget like a crash.
            self.failures_in_flight += 1;
            let nodes = self.scenario.nodes();
            let a = self.rng.random_range(1..=nodes);
            if self.rng.random_bool(0.5) {
                for b in (1..=nodes).filter(|b| *b != a) {
                    self.cut.insert((a, b));
                    self.cut.insert((b, a));
                }
            } else {
                self.cut.insert((a, a % nodes + 1));
            }
            self.heal_at = now + self.rng.random_range(50..1000);
            self.stats.partitions += 1;
            self.void_outage("a partition");
            let (cut, heal) = (self.cut.clone(), self.heal_at);
            self.trace(|| format!("partition {cut:?} until {heal}"));
        } else if roll < 15 {
            // Pause a node (SIGSTOP), sometimes past the failure timeout.
            let id = self.rng.random_range(1..=self.scenario.nodes());
            if id <= holders {
                if !self.within_budget() {
                    return;
                }
                self.failures_in_flight += 1;
            }
            let until = now + self.rng.random_range(20..500);
            self.paused_until.insert(id, until);
            self.stats.pauses += 1;
            self.void_outage("a pause");
            self.trace(|| format!("pause node {id} until {until}"));
        } else if roll < 17 && self.within_budget() {
            self.ask_switchover();
        }
    }

    /// Every node up and connected, the record's primary serving its term and every wanted
    /// backup holding a checkpoint of it: the failures before are over.
    fn fully_protected(&self, record: &ServiceRecord) -> bool {
        let data = |node: NodeId| self.nodes.get(&node.0).and_then(|n| n.as_ref()).map(|n| &n.data);
        let Some(Data::Serving(serving)) =
            data(record.primary).filter(|d| matches!(d, Data::Serving(p) if p.term == record.term))
        else {
            return false;
        };
        // Each backup holds a checkpoint of the term and its link to the primary is up.
        let held = |node: &NodeId| {
            let linked = serving.links.values().any(|l| l.node == node.0 && l.up && l.attached());
            let holds = matches!(data(*node), Some(Data::Standby(Standby { held: Some((term, _, _)), .. })) if *term == record.term);
            linked && holds
        };
        !self.switchover_asked && !record.degraded() && record.backups.iter().all(held) && self.calm()
    }

    /// No fault now, and none still working itself out: every node up and connected, every
    /// running node's control plane hearing every other, and no failover decided during a
    /// fault still under way (a promotion proposed in the last moment of a pause lands after
    /// it).
    fn calm(&self) -> bool {
        let now = self.now;
        let nanos = Nanos(now * MS);
        let running = || self.nodes.iter().filter(|(_, n)| n.is_some()).map(|(id, _)| NodeId(*id));
        self.cut.is_empty()
            && self.down_until.is_empty()
            && self.paused_until.values().all(|t| *t <= now)
            && self.nodes.values().flatten().all(|n| running().all(|r| n.coordinator.alive(r, nanos)))
            && !self.nodes.values().flatten().any(|n| n.coordinator.promoting(SERVICE))
    }

    /// Whether one more failure keeps the run within what k backups promise to survive. Now
    /// and then the run goes beyond it anyway (every other property is still checked); from
    /// then on a lost release is counted, not a violation.
    fn within_budget(&mut self) -> bool {
        if (self.failures_in_flight as u8) < self.scenario.backups {
            return true;
        }
        if self.rng.random_ratio(1, 4) {
            if !self.beyond_budget {
                self.trace(|| "beyond the failure budget from here".into());
            }
            self.beyond_budget = true;
            return true;
        }
        false
    }

    /// An operator asks the primary to hand over to one of its backups.
    fn ask_switchover(&mut self) {
        let now = Nanos(self.now * MS);
        let Some(record) = self.newest_record() else { return };
        let Some(&to) = record.backups.first() else { return };
        let primary = record.primary.0;
        if !self.up(primary) {
            return;
        }
        let node = self.node(primary);
        let state = node.control.state().service(SERVICE).cloned();
        if node.role.begin_switchover(state.as_ref(), to, now).is_ok()
            && let Data::Serving(serving) = &mut node.data
        {
            serving.draining = true;
            // The old primary gives its region up and comes back by pre-copy: from the ask
            // until it is re-protected the service is (about to be) a copy short, as after a
            // failure.
            self.failures_in_flight += 1;
            self.switchover_asked = true;
            self.stats.switchovers += 1;
            self.void_outage("a switchover");
            self.trace(|| format!("switchover asked: node {primary} to {to}"));
        }
    }

    fn deliver(&mut self) {
        let now = self.now;
        let mut due = Vec::new();
        let mut keep = Vec::new();
        for envelope in std::mem::take(&mut self.queue) {
            if envelope.at <= now && self.up(envelope.to) {
                due.push(envelope);
            } else {
                keep.push(envelope);
            }
        }
        self.queue = keep;
        // Same delivery time: keep send order (links are FIFO).
        due.sort_by_key(|e| e.at);
        for envelope in due {
            if self.cut.contains(&(envelope.from, envelope.to)) {
                // A cut data link is a reset connection.
                if let Msg::Attach { link, .. } | Msg::Checkpoint { link, .. } | Msg::Ack { link, .. } = envelope.msg {
                    self.on_msg(envelope.from, envelope.from, Msg::Reset { link });
                    self.on_msg(envelope.to, envelope.from, Msg::Reset { link });
                }
                continue;
            }
            self.on_msg(envelope.to, envelope.from, envelope.msg);
        }
    }

    fn on_msg(&mut self, to: u64, from: u64, msg: Msg) {
        let now = self.now;
        let Some(Some(node)) = self.nodes.get_mut(&to) else { return };
        let mut out: Vec<(u64, Msg, bool)> = Vec::new();
        match msg {
            Msg::Raft(bytes) => {
                let _ = node.control.step(&bytes);
            }
            Msg::Report(report) => node.coordinator.on_report(NodeId(from), report, Nanos(now * MS)),
            Msg::Attach { term, link, payload } => match &mut node.data {
                Data::Standby(standby) if standby.term.is_none_or(|t| term >= t) => {
                    standby.term = Some(term);
                    standby.following = Some((term, link, from));
                    if payload == AttachPayload::PreCopy {
                        // The first pre-copy round overwrites the image: it is no checkpoint.
                        standby.held = None;
                    }
                }
                _ => out.push((from, Msg::Reset { link }, true)),
            },
            Msg::Checkpoint { term, link, checkpoint, txs } => match &mut node.data {
                Data::Standby(standby) if standby.following == Some((term, link, from)) => {
                    standby.held = Some((term, checkpoint, txs));
                    out.push((from, Msg::Ack { term, link, checkpoint }, true));
                }
                _ => out.push((from, Msg::Reset { link }, true)),
            },
            Msg::Ack { term, link, checkpoint } => {
                if let Data::Serving(serving) = &mut node.data
                    && serving.term == term
                    && let Some(l) = serving.links.get_mut(&link)
                    && l.up
                {
                    l.acked = Some(checkpoint);
                    let _ = serving.replication.on_ack(l.id, checkpoint, Nanos(now * MS));
                    if !l.attached() {
                        l.stage = LinkStage::Attached;
                        let attached = l.node;
                        node.role.on_attached(NodeId(attached), true, Nanos(now * MS));
                    }
                    self.release(to);
                    return;
                }
            }
            Msg::Reset { link } => match &mut node.data {
                Data::Serving(serving) => {
                    if let Some(l) = serving.links.get_mut(&link)
                        && l.up
                    {
                        l.up = false;
                        if l.following() {
                            serving.replication.backup_lost(l.id, Nanos(now * MS));
                        }
                        if !l.attached() {
                            node.role.on_attached(NodeId(l.node), false, Nanos(now * MS));
                        }
                    }
                }
                Data::Standby(standby) => {
                    if standby.following.is_some_and(|(_, l, _)| l == link) {
                        standby.following = None;
                    }
                }
                Data::Nothing => {}
            },
        }
        for (to2, msg, ordered) in out {
            self.send(to, to2, msg, ordered);
        }
    }

    /// What the node's data plane shows its role machine.
    fn facts(data: &Data) -> Facts {
        match data {
            Data::Nothing => Facts::default(),
            Data::Standby(s) => Facts { standby_held: s.held.as_ref().map(|(t, c, _)| (*t, *c)), ..Facts::default() },
            Data::Serving(p) => Facts {
                standby_held: None,
                primary_held: p.replication.held(),
                // The newest attached link per node, as the agent keeps one per node.
                links: p.links.values().filter(|l| l.up && l.attached()).map(|l| (NodeId(l.node), l.acked)).collect(),
            },
        }
    }

    fn report(node: &Node, now: u64) -> Report {
        let record = node.control.state().service(SERVICE);
        let Facts { standby_held, primary_held, links } = Self::facts(&node.data);
        let observed = Observed {
            now: Nanos(now * MS),
            record,
            alive: &|_| false,
            region_free: matches!(node.data, Data::Nothing),
            standby_held,
            primary_held,
            links: &links,
        };
        Report { services: vec![node.role.report(record, &observed)] }
    }

    fn node_step(&mut self, id: u64) {
        let now = self.now;
        let nanos = Nanos(now * MS);
        if !self.up(id) {
            return;
        }
        let mut sends: Vec<(u64, Msg, bool)> = Vec::new();
        let mut proposals = Vec::new();
        let nodes = self.scenario.nodes();
        {
            let node = self.node(id);
            if now % TICK_MS == node.tick_phase {
                node.control.tick();
                let report = Self::report(node, now);
                for peer in (1..=nodes).filter(|p| *p != id) {
                    sends.push((peer, Msg::Report(report.clone()), false));
                }
            }
        }
        self.flush(id, &mut sends);
        let scenario = self.scenario;
        let node = self.node(id);
        let leader = node.control.is_leader();
        if leader && !node.was_leader {
            node.coordinator.on_leadership(nanos);
            self.trace(|| format!("node {id} leads the control plane"));
        }
        let node = self.node(id);
        node.was_leader = leader;
        if leader {
            if node.control.state().service(SERVICE).is_none() && node.last_create.is_none_or(|t| now >= t + TIMEOUT_MS)
            {
                node.last_create = Some(now);
                proposals.push(Command::CreateService {
                    service: SERVICE.into(),
                    primary: NodeId(1),
                    backups_wanted: scenario.backups,
                    min_backups: scenario.min_backups,
                });
            }
            let own = Self::report(node, now);
            for decision in node.coordinator.decide(&node.control.state().clone(), &own, nanos) {
                match decision {
                    Decision::Propose(command) => proposals.push(command),
                    Decision::TransferLeader(to) => node.control.transfer_leader(to),
                }
            }
        }
        self.role_step(id, &mut sends, &mut proposals);
        self.primary_work(id, &mut sends);
        let node = self.node(id);
        for command in proposals {
            let _ = node.control.propose(&command);
        }
        self.flush(id, &mut sends);
        for (to, msg, ordered) in sends {
            self.send(id, to, msg, ordered);
        }
    }

    /// Ticks the node's role machine and carries out its actions.
    fn role_step(&mut self, id: u64, sends: &mut Vec<(u64, Msg, bool)>, proposals: &mut Vec<Command>) {
        let now = self.now;
        let nanos = Nanos(now * MS);
        let node = self.nodes.get_mut(&id).and_then(|n| n.as_mut()).expect("up");
        let record = node.control.state().service(SERVICE).cloned();
        let Facts { standby_held, primary_held, links } = Self::facts(&node.data);
        let coordinator = &node.coordinator;
        let alive = |n: NodeId| coordinator.alive(n, nanos);
        let observed = Observed {
            now: nanos,
            record: record.as_ref(),
            alive: &alive,
            region_free: matches!(node.data, Data::Nothing),
            standby_held,
            primary_held,
            links: &links,
        };
        let actions = node.role.tick(&observed);
        for action in actions {
            if !self.execute(id, action, sends, proposals) {
                self.node(id).role.on_failed(nanos, false);
                break;
            }
        }
    }

    /// Carries out one action; false if it could not be.
    fn execute(
        &mut self,
        id: u64,
        action: Action,
        sends: &mut Vec<(u64, Msg, bool)>,
        proposals: &mut Vec<Command>,
    ) -> bool {
        let now = self.now;
        let nanos = Nanos(now * MS);
        match action {
            Action::Propose(command) => proposals.push(command),
            Action::StandBy => self.node(id).data = Data::Standby(Standby::default()),
            Action::Serve { term, from } => {
                let node = self.node(id);
                let (txs, first) = match (std::mem::replace(&mut node.data, Data::Nothing), from) {
                    (Data::Standby(Standby { held: Some((_, held, txs)), .. }), ServeFrom::Image) => (txs, held.next()),
                    (_, ServeFrom::Empty) => (Vec::new(), CheckpointId(1)),
                    (_, ServeFrom::Image) => return false,
                };
                let policy = CommitPolicy::Epoch { interval_us: 1000, max_commits: 0 };
                let mut replication = Replication::new(term, policy, 0, first, nanos);
                replication.set_required(BTreeSet::new(), nanos);
                let released_upto = txs.len();
                let count = txs.len();
                node.data = Data::Serving(Box::new(Serving {
                    term,
                    replication,
                    txs,
                    cuts: BTreeMap::new(),
                    links: BTreeMap::new(),
                    required: BTreeSet::new(),
                    released_upto,
                    draining: false,
                }));
                self.trace(|| format!("node {id} serves term {} from {count} transactions ({from:?})", term.0));
            }
            Action::Depose { term, .. } => {
                self.node(id).data = Data::Nothing;
                self.trace(|| format!("node {id} deposed by term {}", term.0));
            }
            Action::Attach { node: target, payload } => {
                self.next_link += 1;
                let link = self.next_link;
                let backup = BackupId(link as u32);
                // Pre-copy rounds take a while (the region crosses the link while transactions
                // run); a rebase's whole image travels in its first checkpoint.
                let ready_at = match payload {
                    AttachPayload::PreCopy => now + self.rng.random_range(5..80),
                    AttachPayload::Rebase => now,
                };
                let Data::Serving(serving) = &mut self.node(id).data else { return true };
                let link_state = Link {
                    node: target.0,
                    id: backup,
                    up: true,
                    acked: None,
                    stage: LinkStage::PreCopying { until: ready_at },
                };
                serving.links.insert(link, link_state);
                sends.push((target.0, Msg::Attach { term: serving.term, link, payload }, true));
                match payload {
                    AttachPayload::PreCopy => self.stats.precopies += 1,
                    AttachPayload::Rebase => self.stats.rebases += 1,
                }
                self.trace(|| format!("node {id} attaches node {} ({payload:?})", target.0));
            }
            Action::SetRequired { nodes, protection } => {
                let Data::Serving(serving) = &mut self.node(id).data else { return true };
                let ids = nodes
                    .iter()
                    .map(|n| {
                        let newest = serving.links.values().rfind(|l| l.node == n.0 && l.up && l.attached());
                        newest.map_or(BackupId(u32::MAX - n.0 as u32), |l| l.id)
                    })
                    .collect();
                serving.replication.set_required_with(ids, protection, nanos);
                serving.required = nodes.iter().map(|n| n.0).collect();
                self.release(id);
            }
            Action::SetLease { until } => {
                let Data::Serving(serving) = &mut self.node(id).data else { return true };
                serving.replication.set_lease(Some(until), nanos);
                self.release(id);
            }
            Action::CutLast => {
                let node = self.node(id);
                let Data::Serving(serving) = &mut node.data else { return true };
                let last = Self::cut(serving, nanos, sends);
                node.role.on_last_checkpoint(last);
            }
            Action::SwitchoverAbandoned { reason } => {
                let Data::Serving(serving) = &mut self.node(id).data else { return true };
                serving.draining = false;
                self.switchover_asked = false;
                self.trace(|| format!("node {id}: {reason}"));
            }
        }
        true
    }

    /// Cuts a checkpoint and sends it on every link.
    fn cut(serving: &mut Serving, now: Nanos, sends: &mut Vec<(u64, Msg, bool)>) -> CheckpointId {
        for link in serving.links.values_mut() {
            if let LinkStage::PreCopying { until } = link.stage
                && link.up
                && now.0 >= until * MS
            {
                serving.replication.add_backup(link.id);
                link.stage = LinkStage::Following;
            }
        }
        let cut = serving.replication.cut(now);
        serving.cuts.insert(cut.checkpoint, serving.txs.len());
        for (link_id, link) in &serving.links {
            if link.up && link.following() {
                let msg = Msg::Checkpoint {
                    term: serving.term,
                    link: *link_id,
                    checkpoint: cut.checkpoint,
                    txs: serving.txs.clone(),
                };
                sends.push((link.node, msg, true));
            }
        }
        cut.checkpoint
    }

    /// A primary commits some transactions and cuts a checkpoint every other step.
    fn primary_work(&mut self, id: u64, sends: &mut Vec<(u64, Msg, bool)>) {
        let now = self.now;
        let commits = self.rng.random_range(0..3);
        let Some(Some(node)) = self.nodes.get_mut(&id) else { return };
        let Data::Serving(serving) = &mut node.data else { return };
        if !serving.draining {
            for _ in 0..commits {
                self.next_tx += 1;
                serving.txs.push(self.next_tx);
            }
        }
        if now.is_multiple_of(2) {
            Self::cut(serving, Nanos(now * MS), sends);
        }
        self.release(id);
    }

    /// Polls Raft: messages out, applied commands in.
    fn flush(&mut self, id: u64, sends: &mut Vec<(u64, Msg, bool)>) {
        let now = self.now;
        let node = self.node(id);
        // As the agent polls: a leader's appends leave before its own log write, the rest once
        // the write is synced.
        let mut before_sync = Vec::new();
        let output =
            node.control.poll_sending(|to, bytes| before_sync.push((to, bytes))).expect("memory log never fails");
        for (to, bytes) in before_sync {
            sends.push((to.0, Msg::Raft(bytes), false));
        }
        if !output.messages.is_empty() {
            let wait = self.sync_ms();
            for (to, bytes) in output.messages {
                self.send_after(id, to.0, Msg::Raft(bytes), false, wait);
            }
        }
        for applied in output.applied {
            if applied.outcome.is_err() {
                continue;
            }
            if !matches!(applied.command, Command::GrantLease { .. }) {
                let command = applied.command.clone();
                self.trace(|| format!("node {id} applies {} {command:?}", applied.index));
            }
            match &applied.command {
                Command::Promote { node: promoted, from_term, .. } => {
                    let term = Term(from_term.0 + 1);
                    match self.primaries.get(&term) {
                        Some(p) if *p != promoted.0 => {
                            let what = format!("term {} has two primaries: {p} and {}", term.0, promoted.0);
                            self.fail(what);
                        }
                        Some(_) => {}
                        None => {
                            self.primaries.insert(term, promoted.0);
                            // Committed (or overtaken by a failover): the copy short is counted
                            // until the service is whole again.
                            self.switchover_asked = false;
                            if self.catching_up.contains(&promoted.0) {
                                self.stats.kept_holder_promotions += 1;
                            }
                            // Often aim the next crash at the node just promoted: a second
                            // failure inside its promotion or its first re-protection.
                            if self.rng.random_ratio(1, 3) {
                                let at = now + self.rng.random_range(0..60);
                                self.aimed = Some((promoted.0, at));
                            }
                        }
                    }
                }
                Command::GrantLease { service, term, node: holder, request, .. } => {
                    let node = self.node(id);
                    node.coordinator.on_lease_granted(service, *term, Nanos(now * MS));
                    if holder.0 == id
                        && let Some(Action::SetLease { until }) = node.role.on_lease_granted(*term, *request)
                        && let Data::Serving(serving) = &mut node.data
                    {
                        serving.replication.set_lease(Some(until), Nanos(now * MS));
                    }
                }
                _ => {}
            }
        }
    }

    /// Whatever the primary on `id` holds now is answered to clients at once, as the agent's
    /// client threads do when the held checkpoint moves.
    fn release(&mut self, id: u64) {
        let now = self.now;
        let Some(Some(node)) = self.nodes.get_mut(&id) else { return };
        let Data::Serving(p) = &mut node.data else { return };
        let Some(held) = p.replication.held() else { return };
        let Some(&upto) = p.cuts.range(..=held).next_back().map(|(_, n)| n) else { return };
        if upto <= p.released_upto {
            return;
        }
        // No acknowledged commit lost: the releasing primary's state holds every transaction
        // released before (by it or any predecessor).
        let have: BTreeSet<u64> = p.txs[..upto].iter().copied().collect();
        if let Some(lost) = self.released.iter().find(|tx| !have.contains(tx)) {
            let what = format!("node {id} releases in term {} without released transaction {lost}", p.term.0);
            self.violation.get_or_insert(what);
        }
        if p.term < self.newest_release_term {
            let what = format!(
                "node {id} released output in term {} after term {} released",
                p.term.0, self.newest_release_term.0
            );
            self.violation.get_or_insert(what);
        }
        self.newest_release_term = self.newest_release_term.max(p.term);
        let mut holders = p.required.clone();
        holders.insert(id);
        if self.tracing {
            let range = (p.txs[p.released_upto], p.txs[upto - 1]);
            let n = upto - p.released_upto;
            eprintln!(
                "{now:>6} node {id} releases {n} in term {} held by {holders:?} (checkpoint {held:?}, txs {range:?})",
                p.term.0
            );
        }
        self.released.extend_from_slice(&p.txs[p.released_upto..upto]);
        self.stats.released += (upto - p.released_upto) as u64;
        p.released_upto = upto;
        self.last_release = now;
        if let Some(outage) = self.outage.take() {
            self.stats.lone_crashes += 1;
            self.stats.longest_outage_ms = self.stats.longest_outage_ms.max(now - outage.at);
            self.trace(|| format!("output released again {} ms after node {}'s crash", now - outage.at, outage.node));
        }
    }
}

/// Runs the cluster simulation for `seed` over `steps` virtual milliseconds.
pub fn run_cluster_seed(seed: u64, steps: u64) -> Result<ClusterStats, Violation> {
    run_cluster(seed, steps, false)
}

/// Like [`run_cluster_seed`]; `trace` prints every event to stderr.
pub fn run_cluster(seed: u64, steps: u64, trace: bool) -> Result<ClusterStats, Violation> {
    let scenario = Scenario::for_seed(seed);
    let steps = steps.max(2 * QUIET_MS);
    let mut sim = Sim {
        scenario,
        steps,
        rng: SmallRng::seed_from_u64(seed),
        now: 0,
        nodes: BTreeMap::new(),
        disks: (1..=scenario.nodes()).map(|id| (id, MemoryLog::default())).collect(),
        down_until: BTreeMap::new(),
        paused_until: BTreeMap::new(),
        cut: BTreeSet::new(),
        heal_at: 0,
        queue: Vec::new(),
        next_link: 0,
        next_tx: 0,
        released: Vec::new(),
        last_release: 0,
        newest_release_term: Term(0),
        primaries: BTreeMap::new(),
        // Until the service is first fully protected, a failure is beyond what it promises.
        failures_in_flight: u64::from(scenario.backups),
        beyond_budget: false,
        switchover_asked: false,
        catching_up: BTreeSet::new(),
        aimed: None,
        outage: None,
        stats: ClusterStats::default(),
        seed,
        violation: None,
        tracing: trace,
    };
    sim.trace(|| format!("{scenario:?}"));
    for id in 1..=scenario.nodes() {
        sim.start_node(id);
    }
    let violation = |sim: &Sim, what: String| Violation {
        seed: sim.seed,
        step: sim.now as usize,
        what: format!("{scenario:?}: {what}"),
    };
    while sim.now < steps {
        sim.now += 1;
        sim.faults();
        sim.deliver();
        for id in 1..=scenario.nodes() {
            sim.node_step(id);
        }
        if let Some(what) = sim.violation.take() {
            return Err(violation(&sim, what));
        }
        if let Some(outage) = sim.outage
            && sim.now - outage.at > OUTAGE_LIMIT_MS
        {
            let what = format!(
                "no output released for {OUTAGE_LIMIT_MS} ms after the lone crash of node {} at {} (no other fault, no control message lost)",
                outage.node, outage.at
            );
            return Err(violation(&sim, what));
        }
    }
    sim.stats.beyond_budget = u64::from(sim.beyond_budget);
    if !sim.beyond_budget && sim.now.saturating_sub(sim.last_release) > QUIET_MS / 2 {
        let record = sim.newest_record();
        let now = sim.now;
        let nodes: Vec<String> = sim
            .nodes
            .iter()
            .map(|(id, n)| match n {
                Some(n) => format!("node {id}: leader {:?}, {:?}", n.control.leader(), Sim::report(n, now).services),
                None => format!("node {id}: down"),
            })
            .collect();
        let what =
            format!("the service released nothing in the last {} ms of quiet: {record:?}; {nodes:?}", QUIET_MS / 2);
        return Err(violation(&sim, what));
    }
    sim.stats.promotions = sim.primaries.len() as u64;
    Ok(sim.stats)
}
