//! The backup's server: accept an authenticated primary, apply its checkpoints, acknowledge.

use crate::admission::{Admission, HandshakeLimits, serve_handshakes};
use crate::conn::{ConnError, FrameReceiver, FrameSender};
use crate::detections::Detections;
use crate::stop::StopSignal;
use nonstop_proto::backup::{Backup, BackupError, BackupOutput};
use nonstop_proto::control::{self, AckInfo, Refusal, VerifyReply};
use nonstop_proto::frame::{Frame, FrameKind};
use nonstop_proto::integrity::{SCRUB_LINES_PER_TICK, SCRUB_TICK};
use nonstop_proto::{CheckpointId, Term};
use nonstop_region::Region;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A workload's consistency check, run on the image when a primary asks to verify:
/// `(workload name, image) -> Ok(summary) | Err(violation)`.
pub type ConsistencyCheck = Arc<dyn Fn(&str, &[u8]) -> Result<String, String> + Send + Sync>;

/// Serves one region as a backup, for one primary at a time.
///
/// Connections are authenticated concurrently, each on a thread of its own within the
/// handshake limits ([`crate::admission`]); a primary that holds the key is served once the
/// session before it ends, however many other connections are open.
pub struct BackupServer {
    listener: Option<TcpListener>,
    listening: SocketAddr,
    limits: HandshakeLimits,
    key: nonstop_proto::auth::ClusterKey,
    region: Region,
    backup: Backup,
    check: Option<ConsistencyCheck>,
    control: BackupControl,
    detections: Arc<Detections>,
}

/// Watches and stops a [`BackupServer`] serving on another thread.
#[derive(Clone, Debug)]
pub struct BackupControl {
    stop: Arc<StopSignal>,
    session: Arc<Mutex<Option<TcpStream>>>,
    held: Arc<Mutex<Option<(Term, CheckpointId)>>>,
    /// Wakes a serving loop waiting for the next primary.
    wake: Arc<Mutex<Option<Sender<Arrival>>>>,
    /// The term of the primary whose session runs, if one does.
    following: Arc<Mutex<Option<Term>>>,
}

/// What the serving loop waits for.
enum Arrival {
    /// A primary passed its handshake: its connection's halves, its first frame and address.
    Session(Box<(FrameSender, FrameReceiver, Frame, SocketAddr)>),
    /// [`BackupControl::stop`] was called.
    Stop,
}

impl BackupControl {
    /// The newest checkpoint the image holds completely, with the term of the primary that
    /// sent it.
    pub fn held(&self) -> Option<(Term, CheckpointId)> {
        *self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the current primary's session (the image rolls back to its last whole checkpoint)
    /// and makes [`BackupServer::serve`] return. Used to promote this backup: a deposed primary
    /// still connected is cut off at once.
    pub fn stop(&self) {
        self.stop.stop();
        if let Some(stream) = self.session.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        if let Some(wake) = self.wake.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = wake.send(Arrival::Stop);
        }
    }

    /// Decides, on its handshake thread, what becomes of a primary that passed its handshake:
    /// its first frame is read (within `deadline`); one from a term older than the session in
    /// progress is refused at once (a deposed primary must not wait for its turn), and one from
    /// that term or newer ends the session in progress (its primary was replaced, or reconnects
    /// over a connection the backup has not seen die) and is served next.
    fn admit_session(
        &self,
        mut sender: FrameSender,
        mut receiver: FrameReceiver,
        peer: SocketAddr,
        deadline: Duration,
        arrived: &Sender<Arrival>,
    ) {
        let first = match receiver.recv_by(Instant::now() + deadline) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::info!(%peer, %error, "primary sent no first frame in time");
                return;
            }
        };
        let following = *self.following.lock().unwrap_or_else(|p| p.into_inner());
        match following {
            Some(current) if first.term < current => {
                let reason = format!(
                    "this backup follows {current}, and {} is older: a deposed primary is fenced off",
                    first.term
                );
                tracing::info!(%peer, %reason, "refusing primary");
                refuse(&mut sender, Some(current), &reason);
                return;
            }
            Some(current) => {
                tracing::info!(%peer, term = first.term.0, following = current.0, "a primary of this term or newer: ending the session in progress");
                if let Some(stream) = self.session.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
            }
            None => {}
        }
        // The server may be gone (promoted): the connection is then closed.
        let _ = arrived.send(Arrival::Session(Box::new((sender, receiver, first, peer))));
    }

    fn publish(&self, backup: &Backup) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = backup.held_with_term();
    }
}

impl std::fmt::Debug for BackupServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupServer").field("listener", &self.listener).field("backup", &self.backup).finish()
    }
}

impl BackupServer {
    /// Listens on `addr` for primaries of `region`.
    ///
    /// The image is made resident at once ([`Region::populate`]): applying a checkpoint
    /// never waits for page faults, and a node without the memory says so here.
    pub fn bind(
        addr: SocketAddr,
        key: nonstop_proto::auth::ClusterKey,
        region: Region,
        check: Option<ConsistencyCheck>,
    ) -> std::io::Result<BackupServer> {
        BackupServer::with_listener(TcpListener::bind(addr)?, key, region, check)
    }

    /// Like [`BackupServer::bind`], on a listener bound already (a node binds its ports once,
    /// before it says it is ready, and serves a backup on that port whenever its role is one).
    pub fn with_listener(
        listener: TcpListener,
        key: nonstop_proto::auth::ClusterKey,
        mut region: Region,
        check: Option<ConsistencyCheck>,
    ) -> std::io::Result<BackupServer> {
        let backup = Backup::new(region.base() as u64, region.len() as u64);
        nonstop_region::advise_huge_pages(backup.seals().table());
        region.populate().map_err(|error| {
            let kind = match &error {
                nonstop_region::RegionError::Populate { source, .. } => source.kind(),
                _ => std::io::ErrorKind::Other,
            };
            std::io::Error::new(kind, error)
        })?;
        let listening = listener.local_addr()?;
        let control = BackupControl {
            stop: Arc::new(StopSignal::new()?),
            session: Arc::default(),
            held: Arc::default(),
            wake: Arc::default(),
            following: Arc::default(),
        };
        Ok(BackupServer {
            listener: Some(listener),
            listening,
            limits: HandshakeLimits::default(),
            key,
            region,
            backup,
            check,
            control,
            detections: Arc::default(),
        })
    }

    /// Authenticates connections within `limits` instead of the defaults.
    pub fn with_handshake_limits(mut self, limits: HandshakeLimits) -> BackupServer {
        self.limits = limits;
        self
    }

    /// Counts what its checks catch in `detections` (the node's) instead of counters of its own.
    pub fn with_detections(mut self, detections: Arc<Detections>) -> BackupServer {
        self.detections = detections;
        self
    }

    /// A handle to watch and stop the server from another thread.
    pub fn control(&self) -> BackupControl {
        self.control.clone()
    }

    /// The region and the backup state, once serving has stopped: the image is exactly the
    /// checkpoint [`Backup::held_with_term`] names, sealed line by line ([`Backup::into_seals`]).
    /// A promoted backup resumes from it in place, at no cost proportional to its size.
    pub fn into_parts(self) -> (Region, Backup) {
        (self.region, self.backup)
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listening
    }

    /// The checkpoint the image holds.
    pub fn held(&self) -> Option<CheckpointId> {
        self.backup.held()
    }

    /// The image.
    pub fn image(&self) -> &[u8] {
        self.region.as_slice()
    }

    /// Serves primaries, one at a time, until [`BackupControl::stop`] (once only: the port is
    /// closed when it returns).
    pub fn serve(&mut self) {
        let Some(listener) = self.listener.take() else { return };
        let (arrived, sessions) = std::sync::mpsc::channel::<Arrival>();
        *self.control.wake.lock().unwrap_or_else(|p| p.into_inner()) = Some(arrived.clone());
        let admission = Admission::new(self.limits, self.detections.clone());
        let (key, stop, control, deadline) =
            (self.key.clone(), self.control.stop.clone(), self.control.clone(), self.limits.deadline);
        let acceptor = std::thread::Builder::new().name("nonstop-backup-accept".into()).spawn(move || {
            serve_handshakes(&listener, &admission, &key, &stop, move |sender, receiver, peer| {
                control.admit_session(sender, receiver, peer, deadline, &arrived);
            });
        });
        let acceptor = match acceptor {
            Ok(acceptor) => acceptor,
            Err(error) => {
                tracing::error!(%error, "cannot start the backup's acceptor");
                return;
            }
        };
        // A stop before the wake was installed is seen by the flag.
        while !self.control.stop.is_stopped() {
            let Ok(Arrival::Session(session)) = sessions.recv() else { break };
            let (sender, receiver, first, peer) = *session;
            *self.control.following.lock().unwrap_or_else(|p| p.into_inner()) = Some(first.term);
            *self.control.session.lock().unwrap_or_else(|p| p.into_inner()) = sender.stream_handle().ok();
            // A stop between the receive and the line above must still end the session.
            if self.control.stop.is_stopped() {
                sender.shutdown();
            }
            match self.serve_session(sender, receiver, Some(first)) {
                Ok(()) => tracing::info!(%peer, "primary disconnected"),
                Err(error) if error.is_disconnect() => tracing::info!(%peer, %error, "primary went away"),
                Err(error) => tracing::warn!(%peer, %error, "primary session ended"),
            }
            self.backup.on_disconnect(&mut self.region);
            *self.control.following.lock().unwrap_or_else(|p| p.into_inner()) = None;
            *self.control.session.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.control.publish(&self.backup);
        }
        *self.control.wake.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let _ = acceptor.join();
    }

    /// Serves one authenticated primary until its session ends, starting with `first` if its
    /// first frame was already read.
    pub fn serve_session(
        &mut self,
        mut sender: FrameSender,
        mut receiver: FrameReceiver,
        mut first: Option<Frame>,
    ) -> Result<(), ConnError> {
        let mut last_scrub = Instant::now();
        loop {
            // Between frames, so that the image is never checked while a frame is half
            // applied; a session streams checkpoints, so frames come often enough.
            if last_scrub.elapsed() >= SCRUB_TICK {
                last_scrub = Instant::now();
                if let Err(error @ BackupError::Corrupt(_)) = self.backup.scrub(&mut self.region, SCRUB_LINES_PER_TICK)
                {
                    self.detections.image_corrupted();
                    tracing::error!(peer = sender.peer(), %error, "image forgotten: asking the primary for a whole image");
                    self.control.publish(&self.backup);
                    refuse(&mut sender, self.backup.term(), &error.to_string());
                    return Ok(());
                }
            }
            let frame = match first.take().map_or_else(|| receiver.recv(), Ok) {
                Ok(frame) => frame,
                Err(ConnError::Closed { .. }) => return Ok(()),
                Err(error) => {
                    refuse(&mut sender, self.backup.term(), &error.to_string());
                    return Err(error);
                }
            };
            let started = Instant::now();
            let output = self.backup.on_frame(frame, &mut self.region);
            let elapsed = started.elapsed();
            match output {
                Ok(None) => {}
                Ok(Some(BackupOutput::Attached(term))) => {
                    tracing::info!(peer = sender.peer(), term = term.0, "primary attached");
                }
                Ok(Some(BackupOutput::Holding(holding))) => {
                    tracing::info!(peer = sender.peer(), term = self.term().0, held = ?holding.held, "primary attached to rebase this image");
                    sender.send(FrameKind::Holding, self.term(), CheckpointId(0), &control::encode(&holding))?;
                }
                Ok(Some(BackupOutput::Ack(checkpoint))) => {
                    self.control.publish(&self.backup);
                    let info = AckInfo { apply_ns: elapsed.as_nanos() as u64 };
                    sender.send(FrameKind::Ack, self.term(), checkpoint, &control::encode(&info))?;
                }
                Ok(Some(BackupOutput::Verify(request))) => {
                    let len = (request.len as usize).min(self.region.len());
                    let image = &self.region.as_slice()[..len];
                    let check = if self.backup.checkpoint_open() {
                        // Runs of the open checkpoint are already applied: the image is not a
                        // checkpoint now, so say so rather than vouch for a mix.
                        Some(Err("a checkpoint is being received; verify between checkpoints".to_string()))
                    } else {
                        request.check.as_deref().and_then(|name| self.check.as_ref().map(|check| check(name, image)))
                    };
                    let reply = VerifyReply {
                        checkpoint: self.backup.held().map(|c| c.0),
                        digest: *blake3::hash(image).as_bytes(),
                        check,
                    };
                    let checkpoint = self.backup.held().unwrap_or(CheckpointId(0));
                    sender.send(FrameKind::VerifyReply, self.term(), checkpoint, &control::encode(&reply))?;
                }
                Ok(Some(BackupOutput::Pong(payload))) => {
                    sender.send(FrameKind::Pong, self.term(), CheckpointId(0), &payload)?;
                }
                Err(error) => {
                    if matches!(error, BackupError::Corrupt(_)) {
                        self.detections.image_corrupted();
                    }
                    tracing::warn!(peer = sender.peer(), %error, "refusing primary");
                    refuse(&mut sender, self.backup.term(), &error.to_string());
                    return Ok(());
                }
            }
        }
    }

    fn term(&self) -> Term {
        self.backup.term().unwrap_or(Term(0))
    }
}

fn refuse(sender: &mut FrameSender, term: Option<Term>, reason: &str) {
    let refusal = Refusal { reason: reason.to_string() };
    let _ = sender.send(FrameKind::Refuse, term.unwrap_or(Term(0)), CheckpointId(0), &control::encode(&refusal));
    sender.shutdown();
}
