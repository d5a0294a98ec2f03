//! An authenticated replication connection over TCP.

use crate::detections::Detections;
use nonstop_proto::auth::MAC_LEN;
use nonstop_proto::auth::{
    AuthError, CLIENT_FINISH_LEN, CLIENT_HELLO_LEN, ClusterKey, Initiator, Responder, SERVER_HELLO_LEN, SessionKeys,
};
use nonstop_proto::frame::{Frame, FrameError, FrameKind, FrameReader, FrameWriter, HEADER_LEN};
use nonstop_proto::{CheckpointId, Term};
use std::io::{IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long a handshake may take before the peer is dropped (the whole handshake, not each
/// read; a listening port sets its own, [`crate::admission::HandshakeLimits`]).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a send may block on a peer that does not read before the connection is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection failed.
#[derive(Debug, Error)]
pub enum ConnError {
    /// The socket failed.
    #[error("connection to {peer} failed: {source}")]
    Io {
        /// The peer.
        peer: String,
        /// The error.
        source: std::io::Error,
    },
    /// The peer failed authentication.
    #[error("handshake with {peer} failed: {source}")]
    Auth {
        /// The peer.
        peer: String,
        /// Why.
        source: AuthError,
    },
    /// The peer sent a frame that failed a check.
    #[error("bad frame from {peer}: {source}")]
    Frame {
        /// The peer.
        peer: String,
        /// Why.
        source: FrameError,
    },
    /// The peer closed the connection.
    #[error("{peer} closed the connection")]
    Closed {
        /// The peer.
        peer: String,
    },
}

/// A handshake failed: counted, since a changed byte fails it as surely as a wrong key.
fn auth_refused(detections: &Detections, peer: &str, source: AuthError) -> ConnError {
    detections.handshake_refused();
    ConnError::Auth { peer: peer.to_string(), source }
}

impl ConnError {
    /// True if the peer simply went away (closed, reset, broken pipe), as opposed to sending
    /// something wrong.
    pub fn is_disconnect(&self) -> bool {
        use std::io::ErrorKind::*;
        match self {
            ConnError::Closed { .. } => true,
            ConnError::Io { source, .. } => {
                matches!(source.kind(), BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof)
            }
            _ => false,
        }
    }
}

/// Fills `buf` by `deadline`: each read waits only for what is left of the time, so a peer
/// that sends a byte now and then cannot stretch the handshake.
fn read_exact_by(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    detections: &Detections,
    peer: &str,
) -> Result<(), ConnError> {
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let timed_out = || {
            detections.handshake_timed_out();
            ConnError::Io { peer: peer.to_string(), source: std::io::ErrorKind::TimedOut.into() }
        };
        if left.is_zero() {
            return Err(timed_out());
        }
        stream.set_read_timeout(Some(left)).map_err(io_error(peer))?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(ConnError::Closed { peer: peer.to_string() }),
            Ok(n) => filled += n,
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(timed_out());
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(io_error(peer)(error)),
        }
    }
    Ok(())
}

fn nonce() -> [u8; 32] {
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).expect("the OS random source works");
    nonce
}

/// The sending half of a connection.
#[derive(Debug)]
pub struct FrameSender {
    stream: TcpStream,
    writer: FrameWriter,
    peer: String,
}

/// The receiving half of a connection.
#[derive(Debug)]
pub struct FrameReceiver {
    stream: TcpStream,
    reader: FrameReader,
    peer: String,
    detections: Arc<Detections>,
}

fn io_error(peer: &str) -> impl Fn(std::io::Error) -> ConnError + '_ {
    move |source| ConnError::Io { peer: peer.to_string(), source }
}

fn halves(
    stream: TcpStream,
    keys: SessionKeys,
    peer: String,
    detections: &Arc<Detections>,
) -> Result<(FrameSender, FrameReceiver), ConnError> {
    stream.set_read_timeout(None).map_err(io_error(&peer))?;
    // A peer that stops reading must not stall its sender forever (the replicator holds the
    // link lock while it sends): the write fails, and the connection is dropped.
    stream.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(io_error(&peer))?;
    let read_half = stream.try_clone().map_err(io_error(&peer))?;
    Ok((
        FrameSender { stream, writer: FrameWriter::new(keys.send), peer: peer.clone() },
        FrameReceiver { stream: read_half, reader: FrameReader::new(keys.recv), peer, detections: detections.clone() },
    ))
}

/// Connects to `addr` and authenticates as the initiator; refusals, of the handshake and of
/// frames later, are counted in `detections`.
pub fn connect(
    addr: SocketAddr,
    key: &ClusterKey,
    detections: &Arc<Detections>,
) -> Result<(FrameSender, FrameReceiver), ConnError> {
    connect_by(addr, key, detections, Instant::now() + HANDSHAKE_TIMEOUT)
}

/// Like [`connect`], with the connection and the whole handshake due by `deadline` (a paused
/// node accepts the connection in its kernel and then never answers).
pub fn connect_by(
    addr: SocketAddr,
    key: &ClusterKey,
    detections: &Arc<Detections>,
    deadline: Instant,
) -> Result<(FrameSender, FrameReceiver), ConnError> {
    let peer = addr.to_string();
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let mut stream = TcpStream::connect_timeout(&addr, left()).map_err(io_error(&peer))?;
    stream.set_nodelay(true).map_err(io_error(&peer))?;
    stream.set_write_timeout(Some(left())).map_err(io_error(&peer))?;
    let (initiator, hello) = Initiator::start(key.clone(), nonce());
    stream.write_all(&hello).map_err(io_error(&peer))?;
    let mut answer = [0u8; SERVER_HELLO_LEN];
    // Handshakes timed out are counted where they are served, not where they are dialled.
    read_exact_by(&mut stream, &mut answer, deadline, &Detections::default(), &peer)?;
    let (finish, keys) =
        initiator.on_server_hello(&answer).map_err(|source| auth_refused(detections, &peer, source))?;
    stream.write_all(&finish).map_err(io_error(&peer))?;
    halves(stream, keys, peer, detections)
}

/// Authenticates an accepted connection as the responder. Nothing is read past the handshake
/// unless the peer proved it holds `key`; refusals are counted in `detections`. The whole
/// handshake must be done within [`HANDSHAKE_TIMEOUT`].
pub fn accept(
    stream: TcpStream,
    key: &ClusterKey,
    detections: &Arc<Detections>,
) -> Result<(FrameSender, FrameReceiver), ConnError> {
    accept_within(stream, key, detections, Instant::now() + HANDSHAKE_TIMEOUT)
}

/// Like [`accept`], with the whole handshake due by `deadline` however slowly its bytes come.
pub fn accept_within(
    mut stream: TcpStream,
    key: &ClusterKey,
    detections: &Arc<Detections>,
    deadline: Instant,
) -> Result<(FrameSender, FrameReceiver), ConnError> {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "unknown peer".into());
    stream.set_nodelay(true).map_err(io_error(&peer))?;
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(io_error(&peer))?;
    let mut hello = [0u8; CLIENT_HELLO_LEN];
    read_exact_by(&mut stream, &mut hello, deadline, detections, &peer)?;
    let (responder, answer) = Responder::on_client_hello(key.clone(), nonce(), &hello)
        .map_err(|source| auth_refused(detections, &peer, source))?;
    stream.write_all(&answer).map_err(io_error(&peer))?;
    let mut finish = [0u8; CLIENT_FINISH_LEN];
    read_exact_by(&mut stream, &mut finish, deadline, detections, &peer)?;
    let keys = responder.on_client_finish(&finish).map_err(|source| auth_refused(detections, &peer, source))?;
    halves(stream, keys, peer, detections)
}

impl FrameSender {
    /// Sends frames whose payloads stay where they are: headers and MACs are sealed here and
    /// the payloads go out by vectored writes, without a copy into a send buffer.
    pub fn send_batch<'p>(
        &mut self,
        frames: impl IntoIterator<Item = (FrameKind, Term, CheckpointId, &'p [u8])>,
    ) -> Result<(), ConnError> {
        let sealed: Vec<([u8; HEADER_LEN], &[u8], [u8; MAC_LEN])> = frames
            .into_iter()
            .map(|(kind, term, checkpoint, payload)| {
                let (header, mac) = self.writer.seal(kind, term, checkpoint, payload);
                (header, payload, mac)
            })
            .collect();
        // Stay well under IOV_MAX (1024 on Linux): three slices per frame.
        for chunk in sealed.chunks(256) {
            let mut slices: Vec<IoSlice<'_>> = chunk
                .iter()
                .flat_map(|(header, payload, mac)| [IoSlice::new(header), IoSlice::new(payload), IoSlice::new(mac)])
                .collect();
            let mut remaining = &mut slices[..];
            while !remaining.is_empty() {
                let written = self.stream.write_vectored(remaining).map_err(io_error(&self.peer))?;
                if written == 0 {
                    return Err(ConnError::Closed { peer: self.peer.clone() });
                }
                IoSlice::advance_slices(&mut remaining, written);
            }
        }
        Ok(())
    }

    /// Sends one frame.
    pub fn send(
        &mut self,
        kind: FrameKind,
        term: Term,
        checkpoint: CheckpointId,
        payload: &[u8],
    ) -> Result<(), ConnError> {
        self.send_batch([(kind, term, checkpoint, payload)])
    }

    /// Another handle on the connection, to shut it down from elsewhere.
    pub fn stream_handle(&self) -> std::io::Result<TcpStream> {
        self.stream.try_clone()
    }

    /// Whether this end has heard the peer close the connection, or the connection fail:
    /// anything written now would be lost (a peer that crashed and came back answers it with
    /// a reset, after the write seemed to succeed). Does not block. A sender whose peer never
    /// writes back learns of its death only here or from a write that fails later, so a
    /// long-lived link asks before it writes.
    pub fn peer_closed(&self) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let mut fds = [PollFd::new(&self.stream, PollFlags::RDHUP)];
        let now = Timespec { tv_sec: 0, tv_nsec: 0 };
        match poll(&mut fds, Some(&now)) {
            Ok(_) => fds[0].revents().intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
            Err(_) => false,
        }
    }

    /// Closes both directions (wakes the receiving half).
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// The peer's address.
    pub fn peer(&self) -> &str {
        &self.peer
    }
}

impl FrameReceiver {
    /// Waits for the next valid frame until `deadline`.
    pub fn recv_by(&mut self, deadline: Instant) -> Result<Frame, ConnError> {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        self.stream.set_read_timeout(Some(left)).map_err(io_error(&self.peer))?;
        let frame = self.recv();
        self.stream.set_read_timeout(None).map_err(io_error(&self.peer))?;
        frame
    }

    /// Waits for the next valid frame.
    pub fn recv(&mut self) -> Result<Frame, ConnError> {
        loop {
            if let Some(frame) = self.reader.next_frame().map_err(|source| {
                self.detections.frame_refused();
                ConnError::Frame { peer: self.peer.clone(), source }
            })? {
                return Ok(frame);
            }
            let n = self.stream.read(self.reader.read_chunk()).map_err(io_error(&self.peer))?;
            if n == 0 {
                return Err(ConnError::Closed { peer: self.peer.clone() });
            }
            self.reader.filled(n);
        }
    }

    /// The peer's address.
    pub fn peer(&self) -> &str {
        &self.peer
    }
}
