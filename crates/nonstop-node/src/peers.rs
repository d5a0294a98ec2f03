//! Agent-to-agent transport: Raft messages and heartbeat reports over authenticated
//! connections (the same handshake and MAC'd frames as replication).
//!
//! Each node dials every peer and keeps one outgoing connection per peer, fed from a bounded
//! queue (a message that finds the queue full is dropped: Raft retransmits and heartbeats
//! repeat). Incoming connections are read on their own threads and turned into [`PeerEvent`]s.
//! A connection that closes is reported as [`PeerEvent::Down`]: the peer's agent process, and
//! with it every region it held, is gone.
//!
//! An operator (`nonstop status`, `nonstop switchover`) connects the same way, with the same
//! key, and speaks [`FrameKind::Operator`] frames instead: each request becomes a
//! [`PeerEvent::Operator`] for the agent, and its answer goes back on that connection.

use crate::NodeId;
use nonstop_control::coordinator::Report;
use nonstop_net::admission::{Admission, serve_handshakes};
use nonstop_net::conn::{self, ConnError, FrameSender};
use nonstop_net::detections::Detections;
use nonstop_net::stop::StopSignal;
use nonstop_proto::auth::ClusterKey;
use nonstop_proto::frame::FrameKind;
use nonstop_proto::operator::{self, OperatorReply, OperatorRequest};
use nonstop_proto::parts::{Assembly, MAX_CONTROL_MESSAGE, control_frames};
use nonstop_proto::{CheckpointId, Term};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::time::Duration;

/// The longest wait between redials of an unreachable peer, in redial intervals (heartbeats):
/// a restarted peer is dialled again within 16 heartbeats (160 ms at the default 10 ms).
const MAX_REDIAL_BACKOFF: u32 = 16;

/// Messages queued per peer before new ones are dropped.
const OUTBOX: usize = 1024;

/// What agents tell each other.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Body {
    /// A Raft message (protobuf bytes, for [`nonstop_control::ControlNode::step`]).
    Raft(Vec<u8>),
    /// A heartbeat with the sender's roles and holdings.
    Report(Report),
    /// A message of an active service's order group (protobuf bytes, for that group's
    /// [`nonstop_control::RaftNode::step`]).
    Order {
        /// The service.
        service: String,
        /// The Raft message.
        raft: Vec<u8>,
    },
    /// A replica of an active service asks to belong to its order group (its node restarted:
    /// it is a new member).
    OrderJoin {
        /// The service.
        service: String,
        /// Who asks, and whether it follows the order yet.
        join: nonstop_active::membership::Join,
    },
}

#[derive(Serialize, Deserialize)]
struct Wire {
    from: NodeId,
    body: Body,
}

/// Decodes what a peer sent in one control frame: who it says it is and what it says. (The
/// cluster key proves the sender belongs to the cluster, not which node it is.)
pub fn decode_peer_message(payload: &[u8]) -> Result<(NodeId, Body), postcard::Error> {
    postcard::from_bytes::<Wire>(payload).map(|wire| (wire.from, wire.body))
}

/// Something a peer did.
#[derive(Debug)]
pub enum PeerEvent {
    /// A message arrived.
    Message {
        /// The sender.
        from: NodeId,
        /// The connection it came on (numbered in accept order).
        connection: u64,
        /// What it said.
        body: Body,
    },
    /// An operator's request, from a connection that proved it holds the cluster key; the
    /// answer goes to `reply`.
    Operator {
        /// What the operator asks.
        request: OperatorRequest,
        /// Where the answer goes.
        reply: Sender<OperatorReply>,
    },
    /// A call left a request for an active service's order group to propose.
    Proposed,
    /// A peer asks for the state of this node's replica of `service` (a connection that proved
    /// it holds the cluster key); the replica goes to `reply`, `None` if there is none.
    TransferAsked {
        /// The active service.
        service: String,
        /// Where the replica goes.
        reply: Sender<Option<Arc<crate::replica::Replica>>>,
    },
    /// A connection from the peer closed. It counts only if it is the peer's newest: a peer
    /// that redialled closes its old connection while alive.
    Down {
        /// The peer.
        from: NodeId,
        /// The connection that closed.
        connection: u64,
    },
}

/// What a peer's dialer is given.
#[derive(Debug)]
enum Outgoing {
    /// A message to send.
    Frame(Vec<u8>),
    /// The peer just connected to this node: it is up, so a redial need not wait out its
    /// backoff (a restarted peer would otherwise hear nothing from this node for up to
    /// [`MAX_REDIAL_BACKOFF`] times the redial interval).
    Redial,
}

/// The outgoing side: one queue per peer.
#[derive(Debug)]
pub struct Peers {
    me: NodeId,
    outboxes: BTreeMap<NodeId, SyncSender<Outgoing>>,
    stop: Arc<StopSignal>,
}

impl Peers {
    /// Listens on `listen`, admitting connections through `admission` (whose counters the
    /// dialling side uses too), and dials every peer in `peers`; events go to `events`.
    pub fn start(
        me: NodeId,
        listen: SocketAddr,
        peers: &[(NodeId, SocketAddr)],
        key: ClusterKey,
        events: Sender<PeerEvent>,
        redial: Duration,
        admission: Arc<Admission>,
    ) -> std::io::Result<Peers> {
        let listener = TcpListener::bind(listen)?;
        let stop = Arc::new(StopSignal::new()?);
        let detections = admission.detections().clone();
        let mut outboxes = BTreeMap::new();
        for &(id, addr) in peers {
            let (tx, rx) = mpsc::sync_channel(OUTBOX);
            outboxes.insert(id, tx);
            let (key, stop, detections) = (key.clone(), stop.clone(), detections.clone());
            std::thread::Builder::new()
                .name(format!("nonstop-peer-{}", id.0))
                .spawn(move || dial_loop(addr, key, rx, stop, redial, detections))?;
        }
        {
            let (key, events, stop, dialers) = (key.clone(), events.clone(), stop.clone(), outboxes.clone());
            std::thread::Builder::new()
                .name("nonstop-peers-accept".into())
                .spawn(move || accept_loop(listener, key, events, stop, admission, dialers))?;
        }
        Ok(Peers { me, outboxes, stop })
    }

    /// Queues `body` for `to`; drops it if the queue is full, or if it is longer than any
    /// control message may be ([`MAX_CONTROL_MESSAGE`]: a bug of this node, logged).
    pub fn send(&self, to: NodeId, body: Body) {
        let Some(outbox) = self.outboxes.get(&to) else { return };
        let bytes = postcard::to_stdvec(&Wire { from: self.me, body }).expect("wire messages serialize");
        if bytes.len() > MAX_CONTROL_MESSAGE {
            return tracing::error!(
                peer = to.0,
                bytes = bytes.len(),
                max = MAX_CONTROL_MESSAGE,
                "a control message longer than any may be; dropped"
            );
        }
        match outbox.try_send(Outgoing::Frame(bytes)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => tracing::debug!(peer = to.0, "peer queue full; message dropped"),
        }
    }

    /// Queues `body` for every peer.
    pub fn broadcast(&self, body: &Body) {
        for to in self.outboxes.keys() {
            self.send(*to, body.clone());
        }
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

fn accept_loop(
    listener: TcpListener,
    key: ClusterKey,
    events: Sender<PeerEvent>,
    stop: Arc<StopSignal>,
    admission: Arc<Admission>,
    dialers: BTreeMap<NodeId, SyncSender<Outgoing>>,
) {
    let accepted = Arc::new(AtomicU64::new(0));
    serve_handshakes(&listener, &admission, &key, &stop, move |sender, mut receiver, peer| {
        let first = match receiver.recv() {
            Ok(frame) => frame,
            Err(error) => return tracing::debug!(%peer, %error, "connection ended before its first frame"),
        };
        if first.kind == FrameKind::Operator {
            return serve_operator(sender, receiver, first, &events, peer);
        }
        if first.kind == FrameKind::Transfer {
            return crate::transfer::serve(sender, receiver, first, &events, peer);
        }
        let connection = accepted.fetch_add(1, Ordering::Relaxed) + 1;
        let mut from = None;
        let mut next = Some(first);
        let mut assembly = Assembly::default();
        let result = (|| -> Result<(), ConnError> {
            loop {
                let frame = match next.take() {
                    Some(frame) => frame,
                    None => receiver.recv()?,
                };
                let message = match assembly.take(frame.kind, frame.payload) {
                    Ok(Some(message)) => message,
                    Ok(None) => continue,
                    Err(error) => {
                        tracing::warn!(?from, %error, "closing the peer's connection");
                        return Ok(());
                    }
                };
                match decode_peer_message(&message) {
                    Ok((sender, body)) => {
                        if from.is_none()
                            && let Some(dialer) = dialers.get(&sender)
                        {
                            // Full or gone: the dialer is busy sending, or stopping.
                            let _ = dialer.try_send(Outgoing::Redial);
                        }
                        from = Some(sender);
                        let event = PeerEvent::Message { from: sender, connection, body };
                        if events.send(event).is_err() {
                            return Ok(());
                        }
                    }
                    Err(error) => tracing::warn!(%error, "undecodable control message dropped"),
                }
            }
        })();
        if let Err(error) = result {
            tracing::debug!(?from, %error, "peer connection ended");
        }
        if let Some(from) = from {
            let _ = events.send(PeerEvent::Down { from, connection });
        }
    });
}

/// How long an operator's request may wait for the agent (a switchover takes up to 10 s).
const OPERATOR_ANSWER: Duration = Duration::from_secs(15);

/// How long an operator connection may stay open between requests.
const OPERATOR_IDLE: Duration = Duration::from_secs(30);

/// Serves one operator connection: one request at a time, each answered by the agent.
fn serve_operator(
    mut sender: FrameSender,
    mut receiver: conn::FrameReceiver,
    first: nonstop_proto::frame::Frame,
    events: &Sender<PeerEvent>,
    peer: SocketAddr,
) {
    let mut next = Some(first);
    loop {
        let frame = match next.take().map_or_else(|| receiver.recv_by(std::time::Instant::now() + OPERATOR_IDLE), Ok) {
            Ok(frame) => frame,
            Err(error) => return tracing::debug!(%peer, %error, "operator connection ended"),
        };
        let answer = match (frame.kind, operator::decode::<OperatorRequest>(&frame.payload)) {
            (FrameKind::Operator, Ok(request)) => {
                // A status is read every few milliseconds by tools that wait for a state;
                // what changes the cluster is worth a line each.
                if matches!(request, OperatorRequest::Status) {
                    tracing::debug!(%peer, "operator request: status");
                } else {
                    tracing::info!(%peer, ?request, "operator request");
                }
                let (reply, answer) = mpsc::channel();
                if events.send(PeerEvent::Operator { request, reply }).is_err() {
                    return;
                }
                answer
                    .recv_timeout(OPERATOR_ANSWER)
                    .unwrap_or_else(|_| OperatorReply::Unavailable { reason: "the node did not answer in time".into() })
            }
            (FrameKind::Operator, Err(error)) => OperatorReply::Rejected { reason: error.to_string() },
            (kind, _) => OperatorReply::Rejected { reason: format!("a {kind:?} frame on an operator connection") },
        };
        if let Err(error) = sender.send(FrameKind::Operator, Term(0), CheckpointId(0), &operator::encode_reply(&answer))
        {
            return tracing::debug!(%peer, %error, "operator connection ended");
        }
    }
}

fn dial_loop(
    addr: SocketAddr,
    key: ClusterKey,
    outbox: Receiver<Outgoing>,
    stop: Arc<StopSignal>,
    redial: Duration,
    detections: Arc<Detections>,
) {
    let mut sender: Option<FrameSender> = None;
    // Redials back off from `redial` to `MAX_REDIAL_BACKOFF` times it while the peer stays
    // unreachable, and its being unreachable is logged once.
    let mut backoff = redial;
    let mut unreachable = nonstop_net::told::Told::default();
    while !stop.is_stopped() {
        let bytes = match outbox.recv_timeout(Duration::from_millis(100)) {
            Ok(Outgoing::Frame(bytes)) => bytes,
            Ok(Outgoing::Redial) => {
                backoff = redial;
                continue;
            }
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // This side only writes, so a peer that died and came back is seen here, not by a
        // failed write: the first write after its restart would seem to succeed and vanish
        // (once, a Raft vote: the election waited out its timeout).
        if sender.as_ref().is_some_and(FrameSender::peer_closed) {
            sender = None;
        }
        if sender.is_none() {
            match conn::connect(addr, &key, &detections) {
                Ok((s, _receiver)) => {
                    if unreachable.cleared() {
                        tracing::info!(%addr, "peer reachable again");
                    }
                    backoff = redial;
                    sender = Some(s);
                }
                Err(error) => {
                    if unreachable.now(()) {
                        tracing::info!(%addr, %error, "peer unreachable; redialling with backoff");
                    }
                    // What queues meanwhile is dropped: stale Raft messages and heartbeats are
                    // useless. The peer connecting here ends the wait.
                    let until = std::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(redial * MAX_REDIAL_BACKOFF);
                    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
                        match outbox.recv_timeout(left) {
                            Ok(Outgoing::Frame(_)) => {}
                            Ok(Outgoing::Redial) => {
                                backoff = redial;
                                break;
                            }
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    continue;
                }
            }
        }
        if let Some(s) = sender.as_mut()
            && s.send_batch(control_frames(&bytes).map(|(kind, part)| (kind, Term(0), CheckpointId(0), part))).is_err()
        {
            sender = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_net::admission::HandshakeLimits;

    /// Two peers on loopback ports of their own (bound once to learn them).
    fn pair() -> (Peers, Peers, Receiver<PeerEvent>) {
        let free = || TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let (one, two) = (free(), free());
        let key = ClusterKey::from_bytes([7; 32]);
        let admission = || Admission::new(HandshakeLimits::default(), Arc::new(Detections::default()));
        let (events, received) = mpsc::channel();
        let (ignored, _) = mpsc::channel();
        let redial = Duration::from_millis(10);
        let first = Peers::start(NodeId(1), one, &[(NodeId(2), two)], key.clone(), ignored, redial, admission());
        let second = Peers::start(NodeId(2), two, &[(NodeId(1), one)], key, events, redial, admission());
        (first.unwrap(), second.unwrap(), received)
    }

    fn next_message(received: &Receiver<PeerEvent>) -> (NodeId, Body) {
        loop {
            match received.recv_timeout(Duration::from_secs(30)).expect("a message arrives") {
                PeerEvent::Message { from, body, .. } => return (from, body),
                _ => continue,
            }
        }
    }

    #[test]
    fn a_message_longer_than_a_frame_arrives_whole_and_the_link_stays_up() {
        // An order group's snapshot with its most clients is 1.4 MB, more than a frame's 1 MiB
        // payload: it once killed the thread that sends to the peer, and the link with it.
        let (first, _second, received) = pair();
        let raft: Vec<u8> = (0..3 * nonstop_proto::frame::MAX_PAYLOAD + 17).map(|i| (i % 253) as u8).collect();
        first.send(NodeId(2), Body::Order { service: "svc".into(), raft: raft.clone() });
        first.send(NodeId(2), Body::Raft(vec![1, 2, 3]));
        match next_message(&received) {
            (NodeId(1), Body::Order { service, raft: got }) => assert!(service == "svc" && got == raft),
            other => panic!("{other:?}"),
        }
        assert!(matches!(next_message(&received), (NodeId(1), Body::Raft(small)) if small == [1, 2, 3]));
        // One longer than any may be is dropped at the sender, and the link carries on.
        first.send(NodeId(2), Body::Raft(vec![0; MAX_CONTROL_MESSAGE + 1]));
        first.send(NodeId(2), Body::Raft(vec![4]));
        assert!(matches!(next_message(&received), (NodeId(1), Body::Raft(small)) if small == [4]));
    }
}
