//! Failure detection and the decisions only the control-plane leader takes: which backup to
//! promote when a primary is gone, and where leadership should live.
//!
//! Every node agent reports to every other one at the heartbeat interval: it is alive, and for
//! each service the role it plays and the checkpoint it holds. The [`Coordinator`] on the leader
//! turns those reports and the committed [`ClusterState`] into [`Decision`]s. It is sans I/O:
//! reports, disconnects and the current time go in; decisions come out.
//!
//! Detection never decides safety: a promotion is a committed term change, and a primary can
//! release a reply only once every backup of its term holds it, so a wrong suspicion costs a
//! needless failover, never a lost or doubled update. It decides speed, so it uses two signals:
//! * a closed control connection: the peer's agent process is gone (killed, crashed). Its
//!   regions lived in that process, so there is nothing to wait for: suspect at once;
//! * silence longer than the failure timeout: a paused process, a cut link, a dead host.

use crate::cluster::{ClusterState, Command, NodeId, PromotionReason};
use nonstop_proto::{CheckpointId, Nanos, Term};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The role a node plays in one service, as it reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Serves the service and releases its output.
    Primary,
    /// Holds a copy, checkpoint by checkpoint.
    Backup,
    /// Being brought up to date (re-protection); not yet a backup.
    Joining,
    /// Holds nothing for the service.
    Spare,
}

/// What a node says about one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// The service.
    pub service: String,
    /// The node's role.
    pub role: Role,
    /// The term the node follows or leads.
    pub term: Term,
    /// The newest checkpoint the node holds completely (backup) or has released (primary).
    pub held: Option<CheckpointId>,
}

/// A node's heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Per service.
    pub services: Vec<ServiceReport>,
}

/// Leadership moves only to a node heard without a gap for this many failure timeouts.
const STEADY_TIMEOUTS: u64 = 10;

/// What the leader should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Propose this command.
    Propose(Command),
    /// Hand Raft leadership to this node.
    TransferLeader(NodeId),
}

#[derive(Debug)]
struct Peer {
    last_heard: Option<Nanos>,
    /// Heard without a silence longer than the failure timeout since then.
    heard_since: Option<Nanos>,
    /// Its connection closed and nothing was heard since: its process is gone.
    closed: bool,
    /// Heard again after its connection closed, and reported no region held since: a new
    /// process, which cannot hold a region an earlier one served from.
    new_process: bool,
    report: Report,
    /// Per service: since when the peer has reported holding no region for it, in a row.
    empty_since: BTreeMap<String, Empty>,
}

/// A node reporting that it holds no region for a service, report after report.
#[derive(Clone, Copy, Debug)]
struct Empty {
    /// The first such report in the row.
    since: Nanos,
    /// The row comes from a new process (its connection closed since it last held a region),
    /// which cannot hold a region an earlier one served from.
    restarted: bool,
}

/// The leader's view of every node's liveness and holdings.
#[derive(Debug)]
pub struct Coordinator {
    me: NodeId,
    timeout_ns: u64,
    peers: BTreeMap<NodeId, Peer>,
    /// Promotions proposed and not yet seen applied: (service) -> (from term, when).
    proposed: BTreeMap<String, (Term, Nanos)>,
    transfer_asked: Option<Nanos>,
    witnesses: Vec<NodeId>,
    watching_since: Nanos,
    lease_ns: u64,
    /// Measurement only: keep leadership *on* primaries, to time the failover that must first
    /// elect a new leader.
    leader_on_primary: bool,
    /// Per service: the term and local time of the last lease grant this node applied.
    last_grant: BTreeMap<String, (Term, Nanos)>,
    /// Per service: since when this node has reported holding no region for it, in a row.
    own_empty_since: BTreeMap<String, Empty>,
}

impl Coordinator {
    /// A coordinator on node `me`, suspecting a node silent for `timeout_ns`. Witnesses vote
    /// but hold no region, so they can hold leadership but never a service.
    pub fn new(me: NodeId, voters: &[NodeId], witnesses: &[NodeId], timeout_ns: u64, lease_ns: u64) -> Coordinator {
        let peers = voters
            .iter()
            .filter(|v| **v != me)
            .map(|v| {
                (
                    *v,
                    Peer {
                        last_heard: None,
                        heard_since: None,
                        closed: false,
                        new_process: false,
                        report: Report::default(),
                        empty_since: BTreeMap::new(),
                    },
                )
            })
            .collect();
        Coordinator {
            me,
            timeout_ns,
            peers,
            proposed: BTreeMap::new(),
            transfer_asked: None,
            witnesses: witnesses.to_vec(),
            watching_since: Nanos(0),
            lease_ns,
            leader_on_primary: false,
            last_grant: BTreeMap::new(),
            own_empty_since: BTreeMap::new(),
        }
    }

    /// `node` reported at `now`.
    pub fn on_report(&mut self, node: NodeId, report: Report, now: Nanos) {
        let timeout = self.timeout_ns;
        if let Some(peer) = self.peers.get_mut(&node) {
            let silent = peer.closed || peer.last_heard.is_none_or(|heard| now.0.saturating_sub(heard.0) > timeout);
            if silent {
                peer.heard_since = Some(now);
            }
            peer.last_heard = Some(now);
            peer.new_process |= std::mem::replace(&mut peer.closed, false);
            if report.services.iter().any(|s| matches!(s.role, Role::Primary | Role::Backup)) {
                peer.new_process = false;
            }
            note_empty(&mut peer.empty_since, &report, now, peer.new_process);
            peer.report = report;
        }
    }

    /// The control connection to `node` closed: its agent process is gone.
    pub fn on_disconnect(&mut self, node: NodeId) {
        if let Some(peer) = self.peers.get_mut(&node) {
            peer.closed = true;
        }
    }

    /// Measurement only: place leadership on primaries instead of away from them, so that a
    /// primary's crash also costs a Raft election (`nonstop chaos kill --leader-on-primary`).
    pub fn set_leader_on_primary(&mut self, on: bool) {
        self.leader_on_primary = on;
    }

    /// A `GrantLease` for `service` in `term` was applied here at `now`. The holder counts its
    /// lease from before the grant existed, so it ends before `now + lease`.
    pub fn on_lease_granted(&mut self, service: &str, term: Term, now: Nanos) {
        self.last_grant.insert(service.to_string(), (term, now));
    }

    /// This node became the leader at `now`: silence is counted from here for nodes it has not
    /// heard from yet, so a new leader does not take "not heard yet" for "dead".
    pub fn on_leadership(&mut self, now: Nanos) {
        self.watching_since = now;
        // What this node reported while it last led may be long gone.
        self.own_empty_since.clear();
    }

    /// Whether this node, as leader, proposed a promotion for `service` that has not applied
    /// yet (a failover under way).
    pub fn promoting(&self, service: &str) -> bool {
        self.proposed.contains_key(service)
    }

    /// Whether `node` is believed alive at `now`: its connection did not close, and it was
    /// heard within the failure timeout (counted from when this node started watching, for a
    /// node not heard since).
    pub fn alive(&self, node: NodeId, now: Nanos) -> bool {
        if node == self.me {
            return true;
        }
        self.peers.get(&node).is_some_and(|peer| {
            let since = peer.last_heard.map_or(self.watching_since, |heard| heard.max(self.watching_since));
            !peer.closed && now.0.saturating_sub(since.0) <= self.timeout_ns
        })
    }

    /// What `node` last reported about `service`.
    pub fn report(&self, node: NodeId, service: &str) -> Option<&ServiceReport> {
        self.peers.get(&node)?.report.services.iter().find(|s| s.service == service)
    }

    /// Decisions for the leader at `now`. `own` is this node's own report (the leader does not
    /// hear itself).
    pub fn decide(&mut self, state: &ClusterState, own: &Report, now: Nanos) -> Vec<Decision> {
        let mut decisions = Vec::new();
        // The leader may be the primary that restarted without its region: it watches its own
        // report as it watches its peers'.
        note_empty(&mut self.own_empty_since, own, now, false);
        self.proposed.retain(|service, (term, at)| {
            state.service(service).is_some_and(|r| r.term == *term) && now.0.saturating_sub(at.0) < self.timeout_ns
        });
        for (name, record) in state.services() {
            // A primary whose agent restarted is alive but holds no region: it keeps reporting
            // itself a spare in the current term. (One such report may be stale, sent just
            // before it started serving, so it must last a failure timeout; unless the reports
            // began after its connection closed: a new process, and a primary that restarted
            // before a new leader was elected is then failed over at once, not a timeout later.)
            let (report, empty_since) = if record.primary == self.me {
                (own.services.iter().find(|s| s.service == name), self.own_empty_since.get(name))
            } else {
                (
                    self.report(record.primary, name),
                    self.peers.get(&record.primary).and_then(|p| p.empty_since.get(name)),
                )
            };
            let restarted = report.is_some_and(|r| r.term == record.term)
                && empty_since
                    .is_some_and(|empty| empty.restarted || now.0.saturating_sub(empty.since.0) >= self.timeout_ns);
            if (self.alive(record.primary, now) && !restarted) || self.proposed.contains_key(name) {
                continue;
            }
            // A primary that is only silent (paused, cut off) may still hold a lease and release
            // output until it ends; one whose process is gone (its connection closed, or it came
            // back without its region) cannot. Margin: a tenth of the lease for clock drift.
            let gone = restarted || self.peers.get(&record.primary).is_some_and(|p| p.closed);
            let lease_end = self
                .last_grant
                .get(name)
                .filter(|(term, _)| *term == record.term)
                .map(|(_, at)| at.0 + self.lease_ns + self.lease_ns / 10);
            if !gone && lease_end.is_some_and(|end| now.0 < end) {
                continue;
            }
            // What a candidate holds, if the record lets it be promoted with it: a backup a
            // checkpoint of this term, a catching-up holder an image no older than it was kept
            // with (a standby being rebased still reports its old image: it is one).
            let held_by = |node: NodeId| -> Option<(Term, CheckpointId)> {
                let report = if node == self.me {
                    own.services.iter().find(|s| s.service == name)
                } else {
                    self.report(node, name)
                }?;
                let standby = matches!(report.role, Role::Backup | Role::Joining);
                let held = report.held.filter(|_| standby && record.promotable(node, report.term))?;
                Some((report.term, held))
            };
            let candidates = record.backups.iter().copied().chain(record.catching_up.iter().map(|c| c.node));
            // The newest fully held checkpoint wins (FineFRC's checkpoint timestamp); the
            // lowest id breaks ties, so every leader would choose alike.
            let best = candidates
                .filter(|b| self.alive(*b, now))
                .filter_map(|b| held_by(b).map(|held| (held, b)))
                .max_by_key(|(held, node)| (*held, std::cmp::Reverse(*node)))
                .map(|((_, checkpoint), node)| (checkpoint, node));
            if let Some((checkpoint, node)) = best {
                tracing::info!(service = name, from = %record.primary, to = %node, %checkpoint, "promoting");
                self.proposed.insert(name.to_string(), (record.term, now));
                decisions.push(Decision::Propose(Command::Promote {
                    service: name.to_string(),
                    from_term: record.term,
                    node,
                    checkpoint,
                    reason: PromotionReason::Failover,
                }));
            }
        }
        if let Some(to) = self.leadership_target(state, now) {
            decisions.push(Decision::TransferLeader(to));
        }
        decisions
    }

    /// Keeps leadership on the node with the least to lose: a witness, else a spare, else a
    /// backup, never a primary if it can help it. A crash of a primary then never also costs
    /// the leader that must promote its backup, and a promoted backup's first proposals (its
    /// lease) do not meet a leadership transfer.
    fn leadership_target(&mut self, state: &ClusterState, now: Nanos) -> Option<NodeId> {
        let flip = self.leader_on_primary;
        let rank = |node: NodeId| {
            let primaries = state.services().filter(|(_, r)| r.primary == node).count();
            let backups = state.services().filter(|(_, r)| r.backups.contains(&node)).count();
            let primaries = if flip { usize::MAX - primaries } else { primaries };
            (primaries, backups, !self.witnesses.contains(&node))
        };
        if self.transfer_asked.is_some_and(|at| now.0.saturating_sub(at.0) < self.timeout_ns) {
            return None;
        }
        // Only to a node heard steadily for a while: one just back from a partition may still
        // be missing heartbeats that TCP is retransmitting, and as leader it would take the
        // silence of the nodes it cannot hear yet for death and fail a live primary over.
        let steady = |node: &NodeId| {
            self.peers
                .get(node)
                .and_then(|p| p.heard_since)
                .is_some_and(|since| now.0.saturating_sub(since.0) >= STEADY_TIMEOUTS * self.timeout_ns)
        };
        let target = self
            .peers
            .keys()
            .filter(|p| self.alive(**p, now) && steady(p))
            .min_by_key(|p| (rank(**p), **p))
            .copied()?;
        if rank(target) >= rank(self.me) {
            return None;
        }
        self.transfer_asked = Some(now);
        Some(target)
    }
}

/// Per service, since when `report`'s node has reported holding no region for it, in a row, and
/// whether it comes from a process started since it last held a region (`restarted`).
fn note_empty(empty_since: &mut BTreeMap<String, Empty>, report: &Report, now: Nanos, restarted: bool) {
    for service in &report.services {
        if matches!(service.role, Role::Spare | Role::Joining) {
            empty_since.entry(service.service.clone()).or_insert(Empty { since: now, restarted }).restarted |=
                restarted;
        } else {
            empty_since.remove(&service.service);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn state() -> ClusterState {
        let mut state = ClusterState::default();
        let commands = [
            Command::CreateService { service: "bank".into(), primary: NodeId(1), backups_wanted: 2, min_backups: 1 },
            Command::AddBackup { service: "bank".into(), term: Term(1), node: NodeId(2), version: 1 },
            Command::AddBackup { service: "bank".into(), term: Term(1), node: NodeId(3), version: 2 },
        ];
        for (i, command) in commands.into_iter().enumerate() {
            state.apply(i as u64 + 1, command).outcome.unwrap();
        }
        state
    }

    fn backup_report(held: u64) -> Report {
        report(Role::Backup, 1, Some(held))
    }

    /// A node's report on the bank: its role in `term`, holding checkpoint `held`.
    fn report(role: Role, term: u64, held: Option<u64>) -> Report {
        Report {
            services: vec![ServiceReport {
                service: "bank".into(),
                role,
                term: Term(term),
                held: held.map(CheckpointId),
            }],
        }
    }

    #[test]
    fn a_killed_primary_is_replaced_by_the_backup_holding_the_newest_checkpoint() {
        // Node 3 leads; node 1 is the primary, node 2 a backup; node 3 holds more.
        let mut c = Coordinator::new(NodeId(3), &[NodeId(1), NodeId(2), NodeId(3)], &[], 50 * MS, 100 * MS);
        c.on_report(NodeId(1), Report::default(), Nanos(0));
        c.on_report(NodeId(2), backup_report(7), Nanos(0));
        assert!(c.decide(&state(), &backup_report(9), Nanos(MS)).is_empty(), "all alive");
        c.on_disconnect(NodeId(1));
        let decisions = c.decide(&state(), &backup_report(9), Nanos(2 * MS));
        assert!(matches!(
            &decisions[..],
            [Decision::Propose(Command::Promote { node: NodeId(3), checkpoint: CheckpointId(9), .. })]
        ));
        assert!(c.decide(&state(), &backup_report(9), Nanos(3 * MS)).is_empty(), "proposed once per timeout");
    }

    #[test]
    fn silence_past_the_timeout_is_a_failure_and_a_dead_backup_is_not_promoted() {
        let mut c = Coordinator::new(NodeId(3), &[NodeId(1), NodeId(2), NodeId(3)], &[], 50 * MS, 100 * MS);
        c.on_report(NodeId(1), Report::default(), Nanos(0));
        c.on_report(NodeId(2), backup_report(12), Nanos(0));
        assert!(c.decide(&state(), &backup_report(9), Nanos(50 * MS)).is_empty());
        // Node 2 went silent too, despite its newer checkpoint: node 3 is promoted.
        let decisions = c.decide(&state(), &backup_report(9), Nanos(51 * MS));
        assert!(matches!(&decisions[..], [Decision::Propose(Command::Promote { node: NodeId(3), .. })]));
    }

    #[test]
    fn a_primary_that_keeps_reporting_no_region_is_replaced_but_one_stale_report_is_not_enough() {
        let mut c = Coordinator::new(NodeId(3), &[NodeId(1), NodeId(2), NodeId(3)], &[], 50 * MS, 100 * MS);
        let empty = report(Role::Spare, 1, None);
        c.on_report(NodeId(2), backup_report(4), Nanos(0));
        c.on_report(NodeId(1), empty.clone(), Nanos(0));
        assert!(c.decide(&state(), &backup_report(4), Nanos(MS)).is_empty(), "one report is not a restart");
        c.on_report(NodeId(2), backup_report(4), Nanos(49 * MS));
        c.on_report(NodeId(1), empty, Nanos(50 * MS));
        let decisions = c.decide(&state(), &backup_report(4), Nanos(50 * MS));
        assert!(matches!(&decisions[..], [Decision::Propose(Command::Promote { .. })]), "{decisions:?}");
    }

    /// A primary whose connection closed and that came back reporting no region is a new
    /// process: it is failed over at once, not a timeout later. (A primary killed with the
    /// leader and restarted before the next leader was elected waited the whole timeout.)
    #[test]
    fn a_primary_back_without_its_region_after_its_connection_closed_is_replaced_at_once() {
        let mut c = Coordinator::new(NodeId(3), &[NodeId(1), NodeId(2), NodeId(3)], &[], 50 * MS, 100 * MS);
        let empty = report(Role::Spare, 1, None);
        c.on_report(NodeId(1), Report::default(), Nanos(0));
        c.on_report(NodeId(2), backup_report(4), Nanos(0));
        c.on_disconnect(NodeId(1));
        // Its first report may come before its log replay knows of the service.
        c.on_report(NodeId(1), Report::default(), Nanos(MS));
        c.on_report(NodeId(1), empty.clone(), Nanos(2 * MS));
        let decisions = c.decide(&state(), &backup_report(4), Nanos(2 * MS));
        assert!(matches!(&decisions[..], [Decision::Propose(Command::Promote { .. })]), "{decisions:?}");
        // Back and serving: an empty report after that is the stale kind again, a timeout's
        // wait.
        let mut c = Coordinator::new(NodeId(3), &[NodeId(1), NodeId(2), NodeId(3)], &[], 50 * MS, 100 * MS);
        let serving = report(Role::Primary, 1, Some(4));
        c.on_report(NodeId(2), backup_report(4), Nanos(0));
        c.on_disconnect(NodeId(1));
        c.on_report(NodeId(1), serving, Nanos(MS));
        c.on_report(NodeId(1), empty, Nanos(2 * MS));
        assert!(c.decide(&state(), &backup_report(4), Nanos(2 * MS)).is_empty());
    }

    #[test]
    fn a_leader_that_is_the_restarted_primary_fails_itself_over() {
        let mut c = Coordinator::new(NodeId(1), &[NodeId(1), NodeId(2), NodeId(3)], &[], 50 * MS, 100 * MS);
        let empty = report(Role::Spare, 1, None);
        c.on_report(NodeId(2), backup_report(4), Nanos(0));
        assert!(c.decide(&state(), &empty, Nanos(MS)).is_empty(), "one report is not a restart");
        c.on_report(NodeId(2), backup_report(4), Nanos(50 * MS));
        let decisions = c.decide(&state(), &empty, Nanos(51 * MS));
        assert!(
            matches!(&decisions[..], [Decision::Propose(Command::Promote { node: NodeId(2), .. })]),
            "{decisions:?}"
        );
    }

    #[test]
    fn a_new_leader_does_not_take_not_heard_yet_for_dead() {
        let mut c = Coordinator::new(NodeId(3), &[NodeId(1), NodeId(2), NodeId(3)], &[], 50 * MS, 100 * MS);
        c.on_leadership(Nanos(1000 * MS));
        c.on_report(NodeId(2), backup_report(4), Nanos(1000 * MS));
        assert!(
            c.decide(&state(), &backup_report(4), Nanos(1040 * MS)).is_empty(),
            "the primary may not have dialled yet"
        );
        c.on_report(NodeId(2), backup_report(4), Nanos(1050 * MS));
        let decisions = c.decide(&state(), &backup_report(4), Nanos(1051 * MS));
        assert!(matches!(&decisions[..], [Decision::Propose(Command::Promote { .. })]), "silent for a whole timeout");
    }

    #[test]
    fn a_silent_primary_is_replaced_only_once_its_lease_ran_out() {
        let mut c = Coordinator::new(NodeId(3), &[NodeId(1), NodeId(2), NodeId(3)], &[], 50 * MS, 100 * MS);
        c.on_report(NodeId(1), Report::default(), Nanos(0));
        c.on_lease_granted("bank", Term(1), Nanos(10 * MS));
        c.on_report(NodeId(2), backup_report(4), Nanos(100 * MS));
        assert!(c.decide(&state(), &backup_report(4), Nanos(100 * MS)).is_empty(), "silent, but its lease may run");
        c.on_report(NodeId(2), backup_report(4), Nanos(120 * MS));
        let decisions = c.decide(&state(), &backup_report(4), Nanos(121 * MS));
        assert!(matches!(&decisions[..], [Decision::Propose(Command::Promote { .. })]), "{decisions:?}");
    }

    #[test]
    fn no_backup_of_the_current_term_means_no_promotion() {
        let mut c = Coordinator::new(NodeId(3), &[NodeId(1), NodeId(2), NodeId(3)], &[], 50 * MS, 100 * MS);
        let stale = report(Role::Backup, 0, Some(99));
        c.on_report(NodeId(2), stale.clone(), Nanos(0));
        assert!(c.decide(&state(), &stale, Nanos(MS)).is_empty());
    }

    /// Every node in `reports` reports every 10 ms from `from` to `to` (inclusive).
    fn steady_reports(c: &mut Coordinator, reports: &[(u64, Report)], from: u64, to: u64) {
        for at in (from..=to).step_by(10) {
            for (node, report) in reports {
                c.on_report(NodeId(*node), report.clone(), Nanos(at * MS));
            }
        }
    }

    #[test]
    fn leadership_moves_off_a_primary_to_the_node_with_the_least_role() {
        let mut state = state();
        let drop = Command::DropBackup { service: "bank".into(), term: Term(1), node: NodeId(3) };
        state.apply(10, drop).outcome.unwrap();
        let steady = STEADY_TIMEOUTS * 50;
        let mut c = Coordinator::new(NodeId(1), &[NodeId(1), NodeId(2), NodeId(3)], &[], 50 * MS, 100 * MS);
        steady_reports(&mut c, &[(2, backup_report(1)), (3, Report::default())], 0, steady);
        // Node 3 holds no role, node 2 is a backup: the spare gets leadership.
        let at = Nanos(steady * MS + MS);
        assert_eq!(c.decide(&state, &Report::default(), at), vec![Decision::TransferLeader(NodeId(3))]);
        assert!(c.decide(&state, &Report::default(), Nanos(at.0 + MS)).is_empty(), "asked once per timeout");
        // A backup leading with a spare alive hands over too; a spare leading stays.
        let mut backup = Coordinator::new(NodeId(2), &[NodeId(1), NodeId(2), NodeId(3)], &[], 50 * MS, 100 * MS);
        steady_reports(&mut backup, &[(1, Report::default()), (3, Report::default())], 0, steady);
        assert_eq!(backup.decide(&state, &backup_report(1), at), vec![Decision::TransferLeader(NodeId(3))]);
        let mut spare = Coordinator::new(NodeId(3), &[NodeId(1), NodeId(2), NodeId(3)], &[], 50 * MS, 100 * MS);
        steady_reports(&mut spare, &[(1, Report::default()), (2, backup_report(1))], 0, steady);
        assert!(spare.decide(&state, &Report::default(), at).is_empty());
    }

    /// A node back from a partition is alive at once, but leadership goes to it only once it
    /// has been heard steadily: as leader it could not yet hear the nodes whose heartbeats TCP
    /// is still retransmitting, and would fail a live primary over.
    #[test]
    fn leadership_waits_for_a_node_back_from_silence_to_be_heard_steadily() {
        let mut state = state();
        let drop = Command::DropBackup { service: "bank".into(), term: Term(1), node: NodeId(3) };
        state.apply(10, drop).outcome.unwrap();
        let mut c = Coordinator::new(NodeId(1), &[NodeId(1), NodeId(2), NodeId(3)], &[], 50 * MS, 100 * MS);
        steady_reports(&mut c, &[(2, backup_report(1)), (3, Report::default())], 0, 1000);
        // Node 3 falls silent for a second (a partition), then is heard again.
        steady_reports(&mut c, &[(2, backup_report(1))], 1010, 2000);
        steady_reports(&mut c, &[(2, backup_report(1)), (3, Report::default())], 2010, 2100);
        assert!(c.alive(NodeId(3), Nanos(2100 * MS)));
        // Meanwhile the steady backup is the best target.
        let decided = c.decide(&state, &Report::default(), Nanos(2101 * MS));
        assert_eq!(decided, vec![Decision::TransferLeader(NodeId(2))], "node 3 is not steady yet");
        let steady_at = 2010 + STEADY_TIMEOUTS * 50;
        steady_reports(&mut c, &[(2, backup_report(1)), (3, Report::default())], 2110, steady_at);
        let decided = c.decide(&state, &Report::default(), Nanos(steady_at * MS + MS));
        assert_eq!(decided, vec![Decision::TransferLeader(NodeId(3))]);
    }
}
