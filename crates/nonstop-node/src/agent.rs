//! The node agent's control loop: one thread that owns the node's Raft instance, its
//! coordinator and its services' hosts.
//!
//! Every heartbeat interval it ticks Raft and sends its report to every peer. Between ticks it
//! steps what peers sent. After each event it persists and sends what Raft produced, lets the
//! leader's coordinator decide (create configured services, promote a backup of a failed
//! primary, move leadership off primaries), and reconciles every service with the committed
//! record. Everything that blocks (attaching a backup, serving clients, replication) runs on
//! other threads.

use crate::NodeId;
use crate::config::Checked;
use crate::peers::{Body, PeerEvent, Peers};
use crate::replica::{Replica, ReplicaError, ReplicaHost};
use crate::service::{ServiceHost, Serving, SwitchoverRequest};
use crate::status::{BackupLagStatus, NodeStatus, ServiceStatus};
use nonstop_control::cluster::Command;
use nonstop_control::coordinator::{Coordinator, Decision, Report};
use nonstop_control::log::FileLog;
use nonstop_control::{ControlConfig, ControlError, ControlNode, ElectionJitter};
use nonstop_net::fault::FaultPoint;
use nonstop_proto::Nanos;
use nonstop_proto::auth::ClusterKey;
use nonstop_proto::operator::{OperatorReply, OperatorRequest};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a node cannot run.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The control plane failed (its log, most likely).
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A socket could not be opened.
    #[error("{what} on {addr}: {source}; is another node using the address?")]
    Listen {
        /// What was being opened.
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The config does not fit this machine.
    #[error(transparent)]
    Refused(#[from] crate::preflight::Refusal),
    /// The config names a service this binary cannot build.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// An active service's replica cannot start.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// A running node agent.
pub struct Agent {
    config: Checked,
    control: ControlNode,
    coordinator: Coordinator,
    peers: Peers,
    events: mpsc::Receiver<PeerEvent>,
    hosts: Vec<ServiceHost>,
    /// This node's replicas of the active services.
    replicas: Vec<ReplicaHost>,
    clock: Instant,
    status: Arc<RwLock<NodeStatus>>,
    last_create: Option<Instant>,
    /// The newest connection each peer's messages came on.
    connections: BTreeMap<NodeId, u64>,
    was_leader: bool,
    /// Per service: time served as primary with fewer backups than wanted.
    unprotected: BTreeMap<String, Duration>,
    last_status: Instant,
    instruments: crate::Instruments,
}

impl Agent {
    /// Opens the node's Raft log and sockets. `services` are the config's services, built
    /// by [`Checked::services`].
    /// `ports` are its replication ports, bound by [`crate::preflight::check`].
    pub fn start(
        config: Checked,
        services: &crate::config::Services,
        key: ClusterKey,
        instruments: crate::Instruments,
        ports: crate::preflight::ReplicationPorts,
    ) -> Result<Agent, NodeError> {
        let voters: Vec<NodeId> = config.members.iter().map(|m| m.id).collect();
        let witnesses: Vec<NodeId> = config.members.iter().filter(|m| m.witness).map(|m| m.id).collect();
        let ticks_per_timeout = (config.timeout.as_millis() / config.heartbeat.as_millis().max(1)) as usize;
        let control_config = ControlConfig {
            id: config.me.id,
            voters: voters.clone(),
            election_ticks: ticks_per_timeout.max(5),
            heartbeat_ticks: 2,
            election_jitter: ElectionJitter::Seeded({
                let mut seed = [0u8; 8];
                let _ = getrandom::fill(&mut seed);
                u64::from_le_bytes(seed)
            }),
            compact_every: 1024,
            catch_up_entries: 256,
            membership: nonstop_control::Membership::Static,
        };
        let log = FileLog::open(&config.data_dir.join("raft.log")).map_err(ControlError::from)?;
        let control = ControlNode::new(control_config.clone(), Box::new(log))?;
        let coordinator = Coordinator::new(
            config.me.id,
            &voters,
            &witnesses,
            config.timeout.as_nanos() as u64,
            config.lease.as_nanos() as u64,
        );
        let mut coordinator = coordinator;
        if config.leader_on_primary {
            tracing::warn!("measurement mode: control-plane leadership kept on primaries");
            coordinator.set_leader_on_primary(true);
        }
        let (events_tx, events) = mpsc::channel();
        let replicas = match config.me.witness {
            true => Vec::new(),
            false => config
                .active
                .iter()
                .map(|spec| {
                    let client_addrs = spec
                        .replicas
                        .iter()
                        .map(|id| config.member(*id).map_or_else(String::new, |m| m.client.to_string()))
                        .collect();
                    let group = crate::replica::group_config(spec, config.me.id, &control_config);
                    let donors = crate::transfer::Donors {
                        replicas: (spec.replicas.iter().enumerate())
                            .filter(|(_, id)| **id != config.me.id)
                            .filter_map(|(number, id)| config.member(*id).map(|m| (number as u16, m.control)))
                            .collect(),
                        key: key.clone(),
                        detections: instruments.detections.clone(),
                    };
                    ReplicaHost::start(
                        spec,
                        services.active[&spec.name].clone(),
                        config.me.id,
                        client_addrs,
                        donors,
                        group,
                        events_tx.clone(),
                        &config.data_dir,
                        instruments.faults.clone(),
                    )
                })
                .collect::<Result<_, _>>()?,
        };
        let peer_addrs: Vec<_> =
            config.members.iter().filter(|m| m.id != config.me.id).map(|m| (m.id, m.control)).collect();
        let peers = Peers::start(
            config.me.id,
            config.me.control,
            &peer_addrs,
            key.clone(),
            events_tx,
            config.heartbeat,
            nonstop_net::admission::Admission::new(config.handshake, instruments.detections.clone()),
        )
        .map_err(|source| NodeError::Listen { what: "control plane", addr: config.me.control, source })?;
        let mut ports = ports.0.into_iter();
        let hosts = config
            .services
            .iter()
            .map(|spec| {
                let hosted = services.passive[&spec.name].clone();
                ServiceHost::new(spec.clone(), hosted, &config, key.clone(), instruments.clone(), ports.next())
            })
            .collect();
        Ok(Agent {
            config,
            control,
            coordinator,
            peers,
            events,
            hosts,
            replicas,
            clock: Instant::now(),
            status: Arc::new(RwLock::new(NodeStatus::default())),
            last_create: None,
            connections: BTreeMap::new(),
            was_leader: false,
            unprotected: BTreeMap::new(),
            last_status: Instant::now(),
            instruments,
        })
    }

    /// What client threads use, per service.
    pub fn serving(&self) -> BTreeMap<String, Arc<Serving>> {
        self.hosts.iter().map(|h| (h.name().to_string(), h.serving())).collect()
    }

    /// What client threads use, per active service.
    pub fn replicas(&self) -> BTreeMap<String, Arc<Replica>> {
        self.replicas.iter().map(|r| (r.name().to_string(), r.replica())).collect()
    }

    /// The status snapshot, refreshed every heartbeat.
    pub fn status(&self) -> Arc<RwLock<NodeStatus>> {
        self.status.clone()
    }

    fn now(&self) -> Nanos {
        Nanos(self.clock.elapsed().as_nanos() as u64)
    }

    fn report(&self) -> Report {
        let state = self.control.state();
        Report { services: self.hosts.iter().map(|h| h.report(state.service(h.name()))).collect() }
    }

    /// Runs until `stop` is set.
    pub fn run(mut self, stop: &AtomicBool) -> Result<(), NodeError> {
        let mut next_tick = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_tick {
                self.control.tick();
                for replica in &mut self.replicas {
                    replica.tick();
                }
                self.peers.broadcast(&Body::Report(self.report()));
                self.publish_status();
                next_tick += self.config.heartbeat;
                if next_tick < now {
                    next_tick = now + self.config.heartbeat;
                }
                // What the ticks produced (heartbeats, an election's vote requests) leaves now,
                // not with the next event: an order group's candidate whose requests waited for
                // one met a rival that stood meanwhile, the vote split, and a paused leader cost
                // two or three election timeouts instead of one.
                self.step()?;
            }
            match self.events.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                Ok(event) => {
                    self.on_event(event);
                    while let Ok(event) = self.events.try_recv() {
                        self.on_event(event);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.step()?;
        }
        Ok(())
    }

    /// Answers an operator (the connection proved it holds the cluster key).
    fn on_operator(&mut self, request: OperatorRequest, reply: mpsc::Sender<OperatorReply>) {
        let answer = match request {
            OperatorRequest::Status => {
                let status = self.status.read().unwrap_or_else(|p| p.into_inner()).clone();
                OperatorReply::Status { json: serde_json::to_string(&status).expect("status serializes") }
            }
            OperatorRequest::ArmFault { point, countdown } => match FaultPoint::from_name(&point) {
                None => OperatorReply::Rejected { reason: format!("no fault point {point:?}") },
                Some(point) => match self.instruments.faults.arm(point, countdown) {
                    Ok(()) => OperatorReply::Armed,
                    Err(reason) => OperatorReply::Rejected { reason: reason.into() },
                },
            },
            OperatorRequest::Switchover { service, to } => {
                let record = self.control.state().service(&service).cloned();
                let Some(host) = self.hosts.iter_mut().find(|h| h.name() == service) else {
                    let _ = reply.send(OperatorReply::Rejected { reason: format!("no service {service:?}") });
                    return;
                };
                if let Some(record) = &record
                    && record.primary != self.config.me.id
                {
                    let _ = reply.send(OperatorReply::NotPrimary { primary: Some(record.primary.0) });
                    return;
                }
                // The driver answers once the move is committed or abandoned.
                host.begin_switchover(
                    record.as_ref(),
                    SwitchoverRequest { service, to: NodeId(to), reply },
                    Instant::now(),
                );
                return;
            }
        };
        let _ = reply.send(answer);
    }

    fn on_event(&mut self, event: PeerEvent) {
        if let PeerEvent::Message { from, connection, .. } = &event {
            let newest = self.connections.entry(*from).or_default();
            *newest = (*newest).max(*connection);
        }
        match event {
            PeerEvent::Operator { request, reply } => self.on_operator(request, reply),
            PeerEvent::Message { from, body: Body::Raft(bytes), .. } => {
                match self.control.step(&bytes) {
                    // A proposal forwarded while leadership changes: the proposer retries.
                    Err(error) if !error.is_dropped_proposal() => {
                        tracing::warn!(peer = from.0, %error, "raft message refused");
                    }
                    _ => {}
                }
            }
            PeerEvent::Message { from, body: Body::Order { service, raft }, .. } => {
                match self.replicas.iter_mut().find(|r| r.name() == service) {
                    Some(replica) => replica.step(from, &raft),
                    None => tracing::debug!(peer = from.0, service, "order message for no active service here"),
                }
            }
            PeerEvent::Message { from, body: Body::OrderJoin { service, join }, .. } => {
                if let Some(replica) = self.replicas.iter_mut().find(|r| r.name() == service) {
                    replica.on_join(from, join);
                }
            }
            PeerEvent::Proposed => {}
            PeerEvent::TransferAsked { service, reply } => {
                let _ = reply.send(self.replicas.iter().find(|r| r.name() == service).map(ReplicaHost::replica));
            }
            PeerEvent::Message { from, body: Body::Report(report), .. } => {
                let now = self.now();
                self.coordinator.on_report(from, report, now);
            }
            PeerEvent::Down { from, connection } => {
                if self.connections.get(&from).is_none_or(|newest| *newest <= connection) {
                    tracing::info!(node = from.0, "peer connection closed");
                    self.coordinator.on_disconnect(from);
                    // If it led, the survivors stand in turn instead of waiting out the timeout.
                    let now = self.now();
                    let coordinator = &self.coordinator;
                    self.control.on_leader_lost(from, |id| coordinator.alive(id, now));
                    for replica in &mut self.replicas {
                        replica.on_peer_down(from, |id| coordinator.alive(id, now));
                    }
                }
            }
        }
    }

    /// One round: Raft output, leader decisions, service reconciliation.
    fn step(&mut self) -> Result<(), NodeError> {
        self.flush()?;
        let now = Instant::now();
        let mut proposals = Vec::new();
        let leader = self.control.is_leader();
        if leader && !self.was_leader {
            let nanos = self.now();
            self.coordinator.on_leadership(nanos);
        }
        self.was_leader = leader;
        if leader {
            let state = self.control.state();
            let missing: Vec<_> = self.config.services.iter().filter(|s| state.service(&s.name).is_none()).collect();
            if !missing.is_empty() && self.last_create.is_none_or(|at| now.duration_since(at) >= self.config.timeout) {
                self.last_create = Some(now);
                for spec in missing {
                    proposals.push(Command::CreateService {
                        service: spec.name.clone(),
                        primary: spec.primary,
                        backups_wanted: spec.backups,
                        min_backups: spec.min_backups,
                    });
                }
            }
            let own = self.report();
            let nanos = self.now();
            for decision in self.coordinator.decide(self.control.state(), &own, nanos) {
                match decision {
                    Decision::Propose(command) => proposals.push(command),
                    Decision::TransferLeader(to) => {
                        tracing::info!(to = to.0, "moving control-plane leadership off a primary");
                        self.control.transfer_leader(to);
                    }
                }
            }
        }
        let nanos = self.now();
        let coordinator = &self.coordinator;
        let alive = |node: NodeId| coordinator.alive(node, nanos);
        for host in &mut self.hosts {
            let record = self.control.state().service(host.name()).cloned();
            let needs = host.reconcile(record.as_ref(), &self.config, &alive, now);
            proposals.extend(needs.proposals);
        }
        for command in proposals {
            if let Err(error) = self.control.propose(&command) {
                tracing::debug!(%error, ?command, "proposal not accepted (no leader yet?)");
            }
        }
        self.flush()
    }

    /// Persists and sends what Raft produced and handles applied commands; proposes what
    /// calls left for the order groups and sends what they produced.
    fn flush(&mut self) -> Result<(), NodeError> {
        for replica in &mut self.replicas {
            replica.propose();
            replica.poll(&self.peers)?;
        }
        let peers = &self.peers;
        let output = self.control.poll_sending(|to, bytes| peers.send(to, Body::Raft(bytes)))?;
        for (to, bytes) in output.messages {
            self.peers.send(to, Body::Raft(bytes));
        }
        for applied in output.applied {
            if let (Command::GrantLease { node, .. }, Err(rejection)) = (&applied.command, &applied.outcome)
                && *node == self.config.me.id
            {
                tracing::debug!(%rejection, "lease refused");
            }
            if let (Command::GrantLease { service, term, node, request, .. }, Ok(())) =
                (&applied.command, &applied.outcome)
            {
                let now = self.now();
                self.coordinator.on_lease_granted(service, *term, now);
                if *node == self.config.me.id
                    && let Some(host) = self.hosts.iter_mut().find(|h| h.name() == service)
                {
                    host.on_lease_granted(*term, *request);
                }
            }
            if let Command::Promote { service, node, from_term, .. } = &applied.command
                && applied.outcome.is_ok()
            {
                let (term, index) = (from_term.0 + 1, applied.index);
                if index <= self.control.recovered_commit() {
                    // Replayed from this node's log after a restart: it happened before.
                    tracing::debug!(service, node = node.0, term, index, "promotion replayed from the log");
                } else {
                    tracing::info!(service, node = node.0, term, index, "promotion committed");
                }
            }
        }
        Ok(())
    }

    fn publish_status(&mut self) {
        let since = std::mem::replace(&mut self.last_status, Instant::now()).elapsed();
        let state = self.control.state();
        for host in &self.hosts {
            if state.service(host.name()).is_some_and(|r| r.degraded() && host.serves(r.term)) {
                *self.unprotected.entry(host.name().to_string()).or_default() += since;
            }
        }
        let now = self.now();
        let services = self
            .hosts
            .iter()
            .map(|host| {
                let record = state.service(host.name());
                let report = host.report(record);
                ServiceStatus {
                    name: host.name().to_string(),
                    term: record.map_or(0, |r| r.term.0),
                    version: record.map_or(0, |r| r.version),
                    primary: record.map_or(0, |r| r.primary.0),
                    backups: record.map(|r| r.backups.iter().map(|b| b.0).collect()).unwrap_or_default(),
                    catching_up: record.map(|r| r.catching_up.iter().map(|c| c.node.0).collect()).unwrap_or_default(),
                    backups_wanted: record.map_or(0, |r| r.backups_wanted),
                    min_backups: record.map_or(0, |r| r.min_backups),
                    degraded: record.is_some_and(|r| r.degraded()),
                    holding_output: record.is_some_and(|r| !r.protected()),
                    unprotected_seconds: self.unprotected.get(host.name()).map_or(0.0, |d| d.as_secs_f64()),
                    role: format!("{:?}", report.role).to_lowercase(),
                    tracking: host.tracking().into(),
                    held: report.held.map(|h| h.0),
                    region_bytes: host.region_bytes(),
                    failovers: record.map_or(0, |r| r.failovers),
                    last_promotion: record.and_then(|r| r.last_promotion),
                    lag: host
                        .backup_lag()
                        .into_iter()
                        .map(|(node, lag)| BackupLagStatus {
                            backup: node.0,
                            acked: lag.acked.map(|a| a.0),
                            checkpoints: lag.checkpoints,
                            bytes: lag.bytes,
                        })
                        .collect(),
                }
            })
            .collect();
        let status = NodeStatus {
            node: self.config.me.id.0,
            leader: self.control.leader().map(|l| l.0),
            raft_term: self.control.raft_term(),
            services,
            replicas: self.replicas.iter().map(ReplicaHost::status).collect(),
            alive: self.config.members.iter().filter(|m| self.coordinator.alive(m.id, now)).map(|m| m.id.0).collect(),
            detections: self.instruments.detections.snapshot(),
            clients: self.instruments.clients.snapshot(),
        };
        *self.status.write().unwrap_or_else(|p| p.into_inner()) = status;
    }
}
