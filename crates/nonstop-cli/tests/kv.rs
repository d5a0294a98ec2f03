//! The `kv` service through a node's Redis port: a client speaking plain RESP sets, reads and
//! counts on the primary, pipelined, in a transaction and in RESP3; a backup answers
//! `-READONLY`; bad RESP gets Redis's protocol error.

use nonstop_region::tracking::{TrackingMode, probe};
use nonstop_testbed::cluster::{ClusterSpec, LocalCluster};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Sends `requests` (RESP bytes) and reads until `done` says so, or five seconds passed.
fn exchange(addr: SocketAddr, requests: &[u8], done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    stream.write_all(requests).unwrap();
    let (mut got, due) = (Vec::new(), Instant::now() + Duration::from_secs(5));
    let mut buffer = [0u8; 4096];
    while !done(&got) && Instant::now() < due {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buffer[..n]),
            Err(_) => {}
        }
    }
    got
}

fn inline(commands: &[&str]) -> Vec<u8> {
    commands.iter().flat_map(|command| format!("{command}\r\n").into_bytes()).collect()
}

#[test]
fn redis_clients_use_the_kv_service_through_the_primary() {
    let tracking = match probe(TrackingMode::Uffd) {
        Ok(()) => TrackingMode::Uffd,
        Err(_) => TrackingMode::Mprotect,
    };
    let spec = ClusterSpec {
        ip_prefix: "127.0.10".into(),
        region_size_mib: 32,
        kind: "kv".into(),
        tracking: Some(tracking),
        services: vec![("kv".into(), 1)],
        redis: true,
        settings: toml::from_str("memory_mib = 8").unwrap(),
        ..ClusterSpec::default()
    };
    let mut cluster = LocalCluster::create(std::path::Path::new(env!("CARGO_BIN_EXE_nonstop")), &spec).unwrap();
    cluster.start_all().unwrap();
    cluster.wait_service_protected("kv", 1, Duration::from_secs(30)).unwrap();
    let primary = cluster.nodes[0].redis.expect("a Redis port");
    let backup = cluster.nodes[1].redis.expect("a Redis port");

    // Pipelined, in both request forms; a transaction; counters.
    let requests = [
        &b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv a l\r\n"[..],
        &inline(&["GET k", "INCR n", "INCRBY n 41", "MULTI", "INCR n", "GET k", "EXEC", "GET nope", "PING"]),
    ]
    .concat();
    let expected: &[u8] =
        b"+OK\r\n$5\r\nv a l\r\n:1\r\n:42\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:43\r\n$5\r\nv a l\r\n$-1\r\n+PONG\r\n";
    let got = exchange(primary, &requests, |got| got.len() >= expected.len());
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(expected));

    // RESP3 after HELLO 3: nulls and maps in their own types.
    let tail = "_\r\n:1\r\n%1\r\n$1\r\nf\r\n$1\r\nv\r\n";
    let got = exchange(primary, &inline(&["HELLO 3", "GET nope", "HSET h f v", "HGETALL h"]), |got| {
        got.ends_with(tail.as_bytes())
    });
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("%7\r\n") && text.ends_with(tail), "HELLO 3, then RESP3: {text}");

    // A backup sends clients to look for the primary, for reads and writes alike.
    let readonly = "-READONLY You can't write against a read only replica.\r\n";
    let got = exchange(backup, &inline(&["SET k w", "GET k"]), |got| got.len() >= 2 * readonly.len());
    assert_eq!(String::from_utf8_lossy(&got), readonly.repeat(2));

    // Bad RESP: Redis's protocol error, then the connection closes.
    let got = exchange(primary, b"*1\r\nfoo\r\n", |got| got.ends_with(b"\r\n"));
    assert_eq!(String::from_utf8_lossy(&got), "-ERR Protocol error: expected '$', got 'f'\r\n");
}
