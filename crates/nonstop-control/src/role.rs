//! The role one node plays in one service, as a pure state machine: the committed record, what
//! the node's data plane observes and the current time go in; actions come out.
//!
//! The node agent (`nonstop-node`) and the failover simulator (`nonstop-sim`) both drive this
//! very code, so a rule changed here is changed for both. A driver owns the sockets, threads
//! and regions; it calls [`ServiceRole::tick`] after every event with what it observes
//! ([`Observed`]), carries out the [`Action`]s in order, and reports back what finished on its
//! own time ([`ServiceRole::on_attached`], [`ServiceRole::on_lease_granted`], ...).
//!
//! * **standby** (a backup, a catching-up holder, or a spare ready to be one): the driver runs a
//!   backup server that follows whichever primary attaches;
//! * **promotion** (the record names this node primary of a new term): the image — exactly the
//!   last checkpoint it held — becomes the primary's region in place;
//! * **primary**: keeps the set of backups whose acknowledgements release output equal to the
//!   record's (plus nodes joining), holds output while the record names fewer than
//!   `min_backups` backups, asks for a lease while it has none, drops a backup whose link died,
//!   and re-protects: first the holders the promotion kept, each rebased atomically so that its
//!   old image stays a checkpoint until the new one is whole, then spares by pre-copy;
//! * **deposed** (the record names another primary): stops releasing at once and gives the
//!   region up; once the driver has let it go the node stands by again.
//!
//! Transitions are taken when the action is emitted; a driver that cannot carry one out says so
//! ([`ServiceRole::on_failed`]) and the role falls back to holding nothing.

use crate::cluster::{Command, NodeId, PromotionReason, ServiceRecord};
use crate::coordinator::{Role, ServiceReport};
use crate::lease::LeaseKeeper;
pub use nonstop_proto::primary::{AttachPayload, Protection};
use nonstop_proto::{CheckpointId, Nanos, Term};
use std::collections::{BTreeMap, BTreeSet};

/// A node that could not make a region resident waits this long before it tries again.
pub const RESIDENT_RETRY_NS: u64 = 1_000_000_000;

/// The fixed settings of one service's role on one node.
#[derive(Clone, Debug)]
pub struct RoleConfig {
    /// The service.
    pub service: String,
    /// This node.
    pub me: NodeId,
    /// A witness votes but holds no region: it never plays a role.
    pub witness: bool,
    /// The nodes that hold regions, in the order spares are tried.
    pub holders: Vec<NodeId>,
    /// The heartbeat interval.
    pub heartbeat_ns: u64,
    /// The failure timeout: a backup whose link is down this long is dropped.
    pub timeout_ns: u64,
    /// The lease length.
    pub lease_ns: u64,
    /// How long a switchover may wait for its target to hold the last checkpoint.
    pub switchover_limit_ns: u64,
    /// Random per process start: lease request numbers never repeat across restarts.
    pub incarnation: u64,
}

/// How a new primary's region starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeFrom {
    /// From the standby's image, exactly the checkpoint it holds.
    Image,
    /// From an empty region: a new service that never released anything.
    Empty,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Propose this command to the control plane.
    Propose(Command),
    /// Map the region and stand by as a backup.
    StandBy,
    /// Serve as primary of `term`, from the standby's image or an empty region.
    Serve {
        /// The term.
        term: Term,
        /// Where the region comes from.
        from: ServeFrom,
    },
    /// Release nothing more and give the region up: the record names `primary` in `term`.
    Depose {
        /// The record's term.
        term: Term,
        /// The record's primary.
        primary: NodeId,
    },
    /// Attach `node` as a backup; report with [`ServiceRole::on_attached`].
    Attach {
        /// The node.
        node: NodeId,
        /// How its image is brought up to date.
        payload: AttachPayload,
    },
    /// Output waits for exactly these nodes, and leaves at all only with `protection`.
    SetRequired {
        /// The nodes whose acknowledgements release output.
        nodes: BTreeSet<NodeId>,
        /// Whether the record names enough backups.
        protection: Protection,
    },
    /// Output may leave until `until` (this role's clock).
    SetLease {
        /// The lease's end.
        until: Nanos,
    },
    /// A switchover: new requests are refused from now on; wait out running transactions,
    /// cut the last checkpoint of this term and report it ([`ServiceRole::on_last_checkpoint`]).
    CutLast,
    /// The switchover did not complete: serve new requests again.
    SwitchoverAbandoned {
        /// Why.
        reason: String,
    },
}

/// What the driver observes at a tick.
pub struct Observed<'a> {
    /// The current time.
    pub now: Nanos,
    /// The committed record (absent: the service is not created yet).
    pub record: Option<&'a ServiceRecord>,
    /// Which nodes the control plane believes up.
    pub alive: &'a dyn Fn(NodeId) -> bool,
    /// The region's address is free: a deposed primary's region has been let go.
    pub region_free: bool,
    /// As standby: the checkpoint the image holds, with the term of the primary that sent it.
    pub standby_held: Option<(Term, CheckpointId)>,
    /// As primary: the checkpoint released (held by every required backup).
    pub primary_held: Option<CheckpointId>,
    /// As primary: the nodes whose attach finished and whose link is still up, with the last
    /// checkpoint each acknowledged.
    pub links: &'a BTreeMap<NodeId, Option<CheckpointId>>,
}

/// Why a switchover request is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SwitchoverRefusal {
    /// The node does not serve the service.
    #[error("this node is not the primary any more; retry")]
    NotPrimary,
    /// The record moved on.
    #[error("this node's term is ending; retry")]
    TermEnding,
    /// The target holds no copy the record counts.
    #[error("{to} is not a backup of {service} (backups: {backups:?}): only a backup holds the state")]
    NotABackup {
        /// The target.
        to: NodeId,
        /// The service.
        service: String,
        /// The record's backups.
        backups: Vec<NodeId>,
    },
    /// One is running.
    #[error("a switchover is already under way")]
    UnderWay,
}

/// Keys of proposals that are repeated at most every so often.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Proposal {
    Add(NodeId),
    Drop(NodeId),
    Barrier,
    Switchover,
}

#[derive(Debug)]
struct Switchover {
    to: NodeId,
    started: Nanos,
    step: SwitchoverStep,
}

/// Where a switchover is: the last checkpoint of the term is asked for, then cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SwitchoverStep {
    /// Asked for, not yet told to the driver.
    CutDue,
    /// [`Action::CutLast`] went out; waiting for [`ServiceRole::on_last_checkpoint`].
    CutAsked,
    /// Cut: promote the target once it holds this checkpoint.
    Cut(CheckpointId),
}

#[derive(Debug)]
struct Duties {
    term: Term,
    attaching: Option<NodeId>,
    /// Attached and required, waiting until they hold everything released before AddBackup,
    /// with the newest record version an `AddBackup` for them was proposed at.
    joining: BTreeMap<NodeId, Option<u64>>,
    lease: LeaseKeeper,
    /// This primary started the service from an empty region (its asks say so until granted).
    fresh: bool,
    required: Option<(u64, BTreeSet<NodeId>, Protection)>,
    /// When each required backup was first seen without a link (or a catching-up holder dead).
    lost_since: BTreeMap<NodeId, Nanos>,
    last_proposal: BTreeMap<Proposal, Nanos>,
    attach_failures: BTreeMap<NodeId, AttachFailures>,
    switchover: Option<Switchover>,
}

/// Failed attaches to one node since its last good one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AttachFailures {
    last: Nanos,
    count: u32,
}

impl AttachFailures {
    /// When the next attach may be tried: a heartbeat after the first failure, doubling up to
    /// the failure timeout. A node that restarts is reported up (its agent heartbeats) some
    /// milliseconds before it listens for a primary; retrying only after a whole timeout would
    /// keep a strict service waiting that long for a copy that is nearly ready.
    fn retry_at(&self, heartbeat_ns: u64, timeout_ns: u64) -> Nanos {
        let wait = heartbeat_ns.saturating_mul(1 << (self.count - 1).min(20)).min(timeout_ns);
        Nanos(self.last.0.saturating_add(wait))
    }
}

#[derive(Debug)]
enum State {
    /// Holds nothing: a witness, a deposed primary whose region is not free yet, or a node
    /// waiting to retry after it lacked memory.
    Idle { retry_at: Option<Nanos> },
    /// Stands by as a backup.
    Standby,
    /// Serves.
    Primary(Box<Duties>),
}

/// The role of one node in one service.
#[derive(Debug)]
pub struct ServiceRole {
    config: RoleConfig,
    state: State,
}

impl ServiceRole {
    /// A role holding nothing until the first tick.
    pub fn new(config: RoleConfig) -> ServiceRole {
        ServiceRole { config, state: State::Idle { retry_at: None } }
    }

    /// The settings.
    pub fn config(&self) -> &RoleConfig {
        &self.config
    }

    /// The term served, if primary.
    pub fn primary_term(&self) -> Option<Term> {
        match &self.state {
            State::Primary(duties) => Some(duties.term),
            _ => None,
        }
    }

    /// This node's heartbeat report.
    pub fn report(&self, record: Option<&ServiceRecord>, observed: &Observed) -> ServiceReport {
        let term_known = record.map_or(Term(0), |r| r.term);
        let (role, term, held) = match &self.state {
            State::Idle { .. } => (Role::Spare, term_known, None),
            State::Standby => match observed.standby_held {
                Some((term, checkpoint)) => {
                    let backup = record.is_some_and(|r| r.backups.contains(&self.config.me) && r.term == term);
                    (if backup { Role::Backup } else { Role::Joining }, term, Some(checkpoint))
                }
                None => (Role::Spare, term_known, None),
            },
            State::Primary(duties) => (Role::Primary, duties.term, observed.primary_held),
        };
        ServiceReport { service: self.config.service.clone(), role, term, held }
    }

    /// Brings the role in line with the record and what the driver observes.
    pub fn tick(&mut self, observed: &Observed) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.config.witness {
            return actions;
        }
        let now = observed.now;
        let Some(record) = observed.record else {
            self.stand_by(observed, &mut actions);
            return actions;
        };
        let wants_primary = record.primary == self.config.me;
        match &mut self.state {
            State::Primary(duties) if !wants_primary || duties.term != record.term => {
                actions.push(Action::Depose { term: record.term, primary: record.primary });
                self.state = State::Idle { retry_at: None };
            }
            State::Primary(duties) if duties.fresh && record.started => {
                // This primary started empty and was never granted a lease, and meanwhile the
                // record says the service's state exists (a previous incarnation of this node
                // added a backup under a lease): that backup holds it, not this region.
                actions.push(Action::Depose { term: record.term, primary: record.primary });
                self.state = State::Idle { retry_at: None };
            }
            State::Primary(_) => self.primary_duties(record, observed, &mut actions),
            State::Standby if wants_primary => match observed.standby_held {
                Some(_) => self.serve(record.term, ServeFrom::Image, now, &mut actions),
                // Never followed a primary: the configured first primary of a new service. One
                // that restarted (the service has history) must not serve an empty region; it
                // reports no region and the leader fails over.
                None if record.may_start_empty() => self.serve(record.term, ServeFrom::Empty, now, &mut actions),
                None => {}
            },
            State::Idle { retry_at } if wants_primary && record.may_start_empty() => {
                if observed.region_free && retry_at.is_none_or(|at| now >= at) {
                    self.serve(record.term, ServeFrom::Empty, now, &mut actions);
                }
            }
            State::Standby => {}
            State::Idle { .. } => self.stand_by(observed, &mut actions),
        }
        actions
    }

    /// The last action of the kind given could not be carried out: the node holds nothing.
    /// `backoff`: it lacked memory, so it waits [`RESIDENT_RETRY_NS`] before trying again.
    pub fn on_failed(&mut self, now: Nanos, backoff: bool) {
        let retry_at = backoff.then(|| Nanos(now.0 + RESIDENT_RETRY_NS));
        self.state = State::Idle { retry_at };
    }

    /// An attach asked for by [`Action::Attach`] finished (`ok`: the node holds this primary's
    /// checkpoint).
    pub fn on_attached(&mut self, node: NodeId, ok: bool, now: Nanos) {
        let State::Primary(duties) = &mut self.state else { return };
        if duties.attaching != Some(node) {
            return;
        }
        duties.attaching = None;
        if ok {
            duties.joining.insert(node, None);
            duties.required = None;
            duties.attach_failures.remove(&node);
        } else {
            let failures = duties.attach_failures.entry(node).or_insert(AttachFailures { last: now, count: 0 });
            *failures = AttachFailures { last: now, count: failures.count + 1 };
        }
    }

    /// A `GrantLease` of this node's in `term` answering `request` was applied; returns the
    /// lease action if it extends the lease.
    pub fn on_lease_granted(&mut self, term: Term, request: u64) -> Option<Action> {
        let State::Primary(duties) = &mut self.state else { return None };
        if duties.term != term {
            return None;
        }
        let until = duties.lease.granted(request, self.config.lease_ns)?;
        // Started: later asks must not claim an empty start (they would be refused).
        duties.fresh = false;
        Some(Action::SetLease { until })
    }

    /// An operator asks to move the primary role to `to`. On `Ok` the driver refuses new
    /// requests; the next tick asks it to cut the last checkpoint.
    pub fn begin_switchover(
        &mut self,
        record: Option<&ServiceRecord>,
        to: NodeId,
        now: Nanos,
    ) -> Result<(), SwitchoverRefusal> {
        let State::Primary(duties) = &mut self.state else { return Err(SwitchoverRefusal::NotPrimary) };
        let record = record
            .filter(|r| r.primary == self.config.me && r.term == duties.term)
            .ok_or(SwitchoverRefusal::TermEnding)?;
        if !record.backups.contains(&to) {
            return Err(SwitchoverRefusal::NotABackup {
                to,
                service: self.config.service.clone(),
                backups: record.backups.clone(),
            });
        }
        if duties.switchover.is_some() {
            return Err(SwitchoverRefusal::UnderWay);
        }
        duties.switchover = Some(Switchover { to, started: now, step: SwitchoverStep::CutDue });
        Ok(())
    }

    /// The last checkpoint of this term was cut (after [`Action::CutLast`]).
    pub fn on_last_checkpoint(&mut self, checkpoint: CheckpointId) {
        if let State::Primary(duties) = &mut self.state
            && let Some(switchover) = &mut duties.switchover
        {
            switchover.step = SwitchoverStep::Cut(checkpoint);
        }
    }

    fn stand_by(&mut self, observed: &Observed, actions: &mut Vec<Action>) {
        if let State::Idle { retry_at } = self.state
            && observed.region_free
            && retry_at.is_none_or(|at| observed.now >= at)
        {
            actions.push(Action::StandBy);
            self.state = State::Standby;
        }
    }

    fn serve(&mut self, term: Term, from: ServeFrom, now: Nanos, actions: &mut Vec<Action>) {
        actions.push(Action::Serve { term, from });
        let fresh = from == ServeFrom::Empty;
        let mut lease = LeaseKeeper::new(self.config.incarnation);
        let request = lease.ask(now);
        let service = self.config.service.clone();
        actions.push(Action::Propose(Command::GrantLease { service, term, node: self.config.me, request, fresh }));
        self.state = State::Primary(Box::new(Duties {
            term,
            attaching: None,
            joining: BTreeMap::new(),
            lease,
            fresh,
            required: None,
            lost_since: BTreeMap::new(),
            last_proposal: BTreeMap::new(),
            attach_failures: BTreeMap::new(),
            switchover: None,
        }));
    }

    fn primary_duties(&mut self, record: &ServiceRecord, observed: &Observed, actions: &mut Vec<Action>) {
        let State::Primary(duties) = &mut self.state else { return };
        let config = &self.config;
        let (now, links, name, term) = (observed.now, observed.links, config.service.as_str(), record.term);
        // The driver's links are those of finished attaches, and only while they are up.
        let up = |node: &NodeId| links.contains_key(node);
        duties.joining.retain(|node, _| !record.backups.contains(node));
        // A joining node whose link died stops being waited for only once no AddBackup for it
        // can still apply: never proposed, or proposed at a version the record has passed.
        // Otherwise move the version on with a barrier and keep waiting until it applied.
        let mut barrier = false;
        for (node, proposed) in duties.joining.clone() {
            if up(&node) {
                continue;
            }
            if proposed.is_none_or(|version| record.version > version) {
                duties.joining.remove(&node);
                duties.required = None;
            } else {
                barrier = true;
            }
        }
        // The required set: the record's backups and the joining ones; output leaves at all
        // only while the record names enough backups.
        let nodes: BTreeSet<NodeId> = record.backups.iter().chain(duties.joining.keys()).copied().collect();
        let protection = if record.protected() { Protection::Enough } else { Protection::TooFew };
        let required = (record.version, nodes.clone(), protection);
        if duties.required.as_ref() != Some(&required) {
            actions.push(Action::SetRequired { nodes, protection });
            duties.required = Some(required);
        }
        let last_proposal = &mut duties.last_proposal;
        let mut propose = |actions: &mut Vec<Action>, key: Proposal, command: Command, every: u64| {
            if last_proposal.get(&key).is_none_or(|at| now.0.saturating_sub(at.0) >= every) {
                last_proposal.insert(key, now);
                actions.push(Action::Propose(command));
                true
            } else {
                false
            }
        };
        // A proposal is lost when leadership moves (forwarded to a leader that died), and what
        // waits on it (a dead backup's drop, which output waits for) would wait as long as the
        // retry: ask again every other heartbeat, as for the lease. A repeat that arrives after
        // the first applied is refused by the record's rules and changes nothing.
        let repropose = 2 * config.heartbeat_ns;
        // A switchover: cut the last checkpoint, then promote the target once it holds it.
        if let Some(switchover) = &mut duties.switchover {
            if switchover.step == SwitchoverStep::CutDue {
                switchover.step = SwitchoverStep::CutAsked;
                actions.push(Action::CutLast);
            } else if now.0.saturating_sub(switchover.started.0) > config.switchover_limit_ns {
                let limit_ms = config.switchover_limit_ns / 1_000_000;
                let reason = format!("{} did not hold the last checkpoint within {limit_ms} ms", switchover.to);
                actions.push(Action::SwitchoverAbandoned { reason });
                duties.switchover = None;
            } else if let SwitchoverStep::Cut(last) = switchover.step
                && observed.primary_held.is_some_and(|held| held >= last)
            {
                let command = Command::Promote {
                    service: name.to_string(),
                    from_term: term,
                    node: switchover.to,
                    checkpoint: last,
                    reason: PromotionReason::Switchover,
                };
                propose(actions, Proposal::Switchover, command, config.heartbeat_ns * 5);
            }
        }
        // Joining nodes that hold everything released are added to the record.
        let held = observed.primary_held;
        let mut adding = Vec::new();
        for (node, proposed) in &duties.joining {
            let acked = links.get(node).copied().flatten();
            if up(node) && acked.is_some() && acked >= held {
                // An add proposed at a version the record has passed can no longer apply (an
                // add of another node came first): propose it again at once.
                let every = if proposed.is_some_and(|v| v < record.version) { 0 } else { repropose };
                let command =
                    Command::AddBackup { service: name.to_string(), term, node: *node, version: record.version };
                if propose(actions, Proposal::Add(*node), command, every) {
                    adding.push(*node);
                }
            }
        }
        for node in adding {
            let proposed = duties.joining.entry(node).or_insert(None);
            *proposed = Some(proposed.map_or(record.version, |p| p.max(record.version)));
        }
        if barrier {
            propose(actions, Proposal::Barrier, Command::Barrier { service: name.to_string(), term }, repropose);
        }
        // A backup whose link is down past the timeout is dropped from the record, and at once
        // if the control plane finds it dead too (its connection closed, so its process is
        // gone, or it was silent past the timeout): output waits for it until then, and a
        // backup's crash would otherwise hold every reply for the timeout where a primary's
        // costs milliseconds. So is a catching-up holder the control plane believes dead for
        // the timeout (output does not wait for it).
        let catching_up = record.catching_up.iter().map(|c| c.node);
        for node in record.backups.iter().copied().chain(catching_up) {
            let alive = (observed.alive)(node);
            let backup = record.backups.contains(&node);
            if (backup && up(&node)) || (!backup && alive) {
                duties.lost_since.remove(&node);
                continue;
            }
            let since = *duties.lost_since.entry(node).or_insert(now);
            if (backup && !alive) || now.0.saturating_sub(since.0) >= config.timeout_ns {
                let command = Command::DropBackup { service: name.to_string(), term, node };
                propose(actions, Proposal::Drop(node), command, repropose);
            }
        }
        // Keep a lease: output leaves only while it lasts. Until one is granted, ask again
        // every other heartbeat: a proposal is lost when leadership moves.
        if duties.lease.should_ask(now, config.lease_ns, 2 * config.heartbeat_ns) {
            let request = duties.lease.ask(now);
            let fresh = duties.fresh;
            let command = Command::GrantLease { service: name.to_string(), term, node: config.me, request, fresh };
            actions.push(Action::Propose(command));
        }
        // Re-protection, one node at a time: the holders the promotion kept first (rebased:
        // their image stays a checkpoint until the new one is whole), then spares.
        let have = record.backups.len() + duties.joining.len();
        if have >= record.backups_wanted as usize || duties.attaching.is_some() {
            return;
        }
        let eligible = |node: &NodeId| {
            *node != config.me
                && !record.backups.contains(node)
                && !duties.joining.contains_key(node)
                && (observed.alive)(*node)
                && duties
                    .attach_failures
                    .get(node)
                    .is_none_or(|failures| now >= failures.retry_at(config.heartbeat_ns, config.timeout_ns))
        };
        let kept = record.catching_up.iter().map(|c| c.node).find(|n| eligible(n));
        let next = match kept {
            Some(node) => Some((node, AttachPayload::Rebase)),
            None => config.holders.iter().copied().find(|n| eligible(n)).map(|node| (node, AttachPayload::PreCopy)),
        };
        if let Some((node, payload)) = next {
            duties.attaching = Some(node);
            actions.push(Action::Attach { node, payload });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ClusterState, PromotionReason};

    const MS: u64 = 1_000_000;

    fn role(me: u64) -> ServiceRole {
        ServiceRole::new(RoleConfig {
            service: "bank".into(),
            me: NodeId(me),
            witness: false,
            holders: vec![NodeId(1), NodeId(2), NodeId(3)],
            heartbeat_ns: 10 * MS,
            timeout_ns: 200 * MS,
            lease_ns: 400 * MS,
            switchover_limit_ns: 5000 * MS,
            incarnation: 7,
        })
    }

    fn tick(
        role: &mut ServiceRole,
        record: &ServiceRecord,
        held: Option<(Term, CheckpointId)>,
        now: u64,
    ) -> Vec<Action> {
        tick_with(role, record, held, now, &BTreeMap::new())
    }

    fn tick_with(
        role: &mut ServiceRole,
        record: &ServiceRecord,
        held: Option<(Term, CheckpointId)>,
        now: u64,
        links: &BTreeMap<NodeId, Option<CheckpointId>>,
    ) -> Vec<Action> {
        role.tick(&Observed {
            now: Nanos(now * MS),
            record: Some(record),
            alive: &|_| true,
            region_free: true,
            standby_held: held,
            primary_held: None,
            links,
        })
    }

    /// Two backups, node 1 primary of term 1; then node 2 promoted from it.
    fn promoted() -> ServiceRecord {
        promoted_state().service("bank").unwrap().clone()
    }

    fn promoted_state() -> ClusterState {
        let mut state = ClusterState::default();
        let bank = || "bank".to_string();
        let commands = [
            Command::CreateService { service: bank(), primary: NodeId(1), backups_wanted: 2, min_backups: 1 },
            Command::AddBackup { service: bank(), term: Term(1), node: NodeId(2), version: 1 },
            Command::AddBackup { service: bank(), term: Term(1), node: NodeId(3), version: 2 },
            Command::Promote {
                service: bank(),
                from_term: Term(1),
                node: NodeId(2),
                checkpoint: CheckpointId(9),
                reason: PromotionReason::Failover,
            },
        ];
        for (i, command) in commands.into_iter().enumerate() {
            state.apply(i as u64 + 1, command).outcome.unwrap();
        }
        state
    }

    #[test]
    fn a_promoted_standby_serves_its_image_holds_output_and_rebases_the_kept_holder_first() {
        let record = promoted();
        let mut node2 = role(2);
        assert_eq!(tick(&mut node2, &record, None, 0), vec![Action::StandBy]);
        let actions = tick(&mut node2, &record, Some((Term(1), CheckpointId(9))), 1);
        assert_eq!(actions[0], Action::Serve { term: Term(2), from: ServeFrom::Image });
        assert!(matches!(&actions[1], Action::Propose(Command::GrantLease { fresh: false, .. })));
        let actions = tick(&mut node2, &record, None, 2);
        let required = Action::SetRequired { nodes: BTreeSet::new(), protection: Protection::TooFew };
        assert_eq!(actions[0], required, "no backup in the record yet: replies are held");
        let attach = Action::Attach { node: NodeId(3), payload: AttachPayload::Rebase };
        assert!(actions.contains(&attach), "{actions:?}");
        assert!(
            !tick(&mut node2, &record, None, 3).iter().any(|a| matches!(a, Action::Attach { .. })),
            "one at a time"
        );
        node2.on_attached(NodeId(3), true, Nanos(4 * MS));
        let links = [(NodeId(3), Some(CheckpointId(10)))].into();
        let actions = tick_with(&mut node2, &record, None, 5, &links);
        let required = Action::SetRequired { nodes: [NodeId(3)].into(), protection: Protection::TooFew };
        assert_eq!(actions[0], required, "required once it holds the checkpoint, counted once added");
        let spare = Action::Attach { node: NodeId(1), payload: AttachPayload::PreCopy };
        assert!(actions.contains(&spare), "then a spare, by pre-copy: {actions:?}");
        let add =
            Command::AddBackup { service: "bank".into(), term: Term(2), node: NodeId(3), version: record.version };
        assert!(actions.contains(&Action::Propose(add)), "and it is added: {actions:?}");
    }

    /// A backup whose link went down is dropped from the record a failure timeout later if
    /// the control plane still finds it alive (a glitch may pass), and at once if it finds it
    /// dead: output waits for the drop, and a backup's crash must not hold every reply for the
    /// timeout when a primary's costs milliseconds.
    #[test]
    fn a_dead_backup_is_dropped_at_once_and_a_silent_link_after_the_timeout() {
        let mut state = promoted_state();
        let add =
            Command::AddBackup { service: "bank".into(), term: Term(2), node: NodeId(3), version: promoted().version };
        state.apply(10, add).outcome.unwrap();
        let record = state.service("bank").unwrap().clone();
        assert_eq!(record.backups, vec![NodeId(3)]);
        let drop = Action::Propose(Command::DropBackup { service: "bank".into(), term: Term(2), node: NodeId(3) });
        let no_links = BTreeMap::new();
        let tick_seeing = |role: &mut ServiceRole, at: u64, alive: &dyn Fn(NodeId) -> bool| {
            role.tick(&Observed {
                now: Nanos(at * MS),
                record: Some(&record),
                alive,
                region_free: true,
                standby_held: Some((Term(1), CheckpointId(9))),
                primary_held: None,
                links: &no_links,
            })
        };
        let serving = || {
            let mut node2 = role(2);
            tick_seeing(&mut node2, 0, &|_| true);
            let served = tick_seeing(&mut node2, 1, &|_| true);
            assert_eq!(served[0], Action::Serve { term: Term(2), from: ServeFrom::Image });
            node2
        };
        // Link down, node 3 still heard: a timeout's grace.
        let mut node2 = serving();
        assert!(!tick_seeing(&mut node2, 10, &|_| true).contains(&drop));
        assert!(!tick_seeing(&mut node2, 209, &|_| true).contains(&drop), "within the timeout");
        assert!(tick_seeing(&mut node2, 210, &|_| true).contains(&drop), "after it");
        // Link down and node 3's process gone: at once.
        let mut node2 = serving();
        let dead = |node: NodeId| node != NodeId(3);
        assert!(tick_seeing(&mut node2, 10, &dead).contains(&drop));
        // Not asked again before two heartbeats (the first may have gone to a dead leader),
        // then again.
        assert!(!tick_seeing(&mut node2, 29, &dead).contains(&drop));
        assert!(tick_seeing(&mut node2, 30, &dead).contains(&drop));
    }

    #[test]
    fn a_failed_attach_is_tried_again_a_heartbeat_later_then_less_and_less_often() {
        let record = promoted();
        let mut node2 = role(2);
        tick(&mut node2, &record, None, 0);
        tick(&mut node2, &record, Some((Term(1), CheckpointId(9))), 1);
        // Node 1 (the spare) is down: only node 3, the kept holder, is tried.
        let links = BTreeMap::new();
        let attaches = |node2: &mut ServiceRole, at: u64| {
            let observed = Observed {
                now: Nanos(at * MS),
                record: Some(&record),
                alive: &|node| node != NodeId(1),
                region_free: true,
                standby_held: None,
                primary_held: None,
                links: &links,
            };
            node2.tick(&observed).iter().any(|a| matches!(a, Action::Attach { node: NodeId(3), .. }))
        };
        assert!(attaches(&mut node2, 2));
        // Refused (node 3 is up but not listening yet): tried again 10 ms after, then 20 ms
        // after the next failure, then 40, ..., never more than the failure timeout apart.
        let mut failed_at = 3;
        for wait in [10, 20, 40, 80, 160, 200, 200] {
            node2.on_attached(NodeId(3), false, Nanos(failed_at * MS));
            assert!(!attaches(&mut node2, failed_at + wait - 1), "not before {wait} ms");
            assert!(attaches(&mut node2, failed_at + wait), "after {wait} ms");
            failed_at += wait + 1;
        }
    }

    #[test]
    fn a_fresh_primary_steps_down_when_the_record_says_the_state_lives_elsewhere() {
        let mut state = ClusterState::default();
        let create =
            Command::CreateService { service: "bank".into(), primary: NodeId(1), backups_wanted: 1, min_backups: 0 };
        state.apply(1, create).outcome.unwrap();
        let mut node1 = role(1);
        let record = state.service("bank").unwrap().clone();
        let actions = tick(&mut node1, &record, None, 1);
        assert_eq!(actions[0], Action::Serve { term: Term(1), from: ServeFrom::Empty });
        // An earlier incarnation's lease and backup, applied only now: this region is not it.
        let lease =
            Command::GrantLease { service: "bank".into(), term: Term(1), node: NodeId(1), request: 1, fresh: true };
        state.apply(2, lease).outcome.unwrap();
        let record = state.service("bank").unwrap().clone();
        assert_eq!(tick(&mut node1, &record, None, 2), vec![Action::Depose { term: Term(1), primary: NodeId(1) }]);
        assert_eq!(node1.primary_term(), None);
    }
}
