//! `nonstop chaos --netns` in small: nodes and clients on hosts of their own (network
//! namespaces), a random sequence of kills, pauses, partitions and lossy periods, then bits
//! flipped on the wire and in the nodes' memory, and the history checker over every operation.
//! Needs root, `ip` and `nft`: elsewhere it says why and skips, unless
//! `NONSTOP_REQUIRE_NETNS=1` (CI as root) makes a missing prerequisite a failure.

use nonstop_testbed::chaos::Clients;
use nonstop_testbed::chaos::netns::{FaultKind, NetnsConfig, NetnsReport, run};
use nonstop_testbed::cluster::ClusterSpec;
use std::sync::Mutex;
use std::time::Duration;

/// One cluster at a time: two on two cores would make the timing of every fault a lottery.
static ONE_CLUSTER: Mutex<()> = Mutex::new(());

/// Runs `kind` for `trials` trials, or says why it cannot and returns `None`.
fn chaos(test: &str, kind: FaultKind, trials: u32, seed: u64) -> Option<NetnsReport> {
    if let Err(why) = nonstop_testbed::netns::available() {
        assert!(std::env::var_os("NONSTOP_REQUIRE_NETNS").is_none(), "network-namespace tests are required: {why}");
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let config = NetnsConfig {
        kind,
        trials,
        seed,
        clients: 4,
        readers: 2,
        spec: ClusterSpec { region_size_mib: 32, ..ClusterSpec::default() },
        fault_length: Duration::from_millis(800),
        quiet: Duration::from_millis(500),
        soak: None,
        fault_every: Duration::ZERO,
        clients_kind: Clients::Bank,
    };
    let report = run(std::path::Path::new(env!("CARGO_BIN_EXE_nonstop")), &config, |_| {}).unwrap();
    assert!(report.check.is_ok(), "{:?}", report.check);
    assert_eq!(report.violations, 0, "{}", report.history.summary());
    assert_eq!(report.false_failovers, 0, "{:?}", report.trial_log);
    assert!(report.history.operations.transfers_ok > 1000, "{:?}", report.history.operations);
    Some(report)
}

#[test]
fn a_random_sequence_of_host_and_network_faults_violates_nothing() {
    let Some(report) = chaos("a_random_sequence_of_host_and_network_faults_violates_nothing", FaultKind::Mixed, 12, 5)
    else {
        return;
    };
    assert!(report.history.operations.reads_ok > 50, "{:?}", report.history.operations);
    assert!(report.failovers.values().sum::<u32>() > 0, "some fault caused a failover: {:?}", report.trial_log);
    assert_eq!(report.quiet_failovers, 0);
}

#[test]
fn flipped_bits_are_caught_before_they_are_served_or_promoted() {
    let Some(report) = chaos("flipped_bits_are_caught_before_they_are_served_or_promoted", FaultKind::Bitflip, 6, 3)
    else {
        return;
    };
    let total = report.error_injection["total"];
    assert_eq!((total.manifested, total.catastrophic), (0, 0), "{:?}", report.error_injection);
    for site in ["primary-memory", "backup-memory"] {
        let counts = report.error_injection.get(site).copied().unwrap_or_default();
        assert!(counts.injected > 0, "seed 3 flips in {site}: {:?}", report.trial_log);
        assert_eq!(counts.detected, counts.injected, "every flip in {site} is caught: {:?}", report.trial_log);
    }
}

/// `nonstop chaos --netns KIND --replication active`, as an operator runs it.
fn active_chaos(kind: &str, trials: u32, seed: u64) -> serde_json::Value {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_nonstop"))
        .args(["chaos", "--netns", kind, "--replication", "active", "--clients", "4", "--json"])
        .args(["--trials", &trials.to_string(), "--seed", &seed.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    for field in ["acked_lost", "applied_twice", "replicas_disagree", "not_back", "no_answer_after_kill"] {
        assert_eq!(report[field], 0, "{field}: {report}");
    }
    assert_eq!(report["history"]["violations"]["wrong_answers"], 0, "{report}");
    report
}

#[test]
fn an_active_replica_cut_off_or_given_flipped_bits_is_masked_and_comes_back() {
    if let Err(why) = nonstop_testbed::netns::available() {
        assert!(std::env::var_os("NONSTOP_REQUIRE_NETNS").is_none(), "network-namespace tests are required: {why}");
        eprintln!("SKIPPED an_active_replica_cut_off_or_given_flipped_bits_is_masked_and_comes_back: {why}");
        return;
    }
    // Cut off for 800 ms, far more than the order keeps: it comes back by a live replica's state.
    let report = active_chaos("partition", 1, 3);
    assert_eq!(report["fault"]["partition"]["ms"], 800, "{report}");
    assert_eq!(report["reintegrated"], 1, "{report}");
    // A bit of one replica's memory, then one of its replies: each found, none heard by a client.
    let report = active_chaos("bitflip", 2, 3);
    for site in ["replica-memory", "replica-output"] {
        let row = &report["error_injection"][site];
        assert_eq!((row["injected"].as_u64(), row["detected"].as_u64()), (Some(1), Some(1)), "{site}: {report}");
    }
    let total = &report["error_injection"]["total"];
    assert_eq!((total["manifested"].as_u64(), total["catastrophic"].as_u64()), (Some(0), Some(0)), "{report}");
}
