//! A deterministic simulation of failover: three nodes, each running the real control plane
//! ([`ControlNode`] on raft-rs, [`Coordinator`], the `ClusterState` rules) and the real
//! output-commit bookkeeping ([`Replication`] with a required set and leases), under crashes
//! with restarts, partitions, pauses longer than the failure timeout, and lost, delayed and
//! reordered control messages — all from one seed, in virtual time (one step = 1 ms).
//!
//! The data plane is modelled above the byte level (the byte-level atomic apply has its own
//! simulation, [`crate::run_seed`]): a checkpoint carries the list of transactions committed so
//! far in the primary's lineage, a backup holds the list of its last whole checkpoint, follows one
//! term at a time and refuses older terms, as `Backup` does. The roles follow the agent's rules
//! (`nonstop-node`'s `ServiceHost`): promote in place from the held checkpoint, depose on a newer
//! record, require the record's backups plus joining spares, add a spare only once it holds
//! everything released, drop a backup only through the record, release without backups only
//! under a lease.
//!
//! After every step it checks:
//! * **no acknowledged commit is lost**: a primary that releases output holds every transaction
//!   released before, by it or any predecessor (unless every node that held them crashed: a
//!   double failure, counted);
//! * **one releaser at a time**: no node releases output for a term older than a term whose output
//!   was already released (a deposed primary never releases after its successor);
//! * **one primary per term**: every node that applied a term names the same primary.

use nonstop_control::cluster::{Command, NodeId};
use nonstop_control::coordinator::{Coordinator, Decision, Report, Role as ReportedRole, ServiceReport};
use nonstop_control::lease::LeaseKeeper;
use nonstop_control::log::MemoryLog;
use nonstop_control::{ControlConfig, ControlNode};
use nonstop_proto::primary::{BackupId, Replication};
use nonstop_proto::{CheckpointId, CommitPolicy, Nanos, Term};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

use crate::Violation;

const SERVICE: &str = "bank";
const NODES: u64 = 3;
const TICK_MS: u64 = 10;
const TIMEOUT_MS: u64 = 200;
const LEASE_MS: u64 = 400;
const MS: u64 = 1_000_000;

/// What a cluster run did, for coverage.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClusterStats {
    /// Promotions committed.
    pub promotions: u64,
    /// Transactions whose output was released.
    pub released: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Pauses started.
    pub pauses: u64,
    /// Spares added as backups.
    pub reprotections: u64,
    /// Released transactions lost because every node holding them crashed.
    pub lost_with_every_holder: u64,
}

impl std::ops::AddAssign for ClusterStats {
    fn add_assign(&mut self, other: ClusterStats) {
        self.promotions += other.promotions;
        self.released += other.released;
        self.crashes += other.crashes;
        self.partitions += other.partitions;
        self.pauses += other.pauses;
        self.reprotections += other.reprotections;
        self.lost_with_every_holder += other.lost_with_every_holder;
    }
}

enum Msg {
    Raft(Vec<u8>),
    Report(Report),
    /// Primary to backup: attach in `term` on link `link`.
    Attach {
        term: Term,
        link: u64,
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
}

struct Primary {
    term: Term,
    replication: Replication,
    txs: Vec<u64>,
    /// Transactions included up to each cut checkpoint.
    cuts: BTreeMap<CheckpointId, usize>,
    links: BTreeMap<u64, Link>,
    /// Joining links and the newest record version an `AddBackup` for them was proposed at.
    joining: BTreeMap<u64, Option<u64>>,
    required_version: Option<(u64, BTreeSet<u64>)>,
    lease: LeaseKeeper,
    fresh: bool,
    lost_since: BTreeMap<u64, u64>,
    proposed: BTreeMap<String, u64>,
    released_upto: usize,
}

#[derive(Default)]
struct Standby {
    /// The term and link followed now.
    following: Option<(Term, u64, u64)>,
    /// Newest term attached.
    term: Option<Term>,
    held: Option<(Term, CheckpointId, Vec<u64>)>,
}

enum Role {
    Standby(Standby),
    Primary(Box<Primary>),
}

struct Node {
    control: ControlNode,
    coordinator: Coordinator,
    role: Role,
    tick_phase: u64,
    was_leader: bool,
    last_create: Option<u64>,
    /// Random per start, as a process's: lease requests never repeat across restarts.
    incarnation: u64,
}

struct Sim {
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
    /// Released transactions with the nodes that held them when released. A batch whose every
    /// holder crashed since is lost with them (a double failure nothing can survive) and is
    /// counted, not checked.
    released: Vec<(Vec<u64>, BTreeSet<u64>)>,
    newest_release_term: Term,
    primaries: BTreeMap<Term, u64>,
    stats: ClusterStats,
    seed: u64,
    violation: Option<String>,
    tracing: bool,
}

fn voters() -> Vec<NodeId> {
    (1..=NODES).map(NodeId).collect()
}

impl Sim {
    fn start_node(&mut self, id: u64) {
        let config = ControlConfig {
            id: NodeId(id),
            voters: voters(),
            election_ticks: (TIMEOUT_MS / TICK_MS) as usize,
            heartbeat_ticks: 2,
            election_jitter: false,
            compact_every: 64,
        };
        let control = ControlNode::new(config, Box::new(self.disks[&id].clone())).expect("valid config");
        let coordinator = Coordinator::new(NodeId(id), &voters(), &[], TIMEOUT_MS * MS, LEASE_MS * MS);
        let tick_phase = self.rng.random_range(0..TICK_MS);
        let node = Node {
            control,
            coordinator,
            role: Role::Standby(Standby::default()),
            tick_phase,
            was_leader: false,
            last_create: None,
            incarnation: self.rng.random::<u64>(),
        };
        self.nodes.insert(id, Some(node));
    }

    fn send(&mut self, from: u64, to: u64, msg: Msg, ordered: bool) {
        let delay = if ordered { 1 } else { self.rng.random_range(1..6) };
        // Control messages may be lost; data links are TCP: in order, lost only with the link.
        if !ordered && self.rng.random_ratio(1, 50) {
            return;
        }
        self.queue.push(Envelope { at: self.now + delay, from, to, msg });
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
        let roll = self.rng.random_range(0..10_000);
        let alive: Vec<u64> = self.nodes.iter().filter(|(_, n)| n.is_some()).map(|(id, _)| *id).collect();
        if roll < 8 && alive.len() == NODES as usize {
            // Crash one node; it restarts with its Raft log only.
            let id = alive[self.rng.random_range(0..alive.len())];
            self.nodes.insert(id, None);
            self.queue.retain(|e| e.to != id && e.from != id);
            // Its connections reset.
            for other in alive.iter().copied().filter(|o| *o != id) {
                let links: Vec<u64> = match self.nodes.get(&other).and_then(|n| n.as_ref()).map(|n| &n.role) {
                    Some(Role::Primary(p)) => p.links.iter().filter(|(_, l)| l.node == id).map(|(l, _)| *l).collect(),
                    Some(Role::Standby(s)) => s.following.iter().filter(|f| f.2 == id).map(|f| f.1).collect(),
                    None => Vec::new(),
                };
                for link in links {
                    self.on_msg(other, id, Msg::Reset { link });
                }
            }
            for (txs, holders) in &mut self.released {
                holders.remove(&id);
                if holders.is_empty() {
                    self.stats.lost_with_every_holder += txs.len() as u64;
                }
            }
            self.released.retain(|(_, holders)| !holders.is_empty());
            self.down_until.insert(id, now + self.rng.random_range(50..800));
            self.stats.crashes += 1;
            self.trace(|| format!("crash node {id}"));
        } else if roll < 12 && self.cut.is_empty() {
            // Isolate one node, or cut one link one way.
            let a = self.rng.random_range(1..=NODES);
            if self.rng.random_bool(0.5) {
                for b in 1..=NODES {
                    if a != b {
                        self.cut.insert((a, b));
                        self.cut.insert((b, a));
                    }
                }
            } else {
                let b = a % NODES + 1;
                self.cut.insert((a, b));
            }
            self.heal_at = now + self.rng.random_range(50..1000);
            self.stats.partitions += 1;
            let (cut, heal) = (self.cut.clone(), self.heal_at);
            self.trace(|| format!("partition {cut:?} until {heal}"));
        } else if roll < 15 {
            // Pause a node (SIGSTOP), sometimes past the failure timeout.
            let id = self.rng.random_range(1..=NODES);
            let until = now + self.rng.random_range(20..500);
            self.paused_until.insert(id, until);
            self.stats.pauses += 1;
            self.trace(|| format!("pause node {id} until {until}"));
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
            Msg::Attach { term, link } => {
                if let Role::Standby(standby) = &mut node.role {
                    if standby.term.is_some_and(|t| term < t) {
                        out.push((from, Msg::Reset { link }, true));
                    } else {
                        standby.term = Some(term);
                        standby.following = Some((term, link, from));
                    }
                } else {
                    out.push((from, Msg::Reset { link }, true));
                }
            }
            Msg::Checkpoint { term, link, checkpoint, txs } => match &mut node.role {
                Role::Standby(standby) if standby.following == Some((term, link, from)) => {
                    standby.held = Some((term, checkpoint, txs));
                    out.push((from, Msg::Ack { term, link, checkpoint }, true));
                }
                _ => out.push((from, Msg::Reset { link }, true)),
            },
            Msg::Ack { term, link, checkpoint } => {
                if let Role::Primary(primary) = &mut node.role
                    && primary.term == term
                    && let Some(l) = primary.links.get_mut(&link)
                    && l.up
                {
                    l.acked = Some(checkpoint);
                    let _ = primary.replication.on_ack(l.id, checkpoint, Nanos(now * MS));
                    self.release(to);
                    return;
                }
            }
            Msg::Reset { link } => match &mut node.role {
                Role::Primary(primary) => {
                    if let Some(l) = primary.links.get_mut(&link)
                        && l.up
                    {
                        l.up = false;
                        primary.replication.backup_lost(l.id, Nanos(now * MS));
                    }
                }
                Role::Standby(standby) => {
                    if standby.following.is_some_and(|(_, l, _)| l == link) {
                        standby.following = None;
                    }
                }
            },
        }
        for (to2, msg, ordered) in out {
            self.send(to, to2, msg, ordered);
        }
    }

    fn report(node: &Node) -> Report {
        let record = node.control.state().service(SERVICE);
        let report = match &node.role {
            Role::Primary(p) => ServiceReport {
                service: SERVICE.into(),
                role: ReportedRole::Primary,
                term: p.term,
                held: p.replication.held(),
            },
            Role::Standby(s) => match &s.held {
                Some((term, checkpoint, _)) => {
                    let backup = record.is_some_and(|r| r.backups.contains(&node.control.id()) && r.term == *term);
                    ServiceReport {
                        service: SERVICE.into(),
                        role: if backup { ReportedRole::Backup } else { ReportedRole::Joining },
                        term: *term,
                        held: Some(*checkpoint),
                    }
                }
                None => ServiceReport {
                    service: SERVICE.into(),
                    role: ReportedRole::Spare,
                    term: record.map_or(Term(0), |r| r.term),
                    held: None,
                },
            },
        };
        Report { services: vec![report] }
    }

    fn node_step(&mut self, id: u64) {
        let now = self.now;
        let nanos = Nanos(now * MS);
        if !self.up(id) {
            return;
        }
        let mut sends: Vec<(u64, Msg, bool)> = Vec::new();
        let mut proposals = Vec::new();
        {
            let node = self.nodes.get_mut(&id).and_then(|n| n.as_mut()).expect("up");
            if now % TICK_MS == node.tick_phase {
                node.control.tick();
                let report = Self::report(node);
                for peer in 1..=NODES {
                    if peer != id {
                        sends.push((peer, Msg::Report(report.clone()), false));
                    }
                }
            }
        }
        self.flush(id, &mut sends);
        let node = self.nodes.get_mut(&id).and_then(|n| n.as_mut()).expect("up");
        let leader = node.control.is_leader();
        if leader && !node.was_leader {
            node.coordinator.on_leadership(nanos);
        }
        node.was_leader = leader;
        if leader {
            if node.control.state().service(SERVICE).is_none() && node.last_create.is_none_or(|t| now >= t + TIMEOUT_MS)
            {
                node.last_create = Some(now);
                proposals.push(Command::CreateService {
                    service: SERVICE.into(),
                    primary: NodeId(1),
                    backups_wanted: 1,
                });
            }
            let own = Self::report(node);
            for decision in node.coordinator.decide(&node.control.state().clone(), &own, nanos) {
                match decision {
                    Decision::Propose(command) => proposals.push(command),
                    Decision::TransferLeader(to) => node.control.transfer_leader(to),
                }
            }
        }
        let record = node.control.state().service(SERVICE).cloned();
        if let Some(record) = record {
            self.reconcile(id, &record, &mut sends, &mut proposals);
        }
        let node = self.nodes.get_mut(&id).and_then(|n| n.as_mut()).expect("up");
        for command in proposals {
            let _ = node.control.propose(&command);
        }
        self.flush(id, &mut sends);
        for (to, msg, ordered) in sends {
            self.send(id, to, msg, ordered);
        }
    }

    /// Polls Raft: messages out, applied commands in.
    fn flush(&mut self, id: u64, sends: &mut Vec<(u64, Msg, bool)>) {
        let now = self.now;
        let node = self.nodes.get_mut(&id).and_then(|n| n.as_mut()).expect("up");
        let output = node.control.poll().expect("memory log never fails");
        for (to, bytes) in output.messages {
            sends.push((to.0, Msg::Raft(bytes), false));
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
                        _ => {
                            self.primaries.insert(term, promoted.0);
                        }
                    }
                }
                Command::GrantLease { term, node: holder, request, .. } => {
                    let node = self.nodes.get_mut(&id).and_then(|n| n.as_mut()).expect("up");
                    node.coordinator.on_lease_granted(SERVICE, *term, Nanos(now * MS));
                    if holder.0 == id
                        && let Role::Primary(p) = &mut node.role
                        && p.term == *term
                        && let Some(until) = p.lease.granted(*request, LEASE_MS * MS)
                    {
                        p.fresh = false;
                        p.replication.set_lease(Some(until), Nanos(now * MS));
                    }
                }
                _ => {}
            }
        }
    }

    fn reconcile(
        &mut self,
        id: u64,
        record: &nonstop_control::ServiceRecord,
        sends: &mut Vec<(u64, Msg, bool)>,
        proposals: &mut Vec<Command>,
    ) {
        let now = self.now;
        let wants_primary = record.primary.0 == id;
        let node = self.nodes.get_mut(&id).and_then(|n| n.as_mut()).expect("up");
        let promote_from: Option<Vec<u64>> = match &mut node.role {
            Role::Primary(p) if !wants_primary || p.term != record.term => {
                let old = p.term;
                node.role = Role::Standby(Standby::default());
                self.trace(|| format!("node {id} deposed from term {}", old.0));
                None
            }
            Role::Primary(_) => None,
            Role::Standby(s) if wants_primary => {
                let fresh = record.may_start_empty();
                match (&s.held, fresh) {
                    (Some((_, _, txs)), _) => Some(txs.clone()),
                    (None, true) => Some(Vec::new()),
                    (None, false) => None,
                }
            }
            Role::Standby(_) => None,
        };
        if let Some(txs) = promote_from {
            let fresh = record.may_start_empty();
            let incarnation = self.nodes.get(&id).and_then(|n| n.as_ref()).expect("up").incarnation;
            let first = CheckpointId(1);
            let mut replication = Replication::new(
                record.term,
                CommitPolicy::Epoch { interval_us: 1000, max_commits: 0 },
                0,
                first,
                Nanos(now * MS),
            );
            replication.set_required(BTreeSet::new(), Nanos(now * MS));
            let released_upto = txs.len();
            let txs_len = txs.len();
            let node = self.nodes.get_mut(&id).and_then(|n| n.as_mut()).expect("up");
            node.role = Role::Primary(Box::new(Primary {
                term: record.term,
                replication,
                txs,
                cuts: BTreeMap::new(),
                links: BTreeMap::new(),
                joining: BTreeMap::new(),
                required_version: None,
                lease: LeaseKeeper::new(incarnation),
                fresh,
                lost_since: BTreeMap::new(),
                proposed: BTreeMap::new(),
                released_upto,
            }));
            let node = self.nodes.get_mut(&id).and_then(|n| n.as_mut()).expect("up");
            if let Role::Primary(p) = &mut node.role {
                let request = p.lease.ask(Nanos(now * MS));
                proposals.push(Command::GrantLease {
                    service: SERVICE.into(),
                    term: record.term,
                    node: NodeId(id),
                    request,
                    fresh,
                });
            }
            let (term, count) = (record.term, txs_len);
            self.trace(|| format!("node {id} serves term {} from {count} transactions", term.0));
            return;
        }
        let node = self.nodes.get_mut(&id).and_then(|n| n.as_mut()).expect("up");
        let alive: Vec<u64> = (1..=NODES).filter(|n| node.coordinator.alive(NodeId(*n), Nanos(now * MS))).collect();
        let Role::Primary(p) = &mut node.role else { return };
        let nanos = Nanos(now * MS);
        // Commit some transactions and cut a checkpoint every other step.
        for _ in 0..self.rng.random_range(0..3) {
            self.next_tx += 1;
            p.txs.push(self.next_tx);
        }
        if now.is_multiple_of(2) {
            let cut = p.replication.cut(nanos);
            p.cuts.insert(cut.checkpoint, p.txs.len());
            for (link_id, link) in &p.links {
                if link.up {
                    let msg = Msg::Checkpoint {
                        term: p.term,
                        link: *link_id,
                        checkpoint: cut.checkpoint,
                        txs: p.txs.clone(),
                    };
                    sends.push((link.node, msg, true));
                }
            }
        }
        // Joining spares that acked become required at once.
        for (link_id, link) in &p.links {
            if link.up && link.acked.is_some() && !record.backups.contains(&NodeId(link.node)) {
                p.joining.entry(*link_id).or_insert(None);
            }
        }
        // A joining link that died stops being waited for only once no AddBackup for it can
        // still apply; until then a barrier moves the record's version on.
        let mut barrier = false;
        p.joining.retain(|l, proposed| {
            let link = &p.links[l];
            if record.backups.contains(&NodeId(link.node)) {
                return false;
            }
            if link.up {
                return true;
            }
            let pending = proposed.is_some_and(|version| version >= record.version);
            barrier |= pending;
            pending
        });
        if barrier && p.proposed.get("barrier").is_none_or(|t| now >= t + TIMEOUT_MS) {
            p.proposed.insert("barrier".into(), now);
            proposals.push(Command::Barrier { service: SERVICE.into(), term: p.term });
        }
        let link_of = |node: u64| p.links.iter().filter(|(_, l)| l.node == node && l.up).map(|(id, _)| *id).max();
        let mut required: BTreeSet<u64> = record.backups.iter().map(|b| b.0).collect();
        required.extend(p.joining.keys().map(|l| p.links[l].node));
        if p.required_version.as_ref() != Some(&(record.version, required.clone())) {
            let ids = required
                .iter()
                .map(|n| link_of(*n).map_or(BackupId(u32::MAX - *n as u32), |l| p.links[&l].id))
                .collect();
            p.replication.set_required(ids, nanos);
            p.required_version = Some((record.version, required.clone()));
        }
        let held = p.replication.held();
        // Joining backups holding everything released are added to the record.
        for (link_id, proposed) in p.joining.iter_mut() {
            let link = &p.links[link_id];
            if link.up
                && link.acked.is_some()
                && link.acked >= held
                && p.proposed.get("add").is_none_or(|t| now >= t + TIMEOUT_MS)
            {
                p.proposed.insert("add".into(), now);
                let version = record.version;
                *proposed = Some(proposed.map_or(version, |v| v.max(version)));
                proposals.push(Command::AddBackup {
                    service: SERVICE.into(),
                    term: p.term,
                    node: NodeId(link.node),
                    version,
                });
            }
        }
        // Backups whose link is down past the timeout are dropped through the record.
        for backup in &record.backups {
            if link_of(backup.0).is_some() {
                p.lost_since.remove(&backup.0);
            } else {
                let since = *p.lost_since.entry(backup.0).or_insert(now);
                if now >= since + TIMEOUT_MS && p.proposed.get("drop").is_none_or(|t| now >= t + TIMEOUT_MS) {
                    p.proposed.insert("drop".into(), now);
                    proposals.push(Command::DropBackup { service: SERVICE.into(), term: p.term, node: *backup });
                }
            }
        }
        // Keep a lease.
        if p.lease.should_ask(nanos, LEASE_MS * MS, 2 * TICK_MS * MS) {
            let request = p.lease.ask(nanos);
            proposals.push(Command::GrantLease {
                service: SERVICE.into(),
                term: p.term,
                node: NodeId(id),
                request,
                fresh: p.fresh,
            });
        }
        // Re-protection: attach one spare at a time.
        let attached: BTreeSet<u64> = p.links.values().filter(|l| l.up).map(|l| l.node).collect();
        if record.backups.len() + p.joining.len() < record.backups_wanted as usize
            && p.links.values().all(|l| !l.up || l.acked.is_some())
            && let Some(spare) = alive
                .iter()
                .copied()
                .find(|n| *n != id && !attached.contains(n) && !record.backups.contains(&NodeId(*n)))
        {
            self.next_link += 1;
            let link = self.next_link;
            let backup = BackupId(link as u32);
            p.replication.add_backup(backup);
            p.links.insert(link, Link { node: spare, id: backup, up: true, acked: None });
            sends.push((spare, Msg::Attach { term: p.term, link }, true));
            self.stats.reprotections += 1;
        }
        self.release(id);
    }

    /// Whatever the primary on `id` holds now is answered to clients at once, as the agent's
    /// client threads do when the held checkpoint moves.
    fn release(&mut self, id: u64) {
        let now = self.now;
        let Some(Some(node)) = self.nodes.get_mut(&id) else { return };
        let Role::Primary(p) = &mut node.role else { return };
        if let Some(held) = p.replication.held()
            && let Some(&upto) = p.cuts.range(..=held).next_back().map(|(_, n)| n)
            && upto > p.released_upto
        {
            // No acknowledged commit lost: the releasing primary's state holds every transaction
            // released before (by it or any predecessor), unless all their holders crashed.
            let have: BTreeSet<u64> = p.txs[..upto].iter().copied().collect();
            if let Some(lost) = self.released.iter().flat_map(|(txs, _)| txs).find(|tx| !have.contains(tx)) {
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
            let mut holders = p.required_version.as_ref().map(|(_, nodes)| nodes.clone()).unwrap_or_default();
            holders.insert(id);
            if self.tracing {
                let range = (p.txs[p.released_upto], p.txs[upto - 1]);
                let n = upto - p.released_upto;
                eprintln!(
                    "{now:>6} node {id} releases {n} in term {} held by {holders:?} (checkpoint {held:?}, txs {range:?})",
                    p.term.0
                );
            }
            self.released.push((p.txs[p.released_upto..upto].to_vec(), holders));
            self.stats.released += (upto - p.released_upto) as u64;
            p.released_upto = upto;
        }
    }
}

/// Runs the cluster simulation for `seed` over `steps` virtual milliseconds.
pub fn run_cluster_seed(seed: u64, steps: u64) -> Result<ClusterStats, Violation> {
    let mut sim = Sim {
        rng: SmallRng::seed_from_u64(seed),
        now: 0,
        nodes: BTreeMap::new(),
        disks: (1..=NODES).map(|id| (id, MemoryLog::default())).collect(),
        down_until: BTreeMap::new(),
        paused_until: BTreeMap::new(),
        cut: BTreeSet::new(),
        heal_at: 0,
        queue: Vec::new(),
        next_link: 0,
        next_tx: 0,
        released: Vec::new(),
        newest_release_term: Term(0),
        primaries: BTreeMap::new(),
        stats: ClusterStats::default(),
        seed,
        violation: None,
        tracing: std::env::var_os("NONSTOP_SIM_TRACE").is_some(),
    };
    for id in 1..=NODES {
        sim.start_node(id);
    }
    while sim.now < steps {
        sim.now += 1;
        sim.faults();
        sim.deliver();
        for id in 1..=NODES {
            sim.node_step(id);
        }
        if let Some(what) = sim.violation.take() {
            return Err(Violation { seed: sim.seed, step: sim.now as usize, what });
        }
    }
    sim.stats.promotions = sim.primaries.len() as u64;
    Ok(sim.stats)
}
