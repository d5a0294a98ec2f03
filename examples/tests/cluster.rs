//! The example node binaries in real three-node clusters: a client works through two kill -9
//! of the primary, and every answer is the one a failure-free run gives (none lost, none
//! applied twice).

use nonstop::Client;
use nonstop::tracking::TrackingMode;
use nonstop_examples::orderbook::{OrderReply, OrderRequest};
use nonstop_examples::sessions::{Session, SessionRequest};
use nonstop_testbed::cluster::{ClusterSpec, LocalCluster};
use std::time::{Duration, Instant};

mod common;
use common::{Reference, example};

/// Starts a cluster of `spec` running service `name`, runs `work` on a thread while the
/// primary is killed twice (and restarted as a spare), and returns what `work` returned with
/// the final term.
fn through_two_kills<T: Send + 'static>(
    spec: ClusterSpec,
    work: impl FnOnce(Client) -> T + Send + 'static,
) -> (T, u64, LocalCluster) {
    let name = spec.services[0].0.clone();
    let mut cluster = LocalCluster::create(&example(&spec.kind), &spec).unwrap();
    cluster.start_all().unwrap();
    cluster.wait_service_protected(&name, 1, Duration::from_secs(30)).unwrap();
    let client = Client::new(cluster.client_addrs(), 1);
    let working = std::thread::spawn(move || work(client));
    let all = [1, 2, 3];
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(600));
        let (primary, _) = cluster.primary_of(&name, &all);
        cluster.kill(primary).unwrap();
        cluster.start(primary).unwrap();
        cluster.wait_service_protected(&name, 1, Duration::from_secs(30)).unwrap();
    }
    let done = working.join().unwrap();
    let (_, term) = cluster.primary_of(&name, &all);
    assert!(term >= 3, "two failovers happened: term {term}");
    (done, term, cluster)
}

fn spec(kind: &str, settings: &str, tracking: Option<TrackingMode>) -> ClusterSpec {
    ClusterSpec {
        kind: kind.into(),
        settings: settings.parse().unwrap(),
        region_size_mib: 16,
        tracking,
        services: vec![(kind.into(), 1)],
        ..ClusterSpec::default()
    }
}

#[test]
fn a_session_counter_counts_through_kills_of_its_primary_exactly_once() {
    let spec = ClusterSpec { ip_prefix: "127.0.6".into(), ..spec("sessions", "slots = 1024", None) };
    let ((mut client, count), _, _cluster) = through_two_kills(spec, |mut client| {
        let open = SessionRequest::Open { id: "s".into(), data: b"hello".to_vec(), now_ms: 1, ttl_ms: 1 << 40 };
        client.call::<_, i64>("sessions", &open).unwrap();
        let (started, mut count) = (Instant::now(), 0);
        while started.elapsed() < Duration::from_secs(3) {
            let add = SessionRequest::Add { id: "s".into(), delta: 1, now_ms: 2 };
            let answered = client.call_answered::<_, i64>("sessions", &add).unwrap();
            count += 1;
            assert_eq!(answered.reply, count, "request {} answered out of sequence", answered.request);
        }
        (client, count)
    });
    assert!(count > 100, "the client made progress: {count}");
    let session: Option<Session> = client.query("sessions", &("s".to_string(), 3u64)).unwrap();
    assert_eq!(session.map(|s| (s.data, s.counter)), Some((b"hello".to_vec(), count)));
    let audit = client.audit("sessions", vec![1], None).unwrap();
    let summary = audit.check.unwrap();
    assert!(summary.contains("1 clients, each request applied once"), "{summary}");
    let memory = audit.clients[0].1.as_ref().map(|m| (m.request, m.applied));
    assert_eq!(memory, Some((count as u64 + 1, count as u64 + 1)));
}

#[test]
fn an_order_book_matches_through_kills_of_its_primary_as_without_them() {
    // Transparent mode: mprotect finds the writes on any kernel.
    let spec = ClusterSpec {
        ip_prefix: "127.0.7".into(),
        ..spec("orderbook", "max_orders = 10000", Some(TrackingMode::Mprotect))
    };
    let ((mut client, orders), _, _cluster) = through_two_kills(spec, |mut client| {
        let (started, mut reference, mut orders) = (Instant::now(), Reference::default(), 0);
        while started.elapsed() < Duration::from_secs(3) {
            let request: OrderRequest = reference.random_order();
            let expected = reference.apply(&request);
            match (client.call::<_, OrderReply>("orderbook", &request), expected) {
                (Ok(reply), Some(expected)) => assert_eq!(reply, expected, "{request:?}"),
                (Err(nonstop::ClientError::Rejected { .. }), None) => {}
                (got, expected) => panic!("{request:?}: {got:?}, expected {expected:?}"),
            }
            orders += 1;
        }
        (client, orders)
    });
    assert!(orders > 100, "the client made progress: {orders}");
    let audit = client.audit("orderbook", vec![1], None).unwrap();
    let summary = audit.check.unwrap();
    assert!(summary.contains("1 clients, each request applied once"), "{summary}");
}

/// The chaos harness on a third party's binary: its kind's sampled requests as the load, kills
/// at random moments and inside checkpoints, judged from the platform's client table.
#[test]
fn chaos_kill_on_the_order_book_binary_loses_and_doubles_nothing() {
    let config = nonstop_testbed::chaos::ChaosConfig {
        trials: 6,
        seed: 11,
        clients: 4,
        fault_share: 0.3,
        spec: ClusterSpec {
            ip_prefix: "127.0.8".into(),
            allow_faults: true,
            ..spec("orderbook", "max_orders = 10000", Some(TrackingMode::Mprotect))
        },
        quiet: Duration::from_millis(300),
        double: None,
        clients_kind: nonstop_testbed::chaos::Clients::Sampled,
    };
    let report = nonstop_testbed::chaos::run_kill(&example("orderbook"), &config, |_| {}).unwrap();
    assert_eq!((report.acked_lost, report.applied_twice), (0, 0), "{:?}", report.history);
    assert!(
        report.check.as_ref().is_ok_and(|summary| summary.contains("each request applied once")),
        "{:?}",
        report.check
    );
    assert!(report.acknowledged > 100, "{report:?}");
    assert_eq!(report.no_failover, 0, "{:?}", report.trial_log);
}

/// The same binary on hosts of their own (network namespaces): kills, pauses, partitions and
/// lossy links, judged from the platform's client table. Needs root, `ip` and `nft`; without
/// them it says why and passes, unless NONSTOP_REQUIRE_NETNS=1 (CI as root) requires it.
#[test]
fn chaos_netns_on_the_order_book_binary_violates_nothing() {
    if let Err(why) = nonstop_testbed::netns::available() {
        assert!(std::env::var_os("NONSTOP_REQUIRE_NETNS").is_none(), "network-namespace tests are required: {why}");
        eprintln!("SKIPPED chaos_netns_on_the_order_book_binary_violates_nothing: {why}");
        return;
    }
    let config = nonstop_testbed::chaos::netns::NetnsConfig {
        kind: nonstop_testbed::chaos::netns::FaultKind::Mixed,
        trials: 6,
        seed: 5,
        clients: 4,
        readers: 0,
        spec: spec("orderbook", "max_orders = 10000", Some(TrackingMode::Mprotect)),
        fault_length: Duration::from_millis(800),
        quiet: Duration::from_millis(300),
        soak: None,
        fault_every: Duration::ZERO,
        clients_kind: nonstop_testbed::chaos::Clients::Sampled,
    };
    let report = nonstop_testbed::chaos::netns::run(&example("orderbook"), &config, |_| {}).unwrap();
    assert_eq!(report.violations, 0, "{}", report.history.summary());
    assert!(
        report.check.as_ref().is_ok_and(|summary| summary.contains("each request applied once")),
        "{:?}",
        report.check
    );
    assert!(report.history.operations.transfers_ok > 100, "{:?}", report.history.operations);
}

/// A third party's multithreaded service, actively replicated: its worker threads scheduled
/// by PDS-1 on every replica, its kind's sampled requests as the load, one replica given a bit
/// flipped in its threads' state per trial: the clients' votes mask it, the replicas' digests
/// find it, the replica takes a live one's snapshot, and nothing is lost or applied twice.
#[test]
fn chaos_on_the_seats_binary_masks_a_flipped_replica() {
    use nonstop_testbed::chaos::{ActiveChaosConfig, Clients, ReplicaFault};
    let config = ActiveChaosConfig {
        trials: 2,
        seed: 7,
        clients: 4,
        spec: ClusterSpec {
            ip_prefix: "127.0.34".into(),
            active: Some(nonstop::ReplyMode::Majority),
            threads: Some((nonstop::sync::Scheduler::Pds1, 4)),
            allow_faults: true,
            ..spec("seats", "shows = 4", None)
        },
        clients_kind: Clients::Sampled,
        fault: ReplicaFault::FlipMemory,
        restart_after: None,
        after_kill: Duration::from_millis(300),
        netns: false,
    };
    let report = nonstop_testbed::chaos::run_active(&example("seats"), &config, |_| {}).unwrap();
    assert_eq!((report.acked_lost, report.applied_twice, report.replicas_disagree), (0, 0, 0), "{:?}", report.history);
    assert_eq!((report.dissents_found, report.reintegrated, report.not_back), (2, 2, 0), "{:?}", report.trial_log);
    assert!(report.check.as_ref().is_ok_and(|summary| summary.contains("seats sold in 4 shows")), "{:?}", report.check);
    assert!(report.acknowledged > 100, "{report:?}");
}
