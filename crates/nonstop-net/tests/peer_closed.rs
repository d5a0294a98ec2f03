//! A sender learns that its peer has gone before it writes into the void. A peer that crashed
//! and came back leaves its old connection half-open on this side: the next write seems to
//! succeed and is lost (the new process answers it with a reset). Between nodes the lost
//! message was a Raft vote, and the election then waited out its timeout (a ~300 ms failover
//! instead of ~6 ms in `nonstop chaos kill --kind kv`).

use nonstop_net::conn;
use nonstop_proto::auth::ClusterKey;
use nonstop_proto::frame::FrameKind;
use nonstop_proto::{CheckpointId, Term};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn a_sender_sees_its_peer_close_without_writing() {
    let key = ClusterKey::from_bytes([9; 32]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (close, closing) = std::sync::mpsc::channel::<()>();
    let peer = {
        let key = key.clone();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let (_sender, mut receiver) = conn::accept(stream, &key, &Arc::default()).unwrap();
            let frame = receiver.recv().unwrap();
            assert_eq!(frame.payload, b"hello");
            closing.recv().unwrap();
            // Dropping both halves closes the connection, as a process that dies does.
        })
    };
    let (mut sender, _receiver) = conn::connect(addr, &key, &Arc::default()).unwrap();
    sender.send(FrameKind::Control, Term(1), CheckpointId(0), b"hello").unwrap();
    assert!(!sender.peer_closed(), "the peer is there");
    std::thread::sleep(Duration::from_millis(20));
    assert!(!sender.peer_closed(), "still there, and silent");
    close.send(()).unwrap();
    peer.join().unwrap();
    let due = Instant::now() + Duration::from_secs(5);
    while !sender.peer_closed() {
        assert!(Instant::now() < due, "the peer's close was never seen");
        std::thread::sleep(Duration::from_millis(1));
    }
}
