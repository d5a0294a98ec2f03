//! `nonstop chaos kill` in small: kills at random moments and at every fault point inside a
//! checkpoint, with nothing lost, nothing applied twice and no needless failover.

use nonstop_testbed::chaos::{ChaosConfig, Clients, DoubleKill, run_kill};
use nonstop_testbed::cluster::ClusterSpec;

#[test]
fn kills_inside_checkpoints_lose_and_double_nothing() {
    let config = ChaosConfig {
        trials: 16,
        seed: 11,
        clients: 4,
        fault_share: 0.6,
        spec: ClusterSpec { ip_prefix: "127.0.3".into(), region_size_mib: 32, ..ClusterSpec::default() },
        quiet: std::time::Duration::from_secs(1),
        double: None,
        clients_kind: Clients::Bank,
    };
    let report = run_kill(std::path::Path::new(env!("CARGO_BIN_EXE_nonstop")), &config, |_| {}).unwrap();
    assert!(report.check.is_ok(), "{:?}", report.check);
    assert_eq!((report.acked_lost, report.applied_twice), (0, 0), "{report:?}");
    assert_eq!(report.no_failover, 0, "every kill was followed by a new primary answering: {report:?}");
    assert_eq!(report.false_failovers, 0, "{report:?}");
    assert!(report.by_fault.len() >= 3, "fault points were exercised: {:?}", report.by_fault.keys());
}

/// Transparent mode under the same kills, with nothing lost or doubled: the bank (its
/// transactions written plainly at fixed offsets) and the ledger (the same requests over
/// `Vec`s and a `HashMap` in the region, found again through the heap's root after each
/// promotion), the pages found by the kernel and shipped as DU diffs.
#[test]
fn transparent_mode_services_lose_and_double_nothing_under_kills() {
    use nonstop_region::tracking::{TrackingMode, probe};
    let mode = match probe(TrackingMode::Uffd) {
        Ok(()) => TrackingMode::Uffd,
        Err(error) if std::env::var_os("NONSTOP_REQUIRE_UFFD").is_none() => {
            eprintln!("SKIPPED for uffd, using mprotect: {error}");
            TrackingMode::Mprotect
        }
        Err(error) => panic!("{error}"),
    };
    for (kind, consistent) in [("bank", "debit-credit consistent"), ("ledger", "ledger consistent")] {
        let config = ChaosConfig {
            trials: 10,
            seed: 12,
            clients: 4,
            fault_share: 0.5,
            spec: ClusterSpec {
                ip_prefix: "127.0.4".into(),
                region_size_mib: 32,
                tracking: Some(mode),
                kind: kind.to_string(),
                ..ClusterSpec::default()
            },
            quiet: std::time::Duration::from_secs(1),
            double: None,
            clients_kind: Clients::Bank,
        };
        let report = run_kill(std::path::Path::new(env!("CARGO_BIN_EXE_nonstop")), &config, |_| {}).unwrap();
        assert!(report.check.as_ref().is_ok_and(|summary| summary.contains(consistent)), "{kind}: {:?}", report.check);
        assert_eq!((report.acked_lost, report.applied_twice), (0, 0), "{kind}: {report:?}");
        assert_eq!(report.no_failover, 0, "{kind}: {report:?}");
        assert!(report.acknowledged > 1000, "{kind}: the load ran: {report:?}");
    }
}

/// Two backups: the primary killed, then the promoted node killed inside its re-protection
/// (while it rebases the holder its promotion kept). The kept holder is promoted in turn and
/// nothing acknowledged is lost.
#[test]
fn two_backups_survive_two_kills_in_a_row() {
    let config = ChaosConfig {
        trials: 6,
        seed: 13,
        clients: 4,
        fault_share: 0.0,
        spec: ClusterSpec {
            ip_prefix: "127.0.5".into(),
            region_size_mib: 32,
            nodes: 3,
            backups: 2,
            witnesses: 2,
            ..ClusterSpec::default()
        },
        quiet: std::time::Duration::ZERO,
        double: Some(DoubleKill::InsideReprotection),
        clients_kind: Clients::Bank,
    };
    let report = run_kill(std::path::Path::new(env!("CARGO_BIN_EXE_nonstop")), &config, |_| {}).unwrap();
    assert!(report.check.is_ok(), "{:?}", report.check);
    assert_eq!((report.acked_lost, report.applied_twice), (0, 0), "{report:?}");
    assert_eq!(report.no_failover, 0, "both kills were followed by a primary answering: {report:?}");
    let seconds = report.trial_log.iter().filter(|t| t.second_killed.is_some()).count();
    assert_eq!(seconds, 6, "every trial killed the promoted node too: {:?}", report.trial_log);
    assert_eq!(report.min_backups, 1);
}

/// Order-Entry through the node: TPC-C's five transactions as requests drawn by the service's
/// own sampler, judged from the platform's client table and TPC-C's conditions 1-4.
#[test]
fn order_entry_through_the_node_loses_and_doubles_nothing_under_kills() {
    let kind = nonstop_workloads::order_entry::NAME;
    let config = ChaosConfig {
        trials: 6,
        seed: 14,
        clients: 4,
        fault_share: 0.5,
        spec: ClusterSpec {
            ip_prefix: "127.0.9".into(),
            region_size_mib: 64,
            kind: kind.to_string(),
            services: vec![(kind.to_string(), 1)],
            ..ClusterSpec::default()
        },
        quiet: std::time::Duration::ZERO,
        double: None,
        clients_kind: Clients::Sampled,
    };
    let report = run_kill(std::path::Path::new(env!("CARGO_BIN_EXE_nonstop")), &config, |_| {}).unwrap();
    assert!(report.check.as_ref().is_ok_and(|summary| summary.contains("TPC-C conditions 1-4")), "{:?}", report.check);
    assert_eq!((report.acked_lost, report.applied_twice), (0, 0), "{report:?}");
    assert_eq!(report.no_failover, 0, "{report:?}");
    assert!(report.acknowledged > 100, "the load ran: {report:?}");
}

/// The Redis-compatible service under kills, through unchanged Redis clients that find the
/// primary with the `redis` crate's Sentinel client: no acknowledged write lost, no stale read,
/// no increment applied twice.
#[test]
fn redis_clients_lose_nothing_under_kills() {
    let tracking = match nonstop_region::tracking::probe(nonstop_region::tracking::TrackingMode::Uffd) {
        Ok(()) => nonstop_region::tracking::TrackingMode::Uffd,
        Err(_) => nonstop_region::tracking::TrackingMode::Mprotect,
    };
    let config = ChaosConfig {
        trials: 8,
        seed: 15,
        clients: 4,
        fault_share: 0.5,
        spec: ClusterSpec {
            ip_prefix: "127.0.13".into(),
            region_size_mib: 32,
            kind: "kv".into(),
            tracking: Some(tracking),
            services: vec![("kv".into(), 1)],
            redis: true,
            settings: toml::from_str("memory_mib = 8").unwrap(),
            ..ClusterSpec::default()
        },
        quiet: std::time::Duration::ZERO,
        double: None,
        clients_kind: Clients::Redis,
    };
    let report = run_kill(std::path::Path::new(env!("CARGO_BIN_EXE_nonstop")), &config, |_| {}).unwrap();
    assert!(report.check.is_ok(), "{:?}", report.check);
    assert_eq!(report.history.violations.total(), 0, "{:?}", report.history);
    assert_eq!(report.no_failover, 0, "{report:?}");
    assert!(report.acknowledged > 100 && report.history.operations.reads_ok > 0, "the load ran: {report:?}");
}
