//! The client port under clients that cost it: idle ones, slow ones, too many of them. The
//! attacker in each test is a socket that sends nothing, sends a message a byte at a time, or
//! opens connections by the hundred; the node must close or refuse it and keep answering.

mod common;

use common::node;
use nonstop_proto::client::{ClientReply, ClientRequest, read_message, write_message};
use nonstop_workloads::bank::BankClient;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Whether the node closed `stream` within `within` (reads until EOF or reset; a reply
/// read on the way is returned).
fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    let started = Instant::now();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(seen),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some(seen),
            Err(_) => return None,
        }
        if started.elapsed() > within {
            return None;
        }
    }
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn idle_and_half_sent_connections_are_closed_and_the_node_keeps_answering() {
    let node = node("timeouts", 0x2e1000000000, "client_idle_timeout_ms = 400\nclient_message_timeout_ms = 300");
    // Idle: connects and sends nothing.
    let mut idle = TcpStream::connect(node.client).unwrap();
    // Half-sent, at a byte every 100 ms: a deadline per read would never fire; the message's
    // one deadline does.
    let mut trickle = TcpStream::connect(node.client).unwrap();
    trickle.write_all(&200u32.to_le_bytes()).unwrap();
    let started = Instant::now();
    let mut trickle_closed = None;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(100));
        if trickle.write_all(&[0]).is_err() {
            trickle_closed = Some(started.elapsed());
            break;
        }
    }
    let trickle_closed = trickle_closed
        .or_else(|| closed_within(&mut trickle, Duration::from_secs(5)).map(|_| started.elapsed()))
        .expect("a half-sent message is cut off");
    assert!(trickle_closed < Duration::from_secs(4), "closed only after {trickle_closed:?}");
    assert!(closed_within(&mut idle, Duration::from_secs(5)).is_some(), "an idle connection is closed");
    // A client that keeps talking is never idle.
    let mut busy = TcpStream::connect(node.client).unwrap();
    for _ in 0..8 {
        write_message(&mut busy, &ClientRequest::Locate { service: "bank".into() }).unwrap();
        let reply: ClientReply = read_message(&mut busy).unwrap();
        assert!(matches!(reply, ClientReply::Redirect { .. }), "{reply:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut bank = BankClient::new(vec![node.client], "bank", 2);
    bank.transfer(2, 1, 5).expect("the node still serves");
}

#[test]
fn beyond_max_clients_a_connection_is_told_why_and_closed() {
    let node = node("cap", 0x2e2000000000, "max_clients = 4");
    // The node's own warm-up client closed; wait for its slot to come back.
    std::thread::sleep(Duration::from_millis(200));
    let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(node.client).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut extra = TcpStream::connect(node.client).unwrap();
    let said = closed_within(&mut extra, Duration::from_secs(5)).expect("the extra connection is closed");
    let reply: ClientReply = read_message(&mut said.as_slice()).expect("a refusal comes first");
    match reply {
        ClientReply::Unavailable { reason } => assert!(reason.contains("max_clients"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(held);
    // Slots come back when connections close.
    let mut bank = BankClient::new(vec![node.client], "bank", 3);
    bank.transfer(3, 1, 1).expect("a slot is free again");
}

#[test]
fn many_idle_and_half_sent_connections_cost_no_thread_each() {
    let node = node("threads", 0x2e3000000000, "");
    let before = threads();
    let mut open = Vec::new();
    for i in 0..600 {
        let mut stream = TcpStream::connect(node.client).unwrap();
        if i % 2 == 0 {
            // Half a length prefix.
            stream.write_all(&[9, 0]).unwrap();
        }
        open.push(stream);
    }
    std::thread::sleep(Duration::from_millis(300));
    let during = threads();
    let mut bank = BankClient::new(vec![node.client], "bank", 4);
    bank.transfer(4, 1, 1).expect("the node answers while they are open");
    assert!(during < before + 16, "{before} threads before, {during} with 600 connections open");
}

#[test]
fn an_oversized_or_undecodable_message_is_refused_and_the_connection_closed() {
    let node = node("garbage", 0x2e4000000000, "");
    for bytes in [u32::MAX.to_le_bytes().to_vec(), [3u8, 0, 0, 0, 0xff, 0xff, 0xff].to_vec()] {
        let mut stream = TcpStream::connect(node.client).unwrap();
        stream.write_all(&bytes).unwrap();
        let said = closed_within(&mut stream, Duration::from_secs(5)).expect("closed after a bad message");
        match read_message::<ClientReply>(&mut said.as_slice()) {
            Ok(ClientReply::Rejected { .. }) => {}
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
    let mut bank = BankClient::new(vec![node.client], "bank", 5);
    bank.transfer(5, 1, 1).expect("the node still serves");
}

/// An audit holds the service's transactions off while it checks the whole region, and anyone
/// may ask for one: back-to-back audits are refused, and the service goes on answering.
#[test]
fn audits_back_to_back_are_refused() {
    let node = node("audits", 0x2e5000000000, "");
    let mut auditor = TcpStream::connect(node.client).unwrap();
    let audit = ClientRequest::Audit { service: "bank".into(), clients: vec![1], query: None };
    let mut refused = 0;
    let mut answered = 0;
    for _ in 0..20 {
        write_message(&mut auditor, &audit).unwrap();
        match read_message::<ClientReply>(&mut auditor).unwrap() {
            ClientReply::Audit { check, .. } => {
                assert!(check.is_ok(), "{check:?}");
                answered += 1;
            }
            ClientReply::Unavailable { reason } => {
                assert!(reason.contains("audit began"), "{reason}");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(answered >= 1 && refused >= 10, "{answered} answered, {refused} refused");
    let mut bank = BankClient::new(vec![node.client], "bank", 6);
    bank.transfer(6, 1, 1).expect("the node still serves");
}
