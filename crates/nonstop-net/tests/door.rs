//! A backup's replication port under an attacker on the same network who holds no key: idle
//! connections by the hundred, and one that sends a handshake byte now and then. A primary that
//! holds the key is served at once all the same, and the attacker's connections are closed at
//! their handshake deadline or crowded out, never more of them pending than the bounds allow.

use nonstop_net::BackupServer;
use nonstop_net::admission::HandshakeLimits;
use nonstop_net::conn;
use nonstop_net::detections::Detections;
use nonstop_proto::auth::ClusterKey;
use nonstop_proto::frame::FrameKind;
use nonstop_proto::{CheckpointId, Term};
use nonstop_region::Region;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LEN: usize = 1 << 20;

fn key() -> ClusterKey {
    ClusterKey::from_bytes([3; 32])
}

/// A backup server on a port of its own, serving on a thread; its counters.
fn backup(base: usize, limits: HandshakeLimits) -> (SocketAddr, Arc<Detections>) {
    let detections = Arc::new(Detections::default());
    let region = Region::map(base, LEN).unwrap();
    let server = BackupServer::bind("127.0.0.1:0".parse().unwrap(), key(), region, None)
        .unwrap()
        .with_detections(detections.clone())
        .with_handshake_limits(limits);
    let addr = server.local_addr();
    std::thread::spawn(move || {
        let mut server = server;
        server.serve();
    });
    (addr, detections)
}

/// A primary's connection: authenticated, it pings and waits for the echo. Returns how long
/// the whole exchange took.
fn ping(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let (mut sender, mut receiver) = conn::connect(addr, &key(), &Arc::default()).expect("the key holder connects");
    sender.send(FrameKind::Ping, Term(1), CheckpointId(0), b"hello").unwrap();
    let pong = receiver.recv().expect("the backup answers");
    assert_eq!((pong.kind, pong.payload.as_slice()), (FrameKind::Pong, &b"hello"[..]));
    started.elapsed()
}

/// Sends one byte of a handshake every `every` until the connection is closed; returns when.
fn trickle(addr: SocketAddr, every: Duration) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(every)).unwrap();
        let mut byte = [0u8; 1];
        loop {
            if stream.write_all(&[0x55]).is_err() {
                return started.elapsed();
            }
            match stream.read(&mut byte) {
                Ok(0) => return started.elapsed(),
                Ok(_) => panic!("a keyless peer was answered"),
                Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                }
                Err(_) => return started.elapsed(),
            }
            assert!(started.elapsed() < Duration::from_secs(20), "a trickling handshake was never closed");
        }
    })
}

#[test]
fn a_trickling_handshake_is_closed_at_its_deadline_and_delays_no_primary() {
    let limits = HandshakeLimits { deadline: Duration::from_millis(500), ..HandshakeLimits::default() };
    let (addr, detections) = backup(0x2f00_0000_0000, limits);
    let trickler = trickle(addr, Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(50));
    // While it trickles, a primary is served (before, the backup read the trickler's handshake
    // alone, five seconds per byte).
    let took = ping(addr);
    assert!(took < Duration::from_millis(450), "the primary waited for the trickler: {took:?}");
    let closed_after = trickler.join().unwrap();
    assert!(closed_after >= Duration::from_millis(450), "closed before its deadline: {closed_after:?}");
    assert_eq!(detections.snapshot().handshakes_timed_out, 1);
    // And again after it: the server serves one session after another.
    ping(addr);
}

#[test]
fn hundreds_of_idle_connections_are_crowded_out_and_delay_no_primary() {
    let limits = HandshakeLimits { deadline: Duration::from_secs(30), total: 32, per_source: 8 };
    let (addr, detections) = backup(0x2f10_0000_0000, limits);
    let idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Every one of them is accepted and all but the newest few are closed to keep the bounds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while detections.snapshot().handshakes_crowded_out < 300 - 8 {
        assert!(Instant::now() < deadline, "crowded out: {:?}", detections.snapshot());
        std::thread::sleep(Duration::from_millis(10));
    }
    // The key holder comes from the same address as the attacker, and is served.
    let took = ping(addr);
    assert!(took < Duration::from_secs(5), "{took:?}");
    drop(idle);
    assert_eq!(detections.snapshot().handshakes_refused, 0, "nobody sent a wrong key");
}
