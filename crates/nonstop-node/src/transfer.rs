//! State transfer between an active service's replicas, over the control port: the donor's
//! side ([`serve`], on a connection the peer listener accepted) and the receiver's ([`fetch`]).
//! The protocol is [`nonstop_proto::transfer`]; what a replica does with it (copy its pages
//! while it executes, then hold execution between two entries for the rest; take a state and
//! execute on from its point) is in [`crate::replica`].

use crate::peers::PeerEvent;
use crate::replica::Replica;
use nonstop_net::conn::{self, FrameReceiver, FrameSender};
use nonstop_net::detections::Detections;
use nonstop_proto::auth::ClusterKey;
use nonstop_proto::frame::{Frame, FrameKind};
use nonstop_proto::transfer::{self, Answered, MAX_ANSWERED, MAX_STATE_BYTES, TransferMessage};
use nonstop_proto::{CheckpointId, Term};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

// A donor sends every answer it remembers; the receiver must take them all.
const _: () = assert!(MAX_ANSWERED >= nonstop_active::calls::REMEMBERED);

/// How long the agent may take to name the replica a transfer asks for.
const AGENT_ANSWER: Duration = Duration::from_secs(5);

/// How long a receiver waits to connect to a donor.
const CONNECT: Duration = Duration::from_secs(2);

/// How long one whole transfer may take before the receiver tries another donor.
const WHOLE_TRANSFER: Duration = Duration::from_secs(120);

/// How long a receiver waits for the donor's next frame.
const NEXT_FRAME: Duration = Duration::from_secs(15);

/// Serves a state transfer a peer asked for with `first`: finds the replica through the agent
/// and streams its state, or says why not.
pub(crate) fn serve(
    mut sender: FrameSender,
    mut receiver: FrameReceiver,
    first: Frame,
    events: &Sender<PeerEvent>,
    peer: SocketAddr,
) {
    let refuse = |sender: &mut FrameSender, reason: String| {
        tracing::info!(%peer, %reason, "state transfer refused");
        let _ = send(sender, &TransferMessage::Refused { reason });
    };
    let (service, from) = match transfer::decode(&first.payload) {
        Ok(TransferMessage::Ask { service, from }) => (service, from),
        Ok(other) => return refuse(&mut sender, format!("a transfer starts with an ask, not {other:?}")),
        Err(error) => return refuse(&mut sender, error.to_string()),
    };
    let (reply, answer) = mpsc::channel();
    if events.send(PeerEvent::TransferAsked { service: service.clone(), reply }).is_err() {
        return;
    }
    let Ok(Some(replica)) = answer.recv_timeout(AGENT_ANSWER) else {
        return refuse(&mut sender, format!("this node has no replica of an active service named {service}"));
    };
    let started = Instant::now();
    let donated = replica.donate(from, &mut |kind, payload| {
        sender.send(kind, Term(0), CheckpointId(0), payload).map_err(|error| error.to_string())
    });
    match donated {
        Ok(donated) => tracing::info!(
            %peer,
            service,
            position = donated.position,
            pages = donated.pages,
            final_pages = donated.final_pages,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state transferred to a replica"
        ),
        Err(reason) => refuse(&mut sender, reason),
    }
    // The receiver closes once it has the state; a read until then keeps the last frames from
    // being cut off by a reset.
    let _ = receiver.recv_by(Instant::now() + NEXT_FRAME);
}

/// Where a replica takes a state from, and how it proves it belongs to the cluster.
#[derive(Clone, Debug)]
pub struct Donors {
    /// The other replicas: their number in the group and their control address.
    pub replicas: Vec<(u16, SocketAddr)>,
    /// The cluster key.
    pub key: ClusterKey,
    /// Where failed handshakes are counted.
    pub detections: Arc<Detections>,
}

/// A state a donor sent: its point of the order and its clients' last answers. Its pages are
/// in the replica's region already; a multithreaded service's snapshot is here, to restore
/// between two batches.
#[derive(Debug)]
pub(crate) struct Received {
    pub position: u64,
    pub answered: Vec<Answered>,
    pub snapshot: Option<Vec<u8>>,
    /// The donor's number in the group.
    pub donor: u16,
}

/// Takes a state at position `from` or later into `replica`'s region from one of `donors`,
/// `first` tried first (the order's leader, which is least likely to be behind), the others
/// in turn. The replica executes nothing meanwhile.
pub(crate) fn fetch(replica: &Replica, donors: &Donors, first: Option<u16>, from: u64) -> Result<Received, String> {
    let mut order: Vec<(u16, SocketAddr)> = donors.replicas.clone();
    order.sort_by_key(|(number, _)| Some(*number) != first);
    let mut failures = Vec::new();
    for (number, addr) in order {
        match fetch_from(replica, donors, addr, from) {
            Ok(taken) => return Ok(Received { donor: number, ..taken }),
            Err(error) => {
                tracing::info!(service = replica.name(), donor = number, %error, "state transfer failed");
                failures.push(format!("replica {number}: {error}"));
            }
        }
    }
    Err(if failures.is_empty() { "no other replica to take a state from".into() } else { failures.join("; ") })
}

/// One donor's state (`donor` left 0).
fn fetch_from(replica: &Replica, donors: &Donors, addr: SocketAddr, from: u64) -> Result<Received, String> {
    let (mut sender, mut receiver) = conn::connect_by(addr, &donors.key, &donors.detections, Instant::now() + CONNECT)
        .map_err(|error| error.to_string())?;
    send(&mut sender, &TransferMessage::Ask { service: replica.name().to_string(), from })?;
    let deadline = Instant::now() + WHOLE_TRANSFER;
    let mut cleared = false;
    let mut answered = Vec::new();
    let mut snapshot: Option<Vec<u8>> = None;
    loop {
        let frame = receiver.recv_by(deadline.min(Instant::now() + NEXT_FRAME)).map_err(|error| error.to_string())?;
        match frame.kind {
            FrameKind::Runs => {
                let mirror = replica.mirror().ok_or("region pages for a service that keeps no region")?;
                if !cleared {
                    mirror.clear();
                    cleared = true;
                }
                mirror.install_runs(&frame.payload).map_err(|error| error.to_string())?;
            }
            FrameKind::Transfer => match transfer::decode(&frame.payload).map_err(|error| error.to_string())? {
                TransferMessage::Answered(more) => {
                    if answered.len() + more.len() > MAX_ANSWERED {
                        return Err(format!("more than {MAX_ANSWERED} client answers"));
                    }
                    answered.extend(more);
                }
                TransferMessage::State(piece) => {
                    if replica.mirror().is_some() {
                        return Err("a snapshot for a service that keeps its state in a region".into());
                    }
                    let state = snapshot.get_or_insert_with(Vec::new);
                    if state.len() + piece.len() > MAX_STATE_BYTES {
                        return Err(format!("a snapshot of more than {MAX_STATE_BYTES} bytes"));
                    }
                    state.extend_from_slice(&piece);
                }
                TransferMessage::Done { position } => {
                    if let Some(mirror) = replica.mirror().filter(|_| !cleared) {
                        // An image of zeros: nothing was sent, nothing of this replica's may stay.
                        mirror.clear();
                    }
                    return Ok(Received { position, answered, snapshot, donor: 0 });
                }
                TransferMessage::Refused { reason } => return Err(format!("refused: {reason}")),
                TransferMessage::Ask { .. } => return Err("the donor asked for a transfer itself".into()),
            },
            other => return Err(format!("a {other:?} frame in a state transfer")),
        }
    }
}

fn send(sender: &mut FrameSender, message: &TransferMessage) -> Result<(), String> {
    sender.send(FrameKind::Transfer, Term(0), CheckpointId(0), &transfer::encode(message)).map_err(|e| e.to_string())
}
