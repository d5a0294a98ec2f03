//! The `sessions` node binary in a real three-node cluster: a client counts through kill -9 of
//! the primary, and every answer is exactly one more than the last (none lost, none doubled).

use nonstop::Client;
use nonstop::cluster::{ClusterSpec, LocalCluster};
use nonstop_examples::sessions::{Session, SessionRequest};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The example binary `cargo test` built beside this test.
fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    deps.parent().unwrap().join("examples").join(name)
}

#[test]
fn a_session_counter_survives_kills_of_its_primary_exactly_once() {
    let exe = example("sessions");
    assert!(exe.exists(), "{} is built by cargo test", exe.display());
    let spec = ClusterSpec {
        ip_prefix: "127.0.6".into(),
        kind: "sessions".into(),
        settings: "slots = 1024".parse().unwrap(),
        region_size_mib: 4,
        services: vec![("sessions".into(), 1)],
        ..ClusterSpec::default()
    };
    let mut cluster = LocalCluster::create(&exe, &spec).unwrap();
    cluster.start_all().unwrap();
    cluster.wait_service_protected("sessions", 1, Duration::from_secs(30)).unwrap();
    let nodes = cluster.client_addrs();
    let counting = std::thread::spawn(move || {
        let mut client = Client::new(nodes, 1);
        let open = SessionRequest::Open { id: "s".into(), data: b"hello".to_vec(), now_ms: 1, ttl_ms: 1 << 40 };
        client.call::<_, i64>("sessions", &open).unwrap();
        let started = Instant::now();
        let mut count = 0;
        while started.elapsed() < Duration::from_secs(3) {
            let add = SessionRequest::Add { id: "s".into(), delta: 1, now_ms: 2 };
            let answered = client.call_answered::<_, i64>("sessions", &add).unwrap();
            count += 1;
            assert_eq!(answered.reply, count, "request {} answered out of sequence", answered.request);
        }
        (client, count)
    });
    let all = [1, 2, 3];
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(600));
        let (primary, _) = cluster.primary_of("sessions", &all);
        cluster.kill(primary).unwrap();
        cluster.start(primary).unwrap();
        cluster.wait_service_protected("sessions", 1, Duration::from_secs(30)).unwrap();
    }
    let (mut client, count) = counting.join().unwrap();
    assert!(count > 100, "the client made progress: {count}");
    let session: Option<Session> = client.query("sessions", &("s".to_string(), 3u64)).unwrap();
    assert_eq!(session.map(|s| (s.data, s.counter)), Some((b"hello".to_vec(), count)));
    let audit = client.audit("sessions", vec![1], None).unwrap();
    let summary = audit.check.unwrap();
    assert!(summary.contains("1 clients, each request applied once"), "{summary}");
    assert_eq!(audit.clients[0].1.as_ref().map(|m| (m.request, m.applied)), Some((count as u64 + 1, count as u64 + 1)));
    let (_, term) = cluster.primary_of("sessions", &all);
    assert!(term >= 3, "two failovers happened: term {term}");
}
