//! The door of a listening port for authenticated connections (replication, control): each
//! connection gets its own handshake thread, the whole handshake one deadline, and the
//! handshakes still pending are bounded, in total and per source address.
//!
//! A bound is kept by closing the *oldest* pending handshake (of that source, or of all) rather
//! than refusing the new one: a peer that holds the key finishes its handshake within a round
//! trip, so the old pending connections are the ones that sit idle or send a byte now and then.
//! Whoever opens those — any number of them — can then neither hold a port's only session nor
//! crowd out a peer that holds the key; they cost at most [`HandshakeLimits::total`] threads.

use crate::conn::{self, ConnError, FrameReceiver, FrameSender};
use crate::detections::Detections;
use crate::stop::StopSignal;
use nonstop_proto::auth::ClusterKey;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bounds on the handshakes of one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// How long a whole handshake may take, however the bytes trickle in.
    pub deadline: Duration,
    /// Handshakes pending at once, from everyone.
    pub total: usize,
    /// Handshakes pending at once from one source address.
    pub per_source: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits { deadline: Duration::from_secs(2), total: 64, per_source: 16 }
    }
}

#[derive(Debug)]
struct Pending {
    id: u64,
    source: IpAddr,
    /// A handle on the connection, to close it if it is crowded out.
    stream: TcpStream,
}

/// The handshakes pending on one port.
#[derive(Debug)]
pub struct Admission {
    limits: HandshakeLimits,
    detections: Arc<Detections>,
    pending: Mutex<(u64, VecDeque<Pending>)>,
}

/// A connection's place among the pending handshakes, given up when dropped.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    id: u64,
    /// When its handshake must be done.
    pub deadline: Instant,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut pending = self.admission.lock();
        pending.1.retain(|entry| entry.id != self.id);
    }
}

impl Admission {
    /// A door with `limits`; crowded-out and timed-out handshakes are counted in `detections`.
    pub fn new(limits: HandshakeLimits, detections: Arc<Detections>) -> Arc<Admission> {
        Arc::new(Admission { limits, detections, pending: Mutex::new((0, VecDeque::new())) })
    }

    /// The limits in force.
    pub fn limits(&self) -> HandshakeLimits {
        self.limits
    }

    /// Where its refusals are counted.
    pub fn detections(&self) -> &Arc<Detections> {
        &self.detections
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, VecDeque<Pending>)> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits a connection from `source`, closing the oldest pending handshake of that source
    /// or of all if a bound would be passed. `stream` is a handle on the connection (a clone).
    pub fn admit(self: &Arc<Self>, source: IpAddr, stream: TcpStream) -> Admitted {
        let mut guard = self.lock();
        let (next, pending) = &mut *guard;
        let from_source = pending.iter().filter(|p| p.source == source).count();
        let evict = if from_source >= self.limits.per_source.max(1) {
            pending.iter().position(|p| p.source == source)
        } else if pending.len() >= self.limits.total.max(1) {
            Some(0)
        } else {
            None
        };
        if let Some(oldest) = evict.and_then(|index| pending.remove(index)) {
            self.detections.handshake_crowded_out();
            tracing::debug!(source = %oldest.source, "too many handshakes pending: closing the oldest");
            let _ = oldest.stream.shutdown(std::net::Shutdown::Both);
        }
        let id = *next;
        *next += 1;
        pending.push_back(Pending { id, source, stream });
        Admitted { admission: self.clone(), id, deadline: Instant::now() + self.limits.deadline }
    }

    /// Handshakes pending now.
    pub fn pending(&self) -> usize {
        self.lock().1.len()
    }
}

/// Accepts connections on `listener` until `stop` is given, authenticating each on a thread of
/// its own within the admission's deadline and bounds; an authenticated connection is handed to
/// `deliver` on that thread (which may go on serving it there: it no longer counts as
/// pending).
pub fn serve_handshakes<F>(
    listener: &TcpListener,
    admission: &Arc<Admission>,
    key: &ClusterKey,
    stop: &StopSignal,
    deliver: F,
) where
    F: Fn(FrameSender, FrameReceiver, SocketAddr) + Clone + Send + 'static,
{
    let mut failing = crate::told::Told::default();
    while let Some(stream) = stop.accept(listener) {
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                // Out of descriptors, most likely: wait for some to close rather than spin.
                if failing.now(error.kind()) {
                    tracing::warn!(%error, "cannot accept connections; retrying");
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if failing.cleared() {
            tracing::info!("accepting connections again");
        }
        let Ok(peer) = stream.peer_addr() else { continue };
        let Ok(handle) = stream.try_clone() else { continue };
        let admitted = admission.admit(peer.ip(), handle);
        let (key, detections, deliver) = (key.clone(), admission.detections.clone(), deliver.clone());
        let spawned = std::thread::Builder::new().name("nonstop-handshake".into()).spawn(move || {
            let halves = conn::accept_within(stream, &key, &detections, admitted.deadline);
            drop(admitted);
            match halves {
                Ok((sender, receiver)) => deliver(sender, receiver, peer),
                Err(error) => log_refused(&peer, &error),
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start a handshake thread: connection dropped");
        }
    }
}

fn log_refused(peer: &SocketAddr, error: &ConnError) {
    if error.is_disconnect() {
        tracing::debug!(%peer, %error, "connection closed during its handshake");
    } else {
        tracing::info!(%peer, %error, "handshake refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn the_oldest_pending_handshake_is_closed_to_keep_a_bound() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let detections = Arc::new(Detections::default());
        let limits = HandshakeLimits { deadline: Duration::from_secs(2), total: 3, per_source: 2 };
        let admission = Admission::new(limits, detections.clone());
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.9".parse().unwrap();
        let mut clients = Vec::new();
        let mut admitted = Vec::new();
        for source in [local, local, local] {
            let (client, server) = pair(&listener);
            admitted.push(admission.admit(source, server));
            clients.push(client);
        }
        // The third from one source closed that source's first.
        assert_eq!(admission.pending(), 2);
        assert_eq!(detections.snapshot().handshakes_crowded_out, 1);
        let mut byte = [0u8; 1];
        use std::io::Read;
        assert_eq!(clients[0].read(&mut byte).unwrap(), 0, "the oldest was closed");
        // A third source fills the total; a fourth connection closes the oldest of all.
        let (_c, server) = pair(&listener);
        admitted.push(admission.admit(other, server));
        let (_d, server) = pair(&listener);
        admitted.push(admission.admit(other, server));
        assert_eq!(admission.pending(), 3);
        assert_eq!(detections.snapshot().handshakes_crowded_out, 2);
        assert_eq!(clients[1].read(&mut byte).unwrap(), 0, "then the oldest of all");
        admitted.clear();
        assert_eq!(admission.pending(), 0, "a finished handshake gives its place up");
    }
}
