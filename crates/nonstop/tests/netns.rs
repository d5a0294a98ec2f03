//! `nonstop chaos --netns` in small: nodes and clients on hosts of their own (network
//! namespaces), a random sequence of kills, pauses, partitions and lossy periods, and the history
//! checker over every operation. Needs root, `ip` and `nft`: elsewhere it says why and skips,
//! unless `NONSTOP_REQUIRE_NETNS=1` (CI as root) makes a missing prerequisite a failure.

use nonstop::chaos::netns::{FaultKind, NetnsConfig, run};
use nonstop::cluster::ClusterSpec;
use std::time::Duration;

#[test]
fn a_random_sequence_of_host_and_network_faults_violates_nothing() {
    if let Err(why) = nonstop::netns::available() {
        assert!(std::env::var_os("NONSTOP_REQUIRE_NETNS").is_none(), "network-namespace tests are required: {why}");
        eprintln!("SKIPPED a_random_sequence_of_host_and_network_faults_violates_nothing: {why}");
        return;
    }
    let config = NetnsConfig {
        kind: FaultKind::Mixed,
        trials: 12,
        seed: 5,
        clients: 4,
        readers: 2,
        spec: ClusterSpec { region_size_mib: 32, ..ClusterSpec::default() },
        fault_length: Duration::from_millis(800),
        quiet: Duration::from_millis(500),
    };
    let report = run(std::path::Path::new(env!("CARGO_BIN_EXE_nonstop")), &config, |_| {}).unwrap();
    assert!(report.check.is_ok(), "{:?}", report.check);
    assert_eq!(report.violations, 0, "{}", report.history.summary());
    assert!(report.history.operations.transfers_ok > 1000, "{:?}", report.history.operations);
    assert!(report.history.operations.reads_ok > 50, "{:?}", report.history.operations);
    assert!(report.failovers.values().sum::<u32>() > 0, "some fault caused a failover: {:?}", report.trial_log);
    assert_eq!(report.quiet_failovers, 0);
}
