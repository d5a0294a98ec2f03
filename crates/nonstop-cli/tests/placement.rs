//! Placement: two services on three region-holding nodes and two witnesses. Every node is
//! primary of one service and backup of another; after a failure one node backs up both
//! primaries (N-1); successive failures are survived until one holding node is left, the
//! witnesses keeping the control plane's majority. Nothing acknowledged is lost or doubled.

use nonstop_testbed::cluster::{ClusterSpec, LocalCluster, newest_record, protected_service};
use nonstop_testbed::load::{self, Load};
use std::time::Duration;

const SERVICES: [&str; 2] = ["bank", "ledger"];

/// Waits until `name`'s primary, among `nodes`, has `backups` backups, all among `nodes`.
fn wait_protected(cluster: &LocalCluster, nodes: &[u64], name: &str, backups: usize) {
    cluster
        .wait_statuses(nodes, Duration::from_secs(30), |s| {
            protected_service(s, name, backups)
                && newest_record(s, name).is_some_and(|b| b.backups.iter().all(|n| nodes.contains(n)))
        })
        .unwrap_or_else(|| panic!("{name} not protected by {backups} backup(s); logs in {}", cluster.dir().display()));
}

#[test]
fn successive_failures_are_survived_until_one_holder_is_left() {
    let spec = ClusterSpec {
        ip_prefix: "127.0.4".into(),
        region_size_mib: 32,
        witnesses: 2,
        services: vec![("bank".into(), 1), ("ledger".into(), 2)],
        ..ClusterSpec::default()
    };
    let mut cluster = LocalCluster::create(std::path::Path::new(env!("CARGO_BIN_EXE_nonstop")), &spec).unwrap();
    cluster.start_all().unwrap();
    let holders = [1, 2, 3];
    for name in SERVICES {
        wait_protected(&cluster, &holders, name, 1);
    }
    // Every holder node plays a role, and the two services' primaries differ.
    let (bank_primary, _) = cluster.primary_of("bank", &holders);
    let (ledger_primary, _) = cluster.primary_of("ledger", &holders);
    assert_ne!(bank_primary, ledger_primary);
    let loads: Vec<Load> = SERVICES
        .iter()
        .enumerate()
        .map(|(i, name)| Load::start(cluster.client_addrs(), name, 2, 1 + 10 * i as u64))
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    // First failure: the bank's primary. Both services end up protected by the one other holder.
    cluster.kill(bank_primary).unwrap();
    let survivors: Vec<u64> = holders.iter().copied().filter(|n| *n != bank_primary).collect();
    for name in SERVICES {
        wait_protected(&cluster, &survivors, name, 1);
    }
    let statuses: Vec<_> = survivors.iter().filter_map(|id| cluster.status(*id)).collect();
    let backups: Vec<Vec<u64>> =
        SERVICES.iter().map(|name| newest_record(&statuses, name).unwrap().backups.clone()).collect();
    let (bank_now, _) = cluster.primary_of("bank", &survivors);
    let (ledger_now, _) = cluster.primary_of("ledger", &survivors);
    assert!(
        bank_now == ledger_now && backups[0] == backups[1],
        "N-1: one node backs up both primaries: {backups:?} (primaries {bank_now}, {ledger_now})"
    );
    std::thread::sleep(Duration::from_millis(300));

    // Second failure: the node that is now primary of both. One holder is left; with the two
    // witnesses it is a majority of the control plane, and it serves both services alone.
    cluster.kill(bank_now).unwrap();
    let last: Vec<u64> = survivors.iter().copied().filter(|n| *n != bank_now).collect();
    for name in SERVICES {
        wait_protected(&cluster, &last, name, 0);
    }
    std::thread::sleep(Duration::from_millis(300));
    // The last holder's metrics say so too.
    let metrics = scrape(cluster.nodes[last[0] as usize - 1].metrics);
    for name in SERVICES {
        let line = format!("nonstop_service_role{{node=\"{}\",service=\"{name}\",role=\"primary\"}} 1", last[0]);
        assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    }
    assert!(metrics.contains("nonstop_service_failovers_total"));
    for name in SERVICES {
        // The primary of both holds both regions (the promoted images, resident in full).
        let prefix = format!("nonstop_service_region_bytes{{node=\"{}\",service=\"{name}\"}} ", last[0]);
        let bytes: Option<f64> = metrics.lines().find_map(|line| line.strip_prefix(&prefix)?.parse().ok());
        assert!(bytes.is_some_and(|bytes| bytes >= 1048576.0), "{prefix}... missing or empty in:\n{metrics}");
    }
    for (name, load) in SERVICES.iter().zip(loads) {
        let answered = load.answered();
        let history = load.stop();
        let verdict = load::audit(cluster.client_addrs(), name, &history).unwrap();
        assert!(verdict.clean(), "{name}: {:?}\n{}", verdict.check, verdict.report.summary());
        assert!(answered > 50, "{name} made progress: {answered}");
    }
}

fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}
