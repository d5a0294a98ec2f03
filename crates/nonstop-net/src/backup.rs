//! The backup's server: accept an authenticated primary, apply its checkpoints, acknowledge.

use crate::conn::{self, ConnError, FrameSender};
use nonstop_proto::backup::{Backup, BackupOutput};
use nonstop_proto::control::{self, AckInfo, Refusal, VerifyReply};
use nonstop_proto::frame::FrameKind;
use nonstop_proto::{CheckpointId, Term};
use nonstop_region::Region;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A workload's consistency check, run on the image when a primary asks to verify:
/// `(workload name, image) -> Ok(summary) | Err(violation)`.
pub type ConsistencyCheck = Arc<dyn Fn(&str, &[u8]) -> Result<String, String> + Send + Sync>;

/// Serves one region as a backup, for one primary at a time.
pub struct BackupServer {
    listener: TcpListener,
    key: nonstop_proto::auth::ClusterKey,
    region: Region,
    backup: Backup,
    check: Option<ConsistencyCheck>,
}

impl std::fmt::Debug for BackupServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupServer").field("listener", &self.listener).field("backup", &self.backup).finish()
    }
}

impl BackupServer {
    /// Listens on `addr` for primaries of `region`.
    pub fn bind(
        addr: SocketAddr,
        key: nonstop_proto::auth::ClusterKey,
        region: Region,
        check: Option<ConsistencyCheck>,
    ) -> std::io::Result<BackupServer> {
        let listener = TcpListener::bind(addr)?;
        let backup = Backup::new(region.base() as u64, region.len() as u64);
        Ok(BackupServer { listener, key, region, backup, check })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// The checkpoint the image holds.
    pub fn held(&self) -> Option<CheckpointId> {
        self.backup.held()
    }

    /// The image.
    pub fn image(&self) -> &[u8] {
        self.region.as_slice()
    }

    /// Serves primaries until `stop` is set (checked between connections and every 100 ms).
    pub fn serve(&mut self, stop: &AtomicBool) {
        self.listener.set_nonblocking(true).expect("listener can be made non-blocking");
        while !stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    let _ = stream.set_nonblocking(false);
                    match self.serve_one(stream) {
                        Ok(()) => tracing::info!(%peer, "primary disconnected"),
                        Err(error) if error.is_disconnect() => tracing::info!(%peer, %error, "primary went away"),
                        Err(error) => tracing::warn!(%peer, %error, "primary session ended"),
                    }
                    self.backup.on_disconnect(&mut self.region);
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Serves one connection until it ends. Authentication failures end it before any frame
    /// is read.
    pub fn serve_one(&mut self, stream: std::net::TcpStream) -> Result<(), ConnError> {
        let (mut sender, mut receiver) = conn::accept(stream, &self.key)?;
        loop {
            let frame = match receiver.recv() {
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
                Ok(Some(BackupOutput::Ack(checkpoint))) => {
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
