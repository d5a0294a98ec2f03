//! One service on one node: the role the node plays in it and the moves between roles.
//!
//! The control plane's record says who is primary and who are backups; [`ServiceHost::reconcile`]
//! brings the node in line with it:
//!
//! * **standby** (a backup, or a spare waiting to become one): a [`BackupServer`] on the
//!   service's replication address follows whichever primary attaches;
//! * **promotion** (the record names this node primary of a new term): the backup server stops,
//!   the image — exactly the last checkpoint it held — becomes the primary's region in place, and
//!   the node serves from it at once. Nothing is copied, so resuming costs nothing proportional to
//!   the region;
//! * **primary**: keeps the set of backups whose acknowledgements release output equal to the
//!   record's, asks for a lease while it has none, asks to drop a backup whose link died, and
//!   re-protects: attaches a spare with a whole image, waits until the spare holds everything
//!   already released, then asks to add it;
//! * **deposed** (the record names another primary): stops releasing at once, gives the region
//!   up, and comes back as a spare.

use crate::NodeId;
use crate::client_server::SwitchoverRequest;
use crate::config::{Checked, ServiceSpec};
use nonstop_control::ServiceRecord;
use nonstop_control::cluster::Command;
use nonstop_control::coordinator::{Role, ServiceReport};
use nonstop_control::lease::LeaseKeeper;
use nonstop_net::backup::{BackupControl, BackupServer};
use nonstop_net::primary::{Primary, PrimaryConfig};
use nonstop_proto::auth::ClusterKey;
use nonstop_proto::backup::Backup;
use nonstop_proto::client::ClientReply;
use nonstop_proto::primary::BackupId;
use nonstop_proto::{CheckpointId, Nanos, Term};
use nonstop_region::{Mirror, Region};
use nonstop_workloads::app::App;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long attaching a spare (sending it the whole image) may take.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

/// A primary serving a service: what client threads use.
pub struct Active {
    /// The term it serves in.
    pub term: Term,
    /// The region.
    pub mirror: Arc<Mirror>,
    /// Its replicator.
    pub primary: Primary,
    /// The service logic.
    pub app: App,
    /// Set when the node is deposed: nothing more is released.
    pub deposed: AtomicBool,
    /// Set during a switchover: new requests are refused (clients retry and follow the
    /// redirect once the new primary serves).
    pub draining: AtomicBool,
    next_worker: AtomicUsize,
}

impl Active {
    /// A worker number for a new client connection (its history segment).
    pub fn worker(&self) -> usize {
        self.next_worker.fetch_add(1, Ordering::Relaxed)
    }
}

/// What client threads see of a service.
#[derive(Default)]
pub struct Serving {
    active: RwLock<Option<Arc<Active>>>,
    primary_client: RwLock<(Option<SocketAddr>, Term)>,
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
}

struct Standby {
    control: BackupControl,
    thread: JoinHandle<BackupServer>,
}

struct Attaching {
    node: NodeId,
    thread: JoinHandle<Result<BackupId, String>>,
}

/// A switchover under way on the primary.
struct Switchover {
    to: NodeId,
    started: Instant,
    /// The last checkpoint of this term, cut once new requests were refused.
    last: Option<(CheckpointId, Instant)>,
    reply: std::sync::mpsc::Sender<ClientReply>,
}

/// How long a switchover may wait for the target to hold the last checkpoint.
const SWITCHOVER_LIMIT: Duration = Duration::from_secs(5);

struct PrimaryRole {
    active: Arc<Active>,
    switchover: Option<Switchover>,
    /// Backups attached by this primary, by node.
    attached: BTreeMap<NodeId, BackupId>,
    attaching: Option<Attaching>,
    /// Attached and required, waiting until they hold everything released before AddBackup.
    /// Joining nodes and the newest record version an `AddBackup` for them was proposed at.
    joining: BTreeMap<NodeId, Option<u64>>,
    /// Asks and grants of the lease output needs.
    lease: LeaseKeeper,
    /// This primary started the service from an empty region (its asks say so).
    fresh: bool,
    required_version: Option<(u64, BTreeSet<NodeId>)>,
    /// When each required backup was first seen disconnected.
    lost_since: BTreeMap<NodeId, Instant>,
    last_proposal: BTreeMap<String, Instant>,
    attach_failures: BTreeMap<NodeId, Instant>,
}

enum LocalRole {
    /// Holds nothing (a witness, a deposed primary whose region is not free yet).
    Idle,
    Standby(Standby),
    Primary(Box<PrimaryRole>),
}

/// A service on this node.
pub struct ServiceHost {
    spec: ServiceSpec,
    key: ClusterKey,
    me: NodeId,
    witness: bool,
    listen: SocketAddr,
    /// The failure timeout: a backup silent this long while it owes an acknowledgement is
    /// dropped, as a silent node is.
    timeout: Duration,
    role: LocalRole,
    serving: Arc<Serving>,
    retired: Vec<Weak<Active>>,
    /// Origin of the lease clock.
    clock: Instant,
    /// Random per process: request numbers of lease asks never repeat across restarts.
    incarnation: u64,
    /// After the node lacked the memory to make the region resident, when to try again.
    resident_retry_at: Option<Instant>,
}

/// How long a node that could not make a region resident (a backup's, or a new service's
/// primary's) waits before trying again.
const RESIDENT_RETRY: Duration = Duration::from_secs(1);

/// What the agent should do for a service.
#[derive(Debug, Default)]
pub struct Needs {
    /// Commands to propose.
    pub proposals: Vec<Command>,
}

impl ServiceHost {
    /// A host for `spec` on this node, idle until the first reconcile.
    pub fn new(spec: ServiceSpec, config: &Checked, key: ClusterKey) -> ServiceHost {
        let listen = config.replication_addr(config.me.id, &spec).expect("checked config has every member");
        ServiceHost {
            spec,
            key,
            me: config.me.id,
            witness: config.me.witness,
            listen,
            timeout: config.timeout,
            role: LocalRole::Idle,
            serving: Arc::new(Serving::default()),
            retired: Vec::new(),
            clock: Instant::now(),
            incarnation: {
                let mut bytes = [0u8; 8];
                let _ = getrandom::fill(&mut bytes);
                u64::from_le_bytes(bytes)
            },
            resident_retry_at: None,
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
        match self.role {
            LocalRole::Idle => 0,
            LocalRole::Standby(_) | LocalRole::Primary(_) => self.spec.region_len as u64,
        }
    }

    /// What client threads use.
    pub fn serving(&self) -> Arc<Serving> {
        self.serving.clone()
    }

    /// This node's heartbeat report for the service.
    pub fn report(&self, record: Option<&ServiceRecord>) -> ServiceReport {
        let term_known = record.map_or(Term(0), |r| r.term);
        let (role, term, held) = match &self.role {
            LocalRole::Idle => (Role::Spare, term_known, None),
            LocalRole::Standby(standby) => match standby.control.held() {
                Some((term, checkpoint)) => {
                    let backup = record.is_some_and(|r| r.backups.contains(&self.me) && r.term == term);
                    (if backup { Role::Backup } else { Role::Joining }, term, Some(checkpoint))
                }
                None => (Role::Spare, term_known, None),
            },
            LocalRole::Primary(primary) => (Role::Primary, primary.active.term, primary.active.primary.held()),
        };
        ServiceReport { service: self.spec.name.clone(), role, term, held }
    }

    /// As primary: how far each attached backup is behind, by node.
    pub fn backup_lag(&self) -> Vec<(NodeId, nonstop_net::primary::BackupLag)> {
        let LocalRole::Primary(role) = &self.role else { return Vec::new() };
        let lags = role.active.primary.backup_lag();
        role.attached
            .iter()
            .filter_map(|(node, id)| lags.iter().find(|lag| lag.backup == *id).map(|lag| (*node, *lag)))
            .collect()
    }

    /// A `GrantLease` for this node in `term` was applied, answering ask `request`.
    pub fn on_lease_granted(&mut self, term: Term, request: u64, lease: Duration) {
        if let LocalRole::Primary(primary) = &mut self.role
            && primary.active.term == term
            && let Some(until) = primary.lease.granted(request, lease.as_nanos() as u64)
        {
            // Started: later asks must not claim an empty start (they would be refused).
            primary.fresh = false;
            // Timed from when it was asked, before the grant existed: the holder's lease ends
            // no later than any wait the control plane times from the grant.
            tracing::debug!(service = self.spec.name, request, until_ms = until.0 / 1_000_000, "lease granted");
            primary.active.primary.set_lease(Some(self.clock + Duration::from_nanos(until.0)));
        }
    }

    fn nanos(&self, at: Instant) -> Nanos {
        Nanos(at.saturating_duration_since(self.clock).as_nanos() as u64)
    }

    /// Brings the node in line with `record` (absent: the service is not created yet).
    /// `alive` says which nodes are believed up; `client_of` maps a node to its client address.
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
        }
        if self.witness {
            return needs;
        }
        let Some(record) = record else {
            self.ensure_standby(now);
            return needs;
        };
        let wants_primary = record.primary == self.me;
        match &mut self.role {
            LocalRole::Primary(primary) if !wants_primary || primary.active.term != record.term => {
                self.depose(record);
                self.ensure_standby(now);
            }
            LocalRole::Primary(_) => self.primary_duties(record, config, alive, now, &mut needs),
            LocalRole::Standby(_) if wants_primary => self.promote(record, now, &mut needs),
            LocalRole::Idle if wants_primary => self.start_fresh(record, now, &mut needs),
            LocalRole::Standby(_) => {}
            LocalRole::Idle => self.ensure_standby(now),
        }
        needs
    }

    /// Maps the service's region; `None` (logged) while the address is still taken, e.g. by a
    /// deposed primary's region that client threads have not let go of yet.
    fn map_region(&self) -> Option<Region> {
        Region::map(self.spec.region_base, self.spec.region_len)
            .inspect_err(|error| tracing::warn!(service = self.spec.name, %error, "cannot map the region yet"))
            .ok()
    }

    fn ensure_standby(&mut self, now: Instant) {
        if !matches!(self.role, LocalRole::Idle)
            || !self.retired.is_empty()
            || self.resident_retry_at.is_some_and(|at| now < at)
        {
            return;
        }
        let Some(region) = self.map_region() else { return };
        let check: nonstop_net::backup::ConsistencyCheck = Arc::new(nonstop_workloads::check);
        let server = match BackupServer::bind(self.listen, self.key.clone(), region, Some(check)) {
            Ok(server) => server,
            Err(error) if error.kind() == std::io::ErrorKind::OutOfMemory => {
                // Making a region resident is not free: try again in a while, not every tick.
                tracing::error!(service = self.spec.name, %error, "cannot stand by as a backup");
                self.resident_retry_at = Some(now + RESIDENT_RETRY);
                return;
            }
            Err(error) => {
                tracing::warn!(service = self.spec.name, addr = %self.listen, %error, "cannot listen for a primary yet");
                return;
            }
        };
        self.resident_retry_at = None;
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
        self.role = LocalRole::Standby(Standby { control, thread });
    }

    fn start_fresh(&mut self, record: &ServiceRecord, now: Instant, needs: &mut Needs) {
        if !record.may_start_empty() || !self.retired.is_empty() {
            // The service has history elsewhere: this node lost its region (it restarted) and
            // must not serve an empty one. The leader sees it report no region and fails over.
            return;
        }
        if self.resident_retry_at.is_some_and(|at| now < at) {
            return;
        }
        let Some(mut region) = self.map_region() else { return };
        if self.spec.tracking.is_none() {
            // Resident from the start, as a backup's image is: no transaction waits for the
            // kernel to find and zero a page, and a node short of memory says so here, not
            // while serving. (Transparent mode sets its 4 KiB pages up itself.)
            if let Err(error) = region.populate() {
                tracing::error!(service = self.spec.name, %error, "cannot start the service's primary");
                self.resident_retry_at = Some(now + RESIDENT_RETRY);
                return;
            }
        }
        self.resident_retry_at = None;
        let Some(mirror) = self.mirror(region, CheckpointId(1), None) else { return };
        if let Err(error) = self.spec.app.load(&mirror) {
            // The checked config makes this a bug (the mode or the size), not an input.
            tracing::error!(service = self.spec.name, %error, "cannot create the service's state");
            return;
        }
        tracing::info!(service = self.spec.name, term = record.term.0, "primary of a new service");
        self.become_primary(mirror, record.term, true, now, needs);
    }

    /// The primary's mirror of `region` (holding the image of `promoted`, the backup that held
    /// it, if any): declared writes, line-sealed (the backup's seals carry over); or
    /// transparent mode, where the kernel finds the writes, there are no seals, and only the
    /// pages the backup wrote are read to set up the shadow. `None` if write tracking failed,
    /// which the configuration check makes unlikely: this node then serves nothing, and the
    /// control plane fails over when it keeps reporting no region.
    fn mirror(&self, region: Region, first: CheckpointId, promoted: Option<Backup>) -> Option<Arc<Mirror>> {
        let protocol = Some(self.spec.protocol);
        let tracked = match (self.spec.tracking, promoted) {
            (None, None) => Ok(Mirror::new(region, protocol, first)),
            (None, Some(backup)) => Ok(Mirror::resume(region, protocol, first, backup.into_seals())),
            (Some(mode), None) => Mirror::tracked(region, Some(mode), first),
            (Some(mode), Some(backup)) => {
                Mirror::tracked_resume(region, Some(mode), first, backup.written_pages().pages())
            }
        };
        let mirror = match tracked {
            Ok(mirror) => mirror,
            Err(error) => {
                tracing::error!(service = self.spec.name, %error, "transparent mode cannot start: serving nothing");
                return None;
            }
        };
        Some(Arc::new(mirror))
    }

    fn promote(&mut self, record: &ServiceRecord, now: Instant, needs: &mut Needs) {
        let LocalRole::Standby(standby) = std::mem::replace(&mut self.role, LocalRole::Idle) else { unreachable!() };
        standby.control.stop();
        let server = standby.thread.join().expect("backup server thread panicked");
        let (region, backup) = server.into_parts();
        let Some((held_term, held)) = backup.held_with_term() else {
            // Never followed a primary: the configured first primary of a new service, which
            // stood by until the record existed.
            drop(region);
            self.start_fresh(record, now, needs);
            return;
        };
        let Some(mirror) = self.mirror(region, held.next(), Some(backup)) else { return };
        tracing::info!(
            service = self.spec.name,
            term = record.term.0,
            from_term = held_term.0,
            checkpoint = held.0,
            "promoted: resuming from the last checkpoint held"
        );
        self.become_primary(mirror, record.term, false, now, needs);
    }

    fn become_primary(&mut self, mirror: Arc<Mirror>, term: Term, fresh: bool, now: Instant, needs: &mut Needs) {
        mirror.set_corruption_handler(crate::fail_stop);
        crate::integrity::start_scrubber(&self.spec.name, &mirror);
        let primary = Primary::start(
            mirror.clone(),
            PrimaryConfig { term, policy: self.spec.policy, required_backups: 0, key: self.key.clone() },
        );
        // Output waits for a lease, and for the record's backups once it names some.
        primary.set_required(BTreeSet::new());
        primary.set_silence_limit(Some(self.timeout));
        let active = Arc::new(Active {
            term,
            mirror,
            primary,
            app: self.spec.app,
            deposed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            next_worker: AtomicUsize::new(0),
        });
        *self.serving.active.write().unwrap_or_else(|p| p.into_inner()) = Some(active.clone());
        let mut role = PrimaryRole {
            active,
            switchover: None,
            attached: BTreeMap::new(),
            attaching: None,
            joining: BTreeMap::new(),
            lease: LeaseKeeper::new(self.incarnation),
            fresh,
            required_version: None,
            lost_since: BTreeMap::new(),
            last_proposal: BTreeMap::new(),
            attach_failures: BTreeMap::new(),
        };
        let request = role.lease.ask(self.nanos(now));
        let service = self.spec.name.clone();
        needs.proposals.push(Command::GrantLease { service, term, node: self.me, request, fresh });
        self.role = LocalRole::Primary(Box::new(role));
    }

    /// Starts moving the primary role to `request.to`: refuse new requests, cut the last
    /// checkpoint of this term, and once the target holds it, propose its promotion.
    pub fn begin_switchover(&mut self, record: Option<&ServiceRecord>, request: SwitchoverRequest, now: Instant) {
        let reject = |reason: String| {
            let _ = request.reply.send(ClientReply::Rejected { reason });
        };
        let LocalRole::Primary(role) = &mut self.role else {
            return reject("this node is not the primary any more; retry".into());
        };
        let Some(record) = record.filter(|r| r.primary == self.me && r.term == role.active.term) else {
            return reject("this node's term is ending; retry".into());
        };
        if !record.backups.contains(&request.to) {
            return reject(format!(
                "{} is not a backup of {} (backups: {:?}): only a backup holds the state",
                request.to, self.spec.name, record.backups
            ));
        }
        if role.switchover.is_some() {
            return reject("a switchover is already under way".into());
        }
        tracing::info!(service = self.spec.name, to = request.to.0, "switchover: refusing new requests");
        role.active.draining.store(true, Ordering::SeqCst);
        role.switchover = Some(Switchover { to: request.to, started: now, last: None, reply: request.reply });
    }

    fn depose(&mut self, record: &ServiceRecord) {
        let LocalRole::Primary(mut primary) = std::mem::replace(&mut self.role, LocalRole::Idle) else { return };
        if let Some(switchover) = primary.switchover.take() {
            let promotion = record.last_promotion.filter(|p| p.to == switchover.to && p.from == self.me);
            let reply = match (promotion, switchover.last) {
                (Some(promotion), Some((last, drained))) => ClientReply::SwitchedOver {
                    from: self.me.0,
                    to: promotion.to.0,
                    term: promotion.term.0,
                    checkpoint: last.0,
                    drained_us: drained.duration_since(switchover.started).as_micros() as u64,
                    committed_us: switchover.started.elapsed().as_micros() as u64,
                },
                _ => ClientReply::Unavailable { reason: format!("another change of primary came first: {record:?}") },
            };
            let _ = switchover.reply.send(reply);
        }
        primary.active.deposed.store(true, Ordering::SeqCst);
        primary.active.primary.set_lease(None);
        *self.serving.active.write().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::warn!(
            service = self.spec.name,
            term = primary.active.term.0,
            new_term = record.term.0,
            new_primary = record.primary.0,
            "deposed: releasing nothing more, giving the region up"
        );
        self.retired.push(Arc::downgrade(&primary.active));
        if let Some(attaching) = primary.attaching {
            // The attach thread holds the active primary; it ends on its own.
            drop(attaching);
        }
    }

    fn primary_duties(
        &mut self,
        record: &ServiceRecord,
        config: &Checked,
        alive: &dyn Fn(NodeId) -> bool,
        now: Instant,
        needs: &mut Needs,
    ) {
        let LocalRole::Primary(role) = &mut self.role else { return };
        let name = self.spec.name.clone();
        let term = record.term;
        let primary = &role.active.primary;
        let connected: BTreeMap<BackupId, Option<CheckpointId>> = primary.connected_backups().into_iter().collect();
        // 1. Finished attaches become joining backups: required at once, so that output cannot
        //    run ahead of them, and added to the record once they hold everything released.
        if role.attaching.as_ref().is_some_and(|a| a.thread.is_finished()) {
            let attaching = role.attaching.take().expect("checked above");
            match attaching.thread.join().expect("attach thread panicked") {
                Ok(id) => {
                    tracing::info!(service = name, node = attaching.node.0, "spare attached; joining");
                    role.attached.insert(attaching.node, id);
                    role.joining.insert(attaching.node, None);
                    role.required_version = None;
                }
                Err(error) => {
                    tracing::warn!(service = name, node = attaching.node.0, %error, "attaching a spare failed");
                    role.attach_failures.insert(attaching.node, now);
                }
            }
        }
        role.joining.retain(|node, _| !record.backups.contains(node));
        // 2. The required set: the record's backups and the joining ones.
        let required_nodes: BTreeSet<NodeId> = record.backups.iter().chain(role.joining.keys()).copied().collect();
        if role.required_version.as_ref() != Some(&(record.version, required_nodes.clone())) {
            let ids = required_nodes
                .iter()
                .map(|node| role.attached.get(node).copied().unwrap_or(BackupId(u32::MAX - node.0 as u32)))
                .collect();
            primary.set_required(ids);
            role.required_version = Some((record.version, required_nodes.clone()));
        }
        // 0. A switchover: cut the last checkpoint once running transactions finished, then
        //    promote the target when it holds it.
        if let Some(switchover) = &mut role.switchover {
            if switchover.last.is_none() {
                // Requests are refused from now on; wait out the transactions already running.
                role.active.mirror.quiesced(|_, _| ());
                switchover.last = Some((primary.checkpoint_now(), now));
            }
            let (last, _) = switchover.last.expect("set above");
            if now.duration_since(switchover.started) > SWITCHOVER_LIMIT {
                tracing::warn!(
                    service = name,
                    to = switchover.to.0,
                    "switchover abandoned: the target never held the last checkpoint"
                );
                role.active.draining.store(false, Ordering::SeqCst);
                let reason = format!("{} did not hold the last checkpoint within {SWITCHOVER_LIMIT:?}", switchover.to);
                let _ = switchover.reply.send(ClientReply::Unavailable { reason });
                role.switchover = None;
            } else if primary.held().is_some_and(|held| held >= last) {
                let command = Command::Promote {
                    service: name.clone(),
                    from_term: term,
                    node: switchover.to,
                    checkpoint: last,
                    reason: nonstop_control::PromotionReason::Switchover,
                };
                if role.last_proposal.get("switchover").is_none_or(|at| now.duration_since(*at) >= config.heartbeat * 5)
                {
                    role.last_proposal.insert("switchover".into(), now);
                    needs.proposals.push(command);
                }
            }
        }
        let mut propose = |key: String, command: Command, every: Duration| {
            if role.last_proposal.get(&key).is_none_or(|at| now.duration_since(*at) >= every) {
                role.last_proposal.insert(key, now);
                needs.proposals.push(command);
                true
            } else {
                false
            }
        };
        let retry = config.timeout;
        // 3. Joining backups that hold everything released are added to the record.
        let held = primary.held();
        let mut adding = Vec::new();
        for node in role.joining.keys() {
            let Some(id) = role.attached.get(node) else { continue };
            let acked = connected.get(id).copied().flatten();
            if acked.is_some() && acked >= held {
                let version = record.version;
                let command = Command::AddBackup { service: name.clone(), term, node: *node, version };
                if propose(format!("add-{}", node.0), command, retry) {
                    adding.push((*node, version));
                }
            }
        }
        for (node, version) in adding {
            let proposed = role.joining.entry(node).or_insert(None);
            *proposed = Some(proposed.map_or(version, |p| p.max(version)));
        }
        // 4. A backup whose link is down past the timeout is dropped from the record.
        for node in &record.backups {
            let up = role.attached.get(node).is_some_and(|id| connected.contains_key(id));
            if up {
                role.lost_since.remove(node);
                continue;
            }
            let since = *role.lost_since.entry(*node).or_insert(now);
            if now.duration_since(since) >= config.timeout {
                let command = Command::DropBackup { service: name.clone(), term, node: *node };
                propose(format!("drop-{}", node.0), command, retry);
            }
        }
        // A joining node whose link died stops being waited for only once no AddBackup for it
        // can still apply: never proposed, or proposed at a version the record has passed.
        // Otherwise move the version on with a barrier and keep waiting until it applied.
        let mut barrier = false;
        for (node, proposed) in role.joining.clone() {
            if role.attached.get(&node).is_some_and(|id| connected.contains_key(id)) {
                continue;
            }
            if proposed.is_none_or(|version| record.version > version) {
                role.joining.remove(&node);
                role.required_version = None;
            } else {
                barrier = true;
            }
        }
        if barrier {
            propose("barrier".into(), Command::Barrier { service: name.clone(), term }, retry);
        }
        // 5. Keep a lease: output leaves only while it lasts. Until one is granted, ask again
        //    every other heartbeat: a proposal is lost when leadership moves.
        let at = Nanos(now.saturating_duration_since(self.clock).as_nanos() as u64);
        if role.lease.should_ask(at, config.lease.as_nanos() as u64, (config.heartbeat * 2).as_nanos() as u64) {
            let request = role.lease.ask(at);
            tracing::debug!(service = name, request, at_ms = at.0 / 1_000_000, "asking for a lease");
            let fresh = role.fresh;
            needs.proposals.push(Command::GrantLease { service: name.clone(), term, node: self.me, request, fresh });
        }
        // 6. Re-protection: attach a spare while fewer backups than wanted.
        let have = record.backups.len() + role.joining.len() + role.attaching.is_some() as usize;
        if have < record.backups_wanted as usize && role.attaching.is_none() {
            let spare = config.members.iter().find(|m| {
                !m.witness
                    && m.id != self.me
                    && !record.backups.contains(&m.id)
                    && !role.joining.contains_key(&m.id)
                    && alive(m.id)
                    && role.attach_failures.get(&m.id).is_none_or(|at| now.duration_since(*at) >= retry)
            });
            if let Some(spare) = spare {
                let addr = config.replication_addr(spare.id, &self.spec).expect("member has an address");
                let active = role.active.clone();
                let node = spare.id;
                tracing::info!(service = name, node = node.0, %addr, "re-protecting: attaching a spare");
                let thread = std::thread::Builder::new()
                    .name(format!("nonstop-attach-{}", node.0))
                    .spawn(move || active.primary.attach_backup(addr, ATTACH_TIMEOUT).map_err(|e| e.to_string()))
                    .expect("spawn attach thread");
                role.attaching = Some(Attaching { node, thread });
            }
        }
    }
}

/// Guards a value with a mutex that ignores poisoning (a panicked client thread must not stop
/// the agent).
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
