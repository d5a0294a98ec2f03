//! One service on one node: the driver of its role.
//!
//! The role logic — standby, promotion in place, primary duties with leases and re-protection,
//! deposition, switchover — is [`nonstop_control::role::ServiceRole`], a pure state machine the
//! failover simulator drives too. [`ServiceHost`] carries out its actions with real resources:
//!
//! * **standby**: a [`BackupServer`] on the service's replication address follows whichever
//!   primary attaches;
//! * **serve**: the backup server stops and its image — exactly the last checkpoint it held —
//!   becomes the primary's region in place (nothing is copied, so resuming costs nothing
//!   proportional to the region), or a new service starts from an empty region;
//! * **attach**: a thread connects a backup and brings it to the primary's checkpoint, by
//!   pre-copy (a spare) or by a whole image applied atomically (a holder a promotion kept);
//! * **depose**: release nothing more, give the region up.

use crate::config::{Checked, ServiceSpec};
use crate::{Instruments, NodeId};
use nonstop_control::ServiceRecord;
use nonstop_control::cluster::Command;
use nonstop_control::coordinator::ServiceReport;
use nonstop_control::role::{Action, Observed, Protection, RoleConfig, ServeFrom, ServiceRole};
use nonstop_net::admission::HandshakeLimits;
use nonstop_net::backup::{BackupControl, BackupServer};
use nonstop_net::primary::{Primary, PrimaryConfig};
use nonstop_net::told::Told;
use nonstop_proto::auth::ClusterKey;
use nonstop_proto::backup::Backup;
use nonstop_proto::history::ImageHistory;
use nonstop_proto::operator::OperatorReply;
use nonstop_proto::primary::BackupId;
use nonstop_proto::{CheckpointId, Nanos, Term};
use nonstop_region::{Mirror, Region};
use nonstop_service::Hosted;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long attaching a spare (sending it the whole image) may take.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

/// A switchover asked by an operator, handed to the service's driver.
#[derive(Debug)]
pub struct SwitchoverRequest {
    /// The service.
    pub service: String,
    /// The backup to promote.
    pub to: NodeId,
    /// Where the answer goes.
    pub reply: std::sync::mpsc::Sender<OperatorReply>,
}

/// A primary serving a service: what client threads use.
pub struct Active {
    /// The term it serves in.
    pub term: Term,
    /// The region.
    pub mirror: Arc<Mirror>,
    /// Its replicator.
    pub primary: Primary,
    /// The service logic.
    pub service: Hosted,
    /// Set when the node is deposed: nothing more is released.
    pub deposed: AtomicBool,
    /// Set during a switchover: new requests are refused (clients retry and follow the
    /// redirect once the new primary serves).
    pub draining: AtomicBool,
    /// Woken whenever a reply's hold may have ended (a checkpoint became held, a backup was
    /// lost, the node was deposed): the client port waits on it instead of a thread per reply.
    pub hold_changed: Arc<tokio::sync::Notify>,
    next_worker: AtomicUsize,
}

impl Active {
    /// A lane number for a new client connection ([`nonstop_service::Caller::lane`]).
    pub fn lane(&self) -> usize {
        self.next_worker.fetch_add(1, Ordering::Relaxed)
    }
}

/// What client threads see of a service.
pub struct Serving {
    active: RwLock<Option<Arc<Active>>>,
    primary_client: RwLock<(Option<SocketAddr>, Term)>,
    placement: tokio::sync::watch::Sender<Placement>,
}

impl Default for Serving {
    fn default() -> Serving {
        Serving {
            active: RwLock::default(),
            primary_client: RwLock::default(),
            placement: tokio::sync::watch::Sender::new(Placement::default()),
        }
    }
}

/// The control plane's record of a service as the ports that send clients to its primary see
/// it (the Redis port's `ROLE`, the sentinel port), with what this node's failure detector
/// believes of its nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// The record's term.
    pub term: Term,
    /// The record's primary; `None` until the service's record exists.
    pub primary: Option<NodeId>,
    /// The record's backups.
    pub backups: Vec<NodeId>,
    /// Which of them this node believes down.
    pub down: Vec<NodeId>,
}

impl Serving {
    /// The primary, if this node is it.
    pub fn active(&self) -> Option<Arc<Active>> {
        self.active.read().unwrap_or_else(|p| p.into_inner()).clone().filter(|a| !a.deposed.load(Ordering::SeqCst))
    }

    /// Where clients should go instead, and the term known.
    pub fn redirect(&self) -> (Option<SocketAddr>, Term) {
        *self.primary_client.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The service's placement now, and every change of it from here on.
    pub fn placement(&self) -> tokio::sync::watch::Receiver<Placement> {
        self.placement.subscribe()
    }
}

struct Standby {
    control: BackupControl,
    thread: JoinHandle<BackupServer>,
}

struct Attaching {
    node: NodeId,
    thread: JoinHandle<Result<BackupId, String>>,
}

/// A switchover's reply and timings, kept by the driver; the role machine decides.
struct SwitchoverReply {
    to: NodeId,
    started: Instant,
    /// The last checkpoint of this term and when it was cut.
    last: Option<(CheckpointId, Instant)>,
    reply: std::sync::mpsc::Sender<OperatorReply>,
}

/// How long a switchover may wait for the target to hold the last checkpoint.
const SWITCHOVER_LIMIT: Duration = Duration::from_secs(5);

/// What a primary's driver holds: the replicator, its links and the threads attaching.
struct PrimaryResources {
    active: Arc<Active>,
    /// Backups attached by this primary, by node.
    attached: BTreeMap<NodeId, BackupId>,
    attaching: Option<Attaching>,
    switchover: Option<SwitchoverReply>,
}

/// The resources the node holds for the service, as the role machine asked.
enum Resources {
    /// Nothing (a witness, a deposed primary whose region is not free yet).
    Nothing,
    Standby(Standby),
    Primary(Box<PrimaryResources>),
}

/// What a service waits for before it can stand by or start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    /// Its region's address is still mapped (a deposed primary's region not let go yet).
    Region,
    /// Its replication port cannot be bound yet.
    Port,
}

/// A service on this node: the driver of its [`ServiceRole`].
pub struct ServiceHost {
    spec: ServiceSpec,
    /// What it runs.
    hosted: Hosted,
    key: ClusterKey,
    listen: SocketAddr,
    /// The replication port, kept bound for the node's life and served by each backup it runs.
    port: Option<std::net::TcpListener>,
    /// The failure timeout: a backup silent this long while it owes an acknowledgement is
    /// dropped, as a silent node is.
    timeout: Duration,
    /// Bounds on the handshakes of its replication port while it stands by.
    handshake: HandshakeLimits,
    /// What standing by or starting waits for, once logged: retried every tick, told once.
    waiting: Told<Waiting>,
    /// Why attaching backups fails, once logged: the role retries with backoff, told once.
    attach_failing: Told<(NodeId, String)>,
    role: ServiceRole,
    resources: Resources,
    serving: Arc<Serving>,
    retired: Vec<Weak<Active>>,
    /// Origin of the role machine's clock (leases are timed on it).
    clock: Instant,
    /// The node's fault points and detection counters, handed to everything it starts.
    instruments: Instruments,
}

/// What the agent should do for a service.
#[derive(Debug, Default)]
pub struct Needs {
    /// Commands to propose.
    pub proposals: Vec<Command>,
}

/// Why carrying out an action failed: whether to back off before trying again.
struct Failed {
    backoff: bool,
}

impl ServiceHost {
    /// A host for `spec` on this node, idle until the first reconcile.
    /// `port` is its replication port, bound before the node said it was ready (`None`: it
    /// is bound when the service first stands by).
    pub fn new(
        spec: ServiceSpec,
        hosted: Hosted,
        config: &Checked,
        key: ClusterKey,
        instruments: Instruments,
        port: Option<std::net::TcpListener>,
    ) -> ServiceHost {
        let listen = config.replication_addr(config.me.id, &spec).expect("checked config has every member");
        let role = ServiceRole::new(RoleConfig {
            service: spec.name.clone(),
            me: config.me.id,
            witness: config.me.witness,
            holders: config.members.iter().filter(|m| !m.witness).map(|m| m.id).collect(),
            heartbeat_ns: config.heartbeat.as_nanos() as u64,
            timeout_ns: config.timeout.as_nanos() as u64,
            lease_ns: config.lease.as_nanos() as u64,
            switchover_limit_ns: SWITCHOVER_LIMIT.as_nanos() as u64,
            incarnation: {
                let mut bytes = [0u8; 8];
                let _ = getrandom::fill(&mut bytes);
                u64::from_le_bytes(bytes)
            },
        });
        ServiceHost {
            spec,
            hosted,
            key,
            listen,
            port,
            timeout: config.timeout,
            handshake: config.handshake,
            waiting: Told::default(),
            attach_failing: Told::default(),
            role,
            resources: Resources::Nothing,
            serving: Arc::new(Serving::default()),
            retired: Vec::new(),
            clock: Instant::now(),
            instruments,
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// How the primary finds what was written: "declared", "uffd" or "mprotect".
    pub fn tracking(&self) -> &'static str {
        self.spec.tracking.map_or("declared", |mode| mode.name())
    }

    /// Bytes of region this node holds for the service: its image while it stands by (a
    /// backup or a spare ready to be one), its region as primary, 0 when it holds none. A
    /// standby's image and a declared-writes primary's region are resident in full.
    pub fn region_bytes(&self) -> u64 {
        match self.resources {
            Resources::Nothing => 0,
            Resources::Standby(_) | Resources::Primary(_) => self.spec.region_len as u64,
        }
    }

    /// Whether this node serves the service as primary of `term`.
    pub fn serves(&self, term: Term) -> bool {
        self.role.primary_term() == Some(term)
    }

    /// What client threads use.
    pub fn serving(&self) -> Arc<Serving> {
        self.serving.clone()
    }

    fn nanos(&self, at: Instant) -> Nanos {
        Nanos(at.saturating_duration_since(self.clock).as_nanos() as u64)
    }

    /// This node's heartbeat report for the service.
    pub fn report(&self, record: Option<&ServiceRecord>) -> ServiceReport {
        let links = BTreeMap::new();
        let observed = self.observe(record, &|_| false, Instant::now(), &links);
        self.role.report(record, &observed)
    }

    fn observe<'a>(
        &self,
        record: Option<&'a ServiceRecord>,
        alive: &'a dyn Fn(NodeId) -> bool,
        now: Instant,
        links: &'a BTreeMap<NodeId, Option<CheckpointId>>,
    ) -> Observed<'a> {
        let (standby_held, primary_held) = match &self.resources {
            Resources::Nothing => (None, None),
            Resources::Standby(standby) => (standby.control.held(), None),
            Resources::Primary(primary) => (None, primary.active.primary.held()),
        };
        Observed {
            now: self.nanos(now),
            record,
            alive,
            region_free: self.retired.is_empty() && matches!(self.resources, Resources::Nothing),
            standby_held,
            primary_held,
            links,
        }
    }

    /// As primary: how far each attached backup is behind, by node.
    pub fn backup_lag(&self) -> Vec<(NodeId, nonstop_net::primary::BackupLag)> {
        let Resources::Primary(primary) = &self.resources else { return Vec::new() };
        let lags = primary.active.primary.backup_lag();
        primary
            .attached
            .iter()
            .filter_map(|(node, id)| lags.iter().find(|lag| lag.backup == *id).map(|lag| (*node, *lag)))
            .collect()
    }

    /// A `GrantLease` for this node in `term` was applied, answering ask `request`.
    pub fn on_lease_granted(&mut self, term: Term, request: u64) {
        if let Some(action) = self.role.on_lease_granted(term, request) {
            let mut needs = Needs::default();
            let _ = self.execute(action, None, Instant::now(), &mut needs);
        }
    }

    /// Brings the node in line with `record` (absent: the service is not created yet).
    /// `alive` says which nodes are believed up.
    pub fn reconcile(
        &mut self,
        record: Option<&ServiceRecord>,
        config: &Checked,
        alive: &dyn Fn(NodeId) -> bool,
        now: Instant,
    ) -> Needs {
        let mut needs = Needs::default();
        self.retired.retain(|weak| weak.strong_count() > 0);
        if let Some(record) = record {
            let client = config.member(record.primary).map(|m| m.client);
            *self.serving.primary_client.write().unwrap_or_else(|p| p.into_inner()) = (client, record.term);
            let placement = Placement {
                term: record.term,
                primary: Some(record.primary),
                backups: record.backups.clone(),
                down: std::iter::once(record.primary)
                    .chain(record.backups.iter().copied())
                    .filter(|n| !alive(*n))
                    .collect(),
            };
            self.serving.placement.send_if_modified(|known| {
                let changed = *known != placement;
                *known = placement;
                changed
            });
        }
        self.finish_attach(now);
        let links = match &self.resources {
            Resources::Primary(primary) => {
                let connected: BTreeMap<BackupId, Option<CheckpointId>> =
                    primary.active.primary.connected_backups().into_iter().collect();
                primary
                    .attached
                    .iter()
                    .filter_map(|(node, id)| connected.get(id).map(|acked| (*node, *acked)))
                    .collect()
            }
            _ => BTreeMap::new(),
        };
        let observed = self.observe(record, alive, now, &links);
        let actions = self.role.tick(&observed);
        for action in actions {
            // An action that could not be carried out leaves the role holding nothing; what
            // it was to be followed by (a lease ask for a primary that does not serve) is void.
            if let Err(failed) = self.execute(action, Some(config), now, &mut needs) {
                self.role.on_failed(self.nanos(now), failed.backoff);
                break;
            }
        }
        needs
    }

    fn finish_attach(&mut self, now: Instant) {
        let Resources::Primary(primary) = &mut self.resources else { return };
        if !primary.attaching.as_ref().is_some_and(|a| a.thread.is_finished()) {
            return;
        }
        let attaching = primary.attaching.take().expect("checked above");
        let ok = match attaching.thread.join().expect("attach thread panicked") {
            Ok(id) => {
                self.attach_failing.cleared();
                tracing::info!(service = self.spec.name, node = attaching.node.0, "backup attached; joining");
                primary.attached.insert(attaching.node, id);
                true
            }
            Err(error) => {
                if self.attach_failing.now((attaching.node, error.clone())) {
                    tracing::warn!(service = self.spec.name, node = attaching.node.0, %error, "attaching a backup failed; retrying with backoff");
                } else {
                    tracing::debug!(service = self.spec.name, node = attaching.node.0, %error, "attaching a backup failed again");
                }
                false
            }
        };
        let at = self.nanos(now);
        self.role.on_attached(attaching.node, ok, at);
    }

    fn execute(
        &mut self,
        action: Action,
        config: Option<&Checked>,
        now: Instant,
        needs: &mut Needs,
    ) -> Result<(), Failed> {
        match action {
            Action::Propose(command) => needs.proposals.push(command),
            Action::StandBy => self.stand_by()?,
            Action::Serve { term, from: ServeFrom::Image } => self.promote(term)?,
            Action::Serve { term, from: ServeFrom::Empty } => self.start_fresh(term)?,
            Action::Depose { term, primary } => self.depose(term, primary),
            Action::Attach { node, payload } => {
                let Resources::Primary(serving) = &mut self.resources else { return Ok(()) };
                let Some(addr) = config.and_then(|c| c.replication_addr(node, &self.spec)) else { return Ok(()) };
                let active = serving.active.clone();
                tracing::info!(service = self.spec.name, node = node.0, %addr, ?payload, "re-protecting: attaching a backup");
                let thread = std::thread::Builder::new()
                    .name(format!("nonstop-attach-{}", node.0))
                    .spawn(move || {
                        active.primary.attach_backup_with(addr, payload, ATTACH_TIMEOUT).map_err(|e| e.to_string())
                    })
                    .expect("spawn attach thread");
                serving.attaching = Some(Attaching { node, thread });
            }
            Action::SetRequired { nodes, protection } => {
                let Resources::Primary(serving) = &self.resources else { return Ok(()) };
                // A node not attached yet gets an id no link has: output waits for it.
                let ids = nodes
                    .iter()
                    .map(|node| serving.attached.get(node).copied().unwrap_or(BackupId(u32::MAX - node.0 as u32)))
                    .collect();
                if protection == Protection::TooFew {
                    tracing::info!(service = self.spec.name, "fewer backups than min_backups: replies are held");
                }
                serving.active.primary.set_required_with(ids, protection);
            }
            Action::SetLease { until } => {
                let Resources::Primary(serving) = &self.resources else { return Ok(()) };
                tracing::debug!(service = self.spec.name, until_ms = until.0 / 1_000_000, "lease granted");
                serving.active.primary.set_lease(Some(self.clock + Duration::from_nanos(until.0)));
            }
            Action::CutLast => {
                let Resources::Primary(serving) = &mut self.resources else { return Ok(()) };
                // Requests are refused from now on; wait out the transactions already running.
                serving.active.mirror.quiesced(|_, _| ());
                let last = serving.active.primary.checkpoint_now();
                if let Some(switchover) = &mut serving.switchover {
                    switchover.last = Some((last, now));
                }
                self.role.on_last_checkpoint(last);
            }
            Action::SwitchoverAbandoned { reason } => {
                let Resources::Primary(serving) = &mut self.resources else { return Ok(()) };
                tracing::warn!(service = self.spec.name, %reason, "switchover abandoned");
                serving.active.draining.store(false, Ordering::SeqCst);
                if let Some(switchover) = serving.switchover.take() {
                    let _ = switchover.reply.send(OperatorReply::Unavailable { reason });
                }
            }
        }
        Ok(())
    }

    /// Maps the service's region; fails while the address is still taken, e.g. by a deposed
    /// primary's region that client threads have not let go of yet (logged when that starts).
    fn map_region(&mut self) -> Result<Region, Failed> {
        match Region::map(self.spec.region_base, self.spec.region_len) {
            Ok(region) => {
                if self.waiting.is(&Waiting::Region) {
                    self.waiting.cleared();
                }
                Ok(region)
            }
            Err(error) => {
                if self.waiting.now(Waiting::Region) {
                    tracing::warn!(service = self.spec.name, %error, "cannot map the region yet; retrying");
                }
                Err(Failed { backoff: false })
            }
        }
    }

    fn stand_by(&mut self) -> Result<(), Failed> {
        let region = self.map_region()?;
        let check: nonstop_net::backup::ConsistencyCheck = {
            // The service's own check and the platform's, whatever name the request gives.
            let hosted = self.hosted.clone();
            Arc::new(move |_, image| hosted.check(image))
        };
        let listener = match &self.port {
            Some(port) => port.try_clone(),
            None => std::net::TcpListener::bind(self.listen),
        };
        let server = match listener.and_then(|l| BackupServer::with_listener(l, self.key.clone(), region, Some(check)))
        {
            Ok(server) => {
                server.with_detections(self.instruments.detections.clone()).with_handshake_limits(self.handshake)
            }
            Err(error) if error.kind() == std::io::ErrorKind::OutOfMemory => {
                // Making a region resident is not free: try again in a while, not every tick.
                tracing::error!(service = self.spec.name, %error, "cannot stand by as a backup");
                return Err(Failed { backoff: true });
            }
            Err(error) => {
                if self.waiting.now(Waiting::Port) {
                    tracing::warn!(service = self.spec.name, addr = %self.listen, %error, "cannot listen for a primary yet; retrying");
                }
                return Err(Failed { backoff: false });
            }
        };
        self.waiting.cleared();
        let control = server.control();
        let thread = std::thread::Builder::new()
            .name(format!("nonstop-backup-{}", self.spec.name))
            .spawn(move || {
                let mut server = server;
                server.serve();
                server
            })
            .expect("spawn backup server");
        tracing::info!(service = self.spec.name, addr = %self.listen, "standing by as a backup");
        self.resources = Resources::Standby(Standby { control, thread });
        Ok(())
    }

    /// Stops the backup server, if one runs, and returns what it held.
    fn stop_standby(&mut self) -> Option<(Region, Backup)> {
        let Resources::Standby(standby) = std::mem::replace(&mut self.resources, Resources::Nothing) else {
            return None;
        };
        standby.control.stop();
        let server = standby.thread.join().expect("backup server thread panicked");
        Some(server.into_parts())
    }

    fn start_fresh(&mut self, term: Term) -> Result<(), Failed> {
        // The configured first primary may have stood by until the record existed.
        drop(self.stop_standby());
        let mut region = self.map_region()?;
        if self.spec.tracking.is_none() {
            // Resident from the start, as a backup's image is: no transaction waits for the
            // kernel to find and zero a page, and a node short of memory says so here, not
            // while serving. (Transparent mode sets its 4 KiB pages up itself.)
            if let Err(error) = region.populate() {
                tracing::error!(service = self.spec.name, %error, "cannot start the service's primary");
                return Err(Failed { backoff: true });
            }
        }
        let mirror = self.mirror(region, CheckpointId(1), None)?;
        if let Err(error) = self.hosted.init(&mirror) {
            // The checked config makes this a bug (the mode or the size), not an input.
            tracing::error!(service = self.spec.name, %error, "cannot create the service's state");
            return Err(Failed { backoff: true });
        }
        tracing::info!(service = self.spec.name, term = term.0, "primary of a new service");
        self.become_primary(mirror, term, None);
        Ok(())
    }

    /// The primary's mirror of `region` (holding the image of `promoted`, the backup that held
    /// it, if any): declared writes, line-sealed (the backup's seals carry over); or
    /// transparent mode, where the kernel finds the writes, there are no seals, and only the
    /// pages the backup wrote are read to set up the shadow. Fails if write tracking failed,
    /// which the configuration check makes unlikely: this node then serves nothing, and the
    /// control plane fails over when it keeps reporting no region.
    fn mirror(&self, region: Region, first: CheckpointId, promoted: Option<Backup>) -> Result<Arc<Mirror>, Failed> {
        let protocol = Some(self.spec.protocol);
        let tracked = match (self.spec.tracking, promoted) {
            (None, None) => Ok(Mirror::new(region, protocol, first)),
            (None, Some(backup)) => {
                let written: Vec<usize> = backup.written_pages().pages().collect();
                Ok(Mirror::resume(region, protocol, first, backup.into_seals(), written))
            }
            (Some(mode), None) => Mirror::tracked(region, Some(mode), first),
            (Some(mode), Some(backup)) => {
                Mirror::tracked_resume(region, Some(mode), first, backup.written_pages().pages())
            }
        };
        match tracked {
            Ok(mirror) => Ok(Arc::new(mirror.with_write_extent(self.hosted.write_extent()))),
            Err(error) => {
                tracing::error!(service = self.spec.name, %error, "transparent mode cannot start: serving nothing");
                Err(Failed { backoff: true })
            }
        }
    }

    fn promote(&mut self, term: Term) -> Result<(), Failed> {
        let Some((region, backup)) = self.stop_standby() else { return Err(Failed { backoff: false }) };
        let Some((held_term, held)) = backup.held_with_term() else {
            // The image was forgotten (found corrupt) between the tick and the stop.
            return Err(Failed { backoff: false });
        };
        let history = backup.history().clone();
        let mirror = self.mirror(region, held.next(), Some(backup))?;
        tracing::info!(
            service = self.spec.name,
            term = term.0,
            from_term = held_term.0,
            checkpoint = held.0,
            "promoted: resuming from the last checkpoint held"
        );
        self.become_primary(mirror, term, Some(history));
        Ok(())
    }

    /// Serves `mirror` in `term`; `resumed` is the history of the promoted backup's image the
    /// mirror resumed from, with which the other holders are rebased.
    fn become_primary(&mut self, mirror: Arc<Mirror>, term: Term, resumed: Option<ImageHistory>) {
        mirror.set_corruption_handler(crate::fail_stop);
        crate::integrity::start_scrubber(&self.spec.name, &mirror);
        let config = PrimaryConfig { term, policy: self.spec.policy, required_backups: 0, key: self.key.clone() };
        let primary = match resumed {
            Some(history) => Primary::start_resumed(mirror.clone(), config, history),
            None => Primary::start(mirror.clone(), config),
        };
        // Output waits for a lease, and for the record's backups once it names some.
        primary.set_required(BTreeSet::new());
        primary.set_silence_limit(Some(self.timeout));
        primary.set_fault_points(self.instruments.faults.clone());
        primary.set_detections(self.instruments.detections.clone());
        let hold_changed = Arc::new(tokio::sync::Notify::new());
        {
            let hold_changed = hold_changed.clone();
            primary.set_hold_listener(Box::new(move || hold_changed.notify_waiters()));
        }
        let active = Arc::new(Active {
            term,
            mirror,
            primary,
            service: self.hosted.clone(),
            deposed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            hold_changed,
            next_worker: AtomicUsize::new(0),
        });
        *self.serving.active.write().unwrap_or_else(|p| p.into_inner()) = Some(active.clone());
        self.resources = Resources::Primary(Box::new(PrimaryResources {
            active,
            attached: BTreeMap::new(),
            attaching: None,
            switchover: None,
        }));
    }

    /// Starts moving the primary role to `request.to`: refuse new requests, cut the last
    /// checkpoint of this term, and once the target holds it, propose its promotion.
    pub fn begin_switchover(&mut self, record: Option<&ServiceRecord>, request: SwitchoverRequest, now: Instant) {
        let at = self.nanos(now);
        if let Err(refusal) = self.role.begin_switchover(record, request.to, at) {
            let _ = request.reply.send(OperatorReply::Rejected { reason: refusal.to_string() });
            return;
        }
        let Resources::Primary(serving) = &mut self.resources else { unreachable!("the role serves") };
        tracing::info!(service = self.spec.name, to = request.to.0, "switchover: refusing new requests");
        serving.active.draining.store(true, Ordering::SeqCst);
        serving.switchover = Some(SwitchoverReply { to: request.to, started: now, last: None, reply: request.reply });
    }

    fn depose(&mut self, term: Term, new_primary: NodeId) {
        let Resources::Primary(mut serving) = std::mem::replace(&mut self.resources, Resources::Nothing) else {
            return;
        };
        if let Some(switchover) = serving.switchover.take() {
            let me = self.role.config().me;
            let reply = match switchover.last {
                Some((last, drained)) if new_primary == switchover.to => OperatorReply::SwitchedOver {
                    from: me.0,
                    to: new_primary.0,
                    term: term.0,
                    checkpoint: last.0,
                    drained_us: drained.duration_since(switchover.started).as_micros() as u64,
                    committed_us: switchover.started.elapsed().as_micros() as u64,
                },
                _ => OperatorReply::Unavailable {
                    reason: format!("another change of primary came first: {new_primary} in {term}"),
                },
            };
            let _ = switchover.reply.send(reply);
        }
        serving.active.deposed.store(true, Ordering::SeqCst);
        serving.active.hold_changed.notify_waiters();
        serving.active.primary.set_lease(None);
        *self.serving.active.write().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::warn!(
            service = self.spec.name,
            term = serving.active.term.0,
            new_term = term.0,
            new_primary = new_primary.0,
            "deposed: releasing nothing more, giving the region up"
        );
        self.retired.push(Arc::downgrade(&serving.active));
        // An attach thread holds the active primary; it ends on its own.
        drop(serving.attaching.take());
    }
}

/// Guards a value with a mutex that ignores poisoning (a panicked client thread must not stop
/// the agent).
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
