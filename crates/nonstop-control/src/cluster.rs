//! The replicated cluster state: for every service, its term, its primary and the backups whose
//! acknowledgements its primary needs before it releases output.
//!
//! Every node applies the same committed [`Command`]s in the same order, so [`ClusterState::apply`]
//! must be deterministic: no clocks, no randomness, no I/O. A command that no longer fits the
//! state (a promotion from a term that has since ended, a backup that is not one) changes nothing
//! and reports a [`Rejection`]; proposers learn the outcome by watching what was applied.
//!
//! The safety rules live here, in one place:
//!
//! * a promotion names the term it ends; only the current term can be ended, so two nodes can
//!   never both be promoted from the same reign;
//! * only a node listed as a backup can be promoted: the primary needed that node's
//!   acknowledgement for every reply it released, so the promoted node holds every released
//!   checkpoint; or, while the term has released nothing (fewer than `min_backups` backups ever
//!   held its checkpoints), a holder the promotion kept from an earlier term ([`CatchingUp`]),
//!   whose image holds everything released before the term began;
//! * a promotion keeps every other backup as such a holder of the new term, so that a service
//!   with k backups still has k - 1 copies after its primary died, and the next primary brings
//!   them to its checkpoint instead of copying its whole region to spares;
//! * output needs `min_backups` backups in the record ([`ServiceRecord::protected`]): a primary
//!   with fewer holds its replies, so that a term with catching-up holders released nothing;
//! * the set of backups changes only through committed commands, proposed by the primary of the
//!   current term, so a primary never stops waiting for a backup the control plane could still
//!   promote.

use nonstop_proto::{CheckpointId, Term};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// A node's number in the cluster; also its Raft id, so never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {}", self.0)
    }
}

/// Why a primary role moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PromotionReason {
    /// The primary was suspected dead.
    Failover,
    /// An operator moved the role (`nonstop switchover`); the old primary handed over cleanly.
    Switchover,
}

/// The last change of a service's primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The primary of the ended term.
    pub from: NodeId,
    /// The promoted node.
    pub to: NodeId,
    /// The term that began.
    pub term: Term,
    /// The checkpoint the promoted node resumed from, as it reported.
    pub checkpoint: CheckpointId,
    /// Failover or switchover.
    pub reason: PromotionReason,
    /// Raft log index of the promotion: orders promotions across services.
    pub index: u64,
}

/// One service as the control plane knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The current reign; every replication frame carries it.
    pub term: Term,
    /// The node that may release output in this term.
    pub primary: NodeId,
    /// The nodes whose acknowledgement the primary needs before it releases output. Only these
    /// can be promoted.
    pub backups: Vec<NodeId>,
    /// Holders of an image of an earlier term that this term's primary brings to its own
    /// checkpoint: they become backups (through [`Command::AddBackup`]) once they hold it.
    /// Promotable while the term has released nothing; cleared once it may have (the record
    /// reached `min_backups` backups), when they are spares like any other.
    pub catching_up: Vec<CatchingUp>,
    /// How many backups the service should have; re-protection adds spares up to this.
    pub backups_wanted: u8,
    /// Output leaves only while at least this many backups are in the record (and all of them
    /// hold it). `backups_wanted - 1` by default: k backups survive k failures.
    pub min_backups: u8,
    /// Bumps on every change to this record but a lease's (which changes no role).
    pub version: u64,
    /// The last change of primary, if any.
    pub last_promotion: Option<Promotion>,
    /// How many failovers (not switchovers) the service has had.
    pub failovers: u64,
    /// A primary was granted a lease while the record named its minimum of backups (or the
    /// record reached that minimum), so output may have been released: the service's state
    /// exists somewhere and must never be started afresh.
    pub started: bool,
    /// A lease was granted in this term: with the minimum of backups in the record, output
    /// may leave.
    pub leased: bool,
}

/// A node a promotion kept as a holder of the new term: its image is a checkpoint of
/// `image_term` (or of a later term, once the current primary rebased it), which holds every
/// reply released before the current term began.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchingUp {
    /// The holder.
    pub node: NodeId,
    /// The term of the image it held when it was kept: an image of an older term (sent by a
    /// deposed primary to a restarted node) may lack released replies and is never promoted.
    pub image_term: Term,
}

impl ServiceRecord {
    /// True if the configured first primary may start the service from an empty region: no
    /// output can have left yet.
    pub fn may_start_empty(&self) -> bool {
        !self.started && self.last_promotion.is_none()
    }

    /// Whether the primary may release output: the record names at least `min_backups`
    /// backups. Below that (a lost backup, a promotion) replies are held, not released with
    /// fewer copies than configured.
    pub fn protected(&self) -> bool {
        self.backups.len() >= self.min_backups as usize
    }

    /// Whether `node`, reporting an image of `held_term`, may be promoted: a backup holding a
    /// checkpoint of this term, or a catching-up holder whose image is of its kept term or
    /// newer.
    pub fn promotable(&self, node: NodeId, held_term: Term) -> bool {
        if self.backups.contains(&node) {
            return held_term == self.term;
        }
        self.catching_up.iter().any(|c| c.node == node && held_term >= c.image_term)
    }

    /// Whether `node` holds a copy the record counts: a backup or a catching-up holder.
    pub fn holds(&self, node: NodeId) -> bool {
        self.backups.contains(&node) || self.catching_up.iter().any(|c| c.node == node)
    }

    /// Fewer backups than wanted: the degraded window after a failover or a lost backup.
    pub fn degraded(&self) -> bool {
        self.backups.len() < self.backups_wanted as usize
    }
}

/// A change to the cluster state, proposed by a node and applied by all once committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates a service, if it does not exist yet (bootstrap proposes this from every node's
    /// config; only the first one applied counts).
    CreateService {
        /// The service's name.
        service: String,
        /// Its first primary.
        primary: NodeId,
        /// Backups wanted.
        backups_wanted: u8,
        /// Backups the record must name for output to leave (at most `backups_wanted`).
        min_backups: u8,
    },
    /// Ends `from_term` and makes `node`, a backup of it (or a catching-up holder while the
    /// term released nothing), the primary of the next term.
    Promote {
        /// The service.
        service: String,
        /// The term being ended; must be the current one.
        from_term: Term,
        /// The backup to promote.
        node: NodeId,
        /// The checkpoint it holds and will resume from.
        checkpoint: CheckpointId,
        /// Failover or switchover.
        reason: PromotionReason,
    },
    /// The primary of `term` starts to require `node`'s acknowledgements: `node` caught up by
    /// re-protection (a spare, or a catching-up holder) and now holds every released checkpoint. Applies only to the record at
    /// `version`: a primary that stops waiting for `node` first moves the version on (with a
    /// [`Command::Barrier`]), so an old proposal can never add a node it no longer waits for.
    AddBackup {
        /// The service.
        service: String,
        /// The primary's term.
        term: Term,
        /// The new backup.
        node: NodeId,
        /// The record's version the primary saw.
        version: u64,
    },
    /// Moves the record's version on, invalidating `AddBackup` proposals still in flight.
    Barrier {
        /// The service.
        service: String,
        /// The primary's term.
        term: Term,
    },
    /// The primary of `term` stops requiring `node`'s acknowledgements (the backup was lost),
    /// or gives up on a catching-up holder that is gone. Until this is applied the primary
    /// waits for `node`, so the control plane can still promote `node` without losing anything.
    DropBackup {
        /// The service.
        service: String,
        /// The primary's term.
        term: Term,
        /// The backup to drop.
        node: NodeId,
    },
    /// The primary of `term` asks to release output for a while longer (a lease). The lease's
    /// time is measured by the holder's clock from when it asked, not here; the log only orders
    /// it. `request` names the ask, so that a grant replayed from the log after a restart is
    /// never taken for a new one.
    GrantLease {
        /// The service.
        service: String,
        /// The primary's term.
        term: Term,
        /// The primary.
        node: NodeId,
        /// The ask this answers (unique per process incarnation).
        request: u64,
        /// The primary starts the service from an empty region: refused once output may have
        /// left, so a node whose log is behind can never serve an empty region.
        fresh: bool,
    },
}

impl Command {
    /// The service the command is about.
    pub fn service(&self) -> &str {
        match self {
            Command::CreateService { service, .. }
            | Command::Promote { service, .. }
            | Command::AddBackup { service, .. }
            | Command::Barrier { service, .. }
            | Command::DropBackup { service, .. }
            | Command::GrantLease { service, .. } => service,
        }
    }
}

/// Why a committed command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum Rejection {
    /// The command names a service nobody created.
    #[error("no service {0:?}: create it first (it must be in every node's config)")]
    UnknownService(String),
    /// The service exists already (a repeated bootstrap; harmless).
    #[error("service {0:?} exists already")]
    ServiceExists(String),
    /// The command was proposed for a term that has ended.
    #[error("{service}: the command is for {proposed}, but the service is in {current}")]
    StaleTerm {
        /// The service.
        service: String,
        /// The term in the command.
        proposed: Term,
        /// The service's term.
        current: Term,
    },
    /// A primary asked to start the service empty, but it started before.
    #[error("{0}: the service started before; its state lives on another node")]
    AlreadyStarted(String),
    /// An `AddBackup` proposed against a record that has changed since.
    #[error("{service}: the command is for version {proposed} of the record, which is at {current}")]
    StaleVersion {
        /// The service.
        service: String,
        /// The version in the command.
        proposed: u64,
        /// The record's.
        current: u64,
    },
    /// The node does not have the role the command needs.
    #[error("{service}: {node} is not {role}")]
    WrongRole {
        /// The service.
        service: String,
        /// The node.
        node: NodeId,
        /// What it should have been ("a backup", "the primary", "a spare").
        role: &'static str,
    },
}

/// What applying one command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Raft log index of the command.
    pub index: u64,
    /// The command.
    pub command: Command,
    /// `Ok` if it changed the state, the reason otherwise.
    pub outcome: Result<(), Rejection>,
}

/// Every service's record, as of a log index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    services: BTreeMap<String, ServiceRecord>,
    applied_index: u64,
}

impl ClusterState {
    /// The record of `service`.
    pub fn service(&self, service: &str) -> Option<&ServiceRecord> {
        self.services.get(service)
    }

    /// All services by name.
    pub fn services(&self) -> impl Iterator<Item = (&str, &ServiceRecord)> {
        self.services.iter().map(|(name, record)| (name.as_str(), record))
    }

    /// The log index of the last applied command.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Applies the command committed at `index`. Deterministic: every node gets the same result.
    ///
    /// ```
    /// use nonstop_control::cluster::{ClusterState, Command, NodeId, PromotionReason};
    /// use nonstop_proto::{CheckpointId, Term};
    /// let mut state = ClusterState::default();
    /// let create =
    ///     Command::CreateService { service: "bank".into(), primary: NodeId(1), backups_wanted: 1, min_backups: 0 };
    /// state.apply(1, create).outcome.unwrap();
    /// let add = Command::AddBackup { service: "bank".into(), term: Term(1), node: NodeId(2), version: 1 };
    /// state.apply(2, add).outcome.unwrap();
    /// let promote = |node| Command::Promote {
    ///     service: "bank".into(), from_term: Term(1), node, checkpoint: CheckpointId(9),
    ///     reason: PromotionReason::Failover,
    /// };
    /// state.apply(3, promote(NodeId(2))).outcome.unwrap();
    /// // A second promotion from the same term is refused: one primary per term.
    /// assert!(state.apply(4, promote(NodeId(3))).outcome.is_err());
    /// assert_eq!(state.service("bank").unwrap().primary, NodeId(2));
    /// ```
    pub fn apply(&mut self, index: u64, command: Command) -> Applied {
        self.applied_index = self.applied_index.max(index);
        let outcome = self.apply_inner(index, &command);
        Applied { index, command, outcome }
    }

    fn apply_inner(&mut self, index: u64, command: &Command) -> Result<(), Rejection> {
        let name = command.service();
        if let Command::CreateService { service, primary, backups_wanted, min_backups } = command {
            if self.services.contains_key(service) {
                return Err(Rejection::ServiceExists(service.clone()));
            }
            let record = ServiceRecord {
                term: Term(1),
                primary: *primary,
                backups: Vec::new(),
                catching_up: Vec::new(),
                backups_wanted: *backups_wanted,
                min_backups: (*min_backups).min(*backups_wanted),
                version: 1,
                last_promotion: None,
                failovers: 0,
                started: false,
                leased: false,
            };
            self.services.insert(service.clone(), record);
            return Ok(());
        }
        let record = self.services.get_mut(name).ok_or_else(|| Rejection::UnknownService(name.to_string()))?;
        let term_of = |term: Term| -> Result<(), Rejection> {
            if term == record.term {
                Ok(())
            } else {
                Err(Rejection::StaleTerm { service: name.to_string(), proposed: term, current: record.term })
            }
        };
        let wrong_role =
            |node: NodeId, role: &'static str| Rejection::WrongRole { service: name.to_string(), node, role };
        match command {
            Command::CreateService { .. } => unreachable!("handled above"),
            Command::Promote { from_term, node, checkpoint, reason, .. } => {
                term_of(*from_term)?;
                if !record.holds(*node) {
                    return Err(wrong_role(*node, "a backup"));
                }
                let promotion = Promotion {
                    from: record.primary,
                    to: *node,
                    term: Term(from_term.0 + 1),
                    checkpoint: *checkpoint,
                    reason: *reason,
                    index,
                };
                // Every other holder stays one: the backups of the ended term hold everything it
                // released, and the catching-up holders (there are some only while the ended
                // term released nothing) everything released before it. The new primary brings
                // each to its own checkpoint; until one holds it, it counts for nothing but a
                // promotion while the new term has released nothing. Without a minimum of
                // backups the new primary may release alone at once, so nothing is kept.
                let ended = record.term;
                let mut kept: Vec<CatchingUp> = record
                    .backups
                    .iter()
                    .map(|b| CatchingUp { node: *b, image_term: ended })
                    .chain(record.catching_up.iter().copied())
                    .filter(|c| c.node != *node)
                    .collect();
                if record.min_backups == 0 {
                    kept.clear();
                }
                record.backups.clear();
                record.catching_up = kept;
                record.leased = false;
                record.term = promotion.term;
                record.primary = *node;
                record.last_promotion = Some(promotion);
                if *reason == PromotionReason::Failover {
                    record.failovers += 1;
                }
            }
            Command::AddBackup { term, node, version, .. } => {
                term_of(*term)?;
                if *version != record.version {
                    return Err(Rejection::StaleVersion {
                        service: name.to_string(),
                        proposed: *version,
                        current: record.version,
                    });
                }
                if *node == record.primary || record.backups.contains(node) {
                    return Err(wrong_role(*node, "a spare"));
                }
                record.backups.push(*node);
                record.catching_up.retain(|c| c.node != *node);
                if record.protected() {
                    // From here the term may release output the holders' images lack, and once
                    // leased too, the service's state exists: it is never started empty again.
                    record.catching_up.clear();
                    record.started |= record.leased;
                }
            }
            Command::Barrier { term, .. } => term_of(*term)?,
            Command::DropBackup { term, node, .. } => {
                term_of(*term)?;
                if !record.holds(*node) {
                    return Err(wrong_role(*node, "a backup"));
                }
                record.backups.retain(|b| b != node);
                record.catching_up.retain(|c| c.node != *node);
            }
            Command::GrantLease { term, node, fresh, .. } => {
                term_of(*term)?;
                if *node != record.primary {
                    return Err(wrong_role(*node, "the primary"));
                }
                if *fresh && record.started {
                    return Err(Rejection::AlreadyStarted(name.to_string()));
                }
                // The lease runs on the holder's clock and its grant is this entry's place in the
                // log; the record only remembers that output may have left, which needs the
                // minimum of backups too (until then a restarted first primary may start over).
                // The version is left alone: it orders changes of the backups, and a grant
                // landing between a primary's AddBackup and its commit must not refuse it.
                record.leased = true;
                record.started |= record.protected();
                return Ok(());
            }
        }
        record.version += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bank() -> ClusterState {
        let mut state = ClusterState::default();
        let create =
            Command::CreateService { service: "bank".into(), primary: NodeId(1), backups_wanted: 2, min_backups: 1 };
        state.apply(1, create).outcome.unwrap();
        for node in [2, 3] {
            let add =
                Command::AddBackup { service: "bank".into(), term: Term(1), node: NodeId(node), version: node - 1 };
            state.apply(1 + node, add).outcome.unwrap();
        }
        state
    }

    fn promote(term: u64, node: u64) -> Command {
        Command::Promote {
            service: "bank".into(),
            from_term: Term(term),
            node: NodeId(node),
            checkpoint: CheckpointId(7),
            reason: PromotionReason::Failover,
        }
    }

    #[test]
    fn promotion_moves_the_role_and_starts_a_term() {
        let mut state = bank();
        state.apply(10, promote(1, 3)).outcome.unwrap();
        let record = state.service("bank").unwrap();
        assert_eq!((record.term, record.primary, record.failovers), (Term(2), NodeId(3), 1));
        assert!(record.backups.is_empty(), "the others must first hold the new primary's checkpoint");
        assert_eq!(record.catching_up, vec![CatchingUp { node: NodeId(2), image_term: Term(1) }]);
        assert!(!record.protected(), "with min_backups = 1 the new primary holds its replies");
        assert_eq!(record.last_promotion.unwrap().from, NodeId(1));
    }

    /// Two failures one after another: the second promotion takes the holder the first one
    /// kept, as long as the term it ends released nothing.
    #[test]
    fn a_kept_holder_is_promoted_while_the_new_term_released_nothing() {
        let mut state = bank();
        state.apply(10, promote(1, 3)).outcome.unwrap();
        let record = state.service("bank").unwrap();
        assert!(record.promotable(NodeId(2), Term(1)));
        assert!(!record.promotable(NodeId(2), Term(0)), "an image older than the one kept may lack replies");
        assert!(!record.promotable(NodeId(1), Term(1)), "the dead primary holds nothing the record counts");
        state.apply(11, promote(2, 2)).outcome.unwrap();
        let record = state.service("bank").unwrap();
        assert_eq!((record.term, record.primary), (Term(3), NodeId(2)));
        assert!(record.catching_up.is_empty() && record.backups.is_empty());
    }

    #[test]
    fn once_the_term_may_release_the_kept_holders_are_spares() {
        let mut state = ClusterState::default();
        let create =
            Command::CreateService { service: "bank".into(), primary: NodeId(1), backups_wanted: 3, min_backups: 2 };
        state.apply(1, create).outcome.unwrap();
        for (i, node) in [2, 3, 4].into_iter().enumerate() {
            let add =
                Command::AddBackup { service: "bank".into(), term: Term(1), node: NodeId(node), version: 1 + i as u64 };
            state.apply(2 + i as u64, add).outcome.unwrap();
        }
        state.apply(10, promote(1, 2)).outcome.unwrap();
        let add =
            |node, version| Command::AddBackup { service: "bank".into(), term: Term(2), node: NodeId(node), version };
        state.apply(11, add(3, 5)).outcome.unwrap();
        let record = state.service("bank").unwrap();
        assert_eq!(record.catching_up, vec![CatchingUp { node: NodeId(4), image_term: Term(1) }], "one of two");
        assert!(record.promotable(NodeId(4), Term(1)) && record.promotable(NodeId(3), Term(2)));
        assert!(!record.promotable(NodeId(3), Term(1)), "a backup of this term must hold this term's checkpoint");
        state.apply(12, add(4, 6)).outcome.unwrap();
        let record = state.service("bank").unwrap();
        assert!(record.protected() && record.catching_up.is_empty());
        state
            .apply(13, Command::DropBackup { service: "bank".into(), term: Term(2), node: NodeId(4) })
            .outcome
            .unwrap();
        let record = state.service("bank").unwrap();
        assert!(!record.protected(), "below the minimum again: replies are held");
        assert!(!record.promotable(NodeId(4), Term(2)), "dropped");
    }

    #[test]
    fn without_a_minimum_a_promotion_keeps_no_holder() {
        let mut state = bank();
        let record = state.services.get_mut("bank").unwrap();
        record.min_backups = 0;
        state.apply(10, promote(1, 3)).outcome.unwrap();
        let record = state.service("bank").unwrap();
        assert!(record.catching_up.is_empty(), "the new primary may release alone at once");
        assert!(record.protected());
        assert!(state.apply(11, promote(2, 2)).outcome.is_err());
    }

    #[test]
    fn only_a_backup_of_the_current_term_is_promoted() {
        let mut state = bank();
        let before = state.clone();
        assert!(matches!(state.apply(10, promote(1, 1)).outcome, Err(Rejection::WrongRole { .. })));
        assert!(matches!(state.apply(11, promote(1, 4)).outcome, Err(Rejection::WrongRole { .. })));
        assert!(matches!(state.apply(12, promote(0, 2)).outcome, Err(Rejection::StaleTerm { .. })));
        assert_eq!(state.service("bank"), before.service("bank"));
    }

    #[test]
    fn a_dropped_backup_can_no_longer_be_promoted() {
        let mut state = bank();
        let drop = Command::DropBackup { service: "bank".into(), term: Term(1), node: NodeId(2) };
        state.apply(10, drop.clone()).outcome.unwrap();
        assert!(state.apply(11, promote(1, 2)).outcome.is_err());
        assert!(state.apply(12, drop).outcome.is_err(), "dropping twice is refused");
    }

    #[test]
    fn commands_of_an_ended_term_change_nothing() {
        let mut state = bank();
        state.apply(10, promote(1, 2)).outcome.unwrap();
        let before = state.service("bank").cloned();
        for command in [
            Command::AddBackup { service: "bank".into(), term: Term(1), node: NodeId(1), version: 3 },
            Command::DropBackup { service: "bank".into(), term: Term(1), node: NodeId(3) },
            Command::GrantLease { service: "bank".into(), term: Term(1), node: NodeId(1), request: 1, fresh: false },
        ] {
            assert!(matches!(state.apply(11, command).outcome, Err(Rejection::StaleTerm { .. })));
        }
        assert_eq!(state.service("bank").cloned(), before);
    }

    #[test]
    fn an_empty_start_is_refused_once_the_service_started() {
        let mut state = ClusterState::default();
        let create =
            Command::CreateService { service: "bank".into(), primary: NodeId(1), backups_wanted: 1, min_backups: 0 };
        state.apply(1, create).outcome.unwrap();
        let lease = |request, fresh| Command::GrantLease {
            service: "bank".into(),
            term: Term(1),
            node: NodeId(1),
            request,
            fresh,
        };
        assert!(state.service("bank").unwrap().may_start_empty());
        state.apply(2, lease(1, true)).outcome.unwrap();
        assert!(!state.service("bank").unwrap().may_start_empty());
        // The same node, restarted with a log that is behind, asks to start empty again.
        assert!(matches!(state.apply(3, lease(2, true)).outcome, Err(Rejection::AlreadyStarted(_))));
        state.apply(4, lease(3, false)).outcome.unwrap();
    }

    #[test]
    fn an_add_proposed_against_an_older_record_is_refused() {
        let mut state = ClusterState::default();
        let create =
            Command::CreateService { service: "bank".into(), primary: NodeId(1), backups_wanted: 1, min_backups: 0 };
        state.apply(1, create).outcome.unwrap();
        let add = Command::AddBackup { service: "bank".into(), term: Term(1), node: NodeId(2), version: 1 };
        // The primary gave up waiting for node 2 and moved the version on first.
        state.apply(2, Command::Barrier { service: "bank".into(), term: Term(1) }).outcome.unwrap();
        assert!(matches!(state.apply(3, add).outcome, Err(Rejection::StaleVersion { .. })));
        assert!(state.service("bank").unwrap().backups.is_empty());
    }

    #[test]
    fn commands_round_trip_through_the_log_encoding() {
        // The Raft group's encoding of commands (RaftNode::propose and apply).
        let command = promote(4, 2);
        assert_eq!(postcard::from_bytes::<Command>(&postcard::to_stdvec(&command).unwrap()).unwrap(), command);
        assert!(postcard::from_bytes::<Command>(&[0xff, 0xff]).is_err());
    }
}
